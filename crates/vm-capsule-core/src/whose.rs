//! Whose problem an error is: who must act on it. Every error on the way back from a VM
//! (scratch, the returned disk, output placement) can say, so that a hook's log and its
//! callers tell the guest's doing from the owner's files and the node's setup.

/// Who must act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// The guest or the job: what came back from the VM is missing or not as staged.
    Guest,
    /// The job's owner: the job's ad, the job dir or the routed ad, which are the owner's
    /// to change.
    Owner,
    /// The node's admin: the hook's user, the scratch prefix.
    Admin,
    /// Ours (or HTCondor's): stdin that the JobRouter does not send, an I/O error.
    Ours,
}
