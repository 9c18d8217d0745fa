//! The temporary file an output is being written to, recorded for whoever must remove it if
//! the writer is cut short.
//!
//! Finalize writes each output to a temporary file beside its target before renaming it into
//! place; a timeout in the middle would leave that file, possibly hundreds of MB, in the
//! user's `Iwd`. The writer records the file here (its directory as a descriptor, its name)
//! and the hook's watchdog, holding a clone of the same record, removes it before it ends the
//! hook: `unlinkat` on that descriptor, so no path is followed again.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// The file recorded: its directory and its name.
type Slot = Option<(OwnedFd, String)>;

/// A shared record of at most one temporary file; clones share it.
#[derive(Debug, Clone, Default)]
pub struct TempRecord {
    slot: Arc<Mutex<Slot>>,
    /// Past it, the writer makes nothing new and renames nothing into place: whoever keeps
    /// the deadline removes the file and ends the process.
    deadline: Option<Instant>,
}

/// Held by [`TempRecord::remove`]'s caller: while it lives, no new temporary file is made.
#[derive(Debug)]
pub struct Removed<'a> {
    _held: MutexGuard<'a, Slot>,
}

impl TempRecord {
    /// A record with nothing in it.
    pub fn new() -> TempRecord {
        TempRecord::default()
    }

    /// A record whose writer stops at `deadline` (a hook's time limit): from then on
    /// [`TempRecord::create`] and [`TempRecord::finish`] never return, and the watchdog that
    /// holds a clone removes the file and ends the process.
    pub fn until(deadline: Instant) -> TempRecord {
        TempRecord {
            deadline: Some(deadline),
            ..TempRecord::default()
        }
    }

    /// Past the deadline, stop this thread for good (outside the lock, so the removal is not
    /// kept waiting): nothing may appear in the user's directory after it.
    fn stop_if_out_of_time(&self) {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            loop {
                std::thread::park();
            }
        }
    }

    /// Create the temporary file `name` in `dir` with `create`, and record it. Creating and
    /// recording happen under one lock: a removal never misses a file that is being made.
    ///
    /// # Errors
    /// `create`'s error (nothing is recorded then).
    pub fn create<T, E>(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        create: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        self.stop_if_out_of_time();
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let made = create()?;
        // Without a copy of the descriptor the file cannot be removed later: best effort.
        *slot = rustix::io::fcntl_dupfd_cloexec(dir, 0)
            .ok()
            .map(|fd| (fd, name.to_owned()));
        Ok(made)
    }

    /// The temporary file is renamed into place or removed by `finish`: run it and forget the
    /// file, under the same lock.
    pub fn finish<T>(&self, finish: impl FnOnce() -> T) -> T {
        self.stop_if_out_of_time();
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let done = finish();
        *slot = None;
        done
    }

    /// Remove the recorded file, waiting at most `wait` for an operation on it to end (a stuck
    /// file system must not keep the caller). Returns the lock, for the caller to hold until
    /// the process ends; `None` when the wait ran out and nothing was removed.
    pub fn remove(&self, wait: Duration) -> Option<Removed<'_>> {
        let started = Instant::now();
        let mut slot = loop {
            match self.slot.try_lock() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TryLockError::WouldBlock) => return None,
            }
        };
        if let Some((dir, name)) = slot.take() {
            let _ = rustix::fs::unlinkat(dir.as_fd(), name.as_str(), rustix::fs::AtFlags::empty());
        }
        Some(Removed { _held: slot })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A directory to record temporary files in, and its descriptor.
    pub(crate) fn temp_dir() -> (tempfile::TempDir, OwnedFd) {
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
    fn a_recorded_temporary_file_is_removed_and_a_finished_one_forgotten() {
        let (d, dir) = temp_dir();
        let record = TempRecord::new();
        let watcher = record.clone();
        let create = |name: &str| {
            record
                .create(dir.as_fd(), name, || {
                    std::fs::write(d.path().join(name), b"x")
                })
                .unwrap();
        };
        create("done.tmp");
        record
            .finish(|| std::fs::rename(d.path().join("done.tmp"), d.path().join("done")))
            .unwrap();
        create("half.tmp");
        drop(watcher.remove(Duration::ZERO));
        assert!(!d.path().join("half.tmp").exists());
        assert!(d.path().join("done").exists());
        // Nothing recorded any more: a second removal touches nothing.
        std::fs::write(d.path().join("half.tmp"), b"y").unwrap();
        drop(watcher.remove(Duration::ZERO));
        assert!(d.path().join("half.tmp").exists());
    }

    #[test]
    fn a_removal_gives_up_when_the_writer_holds_the_record_too_long() {
        let record = TempRecord::new();
        let watcher = record.clone();
        record.finish(|| {
            let started = Instant::now();
            assert!(watcher.remove(Duration::from_millis(30)).is_none());
            assert!(started.elapsed() >= Duration::from_millis(30));
        });
        assert!(watcher.remove(Duration::ZERO).is_some());
    }

    #[test]
    fn past_its_deadline_a_writer_renames_nothing_into_place() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let record = TempRecord::until(Instant::now());
        let renamed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&renamed);
        let writer = record.clone();
        // The writer thread stops for good; it is left parked when the test ends.
        std::thread::spawn(move || writer.finish(|| flag.store(true, Ordering::SeqCst)));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!renamed.load(Ordering::SeqCst));
        // Whoever keeps the deadline still gets the record.
        assert!(record.remove(Duration::from_millis(100)).is_some());
    }
}
