//! Translate's stdin, parsed once: the route line, `------`, the job ad.

use classad::eval::evaluate_attr;
use classad::stream::parse_hook_stream;
use classad::ClassAd;

use super::error::{job_problem, TranslateError};
use vm_capsule_core::job::JobSpec;

/// What the router asked for.
#[derive(Debug, Clone)]
pub struct TranslateRequest {
    /// The route's `TargetUniverse` (13: VM universe, 5: vanilla), when it has one.
    pub route_universe: Option<i64>,
    /// The original job ad.
    pub ad: ClassAd,
    /// The job, validated.
    pub job: JobSpec,
}

impl TranslateRequest {
    /// Parse the router's stdin: exactly a route ad (new syntax) and a job ad (old syntax).
    ///
    /// # Errors
    /// [`TranslateError::Protocol`] for input the router never sends (nothing to hold);
    /// [`TranslateError::Job`] for a job ad that names its job but cannot be run.
    pub fn parse(stdin: &str) -> Result<TranslateRequest, TranslateError> {
        let ads = parse_hook_stream(stdin).map_err(|e| {
            TranslateError::Protocol(format!("cannot parse the JobRouter's input: {e}"))
        })?;
        let (route, job_ad) = match ads.as_slice() {
            [route, job] if route.new_syntax && !job.new_syntax => (&route.ad, &job.ad),
            _ => {
                return Err(TranslateError::Protocol(format!(
                    "expected the route line, ------ and the job ad on stdin, got {} ad(s); is this hook configured as the JobRouter's translate hook?",
                    ads.len()
                )))
            }
        };
        let job = JobSpec::from_ad(job_ad).map_err(|e| match e.job_id() {
            Some(id) => job_problem(id, e.detail()),
            None => TranslateError::Protocol(format!("{e}; cannot hold a job without its id")),
        })?;
        Ok(TranslateRequest {
            route_universe: evaluate_attr(route, "TargetUniverse").as_integer(),
            ad: job_ad.clone(),
            job,
        })
    }
}
