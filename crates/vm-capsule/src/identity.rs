//! Who a hook runs as. The JobRouter always runs hooks as the job's owner; a hook running as
//! root (it packed `/etc/shadow` into a capsule, issue 11) or as another user is refused,
//! unless the explicit test knob `VM_CAPSULE_TEST_ANY_USER` says otherwise.

use nix::unistd::{Uid, User};

/// Why the hook must not act for this job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Running as root.
    #[error("refusing to run as root: the JobRouter runs hooks as the job's owner ({owner}); run the hook as that user (VM_CAPSULE_TEST_ANY_USER is for tests only)")]
    Root {
        /// The job's owner.
        owner: String,
    },
    /// `Owner` is not an account here.
    #[error("the job's Owner {owner:?} is not a user on this machine")]
    UnknownOwner {
        /// The job's owner.
        owner: String,
    },
    /// Running as someone else.
    #[error("the hook runs as uid {running} but the job's Owner {owner} is uid {owner_uid}; the JobRouter runs hooks as the job's owner")]
    OtherUser {
        /// The job's owner.
        owner: String,
        /// Their uid.
        owner_uid: u32,
        /// Ours.
        running: u32,
    },
}

/// Check that this process runs as `owner` (always true when `allow_any` is set).
///
/// # Errors
/// [`IdentityError`] naming both identities.
pub fn check_runs_as(owner: &str, allow_any: bool) -> Result<(), IdentityError> {
    if allow_any {
        return Ok(());
    }
    let running = Uid::effective();
    if running.is_root() {
        return Err(IdentityError::Root {
            owner: owner.to_owned(),
        });
    }
    let user =
        User::from_name(owner)
            .ok()
            .flatten()
            .ok_or_else(|| IdentityError::UnknownOwner {
                owner: owner.to_owned(),
            })?;
    if user.uid != running {
        return Err(IdentityError::OtherUser {
            owner: owner.to_owned(),
            owner_uid: user.uid.as_raw(),
            running: running.as_raw(),
        });
    }
    Ok(())
}
