//! The VM a routed ad describes, read once: disks from `VMPARAM_vm_Disk` (or, for VMware,
//! the `.vmx`), memory, CPUs, direct boot, and the files HTCondor would transfer.

use std::fs;
use std::path::PathBuf;

use classad::eval::{integer_attr, string_attr};
use classad::{ClassAd, Value};

use super::RunError;
use crate::boot::DirectBoot;
use crate::template::{parse_vm_disks, Vmx};

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

/// VMware: the `.vmx`'s disks; all but the data disk behind a snapshot, as VMware's
/// `VMPARAM_VMware_SnapshotDisk` would.
fn vmware_drives(ad: &ClassAd, iwd: &std::path::Path) -> Result<Vec<Drive>, RunError> {
    let vmx = string_attr(ad, "VMPARAM_VMware_VMX_File")
        .ok_or_else(|| RunError::BadAd("VMPARAM_VMware_VMX_File is missing".to_owned()))?;
    let data = string_attr(ad, "VMCapsuleDataDisk").unwrap_or_default();
    let text = fs::read_to_string(iwd.join(&vmx)).map_err(|e| RunError::Io {
        what: format!("cannot read {vmx}"),
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
