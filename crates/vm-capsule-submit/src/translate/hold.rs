//! Holding the original job so the user reads why it cannot run.

use std::process::Command;

use vm_capsule_core::condor_tools::ToolSearch;

use crate::log::HookLog;

/// Longest reason given to `condor_hold`, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// The hold reason for job `job_id` and `reason` (which does not name the job): the job
/// named once, printable text only (condor_hold takes it as one argument), bounded.
/// HTCondor appends "(by user <owner>)".
pub fn hold_reason(job_id: &str, reason: &str) -> String {
    let clean: String = reason
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .take(MAX_REASON_CHARS)
        .collect();
    format!("vm-capsule: job {job_id}: {clean}")
}

/// Put the original job on hold with `reason` (see [`hold_reason`]), `condor_hold` found with
/// `tools`. Returns false when `condor_hold` is not available or fails.
pub fn hold_original(job_id: &str, reason: &str, tools: &ToolSearch, log: &mut HookLog) -> bool {
    let tool = match tools.find("condor_hold") {
        Ok(t) => t,
        Err(e) => {
            log.error(&format!("cannot hold the job: {e}"));
            return false;
        }
    };
    let text = hold_reason(job_id, reason);
    match Command::new(&tool)
        .args(["-reason", &text, "-subcode", "1", job_id])
        .output()
    {
        Ok(out) if out.status.success() => {
            log.info(&format!("held: {text}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_job_once_in_printable_text() {
        assert_eq!(
            hold_reason("10.0", "input /x \"q\"\nnext (transfer_input_files)"),
            "vm-capsule: job 10.0: input /x 'q''next (transfer_input_files)"
        );
    }
}
