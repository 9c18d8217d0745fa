//! `VMPARAM_vm_Disk`, parsed once: `file:device:perm[:format]`, comma-separated, as
//! `condor_submit`'s `vm_disk` writes it. A malformed entry is an error, never skipped: a
//! skipped entry would shift every later disk's format onto the wrong file.

use std::path::Path;

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDiskEntry {
    /// The file's name (the last component of what the entry says).
    pub file: String,
    /// The guest device (`vda`, `hda`, `xvdb`, `sda`...).
    pub device: String,
    /// `w` (writable) or `r`.
    pub writable: bool,
    /// The container format, when the entry names one.
    pub format: Option<String>,
}

impl VmDiskEntry {
    /// QEMU's interface for the device: IDE for `hd*`, virtio otherwise.
    pub fn interface(&self) -> &'static str {
        if self.device.starts_with("hd") {
            "ide"
        } else {
            "virtio"
        }
    }
}

/// Parse `VMPARAM_vm_Disk`.
///
/// # Errors
/// The first malformed entry, quoted, and what is wrong with it.
pub fn parse_vm_disks(text: &str) -> Result<Vec<VmDiskEntry>, String> {
    let mut out = Vec::new();
    for raw in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = raw.split(':').map(str::trim).collect();
        let (file, device, perm, format) = match parts.as_slice() {
            [f, d] => (*f, *d, "w", None),
            [f, d, p] => (*f, *d, *p, None),
            [f, d, p, fmt] => (*f, *d, *p, Some(*fmt)),
            _ => {
                return Err(format!(
                    "VMPARAM_vm_Disk entry {raw:?} is not file:device:perm[:format]"
                ))
            }
        };
        let name = Path::new(file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("VMPARAM_vm_Disk entry {raw:?} names no file"))?;
        if device.is_empty() || !device.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("VMPARAM_vm_Disk entry {raw:?} has no valid device"));
        }
        let writable = match perm {
            "w" | "rw" => true,
            "r" => false,
            other => {
                return Err(format!(
                    "VMPARAM_vm_Disk entry {raw:?}: permission {other:?} is not w or r"
                ))
            }
        };
        let format = match format {
            None | Some("") => None,
            Some(f @ ("raw" | "qcow2" | "vmdk")) => Some(f.to_owned()),
            Some(other) => {
                return Err(format!(
                    "VMPARAM_vm_Disk entry {raw:?}: format {other:?} is not raw, qcow2 or vmdk"
                ))
            }
        };
        out.push(VmDiskEntry {
            file: name,
            device: device.to_owned(),
            writable,
            format,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_with_and_without_format() {
        let d =
            parse_vm_disks("os.qcow2:vda:w:qcow2, /abs/data.img:vdb:w:raw,old.img:hda:r").unwrap();
        assert_eq!(d[0].file, "os.qcow2");
        assert_eq!(d[1].file, "data.img");
        assert_eq!(d[1].format.as_deref(), Some("raw"));
        assert!(!d[2].writable);
        assert_eq!(d[2].interface(), "ide");
        assert_eq!(d[2].format, None);
    }

    /// Issue 16: one bad entry used to be dropped by one parser and not the other, which
    /// shifted the later disks' formats onto the wrong files.
    #[test]
    fn a_malformed_entry_is_an_error_not_a_shift() {
        for bad in [
            "os.qcow2:vda:w:qcow2,broken,data.img:vdb:w:raw",
            "a:vda:x",
            "a::w",
            "a:vda:w:ext4",
            ":vda:w",
        ] {
            assert!(parse_vm_disks(bad).is_err(), "{bad}");
        }
    }
}
