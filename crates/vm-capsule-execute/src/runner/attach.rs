//! What a caller attaches to one run of the guest: the control channel, QEMU's monitor, and
//! a hook that may hand QEMU a checkpoint to load instead of booting; and the description of
//! the machine a checkpoint must match.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use classad::ClassAd;

use super::{ControlChannel, Monitor, RunError, VmSpec};

/// A control channel attached to the guest for one run, and what to do with it while the
/// guest runs.
#[allow(missing_debug_implementations)]
pub struct Attached<'a> {
    /// The channel; QEMU gets its guest end.
    pub channel: &'a mut ControlChannel,
    /// QEMU's monitor, when the caller drives QEMU itself (checkpoints); QEMU gets its end.
    pub monitor: Option<&'a mut Monitor>,
    /// Called every few ms while QEMU runs; true: stop the guest (QEMU quits).
    pub tick: &'a mut dyn FnMut(&mut ControlChannel, Option<&mut Monitor>) -> bool,
    /// Called once the machine is known, right before QEMU starts: a migration stream for
    /// QEMU to load instead of booting (`None`: boot), or why this start must not go on
    /// ([`RunError::Restore`]).
    pub restore: Option<RestoreHook<'a>>,
}

/// See [`Attached::restore`].
pub type RestoreHook<'a> = &'a mut dyn FnMut(&Machine<'_>) -> Result<Option<OwnedFd>, String>;

/// A disk the guest writes: saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritableDisk {
    /// Its file name in the sandbox.
    pub file: String,
    /// Its container format (`raw`, `qcow2`, `vmdk`).
    pub format: String,
    /// The node image it overlays, the only file it may name.
    pub base: Option<PathBuf>,
}

impl Attached<'_> {
    /// QEMU has started with its ends: close ours of them.
    pub(super) fn started(&mut self) {
        self.channel.started();
        if let Some(monitor) = self.monitor.as_mut() {
            monitor.started();
        }
    }
}

/// The machine about to start, as a checkpoint must match it.
#[derive(Debug)]
pub struct Machine<'a> {
    /// What identifies it (hex SHA-256 of QEMU's arguments, the sandbox's path left out,
    /// and of the files it boots from).
    pub identity: String,
    /// The directory it runs in.
    pub sandbox: &'a Path,
    /// Its writable disks.
    pub writable: Vec<WritableDisk>,
    /// The guest's memory, MiB.
    pub memory_mib: u64,
    /// Whether host paths are shared (QEMU cannot save a guest that mounted them).
    pub shares_host_paths: bool,
    /// Whether a disk's writes go to QEMU's own temporary snapshot (not saved with the VM).
    pub snapshot_disks: bool,
}

/// What [`Machine`] is made from, before the hook needs it.
pub(super) struct MachineParts<'a> {
    /// QEMU's command for the spec as it is (the kernel by its sandbox name).
    pub(super) base: std::process::Command,
    /// A PVH boot; a network.
    pub(super) flags: [bool; 2],
    pub(super) sandbox: &'a Path,
    pub(super) spec: &'a VmSpec,
    pub(super) overlays: &'a [String],
    pub(super) ad: &'a ClassAd,
    pub(super) shares_host_paths: bool,
}

impl MachineParts<'_> {
    /// The machine.
    pub(super) fn machine(&self) -> Result<Machine<'_>, RunError> {
        Ok(Machine {
            identity: identity(
                &self.base,
                &self.flags,
                self.sandbox,
                self.spec,
                self.overlays,
                self.ad,
            ),
            sandbox: self.sandbox,
            writable: writable_disks(self.spec, self.ad)?,
            memory_mib: self.spec.memory_mib,
            shares_host_paths: self.shares_host_paths,
            snapshot_disks: self.spec.drives.iter().any(|d| d.snapshot),
        })
    }
}

/// Give QEMU (`cmd`) the attached channel and monitor, and the checkpoint stream the restore
/// hook hands over for `machine` (returned: it stays open until QEMU has started).
pub(super) fn hand_over<'m>(
    a: &mut Attached<'_>,
    cmd: &mut std::process::Command,
    machine: impl FnOnce() -> Result<Machine<'m>, RunError>,
) -> Result<Option<OwnedFd>, RunError> {
    let incoming = match a.restore.as_mut() {
        Some(restore) => restore(&machine()?).map_err(RunError::Restore)?,
        None => None,
    };
    let failed = |what: &str| {
        let what = format!("cannot hand QEMU the {what}");
        move |source| RunError::Io { what, source }
    };
    cmd.args(ControlChannel::qemu_args(
        a.channel.inherit().map_err(failed("control channel"))?,
    ));
    if let Some(monitor) = a.monitor.as_mut() {
        cmd.args(Monitor::qemu_args(
            monitor.inherit().map_err(failed("monitor"))?,
        ));
    }
    if let Some(stream) = &incoming {
        rustix::io::fcntl_setfd(stream, rustix::io::FdFlags::empty())
            .map_err(|e| failed("checkpoint")(e.into()))?;
        cmd.arg("-incoming")
            .arg(format!("fd:{}", stream.as_raw_fd()));
    }
    Ok(incoming)
}

/// What identifies the machine `cmd` starts in `sandbox` (see [`Machine::identity`]): QEMU's
/// arguments for the spec and `flags` (a PVH boot, a network), with the sandbox's path left out (another node's differs), the files it
/// boots from by size and, when small, content, and the node images by their recorded sums.
fn identity(
    cmd: &std::process::Command,
    flags: &[bool],
    sandbox: &Path,
    spec: &VmSpec,
    overlays: &[String],
    ad: &ClassAd,
) -> String {
    use sha2::{Digest, Sha256};
    /// Files up to this size are hashed; larger ones (OS disks) are known by their size.
    const HASHED: u64 = 64 << 20;
    let mut h = Sha256::new();
    let place = sandbox.display().to_string();
    h.update(cmd.get_program().as_encoded_bytes());
    h.update(flags.iter().map(|f| u8::from(*f)).collect::<Vec<u8>>());
    for arg in cmd.get_args() {
        h.update([0]);
        h.update(arg.to_string_lossy().replace(&place, "@").as_bytes());
    }
    let mut files: Vec<&str> = spec
        .drives
        .iter()
        .filter(|d| !d.writable && !overlays.contains(&d.file))
        .map(|d| d.file.as_str())
        .collect();
    if let Some(boot) = &spec.boot {
        files.push(&boot.kernel);
        files.extend(boot.initrd.as_deref());
    }
    for name in files {
        h.update([1]);
        h.update(name.as_bytes());
        let path = sandbox.join(name);
        let len = fs::metadata(&path).map_or(0, |m| m.len());
        h.update(len.to_le_bytes());
        if len <= HASHED {
            // Streamed: an initrd of tens of MiB is not held in memory for this.
            let mut file_hash = Sha256::new();
            if let Ok(mut f) = fs::File::open(&path) {
                if std::io::copy(&mut f, &mut file_hash).is_ok() {
                    h.update(file_hash.finalize());
                }
            }
        }
    }
    if let Ok(bases) = vm_capsule_core::node_image::from_routed_ad(ad) {
        for b in bases {
            h.update([2]);
            h.update(b.sha256.as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The writable disks, each with the node image it overlays (if any).
fn writable_disks(spec: &VmSpec, ad: &ClassAd) -> Result<Vec<WritableDisk>, RunError> {
    let bases = vm_capsule_core::node_image::from_routed_ad(ad)?;
    Ok(spec
        .drives
        .iter()
        .filter(|d| d.writable || bases.iter().any(|b| b.overlay == d.file))
        .map(|d| WritableDisk {
            file: d.file.clone(),
            format: d.format.clone(),
            base: bases
                .iter()
                .find(|b| b.overlay == d.file)
                .map(|b| b.path.clone()),
        })
        .collect())
}
