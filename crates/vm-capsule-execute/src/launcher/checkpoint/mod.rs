//! Whole-VM checkpoints: a job routed with `VMCapsuleCheckpoint = true` is made
//! self-checkpointing (its routed ad carries `SuccessCheckpointExitCode`,
//! `WantFTOnCheckpoint` and `TransferCheckpoint` naming [`CHECKPOINT_FILE`]), and the launcher
//! does the checkpointing for it: every `VM_CAPSULE_CHECKPOINT_INTERVAL`, and when the job is
//! evicted if its vacate time allows and HTCondor will take the file along, it stops the
//! guest, has QEMU migrate it into a pipe (an fd passed over QMP: no path, works under
//! `-sandbox on`), compresses the stream and the written disks into the checkpoint file, and
//! exits with the checkpoint code. HTCondor spools the file and starts the launcher again, in
//! this sandbox or after an eviction in another; that start finds the file, checks that it was
//! made by the same QEMU for the same machine, and has QEMU load it instead of booting. A
//! checkpoint that cannot be restored is said on stderr and in the job's ad
//! (`VMCapsuleCheckpointFallback`), and the job starts afresh: never a wrong result.

mod disk;
pub mod file;
mod policy;

use super::ad_file::open_regular;
use disk::restore_disk;
pub use policy::Policy;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use capsule_manifest::control::Message;
use serde_json::{json, Value as Json};

use crate::runner::{ControlChannel, Machine, Monitor, WritableDisk};
use file::{Checkpoint, Trailer, Writer, MEMORY};

use super::live::LiveOutput;

/// The checkpoint's file in the sandbox.
pub const CHECKPOINT_FILE: &str = vm_capsule_core::routed::CHECKPOINT_FILE;
/// Its name while it is written.
pub const PARTIAL_FILE: &str = "vm-capsule.checkpoint.partial";
/// The capsule ad's attribute asking for checkpoints.
pub const ATTR: &str = vm_capsule_core::routed::ATTR_CHECKPOINT;
/// The job attribute naming the QEMU that made the job's last checkpoint: the routed job
/// then matches only nodes advertising the same `VMCapsuleQemuVersion`.
pub const ATTR_QEMU: &str = vm_capsule_core::routed::ATTR_CHECKPOINT_QEMU;
/// The job attribute saying why the last checkpoint was not restored.
pub const ATTR_FALLBACK: &str = "VMCapsuleCheckpointFallback";

/// QEMU's name for the checkpoint's pipe (`getfd`, `migrate fd:`).
const FD_NAME: &str = "vmcapsule-checkpoint";
/// How long one QMP command may take.
const COMMAND: Duration = Duration::from_secs(10);
/// How often a restore's progress is asked.
const POLL: Duration = Duration::from_millis(100);
/// Slack on top of the guest's memory for the migration stream (device state, page headers).
const STREAM_SLACK: u64 = 64 << 20;
/// Saving is assumed no faster than this (TCG, compression, a slow disk), bytes per second,
/// when judging whether it fits in the vacate time.
const SAVE_RATE: u64 = 40 << 20;

/// Where a run stands.
#[derive(Debug)]
enum State {
    /// Booting, or running after a boot or a restore.
    Running,
    /// QEMU is loading a checkpoint; the thread feeding it says how that went.
    Restoring {
        feeder: Option<JoinHandle<Result<(), String>>>,
        since: Instant,
        last_poll: Instant,
    },
    /// A restore failed: the run is stopped and must start afresh.
    RestoreFailed(String),
    /// The guest's memory is saved and QEMU told to quit: the disks are added once it has.
    Saved(Box<Writer>),
}

/// One run's checkpointing: restores before QEMU starts, saves while it runs.
#[derive(Debug)]
pub struct Session<'a> {
    policy: &'a Policy,
    sandbox: PathBuf,
    qemu_version: String,
    /// Restore when the file is there (off after a failed restore).
    restore: bool,
    /// The machine as the runner described it.
    machine: Option<(String, Vec<WritableDisk>, u64)>,
    /// Why this run cannot be saved (host paths mounted, QEMU snapshot disks, a failed save).
    unsaveable: Option<String>,
    state: State,
    /// Since the guest started running here (a restore's load not counted).
    running_since: Instant,
    /// The live output counts of the checkpoint restored, to carry on from.
    restored_streams: Option<(u64, u64)>,
    /// Lines for the launcher's stderr.
    notes: Vec<String>,
    /// When the restore began, and how long the load took once it has.
    restore_began: Instant,
    restored_ms: Option<u64>,
    /// When the guest was stopped to be saved.
    save_began: Instant,
}

impl<'a> Session<'a> {
    /// A session in `sandbox` with QEMU `qemu_version`; `restore`: load the checkpoint
    /// there if there is one.
    pub fn new(policy: &'a Policy, sandbox: &Path, qemu_version: String, restore: bool) -> Self {
        Session {
            policy,
            sandbox: sandbox.to_owned(),
            qemu_version,
            restore,
            machine: None,
            unsaveable: None,
            state: State::Running,
            running_since: Instant::now(),
            restored_streams: None,
            notes: Vec::new(),
            restore_began: Instant::now(),
            restored_ms: None,
            save_began: Instant::now(),
        }
    }

    /// Whether a checkpoint to restore is in the sandbox (an empty file is none: what a
    /// job's own checkpoint exit leaves, see [`Session::forget`]).
    pub fn has_checkpoint(sandbox: &Path) -> bool {
        std::fs::symlink_metadata(sandbox.join(CHECKPOINT_FILE))
            .is_ok_and(|m| m.is_file() && m.len() > 0)
    }

    /// The runner's hook before QEMU starts: remember the machine and, when there is a
    /// checkpoint for it, restore its disks and hand QEMU its memory stream.
    ///
    /// # Errors
    /// Why the checkpoint cannot be restored on this machine.
    pub fn before_start(&mut self, machine: &Machine<'_>) -> Result<Option<OwnedFd>, String> {
        self.machine = Some((
            machine.identity.clone(),
            machine.writable.clone(),
            machine.memory_mib,
        ));
        if machine.shares_host_paths {
            self.unsaveable = Some(
                "QEMU cannot save a guest that mounted host paths (VM_CAPSULE_HOST_PATHS)".into(),
            );
        } else if machine.snapshot_disks {
            self.unsaveable =
                Some("a disk of this template is a QEMU snapshot, which is not saved".into());
        }
        if let Some(why) = &self.unsaveable {
            self.notes
                .push(format!("the VM is not checkpointed on this node: {why}"));
        }
        self.running_since = Instant::now();
        self.restore_began = Instant::now();
        if !self.restore || !Self::has_checkpoint(&self.sandbox) {
            return Ok(None);
        }
        let stream = self.restore_from(machine).inspect_err(|why| {
            self.state = State::RestoreFailed(why.clone());
        })?;
        self.state = State::Restoring {
            feeder: Some(stream.1),
            since: Instant::now(),
            last_poll: Instant::now(),
        };
        Ok(Some(stream.0))
    }

    /// Check the checkpoint against `machine`, put its disks in place and start feeding its
    /// memory stream into a pipe whose read end is returned.
    fn restore_from(
        &mut self,
        machine: &Machine<'_>,
    ) -> Result<(OwnedFd, JoinHandle<Result<(), String>>), String> {
        let memory = machine.memory_mib << 20;
        let mut disk_bounds = Vec::new();
        for disk in &machine.writable {
            // The disk made for this start bounds the one restored over it.
            let size = capsule_disk::Image::open(
                &self.sandbox.join(&disk.file),
                capsule_disk::Access::ReadOnly,
            )
            .map(|i| i.virtual_size())
            .map_err(|e| format!("{}: {e}", disk.file))?;
            disk_bounds.push(size + size / 8 + STREAM_SLACK);
        }
        let max_file = disk_bounds.iter().fold(memory + STREAM_SLACK, |a, b| a + b);
        let checkpoint = Checkpoint::open(&self.sandbox.join(CHECKPOINT_FILE), max_file)
            .map_err(|e| e.to_string())?;
        let t = &checkpoint.trailer;
        // Known even when it is not restored: a fresh start's streams replace its run's.
        self.restored_streams = Some((t.stdout, t.stderr));
        if t.qemu != self.qemu_version {
            return Err(format!(
                "it was made by QEMU {}, this node has QEMU {}",
                t.qemu, self.qemu_version
            ));
        }
        if t.machine != machine.identity {
            return Err("it was made for another machine (template, kernel, memory, CPUs, devices or QEMU options differ)".into());
        }
        for (disk, bound) in machine.writable.iter().zip(disk_bounds) {
            restore_disk(&checkpoint, &self.sandbox, disk, bound)?;
        }
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("cannot make a pipe: {e}"))?;
        let feeder = std::thread::spawn(move || {
            let mut write = std::fs::File::from(write);
            checkpoint
                .extract(MEMORY, memory + STREAM_SLACK, &mut write)
                .map_err(|e| e.to_string())
        });
        Ok((read, feeder))
    }

    /// The stdout and stderr byte counts the restored checkpoint had written, if one was.
    pub fn restored_streams(&self) -> Option<(u64, u64)> {
        self.restored_streams
    }

    /// Why the restore failed, when it did.
    pub fn restore_failure(&self) -> Option<&str> {
        match &self.state {
            State::RestoreFailed(why) => Some(why),
            _ => None,
        }
    }

    /// Whether QEMU was still loading a checkpoint (a QEMU that then ended did not load it).
    pub fn restoring(&self) -> bool {
        matches!(self.state, State::Restoring { .. })
    }

    /// Called at every turn of the runner's wait, with a soft kill `pending` (not yet
    /// forwarded): true to stop QEMU (a checkpoint's memory is saved, or a restore failed).
    /// A soft kill that was turned into a checkpoint sets `*took_signal`.
    pub fn tick(
        &mut self,
        monitor: &mut Monitor,
        channel: &mut ControlChannel,
        live: &mut LiveOutput,
        pending: bool,
        took_signal: &mut bool,
    ) -> bool {
        let deadline = self.restore_deadline();
        match &mut self.state {
            State::Restoring {
                feeder,
                since,
                last_poll,
            } => {
                if last_poll.elapsed() < POLL {
                    return false;
                }
                *last_poll = Instant::now();
                let status = monitor
                    .execute("query-status", Json::Null, COMMAND)
                    .ok()
                    .and_then(|s| s.get("status").and_then(Json::as_str).map(str::to_owned));
                match status.as_deref() {
                    Some("inmigrate") if since.elapsed() < deadline => false,
                    Some("inmigrate") => {
                        self.state = State::RestoreFailed(format!(
                            "QEMU did not load it within {} s",
                            deadline.as_secs()
                        ));
                        true
                    }
                    Some(_) => {
                        let fed = feeder.take().map_or(Ok(()), |f| {
                            f.join().unwrap_or(Err("feeder panicked".into()))
                        });
                        let cont = fed.and_then(|()| {
                            monitor
                                .execute("cont", Json::Null, COMMAND)
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        });
                        match cont {
                            Ok(()) => {
                                // The guest's clock stood still while it was away.
                                if let Ok(now) = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                {
                                    channel.send(&Message::Time(now.as_secs(), now.subsec_nanos()));
                                }
                                self.state = State::Running;
                                self.running_since = Instant::now();
                                self.restored_ms = Some(millis(self.restore_began.elapsed()));
                                false
                            }
                            Err(why) => {
                                self.state = State::RestoreFailed(why);
                                true
                            }
                        }
                    }
                    None => false,
                }
            }
            State::Running if self.unsaveable.is_none() => {
                let evict = pending && self.policy.on_evict && self.fits_vacate_time();
                let due = self
                    .policy
                    .interval
                    .is_some_and(|i| self.running_since.elapsed() >= i);
                if !(evict || due) {
                    return false;
                }
                match self.save(monitor, channel, live) {
                    Ok(writer) => {
                        self.state = State::Saved(Box::new(writer));
                        *took_signal = evict;
                        let _ = monitor.execute("quit", Json::Null, COMMAND);
                        true
                    }
                    Err(why) => {
                        self.notes.push(format!(
                            "the VM could not be checkpointed ({why}); it runs on without checkpoints"
                        ));
                        self.unsaveable = Some(why);
                        let _ = monitor.execute("cont", Json::Null, COMMAND);
                        false
                    }
                }
            }
            _ => false,
        }
    }

    fn restore_deadline(&self) -> Duration {
        let memory = self.machine.as_ref().map_or(0, |m| m.2 << 20);
        Duration::from_secs(60 + memory / SAVE_RATE)
    }

    /// Whether saving the guest (its memory and disks, at [`SAVE_RATE`]) fits well within
    /// the vacate time.
    fn fits_vacate_time(&self) -> bool {
        let Some((_, disks, memory_mib)) = &self.machine else {
            return false;
        };
        let disk_bytes: u64 = disks
            .iter()
            .filter_map(|d| std::fs::metadata(self.sandbox.join(&d.file)).ok())
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            })
            .sum();
        let secs = 5 + ((memory_mib << 20) + disk_bytes) / SAVE_RATE;
        Duration::from_secs(secs * 2) < self.policy.vacate
    }

    /// Stop the guest and save its memory into a new checkpoint file.
    fn save(
        &mut self,
        monitor: &mut Monitor,
        channel: &mut ControlChannel,
        live: &mut LiveOutput,
    ) -> Result<Writer, String> {
        let refused = |e: crate::runner::MonitorError| e.to_string();
        self.save_began = Instant::now();
        monitor
            .execute("stop", Json::Null, COMMAND)
            .map_err(refused)?;
        // What the guest sent before it stopped is written out: the checkpoint counts it.
        for _ in 0..1000 {
            let messages = channel.poll();
            if messages.is_empty() && live.wants_more() {
                break;
            }
            live.deliver(messages);
        }
        // Migration is throttled to 32 MiB/s by default: a stopped guest is saved at once.
        monitor
            .execute(
                "migrate-set-parameters",
                json!({"max-bandwidth": 1_u64 << 40}),
                COMMAND,
            )
            .map_err(refused)?;
        let mut writer = Writer::create(
            &self.sandbox.join(CHECKPOINT_FILE),
            &self.sandbox.join(PARTIAL_FILE),
        )
        .map_err(|e| e.to_string())?;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("cannot make a pipe: {e}"))?;
        monitor
            .execute_passing(
                "getfd",
                json!({"fdname": FD_NAME}),
                Some(write.as_fd()),
                COMMAND,
            )
            .map_err(refused)?;
        drop(write);
        let reader = std::thread::spawn(move || {
            let mut read = std::fs::File::from(read);
            writer
                .section(MEMORY, &mut read)
                .map(|()| writer)
                .map_err(|e| e.to_string())
        });
        let migrated = monitor
            .execute("migrate", json!({"uri": format!("fd:{FD_NAME}")}), COMMAND)
            .map_err(refused)
            .and_then(|_| self.wait_for_migration(monitor));
        if let Err(why) = migrated {
            let _ = monitor.execute("migrate_cancel", Json::Null, COMMAND);
            // A migration that ran closes QEMU's end as it ends; one that never started (a
            // device that blocks migration) leaves it among QEMU's named fds, and the writer
            // would wait for its end forever.
            let _ = monitor.execute("closefd", json!({"fdname": FD_NAME}), COMMAND);
            let _ = reader.join();
            return Err(why);
        }
        reader
            .join()
            .unwrap_or_else(|_| Err("the checkpoint writer panicked".into()))
    }

    fn wait_for_migration(&self, monitor: &mut Monitor) -> Result<(), String> {
        let started = Instant::now();
        let deadline = self.restore_deadline();
        loop {
            let answer = monitor
                .execute("query-migrate", Json::Null, COMMAND)
                .map_err(|e| e.to_string())?;
            match answer.get("status").and_then(Json::as_str) {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let why = answer
                        .get("error-desc")
                        .and_then(Json::as_str)
                        .unwrap_or(s)
                        .chars()
                        .take(300)
                        .collect::<String>();
                    return Err(format!("QEMU's migration {s}: {why}"));
                }
                _ if started.elapsed() > deadline => {
                    return Err(format!(
                        "QEMU did not save the guest within {} s",
                        deadline.as_secs()
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Once QEMU has quit after a save: add the disks and put the file in place. `streams`:
    /// the stdout and stderr bytes written live so far.
    ///
    /// # Errors
    /// Why the checkpoint could not be completed (nothing is left in its place then).
    pub fn complete(&mut self, streams: (u64, u64)) -> Result<Option<u64>, String> {
        let State::Saved(writer) = std::mem::replace(&mut self.state, State::Running) else {
            return Ok(None);
        };
        let mut writer = *writer;
        let Some((identity, disks, _)) = self.machine.clone() else {
            return Err("the machine is not known".into());
        };
        for disk in &disks {
            let mut f = open_regular(&self.sandbox.join(&disk.file))
                .map_err(|e| format!("{}: {e}", disk.file))?;
            writer
                .section(&disk.file, &mut f)
                .map_err(|e| e.to_string())?;
        }
        let size = writer
            .finish(Trailer {
                qemu: self.qemu_version.clone(),
                machine: identity,
                stdout: streams.0,
                stderr: streams.1,
                save_ms: millis(self.save_began.elapsed()),
                restored_ms: self.restored_ms,
                sections: Vec::new(),
            })
            .map_err(|e| e.to_string())?;
        Ok(Some(size))
    }

    /// Whether the run stopped for a checkpoint (see [`Session::complete`]).
    pub fn saved(&self) -> bool {
        matches!(self.state, State::Saved(_))
    }

    /// The lines for the launcher's stderr, once.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// The job ended or checkpointed by itself: a VM checkpoint left in `sandbox` is stale.
    /// It is emptied rather than removed, so a job that also lists it in its own
    /// `TransferCheckpoint` still has the file to send.
    pub fn forget(sandbox: &Path) {
        let path = sandbox.join(CHECKPOINT_FILE);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::write(&path, b"");
        }
        let _ = std::fs::remove_file(sandbox.join(PARTIAL_FILE));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Tell the job's ad over Chirp (best effort: a job without an I/O proxy loses only this).
pub fn publish(sandbox: &Path, chirp_config: Option<&Path>, name: &str, text: &str) {
    let value = classad::print::expr_to_string(&classad::Expr::string(text), classad::Syntax::New);
    if let Ok(mut chirp) = crate::chirp::Chirp::from_sandbox(sandbox, chirp_config) {
        let _ = chirp.set_job_attr(name, &value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A QEMU that refuses the migration (a device blocking it) after it took the pipe:
    /// the save gives up with QEMU's reason, in bounded time, and leaves no file.
    #[test]
    fn a_refused_migration_ends_the_save() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let d = tempfile::tempdir().unwrap();
        // The session goes to a thread of its own, so that a hang fails the test.
        let policy: &'static Policy = Box::leak(Box::new(Policy {
            interval: Some(Duration::from_secs(1)),
            exit_code: 85,
            on_evict: false,
            vacate: Duration::from_secs(600),
        }));
        let mut session = Session::new(policy, d.path(), "7.2.22".into(), false);
        let mut monitor = Monitor::new().unwrap();
        let qemu = UnixStream::from(monitor.take_guest_end().unwrap());
        // The stand-in QEMU keeps the fd it is given until `closefd`, as QEMU does. It reads
        // with recvmsg: a plain read would drop the fd that comes with a command.
        let fake = std::thread::spawn(move || {
            let mut w = qemu.try_clone().unwrap();
            writeln!(w, "{{\"QMP\": {{}}}}").unwrap();
            let mut kept: Vec<std::os::fd::OwnedFd> = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let mut buf = [0u8; 4096];
                let mut space =
                    [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
                let got = rustix::net::recvmsg(
                    &qemu,
                    &mut [std::io::IoSliceMut::new(&mut buf)],
                    &mut control,
                    rustix::net::RecvFlags::empty(),
                );
                let n = match got {
                    Ok(m) if m.bytes > 0 => m.bytes,
                    _ => return,
                };
                for m in control.drain() {
                    if let rustix::net::RecvAncillaryMessage::ScmRights(fds) = m {
                        kept.extend(fds);
                    }
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    let answer = if line.contains("\"migrate\"") {
                        "{\"error\": {\"desc\": \"a device blocks migration\"}}"
                    } else {
                        if line.contains("closefd") {
                            kept.clear();
                        }
                        "{\"return\": {}}"
                    };
                    writeln!(w, "{answer}").unwrap();
                }
            }
        });
        let mut channel = ControlChannel::new().unwrap();
        let (done, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = session
                .save(&mut monitor, &mut channel, &mut LiveOutput::off())
                .map(|_| ());
            let _ = done.send(r);
        });
        let result = got
            .recv_timeout(Duration::from_secs(30))
            .expect("the save hung on a refused migration");
        let why = result.unwrap_err();
        assert!(why.contains("a device blocks migration"), "{why}");
        assert!(!d.path().join(CHECKPOINT_FILE).exists());
        assert!(!d.path().join(PARTIAL_FILE).exists());
        drop(fake);
    }

    #[test]
    fn an_empty_file_or_a_link_is_no_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        assert!(!Session::has_checkpoint(d.path()));
        std::fs::write(d.path().join("elsewhere"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), d.path().join(CHECKPOINT_FILE))
            .unwrap();
        assert!(!Session::has_checkpoint(d.path()));
        std::fs::remove_file(d.path().join(CHECKPOINT_FILE)).unwrap();
        std::fs::write(d.path().join(CHECKPOINT_FILE), b"x").unwrap();
        assert!(Session::has_checkpoint(d.path()));
        // The job ended: what it leaves is an empty file, which HTCondor can still send.
        Session::forget(d.path());
        assert!(!Session::has_checkpoint(d.path()));
        assert!(d.path().join(CHECKPOINT_FILE).exists());
    }
}
