//! A wall-clock bound on a whole hook: whatever it is blocked in (a hostile FIFO, a stuck
//! file system), the hook ends in time and says so in the way its caller understands.

use std::sync::Mutex;
use std::time::Duration;

/// Taken by whoever writes the hook's answer on stdout: the hook itself when it finishes, or
/// the watchdog when time is up. The first one wins; the other never writes.
static ANSWER: Mutex<bool> = Mutex::new(false);

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

/// After `limit`, unless the hook has answered, run `on_timeout` (which writes the timeout
/// answer) and exit the process with `code`.
pub fn arm(limit: Duration, code: i32, on_timeout: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        if claim_answer() {
            on_timeout();
            std::process::exit(code);
        }
    });
}
