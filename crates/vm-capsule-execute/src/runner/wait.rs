//! Waiting for QEMU with a deadline while its stderr is drained: QEMU's stderr used to be
//! read only after it exited, so a QEMU that wrote more than a pipe buffer blocked and was
//! then reported as a timeout.

use std::io::Read;
use std::process::{Child, ExitStatus};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The last bytes of stderr kept for a message.
const STDERR_TAIL: usize = 16 * 1024;

/// How the wait ended.
#[derive(Debug)]
pub enum Waited {
    /// QEMU exited; the tail of what it wrote to stderr.
    Exited(ExitStatus, String),
    /// The deadline passed; QEMU was killed.
    TimedOut,
    /// `gave_up` said there is no point waiting; QEMU was killed.
    GaveUp,
    /// `tick` asked for the guest to stop; QEMU was told to quit (and killed if it did not).
    Stopped,
}

/// How long QEMU has to quit after SIGTERM before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// Drain `child`'s stderr in a thread, keeping its tail.
fn drain(child: &mut Child) -> Option<JoinHandle<String>> {
    let mut stderr = child.stderr.take()?;
    Some(std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(buf.get(..n).unwrap_or_default());
            if tail.len() > 2 * STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        let start = tail.len().saturating_sub(STDERR_TAIL);
        String::from_utf8_lossy(tail.get(start..).unwrap_or_default()).into_owned()
    }))
}

/// Wait for `child` until `deadline` (none: as long as it runs) or until `gave_up` (asked
/// once a second) says the guest will never finish, reporting progress every few seconds.
/// `tick` runs at every turn (a few ms apart); once it returns true QEMU is asked to quit
/// (SIGTERM: it closes its disks cleanly) and killed [`QUIT_GRACE`] later.
///
/// # Errors
/// Errors of `try_wait`.
pub fn wait(
    child: &mut Child,
    deadline: Option<Duration>,
    progress: &mut dyn FnMut(&str),
    gave_up: &dyn Fn() -> bool,
    tick: &mut dyn FnMut() -> bool,
) -> std::io::Result<Waited> {
    let drainer = drain(child);
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut last_check = Instant::now();
    let mut stopping: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            // Stopped: what it said on the way out does not matter, so no waiting for it.
            if stopping.is_some() {
                return Ok(Waited::Stopped);
            }
            let tail = drainer.and_then(|h| h.join().ok()).unwrap_or_default();
            return Ok(Waited::Exited(status, tail));
        }
        match stopping {
            None if tick() => {
                stopping = Some(Instant::now());
                let pid = rustix::process::Pid::from_child(child);
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            Some(t) if t.elapsed() > QUIT_GRACE => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Waited::Stopped);
            }
            _ => {}
        }
        if deadline.is_some_and(|d| start.elapsed() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Waited::TimedOut);
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            last_check = Instant::now();
            if gave_up() {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Waited::GaveUp);
            }
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(&format!("guest running, {} s", start.elapsed().as_secs()));
            last_report = Instant::now();
        }
        // QEMU exits as the guest powers off: notice within a few ms, not a tenth of a second.
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::process::{Command, Stdio};

    /// Issue 16: a child that writes far more than a pipe buffer to stderr still exits.
    #[test]
    fn a_chatty_child_does_not_block() {
        let mut child = Command::new("sh")
            .args(["-c", "head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 3"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        match wait(
            &mut child,
            Some(Duration::from_secs(30)),
            &mut |_| {},
            &|| false,
            &mut || false,
        )
        .unwrap()
        {
            Waited::Exited(status, tail) => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(tail.len(), STDERR_TAIL);
            }
            Waited::TimedOut | Waited::GaveUp | Waited::Stopped => {
                panic!("blocked on a full stderr pipe")
            }
        }
    }

    #[test]
    fn the_deadline_kills() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let w = wait(
            &mut child,
            Some(Duration::from_millis(200)),
            &mut |_| {},
            &|| false,
            &mut || false,
        )
        .unwrap();
        assert!(matches!(w, Waited::TimedOut));
    }

    #[test]
    fn giving_up_kills() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let w = wait(&mut child, None, &mut |_| {}, &|| true, &mut || false).unwrap();
        assert!(matches!(w, Waited::GaveUp));
    }

    /// A stop asked by `tick` quits the child with SIGTERM, and kills one that ignores it.
    #[test]
    fn a_stop_quits_then_kills() {
        for (script, ignores) in [
            ("sleep 30", false),
            ("trap '' TERM; while :; do sleep 0.1; done", true),
        ] {
            let mut child = Command::new("sh")
                .args(["-c", script])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let started = Instant::now();
            // Once the shell has set its trap.
            let mut tick = || started.elapsed() > Duration::from_millis(500);
            let w = wait(&mut child, None, &mut |_| {}, &|| false, &mut tick).unwrap();
            assert!(matches!(w, Waited::Stopped), "{script}");
            assert!(started.elapsed() < QUIT_GRACE + Duration::from_secs(3));
            assert_eq!(started.elapsed() >= QUIT_GRACE, ignores, "{script}");
        }
    }
}
