//! The finalize hook: the routed VM job has completed; bring its results to the original job.
//!
//! stdin is the original ad, `------`, and the routed ad (`hookJobExit`). stdout lists
//! attributes merged into the original. The router has already copied the VM job's
//! meaningless `ExitCode = 0` (the vm-gahp's own status), so we print the guest's real status.
//! Since 9.7 a finalize hook cannot hold the job and a non-zero exit loses the terminate event:
//! this hook exits 0 on every input, and reports failures as `ExitCode = 125` with
//! `VMCapsuleError` explaining them.
//!
//! Three phases, each on validated input: [`request`] parses stdin, [`load`] opens and checks
//! the returned disk and its `result.json`, then the streams and `output.tar` are placed by
//! the rules of the original ad ([`crate::hooks::place`]).

mod load;
mod outcome;
mod request;

use classad::ClassAd;

pub use load::read_result;
pub use outcome::{
    agent_problem, describe, failure_attributes, EXIT_CAPSULE_FAILED, EXIT_NOT_STARTED,
};
pub use request::{FinalizeRequest, RoutedCapsule};

use super::log::HookLog;
use super::place::{place_outputs, quote, write_stream, OutputRules, Placement};
use crate::job::JobSpec;
use crate::scratch::JobDir;
use crate::settings::FinalizeSettings;
use crate::temp_record::TempRecord;

/// What finalize concluded.
#[derive(Debug, Clone)]
pub struct Finalized {
    /// Attributes for the original job.
    pub attrs: ClassAd,
    /// What was placed, and the problems.
    pub placement: Placement,
}

/// Run finalize on the hook's stdin; each output's temporary file is recorded in `temps` while
/// it is written. Never fails: every problem becomes attributes.
pub fn finalize(
    stdin: &str,
    cfg: &FinalizeSettings,
    temps: &TempRecord,
    log: &mut HookLog,
) -> Finalized {
    let mut out = Finalized {
        attrs: ClassAd::new(),
        placement: Placement::default(),
    };
    let request = match FinalizeRequest::parse(stdin) {
        Ok(r) => r,
        Err(e) => return fail(out, &e, None, log),
    };
    let job = &request.job;
    let Some(capsule) = request.capsule else {
        log.warn("the routed ad is not a vm-capsule job; nothing to do");
        return out;
    };
    if capsule.vanilla {
        // HTCondor's own transfer placed the outputs and the router mirrored the launcher's
        // exit status, which is the job's: nothing to extract, nothing to correct. The job's
        // own usage stays on the routed job unless we copy it.
        let (usage, refused) = &request.usage;
        usage.write_to(&mut out.attrs);
        if !refused.is_empty() {
            log.warn(&format!(
                "the routed job's {} not copied: the launcher never publishes such values",
                refused.join(", ")
            ));
        }
        log.info("vanilla flavour, outputs placed by HTCondor");
        return out;
    }
    if let Err(e) = crate::identity::check_runs_as(&job.owner, cfg.test_any_user) {
        return fail(out, &e.to_string(), None, log);
    }
    log.info(&format!("finalizing from {}", capsule.scratch.display()));
    let dir = match cfg
        .prefix
        .owner_dir(&job.owner, false)
        .and_then(|owner| owner.open_job_dir(&capsule.scratch))
    {
        Ok(dir) => dir,
        Err(e) => return fail(out, &e.to_string(), None, log),
    };
    let returned = match load::load(&dir, &capsule, cfg.max_disk_bytes) {
        Ok(r) => r,
        Err(e) => return fail(out, &e.to_string(), Some(&dir), log),
    };
    place_streams(job, &returned.disk, &mut out.placement);
    if !returned.result.outputs.is_empty() {
        place_archive(job, &returned.disk, temps, &mut out.placement);
    }
    // The agent reports trouble beside a real outcome (outputs that did not fit on the data
    // disk, say): the job's files are incomplete, so the user must hear about it. A time-limit
    // kill is the job's outcome, already told by ExitSignal and VMCapsuleTimedOut.
    if let Some(problem) = agent_problem(&returned.result) {
        out.placement
            .problem(format!("the guest agent reported: {problem}"));
    }
    for missing in returned.result.missing_outputs.iter().take(20) {
        // HTCondor holds a job whose named output is missing; we can only report it.
        out.placement.problem(format!(
            "output {} named in transfer_output_files was not created by the job",
            quote(missing.as_bytes())
        ));
    }
    outcome::exit_attributes(&mut out.attrs, &returned.result);
    if out.placement.has_problems() {
        let text = out.placement.summary();
        log.error(&text);
        mark_failed(&dir, &text);
        outcome::failure_attributes(&mut out.attrs, &text, Some(&returned.result));
    }
    log.info(&format!(
        "{} ({} output files, {} bytes)",
        outcome::describe(&returned.result.outcome),
        out.placement.files,
        out.placement.bytes
    ));
    out
}

/// The job's stdout and stderr, from plain files on the disk to `Out` and `Err`.
fn place_streams(job: &JobSpec, disk: &capsule_disk::DataDisk, placement: &mut Placement) {
    let streams = [
        (job.stdout.as_ref(), capsule_manifest::DEFAULT_STDOUT),
        (job.stderr.as_ref(), capsule_manifest::DEFAULT_STDERR),
    ];
    for (target, name) in streams {
        let Some(target) = target else { continue };
        match disk.open_file(name) {
            Ok(mut reader) => {
                let max = reader.len();
                match write_stream(&target.path, &job.id(), &mut reader, max) {
                    Ok(bytes) => {
                        placement.files += 1;
                        placement.bytes += bytes;
                    }
                    Err(e) => {
                        placement.problem(format!("{name} -> {}: {e}", target.path.display()))
                    }
                }
            }
            Err(e) => placement.problem(format!("{name} is missing on the data disk: {e}")),
        }
    }
}

/// `output.tar`, by the rules of the original ad.
fn place_archive(
    job: &JobSpec,
    disk: &capsule_disk::DataDisk,
    temps: &TempRecord,
    placement: &mut Placement,
) {
    let rules = match OutputRules::for_job(job) {
        Ok(r) => r,
        Err(e) => return placement.problem(e),
    };
    match disk.open_file(capsule_manifest::OUTPUT_TAR) {
        Ok(reader) => {
            let placed = place_outputs(reader, &rules, &job.id(), temps);
            placement.files += placed.files;
            placement.bytes += placed.bytes;
            for p in placed.problems {
                placement.problem(p);
            }
            placement.more_problems += placed.more_problems;
        }
        Err(e) => placement.problem(format!("output.tar is missing on the data disk: {e}")),
    }
}

/// The answer when finalize could not even read its input.
pub fn failed(reason: &str, log: &mut HookLog) -> Finalized {
    let out = Finalized {
        attrs: ClassAd::new(),
        placement: Placement::default(),
    };
    fail(out, reason, None, log)
}

fn fail(mut out: Finalized, reason: &str, dir: Option<&JobDir>, log: &mut HookLog) -> Finalized {
    log.error(reason);
    if let Some(dir) = dir {
        mark_failed(dir, reason);
    }
    out.placement.problem(reason.to_owned());
    outcome::failure_attributes(&mut out.attrs, reason, None);
    out
}

/// Leave the reason in the job dir, so cleanup keeps it for inspection.
fn mark_failed(dir: &JobDir, reason: &str) {
    let path = dir.path().join(crate::scratch::FAILED_MARKER);
    let _ = write_stream(
        &path,
        "marker",
        &mut format!("{reason}\n").as_bytes(),
        1 << 16,
    );
}
