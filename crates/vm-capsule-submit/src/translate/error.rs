//! Why translation failed, whose mistake it is, and whether a retry could help.

use std::path::PathBuf;

use classad::ClassAd;
use thiserror::Error;

/// Why translation failed. Only [`TranslateError::Job`] holds the user's job; every other
/// variant leaves it idle for the router to try again (an admin's mistake never holds users'
/// jobs: they run once the configuration is fixed).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// The job cannot run as it is (missing input, too big, broken attribute): hold it.
    #[error("{reason}")]
    Job {
        /// `cluster.proc`.
        job: String,
        /// What is wrong, for the user; without the job id, which the hold reason and the
        /// hook log add once.
        reason: String,
    },
    /// The pool's configuration is wrong (template, knobs, scratch prefix, agent, the user
    /// the hook runs as): the admin must fix it; the job waits.
    #[error("{0}")]
    Admin(String),
    /// The JobRouter's stdin is not what it sends (no route line, no job ad, no job id).
    #[error("{0}")]
    Protocol(String),
    /// The scratch file system (or the user's quota there) is full.
    #[error("scratch file system full at {path}: {detail}; the JobRouter will try again")]
    ScratchFull {
        /// Where the write failed.
        path: PathBuf,
        /// What was being written.
        detail: String,
    },
    /// Passing I/O trouble while staging.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl TranslateError {
    /// Whether the admin must fix something.
    pub fn is_admin_problem(&self) -> bool {
        matches!(self, TranslateError::Admin(_))
    }

    /// The job to hold, for a job problem.
    pub fn job_to_hold(&self) -> Option<&str> {
        match self {
            TranslateError::Job { job, .. } => Some(job),
            _ => None,
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

/// A job problem for job `job`; `reason` does not name the job (see [`TranslateError::Job`]).
pub(super) fn job_problem(job: &str, reason: impl Into<String>) -> TranslateError {
    TranslateError::Job {
        job: job.to_owned(),
        reason: reason.into(),
    }
}

/// The error and its sources on one line.
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

/// Whether an error, or anything it was caused by, is a full file system or quota.
pub(super) fn is_storage_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(capsule_disk::is_storage_full)
        {
            return true;
        }
        current = e.source();
    }
    false
}
