//! The job's stdout and stderr while it runs: a thread follows the two files the job writes
//! (regular files in the scratch dir, as on a native execute node) and sends what is added
//! to them as output frames on the control port, so the launcher can copy them to the slot's
//! stdout and stderr as they grow (`condor_tail`, `stream_output`).
//!
//! The job never waits for this copy: it writes to its files, and the files are the only
//! buffer. When the host stops reading, the port stops taking frames and the thread waits
//! (bounded by one frame in memory) while the files keep growing; the final copy on the data
//! disk is authoritative either way.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capsule_manifest::control::{output_frame, Stream, MAX_OUTPUT_CHUNK};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How long the thread sleeps when neither file grew.
const IDLE: Duration = Duration::from_millis(100);
/// How long one wait for the port to take bytes lasts before the stop flag is checked again.
const PORT_WAIT_MS: u16 = 200;

/// The running copy; [`Live::stop`] ends it.
#[derive(Debug)]
pub struct Live {
    stop: Arc<AtomicBool>,
}

impl Live {
    /// Stop sending (the job ended: what is left comes with the data disk). The thread is
    /// not waited for: at worst it is cut in the middle of a frame by the poweroff, which the
    /// host's decoder just never completes.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One followed file.
struct Followed {
    stream: Stream,
    file: File,
    /// Bytes of it already sent.
    sent: u64,
    /// The file shrank under us (the job truncated its stream): no more of it is sent.
    done: bool,
}

/// Follow `stdout` and `stderr` (already created by the agent) and send what is added.
pub fn start(stdout: &Path, stderr: &Path) -> Option<Live> {
    let open = |stream, path: &Path| match File::open(path) {
        Ok(file) => Some(Followed {
            stream,
            file,
            sent: 0,
            done: false,
        }),
        Err(e) => {
            crate::log!("live output: cannot follow {}: {e}", path.display());
            None
        }
    };
    let followed: Vec<Followed> = [(Stream::Stdout, stdout), (Stream::Stderr, stderr)]
        .into_iter()
        .filter_map(|(s, p)| open(s, p))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("live-output".into())
        .spawn(move || follow(followed, &flag));
    match spawned {
        Ok(_) => Some(Live { stop }),
        Err(e) => {
            crate::log!("live output: cannot start its thread: {e}");
            None
        }
    }
}

fn follow(mut followed: Vec<Followed>, stop: &AtomicBool) {
    // The port is opened by the control thread, which may still be looking for it.
    let port = loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some(port) = crate::control::port() {
            break port;
        }
        std::thread::sleep(IDLE);
    };
    let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
    while !stop.load(Ordering::SeqCst) {
        let mut sent_any = false;
        // One frame of each stream in turn, so a chatty stdout does not starve stderr.
        for f in followed.iter_mut().filter(|f| !f.done) {
            let n = match f.file.read_at(&mut buf, f.sent) {
                Ok(n) => n,
                Err(e) => {
                    crate::log!("live output: reading the job's {:?}: {e}", f.stream);
                    f.done = true;
                    continue;
                }
            };
            if n == 0 {
                if f.file.metadata().is_ok_and(|m| m.len() < f.sent) {
                    crate::log!(
                        "live output: the job truncated its {:?}; its live copy stops here",
                        f.stream
                    );
                    f.done = true;
                }
                continue;
            }
            let frame = output_frame(f.stream, buf.get(..n).unwrap_or_default());
            if !send(port, &frame, stop) {
                return;
            }
            f.sent = f.sent.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            sent_any = true;
        }
        if !sent_any {
            std::thread::sleep(IDLE);
        }
    }
}

/// Write one whole frame, waiting for the port to take it (never a partial frame followed
/// by another); false once stopped or the port failed.
fn send(mut port: &File, frame: &[u8], stop: &AtomicBool) -> bool {
    let mut rest = frame;
    while !rest.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        // The port is shared with the control thread's blocking reads: not made non-blocking,
        // so wait until a write cannot block.
        let mut fds = [PollFd::new(port.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(PORT_WAIT_MS)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                crate::log!("live output: waiting for the port: {e}");
                return false;
            }
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
            crate::log!("live output: the port failed; no more live output");
            return false;
        }
        if !revents.contains(PollFlags::POLLOUT) {
            // Host end not connected (POLLHUP): wait, as for a full port.
            std::thread::sleep(IDLE);
            continue;
        }
        match port.write(rest) {
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::log!("live output: writing to the port: {e}");
                return false;
            }
        }
    }
    true
}
