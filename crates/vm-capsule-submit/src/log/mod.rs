//! Hook logging an admin can read: one line per event with ISO-8601 local time, level, hook,
//! pid and job id, in a per-owner file with size-based rotation; problems also on stderr.
//!
//! Hooks run as the job's owner, so one file cannot serve them all: each owner writes
//! `<VM_CAPSULE_TRANSLATE_LOG>.<owner>` (and `..._EXIT_LOG`), by default under
//! `/var/log/vm-capsule/`, a root-owned mode 1777 directory made like the scratch prefix, so
//! every owner can create its own file there. That directory is shared with every local user, so the file is opened
//! without following links and used only when it is a plain file owned by us.
//!
//! Only problems (warnings, errors) go to stderr: the JobRouter copies every stderr line
//! into its own log as a warning, so routine lines there would bury real ones. When the file cannot be opened, one warning
//! says so on stderr, once per hook run.
//!
//! Rotation follows HTCondor's `MAX_<SUBSYS>_LOG`: once the file reaches the limit it is
//! renamed to `<file>.old` (one old file kept) and a new one is started. When that rename is
//! refused (another user owns a `<file>.old` in the shared directory), the file is truncated
//! in place instead, and the first line of the new start says why: the limit holds.
//!
//! The alarm stamp (see [`HookLog::alarm`]) is per owner too, `.<file>.alarm`: a name no
//! owner's log can take (owner names never start with a dot). It is read only when it is a
//! plain file of ours, and replaced through a temporary file of a random name created
//! `O_EXCL|O_NOFOLLOW`, so nothing another user plants is read or written through.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

mod stamp;

use stamp::{fnv, read_stamp, stamp_path, write_stamp};

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
        if let Some(problem) = self.file.as_mut().and_then(LogFile::rotate_if_full) {
            // Said once, at the top of the truncated file, and on stderr.
            let warning = self.format_line(Level::Warn, &problem);
            if let Some(f) = self.file.as_mut() {
                f.write(warning.as_bytes());
            }
            self.stderr_line(Level::Warn, &problem);
        }
        let text = self.format_line(level, &message);
        if let Some(f) = self.file.as_mut() {
            f.write(text.as_bytes());
        }
        if level >= Level::Warn {
            self.stderr_line(level, &message);
        }
    }

    /// One line of the file: time, level, hook, pid, job, message.
    fn format_line(&self, level: Level, message: &str) -> String {
        format!(
            "{} {level:<5} {}[{}] {}: {message}\n",
            chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f%:z"),
            self.hook,
            std::process::id(),
            self.job.as_deref().unwrap_or("-"),
        )
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
    /// are kept in a stamp beside this owner's log file, so this owner's hooks share it.
    pub fn alarm(&mut self, message: &str, period: std::time::Duration) {
        let Some(stamp) = self.path().and_then(stamp_path) else {
            return self.error(message);
        };
        let digest = fnv(message);
        if read_stamp(&stamp, period).as_deref() == Some(digest.as_str()) {
            self.debug(&format!(
                "again (said at most {} s ago): {message}",
                period.as_secs()
            ));
            return;
        }
        self.error(message);
        write_stamp(&stamp, &digest);
    }
}

impl LogFile {
    /// Rotate when the file reached its limit; `Some(why)` when the rename was refused and
    /// the file truncated instead (the caller says so, once, at the top of the fresh file).
    fn rotate_if_full(&mut self) -> Option<String> {
        if self.max_bytes > 0 && self.size >= self.max_bytes {
            return self.rotate();
        }
        None
    }

    /// Append `text`.
    fn write(&mut self, text: &[u8]) {
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
    /// renames it. When the rename is refused, the file is truncated in place so the limit
    /// still holds; returns why.
    fn rotate(&mut self) -> Option<String> {
        use rustix::fs::{flock, FlockOperation};
        if flock(&self.file, FlockOperation::LockExclusive).is_err() {
            return None;
        }
        let ours = self.file.metadata().ok();
        let current = std::fs::symlink_metadata(&self.path).ok();
        let same = matches!((&ours, &current), (Some(a), Some(b)) if a.ino() == b.ino() && a.dev() == b.dev());
        let mut problem = None;
        if same && current.is_some_and(|m| m.len() >= self.max_bytes) {
            let mut old = self.path.clone().into_os_string();
            old.push(".old");
            let old = PathBuf::from(old);
            if let Err(e) = std::fs::rename(&self.path, &old) {
                let owner = std::fs::symlink_metadata(&old)
                    .map(|m| format!(" (it belongs to uid {})", m.uid()))
                    .unwrap_or_default();
                let truncated = self.file.set_len(0).is_ok();
                problem = Some(format!(
                    "cannot rotate {} to {}: {e}{owner}; {}; remove {} as root",
                    self.path.display(),
                    old.display(),
                    if truncated {
                        "the log was truncated in place instead"
                    } else {
                        "and it cannot be truncated either"
                    },
                    old.display()
                ));
            }
        }
        let _ = flock(&self.file, FlockOperation::Unlock);
        if problem.is_some() {
            self.size = 0;
            return problem;
        }
        if let Ok((file, size)) = open_log_file(&self.path) {
            self.file = file;
            self.size = size;
        } else {
            // Keep appending to the old one rather than lose lines.
            self.size = 0;
        }
        None
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
    use super::stamp::fnv;
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
    fn alarms_are_per_owner_and_stamps_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let period = std::time::Duration::from_secs(600);
        let said = |owner: &str| {
            let mut o = opts(d.path(), 0);
            o.owner = owner.into();
            o.debug = true;
            let mut log = HookLog::with_options("translate", &o).without_stderr();
            log.alarm("the template is gone", period);
            let text =
                std::fs::read_to_string(d.path().join(format!("TranslateLog.{owner}"))).unwrap();
            text.lines().last().unwrap().contains(" ERROR ")
        };
        assert!(said("alice"));
        assert!(!said("alice"), "once per period for one owner");
        assert!(said("bob"), "another owner's stamp silences nothing");
        // A link at the stamp's name is neither read nor written through.
        let target = d.path().join("target");
        std::fs::write(&target, "precious\n").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join(".TranslateLog.carol.alarm")).unwrap();
        std::fs::write(&target, fnv("the template is gone")).unwrap();
        assert!(said("carol"));
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            fnv("the template is gone")
        );
        assert!(!said("carol"));
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.contains(".alarm.")),
            "no temporary stamp left: {names:?}"
        );
    }

    #[test]
    fn a_rotation_that_cannot_rename_truncates_and_says_so_once() {
        let d = tempfile::tempdir().unwrap();
        // What the rename cannot replace (another user's file does the same in a 1777 dir).
        std::fs::create_dir(d.path().join("TranslateLog.alice.old")).unwrap();
        let o = opts(d.path(), 600);
        for round in 0..10 {
            let mut log = HookLog::with_options("translate", &o).without_stderr();
            for i in 0..4 {
                log.info(&format!("round {round} line {i} {}", "x".repeat(40)));
            }
        }
        let text = std::fs::read_to_string(d.path().join("TranslateLog.alice")).unwrap();
        assert!(text.len() <= 600 + 200, "{} bytes", text.len());
        let first = text.lines().next().unwrap();
        assert!(
            first.contains(" WARN ")
                && first.contains("cannot rotate")
                && first.contains("truncated in place")
                && first.contains("TranslateLog.alice.old as root"),
            "{first}"
        );
        assert_eq!(text.matches("cannot rotate").count(), 1, "{text}");
        assert!(text.contains("round 9 line 3"), "{text}");
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
