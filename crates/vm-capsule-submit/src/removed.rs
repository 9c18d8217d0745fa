//! A job its owner removed while its routed copy ran.
//!
//! Natively the starter stops such a job with SIGTERM (HTCondor's default `kill_sig`), and
//! it leaves the queue with `ExitBySignal = true`, `ExitSignal = 15`. A routed original gets
//! neither: the router stops mirroring the routed job as soon as it sees the original removed
//! (`JobRouter::FinishCheckSubmittedJobStatus` writes the abort event and gives up on the
//! job), then runs the cleanup hook, and only then removes the routed copy (which the starter
//! stops with SIGTERM), writes the evict event and lets the original leave the queue
//! (`JobRouter::FinishCleanupJob`, `yield_job`). Cleanup is the one hook that runs in
//! between, as the job's owner, while the original is still in the queue: it records on the
//! original what the routed copy is about to get, with `condor_qedit`.

use std::process::Command;

use classad::eval::{evaluate_attr, string_attr};
use classad::ClassAd;
use vm_capsule_core::condor_tools::ToolSearch;

use super::log::HookLog;

/// `JobStatus` values of a routed job that is running (`RUNNING`, `TRANSFERRING_OUTPUT`).
const RUNNING: [i64; 2] = [2, 6];
/// `JobStatus` of a removed job.
const REMOVED: i64 = 3;
/// The signal the starter stops a removed job with: HTCondor's default `kill_sig`, which is
/// also what the vanilla flavour's launcher gets (the routed job has no `KillSig`).
pub const KILL_SIGNAL: i64 = 15;

/// The original's `cluster.proc`, when the routed ad says its job was running.
pub fn running_original(routed: &ClassAd) -> Option<(i64, i64)> {
    let status = evaluate_attr(routed, "JobStatus").as_integer()?;
    if !RUNNING.contains(&status) {
        return None;
    }
    let id = string_attr(routed, "RoutedFromJobId")?;
    let (cluster, proc) = id.split_once('.')?;
    let plain = |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
    if !plain(cluster) || !plain(proc) {
        return None;
    }
    Some((cluster.parse().ok()?, proc.parse().ok()?))
}

/// The `condor_qedit` arguments that mark original `cluster.proc`, if it was removed, as
/// killed by [`KILL_SIGNAL`]; a job that is not removed (it finished, was held or is being
/// routed again) does not match the constraint and is left alone.
pub fn qedit_args(cluster: i64, proc: i64) -> Vec<String> {
    vec![
        "-constraint".to_owned(),
        format!("ClusterId == {cluster} && ProcId == {proc} && JobStatus == {REMOVED}"),
        "ExitBySignal".to_owned(),
        "true".to_owned(),
        "ExitSignal".to_owned(),
        KILL_SIGNAL.to_string(),
    ]
}

/// Mark the original of `routed` as killed by [`KILL_SIGNAL`] when its owner removed it while
/// the routed job ran (`condor_qedit` found with `tools`). Best effort: the outcome is logged.
pub fn mark_removed_original(routed: &ClassAd, tools: &ToolSearch, log: &mut HookLog) {
    let Some((cluster, proc)) = running_original(routed) else {
        return;
    };
    let tool = match tools.find("condor_qedit") {
        Ok(t) => t,
        Err(e) => {
            log.warn(&format!(
                "the routed job was running; cannot record on the original, if it was removed, that it was killed: {e}"
            ));
            return;
        }
    };
    match Command::new(&tool).args(qedit_args(cluster, proc)).output() {
        Ok(out) if out.status.success() => log.info(&format!(
            "removed while running: set ExitBySignal = true, ExitSignal = {KILL_SIGNAL} on the original"
        )),
        // No match: the original was not removed (held, or routed again).
        Ok(out) => log.debug(&format!(
            "condor_qedit: the original is not removed ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => log.warn(&format!("cannot run {}: {e}", tool.display())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn routed(text: &str) -> ClassAd {
        classad::parse_old_ad(text).unwrap()
    }

    #[test]
    fn only_a_running_routed_job_with_a_plain_id_is_marked() {
        let id = "RoutedFromJobId = \"12.3\"\n";
        assert_eq!(
            running_original(&routed(&format!("JobStatus = 2\n{id}"))),
            Some((12, 3))
        );
        assert_eq!(
            running_original(&routed(&format!("JobStatus = 6\n{id}"))),
            Some((12, 3))
        );
        for status in [1, 3, 4, 5] {
            assert_eq!(
                running_original(&routed(&format!("JobStatus = {status}\n{id}"))),
                None
            );
        }
        for bad in ["12", "12.3 || true", "-1.0", "1.0.0", ".3", "x.1"] {
            assert_eq!(
                running_original(&routed(&format!(
                    "JobStatus = 2\nRoutedFromJobId = \"{bad}\"\n"
                ))),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn the_constraint_matches_only_the_removed_original() {
        let args = qedit_args(12, 3);
        let constraint = classad::parse_expr(&args[1], classad::Syntax::Old).unwrap();
        let matches = |status: i64, cluster: i64| {
            let ad = routed(&format!(
                "ClusterId = {cluster}\nProcId = 3\nJobStatus = {status}\n"
            ));
            classad::eval::evaluate(&constraint, &ad) == classad::Value::Bool(true)
        };
        assert!(matches(3, 12));
        assert!(!matches(4, 12) && !matches(5, 12) && !matches(1, 12));
        assert!(!matches(3, 13));
    }
}
