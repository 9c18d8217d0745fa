//! Why finalize could not bring a job's results back, and whose problem that is.
//!
//! Every variant ends the same way for the user (`ExitCode = 125`, the message in
//! `VMCapsuleError`: finalize cannot hold a job); the kind tells who must act, for the log
//! and for callers that branch on it.

use thiserror::Error;

use vm_capsule_core::identity::IdentityError;
use vm_capsule_core::job::JobError;
use vm_capsule_core::returned::ReturnedError;
use vm_capsule_core::scratch::ScratchError;
/// Whose problem a [`FinalizeError`] is (the core's, which its errors also say).
pub use vm_capsule_core::whose::Whose;

/// Why finalize failed; the message is what `VMCapsuleError` says.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FinalizeError {
    /// stdin is not the two ads the JobRouter sends.
    #[error("{0}")]
    Protocol(String),
    /// The original ad does not describe a job.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The routed ad names the capsule wrongly (its owner can edit it).
    #[error("{0}")]
    RoutedAd(String),
    /// The hook does not run as the job's owner.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The scratch prefix is unsafe, or the job dir is not one of ours.
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    /// Something in the job dir is not what came back (a link, a FIFO, a missing disk).
    #[error("{0}")]
    OwnerFiles(String),
    /// The returned data disk is not what was staged (format, size, files it names).
    #[error("{0}")]
    Returned(String),
    /// The returned data disk holds no valid result.
    #[error(transparent)]
    NoResult(#[from] ReturnedError),
}

impl FinalizeError {
    /// Who must act.
    pub fn whose(&self) -> Whose {
        match self {
            FinalizeError::Protocol(_) => Whose::Ours,
            FinalizeError::Job(_) | FinalizeError::Returned(_) | FinalizeError::NoResult(_) => {
                Whose::Guest
            }
            FinalizeError::RoutedAd(_) | FinalizeError::OwnerFiles(_) => Whose::Owner,
            FinalizeError::Identity(_) => Whose::Admin,
            FinalizeError::Scratch(e) => e.whose(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_names_who_must_act_and_keeps_the_message() {
        let scratch = FinalizeError::from(ScratchError::NotAJobDir {
            path: "/tmp/vm-capsule/alice/x".into(),
            owner_dir: "/tmp/vm-capsule/alice".into(),
        });
        assert_eq!(scratch.whose(), Whose::Owner);
        assert_eq!(
            scratch.to_string(),
            "/tmp/vm-capsule/alice/x is not a vm-capsule job dir under /tmp/vm-capsule/alice"
        );
        let root = FinalizeError::from(IdentityError::Root {
            owner: "alice".into(),
        });
        assert_eq!(root.whose(), Whose::Admin);
        assert!(root.to_string().starts_with("refusing to run as root"));
        assert_eq!(FinalizeError::Protocol("x".into()).whose(), Whose::Ours);
        let job = FinalizeError::from(JobError::BadAttribute {
            job: "1.0".into(),
            attribute: "Owner",
            problem: vm_capsule_core::job::AttributeProblem::Missing,
        });
        assert_eq!(
            (job.whose(), job.to_string().as_str()),
            (Whose::Guest, "job 1.0: attribute Owner is missing")
        );
        let disk = FinalizeError::Returned("the disk is too big".into());
        assert_eq!(
            (disk.whose(), disk.to_string().as_str()),
            (Whose::Guest, "the disk is too big")
        );
    }
}
