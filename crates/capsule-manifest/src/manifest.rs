//! `capsule.json`: what the guest must run (schema in the crate docs).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::path::{Executable, OutputPath, PathError, RelPath};
use crate::{
    json, Error, Outcome, CAPSULE_JSON, DEFAULT_STDERR, DEFAULT_STDOUT, RESERVED_NAMES,
    SCHEMA_VERSION,
};

/// Most `argv` elements accepted (Linux's own limit is about this for short arguments).
const MAX_ARGS: usize = 65_536;
/// Longest limit accepted: ten years, far beyond any job; a bigger value is a unit mistake.
const MAX_WALL_TIME_SECS: u64 = 10 * 366 * 24 * 3600;
/// Longest user name accepted.
const MAX_USER_BYTES: usize = 64;

/// The manifest, `capsule.json`: what the guest agent runs and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`SCHEMA_VERSION`] once validated.
    pub schema_version: u32,
    /// Program to execute: relative to the work dir, or absolute inside the guest.
    pub executable: Executable,
    /// Full argument vector including `argv[0]`, already split.
    pub argv: Vec<String>,
    /// The job's environment, name -> value.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// File (relative to the work dir) to use as stdin; `None` means `/dev/null`.
    #[serde(default)]
    pub stdin: Option<RelPath>,
    /// Data-disk file name receiving the job's stdout (one component).
    #[serde(default = "default_stdout")]
    pub stdout: RelPath,
    /// Data-disk file name receiving the job's stderr (one component).
    #[serde(default = "default_stderr")]
    pub stderr: RelPath,
    /// Account to run the job as.
    #[serde(default = "default_user")]
    pub user: String,
    /// Account used when `user` does not exist in the guest.
    #[serde(default = "default_fallback_user")]
    pub fallback_user: Option<String>,
    /// Wall-time limit in seconds; the job's process group is killed after it.
    #[serde(default)]
    pub wall_time_limit_secs: Option<u64>,
    /// Which files come back.
    #[serde(default)]
    pub output: OutputRule,
    /// Entries the host put in `input.tar`.
    #[serde(default)]
    pub inputs: Vec<InputEntry>,
    /// The job is self-checkpointing: when it exits with this code, every new or changed
    /// top-level entry of the work dir comes back (whatever `output` says), so the host can
    /// restart it from its files. Written only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_exit_code: Option<u8>,
    /// The job is self-checkpointing by a signal: when this signal kills it (without a core
    /// dump), the same as `checkpoint_exit_code`. Written only when set; never with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_exit_signal: Option<u8>,
}

/// How a self-checkpointing job says it has checkpointed, as HTCondor's starter tells
/// (`computeDesiredExitStatus` with the `Checkpoint` prefix): by an exit code, or by dying
/// from a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointExit {
    /// It exits with this code (`SuccessCheckpointExitCode`).
    Code(u8),
    /// This signal kills it (`SuccessCheckpointExitSignal` with
    /// `SuccessCheckpointExitBySignal`).
    Signal(u8),
}

impl CheckpointExit {
    /// Whether the job ending as `outcome` has checkpointed. The starter compares the whole
    /// wait status, so a death by the signal with a core dump is not a checkpoint.
    #[must_use]
    pub fn is(self, outcome: &Outcome) -> bool {
        match (self, *outcome) {
            (CheckpointExit::Code(want), Outcome::Exited { code }) => code == want,
            (
                CheckpointExit::Signal(want),
                Outcome::Signaled {
                    signal,
                    core_dumped: false,
                },
            ) => signal == want,
            _ => false,
        }
    }
}

/// Which files of the work dir are collected into `output.tar`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputRule {
    /// HTCondor's rule without `TransferOutput`: new or changed (mtime or size) regular files in
    /// the top level of the work dir, excluding the executable.
    #[default]
    Default,
    /// HTCondor's `TransferOutput`: these entries (files or whole directory trees).
    Explicit {
        /// Paths relative to the work dir; a trailing `/` is kept as given.
        paths: Vec<OutputPath>,
    },
}

/// One entry of `input.tar`, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputEntry {
    /// Path relative to the work dir.
    pub path: RelPath,
    /// File or directory.
    pub kind: EntryKind,
}

/// Kind of a file-system entry carried in a tar archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory (with its whole tree).
    Dir,
}

fn default_stdout() -> RelPath {
    RelPath::known(DEFAULT_STDOUT)
}
fn default_stderr() -> RelPath {
    RelPath::known(DEFAULT_STDERR)
}
fn default_user() -> String {
    "condor".to_owned()
}
#[allow(clippy::unnecessary_wraps)] // serde's `default` needs the field's type
fn default_fallback_user() -> Option<String> {
    Some("nobody".to_owned())
}

impl Manifest {
    /// A manifest with every optional field at its default.
    #[must_use]
    pub fn new(executable: Executable, argv: Vec<String>) -> Self {
        Manifest {
            schema_version: SCHEMA_VERSION,
            executable,
            argv,
            env: BTreeMap::new(),
            stdin: None,
            stdout: default_stdout(),
            stderr: default_stderr(),
            user: default_user(),
            fallback_user: default_fallback_user(),
            wall_time_limit_secs: None,
            output: OutputRule::Default,
            inputs: Vec::new(),
            checkpoint_exit_code: None,
            checkpoint_exit_signal: None,
        }
    }

    /// How the job checkpoints, if it does.
    #[must_use]
    pub fn checkpoint_exit(&self) -> Option<CheckpointExit> {
        self.checkpoint_exit_signal
            .map(CheckpointExit::Signal)
            .or(self.checkpoint_exit_code.map(CheckpointExit::Code))
    }

    /// Make the job self-checkpointing as `exit` says (or not, with `None`).
    pub fn set_checkpoint_exit(&mut self, exit: Option<CheckpointExit>) {
        (self.checkpoint_exit_code, self.checkpoint_exit_signal) = match exit {
            Some(CheckpointExit::Code(code)) => (Some(code), None),
            Some(CheckpointExit::Signal(signal)) => (None, Some(signal)),
            None => (None, None),
        };
    }

    /// Parse and validate a `capsule.json`.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] over [`crate::MAX_JSON_BYTES`], [`Error::MissingSchemaVersion`] /
    /// [`Error::UnsupportedSchemaVersion`] for a version other than [`SCHEMA_VERSION`],
    /// [`Error::Json`] for malformed JSON or unknown fields, [`Error::Invalid`] for bad values.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let m: Manifest = json::from_slice(CAPSULE_JSON, bytes)?;
        m.validate()?;
        Ok(m)
    }

    /// Read (at most [`crate::MAX_JSON_BYTES`] + 1 bytes), parse and validate a `capsule.json`.
    ///
    /// # Errors
    ///
    /// As [`Manifest::from_json`], plus [`Error::Read`].
    pub fn from_reader(reader: impl Read) -> Result<Self, Error> {
        let m: Manifest = json::from_reader(CAPSULE_JSON, reader)?;
        m.validate()?;
        Ok(m)
    }

    /// Validate, then serialize as pretty JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when a field breaks the schema (so the host never writes a manifest
    /// the guest would refuse).
    pub fn to_json(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        json::to_vec(CAPSULE_JSON, SCHEMA_VERSION, self)
    }

    /// Check every rule of the schema (see the crate docs).
    ///
    /// # Errors
    ///
    /// The first broken rule, as [`Error::Invalid`] or [`Error::UnsupportedSchemaVersion`].
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &str, value: &str, reason: String| {
            Err(Error::invalid(CAPSULE_JSON, field, value, reason))
        };
        if self.schema_version != SCHEMA_VERSION {
            return Err(Error::UnsupportedSchemaVersion {
                file: CAPSULE_JSON,
                found: u64::from(self.schema_version),
                supported: SCHEMA_VERSION,
            });
        }
        // Paths are valid by their types; a value built in code is checked again here, so
        // the host never writes a manifest the guest would refuse.
        if let Err(reason) = Executable::parse(self.executable.as_str()) {
            return bad("executable", self.executable.as_str(), reason.to_string());
        }
        if self.argv.is_empty() {
            return bad("argv", "[]", "needs at least argv[0]".into());
        }
        if self.argv.len() > MAX_ARGS {
            return bad("argv", "…", format!("has more than {MAX_ARGS} elements"));
        }
        for (i, arg) in self.argv.iter().enumerate() {
            if arg.contains('\0') {
                return bad(&format!("argv[{i}]"), arg, "contains a NUL byte".into());
            }
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return bad(
                    "env",
                    name,
                    "a variable name must be non-empty without '=' or NUL".into(),
                );
            }
            if value.contains('\0') {
                return bad(&format!("env.{name}"), value, "contains a NUL byte".into());
            }
        }
        for (field, name) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if name.depth() != 1 {
                return bad(field, name.as_str(), PathError::NotAName.to_string());
            }
            if RESERVED_NAMES.contains(&name.as_str()) {
                return bad(field, name.as_str(), "is a reserved data-disk name".into());
            }
        }
        if self.stdout == self.stderr {
            return bad(
                "stderr",
                self.stderr.as_str(),
                "must differ from stdout".into(),
            );
        }
        check_user("user", &self.user)?;
        if let Some(fallback) = &self.fallback_user {
            check_user("fallback_user", fallback)?;
        }
        if let Some(limit) = self.wall_time_limit_secs {
            if limit == 0 || limit > MAX_WALL_TIME_SECS {
                return bad(
                    "wall_time_limit_secs",
                    &limit.to_string(),
                    format!(
                        "must be between 1 and {MAX_WALL_TIME_SECS} seconds; omit it for no limit"
                    ),
                );
            }
        }
        if let Some(signal) = self.checkpoint_exit_signal {
            if self.checkpoint_exit_code.is_some() {
                return bad(
                    "checkpoint_exit_signal",
                    &signal.to_string(),
                    "a job checkpoints by an exit code or by a signal, not both".into(),
                );
            }
            if signal == 0 || signal > crate::result::MAX_SIGNAL {
                return bad(
                    "checkpoint_exit_signal",
                    &signal.to_string(),
                    format!("a signal number is 1-{}", crate::result::MAX_SIGNAL),
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (i, entry) in self.inputs.iter().enumerate() {
            if !seen.insert(entry.path.as_str()) {
                return bad(
                    &format!("inputs[{i}].path"),
                    entry.path.as_str(),
                    "is listed twice".into(),
                );
            }
        }
        Ok(())
    }
}

/// A user name must be something `/etc/passwd` can hold.
fn check_user(field: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_BYTES
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            CAPSULE_JSON,
            field,
            name,
            format!("a user name is 1-{MAX_USER_BYTES} characters of [A-Za-z0-9_.$-], not starting with '-'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exe(text: &str) -> Executable {
        Executable::parse(text).unwrap()
    }

    fn rel(text: &str) -> RelPath {
        RelPath::parse(text).unwrap()
    }

    fn err_text(json: &str) -> String {
        Manifest::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m =
            Manifest::from_json(br#"{"schema_version":1,"executable":"a","argv":["a"]}"#).unwrap();
        assert_eq!(m, Manifest::new(exe("a"), vec!["a".into()]));
        assert_eq!(m.user, "condor");
        assert_eq!(m.fallback_user.as_deref(), Some("nobody"));
        assert_eq!(m.output, OutputRule::Default);
    }

    #[test]
    fn unknown_version_is_refused_by_name() {
        let e = err_text(r#"{"schema_version":2,"executable":"a","argv":["a"],"new_field":1}"#);
        assert_eq!(
            e,
            "capsule.json has schema_version 2, but this build understands only 1; \
             hint: use a capsule-init and hooks from the same vm-capsule release"
        );
        assert!(
            err_text(r#"{"executable":"a","argv":["a"]}"#).contains("no numeric schema_version")
        );
        assert!(err_text(r#"{"schema_version":"1","executable":"a"}"#).contains("found \"1\""));
    }

    #[test]
    fn unknown_field_is_refused_with_position() {
        let e =
            err_text("{\"schema_version\":1,\"executable\":\"a\",\n\"argv\":[\"a\"],\"argz\":[]}");
        assert!(e.contains("unknown field `argz`"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = err_text(
            r#"{"schema_version":1,"executable":"a","argv":["a"],"output":{"rule":"some"}}"#,
        );
        assert!(e.contains("unknown variant `some`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                r#""executable":"../a","argv":["a"]"#,
                r#"invalid path "../a": the path has a '..' component"#,
            ),
            (r#""executable":"a","argv":[]"#, "field `argv`"),
            (
                r#""executable":"a","argv":["a","b\u0000"]"#,
                "field `argv[1]`",
            ),
            (
                r#""executable":"a","argv":["a"],"env":{"A=B":"x"}"#,
                "field `env`",
            ),
            (
                r#""executable":"a","argv":["a"],"stdin":"/etc/passwd""#,
                r#"invalid path "/etc/passwd": the path is absolute"#,
            ),
            (
                r#""executable":"a","argv":["a"],"stdout":"result.json""#,
                "reserved",
            ),
            (
                r#""executable":"a","argv":["a"],"stderr":"stdout""#,
                "must differ",
            ),
            (
                r#""executable":"a","argv":["a"],"user":"root:x""#,
                "field `user`",
            ),
            (
                r#""executable":"a","argv":["a"],"wall_time_limit_secs":0"#,
                "wall_time_limit_secs",
            ),
            (
                r#""executable":"a","argv":["a"],"output":{"rule":"explicit","paths":["a","../b"]}"#,
                r#"invalid path "../b""#,
            ),
            (
                r#""executable":"a","argv":["a"],"stdout":"d/out""#,
                "field `stdout`",
            ),
            (
                r#""executable":"a","argv":["a"],"inputs":[{"path":"a","kind":"file"},{"path":"a","kind":"dir"}]"#,
                "listed twice",
            ),
        ];
        for (body, want) in cases {
            let e = err_text(&format!(r#"{{"schema_version":1,{body}}}"#));
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    /// Paths are typed now, but travel as the same strings: what an older host wrote reads
    /// back and writes out unchanged, so older and newer agents and hooks interoperate.
    #[test]
    fn the_wire_format_is_unchanged() {
        let old = r#"{
          "schema_version": 1,
          "executable": "job.sh",
          "argv": ["job.sh", "an arg with spaces", ""],
          "env": { "NAME": "value = with spaces" },
          "stdin": "in/put.txt",
          "stdout": "out",
          "stderr": "err",
          "user": "condor",
          "fallback_user": "nobody",
          "wall_time_limit_secs": 3600,
          "output": { "rule": "explicit", "paths": ["out.txt", "results/", "a/b"] },
          "inputs": [ { "path": "job.sh", "kind": "file" }, { "path": "data", "kind": "dir" } ]
        }"#;
        let m = Manifest::from_json(old.as_bytes()).unwrap();
        assert_eq!(m.stdin.as_ref().map(RelPath::as_str), Some("in/put.txt"));
        let written: serde_json::Value = serde_json::from_slice(&m.to_json().unwrap()).unwrap();
        let given: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(written, given);
        let abs = old.replace(r#""executable": "job.sh""#, r#""executable": "/bin/sh""#);
        let m = Manifest::from_json(abs.as_bytes()).unwrap();
        assert_eq!(m.executable, Executable::Image("/bin/sh".into()));
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        let big = vec![b' '; 2 << 20];
        assert!(matches!(
            Manifest::from_json(&big),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            Manifest::from_reader(std::io::repeat(b' ')),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn absolute_executable_and_explicit_dirs_are_fine() {
        let mut m = Manifest::new(exe("/bin/sh"), vec!["sh".into(), "-c".into(), "".into()]);
        m.env.insert("A".into(), "x=y z".into());
        m.output = OutputRule::Explicit {
            paths: vec!["dir/".parse().unwrap(), "a/b".parse().unwrap()],
        };
        m.inputs.push(InputEntry {
            path: rel("dir"),
            kind: EntryKind::Dir,
        });
        m.wall_time_limit_secs = Some(5);
        m.fallback_user = None;
        let back = Manifest::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back, m);
    }

    /// A job checkpoints by a code or by a signal (without a core dump), never both.
    #[test]
    fn a_checkpoint_exit_is_a_code_or_a_signal() {
        let mut m = Manifest::new(exe("job"), vec!["job".into()]);
        m.set_checkpoint_exit(Some(CheckpointExit::Signal(10)));
        let back = Manifest::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back.checkpoint_exit(), Some(CheckpointExit::Signal(10)));
        let ckpt = CheckpointExit::Signal(10);
        let killed = |signal, core_dumped| Outcome::Signaled {
            signal,
            core_dumped,
        };
        assert!(ckpt.is(&killed(10, false)));
        assert!(!ckpt.is(&killed(10, true)));
        assert!(!ckpt.is(&killed(15, false)));
        assert!(!ckpt.is(&Outcome::Exited { code: 10 }));
        assert!(CheckpointExit::Code(85).is(&Outcome::Exited { code: 85 }));
        assert!(!CheckpointExit::Code(85).is(&killed(85, false)));
        m.checkpoint_exit_code = Some(85);
        assert!(m.to_json().unwrap_err().to_string().contains("not both"));
        m.set_checkpoint_exit(Some(CheckpointExit::Signal(65)));
        assert!(m.to_json().unwrap_err().to_string().contains("1-64"));
        m.set_checkpoint_exit(None);
        assert_eq!(m, Manifest::new(exe("job"), vec!["job".into()]));
    }

    proptest::proptest! {
        #[test]
        fn any_valid_manifest_round_trips(
            argv in proptest::collection::vec("[^\\x00]{0,12}", 1..5),
            env in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,8}", "[^\\x00]{0,12}", 0..4),
            limit in proptest::option::of(1u64..100_000),
            outs in proptest::collection::vec("[a-z]{1,5}(/[a-z]{1,5}){0,2}/?", 0..4),
        ) {
            let mut m = Manifest::new(exe("bin/job"), argv);
            m.env = env;
            m.wall_time_limit_secs = limit;
            let paths = outs.iter().map(|p| OutputPath::parse(p).unwrap()).collect();
            m.output = OutputRule::Explicit { paths };
            let back = Manifest::from_json(&m.to_json().unwrap()).unwrap();
            proptest::prop_assert_eq!(back, m);
        }
    }
}
