//! A wall-clock bound on a whole hook: whatever it is blocked in (a hostile FIFO, a stuck
//! file system), the hook ends in time and says so in the way its caller understands.
//!
//! Finalize writes each output to a temporary file beside its target before renaming it into
//! place; a timeout in the middle would leave that file, possibly hundreds of MB, in the
//! user's `Iwd`. The file being written is therefore recorded here (its directory as a
//! descriptor, its name), and the watchdog removes it before it ends the hook: `unlinkat` on
//! that descriptor, so no path is followed again.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// Taken by whoever writes the hook's answer on stdout: the hook itself when it finishes, or
/// the watchdog when time is up. The first one wins; the other never writes.
static ANSWER: Mutex<bool> = Mutex::new(false);

/// The temporary file being written: its directory and its name.
static TEMP: Mutex<Option<(OwnedFd, String)>> = Mutex::new(None);

/// How long the watchdog waits for a file operation in progress to end before it removes
/// the temporary file (a stuck file system must not keep the hook alive).
const TEMP_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Claim the right to answer. Returns false when the other side already answered.
pub fn claim_answer() -> bool {
    match ANSWER.lock() {
        Ok(mut answered) if !*answered => {
            *answered = true;
            true
        }
        _ => false,
    }
}

/// After `limit`, unless the hook has answered, remove the temporary file being written, run
/// `on_timeout` (which writes the timeout answer) and exit the process with `code`.
pub fn arm(limit: Duration, code: i32, on_timeout: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        if claim_answer() {
            // Held until the exit: no new temporary file is made meanwhile.
            let _temp = remove_temp();
            on_timeout();
            std::process::exit(code);
        }
    });
}

/// Create the temporary file `name` in `dir` with `create`, and record it so a timeout
/// removes it. Creating and recording happen under one lock: the watchdog never misses a
/// file that is being made.
///
/// # Errors
/// `create`'s error (nothing is recorded then).
pub fn create_temp<T, E>(
    dir: BorrowedFd<'_>,
    name: &str,
    create: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let mut temp = TEMP.lock().unwrap_or_else(PoisonError::into_inner);
    let made = create()?;
    // Without a copy of the descriptor the file cannot be removed later: best effort.
    *temp = rustix::io::fcntl_dupfd_cloexec(dir, 0)
        .ok()
        .map(|fd| (fd, name.to_owned()));
    Ok(made)
}

/// The temporary file is renamed into place or removed by `finish`: run it and forget the
/// file, under the same lock.
pub fn finish_temp<T>(finish: impl FnOnce() -> T) -> T {
    let mut temp = TEMP.lock().unwrap_or_else(PoisonError::into_inner);
    let done = finish();
    *temp = None;
    done
}

/// Remove the recorded temporary file, waiting a little for an operation on it to end.
/// Returns the lock, for the caller to hold until the process ends.
fn remove_temp() -> Option<MutexGuard<'static, Option<(OwnedFd, String)>>> {
    let started = Instant::now();
    let mut temp = loop {
        match TEMP.try_lock() {
            Ok(guard) => break guard,
            Err(TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(TryLockError::WouldBlock) if started.elapsed() < TEMP_LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    };
    if let Some((dir, name)) = temp.take() {
        let _ = rustix::fs::unlinkat(dir.as_fd(), name.as_str(), rustix::fs::AtFlags::empty());
    }
    Some(temp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_recorded_temporary_file_is_removed_and_a_finished_one_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(
            d.path(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let create = |name: &str| {
            create_temp(dir.as_fd(), name, || {
                std::fs::write(d.path().join(name), b"x")
            })
            .unwrap();
        };
        create("done.tmp");
        finish_temp(|| std::fs::rename(d.path().join("done.tmp"), d.path().join("done"))).unwrap();
        create("half.tmp");
        drop(remove_temp());
        assert!(!d.path().join("half.tmp").exists());
        assert!(d.path().join("done").exists());
        // Nothing recorded any more: a second removal touches nothing.
        std::fs::write(d.path().join("half.tmp"), b"y").unwrap();
        drop(remove_temp());
        assert!(d.path().join("half.tmp").exists());
    }
}
