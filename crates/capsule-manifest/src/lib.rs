//! The versioned contract between the vm-capsule hooks on the host and the guest agent
//! `capsule-init`: what to run (`capsule.json`) and what happened (`result.json`).
//!
//! This crate owns the serde types, the schema version and the validation; it does not know how
//! the files are stored (that is `capsule-disk`) nor how the job is run (that is `capsule-guest`).
//! Both files are parsed at the boundary into validated types: anything this version does not
//! understand (an unknown schema version, an unknown field, a path that escapes the work dir, a
//! NUL byte in an argument) is refused with a message naming the file, the value and the field
//! (for a path, its line and column: paths are typed, [`RelPath`], and refused as they are
//! read).
//!
//! # The data disk
//!
//! One FAT partition; FAT is only a carrier, so names, modes and trees travel inside tar archives.
//!
//! | file | written by | content |
//! |---|---|---|
//! | `capsule.json` | host | the [`Manifest`] |
//! | `job.ad` | host | the original job ad (long format), for reference |
//! | `capsule-init` | host | the guest agent (static x86_64 binary) |
//! | `input.tar` | host | executable and inputs, paths relative to the job's work dir; regular files and directories only |
//! | `stdout`, `stderr` | guest | the job's streams (names from [`Manifest::stdout`], [`Manifest::stderr`]) |
//! | `output.tar` | guest | the outputs selected by [`OutputRule`], paths relative to the work dir |
//! | `result.json` | guest, **last** | the [`JobResult`]; its absence means the guest never finished |
//!
//! # `capsule.json`, schema version 1
//!
//! ```json
//! {
//!   "schema_version": 1,
//!   "executable": "job.sh",
//!   "argv": ["job.sh", "an arg with spaces", ""],
//!   "env": { "NAME": "value = with spaces" },
//!   "stdin": "in.txt",
//!   "stdout": "stdout",
//!   "stderr": "stderr",
//!   "user": "condor",
//!   "fallback_user": "nobody",
//!   "wall_time_limit_secs": 3600,
//!   "output": { "rule": "explicit", "paths": ["out.txt", "results"] },
//!   "inputs": [ { "path": "job.sh", "kind": "file" }, { "path": "data", "kind": "dir" } ]
//! }
//! ```
//!
//! * `schema_version` (required): [`SCHEMA_VERSION`]. Any other value is refused.
//! * `executable` (required): the program to `execve`: a path relative to the work dir (shipped in
//!   `input.tar`) or an absolute path inside the guest image.
//! * `argv` (required, at least one element): the complete argument vector, `argv[0]` included,
//!   already split exactly as HTCondor would pass it. No element may contain NUL.
//! * `env` (default empty): the job's whole environment; the agent adds only
//!   `_CONDOR_SCRATCH_DIR` (the work dir) unless the manifest sets it. Names are non-empty and
//!   contain neither `=` nor NUL; values may contain anything but NUL.
//! * `stdin` (default none = `/dev/null`): a path relative to the work dir.
//! * `stdout`, `stderr` (defaults `"stdout"`, `"stderr"`): plain file names on the data disk that
//!   receive the streams; not a reserved name and not equal to each other.
//! * `user` (default `"condor"`), `fallback_user` (default `"nobody"`, `null` for none): the
//!   account the job runs as, looked up in the guest's `/etc/passwd`; the fallback is used when
//!   `user` does not exist. An account with uid 0 is refused.
//! * `wall_time_limit_secs` (default none): the job's whole process group is killed with
//!   SIGKILL when it runs longer; the result then says `timed_out`. Whenever the job ends, what
//!   is left of its process group is killed too, and, when it ran as a dedicated account (not
//!   `--as-current-user`), so is every process of that account that left the group (setsid);
//!   `warnings` then counts them.
//! * `output` (default `{"rule": "default"}`): [`OutputRule`]. `default` is HTCondor's rule when
//!   `TransferOutput` is unset: regular files in the top level of the work dir that are new, or
//!   whose mtime or size differ from what `input.tar` put there, excluding the executable.
//!   `explicit` lists `TransferOutput` entries (files or directories, relative to the work dir;
//!   a directory travels as its whole tree). `output.tar` stores every entry under its path
//!   relative to the work dir (`a/b/c.txt`, `dir/...`), so the host applies HTCondor's placement
//!   rules itself (a nested file lands as its basename, `dir/` with a trailing slash means the
//!   directory's contents, remaps). Entries that do not exist are reported in
//!   `missing_outputs` (HTCondor would put such a job on hold).
//!   Both rules skip symlinks, special files and, when the job ran as another user, hard links
//!   to files it does not own; skipped entries are listed in `warnings`.
//! * `inputs` (default empty): the entries of `input.tar` the host put there; the agent checks
//!   each one was unpacked.
//! * `checkpoint_exit_code` (default none, written only when set): the job is
//!   self-checkpointing (HTCondor's `checkpoint_exit_code`). When it exits with this code the
//!   agent packs every new or changed top-level entry of the work dir (directories whole),
//!   whatever `output` says, so the host holds every file the job wrote when HTCondor restarts
//!   it in the same sandbox.
//! * `checkpoint_exit_signal` (default none, written only when set, never with
//!   `checkpoint_exit_code`): the same for a job that checkpoints by dying from this signal
//!   (HTCondor's `SuccessCheckpointExitSignal` with `SuccessCheckpointExitBySignal`); a death
//!   by it with a core dump is not a checkpoint, as for HTCondor's starter.
//!
//! # `result.json`, schema version 2
//!
//! ```json
//! {
//!   "schema_version": 2,
//!   "outcome": { "kind": "exited", "code": 3 },
//!   "timed_out": false,
//!   "problems": [],
//!   "wall_time_secs": 0.012,
//!   "user_cpu_secs": 0.001,
//!   "system_cpu_secs": 0.002,
//!   "peak_rss_kib": 1536,
//!   "started_at_unix": 1763942400.125,
//!   "ended_at_unix": 1763942400.137,
//!   "outputs": [ { "path": "out.txt", "kind": "file", "size": 12 } ],
//!   "missing_outputs": [],
//!   "warnings": [],
//!   "agent": { "version": "0.1.0", "user": "condor", "uid": 1000, "setup_secs": 0.004 }
//! }
//! ```
//!
//! * `outcome`: [`Outcome`]: `{"kind":"exited","code":N}`, `{"kind":"signaled","signal":N,
//!   "core_dumped":B}` or `{"kind":"not_started"}` (then a `not_started` problem says why).
//! * `timed_out`: the wall-time limit killed the job (the outcome is then `signaled` 9).
//! * `problems` (at most 64, messages of at most 4096 bytes): [`Problem`]s, each
//!   `{"kind": K, "message": "..."}` with `K` one of `not_started`, `time_limit` (both part of
//!   the job's outcome), `outputs_did_not_fit`, `collect`, `agent` (the capsule failed: the
//!   job's results are incomplete, and the outcome still holds the job's status). Version 1
//!   carried one `error` text instead; it is still read and its parts typed.
//! * times are seconds as floats; `peak_rss_kib` is the largest resident set of the job or any
//!   descendant it waited for; `outputs` lists the top-level entries in `output.tar` (a dir's
//!   `size` is the sum of its files); `agent.setup_secs` is agent start -> job exec.
//! * `removed` (default empty, written only when not): after a checkpoint exit, the top-level
//!   entries of the work dir that came from the data disk and that the job removed (plain
//!   names, at most 1024), so the host removes them from the sandbox HTCondor restarts the job
//!   in, as natively.
//!
//! # Example
//!
//! ```
//! use capsule_manifest::{Manifest, OutputRule};
//!
//! let mut m = Manifest::new("job.sh".parse()?, vec!["job.sh".into(), "a b".into()]);
//! m.output = OutputRule::Explicit { paths: vec!["out.txt".parse()?] };
//! let json = m.to_json()?;
//! assert_eq!(Manifest::from_json(&json)?, m);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod control;
mod error;
mod json;
mod manifest;
pub mod node;
mod path;
mod result;

pub use error::Error;
pub use manifest::{CheckpointExit, EntryKind, InputEntry, Manifest, OutputRule};
pub use path::{
    Executable, OutputPath, PathError, RelPath, HOSTILE_NAMES, MAX_NAME_BYTES, MAX_PATH_BYTES,
};
pub use result::{
    AgentInfo, JobResult, Outcome, OutputEntry, Problem, ProblemKind, MAX_REMOVED,
    RESULT_SCHEMA_VERSION,
};

/// The `capsule.json` schema version this crate reads and writes ([`RESULT_SCHEMA_VERSION`]
/// is `result.json`'s).
pub const SCHEMA_VERSION: u32 = 1;

/// Largest `capsule.json` or `result.json` accepted, in bytes.
pub const MAX_JSON_BYTES: u64 = 1 << 20;

/// Name of the manifest on the data disk.
pub const CAPSULE_JSON: &str = "capsule.json";
/// Name of the original job ad on the data disk.
pub const JOB_AD: &str = "job.ad";
/// Name of the guest agent binary on the data disk.
pub const CAPSULE_INIT: &str = "capsule-init";
/// Name of the input archive on the data disk.
pub const INPUT_TAR: &str = "input.tar";
/// Name of the output archive on the data disk.
pub const OUTPUT_TAR: &str = "output.tar";
/// Name of the result on the data disk (written last).
pub const RESULT_JSON: &str = "result.json";
/// Default name of the job's stdout on the data disk.
pub const DEFAULT_STDOUT: &str = "stdout";
/// Default name of the job's stderr on the data disk.
pub const DEFAULT_STDERR: &str = "stderr";

/// Data-disk names the host or the agent write themselves; a stream may not take one.
pub const RESERVED_NAMES: [&str; 6] = [
    CAPSULE_JSON,
    JOB_AD,
    CAPSULE_INIT,
    INPUT_TAR,
    OUTPUT_TAR,
    RESULT_JSON,
];
