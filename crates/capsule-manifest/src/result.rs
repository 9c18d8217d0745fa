//! `result.json`: what happened to the job (schema in the crate docs).

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::path::{OutputPath, RelPath};
use crate::{json, EntryKind, Error, RESULT_JSON};

/// The `result.json` schema this crate writes; version 1 (a single `error` text) is still read.
pub const RESULT_SCHEMA_VERSION: u32 = 2;
/// Highest signal number Linux uses (`SIGRTMAX`).
pub(crate) const MAX_SIGNAL: u8 = 64;
/// Most problems one result may carry.
const MAX_PROBLEMS: usize = 64;
/// Longest problem message, in bytes.
const MAX_MESSAGE_BYTES: usize = 4096;
/// Most names one result may list in `removed`.
pub const MAX_REMOVED: usize = 1024;

/// The result, `result.json`, written last by the guest agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    /// [`RESULT_SCHEMA_VERSION`] (a version-1 file is converted when read).
    pub schema_version: u32,
    /// How the job ended, or that it never started.
    pub outcome: Outcome,
    /// The wall-time limit killed the job.
    pub timed_out: bool,
    /// What went wrong, each with its kind; empty when nothing did.
    pub problems: Vec<Problem>,
    /// Job start to job end, seconds.
    pub wall_time_secs: f64,
    /// User CPU of the job and its waited-for descendants, seconds.
    pub user_cpu_secs: f64,
    /// System CPU of the job and its waited-for descendants, seconds.
    pub system_cpu_secs: f64,
    /// Largest resident set size among the job and its waited-for descendants, KiB.
    pub peak_rss_kib: u64,
    /// Job start, seconds since the Unix epoch (guest clock).
    pub started_at_unix: f64,
    /// Job end, seconds since the Unix epoch (guest clock).
    pub ended_at_unix: f64,
    /// Top-level entries written to `output.tar`.
    pub outputs: Vec<OutputEntry>,
    /// Explicit `TransferOutput` entries that did not exist.
    pub missing_outputs: Vec<OutputPath>,
    /// Things the agent skipped or worked around (symlinks not collected, ...).
    pub warnings: Vec<String>,
    /// Facts about the agent run.
    pub agent: AgentInfo,
    /// After a checkpoint exit: the top-level entries of the work dir that came from the
    /// data disk and that the job removed (plain names, at most [`MAX_REMOVED`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RelPath>,
}

/// Something that went wrong, typed so the host branches on the kind, not on the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// For a human.
    pub message: String,
}

/// The kinds of [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The job could not be started (the outcome is `not_started`).
    NotStarted,
    /// The wall-time limit killed the job (part of its outcome, not a capsule failure).
    TimeLimit,
    /// Outputs or streams did not fit on the data disk (they are incomplete).
    OutputsDidNotFit,
    /// The job ran but its outputs could not be collected.
    Collect,
    /// Anything else the agent could not do.
    Agent,
}

impl ProblemKind {
    /// Whether the problem leaves the job's results incomplete (the capsule failed), as
    /// opposed to describing the job's own outcome.
    pub fn is_capsule_failure(self) -> bool {
        !matches!(self, ProblemKind::NotStarted | ProblemKind::TimeLimit)
    }
}

/// `result.json` version 1: one `error` text instead of typed problems.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobResultV1 {
    schema_version: u32,
    outcome: Outcome,
    timed_out: bool,
    error: Option<String>,
    wall_time_secs: f64,
    user_cpu_secs: f64,
    system_cpu_secs: f64,
    peak_rss_kib: u64,
    started_at_unix: f64,
    ended_at_unix: f64,
    outputs: Vec<OutputEntry>,
    missing_outputs: Vec<OutputPath>,
    warnings: Vec<String>,
    agent: AgentInfo,
}

impl From<JobResultV1> for JobResult {
    fn from(v1: JobResultV1) -> JobResult {
        // Version 1 joined its problems with "; ": split them and type them by what version 1
        // agents wrote (only for reading old results; new ones carry the kind).
        let problems = v1
            .error
            .iter()
            .flat_map(|e| e.split("; "))
            .map(|part| Problem {
                kind: if v1.outcome == Outcome::NotStarted {
                    ProblemKind::NotStarted
                } else if v1.timed_out && part.contains("wall-time limit") {
                    ProblemKind::TimeLimit
                } else if part.contains("did not fit") {
                    ProblemKind::OutputsDidNotFit
                } else {
                    ProblemKind::Agent
                },
                message: part.to_owned(),
            })
            .collect();
        let _ = v1.schema_version;
        JobResult {
            schema_version: RESULT_SCHEMA_VERSION,
            outcome: v1.outcome,
            timed_out: v1.timed_out,
            problems,
            wall_time_secs: v1.wall_time_secs,
            user_cpu_secs: v1.user_cpu_secs,
            system_cpu_secs: v1.system_cpu_secs,
            peak_rss_kib: v1.peak_rss_kib,
            started_at_unix: v1.started_at_unix,
            ended_at_unix: v1.ended_at_unix,
            outputs: v1.outputs,
            missing_outputs: v1.missing_outputs,
            warnings: v1.warnings,
            agent: v1.agent,
            removed: Vec::new(),
        }
    }
}

/// How the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The job called exit with this code.
    Exited {
        /// Exit code, 0-255.
        code: u8,
    },
    /// A signal killed the job.
    Signaled {
        /// Signal number (9 when the time limit killed it).
        signal: u8,
        /// The kernel reported a core dump.
        core_dumped: bool,
    },
    /// The job never ran; `error` says why.
    NotStarted,
}

/// One top-level entry of `output.tar`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEntry {
    /// Path relative to the work dir, as stored in `output.tar`.
    pub path: RelPath,
    /// File or directory tree.
    pub kind: EntryKind,
    /// Bytes of file data (for a directory, of all files below it).
    pub size: u64,
}

/// Facts about the agent run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    /// capsule-init version.
    pub version: String,
    /// Account the job ran as (empty when it never got that far).
    pub user: String,
    /// Its uid.
    pub uid: u32,
    /// Agent start to job exec, seconds (0 when the job never started).
    pub setup_secs: f64,
}

impl JobResult {
    /// A result for a job that never started, with every measure at zero.
    #[must_use]
    pub fn not_started(error: impl Into<String>, agent: AgentInfo) -> Self {
        JobResult {
            schema_version: RESULT_SCHEMA_VERSION,
            outcome: Outcome::NotStarted,
            timed_out: false,
            problems: vec![Problem {
                kind: ProblemKind::NotStarted,
                message: error.into(),
            }],
            wall_time_secs: 0.0,
            user_cpu_secs: 0.0,
            system_cpu_secs: 0.0,
            peak_rss_kib: 0,
            started_at_unix: 0.0,
            ended_at_unix: 0.0,
            outputs: Vec::new(),
            missing_outputs: Vec::new(),
            warnings: Vec::new(),
            agent,
            removed: Vec::new(),
        }
    }

    /// Parse and validate a `result.json` (untrusted: it comes back from the guest).
    ///
    /// # Errors
    ///
    /// As [`crate::Manifest::from_json`], for `result.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let version = json::schema_version(RESULT_JSON, bytes, &[1, RESULT_SCHEMA_VERSION])?;
        let r: JobResult = if version == 1 {
            json::parse::<JobResultV1>(RESULT_JSON, 1, bytes)?.into()
        } else {
            json::parse(RESULT_JSON, version, bytes)?
        };
        r.validate()?;
        Ok(r)
    }

    /// Record a problem.
    pub fn add_problem(&mut self, kind: ProblemKind, message: impl Into<String>) {
        self.problems.push(Problem {
            kind,
            message: message.into(),
        });
    }

    /// The messages of the problems of these kinds, joined for a human; `None` when there
    /// are none.
    pub fn problem_text(&self, keep: impl Fn(ProblemKind) -> bool) -> Option<String> {
        let parts: Vec<&str> = self
            .problems
            .iter()
            .filter(|p| keep(p.kind))
            .map(|p| p.message.as_str())
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Read (at most [`crate::MAX_JSON_BYTES`] + 1 bytes), parse and validate a `result.json`.
    ///
    /// # Errors
    ///
    /// As [`JobResult::from_json`], plus [`Error::Read`].
    pub fn from_reader(reader: impl Read) -> Result<Self, Error> {
        JobResult::from_json(&json::read_bounded(RESULT_JSON, reader)?)
    }

    /// Validate, then serialize as pretty JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when a field breaks the schema.
    pub fn to_json(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        json::to_vec(RESULT_JSON, RESULT_SCHEMA_VERSION, self)
    }

    /// Check every rule of the schema.
    ///
    /// # Errors
    ///
    /// The first broken rule, as [`Error::Invalid`] or [`Error::UnsupportedSchemaVersion`].
    pub fn validate(&self) -> Result<(), Error> {
        if self.schema_version != RESULT_SCHEMA_VERSION {
            return Err(Error::UnsupportedSchemaVersion {
                file: RESULT_JSON,
                found: u64::from(self.schema_version),
                supported: RESULT_SCHEMA_VERSION,
            });
        }
        if self.problems.len() > MAX_PROBLEMS {
            return Err(Error::invalid(
                RESULT_JSON,
                "problems",
                &self.problems.len().to_string(),
                format!("at most {MAX_PROBLEMS} problems"),
            ));
        }
        if let Some((i, p)) = self
            .problems
            .iter()
            .enumerate()
            .find(|(_, p)| p.message.len() > MAX_MESSAGE_BYTES)
        {
            return Err(Error::invalid(
                RESULT_JSON,
                format!("problems[{i}].message"),
                &format!("{} bytes", p.message.len()),
                format!("at most {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
        if let Outcome::Signaled { signal, .. } = self.outcome {
            if signal == 0 || signal > MAX_SIGNAL {
                return Err(Error::invalid(
                    RESULT_JSON,
                    "outcome.signal",
                    &signal.to_string(),
                    format!("a signal number is 1-{MAX_SIGNAL}"),
                ));
            }
        }
        if self.outcome == Outcome::NotStarted
            && !self
                .problems
                .iter()
                .any(|p| p.kind == ProblemKind::NotStarted)
        {
            return Err(Error::invalid(
                RESULT_JSON,
                "problems",
                "no not_started problem",
                "a job that did not start needs a not_started problem saying why",
            ));
        }
        for (field, v) in [
            ("wall_time_secs", self.wall_time_secs),
            ("user_cpu_secs", self.user_cpu_secs),
            ("system_cpu_secs", self.system_cpu_secs),
            ("started_at_unix", self.started_at_unix),
            ("ended_at_unix", self.ended_at_unix),
            ("agent.setup_secs", self.agent.setup_secs),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::invalid(
                    RESULT_JSON,
                    field,
                    &v.to_string(),
                    "must be a finite number >= 0",
                ));
            }
        }
        if self.removed.len() > MAX_REMOVED {
            return Err(Error::invalid(
                RESULT_JSON,
                "removed",
                &self.removed.len().to_string(),
                format!("at most {MAX_REMOVED} names"),
            ));
        }
        if let Some((i, name)) = self
            .removed
            .iter()
            .enumerate()
            .find(|(_, n)| n.depth() != 1)
        {
            return Err(Error::invalid(
                RESULT_JSON,
                format!("removed[{i}]"),
                name.as_str(),
                crate::path::PathError::NotAName.to_string(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn agent() -> AgentInfo {
        AgentInfo {
            version: "0.1.0".into(),
            user: "condor".into(),
            uid: 1000,
            setup_secs: 0.001,
        }
    }

    #[test]
    fn round_trip_and_exact_shape() {
        let mut r = JobResult::not_started("x", agent());
        r.outcome = Outcome::Signaled {
            signal: 11,
            core_dumped: false,
        };
        r.problems.clear();
        r.add_problem(ProblemKind::Agent, "something");
        r.outputs.push(OutputEntry {
            path: RelPath::parse("d/x").unwrap(),
            kind: EntryKind::Dir,
            size: 3,
        });
        let json = r.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""kind": "signaled""#), "{text}");
        assert_eq!(JobResult::from_json(&json).unwrap(), r);
    }

    /// Issue 16: a version-1 result (one joined `error` text) is still read, typed.
    #[test]
    fn version_1_results_are_read_with_typed_problems() {
        let v1 = br#"{"schema_version":1,"outcome":{"kind":"signaled","signal":9,"core_dumped":false},"timed_out":true,"error":"the job exceeded its wall-time limit and was killed; outputs did not fit on the data disk (3 MiB free)","wall_time_secs":3.0,"user_cpu_secs":0.0,"system_cpu_secs":0.0,"peak_rss_kib":1,"started_at_unix":1.0,"ended_at_unix":4.0,"outputs":[],"missing_outputs":[],"warnings":[],"agent":{"version":"0.1.0","user":"condor","uid":1000,"setup_secs":0.0}}"#;
        let r = JobResult::from_json(v1).unwrap();
        assert_eq!(r.schema_version, RESULT_SCHEMA_VERSION);
        let kinds: Vec<ProblemKind> = r.problems.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            vec![ProblemKind::TimeLimit, ProblemKind::OutputsDidNotFit]
        );
        assert_eq!(
            r.problem_text(ProblemKind::is_capsule_failure).unwrap(),
            "outputs did not fit on the data disk (3 MiB free)"
        );
    }

    #[test]
    fn hostile_results_are_refused() {
        let good = JobResult::not_started("x", agent());
        let mut json: serde_json::Value = serde_json::from_slice(&good.to_json().unwrap()).unwrap();
        json["outputs"] = serde_json::json!([{"path": "../x", "kind": "file", "size": 0}]);
        let e = JobResult::from_json(json.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains(r#"invalid path "../x""#), "{e}");
        json["outputs"] = serde_json::json!([]);
        json["missing_outputs"] = serde_json::json!(["/etc/passwd"]);
        let e = JobResult::from_json(json.to_string().as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains(r#"invalid path "/etc/passwd""#),
            "{e}"
        );
        let mut bad = good.clone();
        bad.outcome = Outcome::Signaled {
            signal: 200,
            core_dumped: true,
        };
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.problems.clear();
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.problems[0].message = "x".repeat(5000);
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.wall_time_secs = -1.0;
        assert!(bad.validate().is_err());
        // `removed`: plain names only, and a bounded list of them.
        for hostile in ["../x", "/etc", "a/b", ".", ""] {
            json["missing_outputs"] = serde_json::json!([]);
            json["removed"] = serde_json::json!([hostile]);
            assert!(
                JobResult::from_json(json.to_string().as_bytes()).is_err(),
                "{hostile:?} accepted"
            );
        }
        json["removed"] = serde_json::json!(["ckpt.old", "state"]);
        let r = JobResult::from_json(json.to_string().as_bytes()).unwrap();
        assert_eq!(r.removed.len(), 2);
        let mut bad = good;
        bad.removed = vec![RelPath::parse("x").unwrap(); MAX_REMOVED + 1];
        assert!(bad.validate().is_err());
        let e = JobResult::from_json(br#"{"schema_version":7}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("result.json has schema_version 7"),
            "{e}"
        );
        let e =
            JobResult::from_json(br#"{"schema_version":2,"outcome":{"kind":"exited","code":256}}"#)
                .unwrap_err();
        assert!(e.to_string().contains("result.json does not match"), "{e}");
    }
}
