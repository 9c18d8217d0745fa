//! Hook logging: each line to the configured log file (when writable) and to stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// A hook's log: `VM_CAPSULE_TRANSLATE_LOG` / `VM_CAPSULE_EXIT_LOG`, plus stderr.
#[derive(Debug)]
pub struct HookLog {
    hook: &'static str,
    file: Option<File>,
    to_stderr: bool,
}

impl HookLog {
    /// A log for `hook` appending to `path` when it can be opened (else stderr only).
    pub fn open(hook: &'static str, path: Option<&Path>) -> HookLog {
        let file = path.and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
        HookLog {
            hook,
            file,
            to_stderr: true,
        }
    }

    /// A log that keeps quiet on stderr (tests that check stderr themselves).
    #[must_use]
    pub fn without_stderr(mut self) -> HookLog {
        self.to_stderr = false;
        self
    }

    /// Log one line at `level`.
    pub fn line(&mut self, level: &str, message: &str) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let pid = std::process::id();
        let text = format!(
            "{secs} vm-capsule {} [{pid}] {level}: {message}\n",
            self.hook
        );
        if let Some(f) = self.file.as_mut() {
            // Logging is best effort: a full disk must not fail the hook.
            let _ = f.write_all(text.as_bytes());
        }
        if self.to_stderr {
            let _ = std::io::stderr()
                .write_all(format!("vm-capsule {}: {level}: {message}\n", self.hook).as_bytes());
        }
    }

    /// Log an informational line.
    pub fn info(&mut self, message: &str) {
        self.line("info", message);
    }

    /// Log a warning.
    pub fn warn(&mut self, message: &str) {
        self.line("warning", message);
    }

    /// Log an error.
    pub fn error(&mut self, message: &str) {
        self.line("error", message);
    }
}
