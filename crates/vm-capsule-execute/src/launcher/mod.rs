//! The vanilla flavour's launcher (`vm-capsule run --vanilla`), inside an ordinary vanilla
//! slot: HTCondor has transferred the capsule's files (the routed ad, the capsule's
//! description, kernel and initrd, the job's inputs) into the job's sandbox. The launcher
//! makes the data disk from them ([`sandbox`]), boots the VM, and leaves behind what a vanilla
//! job leaves ([`extract`]): its outputs in the sandbox, its stdout and stderr on ours, and its
//! exit status, so HTCondor's own file transfer and exit handling do the rest.

pub mod ad_file;
pub mod checkpoint;
pub(crate) mod extract;
pub mod interrupt;
pub mod live;
pub mod sandbox;

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

use classad::eval::string_attr;
use classad::ClassAd;

pub use extract::{finish_in_sandbox, CapsuleFiles, LauncherExit};

use crate::runner::{
    run_with, Attached, ControlChannel, Machine, Monitor, RunError, RunOptions, VmSpec, CONSOLE_LOG,
};
use capsule_manifest::CheckpointExit;
use checkpoint::{Policy, Session};
use interrupt::{Forwarder, Interruption};
use live::LiveOutput;
use vm_capsule_core::capsule::is_plain_name;
use vm_capsule_core::node_image::NodeImageError;
use vm_capsule_core::routed;

/// Lines of the console shown when the VM fails: its end usually says why.
const CONSOLE_TAIL_LINES: usize = 15;

/// Why the sandbox is not a slot's sandbox the launcher can start from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// The routed ad does not describe a VM.
    #[error(transparent)]
    Spec(#[from] RunError),
    /// The routed ad's node images are malformed.
    #[error(transparent)]
    NodeImage(#[from] NodeImageError),
    /// The data disk's name is a path.
    #[error("{routed_ad}: {attr} names {name:?}, not a plain file name in the job's sandbox", attr = routed::ATTR_DATA_DISK)]
    DataDiskName {
        /// The routed ad's file.
        routed_ad: String,
        /// The name it gives.
        name: String,
    },
    /// The routed ad names no data disk.
    #[error("{routed_ad}: {attr} is missing", attr = routed::ATTR_DATA_DISK)]
    NoDataDisk {
        /// The routed ad's file.
        routed_ad: String,
    },
    /// HTCondor did not transfer the capsule's files here.
    #[error("{files} (the capsule's files, TransferInput of {routed_ad}) not in the working directory {cwd}: `run --vanilla` is the launcher of a routed vanilla job and expects HTCondor to have transferred them into its sandbox; outside a slot, run the routed ad without --vanilla")]
    Missing {
        /// The missing files, comma-separated.
        files: String,
        /// The routed ad's file.
        routed_ad: String,
        /// The working directory.
        cwd: String,
    },
}

/// `run --vanilla` is the launcher inside a slot: HTCondor has put the capsule's files in the
/// working directory `cwd`. Say so when they are not there (run by hand, outside a slot).
///
/// # Errors
/// [`SlotError`] naming what is missing or malformed.
pub fn check_slot_sandbox(ad: &ClassAd, cwd: &Path, routed_ad: &Path) -> Result<(), SlotError> {
    let spec = VmSpec::from_ad(ad)?;
    // The launcher makes the data disk itself, from what HTCondor transferred, and the
    // overlays over OS images staged on the node.
    let data_disk = string_attr(ad, routed::ATTR_DATA_DISK);
    // The disk made and unpacked here: never a file elsewhere.
    if let Some(name) = data_disk.as_deref() {
        if !is_plain_name(name) {
            return Err(SlotError::DataDiskName {
                routed_ad: routed_ad.display().to_string(),
                name: name.to_owned(),
            });
        }
    }
    let overlays: Vec<String> = vm_capsule_core::node_image::from_routed_ad(ad)?
        .into_iter()
        .map(|b| b.overlay)
        .collect();
    let missing: Vec<&str> = spec
        .transfer
        .iter()
        .filter(|f| data_disk.as_deref() != Some(f.as_str()) && !overlays.contains(f))
        .filter(|f| !cwd.join(f).exists())
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(SlotError::Missing {
        files: missing.join(", "),
        routed_ad: routed_ad.display().to_string(),
        cwd: cwd.display().to_string(),
    })
}

/// Where the launcher runs.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The job's sandbox (the working directory HTCondor gave the launcher).
    pub sandbox: PathBuf,
    /// The routed ad's file, as given on the command line (one of the capsule's files).
    pub routed_ad: PathBuf,
    /// The launcher program itself, when known: a launcher HTCondor transferred into the
    /// sandbox is one of the capsule's files, and the node's launcher has the node's agent
    /// beside it.
    pub exe: Option<PathBuf>,
    /// The Chirp configuration the starter wrote (its `_CONDOR_CHIRP_CONFIG`), when it says.
    pub chirp_config: Option<PathBuf>,
}

/// Make the data disk from what HTCondor transferred, boot, extract the results into the
/// sandbox and say how to exit. Quiet on success: the job's stdout and stderr go to `out`
/// and `err` (which must be this process's stdout and stderr: the job's output is also written
/// to those as it runs); the launcher's own diagnostics go to `report`, one line each. The job's
/// soft-kill signals (as `interruption` names them) are caught from here on and forwarded to
/// the job in the guest. With `checkpoints`, the whole VM is checkpointed as they say, and
/// restored from the sandbox's checkpoint instead of booted (see [`checkpoint`]).
///
/// # Errors
/// [`SlotError`] when the routed ad describes no VM or no data disk: nothing was started.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    ad: &ClassAd,
    opts: &RunOptions,
    slot: &Slot,
    interruption: &Interruption,
    checkpoints: Option<&Policy>,
    out: &mut dyn Write,
    err: &mut dyn Write,
    report: &mut dyn FnMut(&str),
) -> Result<LauncherExit, SlotError> {
    let mut forwarder = Forwarder::install(interruption);
    let spec = VmSpec::from_ad(ad)?;
    let data_disk =
        string_attr(ad, routed::ATTR_DATA_DISK).ok_or_else(|| SlotError::NoDataDisk {
            routed_ad: slot.routed_ad.display().to_string(),
        })?;
    let files = capsule_files(ad, &spec, slot, &data_disk, interruption)?;
    // The agent installed beside the node's launcher, for capsules that ask for it.
    let node_agent = slot
        .exe
        .as_deref()
        .and_then(Path::parent)
        .map(|dir| dir.join(capsule_manifest::CAPSULE_INIT));
    let boot = Boot {
        ad,
        opts,
        sandbox: &slot.sandbox,
        node_agent: node_agent.as_deref(),
        resume: sandbox::Resume {
            capsule_files: &files.all,
            checkpoint_exit: job_checkpoint_exit(ad, interruption),
        },
        data_disk: &data_disk,
    };
    // The launcher's stdout and stderr are the job's: written as the job writes them.
    let mut live = LiveOutput::std_streams();
    let booted = match checkpoints {
        None => boot.once(&mut live, &mut forwarder, None),
        Some(policy) => {
            match run_checkpointed(
                &boot,
                policy,
                slot,
                &files,
                &mut live,
                &mut forwarder,
                report,
            ) {
                Some(run) => run,
                None => return Ok(LauncherExit::Code(policy.exit_code)),
            }
        }
    };
    Ok(match booted {
        Ok(()) => {
            let exit = finish_in_sandbox(
                &slot.sandbox,
                slot.chirp_config.as_deref(),
                &data_disk,
                &files,
                &mut live,
                out,
                err,
            );
            // The job ended or checkpointed by itself: a VM checkpoint is stale now.
            let own_checkpoint = extract::is_checkpoint(&exit, files.checkpoint_exit);
            if own_checkpoint {
                checkpoint::Session::forget(&slot.sandbox);
            } else {
                let _ = std::fs::remove_file(slot.sandbox.join(checkpoint::CHECKPOINT_FILE));
            }
            match (checkpoints, &exit) {
                // HTCondor would take it for a checkpoint and start the job again.
                (Some(policy), LauncherExit::Code(code))
                    if *code == policy.exit_code && !own_checkpoint =>
                {
                    LauncherExit::Failed(format!(
                        "the job exited with {code}, the exit code that says \"checkpointed\" for a job with VM checkpoints (+VMCapsuleCheckpoint): HTCondor would start it again; give the job a checkpoint_exit_code of its own, or turn its VM checkpoints off"
                    ))
                }
                _ => exit,
            }
        }
        Err(why) => {
            if let Ok(console) = std::fs::read_to_string(slot.sandbox.join(CONSOLE_LOG)) {
                let tail: Vec<&str> = console.lines().rev().take(CONSOLE_TAIL_LINES).collect();
                for line in tail.iter().rev() {
                    report(&format!("console: {line}"));
                }
            }
            report(&why);
            // The capsule's files go all the same, so they are not taken for outputs.
            let all = CapsuleFiles {
                checkpoint_exit: None,
                ..files
            };
            let _ = finish_in_sandbox(
                &slot.sandbox,
                slot.chirp_config.as_deref(),
                &data_disk,
                &all,
                &mut LiveOutput::off(),
                &mut std::io::sink(),
                &mut std::io::sink(),
            );
            LauncherExit::Failed(why)
        }
    })
}

/// Run the guest with whole-VM checkpoints as `policy` says: restored from the sandbox's
/// checkpoint when there is one that fits, else booted (a checkpoint that does not fit is
/// reported and dropped). `None`: a checkpoint was saved and the launcher exits with the
/// checkpoint code; else how the guest's run ended.
fn run_checkpointed(
    boot: &Boot<'_>,
    policy: &Policy,
    slot: &Slot,
    files: &CapsuleFiles,
    live: &mut LiveOutput,
    forwarder: &mut Forwarder,
    report: &mut dyn FnMut(&str),
) -> Option<Result<(), String>> {
    let qemu_version = crate::probe::qemu_version(&boot.opts.qemu).unwrap_or_default();
    let chirp = slot.chirp_config.as_deref();
    let mut restore = true;
    loop {
        let session = RefCell::new(Session::new(
            policy,
            &slot.sandbox,
            qemu_version.clone(),
            restore,
        ));
        let attempt = boot.once(live, forwarder, Some(&session));
        let mut session = session.into_inner();
        for note in session.take_notes() {
            report(&note);
        }
        let failed = match (&attempt, session.restore_failure()) {
            (_, Some(why)) => Some(why.to_owned()),
            (Err(why), None) if session.restoring() => Some(why.clone()),
            _ => None,
        };
        if let Some(why) = failed {
            // The fresh start's streams replace what the checkpoint's runs wrote.
            if let Some((stdout, stderr)) = session.restored_streams() {
                live.resume(stdout, stderr);
            }
            report(&format!(
                "the VM checkpoint was not restored ({why}); the job starts again from the beginning"
            ));
            checkpoint::publish(&slot.sandbox, chirp, checkpoint::ATTR_FALLBACK, &why);
            let _ = std::fs::remove_file(slot.sandbox.join(checkpoint::CHECKPOINT_FILE));
            restore = false;
            continue;
        }
        if !session.saved() {
            return Some(attempt);
        }
        match session.complete(live.delivered()) {
            Ok(_) => {
                checkpoint::publish(&slot.sandbox, chirp, checkpoint::ATTR_QEMU, &qemu_version);
                for name in files
                    .made
                    .iter()
                    .filter(|n| *n != checkpoint::CHECKPOINT_FILE)
                {
                    let _ = std::fs::remove_file(slot.sandbox.join(name));
                }
                return None;
            }
            // The guest is gone: go on from the last checkpoint there is, if any.
            Err(why) => report(&format!("the VM checkpoint could not be written: {why}")),
        }
    }
}

/// What one start of the guest needs.
struct Boot<'a> {
    ad: &'a ClassAd,
    opts: &'a RunOptions,
    sandbox: &'a Path,
    node_agent: Option<&'a Path>,
    resume: sandbox::Resume<'a>,
    data_disk: &'a str,
}

impl Boot<'_> {
    /// Make the data disk and run the guest once (restoring it when `session` has a
    /// checkpoint for it); the job's output is written live meanwhile and its signals
    /// forwarded (or answered by a checkpoint).
    fn once(
        &self,
        live: &mut LiveOutput,
        forwarder: &mut Forwarder,
        session: Option<&RefCell<Session<'_>>>,
    ) -> Result<(), String> {
        // The data disk is made here, from what HTCondor transferred (inputs and URLs
        // included) and what the job left here before.
        sandbox::make_data_disk_with(self.sandbox, self.ad, self.node_agent, self.resume)
            .map_err(|e| format!("cannot make the data disk in the sandbox: {e}"))?;
        if let Some(bytes) = disk_size(&self.sandbox.join(self.data_disk)) {
            live.cap(bytes);
        }
        let mut channel =
            ControlChannel::new().map_err(|e| format!("cannot make the control channel: {e}"))?;
        let mut monitor = match session {
            Some(_) => {
                Some(Monitor::new().map_err(|e| format!("cannot make QEMU's monitor: {e}"))?)
            }
            None => None,
        };
        let mut resumed = false;
        let mut tick = |c: &mut ControlChannel, m: Option<&mut Monitor>| {
            if let (Some(s), false) = (session, resumed) {
                // A restored guest's output goes on where its checkpoint's left off.
                if let Some((stdout, stderr)) = s.borrow().restored_streams() {
                    live.resume(stdout, stderr);
                }
                resumed = true;
            }
            // The job's output as it comes; not read while a slow pipe holds some back.
            if live.wants_more() {
                live.deliver(c.poll());
            }
            if let (Some(s), Some(m)) = (session, m) {
                let mut took_signal = false;
                let pending = forwarder.pending();
                if s.borrow_mut().tick(m, c, live, pending, &mut took_signal) {
                    if took_signal {
                        forwarder.discard();
                    }
                    return true;
                }
            }
            forwarder.tick(c)
        };
        let mut before_start = |machine: &Machine<'_>| {
            session.map_or(Ok(None), |s| s.borrow_mut().before_start(machine))
        };
        let attached = Attached {
            channel: &mut channel,
            monitor: monitor.as_mut(),
            tick: &mut tick,
            // Without checkpoints the runner need not describe the machine at all.
            restore: match session {
                Some(_) => Some(&mut before_start),
                None => None,
            },
        };
        run_with(self.ad, self.opts, &mut |_| {}, Some(attached))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The data disk's size: what no stream the guest returns can exceed.
fn disk_size(path: &Path) -> Option<u64> {
    let disk = capsule_disk::DataDisk::open(path, capsule_disk::Access::ReadOnly).ok()?;
    Some(disk.info().ok()?.container.virtual_size)
}

/// The capsule's own files in the sandbox: never outputs, removed after the run (but those
/// HTCondor transferred, after a checkpoint exit).
fn capsule_files(
    ad: &ClassAd,
    spec: &VmSpec,
    slot: &Slot,
    data_disk: &str,
    interruption: &Interruption,
) -> Result<CapsuleFiles, SlotError> {
    let mut files = spec.transfer.clone();
    files.push(slot.routed_ad.display().to_string());
    files.push(CONSOLE_LOG.to_owned());
    files.extend(routed::VANILLA_FILES.iter().map(|f| (*f).to_owned()));
    files.extend(string_attr(ad, routed::ATTR_AGENT));
    // The launcher itself, when HTCondor transferred it into the sandbox (not the node's own,
    // VM_CAPSULE_NODE_LAUNCHER, whose name an output may have).
    if let Some(exe) = &slot.exe {
        let here = std::fs::canonicalize(&slot.sandbox).ok();
        if exe.parent().map(Path::to_owned) == here {
            files.extend(exe.file_name().map(|n| n.to_string_lossy().into_owned()));
        }
    }
    files.push(checkpoint::CHECKPOINT_FILE.to_owned());
    let mut made = vec![
        data_disk.to_owned(),
        CONSOLE_LOG.to_owned(),
        checkpoint::PARTIAL_FILE.to_owned(),
    ];
    made.extend(
        vm_capsule_core::node_image::from_routed_ad(ad)?
            .into_iter()
            .map(|b| b.overlay),
    );
    files.extend(made.iter().cloned());
    files.sort();
    files.dedup();
    Ok(CapsuleFiles {
        all: files,
        made,
        checkpoint_exit: job_checkpoint_exit(ad, interruption),
    })
}

/// The job's own checkpoint exit. With whole-VM checkpoints the starter's
/// `SuccessCheckpointExitCode` is the launcher's (85 when the job has none): the capsule ad
/// then says the job's own code, if it has one, so that a plain job's own exit 85 is an exit.
fn job_checkpoint_exit(ad: &ClassAd, interruption: &Interruption) -> Option<CheckpointExit> {
    use classad::eval::evaluate_attr;
    if evaluate_attr(ad, checkpoint::ATTR) != classad::Value::Bool(true) {
        return interruption.checkpoint_exit;
    }
    match evaluate_attr(ad, routed::ATTR_JOB_CHECKPOINT_CODE) {
        classad::Value::Integer(code) => u8::try_from(code).ok().map(CheckpointExit::Code),
        _ => None,
    }
}
