//! The finalize hook: the routed VM job has completed; bring its results to the original job.
//!
//! stdin is the original ad, `------`, and the routed ad (`hookJobExit`). stdout lists
//! attributes merged into the original. The router has already copied the VM job's
//! meaningless `ExitCode = 0` (the vm-gahp's own status), so we print the guest's real status.
//! Since 9.7 a finalize hook cannot hold the job and a non-zero exit loses the terminate event:
//! this hook exits 0 on every input, and reports failures as `ExitCode = 125` with
//! `VMCapsuleError` explaining them.
//!
//! Three phases, each on validated input: [`request`] parses stdin, [`load`] checks and opens
//! the returned disk in the job dir, then [`vm_capsule_core::returned::read`] (shared with the vanilla
//! launcher) reads its `result.json` into a `JobExit` and places the streams and `output.tar`
//! by the rules of the original ad. Every failure is a [`FinalizeError`] saying whose it is.

mod error;
mod load;
mod outcome;
mod request;

use classad::ClassAd;

pub use error::{FinalizeError, Whose};
pub use outcome::{failure_attributes, EXIT_CAPSULE_FAILED, EXIT_NOT_STARTED};
pub use request::{FinalizeRequest, RoutedCapsule};

use super::log::HookLog;
use vm_capsule_core::job::JobSpec;
use vm_capsule_core::returned::place::{write_stream, OutputRules, Placement};
use vm_capsule_core::returned::{self, Delivery, StreamSink};
use vm_capsule_core::scratch::JobDir;
use vm_capsule_core::settings::FinalizeSettings;
use vm_capsule_core::temp_record::TempRecord;

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
    if let Err(e) = vm_capsule_core::identity::check_runs_as(&job.owner, cfg.test_any_user) {
        return fail(out, &e.into(), None, log);
    }
    log.info(&format!("finalizing from {}", capsule.scratch.display()));
    let dir = match cfg
        .prefix
        .owner_dir(&job.owner, false)
        .and_then(|owner| owner.open_job_dir(&capsule.scratch))
    {
        Ok(dir) => dir,
        Err(e) => return fail(out, &e.into(), None, log),
    };
    let disk = match load::load(&dir, &capsule, cfg.max_disk_bytes) {
        Ok(disk) => disk,
        Err(e) => return fail(out, &e, Some(&dir), log),
    };
    let tag = job.id();
    let exit = match returned::read(&disk, delivery(job, &tag, temps)) {
        Ok(exit) => exit,
        Err(e) => return fail(out, &e.into(), Some(&dir), log),
    };
    // The agent reports trouble beside a real outcome (outputs that did not fit on the data
    // disk, say): the job's files are incomplete, so the user must hear about it, as about
    // outputs the job did not create. A time-limit kill is the job's outcome, already told by
    // ExitSignal and VMCapsuleTimedOut.
    out.placement = exit.all_problems();
    outcome::exit_attributes(&mut out.attrs, &exit);
    if out.placement.has_problems() {
        let text = out.placement.summary();
        log.error(&text);
        mark_failed(&dir, &text);
        outcome::failure_attributes(&mut out.attrs, &text, Some(&exit.status));
    }
    log.info(&format!(
        "{} ({} output files, {} bytes)",
        exit.status.describe(),
        out.placement.files,
        out.placement.bytes
    ));
    out
}

/// The streams to the files the original ad names, `output.tar` by its rules.
fn delivery<'a>(job: &'a JobSpec, tag: &'a str, temps: &'a TempRecord) -> Delivery<'a> {
    Delivery {
        stdout: sink(job.stdout.as_ref()),
        stderr: sink(job.stderr.as_ref()),
        outputs: OutputRules::for_job(job),
        tag,
        temps,
    }
}

/// A stream to the file the original ad names, if any.
fn sink(target: Option<&vm_capsule_core::job::StreamFile>) -> StreamSink<'_> {
    target.map_or(StreamSink::Skip, |t| StreamSink::File(&t.path))
}

/// The answer when finalize could not even read its input.
pub fn failed(reason: &str, log: &mut HookLog) -> Finalized {
    let out = Finalized {
        attrs: ClassAd::new(),
        placement: Placement::default(),
    };
    fail(out, &FinalizeError::Protocol(reason.to_owned()), None, log)
}

fn fail(
    mut out: Finalized,
    err: &FinalizeError,
    dir: Option<&JobDir>,
    log: &mut HookLog,
) -> Finalized {
    let reason = err.to_string();
    let reason = reason.as_str();
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
    let path = dir.path().join(vm_capsule_core::scratch::FAILED_MARKER);
    let _ = write_stream(
        &path,
        "marker",
        &mut format!("{reason}\n").as_bytes(),
        1 << 16,
    );
}
