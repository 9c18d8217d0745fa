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

use classad::eval::{integer_attr, string_attr};
use classad::{ClassAd, Value};
use thiserror::Error;

use crate::boot::DirectBoot;
use crate::template::parse_vm_disk;

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
    /// Kill the guest after this long.
    pub timeout: Duration,
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

/// A disk QEMU attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// File name in the sandbox.
    pub file: String,
    /// `raw`, `qcow2`, `vmdk`.
    pub format: String,
    /// `virtio` for `vd*`, `ide` for `hd*`, `scsi`-named disks as virtio.
    pub interface: &'static str,
    /// Whether the job may write it (and it comes back).
    pub writable: bool,
    /// Writes go to a throw-away snapshot (VMware OS disks, which are template hard links).
    pub snapshot: bool,
}

/// The VM an ad describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// `Iwd`: where the staged files are and the writable disks return.
    pub iwd: PathBuf,
    /// Files HTCondor would transfer in.
    pub transfer: Vec<String>,
    /// Disks in order.
    pub drives: Vec<Drive>,
    /// MiB.
    pub memory_mib: u64,
    /// CPUs.
    pub vcpus: u64,
    /// Direct kernel boot (file names in the sandbox).
    pub boot: Option<DirectBoot<String>>,
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

fn int(ad: &ClassAd, name: &str) -> Option<u64> {
    integer_attr(ad, name).and_then(|i| u64::try_from(i).ok())
}

impl VmSpec {
    /// Read the VM from a routed ad.
    ///
    /// # Errors
    /// [`RunError::BadAd`] when it is not a VM job with disks.
    pub fn from_ad(ad: &ClassAd) -> Result<VmSpec, RunError> {
        let bad = |m: &str| RunError::BadAd(m.to_owned());
        if classad::eval::evaluate_attr(ad, "JobUniverse") != Value::Integer(13) {
            return Err(bad(
                "JobUniverse is not 13 (vm); is this the translate hook's output?",
            ));
        }
        let iwd = PathBuf::from(string_attr(ad, "Iwd").ok_or_else(|| bad("Iwd is missing"))?);
        let vm_type = string_attr(ad, "JobVMType")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let transfer: Vec<String> = string_attr(ad, "TransferInput")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let drives = if vm_type == "vmware" {
            let vmx = string_attr(ad, "VMPARAM_VMware_VMX_File")
                .ok_or_else(|| bad("VMPARAM_VMware_VMX_File is missing"))?;
            let data = string_attr(ad, "VMCapsuleDataDisk").unwrap_or_default();
            let mut drives = vmx_drives(&iwd.join(&vmx)).map_err(|e| RunError::Io {
                what: format!("cannot read {vmx}"),
                source: e,
            })?;
            // VMware snapshots the OS disks (VMPARAM_VMware_SnapshotDisk); QEMU's equivalent.
            for d in &mut drives {
                if d.file != data {
                    d.writable = false;
                    d.snapshot = true;
                }
            }
            drives
        } else {
            let disks = string_attr(ad, "VMPARAM_vm_Disk")
                .ok_or_else(|| bad("VMPARAM_vm_Disk is missing"))?;
            parse_vm_disk(&disks)
                .into_iter()
                .zip(disk_formats(&disks))
                .map(|((file, device, perm), format)| Drive {
                    format: format.unwrap_or_else(|| "raw".to_owned()),
                    interface: if device.starts_with("hd") {
                        "ide"
                    } else {
                        "virtio"
                    },
                    writable: perm.contains('w'),
                    snapshot: false,
                    file,
                })
                .collect()
        };
        if drives.is_empty() {
            return Err(bad("the VM has no disks"));
        }
        Ok(VmSpec {
            iwd,
            transfer,
            drives,
            memory_mib: int(ad, "JobVMMemory").unwrap_or(512),
            vcpus: int(ad, "JobVM_VCPUS").unwrap_or(1).max(1),
            boot: DirectBoot::from_routed_ad(ad),
        })
    }
}

/// The optional 4th field (format) of each `VMPARAM_vm_Disk` entry.
fn disk_formats(text: &str) -> Vec<Option<String>> {
    text.split(',')
        .map(|d| d.split(':').nth(3).map(|f| f.trim().to_owned()))
        .collect()
}

/// Disks named in a `.vmx` (`<dev>.fileName = "x.vmdk"`), in file order.
fn vmx_drives(vmx: &Path) -> io::Result<Vec<Drive>> {
    let text = fs::read_to_string(vmx)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, v)| {
            k.trim().ends_with(".fileName") && v.trim().trim_matches('"').ends_with(".vmdk")
        })
        .map(|(k, v)| Drive {
            file: v.trim().trim_matches('"').to_owned(),
            format: "vmdk".to_owned(),
            interface: if k.trim().starts_with("ide") {
                "ide"
            } else {
                "virtio"
            },
            writable: true,
            snapshot: false,
        })
        .collect())
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
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.current_dir(&sandbox)
        .args(["-accel", accel.name()])
        .args(["-m", &spec.memory_mib.to_string()])
        .args(["-smp", &spec.vcpus.to_string()])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-nic",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()));
    for d in &spec.drives {
        let mut drive = format!(
            "file={},format={},if={}",
            sandbox.join(&d.file).display(),
            d.format,
            d.interface
        );
        if d.snapshot {
            drive.push_str(",snapshot=on");
        } else if !d.writable {
            drive.push_str(",readonly=on");
        }
        cmd.args(["-drive", &drive]);
    }
    if let Some(boot) = &spec.boot {
        cmd.arg("-kernel").arg(sandbox.join(&boot.kernel));
        if let Some(initrd) = &boot.initrd {
            cmd.arg("-initrd").arg(sandbox.join(initrd));
        }
        cmd.arg("-append").arg(boot.cmdline());
    }
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
            qemu: "qemu-system-x86_64".to_owned(),
            source,
        })?;
    let mut last_report = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(RunError::Io {
                    what: "waiting for QEMU".to_owned(),
                    source,
                })
            }
        }
        if start.elapsed() > opts.timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RunError::Timeout {
                secs: opts.timeout.as_secs(),
                console,
            });
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(&format!("guest running, {} s", start.elapsed().as_secs()));
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    let log = fs::read_to_string(&console).unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(RunError::Crashed {
            why: format!("QEMU exited with {status}: {}", err.trim()),
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
