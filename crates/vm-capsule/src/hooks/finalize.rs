//! The finalize hook: the routed VM job has completed; bring its results to the original job.
//!
//! stdin is the original ad, `------`, and the routed ad (`hookJobExit`). stdout lists
//! attributes merged into the original. The router has already copied the VM job's
//! meaningless `ExitCode = 0` (the vm-gahp's own status, protocol §3.3), so we print the
//! guest's real status. Since 9.7 a finalize hook cannot hold the job and a non-zero exit
//! loses the terminate event (reference/hold-path.md, jobrouter-observed.md): this hook exits
//! 0 whenever it can say what happened, and reports failures as a non-zero `ExitCode` with
//! `VMCapsuleError` explaining it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use capsule_disk::{Access, DataDisk};
use capsule_manifest::{JobResult, Outcome};
use classad::eval::string_attr;
use classad::stream::parse_hook_stream;
use classad::{ClassAd, Expr, Literal};

use super::log::HookLog;
use super::place::{unpack_outputs, write_atomic, OutputMap};
use crate::job::JobSpec;

/// `ExitCode` when the capsule failed (VM died, results unreadable, outputs not placed),
/// as `docker run` uses 125 for its own failures.
pub const EXIT_CAPSULE_FAILED: i64 = 125;
/// `ExitCode` when the job could not be started in the guest (missing executable, ...).
pub const EXIT_NOT_STARTED: i64 = 127;
/// Marker file left in scratch when finalize failed, so cleanup keeps the dir.
pub const FAILED_MARKER: &str = "VMCAPSULE_FAILED";

/// What finalize concluded.
#[derive(Debug, Clone)]
pub struct Finalized {
    /// Attributes for the original job.
    pub attrs: ClassAd,
    /// Output files written.
    pub files: Vec<PathBuf>,
    /// Problems (also in `VMCapsuleError`).
    pub problems: Vec<String>,
}

/// Run finalize on the hook's stdin. Never fails: every problem becomes attributes.
pub fn finalize(stdin: &str, log: &mut HookLog) -> Finalized {
    let mut out = Finalized {
        attrs: ClassAd::new(),
        files: Vec::new(),
        problems: Vec::new(),
    };
    let ads = match parse_hook_stream(stdin) {
        Ok(ads) if ads.len() >= 2 => ads,
        Ok(ads) => {
            return fail(
                out,
                &format!(
                    "finalize expected the original and the routed ad, got {} ad(s)",
                    ads.len()
                ),
                None,
                log,
            )
        }
        Err(e) => {
            return fail(
                out,
                &format!("cannot parse the ads from the JobRouter: {e}"),
                None,
                log,
            )
        }
    };
    let (original, routed) = (&ads[0].ad, &ads[ads.len() - 1].ad);
    let job = match JobSpec::from_ad(original) {
        Ok(j) => j,
        Err(e) => return fail(out, &e.to_string(), None, log),
    };
    let (Some(scratch), Some(data_name)) = (
        string_attr(routed, "VMCapsuleScratch"),
        string_attr(routed, "VMCapsuleDataDisk"),
    ) else {
        log.warn(&format!(
            "job {}: routed ad is not a vm-capsule job; nothing to do",
            job.id()
        ));
        return out;
    };
    let scratch = PathBuf::from(scratch);
    if string_attr(routed, "VMCapsuleFlavour").as_deref() == Some("vanilla") {
        // HTCondor's own transfer placed the outputs and the router mirrored the launcher's
        // exit status, which is the job's: nothing to extract, nothing to correct.
        log.info(&format!(
            "job {}: vanilla flavour, outputs placed by HTCondor",
            job.id()
        ));
        return out;
    }
    log.info(&format!(
        "finalizing job {} from {}",
        job.id(),
        scratch.display()
    ));

    let disk_path = match top_of_chain(&scratch, &data_name) {
        Ok(p) => p,
        Err(e) => {
            return fail(
                out,
                &format!("job {}: the VM's data disk is missing: {e}", job.id()),
                Some(&scratch),
                log,
            )
        }
    };
    let disk = match DataDisk::open(&disk_path, Access::ReadOnly) {
        Ok(d) => d,
        Err(e) => {
            return fail(
                out,
                &format!(
                    "job {}: the VM's data disk {} is unreadable: {e}",
                    job.id(),
                    disk_path.display()
                ),
                Some(&scratch),
                log,
            )
        }
    };
    let result = match read_result(&disk) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                out,
                &format!("job {}: the VM ended without a result ({e}); the guest may have crashed or run out of time", job.id()),
                Some(&scratch),
                log,
            )
        }
    };

    // Streams first (plain files on the disk), then output.tar.
    let streams = [
        (job.stdout.as_ref(), capsule_manifest::DEFAULT_STDOUT),
        (job.stderr.as_ref(), capsule_manifest::DEFAULT_STDERR),
    ];
    for (target, name) in streams {
        let Some(target) = target else { continue };
        match disk.open_file(name) {
            Ok(mut reader) => match write_atomic(&target.path, &mut reader, 0o644) {
                Ok(_) => out.files.push(target.path.clone()),
                Err(e) => out
                    .problems
                    .push(format!("{name} -> {}: {e}", target.path.display())),
            },
            Err(e) => out
                .problems
                .push(format!("{name} is missing on the data disk: {e}")),
        }
    }
    if !result.outputs.is_empty() {
        match disk.open_file(capsule_manifest::OUTPUT_TAR) {
            Ok(reader) => {
                let map = OutputMap {
                    iwd: &job.iwd,
                    remaps: &job.remaps,
                    explicit: job.outputs.as_deref(),
                };
                let placed = unpack_outputs(reader, &map);
                out.files.extend(placed.files);
                out.problems.extend(placed.problems);
            }
            Err(e) => out
                .problems
                .push(format!("output.tar is missing on the data disk: {e}")),
        }
    }
    // The agent reports trouble beside a real outcome (outputs that did not fit on the data
    // disk, say): the job's files are incomplete, so the user must hear about it. A time-limit
    // kill is the job's outcome, already told by ExitSignal and VMCapsuleTimedOut.
    if let Some(problem) = agent_problem(&result) {
        out.problems
            .push(format!("the guest agent reported: {problem}"));
    }
    for missing in &result.missing_outputs {
        // HTCondor holds a job whose named output is missing; we can only report it.
        out.problems.push(format!(
            "output {missing:?} named in transfer_output_files was not created by the job"
        ));
    }

    exit_attributes(&mut out.attrs, &result);
    if !out.problems.is_empty() {
        let text = out.problems.join("; ");
        log.error(&format!("job {}: {text}", job.id()));
        mark_failed(&scratch, &text);
        if let Outcome::Exited { code } = result.outcome {
            out.attrs
                .insert("VMCapsuleJobExitCode", Expr::integer(i64::from(code)));
        }
        out.attrs
            .insert("ExitCode", Expr::integer(EXIT_CAPSULE_FAILED));
        out.attrs.insert("ExitBySignal", Expr::boolean(false));
        out.attrs
            .insert("VMCapsuleError", Expr::string(limit(&text)));
    }
    log.info(&format!(
        "job {}: {} ({} output files)",
        job.id(),
        describe(&result.outcome),
        out.files.len()
    ));
    out
}

/// `ExitCode`/`ExitBySignal`/`ExitSignal` and usage from the guest's result.
fn exit_attributes(attrs: &mut ClassAd, result: &JobResult) {
    match result.outcome {
        Outcome::Exited { code } => {
            attrs.insert("ExitCode", Expr::integer(i64::from(code)));
            attrs.insert("ExitBySignal", Expr::boolean(false));
            attrs.insert("ExitSignal", Expr::Literal(Literal::Undefined));
        }
        Outcome::Signaled { signal, .. } => {
            attrs.insert("ExitCode", Expr::Literal(Literal::Undefined));
            attrs.insert("ExitBySignal", Expr::boolean(true));
            attrs.insert("ExitSignal", Expr::integer(i64::from(signal)));
        }
        Outcome::NotStarted => {
            attrs.insert("ExitCode", Expr::integer(EXIT_NOT_STARTED));
            attrs.insert("ExitBySignal", Expr::boolean(false));
            let why = result
                .error
                .clone()
                .unwrap_or_else(|| "the job could not be started".to_owned());
            attrs.insert("VMCapsuleError", Expr::string(limit(&why)));
        }
    }
    if result.timed_out {
        attrs.insert("VMCapsuleTimedOut", Expr::boolean(true));
    }
    attrs.insert("RemoteUserCpu", Expr::real(result.user_cpu_secs));
    attrs.insert("RemoteSysCpu", Expr::real(result.system_cpu_secs));
    attrs.insert("VMCapsuleJobWallTime", Expr::real(result.wall_time_secs));
    attrs.insert(
        "VMCapsulePeakRssKiB",
        Expr::integer(i64::try_from(result.peak_rss_kib).unwrap_or(i64::MAX)),
    );
    attrs.insert("VMCapsuleResult", Expr::string(describe(&result.outcome)));
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited { code } => format!("exited with code {code}"),
        Outcome::Signaled {
            signal,
            core_dumped,
        } => {
            format!(
                "killed by signal {signal}{}",
                if *core_dumped { " (core dumped)" } else { "" }
            )
        }
        Outcome::NotStarted => "not started".to_owned(),
    }
}

/// What the agent's `error` says beyond the job's own outcome: `None` when nothing, or only the
/// time-limit kill (part of the outcome), or when the job never started (reported as such).
pub fn agent_problem(result: &JobResult) -> Option<String> {
    if matches!(result.outcome, Outcome::NotStarted) {
        return None;
    }
    let parts: Vec<&str> = result
        .error
        .as_deref()?
        .split("; ")
        .filter(|p| !(result.timed_out && p.contains("wall-time limit")))
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Read and validate `result.json` from a returned data disk.
///
/// # Errors
/// A message saying what is missing or invalid.
pub fn read_result(disk: &DataDisk) -> Result<JobResult, String> {
    let reader = disk
        .open_file(capsule_manifest::RESULT_JSON)
        .map_err(|e| format!("no result.json: {e}"))?;
    let mut bytes = Vec::new();
    reader
        .take(capsule_manifest::MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("result.json unreadable: {e}"))?;
    JobResult::from_json(&bytes).map_err(|e| format!("result.json invalid: {e}"))
}

/// The file to read the data disk from: a VMware snapshot delta over it when one exists
/// (`data-000001.vmdk` naming `data.vmdk` as its parent), else the disk itself.
fn top_of_chain(scratch: &Path, data_name: &str) -> std::io::Result<PathBuf> {
    let base = scratch.join(data_name);
    if !base.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} does not exist", base.display()),
        ));
    }
    let Some(stem) = data_name.strip_suffix(".vmdk") else {
        return Ok(base);
    };
    let mut deltas: Vec<PathBuf> = fs::read_dir(scratch)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.strip_prefix(stem)
                    .and_then(|r| r.strip_prefix('-'))
                    .and_then(|r| r.strip_suffix(".vmdk"))
                    .is_some_and(|d| d.len() == 6 && d.chars().all(|c| c.is_ascii_digit()))
            })
        })
        .collect();
    deltas.sort();
    Ok(deltas.pop().unwrap_or(base))
}

fn fail(mut out: Finalized, reason: &str, scratch: Option<&Path>, log: &mut HookLog) -> Finalized {
    log.error(reason);
    if let Some(s) = scratch {
        mark_failed(s, reason);
    }
    out.problems.push(reason.to_owned());
    out.attrs
        .insert("ExitCode", Expr::integer(EXIT_CAPSULE_FAILED));
    out.attrs.insert("ExitBySignal", Expr::boolean(false));
    out.attrs
        .insert("VMCapsuleError", Expr::string(limit(reason)));
    out
}

fn mark_failed(scratch: &Path, reason: &str) {
    let _ = fs::write(scratch.join(FAILED_MARKER), format!("{reason}\n"));
}

/// Keep attribute text short and on one line (the old format carries no newlines).
fn limit(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(2000)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn result(outcome: &str, timed_out: bool, error: Option<&str>) -> JobResult {
        let json = format!(
            r#"{{"schema_version":1,"outcome":{outcome},"timed_out":{timed_out},"error":{},"wall_time_secs":3.0,"user_cpu_secs":0.0,"system_cpu_secs":0.0,"peak_rss_kib":1,"started_at_unix":1.0,"ended_at_unix":4.0,"outputs":[],"missing_outputs":[],"warnings":[],"agent":{{"version":"0.1.0","user":"condor","uid":1000,"setup_secs":0.0}}}}"#,
            error.map_or("null".to_owned(), |e| format!("{e:?}"))
        );
        JobResult::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_time_limit_kill_is_not_a_capsule_failure() {
        let killed = r#"{"kind":"signaled","signal":9,"core_dumped":false}"#;
        let limit = "the job exceeded its wall-time limit and was killed";
        assert_eq!(agent_problem(&result(killed, true, Some(limit))), None);
        let full = "outputs did not fit on the data disk";
        assert_eq!(
            agent_problem(&result(killed, true, Some(&format!("{limit}; {full}")))),
            Some(full.to_owned())
        );
        let exited = r#"{"kind":"exited","code":0}"#;
        assert_eq!(
            agent_problem(&result(exited, false, Some(full))),
            Some(full.to_owned())
        );
        assert_eq!(agent_problem(&result(exited, false, None)), None);
    }
}
