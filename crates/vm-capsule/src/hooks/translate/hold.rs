//! Holding the original job so the user reads why it cannot run.

use std::process::Command;

use crate::hooks::log::HookLog;

/// Put the original job on hold with `reason` (HTCondor appends "(by user <owner>)").
/// Returns false when `condor_hold` is not available or fails.
pub fn hold_original(job_id: &str, reason: &str, log: &mut HookLog) -> bool {
    // condor_hold takes the reason as one argument; keep it to printable text.
    let clean: String = reason
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .take(1000)
        .collect();
    let tool = match crate::condor_tools::condor_tool("condor_hold") {
        Ok(t) => t,
        Err(e) => {
            log.error(&format!("cannot hold job {job_id}: {e}"));
            return false;
        }
    };
    match Command::new(&tool)
        .args([
            "-reason",
            &format!("vm-capsule: {clean}"),
            "-subcode",
            "1",
            job_id,
        ])
        .output()
    {
        Ok(out) if out.status.success() => {
            log.info(&format!("held job {job_id}: {clean}"));
            true
        }
        Ok(out) => {
            log.error(&format!(
                "condor_hold {job_id} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            false
        }
        Err(e) => {
            log.warn(&format!("cannot run condor_hold for job {job_id}: {e}"));
            false
        }
    }
}
