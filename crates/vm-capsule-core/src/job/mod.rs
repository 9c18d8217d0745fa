//! The vanilla job model: a `JobSpec` read from a job ad with HTCondor's rules.

pub mod args;
pub(crate) mod spec;
pub mod transfer;

pub use spec::{AttributeProblem, JobError, JobSpec, StreamFile, WhenToTransfer, NETWORK_ATTR};
pub use transfer::InputItem;
