//! Interrupted jobs, as HTCondor's starter interrupts a native vanilla job
//! (`OsProc::ShutdownGraceful`, `Remove`, `Hold` in `os_proc.cpp`): it sends the job's
//! soft-kill signal (`KillSig`, or `RemoveKillSig`/`HoldKillSig`; default SIGTERM) to the
//! job's top process only, which is this launcher, and SIGKILLs the whole process family
//! when the vacate time is up. The launcher catches those signals and forwards each over the
//! control channel to the agent, which delivers it to the job in the guest; the job ends by
//! itself and its results come out as after any exit. A job still running as the vacate time
//! runs out is killed in the guest (the agent SIGKILLs its process group and writes its
//! results, as HTCondor's SIGKILL leaves a native job's files in its sandbox); a guest still
//! running just before the end is powered off, so the launcher ends with the job's results or
//! a message, not by HTCondor's SIGKILL.
//!
//! Suspension needs nothing: SIGSTOP and SIGCONT go to every process of the family, QEMU
//! included, and the guest simply pauses.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_manifest::control::Message;
use capsule_manifest::CheckpointExit;
use classad::eval::evaluate_attr;
use classad::{ClassAd, Value};

use crate::runner::ControlChannel;

/// HTCondor's `MACHINE_MAX_VACATE_TIME` default, seconds: the vacate time when neither ad says.
const DEFAULT_VACATE_SECS: u64 = 600;
/// The guest is powered off this long before HTCondor's SIGKILL is due.
const STOP_MARGIN: Duration = Duration::from_secs(2);
/// The least time the guest gets between the kill request and the power-off, to collect the
/// job's outputs and write its results (a tenth of the grace when that is more; never more
/// than half of it, so a short vacate time still leaves the job the first half).
const KILL_LEAD: Duration = Duration::from_secs(5);

/// What the starter's ads say about interrupting this job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interruption {
    /// Signals the starter may send to soft-kill the job (SIGTERM always among them).
    pub kill_signals: Vec<i32>,
    /// From the soft-kill signal to HTCondor's SIGKILL.
    pub vacate: Duration,
    /// The job is self-checkpointing: it exits with this code, or dies by this signal, to be
    /// restarted in place (honoured only with `WantFTOnCheckpoint`).
    pub checkpoint_exit: Option<CheckpointExit>,
}

/// A signal as a job ad names it (`findSignal` in `classad_helpers.cpp`): a number, or a name
/// with or without `SIG`.
fn signal_of(ad: &ClassAd, attr: &str) -> Option<i32> {
    match evaluate_attr(ad, attr) {
        Value::Integer(n) => i32::try_from(n).ok().filter(|n| *n > 0),
        Value::String(name) => {
            let name = name.trim().to_ascii_uppercase();
            let full = if name.starts_with("SIG") {
                name
            } else {
                format!("SIG{name}")
            };
            full.parse::<nix::sys::signal::Signal>()
                .ok()
                .map(|s| s as i32)
        }
        _ => None,
    }
}

/// The exit status HTCondor's starter takes for a checkpoint (`computeDesiredExitStatus`
/// with the `Checkpoint` prefix in `starter_util.cpp`): with `SuccessCheckpointExitBySignal`
/// the job's death by `SuccessCheckpointExitSignal`, otherwise its exit with
/// `SuccessCheckpointExitCode`; an unset or zero value stands for the status 0, an exit with
/// code 0. `None` when no status of a job can match (a number out of range).
fn checkpoint_exit_of(job: &ClassAd) -> Option<CheckpointExit> {
    let integer = |attr| match evaluate_attr(job, attr) {
        Value::Integer(n) => n,
        _ => 0,
    };
    if evaluate_attr(job, "SuccessCheckpointExitBySignal") == Value::Bool(true) {
        return match integer("SuccessCheckpointExitSignal") {
            0 => Some(CheckpointExit::Code(0)),
            n => u8::try_from(n)
                .ok()
                .filter(|s| (1..=64).contains(s))
                .map(CheckpointExit::Signal),
        };
    }
    u8::try_from(integer("SuccessCheckpointExitCode"))
        .ok()
        .map(CheckpointExit::Code)
}

fn seconds(ad: &ClassAd, attr: &str) -> Option<u64> {
    match evaluate_attr(ad, attr) {
        Value::Integer(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

impl Interruption {
    /// From the job ad and the machine ad the starter wrote (either may be missing: then
    /// HTCondor's defaults).
    pub fn from_ads(job: Option<&ClassAd>, machine: Option<&ClassAd>) -> Interruption {
        let mut kill_signals = vec![nix::libc::SIGTERM];
        let mut vacate = None;
        let mut checkpoint_exit = None;
        if let Some(job) = job {
            for attr in ["KillSig", "RemoveKillSig", "HoldKillSig"] {
                kill_signals.extend(signal_of(job, attr));
            }
            vacate = seconds(job, "JobMaxVacateTime").or_else(|| seconds(job, "KillSigTimeout"));
            if evaluate_attr(job, "WantFTOnCheckpoint") == Value::Bool(true) {
                checkpoint_exit = checkpoint_exit_of(job);
            }
        }
        let machine = machine.and_then(|m| seconds(m, "MachineMaxVacateTime"));
        let secs = match (vacate, machine) {
            (Some(j), Some(m)) => j.min(m),
            (Some(s), None) | (None, Some(s)) => s,
            (None, None) => DEFAULT_VACATE_SECS,
        };
        kill_signals.sort_unstable();
        kill_signals.dedup();
        Interruption {
            kill_signals,
            vacate: Duration::from_secs(secs),
            checkpoint_exit,
        }
    }

    /// The job's checkpoint exit code, when it checkpoints by one (whole-VM checkpoints
    /// exit with it).
    pub fn checkpoint_exit_code(&self) -> Option<u8> {
        match self.checkpoint_exit {
            Some(CheckpointExit::Code(code)) => Some(code),
            _ => None,
        }
    }

    /// From the ad files the starter names in `_CONDOR_JOB_AD` and `_CONDOR_MACHINE_AD`.
    pub fn from_files(job_ad: Option<&Path>, machine_ad: Option<&Path>) -> Interruption {
        Interruption::from_ads(
            job_ad.and_then(read_ad).as_ref(),
            machine_ad.and_then(read_ad).as_ref(),
        )
    }
}

/// A bounded ad file, parsed; `None` when it cannot be read (the defaults then hold).
fn read_ad(path: &Path) -> Option<ClassAd> {
    let text = super::ad_file::read_ad_text(path).ok()?;
    classad::parse_ads(&text).ok()?.pop()
}

/// The soft-kill signals caught for the run, forwarded to the guest.
#[derive(Debug)]
pub struct Forwarder {
    caught: Vec<(i32, Arc<AtomicBool>)>,
    first: Option<Instant>,
    grace: Duration,
    /// From the first signal to the kill request (before `grace`).
    kill_after: Duration,
    killed: bool,
}

impl Forwarder {
    /// Catch `interruption`'s signals from now on (a signal the kernel does not let a
    /// process catch, SIGKILL or SIGSTOP, is left alone; so are SIGCONT and SIGCHLD, which
    /// suspension and QEMU need as they are).
    pub fn install(interruption: &Interruption) -> Forwarder {
        use nix::libc::{SIGCHLD, SIGCONT, SIGKILL, SIGSTOP};
        let mut caught = Vec::new();
        for &sig in &interruption.kill_signals {
            if [SIGKILL, SIGSTOP, SIGCONT, SIGCHLD].contains(&sig)
                || signal_hook::consts::FORBIDDEN.contains(&sig)
                || u8::try_from(sig).is_err()
            {
                continue;
            }
            let flag = Arc::new(AtomicBool::new(false));
            if signal_hook::flag::register(sig, Arc::clone(&flag)).is_ok() {
                caught.push((sig, flag));
            }
        }
        let grace = interruption
            .vacate
            .saturating_sub(STOP_MARGIN)
            .max(Duration::from_secs(1));
        let lead = (grace / 10).max(KILL_LEAD).min(grace / 2);
        Forwarder {
            caught,
            first: None,
            grace,
            kill_after: grace.saturating_sub(lead),
            killed: false,
        }
    }

    /// Forward what arrived since the last call (what the guest sends is the launcher's to
    /// read, see `live`), and ask the agent to kill the job once its time to end by itself
    /// is over; true once the guest has had its vacate time (less a margin) since the first
    /// signal: time to power it off, whether it heeded the kill or not.
    pub fn tick(&mut self, channel: &mut ControlChannel) -> bool {
        for (sig, flag) in &self.caught {
            if flag.swap(false, Ordering::SeqCst) {
                if let Ok(s) = u8::try_from(*sig) {
                    channel.send(&Message::Signal(s));
                }
                self.first.get_or_insert_with(Instant::now);
            }
        }
        let Some(first) = self.first else {
            return false;
        };
        let elapsed = first.elapsed();
        if !self.killed && elapsed >= self.kill_after {
            channel.send(&Message::Kill);
            self.killed = true;
        }
        elapsed >= self.grace
    }

    /// Whether a soft-kill signal arrived and is not forwarded yet.
    pub fn pending(&self) -> bool {
        self.caught
            .iter()
            .any(|(_, flag)| flag.load(Ordering::SeqCst))
    }

    /// Drop the signals that arrived: the launcher answered them itself (a checkpoint).
    pub fn discard(&mut self) {
        for (_, flag) in &self.caught {
            flag.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ad(text: &str) -> ClassAd {
        classad::parse_old_ad(text).unwrap()
    }

    #[test]
    fn the_job_ad_names_signals_vacate_time_and_checkpoint_code() {
        let job = ad("KillSig = \"SIGUSR1\"\nRemoveKillSig = \"INT\"\nHoldKillSig = 12\nJobMaxVacateTime = 30\nWantFTOnCheckpoint = true\nSuccessCheckpointExitCode = 85\n");
        let i = Interruption::from_ads(Some(&job), None);
        assert_eq!(i.kill_signals, vec![2, 10, 12, 15]);
        assert_eq!(i.vacate, Duration::from_secs(30));
        assert_eq!(i.checkpoint_exit, Some(CheckpointExit::Code(85)));
        // The machine's limit wins when shorter; without WantFTOnCheckpoint no checkpoint.
        let machine = ad("MachineMaxVacateTime = 10 * 2\n");
        let job = ad("SuccessCheckpointExitCode = 85\nKillSig = \"NOSUCH\"\n");
        let i = Interruption::from_ads(Some(&job), Some(&machine));
        assert_eq!(i.kill_signals, vec![15]);
        assert_eq!(i.vacate, Duration::from_secs(20));
        assert_eq!(i.checkpoint_exit, None);
        let none = Interruption::from_ads(None, None);
        assert_eq!(none.vacate, Duration::from_secs(DEFAULT_VACATE_SECS));
    }

    /// The starter's rule for the checkpoint status: by a signal when the job says so (its
    /// exit code then counts for nothing), an unset code or signal meaning status 0.
    #[test]
    fn a_job_may_checkpoint_by_a_signal() {
        let ckpt = |extra: &str| {
            let job = ad(&format!("WantFTOnCheckpoint = true\n{extra}"));
            Interruption::from_ads(Some(&job), None).checkpoint_exit
        };
        let by_signal = "SuccessCheckpointExitBySignal = true\n";
        assert_eq!(
            ckpt(&format!(
                "{by_signal}SuccessCheckpointExitSignal = 10\nSuccessCheckpointExitCode = 85\n"
            )),
            Some(CheckpointExit::Signal(10))
        );
        assert_eq!(ckpt(by_signal), Some(CheckpointExit::Code(0)));
        assert_eq!(
            ckpt(&format!("{by_signal}SuccessCheckpointExitSignal = 300\n")),
            None
        );
        assert_eq!(
            ckpt("SuccessCheckpointExitBySignal = false\nSuccessCheckpointExitSignal = 10\nSuccessCheckpointExitCode = 85\n"),
            Some(CheckpointExit::Code(85))
        );
        assert_eq!(ckpt(""), Some(CheckpointExit::Code(0)));
        assert_eq!(ckpt("SuccessCheckpointExitCode = 256\n"), None);
    }

    #[test]
    fn an_ad_file_that_is_not_a_plain_file_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(read_ad(&fifo).is_none());
        std::fs::write(d.path().join("real"), "KillSig = \"SIGUSR1\"\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("real"), d.path().join("link")).unwrap();
        assert!(read_ad(&d.path().join("link")).is_none());
        assert!(read_ad(&d.path().join("real")).is_some());
    }

    /// A caught signal goes to the guest as one frame, once; the stop comes when the grace
    /// after the first one is over.
    #[test]
    fn a_caught_signal_is_forwarded_then_the_guest_stopped() {
        use std::io::Read;
        let interruption = Interruption {
            kill_signals: vec![nix::libc::SIGUSR2, nix::libc::SIGKILL],
            vacate: Duration::ZERO,
            checkpoint_exit: None,
        };
        let mut forwarder = Forwarder::install(&interruption);
        // SIGKILL cannot be caught: not among them.
        assert_eq!(forwarder.caught.len(), 1);
        let mut channel = ControlChannel::new().unwrap();
        let mut guest = std::os::unix::net::UnixStream::from(channel.take_guest_end().unwrap());
        assert!(!forwarder.tick(&mut channel));
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR2).unwrap();
        assert!(!forwarder.tick(&mut channel));
        let mut frame = vec![0u8; 6];
        guest.read_exact(&mut frame).unwrap();
        assert_eq!(frame, Message::Signal(12).encode());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(forwarder.tick(&mut channel));
        // With a grace of 1 s the kill came half-way, once.
        let mut kill = vec![0u8; 5];
        guest.read_exact(&mut kill).unwrap();
        assert_eq!(kill, Message::Kill.encode());
        assert!(forwarder.tick(&mut channel));
        guest.set_nonblocking(true).unwrap();
        assert!(guest.read(&mut frame).is_err(), "forwarded twice");
    }

    /// The kill request leaves the guest at least `KILL_LEAD` (or a tenth of the grace) to
    /// write the job's results, and the job at least half of the grace to end by itself.
    #[test]
    fn the_kill_comes_before_the_power_off_with_time_to_spare() {
        let at = |vacate_secs| {
            let f = Forwarder::install(&Interruption {
                kill_signals: Vec::new(),
                vacate: Duration::from_secs(vacate_secs),
                checkpoint_exit: None,
            });
            (f.kill_after, f.grace)
        };
        let secs = Duration::from_secs_f64;
        assert_eq!(at(600), (secs(538.2), secs(598.0)));
        assert_eq!(at(60), (secs(52.2), secs(58.0)));
        assert_eq!(at(12), (secs(5.0), secs(10.0)));
        assert_eq!(at(2), (secs(0.5), secs(1.0)));
    }
}
