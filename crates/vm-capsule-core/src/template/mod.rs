//! The template VM an admin prepares: `$(VM_CAPSULE_TEMPLATE)/condor_vm_capsule/`.
//!
//! It holds the OS disk(s), a data disk (`data.vmdk`, `data.img`, `data.raw` or
//! `data.qcow2`) whose format and partition offset the capsule's data disk copies, and for
//! VMware a `.vmx`. Direct kernel boot ([`crate::boot`]) takes the files the classad template
//! names (`xen_kernel`, `xen_initrd`, ...), by default `vmlinuz` + `initrd.img` (+ `cmdline`).
//! `VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE`, the output of `condor_submit -dump` for the admin's
//! VM submit file, supplies `JobVMType`, memory, `VMPARAM_*` and `Requirements`; without it,
//! built-in KVM defaults apply.

pub mod overlay;
pub(crate) mod vm_disk;
pub(crate) mod vmx;

pub use vm_disk::{parse_vm_disks, VmDiskEntry};
pub use vmx::Vmx;

use std::path::{Path, PathBuf};

use std::io::{Read, Seek, SeekFrom};

use capsule_disk::{partition, Access, Image, ImageFormat};

use crate::boot::{self, DirectBoot};
use classad::eval::string_attr;
use classad::ClassAd;
use thiserror::Error;

/// The sub-directory of `VM_CAPSULE_TEMPLATE` that holds the template (seed layout).
pub const TEMPLATE_SUBDIR: &str = "condor_vm_capsule";
/// The classad template `template build` writes beside [`TEMPLATE_SUBDIR`].
pub const CLASSAD_TEMPLATE_FILE: &str = "classad-template.ad";

/// The classad template of template `root`: `knob` (`VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE`)
/// when set, else `root/classad-template.ad` when it is there, so a template from `template
/// build` needs no knob but `VM_CAPSULE_TEMPLATE`.
pub fn classad_template_for(root: &Path, knob: Option<PathBuf>) -> Option<PathBuf> {
    knob.or_else(|| Some(root.join(CLASSAD_TEMPLATE_FILE)).filter(|p| p.is_file()))
}

/// Which hypervisor the routed job targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// KVM through libvirt (HTCondor 8.x to 25.x).
    Kvm,
    /// Xen through libvirt.
    Xen,
    /// VMware (Condor 7.2 to 9.x).
    Vmware,
}

impl Flavour {
    /// `JobVMType` value.
    pub fn vm_type(self) -> &'static str {
        match self {
            Flavour::Kvm => "kvm",
            Flavour::Xen => "xen",
            Flavour::Vmware => "vmware",
        }
    }
}

/// One disk of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateDisk {
    /// File in the template directory.
    pub path: PathBuf,
    /// Guest device (`vda`, `hda`, ...).
    pub device: String,
    /// Container format by content (`raw`, `qcow2`, `vmdk`).
    pub format: ImageFormat,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Every file the image is made of (extents, backing files), top first.
    pub files: Vec<PathBuf>,
    /// Bytes those files take (what travels with a job).
    pub bytes: u64,
}

/// A loaded, checked template.
#[derive(Debug, Clone)]
pub struct Template {
    /// `$(VM_CAPSULE_TEMPLATE)/condor_vm_capsule`.
    pub dir: PathBuf,
    /// The hypervisor.
    pub flavour: Flavour,
    /// OS disks, in device order.
    pub os_disks: Vec<TemplateDisk>,
    /// The template's data disk.
    pub data_disk: TemplateDisk,
    /// Byte offset of the data disk's FAT partition.
    pub data_partition_offset: u64,
    /// VMware: the `.vmx` file.
    pub vmx: Option<PathBuf>,
    /// Direct kernel boot (else the OS disk boots itself).
    pub boot: Option<DirectBoot<PathBuf>>,
    /// Bytes of the direct-boot files (what travels with a job).
    pub boot_bytes: u64,
    /// VM attributes from the classad template (`JobVM*`, `VMPARAM_*`, `Requirements`).
    pub vm_attrs: ClassAd,
}

/// A template that cannot be used; permanent until the admin fixes it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The directory is missing or unreadable.
    #[error(
        "template directory {path} cannot be read (check VM_CAPSULE_TEMPLATE and permissions)"
    )]
    Unreadable {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No data disk in the template.
    #[error(
        "template {dir} has no data disk (expected data.vmdk, data.img, data.raw or data.qcow2)"
    )]
    NoDataDisk {
        /// The directory.
        dir: PathBuf,
    },
    /// The data disk is not a FAT data disk we can read.
    #[error("template data disk {path} is not usable")]
    BadDataDisk {
        /// The disk.
        path: PathBuf,
        /// Why.
        #[source]
        source: capsule_disk::Error,
    },
    /// No OS disk and no kernel to boot.
    #[error("template {dir} has neither an OS disk nor a kernel to boot: add an OS disk, or vmlinuz + initrd.img, or name the kernel with xen_kernel/xen_initrd in the classad template")]
    NothingToBoot {
        /// The directory.
        dir: PathBuf,
    },
    /// The classad template names a boot file the template directory does not have.
    #[error("the classad template sets {attr} = \"{name}\" but {path} is not a file; put it in the template directory or fix {attr} in VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE")]
    MissingBootFile {
        /// `VMPARAM_Xen_Kernel` or `VMPARAM_Xen_Initrd`.
        attr: &'static str,
        /// The value.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A boot setting vm-capsule cannot honour.
    #[error("the classad template sets {attr} = \"{value}\": {why}")]
    UnsupportedBoot {
        /// The attribute.
        attr: &'static str,
        /// The value.
        value: String,
        /// Why, and what to do.
        why: &'static str,
    },
    /// An OS disk that cannot be opened.
    #[error("template OS disk {path} is not usable")]
    BadOsDisk {
        /// The disk.
        path: PathBuf,
        /// Why.
        #[source]
        source: capsule_disk::Error,
    },
    /// The classad template cannot be read.
    #[error("classad template {path} cannot be read: {message}")]
    ClassadTemplate {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// VMware flavour without a `.vmx`.
    #[error("template {dir} is for VMware but has no .vmx file")]
    NoVmx {
        /// The directory.
        dir: PathBuf,
    },
}

const DATA_NAMES: [&str; 4] = ["data.vmdk", "data.img", "data.raw", "data.qcow2"];
const DISK_EXTENSIONS: [&str; 4] = ["vmdk", "img", "raw", "qcow2"];

impl Template {
    /// Load the template under `root` (`VM_CAPSULE_TEMPLATE`), with an optional classad
    /// template file.
    ///
    /// # Errors
    /// [`TemplateError`] naming what is missing or broken.
    pub fn load(root: &Path, classad_template: Option<&Path>) -> Result<Template, TemplateError> {
        let dir = root.join(TEMPLATE_SUBDIR);
        let unreadable = |source| TemplateError::Unreadable {
            path: dir.clone(),
            source,
        };
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(unreadable)?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();

        let vm_attrs = match classad_template {
            Some(path) => read_classad_template(path)?,
            None => ClassAd::new(),
        };
        let vmx = names
            .iter()
            .find(|n| n.ends_with(".vmx"))
            .map(|n| dir.join(n));
        let vm_type = string_attr(&vm_attrs, "JobVMType").map(|t| t.to_ascii_lowercase());
        let flavour = match vm_type.as_deref() {
            Some("vmware") => Flavour::Vmware,
            Some("xen") => Flavour::Xen,
            Some(_) => Flavour::Kvm,
            None if vmx.is_some() => Flavour::Vmware,
            None => Flavour::Kvm,
        };
        if flavour == Flavour::Vmware && vmx.is_none() {
            return Err(TemplateError::NoVmx { dir });
        }

        let data_name = DATA_NAMES
            .iter()
            .find(|d| names.iter().any(|n| n == *d))
            .ok_or_else(|| TemplateError::NoDataDisk { dir: dir.clone() })?;
        let data_path = dir.join(data_name);
        let (data_format, size, data_partition_offset) = data_disk_layout(&data_path)?;

        let boot = direct_boot(&dir, &names, &vm_attrs)?;
        let boot_files: Vec<&Path> = boot
            .iter()
            .flat_map(|b| std::iter::once(b.kernel.as_path()).chain(b.initrd.as_deref()))
            .collect();

        // Devices: from VMPARAM_vm_Disk when the classad template names them, else vda, vdb...
        let named = match string_attr(&vm_attrs, "VMPARAM_vm_Disk") {
            Some(text) => {
                parse_vm_disks(&text).map_err(|message| TemplateError::ClassadTemplate {
                    path: classad_template.map(Path::to_path_buf).unwrap_or_default(),
                    message,
                })?
            }
            None => Vec::new(),
        };
        let os_disks = os_disks(&dir, &names, &named, &boot_files)?;
        let data_device = named
            .iter()
            .find(|d| d.file == *data_name)
            .map_or_else(|| default_device(os_disks.len()), |d| d.device.clone());

        if os_disks.is_empty() && boot.is_none() && flavour != Flavour::Vmware {
            return Err(TemplateError::NothingToBoot { dir });
        }
        Ok(Template {
            boot_bytes: boot.as_ref().map_or(0, |b| {
                files_bytes(
                    &std::iter::once(b.kernel.clone())
                        .chain(b.initrd.clone())
                        .collect::<Vec<_>>(),
                )
            }),
            data_disk: TemplateDisk {
                bytes: files_bytes(std::slice::from_ref(&data_path)),
                files: vec![data_path.clone()],
                path: data_path,
                device: data_device,
                format: data_format,
                virtual_size: size,
            },
            dir,
            flavour,
            os_disks,
            data_partition_offset,
            vmx,
            boot,
            vm_attrs,
        })
    }
}

/// The template's direct kernel boot: what the classad template names, else the fixed names
/// `vmlinuz` + `initrd.img` (+ `cmdline`); `None` when the OS disk boots itself.
fn direct_boot(
    dir: &Path,
    names: &[String],
    vm_attrs: &ClassAd,
) -> Result<Option<DirectBoot<PathBuf>>, TemplateError> {
    let Some(kernel) = string_attr(vm_attrs, boot::XEN_KERNEL) else {
        let has = |n: &str| names.iter().any(|f| f == n);
        if !(has("vmlinuz") && has("initrd.img")) {
            return Ok(None);
        }
        let params = std::fs::read_to_string(dir.join("cmdline"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "console=ttyS0 panic=-1".to_owned());
        return Ok(Some(DirectBoot {
            kernel: dir.join("vmlinuz"),
            initrd: Some(dir.join("initrd.img")),
            root: None,
            params,
        }));
    };
    if kernel.eq_ignore_ascii_case(boot::INCLUDED) {
        return Ok(None);
    }
    if boot::is_keyword(&kernel) {
        return Err(TemplateError::UnsupportedBoot {
            attr: boot::XEN_KERNEL,
            value: kernel,
            why: "the execute node's own kernel cannot boot a capsule; name a kernel file in the template directory, or `included` to boot from the OS disk",
        });
    }
    let file = |attr: &'static str, name: String| {
        // Relative names are in the template directory, as `condor_submit` would find them
        // next to the submit file; what travels is the file's own name.
        let path = dir.join(&name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(TemplateError::MissingBootFile { attr, name, path })
        }
    };
    let kernel = file(boot::XEN_KERNEL, kernel)?;
    let initrd = string_attr(vm_attrs, boot::XEN_INITRD)
        .filter(|i| !i.trim().is_empty())
        .map(|i| file(boot::XEN_INITRD, i))
        .transpose()?;
    // Both travel under their own names into one directory.
    if let Some(i) = initrd
        .as_ref()
        .filter(|i| i.file_name() == kernel.file_name())
    {
        return Err(TemplateError::UnsupportedBoot {
            attr: boot::XEN_INITRD,
            value: i.display().to_string(),
            why: "the kernel and the initrd have the same file name; rename one",
        });
    }
    Ok(Some(DirectBoot {
        kernel,
        initrd,
        root: string_attr(vm_attrs, boot::XEN_ROOT).filter(|r| !r.trim().is_empty()),
        params: string_attr(vm_attrs, boot::XEN_KERNEL_PARAMS).unwrap_or_default(),
    }))
}

/// The data disk's container format, virtual size and FAT partition offset. Only the
/// partition table is read, not the FAT (counting free clusters would read the whole table).
fn data_disk_layout(path: &Path) -> Result<(ImageFormat, u64, u64), TemplateError> {
    let bad_data = |source| TemplateError::BadDataDisk {
        path: path.to_owned(),
        source,
    };
    let mut image = Image::open(path, Access::ReadOnly).map_err(bad_data)?;
    let format = image.format();
    let size = image.virtual_size();
    let table = partition::read_table(
        &mut |off, buf| {
            image.seek(SeekFrom::Start(off))?;
            image.read_exact(buf)
        },
        size,
        path,
    )
    .map_err(bad_data)?;
    let offset = table
        .find_fat(None, size, path, &mut |_| true)
        .map_err(bad_data)?
        .start;
    Ok((format, size, offset))
}

/// The OS disks among `names` (disk images that are neither the data disk, nor a VMDK
/// extent, nor a direct-boot file), with their devices from `named` or `vda`, `vdb`...
fn os_disks(
    dir: &Path,
    names: &[String],
    named: &[VmDiskEntry],
    boot_files: &[&Path],
) -> Result<Vec<TemplateDisk>, TemplateError> {
    let mut os_disks = Vec::new();
    for name in names {
        let is_disk = DISK_EXTENSIONS
            .iter()
            .any(|ext| name.rsplit_once('.').is_some_and(|(_, e)| e == *ext));
        let path = dir.join(name);
        let boot_file =
            name == "initrd.img" || name == "vmlinuz" || boot_files.contains(&path.as_path());
        if !is_disk || boot_file || DATA_NAMES.contains(&name.as_str()) || is_vmdk_extent(name) {
            continue;
        }
        let info = Image::open(&path, Access::ReadOnly)
            .map(|img| img.info())
            .map_err(|source| TemplateError::BadOsDisk {
                path: path.clone(),
                source,
            })?;
        let device = named
            .iter()
            .find(|d| d.file == *name)
            .map_or_else(|| default_device(os_disks.len()), |d| d.device.clone());
        os_disks.push(TemplateDisk {
            path,
            device,
            format: info.format,
            virtual_size: info.virtual_size,
            bytes: files_bytes(&info.files),
            files: info.files,
        });
    }
    Ok(os_disks)
}

/// Bytes the files take (missing ones count 0: they fail later with a clear message).
fn files_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn default_device(index: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(index.min(25)).unwrap_or(25));
    format!("vd{letter}")
}

/// VMDK extent files (`-flat.vmdk`, `-s001.vmdk`, deltas) are reached through their
/// descriptor, not listed as disks of their own.
fn is_vmdk_extent(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".vmdk") else {
        return false;
    };
    stem.ends_with("-flat")
        || stem.rsplit_once('-').is_some_and(|(_, tail)| {
            tail.len() >= 4
                && tail
                    .trim_start_matches('s')
                    .chars()
                    .all(|c| c.is_ascii_digit())
        })
}

/// Read `condor_submit -dump` output: blank-line separated blocks of `Attr=value` lines,
/// merged (later blocks win); only VM attributes and `Requirements` are kept.
fn read_classad_template(path: &Path) -> Result<ClassAd, TemplateError> {
    let err = |message: String| TemplateError::ClassadTemplate {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let ads = classad::parser::parse_old_ads(&text).map_err(|e| err(e.to_string()))?;
    let mut merged = ClassAd::new();
    for ad in &ads {
        merged.update(ad);
    }
    let keep: ClassAd = merged
        .iter()
        .filter(|(n, _)| {
            let l = n.to_ascii_lowercase();
            l.starts_with("jobvm") || l.starts_with("vmparam_") || l == "requirements"
        })
        .map(|(n, e)| (n.to_owned(), e.clone()))
        .collect();
    Ok(keep)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vmdk_extents() {
        assert!(is_vmdk_extent("os-flat.vmdk"));
        assert!(is_vmdk_extent("os-s001.vmdk"));
        assert!(is_vmdk_extent("os-000001.vmdk"));
        assert!(!is_vmdk_extent("os.vmdk"));
        assert!(!is_vmdk_extent("my-disk.vmdk"));
    }
}
