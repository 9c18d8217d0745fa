//! The VM a routed ad describes, read once: disks from `VMPARAM_vm_Disk` (or, for VMware,
//! the `.vmx`), memory, CPUs, direct boot, and the files HTCondor would transfer.
//!
//! # Security
//! A routed ad is its job owner's to edit, and `run` may read it as root: every file it names
//! (transferred files, disks, kernel, initrd, the `.vmx` and the disks in it) must be a plain
//! name in the job's directory, never a path.

use std::io::Read;
use std::path::{Path, PathBuf};

use classad::eval::{integer_attr, string_attr};
use classad::{ClassAd, Value};

use super::RunError;
use vm_capsule_core::boot::DirectBoot;
use vm_capsule_core::capsule::is_plain_name;
use vm_capsule_core::template::{parse_vm_disks, Vmx};

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

/// Largest `.vmx` read (a real one is a few KiB).
const MAX_VMX_BYTES: u64 = 1 << 20;

/// `name`, named by `attr`, when it is a plain file name.
fn plain(attr: &str, name: &str) -> Result<(), RunError> {
    if is_plain_name(name) {
        return Ok(());
    }
    Err(RunError::BadAd(format!(
        "{attr} names {name:?}: only a plain file name in the job's directory is allowed (a routed ad is its owner's to edit)"
    )))
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
            vmware_drives(ad, &iwd)?
        } else {
            let disks = string_attr(ad, "VMPARAM_vm_Disk")
                .ok_or_else(|| bad("VMPARAM_vm_Disk is missing"))?;
            parse_vm_disks(&disks)
                .map_err(RunError::BadAd)?
                .into_iter()
                .map(|d| Drive {
                    interface: d.interface(),
                    format: d.format.clone().unwrap_or_else(|| "raw".to_owned()),
                    writable: d.writable,
                    snapshot: false,
                    file: d.file,
                })
                .collect()
        };
        if drives.is_empty() {
            return Err(bad("the VM has no disks"));
        }
        let boot = DirectBoot::from_routed_ad(ad);
        for name in &transfer {
            plain("TransferInput", name)?;
        }
        let disk_attr = if vm_type == "vmware" {
            "a disk of VMPARAM_VMware_VMX_File"
        } else {
            "VMPARAM_vm_Disk"
        };
        for d in &drives {
            plain(disk_attr, &d.file)?;
        }
        if let Some(b) = &boot {
            plain(vm_capsule_core::boot::CAPSULE_KERNEL, &b.kernel)?;
            if let Some(initrd) = b.initrd.as_deref().filter(|i| !i.is_empty()) {
                plain(vm_capsule_core::boot::CAPSULE_INITRD, initrd)?;
            }
        }
        Ok(VmSpec {
            iwd,
            transfer,
            drives,
            memory_mib: int(ad, "JobVMMemory").unwrap_or(512),
            vcpus: int(ad, "JobVM_VCPUS").unwrap_or(1).max(1),
            boot,
        })
    }
}

/// VMware: the `.vmx`'s disks; all but the data disk behind a snapshot, as VMware's
/// `VMPARAM_VMware_SnapshotDisk` would.
fn vmware_drives(ad: &ClassAd, iwd: &Path) -> Result<Vec<Drive>, RunError> {
    let vmx = string_attr(ad, "VMPARAM_VMware_VMX_File")
        .ok_or_else(|| RunError::BadAd("VMPARAM_VMware_VMX_File is missing".to_owned()))?;
    plain("VMPARAM_VMware_VMX_File", &vmx)?;
    let data = string_attr(ad, "VMCapsuleDataDisk").unwrap_or_default();
    let text = read_vmx(&iwd.join(&vmx)).map_err(|e| RunError::Io {
        what: format!("cannot read {vmx} in {}", iwd.display()),
        source: e,
    })?;
    Ok(Vmx::parse(&text)
        .disks()
        .into_iter()
        .map(|d| {
            let is_data = d.file == data;
            Drive {
                interface: if d.key.starts_with("ide") {
                    "ide"
                } else {
                    "virtio"
                },
                format: "vmdk".to_owned(),
                writable: is_data,
                snapshot: !is_data,
                file: d.file,
            }
        })
        .collect())
}

/// The `.vmx` translate wrote: a regular file (no link followed, no FIFO waited on), bounded.
fn read_vmx(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(i32::try_from(flags.bits()).unwrap_or(0))
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_VMX_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ad(extra: &str) -> ClassAd {
        classad::parse_old_ad(&format!(
            "JobUniverse = 13\nIwd = \"/scratch/alice/1.0.abcdef\"\nJobVMType = \"kvm\"\nTransferInput = \"os.qcow2,data.qcow2\"\nVMPARAM_vm_Disk = \"os.qcow2:vda:r:qcow2,data.qcow2:vdb:w:qcow2\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn every_file_the_ad_names_is_a_plain_name() {
        let ok = VmSpec::from_ad(&ad("VMCapsuleKernel = \"vmlinuz\"\n")).unwrap();
        assert_eq!(ok.boot.unwrap().kernel, "vmlinuz");
        for (extra, attr) in [
            ("VMCapsuleKernel = \"/boot/vmlinuz\"\n", "VMCapsuleKernel"),
            (
                "VMCapsuleKernel = \"k\"\nVMCapsuleInitrd = \"../initrd\"\n",
                "VMCapsuleInitrd",
            ),
            ("VMPARAM_Xen_Kernel = \"/etc/shadow\"\n", "VMCapsuleKernel"),
            (
                "TransferInput = \"os.qcow2,/etc/shadow\"\n",
                "TransferInput",
            ),
            ("TransferInput = \"..\"\n", "TransferInput"),
        ] {
            let e = VmSpec::from_ad(&ad(extra)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{attr} names")) && e.contains("plain file name"),
                "{extra}: {e}"
            );
        }
        assert!(is_plain_name("os.overlay.qcow2"));
        for bad in ["", ".", "..", "a/b", "/x", "a,b", "a\0b"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_vmware_vmx_is_a_plain_regular_file_naming_plain_disks() {
        let dir = tempfile::tempdir().unwrap();
        let iwd = dir.path().display().to_string();
        let vmware = |vmx: &str| {
            classad::parse_old_ad(&format!(
                "JobUniverse = 13\nIwd = \"{iwd}\"\nJobVMType = \"vmware\"\nVMPARAM_VMware_VMX_File = \"{vmx}\"\n"
            ))
            .unwrap()
        };
        std::fs::write(
            dir.path().join("ok.vmx"),
            "scsi0:0.fileName = \"os.vmdk\"\nscsi0:1.fileName = \"data.vmdk\"\n",
        )
        .unwrap();
        assert_eq!(VmSpec::from_ad(&vmware("ok.vmx")).unwrap().drives.len(), 2);
        std::fs::write(
            dir.path().join("out.vmx"),
            "scsi0:0.fileName = \"/var/lib/other/os.vmdk\"\n",
        )
        .unwrap();
        let e = VmSpec::from_ad(&vmware("out.vmx")).unwrap_err().to_string();
        assert!(e.contains("plain file name"), "{e}");
        let e = VmSpec::from_ad(&vmware("/etc/x.vmx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("VMPARAM_VMware_VMX_File names"), "{e}");
        std::os::unix::fs::symlink(dir.path().join("ok.vmx"), dir.path().join("link.vmx")).unwrap();
        let e = VmSpec::from_ad(&vmware("link.vmx")).unwrap_err();
        assert!(
            format!("{e:#}").contains("link.vmx"),
            "a link is not followed: {e:#}"
        );
    }
}
