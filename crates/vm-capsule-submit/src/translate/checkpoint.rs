//! Whether the routed job checkpoints the whole VM: the job's `VMCapsuleCheckpoint`, else the
//! route's `VM_CAPSULE_CHECKPOINT`; only the vanilla flavour can.

use super::error::{job_problem, TranslateError};
use vm_capsule_core::job::JobSpec;
use vm_capsule_core::routed::ATTR_CHECKPOINT;
use vm_capsule_core::settings::{RoutedUniverse, TranslateSettings};

/// Whether the launcher checkpoints `job`'s VM. The route knob applies to the vanilla flavour
/// only: in the VM universe a job that does not ask is not checkpointed.
///
/// # Errors
/// [`TranslateError::Job`] for a job that asks explicitly but is routed to the VM universe,
/// which cannot checkpoint a VM whose disks it transferred.
pub(super) fn wanted(
    job: &JobSpec,
    cfg: &TranslateSettings,
    universe: RoutedUniverse,
) -> Result<bool, TranslateError> {
    match universe {
        RoutedUniverse::Vanilla => Ok(job.checkpoint.unwrap_or(cfg.checkpoint)),
        RoutedUniverse::Vm if job.checkpoint == Some(true) => Err(job_problem(
            &job.id(),
            format!(
                "+{ATTR_CHECKPOINT} = true asks for whole-VM checkpoints, but this job is routed to the VM universe, which cannot checkpoint a VM whose disks were transferred (docs/ADMIN.md, section 2c); submit it to the vanilla-flavour route (the pool's VMCapsule_vanilla), or drop +{ATTR_CHECKPOINT}"
            ),
        )),
        RoutedUniverse::Vm => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vm_capsule_core::settings::Settings;

    fn job(extra: &str) -> JobSpec {
        let text = format!(
            "ClusterId = 4\nProcId = 1\nOwner = \"alice\"\nIwd = \"/home/alice\"\nCmd = \"a\"\n{extra}"
        );
        JobSpec::from_ad(&classad::parse_old_ad(&text).unwrap()).unwrap()
    }

    fn settings(knob: &str) -> TranslateSettings {
        Settings::from_pairs([
            ("VM_CAPSULE_TEMPLATE", "/t"),
            ("VM_CAPSULE_CHECKPOINT", knob),
        ])
        .translate()
        .unwrap()
    }

    #[test]
    fn the_job_says_else_the_route_knob_says_for_the_vanilla_flavour() {
        let vanilla = RoutedUniverse::Vanilla;
        let cases = [
            ("", "false", false),
            ("", "true", true),
            ("VMCapsuleCheckpoint = true\n", "false", true),
            ("VMCapsuleCheckpoint = false\n", "true", false),
            ("VMCapsuleCheckpoint = true\n", "true", true),
        ];
        for (extra, knob, want) in cases {
            assert_eq!(
                wanted(&job(extra), &settings(knob), vanilla).unwrap(),
                want,
                "{extra:?} with VM_CAPSULE_CHECKPOINT = {knob}"
            );
        }
    }

    #[test]
    fn the_vm_universe_holds_a_job_that_asks_and_ignores_the_knob() {
        let vm = RoutedUniverse::Vm;
        assert!(!wanted(&job(""), &settings("true"), vm).unwrap());
        assert!(!wanted(&job("VMCapsuleCheckpoint = false\n"), &settings("true"), vm).unwrap());
        let err = wanted(&job("VMCapsuleCheckpoint = true\n"), &settings("false"), vm).unwrap_err();
        assert_eq!(err.job_to_hold(), Some("4.1"));
        let reason = err.to_string();
        for needed in ["+VMCapsuleCheckpoint = true", "VM universe", "vanilla"] {
            assert!(reason.contains(needed), "{reason}");
        }
    }
}
