//! The one reader of a returned data disk: `result.json`, the job's streams and `output.tar`
//! become a typed [`JobExit`] (how the job ended, what was placed and what went wrong, its
//! usage), for both the finalize hook (VM universe) and the vanilla flavour's launcher.
//!
//! Shared core: this module imports neither the hooks nor the execute side. Each caller opens
//! the disk its own way (finalize first checks what came back into the job dir; the launcher
//! opens the disk in its sandbox) and decides where the results go ([`Delivery`]); what the
//! disk says is read, validated and turned into words here, once.

pub mod place;

use std::io::{Read, Write};
use std::path::Path;

use capsule_disk::DataDisk;
use capsule_manifest::{JobResult, Outcome, OutputPath, ProblemKind};

use crate::temp_record::TempRecord;
use crate::usage::JobUsage;
use place::{
    place_outputs_with, quote, write_stream, BadOutputEntry, OutputRules, Placement, Placer,
};

/// How the job ended, as the guest agent reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// The job exited with this code.
    Exited(u8),
    /// A signal killed the job.
    Signaled {
        /// The signal number.
        signal: u8,
        /// The kernel reported a core dump.
        core_dumped: bool,
    },
    /// The job could not be started in the guest; why.
    NotStarted(String),
}

impl ExitStatus {
    /// The status `result` reports; a job that never started says why.
    pub fn from_result(result: &JobResult) -> ExitStatus {
        match result.outcome {
            Outcome::Exited { code } => ExitStatus::Exited(code),
            Outcome::Signaled {
                signal,
                core_dumped,
            } => ExitStatus::Signaled {
                signal,
                core_dumped,
            },
            Outcome::NotStarted => ExitStatus::NotStarted(
                result
                    .problem_text(|k| k == ProblemKind::NotStarted)
                    .unwrap_or_else(|| "the job could not be started".to_owned()),
            ),
        }
    }

    /// The status in words.
    pub fn describe(&self) -> String {
        match self {
            ExitStatus::Exited(code) => format!("exited with code {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => format!(
                "killed by signal {signal}{}",
                if *core_dumped { " (core dumped)" } else { "" }
            ),
            ExitStatus::NotStarted(_) => "not started".to_owned(),
        }
    }
}

/// An outcome in words (as [`ExitStatus::describe`]).
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited { code } => ExitStatus::Exited(*code),
        Outcome::Signaled {
            signal,
            core_dumped,
        } => ExitStatus::Signaled {
            signal: *signal,
            core_dumped: *core_dumped,
        },
        Outcome::NotStarted => ExitStatus::NotStarted(String::new()),
    }
    .describe()
}

/// What the agent reports beyond the job's own outcome (a time-limit kill and a job that
/// never started are the outcome, reported as such): `None` when nothing.
pub fn agent_problem(result: &JobResult) -> Option<String> {
    if matches!(result.outcome, Outcome::NotStarted) {
        return None;
    }
    result.problem_text(ProblemKind::is_capsule_failure)
}

/// Where one of the job's streams goes.
pub enum StreamSink<'a> {
    /// Nowhere: the job did not ask for it.
    Skip,
    /// Into this file, written beside it and renamed over it; a stream missing on the disk or
    /// a failed write is a placement problem.
    File(&'a Path),
    /// Copied here, best effort (the launcher's own stdout and stderr, which HTCondor
    /// transfers as the job's): a missing stream is an empty one.
    Copy(&'a mut dyn Write),
}

impl std::fmt::Debug for StreamSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamSink::Skip => f.write_str("Skip"),
            StreamSink::File(path) => f.debug_tuple("File").field(path).finish(),
            StreamSink::Copy(_) => f.write_str("Copy(..)"),
        }
    }
}

/// Where the job's results go.
pub struct Delivery<'a> {
    /// The job's stdout.
    pub stdout: StreamSink<'a>,
    /// The job's stderr.
    pub stderr: StreamSink<'a>,
    /// The rules that place `output.tar`'s members, or why there are none (a problem only
    /// when the job returned outputs).
    pub outputs: Result<OutputRules, BadOutputEntry>,
    /// Names this job's temporary files (the job id).
    pub tag: &'a str,
    /// Where every temporary file is recorded while it exists (a hook's watchdog removes it
    /// when time runs out mid-copy).
    pub temps: &'a TempRecord,
}

impl std::fmt::Debug for Delivery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .field("outputs", &self.outputs)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// The job's end, read from its returned data disk.
#[derive(Debug, Clone, PartialEq)]
pub struct JobExit {
    /// How the job ended.
    pub status: ExitStatus,
    /// The wall-time limit killed the job.
    pub timed_out: bool,
    /// The job's own usage, as the guest measured it.
    pub usage: JobUsage,
    /// The streams and outputs placed, and the problems placing them.
    pub placement: Placement,
    /// What the agent reported beyond the outcome ([`agent_problem`]).
    pub agent_problem: Option<String>,
    /// `transfer_output_files` entries the job did not create (HTCondor would hold the job).
    pub missing_outputs: Vec<OutputPath>,
    /// After a checkpoint exit: the top-level entries that came in and the job removed
    /// (plain names, bounded; the guest's word, to be checked against what was sent).
    pub removed: Vec<String>,
}

impl JobExit {
    /// Every problem in one list, for a job that must be marked failed: placement problems,
    /// then the agent's, then the first 20 missing outputs (each bounded like the rest).
    pub fn all_problems(&self) -> Placement {
        let mut all = self.placement.clone();
        if let Some(problem) = &self.agent_problem {
            all.problem(format!("the guest agent reported: {problem}"));
        }
        for missing in self.missing_outputs.iter().take(20) {
            // HTCondor holds a job whose named output is missing; we can only report it.
            all.problem(format!(
                "output {} named in transfer_output_files was not created by the job",
                quote(missing.to_string().as_bytes())
            ));
        }
        all
    }
}

/// Why `result.json` could not be had from a returned data disk. The cause is part of the
/// message (these end up in one-line hold reasons and `VMCapsuleError`), not a `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// The guest never wrote it.
    #[error("no result.json: {0}")]
    Missing(capsule_disk::Error),
    /// The disk would not give it back.
    #[error("result.json unreadable: {0}")]
    Unreadable(std::io::Error),
    /// It breaks the schema.
    #[error("result.json invalid: {0}")]
    Invalid(capsule_manifest::Error),
}

/// Why a returned data disk says nothing about the job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReturnedError {
    /// No valid `result.json`: the guest never finished.
    #[error("the VM ended without a result ({0}); the guest may have crashed or run out of time")]
    NoResult(ResultError),
}

/// Read and validate `result.json` from a returned data disk (bounded).
///
/// # Errors
/// [`ResultError`] saying what is missing or invalid.
pub fn read_result(disk: &DataDisk) -> Result<JobResult, ResultError> {
    let reader = disk
        .open_file(capsule_manifest::RESULT_JSON)
        .map_err(ResultError::Missing)?;
    let mut bytes = Vec::new();
    reader
        .take(capsule_manifest::MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ResultError::Unreadable)?;
    JobResult::from_json(&bytes).map_err(ResultError::Invalid)
}

/// Read the job's end from `disk` and deliver its streams and outputs as `delivery` says.
///
/// # Errors
/// [`ReturnedError::NoResult`] when the disk holds no valid `result.json`; nothing is
/// delivered then. Every later problem is in [`JobExit::placement`].
pub fn read(disk: &DataDisk, delivery: Delivery<'_>) -> Result<JobExit, ReturnedError> {
    let result = read_result(disk).map_err(ReturnedError::NoResult)?;
    let Delivery {
        stdout,
        stderr,
        outputs,
        tag,
        temps,
    } = delivery;
    let mut placement = Placement::default();
    for (sink, name) in [
        (stdout, capsule_manifest::DEFAULT_STDOUT),
        (stderr, capsule_manifest::DEFAULT_STDERR),
    ] {
        deliver_stream(disk, name, sink, tag, &mut placement);
    }
    if !result.outputs.is_empty() {
        match outputs {
            Ok(rules) => place_archive(
                disk,
                &rules,
                Placer::new(tag).recording_in(temps),
                &mut placement,
            ),
            Err(e) => placement.problem(e.to_string()),
        }
    }
    Ok(JobExit {
        status: ExitStatus::from_result(&result),
        timed_out: result.timed_out,
        usage: JobUsage::from_result(&result),
        placement,
        agent_problem: agent_problem(&result),
        missing_outputs: result.missing_outputs,
        removed: result
            .removed
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect(),
    })
}

/// One stream, from its plain file on the disk to `sink`.
fn deliver_stream(
    disk: &DataDisk,
    name: &str,
    sink: StreamSink<'_>,
    tag: &str,
    placement: &mut Placement,
) {
    match sink {
        StreamSink::Skip => {}
        StreamSink::Copy(out) => {
            if let Ok(mut reader) = disk.open_file(name) {
                let _ = std::io::copy(&mut reader, out);
            }
        }
        StreamSink::File(path) => match disk.open_file(name) {
            Ok(mut reader) => {
                let max = reader.len();
                match write_stream(path, tag, &mut reader, max) {
                    Ok(bytes) => {
                        placement.files += 1;
                        placement.bytes += bytes;
                    }
                    Err(e) => placement.problem(format!("{name} -> {}: {e}", path.display())),
                }
            }
            Err(e) => placement.problem(format!("{name} is missing on the data disk: {e}")),
        },
    }
}

/// `output.tar`, by `rules`.
fn place_archive(disk: &DataDisk, rules: &OutputRules, placer: Placer, placement: &mut Placement) {
    match disk.open_file(capsule_manifest::OUTPUT_TAR) {
        Ok(reader) => {
            let placed = place_outputs_with(reader, rules, placer);
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

    #[test]
    fn the_status_says_why_a_job_did_not_start() {
        let not_started = r#"{"kind":"not_started"}"#;
        let status = ExitStatus::from_result(&result(not_started, false, Some("no such file")));
        assert_eq!(status, ExitStatus::NotStarted("no such file".to_owned()));
        assert_eq!(status.describe(), "not started");
        let mut r = result(not_started, false, Some("x"));
        r.problems.clear();
        assert_eq!(
            ExitStatus::from_result(&r),
            ExitStatus::NotStarted("the job could not be started".to_owned())
        );
        let core = ExitStatus::Signaled {
            signal: 11,
            core_dumped: true,
        };
        assert_eq!(core.describe(), "killed by signal 11 (core dumped)");
        assert_eq!(describe(&Outcome::Exited { code: 3 }), "exited with code 3");
    }
}
