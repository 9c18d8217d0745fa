//! `result.json`: what happened to the job (schema in the crate docs).

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::path::check_relative_path;
use crate::{json, EntryKind, Error, RESULT_JSON, SCHEMA_VERSION};

/// Highest signal number Linux uses (`SIGRTMAX`).
const MAX_SIGNAL: u8 = 64;

/// The result, `result.json`, written last by the guest agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    /// Always [`SCHEMA_VERSION`] once validated.
    pub schema_version: u32,
    /// How the job ended, or that it never started.
    pub outcome: Outcome,
    /// The wall-time limit killed the job.
    pub timed_out: bool,
    /// What went wrong, for a human; `None` when nothing did.
    pub error: Option<String>,
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
    pub missing_outputs: Vec<String>,
    /// Things the agent skipped or worked around (symlinks not collected, ...).
    pub warnings: Vec<String>,
    /// Facts about the agent run.
    pub agent: AgentInfo,
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
    pub path: String,
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
            schema_version: SCHEMA_VERSION,
            outcome: Outcome::NotStarted,
            timed_out: false,
            error: Some(error.into()),
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
        }
    }

    /// Parse and validate a `result.json` (untrusted: it comes back from the guest).
    ///
    /// # Errors
    ///
    /// As [`crate::Manifest::from_json`], for `result.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let r: JobResult = json::from_slice(RESULT_JSON, bytes)?;
        r.validate()?;
        Ok(r)
    }

    /// Read (at most [`crate::MAX_JSON_BYTES`] + 1 bytes), parse and validate a `result.json`.
    ///
    /// # Errors
    ///
    /// As [`JobResult::from_json`], plus [`Error::Read`].
    pub fn from_reader(reader: impl Read) -> Result<Self, Error> {
        let r: JobResult = json::from_reader(RESULT_JSON, reader)?;
        r.validate()?;
        Ok(r)
    }

    /// Validate, then serialize as pretty JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when a field breaks the schema.
    pub fn to_json(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        json::to_vec(RESULT_JSON, self)
    }

    /// Check every rule of the schema.
    ///
    /// # Errors
    ///
    /// The first broken rule, as [`Error::Invalid`] or [`Error::UnsupportedSchemaVersion`].
    pub fn validate(&self) -> Result<(), Error> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(Error::UnsupportedSchemaVersion {
                file: RESULT_JSON,
                found: u64::from(self.schema_version),
                supported: SCHEMA_VERSION,
            });
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
        if self.outcome == Outcome::NotStarted && self.error.is_none() {
            return Err(Error::invalid(
                RESULT_JSON,
                "error",
                "null",
                "a job that did not start needs an error saying why",
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
        for (i, out) in self.outputs.iter().enumerate() {
            if let Err(reason) = check_relative_path(&out.path, false) {
                return Err(Error::invalid(
                    RESULT_JSON,
                    format!("outputs[{i}].path"),
                    &out.path,
                    reason,
                ));
            }
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
        r.error = None;
        r.outputs.push(OutputEntry {
            path: "d/x".into(),
            kind: EntryKind::Dir,
            size: 3,
        });
        let json = r.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""kind": "signaled""#), "{text}");
        assert_eq!(JobResult::from_json(&json).unwrap(), r);
    }

    #[test]
    fn hostile_results_are_refused() {
        let good = JobResult::not_started("x", agent());
        let mut bad = good.clone();
        bad.outputs.push(OutputEntry {
            path: "../x".into(),
            kind: EntryKind::File,
            size: 0,
        });
        assert!(bad
            .to_json()
            .unwrap_err()
            .to_string()
            .contains("outputs[0].path"));
        let mut bad = good.clone();
        bad.outcome = Outcome::Signaled {
            signal: 200,
            core_dumped: true,
        };
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.error = None;
        assert!(bad.validate().is_err());
        let mut bad = good;
        bad.wall_time_secs = -1.0;
        assert!(bad.validate().is_err());
        let e = JobResult::from_json(br#"{"schema_version":7}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("result.json has schema_version 7"),
            "{e}"
        );
        let e =
            JobResult::from_json(br#"{"schema_version":1,"outcome":{"kind":"exited","code":256}}"#)
                .unwrap_err();
        assert!(e.to_string().contains("result.json does not match"), "{e}");
    }
}
