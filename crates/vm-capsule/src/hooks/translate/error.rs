//! Why translation failed, and whether a retry could help.

use std::path::PathBuf;

use classad::ClassAd;

use crate::job::JobSpec;

/// Why translation failed, and whether retrying could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranslateError {
    /// Retrying later may work (I/O trouble, a busy file system): exit non-zero.
    Transient(String),
    /// The job cannot run as it is (missing input, bad template, too big): hold it.
    Permanent {
        /// The job id, when known.
        job: Option<String>,
        /// The hold reason for the user.
        reason: String,
    },
}

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TranslateError::Transient(m) => write!(f, "{m} (will retry)"),
            TranslateError::Permanent { reason, .. } => f.write_str(reason),
        }
    }
}

/// A successful translation.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The routed ad, as printed on stdout.
    pub stdout: String,
    /// The scratch dir holding the capsule.
    pub scratch: PathBuf,
    /// The routed ad.
    pub routed: ClassAd,
}

pub(super) fn permanent(job: &JobSpec, reason: impl Into<String>) -> TranslateError {
    TranslateError::Permanent {
        job: Some(job.id()),
        reason: reason.into(),
    }
}

pub(super) fn transient(what: &str, err: impl std::fmt::Display) -> TranslateError {
    TranslateError::Transient(format!("{what}: {err}"))
}

pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
