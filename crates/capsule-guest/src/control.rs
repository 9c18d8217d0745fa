//! The guest's end of the control channel (`capsule_manifest::control`): a virtio-serial port
//! the vanilla launcher attaches. A signal HTCondor sent the launcher (the job's soft-kill
//! signal, on a vacate, `condor_rm` or a hold) comes in here and goes to the job's top
//! process, as HTCondor's starter sends it to a native job's; the job then ends by itself and
//! the agent collects its outputs as after any exit. When the vacate time runs out the host
//! asks for a kill: the job's whole process group gets SIGKILL, as HTCondor's starter kills a
//! native job's family, and its files are collected as after any end before the host powers
//! the guest off.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use capsule_manifest::control::{Decoder, Message, CONTROL_PORT};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Where the kernel lists virtio-serial ports.
const PORTS: &str = "/sys/class/virtio-ports";
/// How long the port may take to appear after the agent starts (the driver probes it
/// asynchronously).
const FIND_FOR: Duration = Duration::from_secs(10);

/// Where the job is, for a signal that arrives.
#[derive(Debug)]
enum Job {
    /// Not started yet: signals wait for it (a kill, [`KILL`], among them).
    Waiting(Vec<Signal>),
    /// Running with this pid (not reaped while it is here).
    Running(Pid),
    /// Ended: signals are dropped.
    Ended,
}

static JOB: Mutex<Job> = Mutex::new(Job::Waiting(Vec::new()));

/// What the host's kill request stands for among the pending signals: SIGKILL to the job's
/// process group rather than to its top process.
const KILL: Signal = Signal::SIGKILL;

/// Whether the host asked for the job to be killed (for the result's warnings).
static KILLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the host had the job killed as its vacate time ran out.
pub fn killed_by_host() -> bool {
    KILLED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The port, for the writer of the job's live output (`crate::live`); unset while it is
/// looked for, and forever when there is none.
static PORT: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// The open control port, once [`start`]'s thread has found and opened it.
pub fn port() -> Option<&'static File> {
    PORT.get()
}

fn job() -> std::sync::MutexGuard<'static, Job> {
    JOB.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The job started as `pid`: deliver what came before it.
pub fn job_started(pid: Pid) {
    let mut job = job();
    if let Job::Waiting(pending) = &*job {
        for &s in pending {
            deliver(pid, s);
        }
    }
    *job = Job::Running(pid);
}

/// The job ended (its pid is still unreaped): no signal may go to that pid any more.
pub fn job_ended() {
    *job() = Job::Ended;
}

fn deliver(pid: Pid, signal: Signal) {
    if signal == KILL {
        // The job runs in its own process group, whose id is its pid (not reaped while it
        // is running, so not reused).
        crate::log!(
            "control: the host's vacate time is up: SIGKILL to the job's process group {pid}"
        );
        KILLED.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = killpg(pid, KILL) {
            crate::log!("control: cannot kill the job's process group: {e}");
        }
        return;
    }
    crate::log!("control: {signal} for the job (pid {pid})");
    if let Err(e) = kill(pid, signal) {
        crate::log!("control: cannot send {signal} to the job: {e}");
    }
}

/// The host's kill request: SIGKILL to the job's process group, now or as soon as it starts.
fn on_kill() {
    let mut job = job();
    match &mut *job {
        // Kept once, even when the signals before it filled the queue.
        Job::Waiting(pending) if !pending.contains(&KILL) => pending.push(KILL),
        Job::Waiting(_) => {}
        Job::Ended => {}
        Job::Running(pid) => deliver(*pid, KILL),
    }
}

fn on_signal(number: u8) {
    let Ok(signal) = Signal::try_from(i32::from(number)) else {
        crate::log!("control: signal {number} is not one this agent knows; ignored");
        return;
    };
    if signal == KILL {
        // Not the host's to send as a signal (it cannot catch SIGKILL to forward it).
        crate::log!("control: SIGKILL as a forwarded signal; ignored");
        return;
    }
    let mut job = job();
    match &mut *job {
        Job::Waiting(pending) if pending.len() < 16 => pending.push(signal),
        Job::Waiting(_) | Job::Ended => {}
        Job::Running(pid) => deliver(*pid, signal),
    }
}

/// The device of the port named [`CONTROL_PORT`] under `ports`, if there is one.
fn find_port(ports: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(ports).ok()?.flatten() {
        let mut name = String::new();
        let read = File::open(entry.path().join("name"))
            .and_then(|f| f.take(256).read_to_string(&mut name));
        if read.is_ok() && name.trim_end() == CONTROL_PORT {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

/// Listen on the control port in a thread of its own, for the rest of the agent's life. No
/// port (the VM universe, a host-mode run) means nothing to listen to.
pub fn start() {
    let spawned = std::thread::Builder::new()
        .name("control".into())
        .spawn(listen);
    if let Err(e) = spawned {
        crate::log!("control: cannot start its thread: {e}");
    }
}

fn listen() {
    let start = Instant::now();
    let device = loop {
        if let Some(d) = find_port(Path::new(PORTS)) {
            break d;
        }
        if start.elapsed() > FIND_FOR {
            crate::log!(
                "control: no {CONTROL_PORT} port; signals from the host cannot reach the job"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut port = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(&device)
    {
        Ok(f) => f,
        Err(e) => {
            crate::log!("control: cannot open {}: {e}", device.display());
            return;
        }
    };
    crate::log!("control: listening on {}", device.display());
    match port.try_clone() {
        Ok(writer) => {
            let _ = PORT.set(writer);
        }
        Err(e) => crate::log!("control: no live output: cannot share the port: {e}"),
    }
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let room = decoder.room().min(buf.len());
        if room == 0 {
            crate::log!("control: the channel's framing is lost; no more signals");
            return;
        }
        let n = match port.read(buf.get_mut(..room).unwrap_or_default()) {
            // The host closed its end, or the port went away.
            Ok(0) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                crate::log!("control: reading {}: {e}", device.display());
                return;
            }
        };
        decoder.push(buf.get(..n).unwrap_or_default());
        loop {
            match decoder.next_message() {
                Ok(Some(Message::Signal(s))) => on_signal(s),
                Ok(Some(Message::Time(secs, nanos))) => set_clock(secs, nanos),
                Ok(Some(Message::Kill)) => on_kill(),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    crate::log!("control: {e}");
                    if decoder.is_broken() {
                        break;
                    }
                }
            }
        }
    }
}

/// Set the guest's clock to the host's time: a guest restored from a checkpoint resumes with
/// the clock it was saved with, behind by however long it was away.
fn set_clock(secs: u64, nanos: u32) {
    let Ok(secs) = i64::try_from(secs) else {
        return;
    };
    let now = nix::sys::time::TimeSpec::new(secs, i64::from(nanos));
    match nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now) {
        Ok(()) => crate::log!("control: the clock is set to the host's ({secs} s)"),
        Err(e) => crate::log!("control: cannot set the clock: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_port_is_found_by_its_name() {
        let d = tempfile::tempdir().unwrap();
        for (port, name) in [
            ("vport0p1", "other\n"),
            ("vport1p1", "org.vm-capsule.control\n"),
        ] {
            std::fs::create_dir(d.path().join(port)).unwrap();
            std::fs::write(d.path().join(port).join("name"), name).unwrap();
        }
        std::fs::create_dir(d.path().join("vport2p1")).unwrap();
        assert_eq!(find_port(d.path()), Some(PathBuf::from("/dev/vport1p1")));
        assert_eq!(find_port(&d.path().join("none")), None);
    }
}
