//! A wall-clock bound on a whole hook: whatever it is blocked in (a hostile FIFO, a stuck
//! file system), the hook ends in time and says so in the way its caller understands.
//!
//! A hook arms one [`Watchdog`] first and gives every stdout answer to it. The answer is
//! written once: by the hook when it finishes in time, or by the watchdog when time is up;
//! the other side then writes nothing. On timeout the watchdog also removes the temporary
//! file recorded in its [`TempRecord`] and ends the process: the hook's own thread may be
//! blocked in a system call that nothing else can interrupt.
//!
//! The deadline decides, not which thread the scheduler runs first: past it, the hook's own
//! thread neither answers nor renames a temporary file into place (it waits for the
//! watchdog, which ends the process), so a hook that was stopped or starved past its limit
//! always ends as a timeout.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vm_capsule_core::temp_record::TempRecord;

/// How long the watchdog waits for a file operation in progress to end before it removes
/// the temporary file (a stuck file system must not keep the hook alive).
const TEMP_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Where the answer goes; taken by whoever answers first.
type Answer = Mutex<Option<Box<dyn Write + Send>>>;

/// The hook's time limit, its stdout, and the temporary file it is writing.
#[derive(Clone)]
pub struct Watchdog {
    answer: Arc<Answer>,
    temps: TempRecord,
    deadline: Instant,
    /// Set when the watchdog's thread is done (in a real hook it ends the process first).
    finished: Arc<(Mutex<bool>, Condvar)>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("temps", &self.temps)
            .finish_non_exhaustive()
    }
}

impl Watchdog {
    /// After `limit`, unless the hook has answered: remove the recorded temporary file, write
    /// what `on_timeout` returns on stdout and exit the process with `code`.
    pub fn arm(
        limit: Duration,
        code: i32,
        on_timeout: impl FnOnce() -> String + Send + 'static,
    ) -> Watchdog {
        Watchdog::start(limit, Box::new(io::stdout()), on_timeout, move || {
            std::process::exit(code)
        })
    }

    /// [`Watchdog::arm`] with the output and the ending chosen by the caller.
    fn start(
        limit: Duration,
        out: Box<dyn Write + Send>,
        on_timeout: impl FnOnce() -> String + Send + 'static,
        end: impl FnOnce() + Send + 'static,
    ) -> Watchdog {
        let deadline = Instant::now() + limit;
        let dog = Watchdog {
            answer: Arc::new(Mutex::new(Some(out))),
            temps: TempRecord::until(deadline),
            deadline,
            finished: Arc::new((Mutex::new(false), Condvar::new())),
        };
        let watcher = dog.clone();
        std::thread::spawn(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            if let Some(mut out) = watcher.take_answer() {
                // Held until the end: no new temporary file is made meanwhile.
                let _held = watcher.temps.remove(TEMP_LOCK_WAIT);
                let text = on_timeout();
                let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
                end();
            }
            let (done, wake) = &*watcher.finished;
            *done.lock().unwrap_or_else(PoisonError::into_inner) = true;
            wake.notify_all();
        });
        dog
    }

    /// The record of the temporary file being written, which a timeout removes.
    pub fn temps(&self) -> &TempRecord {
        &self.temps
    }

    /// Write the hook's answer on stdout, unless the watchdog already answered. Returns
    /// whether this answer was written. An empty `text` claims the answer and writes nothing
    /// (a hook that fails answers with an empty stdout).
    ///
    /// # Errors
    /// Writing stdout failed.
    pub fn answer(&self, text: &str) -> io::Result<bool> {
        if Instant::now() >= self.deadline {
            // Out of time: the timeout answer is the watchdog's to give.
            self.wait_for_the_watchdog();
        }
        let Some(mut out) = self.take_answer() else {
            return Ok(false);
        };
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(true)
    }

    /// Wait until the watchdog's thread is done; in a hook it ends the process meanwhile.
    fn wait_for_the_watchdog(&self) {
        let (done, wake) = &*self.finished;
        let mut finished = done.lock().unwrap_or_else(PoisonError::into_inner);
        while !*finished {
            finished = wake.wait(finished).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn take_answer(&self) -> Option<Box<dyn Write + Send>> {
        self.answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::mpsc;

    /// An output the test can read after the watchdog wrote to it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn text(out: &Shared) -> String {
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    /// A watchdog of 50 ms writing to a buffer; its ending is a message, not an exit.
    fn armed() -> (Watchdog, Shared, mpsc::Receiver<()>) {
        let out = Shared::default();
        let (ended, ends) = mpsc::channel();
        let dog = Watchdog::start(
            Duration::from_millis(50),
            Box::new(out.clone()),
            || "Timeout = true\n".to_owned(),
            move || ended.send(()).unwrap(),
        );
        (dog, out, ends)
    }

    /// A directory to record temporary files in, and its descriptor.
    fn temp_dir() -> (tempfile::TempDir, std::os::fd::OwnedFd) {
        let d = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(
            d.path(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        (d, fd)
    }

    #[test]
    fn a_hook_that_answers_in_time_is_not_interrupted() {
        let (dog, out, ends) = armed();
        assert!(dog.answer("Done = true\n").unwrap());
        assert!(!dog.answer("Twice = true\n").unwrap());
        assert!(ends.recv_timeout(Duration::from_millis(500)).is_err());
        assert_eq!(text(&out), "Done = true\n");
    }

    #[test]
    fn on_timeout_the_temporary_file_goes_and_the_hook_answer_is_dropped() {
        let (d, dir) = temp_dir();
        let (dog, out, ends) = armed();
        dog.temps()
            .create(dir.as_fd(), "half.tmp", || {
                std::fs::write(d.path().join("half.tmp"), b"x")
            })
            .unwrap();
        ends.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(!d.path().join("half.tmp").exists());
        assert!(!dog.answer("Done = true\n").unwrap());
        assert_eq!(text(&out), "Timeout = true\n");
    }
}
