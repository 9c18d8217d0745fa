//! Hook logging an admin can read: one line per event with ISO-8601 local time, level, hook,
//! pid and job id, in a per-owner file with size-based rotation; problems also on stderr.
//!
//! Hooks run as the job's owner, so one file cannot serve them all: each owner writes
//! `<VM_CAPSULE_TRANSLATE_LOG>.<owner>` (and `..._EXIT_LOG`), by default under
//! `/var/log/vm-capsule/`, a root-owned mode 1777 directory made like the scratch prefix
//! (issue 14.2). That directory is shared with every local user, so the file is opened
//! without following links and used only when it is a plain file owned by us.
//!
//! Only problems (warnings, errors) go to stderr: the JobRouter copies every stderr line
//! into its own log as a warning (issue 14.6). When the file cannot be opened, one warning
//! says so on stderr, once per hook run.
//!
//! Rotation follows HTCondor's `MAX_<SUBSYS>_LOG`: once the file reaches the limit it is
//! renamed to `<file>.old` (one old file kept) and a new one is started.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where hook logs go when the knobs do not say: a 1777 root-owned directory.
pub const DEFAULT_LOG_DIR: &str = "/var/log/vm-capsule";
/// HTCondor's default `MAX_<SUBSYS>_LOG`: 10 MiB.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 10 << 20;

/// How important a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Only with `--debug` / `VM_CAPSULE_DEBUG`.
    Debug,
    /// What happened; file only.
    Info,
    /// A problem that did not stop the hook; file and stderr.
    Warn,
    /// A problem that did; file and stderr.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Where and how a hook logs.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// The log's base path (the knob's value); the owner's name is appended.
    pub base: Option<PathBuf>,
    /// The owner's name for the file name.
    pub owner: String,
    /// Rotate when the file reaches this many bytes (0: never).
    pub max_bytes: u64,
    /// Write `Debug` lines too.
    pub debug: bool,
}

impl LogOptions {
    /// The file this owner writes: `<base>.<owner>`.
    pub fn file(&self) -> Option<PathBuf> {
        let base = self.base.as_ref()?;
        let mut name = base.file_name()?.to_os_string();
        name.push(".");
        name.push(&self.owner);
        Some(base.with_file_name(name))
    }
}

/// A hook's log: its file (when it can be opened) and stderr for problems.
#[derive(Debug)]
pub struct HookLog {
    hook: &'static str,
    job: Option<String>,
    file: Option<LogFile>,
    debug: bool,
    to_stderr: bool,
}

#[derive(Debug)]
struct LogFile {
    file: File,
    path: PathBuf,
    size: u64,
    max_bytes: u64,
}

impl HookLog {
    /// A log for `hook` appending to exactly `path` when given (no owner suffix, default
    /// rotation); problems also to stderr.
    pub fn open(hook: &'static str, path: Option<&Path>) -> HookLog {
        let mut log = HookLog::new(hook, false);
        if let Some(p) = path {
            log.attach(p, DEFAULT_MAX_LOG_BYTES);
        }
        log
    }

    /// A log for `hook` as `opts` say (the per-owner file of the hooks).
    pub fn with_options(hook: &'static str, opts: &LogOptions) -> HookLog {
        let mut log = HookLog::new(hook, opts.debug);
        if let Some(p) = opts.file() {
            log.attach(&p, opts.max_bytes);
        }
        log
    }

    fn new(hook: &'static str, debug: bool) -> HookLog {
        HookLog {
            hook,
            job: None,
            file: None,
            debug,
            to_stderr: true,
        }
    }

    fn attach(&mut self, path: &Path, max_bytes: u64) {
        match open_log_file(path) {
            Ok((file, size)) => {
                self.file = Some(LogFile {
                    file,
                    path: path.to_owned(),
                    size,
                    max_bytes,
                });
            }
            Err(why) => {
                // Once per run: every later line would otherwise repeat it.
                let dir = path.parent().unwrap_or(Path::new("/"));
                let hint = match why.kind {
                    Some(std::io::ErrorKind::NotFound) if !dir.is_dir() => format!(
                        "; hint: create the directory once as root: install -d -m 1777 {} (docs/ADMIN.md, hook logs)",
                        dir.display()
                    ),
                    Some(std::io::ErrorKind::PermissionDenied) => format!(
                        "; hint: every job owner must be able to create files in {}: make it root-owned mode 1777 (docs/ADMIN.md, hook logs)",
                        dir.display()
                    ),
                    _ => String::new(),
                };
                self.stderr_line(
                    Level::Warn,
                    &format!(
                        "cannot open the hook log {}: {}{hint}; until then only problems are logged, here",
                        path.display(),
                        why.text
                    ),
                );
            }
        }
    }

    /// A log that keeps quiet on stderr (tests that check stderr themselves).
    #[must_use]
    pub fn without_stderr(mut self) -> HookLog {
        self.to_stderr = false;
        self
    }

    /// Name the job every following line is about (`12.0`).
    pub fn set_job(&mut self, id: &str) {
        self.job = Some(id.to_owned());
    }

    /// The file being written, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Log one event at `level`: to the file, and to stderr when it is a problem.
    pub fn line(&mut self, level: Level, message: &str) {
        if level == Level::Debug && !self.debug {
            return;
        }
        // One line per event, whatever the message holds.
        let message = one_line(message);
        if let Some(f) = self.file.as_mut() {
            let text = format!(
                "{} {level:<5} {}[{}] {}: {message}\n",
                chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f%:z"),
                self.hook,
                std::process::id(),
                self.job.as_deref().unwrap_or("-"),
            );
            f.write(text.as_bytes());
        }
        if level >= Level::Warn {
            self.stderr_line(level, &message);
        }
    }

    fn stderr_line(&self, level: Level, message: &str) {
        if !self.to_stderr {
            return;
        }
        let job = self
            .job
            .as_deref()
            .map(|j| format!("job {j}: "))
            .unwrap_or_default();
        let level = if level == Level::Error {
            "error"
        } else {
            "warning"
        };
        let _ = std::io::stderr().write_all(
            format!(
                "vm-capsule {}: {level}: {job}{}\n",
                self.hook,
                one_line(message)
            )
            .as_bytes(),
        );
    }

    /// Log a line only shown with `--debug` (or `VM_CAPSULE_DEBUG = true`).
    pub fn debug(&mut self, message: &str) {
        self.line(Level::Debug, message);
    }

    /// Log an informational line (file only).
    pub fn info(&mut self, message: &str) {
        self.line(Level::Info, message);
    }

    /// Log a warning (file and stderr).
    pub fn warn(&mut self, message: &str) {
        self.line(Level::Warn, message);
    }

    /// Log an error (file and stderr).
    pub fn error(&mut self, message: &str) {
        self.line(Level::Error, message);
    }

    /// Log a problem of the pool's configuration: it hits every job, so it is said loudly
    /// (error, stderr) once per `period` (the JobRouter's polling period), not once per job;
    /// repeats within the period go to the file at debug level. The last alarm's text and time
    /// are kept beside the log file, so hooks of the same owner share it.
    pub fn alarm(&mut self, message: &str, period: std::time::Duration) {
        let Some(stamp) = self.path().map(|p| p.with_extension("alarm")) else {
            return self.error(message);
        };
        let digest = fnv(message);
        let recent = std::fs::symlink_metadata(&stamp).ok().is_some_and(|m| {
            m.is_file()
                && m.modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age < period)
                && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == digest)
        });
        if recent {
            self.debug(&format!(
                "again (said at most {} s ago): {message}",
                period.as_secs()
            ));
            return;
        }
        self.error(message);
        // Replace, never follow: a temp name beside it, renamed over it.
        let tmp = stamp.with_extension(format!("alarm.{}", std::process::id()));
        if std::fs::write(&tmp, &digest).is_ok() && std::fs::rename(&tmp, &stamp).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// A short stable digest of a message (FNV-1a), to recognise a repeat.
fn fnv(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl LogFile {
    fn write(&mut self, text: &[u8]) {
        if self.max_bytes > 0 && self.size >= self.max_bytes {
            self.rotate();
        }
        // Best effort: a full disk must not fail the hook. One write per line, O_APPEND:
        // lines of concurrent hooks do not interleave.
        if self.file.write_all(text).is_ok() {
            self.size = self
                .size
                .saturating_add(u64::try_from(text.len()).unwrap_or(0));
        }
    }

    /// `<file>` -> `<file>.old`, then a fresh `<file>`. Concurrent hooks of the same owner
    /// serialize on a lock of the file, and only the one whose file is still in place
    /// renames it.
    fn rotate(&mut self) {
        use rustix::fs::{flock, FlockOperation};
        if flock(&self.file, FlockOperation::LockExclusive).is_err() {
            return;
        }
        let ours = self.file.metadata().ok();
        let current = std::fs::symlink_metadata(&self.path).ok();
        let same = matches!((&ours, &current), (Some(a), Some(b)) if a.ino() == b.ino() && a.dev() == b.dev());
        if same && current.is_some_and(|m| m.len() >= self.max_bytes) {
            let mut old = self.path.clone().into_os_string();
            old.push(".old");
            let _ = std::fs::rename(&self.path, PathBuf::from(old));
        }
        let _ = flock(&self.file, FlockOperation::Unlock);
        if let Ok((file, size)) = open_log_file(&self.path) {
            self.file = file;
            self.size = size;
        } else {
            // Keep appending to the old one rather than lose lines.
            self.size = 0;
        }
    }
}

/// Why a log file cannot be used.
#[derive(Debug)]
struct OpenProblem {
    text: String,
    kind: Option<std::io::ErrorKind>,
}

impl From<std::io::Error> for OpenProblem {
    fn from(e: std::io::Error) -> OpenProblem {
        OpenProblem {
            kind: Some(e.kind()),
            text: e.to_string(),
        }
    }
}

/// Open `path` for appending in a directory other users may write: no links followed, a
/// plain file with one link, owned by us. Returns the file and its size.
fn open_log_file(path: &Path) -> Result<(File, u64), OpenProblem> {
    let nofollow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(path)?;
    let meta = file.metadata()?;
    let uid = rustix::process::geteuid().as_raw();
    let refuse = |text: String| OpenProblem { text, kind: None };
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(refuse(
            "it is not a plain file with one link; remove it".to_owned(),
        ));
    }
    if meta.uid() != uid {
        return Err(refuse(format!(
            "it belongs to uid {}, not to us (uid {uid}); remove it",
            meta.uid()
        )));
    }
    Ok((file, meta.len()))
}

fn one_line(message: &str) -> String {
    if message.contains(['\n', '\r']) {
        message
            .split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    } else {
        message.to_owned()
    }
}

/// The name this process's owner goes by in log file names: the user name of our uid in
/// `/etc/passwd`, else `fallback` (the job ad's `Owner`, for directory-service users) when
/// it is a plain name, else `uid<N>`.
pub fn owner_name(fallback: Option<&str>) -> String {
    let uid = rustix::process::geteuid().as_raw();
    let from_passwd = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let uid_field = f.nth(1)?;
                (uid_field.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        });
    from_passwd
        .filter(|n| plain_name(n))
        .or_else(|| fallback.filter(|n| plain_name(n)).map(str::to_owned))
        .unwrap_or_else(|| format!("uid{uid}"))
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn opts(dir: &Path, max: u64) -> LogOptions {
        LogOptions {
            base: Some(dir.join("TranslateLog")),
            owner: "alice".into(),
            max_bytes: max,
            debug: false,
        }
    }

    #[test]
    fn lines_have_time_level_hook_pid_and_job() {
        let d = tempfile::tempdir().unwrap();
        let mut log = HookLog::with_options("translate", &opts(d.path(), 0)).without_stderr();
        log.info("before the job is known");
        log.set_job("12.0");
        log.warn("two\nlines");
        log.debug("not shown without --debug");
        let text = std::fs::read_to_string(d.path().join("TranslateLog.alice")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let pid = std::process::id();
        // 2026-11-28T14:03:07.123+01:00 INFO  translate[42] -: ...
        let (stamp, rest) = lines[0].split_once(' ').unwrap();
        assert!(
            chrono::DateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.3f%:z").is_ok(),
            "{stamp}"
        );
        assert_eq!(
            rest,
            format!("INFO  translate[{pid}] -: before the job is known")
        );
        assert!(lines[1].ends_with(&format!("WARN  translate[{pid}] 12.0: two | lines")));
    }

    #[test]
    fn debug_lines_with_debug_on() {
        let d = tempfile::tempdir().unwrap();
        let mut o = opts(d.path(), 0);
        o.debug = true;
        let mut log = HookLog::with_options("finalize", &o).without_stderr();
        log.debug("details");
        let text = std::fs::read_to_string(d.path().join("TranslateLog.alice")).unwrap();
        assert!(text.contains("DEBUG finalize"), "{text}");
    }

    #[test]
    fn rotates_to_one_old_file() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path(), 200);
        for round in 0..3 {
            let mut log = HookLog::with_options("translate", &o).without_stderr();
            for i in 0..4 {
                log.info(&format!("round {round} line {i} {}", "x".repeat(40)));
            }
        }
        let cur = std::fs::read_to_string(d.path().join("TranslateLog.alice")).unwrap();
        let old = std::fs::read_to_string(d.path().join("TranslateLog.alice.old")).unwrap();
        assert!(cur.len() <= 200 + 120, "{}", cur.len());
        assert!(cur.contains("round 2 line 3"), "{cur}");
        assert!(!old.is_empty() && !old.contains("round 2 line 3"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn refuses_a_link_or_someone_elses_file() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        std::fs::write(&target, "precious\n").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("TranslateLog.alice")).unwrap();
        let mut log = HookLog::with_options("translate", &opts(d.path(), 0)).without_stderr();
        assert!(log.path().is_none());
        log.error("must not land in the link's target");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        let err = open_log_file(&d.path().join("TranslateLog.alice")).unwrap_err();
        assert!(!err.text.is_empty());
    }

    #[test]
    fn owner_names() {
        assert!(plain_name("alice") && plain_name("a.b-c_1"));
        assert!(!plain_name("../x") && !plain_name("a/b") && !plain_name(".hidden"));
        assert!(!owner_name(Some("../evil")).contains('/'));
        let o = LogOptions {
            base: Some(PathBuf::from("/var/log/vm-capsule/ExitLog")),
            owner: "bob".into(),
            ..LogOptions::default()
        };
        assert_eq!(
            o.file().unwrap(),
            PathBuf::from("/var/log/vm-capsule/ExitLog.bob")
        );
    }
}
