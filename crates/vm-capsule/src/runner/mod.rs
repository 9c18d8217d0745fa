//! A local execute node: run a routed VM-universe job with QEMU the way HTCondor's vm-gahp
//! would run it with libvirt, so templates and hooks can be tested without a pool.
//!
//! The disks the ad transfers are copied into a private sandbox (or used in place), booted
//! following the ad (`JobVMType`, `VMPARAM_vm_Disk` devices and formats, `JobVMMemory`,
//! `JobVM_VCPUS`, no network; VMware ads: the `.vmx`'s disks), and the writable disks are
//! copied back into the routed job's `Iwd` as HTCondor's output transfer would. Success means
//! the guest powered itself off; what the job did is for finalize to read from the data disk.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use classad::ClassAd;
use thiserror::Error;

mod qemu;
mod spec;
mod wait;

pub use qemu::{qemu_command, Hardening, QEMU, TB_SIZE_MIB};
pub use spec::{Drive, VmSpec};
use wait::Waited;

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
                let module = Path::new("/sys/module/kvm_intel").exists()
                    || Path::new("/sys/module/kvm_amd").exists();
                let cpu = fs::read_to_string("/proc/cpuinfo")
                    .is_ok_and(|c| c.contains(" vmx") || c.contains(" svm"));
                // The job's user must also be allowed to open it.
                let usable = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .is_ok();
                if module && cpu && usable {
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
    /// Where to make the sandbox (default: the system temp dir).
    pub sandbox_parent: Option<PathBuf>,
    /// Run the disks found in this directory instead of the ad's `Iwd` (the vanilla
    /// flavour's launcher: HTCondor put them in its sandbox, the working directory).
    pub workdir: Option<PathBuf>,
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

/// Copy preserving holes (disk images are sparse).
fn copy_sparse(from: &Path, to: &Path) -> io::Result<()> {
    let status = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("cp {} failed", from.display())))
    }
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
    let mut spec = VmSpec::from_ad(ad)?;
    if let Some(dir) = &opts.workdir {
        spec.iwd.clone_from(dir);
    }
    let io_err = |what: String| move |source| RunError::Io { what, source };
    let sandbox = if opts.in_place {
        spec.iwd.clone()
    } else {
        let parent = opts
            .sandbox_parent
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("vm-capsule-run.")
            .tempdir_in(&parent)
            .map_err(io_err(format!(
                "cannot create a sandbox in {}",
                parent.display()
            )))?
            .keep();
        for name in &spec.transfer {
            copy_sparse(&spec.iwd.join(name), &dir.join(name))
                .map_err(io_err(format!("cannot transfer {name} into the sandbox")))?;
        }
        dir
    };
    let console = sandbox.join("console.log");
    let accel = opts.accel.resolve();
    let mut cmd = qemu_command(&spec, &sandbox, &console, accel, Hardening::probe());
    progress(&format!(
        "booting {} disk(s), {} MiB, {} CPU(s), accel {}",
        spec.drives.len(),
        spec.memory_mib,
        spec.vcpus,
        accel.name()
    ));
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::NoQemu {
            qemu: qemu::QEMU.to_owned(),
            source,
        })?;
    let waited = wait::wait(&mut child, opts.timeout, progress).map_err(|source| RunError::Io {
        what: "waiting for QEMU".to_owned(),
        source,
    })?;
    let (status, stderr) = match waited {
        Waited::Exited(status, stderr) => (status, stderr),
        Waited::TimedOut => {
            return Err(RunError::Timeout {
                secs: opts.timeout.map_or(0, |t| t.as_secs()),
                console,
            })
        }
    };
    let elapsed = start.elapsed();
    let log = fs::read_to_string(&console).unwrap_or_default();
    if !status.success() {
        return Err(RunError::Crashed {
            why: format!("QEMU exited with {status}: {}", stderr.trim()),
            console,
        });
    }
    if let Some(line) = log.lines().find(|l| l.contains("Kernel panic")) {
        return Err(RunError::Crashed {
            why: line.trim().to_owned(),
            console,
        });
    }
    // Output transfer: the writable disks come back (the vm-gahp touches their mtime).
    let mut returned = Vec::new();
    if !opts.in_place {
        for d in spec.drives.iter().filter(|d| d.writable) {
            let tmp = spec.iwd.join(format!(".{}.returning", d.file));
            copy_sparse(&sandbox.join(&d.file), &tmp)
                .and_then(|()| fs::rename(&tmp, spec.iwd.join(&d.file)))
                .map_err(io_err(format!(
                    "cannot return {} to {}",
                    d.file,
                    spec.iwd.display()
                )))?;
            returned.push(d.file.clone());
        }
    }
    Ok(RunReport {
        sandbox,
        console,
        elapsed,
        returned,
    })
}
