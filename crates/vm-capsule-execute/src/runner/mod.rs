//! A local execute node: run a routed VM-universe job with QEMU the way HTCondor's vm-gahp
//! would run it with libvirt, so templates and hooks can be tested without a pool.
//!
//! The disks the ad transfers are staged in a private sandbox (only the writable ones copied,
//! see [`crate::run_files`]) or used in place, booted
//! following the ad (`JobVMType`, `VMPARAM_vm_Disk` devices and formats, `JobVMMemory`,
//! `JobVM_VCPUS`, no network; VMware ads: the `.vmx`'s disks), and the writable disks are
//! copied back into the routed job's `Iwd` as HTCondor's output transfer would. Success means
//! the guest powered itself off; what the job did is for finalize to read from the data disk.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use classad::ClassAd;
use thiserror::Error;

mod attach;
mod control;
mod monitor;
mod pvh;
mod qemu;
mod socketpair;
mod spec;
mod wait;

use attach::{hand_over, MachineParts};
pub use attach::{Attached, Machine, RestoreHook, WritableDisk};
pub use control::ControlChannel;
pub use monitor::{Monitor, MonitorError};
pub use pvh::{uncompressed_kernel, PvhKernel};
pub use qemu::{qemu_command, Hardening, QEMU};
pub use spec::{Drive, VmSpec};
use wait::Waited;

/// The guest's serial console, written in the sandbox beside the disks.
pub const CONSOLE_LOG: &str = "console.log";

/// How QEMU accelerates the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere, slower.
    Tcg,
    /// Hardware virtualization.
    Kvm,
    /// KVM when the host really has it (a `kvm_intel`/`kvm_amd` module and CPU support),
    /// else TCG. `/dev/kvm` alone is not enough: paravirtual layers provide one that hangs
    /// guests.
    Auto,
}

impl Accel {
    /// The accelerator to use on this host.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto => {
                // The job's user must also be allowed to open /dev/kvm.
                if crate::qemu::kvm_usable_here() {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            other => other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            _ => "tcg",
        }
    }
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Kill the guest after this long (none: wait as long as it runs).
    pub timeout: Option<Duration>,
    /// Accelerator.
    pub accel: Accel,
    /// Use the disks in the routed job's `Iwd` instead of copying them to a sandbox.
    pub in_place: bool,
    /// Where to make the sandbox when there is none and the run is not in place (the
    /// caller's temp dir, say).
    pub sandbox_parent: PathBuf,
    /// Use this existing directory as the sandbox instead of making one (the caller then
    /// knows it, to remove or keep it).
    pub sandbox: Option<PathBuf>,
    /// QEMU to run (as [`crate::qemu::find_qemu`] finds it).
    pub qemu: PathBuf,
    /// Run the disks found in this directory instead of the ad's `Iwd` (the vanilla
    /// flavour's launcher: HTCondor put them in its sandbox, the working directory).
    pub workdir: Option<PathBuf>,
    /// Set by another thread to stop the guest early (`template check`, once the console
    /// says how the boot ends).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// The TCG translation cache, MiB (`VM_CAPSULE_TCG_TB_MIB`; 0: QEMU's own default).
    pub tb_size_mib: u64,
    /// The node's read-only host paths (`VM_CAPSULE_HOST_PATHS`), checked at each start.
    pub host_paths: Vec<String>,
    /// Give the guest a NIC behind user-mode NAT through this `passt` (none: no NIC at all).
    pub network: Option<PathBuf>,
}

/// Why a run failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// The ad is not a VM job we can run.
    #[error("routed ad: {0}")]
    BadAd(String),
    /// A file could not be staged or returned.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The `Iwd` is another user's.
    #[error("the routed ad's Iwd {iwd} belongs to {owner}, not to the user running this; a routed ad and its job dir are the job owner's to edit, so only that user runs it: as root, pass --as-owner (or runuser -u {owner} -- vm-capsule run ...)")]
    ForeignIwd {
        /// The `Iwd`.
        iwd: PathBuf,
        /// Its owner.
        owner: String,
    },
    /// The `Iwd` is never run.
    #[error("the routed ad's Iwd {iwd} {why}: refusing to run it (a routed ad is its job owner's to edit)")]
    UnsafeIwd {
        /// The `Iwd`.
        iwd: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A file of the `Iwd` is refused or unreadable.
    #[error(transparent)]
    File(#[from] crate::run_files::FileError),
    /// A file the ad names is not where it should be.
    #[error("{file} (named by the routed ad's {attr}) is not in {dir}; hint: the cleanup hook removes a job's scratch dir after finalize, so translate the job again for a fresh capsule")]
    MissingInput {
        /// The file.
        file: String,
        /// The attribute naming it.
        attr: &'static str,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// QEMU was not found.
    #[error(transparent)]
    QemuNotFound(#[from] crate::qemu::QemuNotFound),
    /// The firmware found nothing to boot.
    #[error("no bootable device: the firmware found no boot loader on {disk} and the ad names no kernel to boot directly (VMCapsuleKernel); console log: {console}; hint: give the template's OS disk a boot loader, or boot a kernel directly (xen_kernel in the classad template, or vmlinuz + initrd.img in the template dir)")]
    NoBootableDevice {
        /// The first disk.
        disk: String,
        /// The console log file.
        console: PathBuf,
    },
    /// QEMU is missing.
    #[error("cannot start {qemu}: {source}; install it (Debian: apt-get install qemu-system-x86)")]
    NoQemu {
        /// The program.
        qemu: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The guest did not power off in time.
    #[error("the VM did not power off within {secs} s and was killed; console log: {console}")]
    Timeout {
        /// The limit.
        secs: u64,
        /// The console log file.
        console: PathBuf,
    },
    /// Stopped by the launcher: the guest did not power off in the time HTCondor gives an
    /// interrupted job.
    #[error("the VM was powered off: the job did not end within its vacate time after the soft-kill signal; console log: {console}")]
    Stopped {
        /// The console log file.
        console: PathBuf,
    },
    /// Stopped on request (see [`RunOptions::cancel`]).
    #[error("the VM was stopped early; console log: {console}")]
    Cancelled {
        /// The console log file.
        console: PathBuf,
    },
    /// A host path the job needs cannot be shared.
    #[error(transparent)]
    HostPath(#[from] crate::host_paths::MissingHostPath),
    /// An OS disk staged on this node is missing or is not the job's.
    #[error(transparent)]
    NodeImage(#[from] vm_capsule_core::node_image::NodeImageError),
    /// A checkpoint was not restored: nothing was started.
    #[error("the checkpoint cannot be restored: {0}")]
    Restore(String),
    /// The guest kernel panicked, or QEMU failed.
    #[error("the VM crashed ({why}); console log: {console}")]
    Crashed {
        /// What was seen.
        why: String,
        /// The console log file.
        console: PathBuf,
    },
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The sandbox the VM ran in.
    pub sandbox: PathBuf,
    /// The guest's console output.
    pub console: PathBuf,
    /// From QEMU start to guest poweroff.
    pub elapsed: Duration,
    /// Writable disks copied back into `Iwd`.
    pub returned: Vec<String>,
}

/// Whether SeaBIOS said it found nothing to boot (it then retries forever).
fn firmware_gave_up(console: &Path) -> bool {
    use std::io::Read;
    // The message comes before any kernel output: the first 64 KiB hold it.
    let mut head = Vec::new();
    fs::File::open(console)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .is_ok()
        && head
            .windows(b"No bootable device".len())
            .any(|w| w == b"No bootable device")
}

/// The routed ad's `Iwd`, open and judged: only the invoking user's own (`None` for the
/// vanilla flavour's slot sandbox, which HTCondor made for us).
fn open_iwd(ad: &ClassAd, opts: &RunOptions) -> Result<Option<crate::run_files::Iwd>, RunError> {
    use crate::run_files::{Iwd, Judgement};
    if opts.workdir.is_some() {
        return Ok(None);
    }
    let path = PathBuf::from(
        classad::eval::string_attr(ad, "Iwd")
            .ok_or_else(|| RunError::BadAd("Iwd is missing".to_owned()))?,
    );
    let iwd = match Iwd::open(&path) {
        Ok(iwd) => iwd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let first = classad::eval::string_attr(ad, "TransferInput")
                .and_then(|t| t.split(',').next().map(|f| f.trim().to_owned()))
                .unwrap_or_default();
            return Err(RunError::MissingInput {
                file: first,
                attr: "TransferInput",
                dir: path,
            });
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(RunError::UnsafeIwd {
                iwd: path,
                why: format!("cannot be reached ({e}): it is another user's; only its job owner runs it (as root: --as-owner)"),
            })
        }
        Err(e) => {
            return Err(RunError::UnsafeIwd {
                iwd: path,
                why: e.to_string(),
            })
        }
    };
    match iwd.judge() {
        Judgement::Own => Ok(Some(iwd)),
        Judgement::Never(why) => Err(RunError::UnsafeIwd { iwd: path, why }),
        Judgement::Foreign { owner, .. } => Err(RunError::ForeignIwd { iwd: path, owner }),
    }
}

/// The directory the VM runs in: the ad's `Iwd` itself (in place), or a sandbox (the
/// caller's, or a new one) holding copies of the files the ad transfers. Overlays over OS
/// images staged on this node are not taken from the `Iwd`: they are made here.
fn stage(
    spec: &VmSpec,
    iwd: Option<&crate::run_files::Iwd>,
    overlays: &[String],
    opts: &RunOptions,
) -> Result<PathBuf, RunError> {
    let Some(iwd) = iwd.filter(|_| !opts.in_place) else {
        return Ok(spec.iwd.clone());
    };
    if let Some(file) = spec
        .transfer
        .iter()
        .find(|n| !overlays.contains(n) && !iwd.has(n))
    {
        return Err(RunError::MissingInput {
            file: file.clone(),
            attr: "TransferInput",
            dir: spec.iwd.clone(),
        });
    }
    let io_err = |what: String| move |source| RunError::Io { what, source };
    let dir = match &opts.sandbox {
        Some(dir) => dir.clone(),
        None => {
            let parent = &opts.sandbox_parent;
            tempfile::Builder::new()
                .prefix("vm-capsule-run.")
                .tempdir_in(parent)
                .map_err(io_err(format!(
                    "cannot create a sandbox in {}",
                    parent.display()
                )))?
                .keep()
        }
    };
    for name in spec.transfer.iter().filter(|n| !overlays.contains(n)) {
        // Only what the guest writes is copied; read-only files are linked.
        let writable = spec.drives.iter().any(|d| d.writable && &d.file == name);
        iwd.stage(&dir, name, writable)?;
    }
    Ok(dir)
}

/// Whether the guest ended the way a job's VM should (powered off by itself); else why not.
fn check_ended(
    waited: Waited,
    spec: &VmSpec,
    console: &Path,
    timeout: Option<Duration>,
) -> Result<(), RunError> {
    let console = console.to_owned();
    let no_boot = || RunError::NoBootableDevice {
        disk: spec
            .drives
            .first()
            .map(|d| d.file.clone())
            .unwrap_or_default(),
        console: console.clone(),
    };
    let (status, stderr) = match waited {
        Waited::Exited(status, stderr) => (status, stderr),
        Waited::GaveUp => return Err(no_boot()),
        Waited::Stopped => return Err(RunError::Stopped { console }),
        Waited::TimedOut if firmware_gave_up(&console) => return Err(no_boot()),
        Waited::TimedOut => {
            return Err(RunError::Timeout {
                secs: timeout.map_or(0, |t| t.as_secs()),
                console,
            })
        }
    };
    if !status.success() {
        // Our own fw_cfg name draws a QEMU warning; it says nothing about the crash.
        let stderr: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("sercon-port"))
            .collect();
        return Err(RunError::Crashed {
            why: format!("QEMU exited with {status}: {}", stderr.join(" ").trim()),
            console,
        });
    }
    let log = fs::read_to_string(&console).unwrap_or_default();
    if let Some(line) = log.lines().find(|l| l.contains("Kernel panic")) {
        return Err(RunError::Crashed {
            why: line.trim().to_owned(),
            console,
        });
    }
    Ok(())
}

/// Run the VM of `ad`.
///
/// # Errors
/// [`RunError`] when staging fails, QEMU cannot start, the guest crashes or does not power
/// off in time. On failure nothing is copied back into `Iwd`.
pub fn run(
    ad: &ClassAd,
    opts: &RunOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<RunReport, RunError> {
    run_with(ad, opts, progress, None)
}

/// What is booted, for the progress report.
fn boot_line(spec: &VmSpec, accel: Accel, pvh: bool) -> String {
    format!(
        "booting {} disk(s), {} MiB, {} CPU(s), accel {}{}",
        spec.drives.len(),
        spec.memory_mib,
        spec.vcpus,
        accel.name(),
        if pvh {
            ", kernel uncompressed on the host (PVH entry)"
        } else {
            ""
        }
    )
}

/// [`run`], with a control channel to the guest when `attached` is given.
///
/// # Errors
/// As [`run`]; [`RunError::Stopped`] when `attached`'s tick stopped the guest.
pub fn run_with(
    ad: &ClassAd,
    opts: &RunOptions,
    progress: &mut dyn FnMut(&str),
    mut attached: Option<Attached<'_>>,
) -> Result<RunReport, RunError> {
    let Staged {
        iwd,
        spec,
        overlays,
        sandbox,
    } = staged(ad, opts)?;
    let console = sandbox.join(CONSOLE_LOG);
    let accel = opts.accel.resolve();
    let qemu = &opts.qemu;
    let (pvh, hardening) = boot_pieces(&spec, &sandbox, accel, opts);
    let mut booted = spec.clone();
    if let (Some(boot), Some(kernel)) = (booted.boot.as_mut(), &pvh) {
        // An absolute path: qemu_command's join with the sandbox keeps it.
        boot.kernel = kernel.path().display().to_string();
    }
    let mut cmd = qemu_command(qemu, &booted, &sandbox, &console, accel, hardening);
    // Checked at each start, not followed: a path may have changed since the probe looked.
    let needed = vm_capsule_core::host_paths::wanted(ad).map_err(RunError::BadAd)?;
    let shares = crate::host_paths::shares(&opts.host_paths, &needed)?;
    cmd.args(crate::host_paths::qemu_args(&shares));
    // Started before the control channel's end becomes inheritable, so passt gets only its own.
    let mut passt = opts
        .network
        .as_deref()
        .map(|passt| attach_network(passt, &mut cmd))
        .transpose()?;
    let parts = MachineParts {
        base: qemu_command(qemu, &spec, &sandbox, &console, accel, hardening),
        flags: [pvh.is_some(), opts.network.is_some()],
        sandbox: &sandbox,
        spec: &spec,
        overlays: &overlays,
        ad,
        shares_host_paths: !shares.host_paths.is_empty(),
    };
    let incoming = match attached.as_mut() {
        Some(a) => hand_over(a, &mut cmd, || parts.machine())?,
        None => None,
    };
    progress(&boot_line(&spec, accel, pvh.is_some()));
    // A console left by an earlier run would look like this guest's output.
    let _ = fs::remove_file(&console);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::NoQemu {
            qemu: qemu.display().to_string(),
            source,
        })?;
    if let Some(a) = attached.as_mut() {
        a.started();
    }
    // QEMU has its copy of the stream's read end.
    drop(incoming);
    if let Some(p) = passt.as_mut() {
        p.started();
    }
    // SeaBIOS retries forever when nothing boots: stop as soon as it says so.
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    };
    // QEMU has read the kernel once the guest writes to the console: free its memory then.
    let pvh = std::cell::RefCell::new(pvh);
    let gave_up = || {
        if pvh.borrow().is_some() && fs::metadata(&console).is_ok_and(|m| m.len() > 0) {
            pvh.borrow_mut().take();
        }
        cancelled() || firmware_gave_up(&console)
    };
    let mut tick = || {
        attached
            .as_mut()
            .is_some_and(|a| (a.tick)(a.channel, a.monitor.as_deref_mut()))
    };
    let waited = wait::wait(&mut child, opts.timeout, progress, &gave_up, &mut tick);
    let waited = waited.map_err(|source| RunError::Io {
        what: "waiting for QEMU".to_owned(),
        source,
    })?;
    let elapsed = start.elapsed();
    if matches!(waited, Waited::GaveUp) && cancelled() {
        return Err(RunError::Cancelled { console });
    }
    check_ended(waited, &spec, &console, opts.timeout)?;
    let returned = match iwd.as_ref().filter(|_| !opts.in_place) {
        Some(iwd) => give_back(iwd, &spec, &sandbox)?,
        None => Vec::new(),
    };
    Ok(RunReport {
        sandbox,
        console,
        elapsed,
        returned,
    })
}

/// The sandbox a run boots in, and what it was made from.
struct Staged {
    iwd: Option<crate::run_files::Iwd>,
    spec: VmSpec,
    /// The overlays over node images, made here.
    overlays: Vec<String>,
    sandbox: PathBuf,
}

/// Judge the `Iwd` (before anything in it is read, a VMware ad's `.vmx` included), stage its
/// files in the sandbox and make the overlays over node images there.
fn staged(ad: &ClassAd, opts: &RunOptions) -> Result<Staged, RunError> {
    let iwd = open_iwd(ad, opts)?;
    let mut spec = VmSpec::from_ad(ad)?;
    if let Some(dir) = &opts.workdir {
        spec.iwd.clone_from(dir);
    }
    let overlays: Vec<String> = vm_capsule_core::node_image::from_routed_ad(ad)?
        .into_iter()
        .map(|b| b.overlay)
        .collect();
    let sandbox = stage(&spec, iwd.as_ref(), &overlays, opts)?;
    vm_capsule_core::node_image::prepare(ad, &sandbox)?;
    Ok(Staged {
        iwd,
        spec,
        overlays,
        sandbox,
    })
}

/// The kernel to boot through its PVH entry, when under TCG, and what QEMU's sandboxing
/// supports. Under TCG the kernel's own decompressor is emulated: it is decompressed here
/// instead (see `pvh`); KVM runs the decompressor natively. QEMU's seccomp support is probed
/// meanwhile (a process start of its own).
fn boot_pieces(
    spec: &VmSpec,
    sandbox: &Path,
    accel: Accel,
    opts: &RunOptions,
) -> (Option<PvhKernel>, Hardening) {
    let qemu = &opts.qemu;
    let (pvh, hardening) = std::thread::scope(|scope| {
        let probe = scope.spawn(|| Hardening::probe(qemu, opts.tb_size_mib));
        let pvh = match (&spec.boot, accel) {
            (Some(boot), Accel::Tcg) => uncompressed_kernel(&sandbox.join(&boot.kernel)),
            _ => None,
        };
        (pvh, probe.join())
    });
    // A probe that panicked says nothing: no seccomp.
    let hardening = hardening.unwrap_or(Hardening {
        seccomp: false,
        tb_size_mib: opts.tb_size_mib,
    });
    (pvh, hardening)
}

/// Start `passt` and give QEMU (`cmd`) a NIC behind it.
fn attach_network(
    passt: &Path,
    cmd: &mut std::process::Command,
) -> Result<crate::network::Passt, RunError> {
    let p = crate::network::Passt::start(passt).map_err(|source| RunError::Io {
        what: "cannot start the network (VM_CAPSULE_NETWORK = nat)".to_owned(),
        source,
    })?;
    let fd = p.inherit().map_err(|source| RunError::Io {
        what: "cannot hand QEMU the network".to_owned(),
        source,
    })?;
    cmd.args(crate::network::Passt::qemu_args(fd));
    Ok(p)
}

/// Output transfer: the writable disks come back (the vm-gahp touches their mtime).
fn give_back(
    iwd: &crate::run_files::Iwd,
    spec: &VmSpec,
    sandbox: &Path,
) -> Result<Vec<String>, RunError> {
    let mut returned = Vec::new();
    for d in spec.drives.iter().filter(|d| d.writable) {
        iwd.give_back(sandbox, &d.file)
            .map_err(|source| RunError::Io {
                what: format!("cannot return {} to {}", d.file, spec.iwd.display()),
                source,
            })?;
        returned.push(d.file.clone());
    }
    Ok(returned)
}
