//! When a job's VM is checkpointed: what the capsule ad asks, what the starter's job ad makes
//! of it, and the node's interval.

use std::time::Duration;

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Value};

use super::ATTR;

/// When this job is checkpointed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Every this long (none: only when evicted).
    pub interval: Option<Duration>,
    /// The exit code that tells HTCondor a checkpoint is ready.
    pub exit_code: u8,
    /// Checkpoint on a soft kill too: HTCondor transfers the file when the job is evicted
    /// (`ON_EXIT_OR_EVICT` without an output list).
    pub on_evict: bool,
    /// The vacate time the starter gives.
    pub vacate: Duration,
}

impl Policy {
    /// The policy `capsule` (the capsule ad) asks for, given the starter's `job` ad, the
    /// node's `interval` and the job's `checkpoint_exit_code` as the starter's ad says it:
    /// `Ok(None)` when the job did not ask; `Err` saying why a job that asked cannot be
    /// checkpointed here.
    ///
    /// # Errors
    /// The job asked but the starter's ad does not make it self-checkpointing.
    pub fn from_ads(
        capsule: &ClassAd,
        job: Option<&ClassAd>,
        interval: Option<Duration>,
        checkpoint_exit_code: Option<u8>,
        vacate: Duration,
    ) -> Result<Option<Policy>, String> {
        if evaluate_attr(capsule, ATTR) != Value::Bool(true) {
            return Ok(None);
        }
        let Some(exit_code) = checkpoint_exit_code else {
            return Err(format!(
                "{ATTR} is set but the starter's job ad has no SuccessCheckpointExitCode with WantFTOnCheckpoint (was the job routed by this release's translate hook?): the job runs without checkpoints"
            ));
        };
        let on_evict = job.is_some_and(|job| {
            string_attr(job, "WhenToTransferOutput")
                .is_some_and(|w| w.eq_ignore_ascii_case("ON_EXIT_OR_EVICT"))
                && !job.contains("TransferOutput")
        });
        Ok(Some(Policy {
            interval,
            exit_code,
            on_evict,
            vacate,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ad(text: &str) -> ClassAd {
        classad::parse_old_ad(text).unwrap()
    }

    #[test]
    fn only_a_job_that_asks_and_the_starter_restarts_is_checkpointed() {
        let asks = ad("VMCapsuleCheckpoint = true\n");
        let vacate = Duration::from_secs(600);
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(
            Policy::from_ads(&ad("X = 1\n"), None, hour, Some(85), vacate),
            Ok(None)
        );
        // Asked, but the starter's ad does not make it self-checkpointing: said, not run.
        let e = Policy::from_ads(&asks, None, hour, None, vacate).unwrap_err();
        assert!(e.contains("SuccessCheckpointExitCode"), "{e}");
        let p = Policy::from_ads(&asks, None, hour, Some(85), vacate)
            .unwrap()
            .unwrap();
        assert_eq!((p.exit_code, p.interval, p.on_evict), (85, hour, false));
        // Saved at eviction only when HTCondor then transfers the sandbox's changed files.
        let evict = ad("WhenToTransferOutput = \"ON_EXIT_OR_EVICT\"\n");
        let listed = ad("WhenToTransferOutput = \"ON_EXIT_OR_EVICT\"\nTransferOutput = \"out\"\n");
        let on = |job: &ClassAd| {
            Policy::from_ads(&asks, Some(job), None, Some(85), vacate)
                .unwrap()
                .unwrap()
                .on_evict
        };
        assert!(on(&evict));
        assert!(!on(&listed));
    }
}
