//! The libvirt domain of a vm-capsule VM-universe job, for HTCondor's `LIBVIRT_XML_SCRIPT`.
//!
//! HTCondor's vm-gahp (condor_vm-gahp/xen_type.linux.cpp, `VirshType::CreateVirshConfigFile`)
//! runs the script as root with `LIBVIRT_XML_SCRIPT_ARGS`, writes on its stdin the job's
//! attributes in long ClassAd form (`Name = value`, one per line: the whole job ad unless
//! `VM_GAHP_SEND_ALL_CLASSAD = false`, plus `VM_WORKING_DIR`, `VMPARAM_VM_NAME`, and appended
//! `VMPARAM_Xen_Bootloader`, `JobVMNetworkingType`...), and joins the lines of its stdout
//! into the domain XML. A non-zero exit makes it fall back to its built-in XML, which is
//! what a job that is not ours gets.
//!
//! HTCondor's built-in KVM domain has no kernel, initrd or command line, and is always of
//! type `kvm`; ours boots what the routed ad names (`VMCapsuleKernel`, `VMCapsuleInitrd`,
//! `VMCapsuleKernelArgs`, else `VMPARAM_Xen_*`), is of type `qemu` (TCG) where the node has
//! no usable KVM, attaches the disks as `VMPARAM_vm_Disk` says, puts the console on a pty (a
//! serial *file* is created by virtlogd as root 0600, which then breaks the job's output
//! transfer) and destroys the domain on poweroff, reboot and crash so the job ends.
//!
//! # Security
//! The script runs as root and the ad comes from a user's job. Files are only plain names
//! inside `VM_WORKING_DIR`, must be regular files (no links), and, when we are root, the
//! directory and the files must belong to one non-root user (the job's sandbox), so an ad
//! cannot make the VM read host files.

use std::fmt::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use classad::eval::{integer_attr, string_attr};
use classad::{ClassAd, Value};
use thiserror::Error;

use crate::boot::DirectBoot;
use crate::template::parse_vm_disks;

/// The knob choosing the domain type.
pub const DOMAIN_TYPE_KNOB: &str = "VM_CAPSULE_LIBVIRT_DOMAIN_TYPE";
/// The routed ad's data disk: marks a vm-capsule job.
pub const DATA_DISK_ATTR: &str = "VMCapsuleDataDisk";

/// The libvirt domain type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// QEMU with hardware KVM.
    Kvm,
    /// QEMU with TCG emulation: works everywhere, slower.
    Qemu,
    /// `kvm` where this node has usable KVM, else `qemu`.
    Auto,
}

impl DomainType {
    /// Parse a knob or option value.
    ///
    /// # Errors
    /// The value, when it is not `kvm`, `qemu` or `auto`.
    pub fn parse(value: &str) -> Result<DomainType, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(DomainType::Kvm),
            "qemu" | "tcg" => Ok(DomainType::Qemu),
            "auto" | "" => Ok(DomainType::Auto),
            _ => Err(format!(
                "{DOMAIN_TYPE_KNOB} = {value} is not kvm, qemu or auto"
            )),
        }
    }

    /// `kvm` or `qemu` for this node.
    pub fn resolve(self) -> DomainType {
        match self {
            DomainType::Auto => {
                // Root opens /dev/kvm; what matters is hardware KVM behind it.
                if crate::qemu::KvmStatus::probe()
                    .unusable_for(0, &[])
                    .is_none()
                {
                    DomainType::Kvm
                } else {
                    DomainType::Qemu
                }
            }
            other => other,
        }
    }
}

/// Why no domain XML can be written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LibvirtError {
    /// The job is not a vm-capsule job: HTCondor's own XML applies.
    #[error("not a vm-capsule job (no {DATA_DISK_ATTR}): HTCondor's built-in domain XML applies")]
    NotOurs,
    /// An attribute is missing or wrong.
    #[error("{attr}: {why}")]
    BadAttribute {
        /// The attribute.
        attr: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A file the ad names cannot be used.
    #[error("{attr} names {file}, which cannot be used from {dir}: {why}")]
    BadFile {
        /// The attribute.
        attr: &'static str,
        /// The file name.
        file: String,
        /// The working dir.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// One disk of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Disk {
    path: PathBuf,
    device: String,
    bus: &'static str,
    readonly: bool,
    format: Option<String>,
}

/// The domain XML for the vm-gahp's ad `ad`, of type `domain` (already resolved).
///
/// # Errors
/// [`LibvirtError::NotOurs`] for other VM jobs, else what is wrong with the ad.
pub fn domain_xml(ad: &ClassAd, domain: DomainType) -> Result<String, LibvirtError> {
    Ok(Domain::from_ad(ad, domain)?.render())
}

/// What the domain is made of, checked.
#[derive(Debug)]
struct Domain {
    kind: &'static str,
    name: String,
    memory_mib: u64,
    vcpus: u64,
    boot: Option<DirectBoot<PathBuf>>,
    bootloader: Option<String>,
    disks: Vec<Disk>,
}

impl Domain {
    fn from_ad(ad: &ClassAd, domain: DomainType) -> Result<Domain, LibvirtError> {
        if string_attr(ad, DATA_DISK_ATTR).is_none() {
            return Err(LibvirtError::NotOurs);
        }
        let bad = |attr: &'static str, why: &str| LibvirtError::BadAttribute {
            attr,
            why: why.to_owned(),
        };
        let dir = PathBuf::from(
            string_attr(ad, "VM_WORKING_DIR").ok_or_else(|| bad("VM_WORKING_DIR", "missing"))?,
        );
        if !dir.is_absolute() {
            return Err(bad("VM_WORKING_DIR", "not an absolute path"));
        }
        let sandbox = Sandbox::new(&dir)?;
        let xen = string_attr(ad, "JobVMType").is_some_and(|t| t.eq_ignore_ascii_case("xen"));
        let memory_mib = positive(ad, "JobVMMemory")
            .or_else(|| positive(ad, "RequestMemory"))
            .ok_or_else(|| bad("JobVMMemory", "missing or not a positive number"))?;
        let disk_text =
            string_attr(ad, "VMPARAM_vm_Disk").ok_or_else(|| bad("VMPARAM_vm_Disk", "missing"))?;
        let entries = parse_vm_disks(&disk_text).map_err(|why| LibvirtError::BadAttribute {
            attr: "VMPARAM_vm_Disk",
            why,
        })?;
        let mut disks = Vec::new();
        for e in entries {
            disks.push(Disk {
                path: sandbox.file("VMPARAM_vm_Disk", &e.file)?,
                bus: bus(&e.device, xen),
                readonly: !e.writable,
                device: e.device,
                // libvirt's Xen driver takes the format from the image itself.
                format: e.format.filter(|_| !xen),
            });
        }
        if disks.is_empty() {
            return Err(bad("VMPARAM_vm_Disk", "names no disk"));
        }
        let boot = DirectBoot::from_routed_ad(ad)
            .map(|b| -> Result<_, LibvirtError> {
                Ok(DirectBoot {
                    kernel: sandbox.file("VMCapsuleKernel", &b.kernel)?,
                    // The vm-gahp appends `VMPARAM_Xen_Initrd = ""` when the ad has none.
                    initrd: b
                        .initrd
                        .as_deref()
                        .filter(|i| !i.is_empty())
                        .map(|i| sandbox.file("VMCapsuleInitrd", i))
                        .transpose()?,
                    root: b.root.clone(),
                    params: b.params.clone(),
                })
            })
            .transpose()?;
        let bootloader = string_attr(ad, "VMPARAM_Xen_Bootloader")
            .filter(|l| xen && boot.is_none() && !l.is_empty());
        Ok(Domain {
            kind: match (xen, domain) {
                (true, _) => "xen",
                (false, DomainType::Kvm) => "kvm",
                (false, _) => "qemu",
            },
            name: string_attr(ad, "VMPARAM_VM_NAME").unwrap_or_else(|| {
                let id = |a| integer_attr(ad, a).unwrap_or(0);
                format!("vm-capsule-{}.{}", id("ClusterId"), id("ProcId"))
            }),
            memory_mib,
            vcpus: positive(ad, "JobVM_VCPUS").unwrap_or(1),
            boot,
            bootloader,
            disks,
        })
    }

    /// The XML, one element per line (the vm-gahp joins the lines).
    fn render(&self) -> String {
        let mut x = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(x, "<domain type='{}'>", self.kind);
        let _ = writeln!(x, "  <name>{}</name>", esc(&self.name));
        let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", self.memory_mib);
        let _ = writeln!(x, "  <vcpu>{}</vcpu>", self.vcpus);
        let _ = writeln!(x, "  <os>");
        match &self.boot {
            Some(b) => {
                let os_type = if self.kind == "xen" {
                    "<type>linux</type>"
                } else {
                    "<type arch='x86_64'>hvm</type>"
                };
                let _ = writeln!(x, "    {os_type}");
                let _ = writeln!(x, "    <kernel>{}</kernel>", esc_path(&b.kernel));
                if let Some(i) = &b.initrd {
                    let _ = writeln!(x, "    <initrd>{}</initrd>", esc_path(i));
                }
                let cmdline = b.cmdline();
                if !cmdline.is_empty() {
                    let _ = writeln!(x, "    <cmdline>{}</cmdline>", esc(&cmdline));
                }
            }
            None => {
                let _ = writeln!(x, "    <type arch='x86_64'>hvm</type>");
                let _ = writeln!(x, "    <boot dev='hd'/>");
            }
        }
        let _ = writeln!(x, "  </os>");
        if let Some(loader) = &self.bootloader {
            let _ = writeln!(x, "  <bootloader>{}</bootloader>", esc(loader));
        }
        let _ = writeln!(x, "  <features><acpi/><apic/></features>");
        if self.kind == "kvm" {
            let _ = writeln!(x, "  <cpu mode='host-passthrough'/>");
        }
        // The job ends when the guest powers off, whatever else happens.
        for event in ["on_poweroff", "on_reboot", "on_crash"] {
            let _ = writeln!(x, "  <{event}>destroy</{event}>");
        }
        let _ = writeln!(x, "  <devices>");
        for d in &self.disks {
            d.render(&mut x);
        }
        // A pty, never a file: virtlogd would create the file as root 0600.
        let _ = writeln!(
            x,
            "    <console type='pty'><target type='serial' port='0'/></console>"
        );
        let _ = writeln!(x, "  </devices>");
        let _ = writeln!(x, "</domain>");
        x
    }
}

impl Disk {
    fn render(&self, x: &mut String) {
        let _ = writeln!(x, "    <disk type='file' device='disk'>");
        if let Some(f) = &self.format {
            let _ = writeln!(x, "      <driver name='qemu' type='{}'/>", esc(f));
        }
        let _ = writeln!(x, "      <source file='{}'/>", esc_path(&self.path));
        let _ = writeln!(
            x,
            "      <target dev='{}' bus='{}'/>",
            esc(&self.device),
            self.bus
        );
        if self.readonly {
            let _ = writeln!(x, "      <readonly/>");
        }
        let _ = writeln!(x, "    </disk>");
    }
}

/// The guest bus a device name implies, as HTCondor's own XML lets libvirt infer it.
fn bus(device: &str, xen: bool) -> &'static str {
    if device.starts_with("vd") {
        "virtio"
    } else if device.starts_with("hd") {
        "ide"
    } else if device.starts_with("sd") {
        "scsi"
    } else if xen || device.starts_with("xvd") {
        "xen"
    } else {
        "virtio"
    }
}

fn positive(ad: &ClassAd, name: &str) -> Option<u64> {
    match classad::eval::evaluate_attr(ad, name) {
        Value::Integer(i) => u64::try_from(i).ok().filter(|v| *v > 0),
        _ => None,
    }
}

/// The job's working directory, with the owner its files must have.
struct Sandbox<'a> {
    dir: &'a Path,
    owner: Option<u32>,
}

impl<'a> Sandbox<'a> {
    fn new(dir: &'a Path) -> Result<Sandbox<'a>, LibvirtError> {
        let meta = std::fs::symlink_metadata(dir).map_err(|e| LibvirtError::BadAttribute {
            attr: "VM_WORKING_DIR",
            why: format!("{}: {e}", dir.display()),
        })?;
        if !meta.is_dir() {
            return Err(LibvirtError::BadAttribute {
                attr: "VM_WORKING_DIR",
                why: format!("{} is not a directory", dir.display()),
            });
        }
        let root = rustix::process::geteuid().is_root();
        if root && meta.uid() == 0 {
            return Err(LibvirtError::BadAttribute {
                attr: "VM_WORKING_DIR",
                why: format!(
                    "{} belongs to root, not to the job's user: not a job sandbox",
                    dir.display()
                ),
            });
        }
        Ok(Sandbox {
            dir,
            owner: root.then_some(meta.uid()),
        })
    }

    /// The path of plain file `name` in the sandbox, checked.
    fn file(&self, attr: &'static str, name: &str) -> Result<PathBuf, LibvirtError> {
        let fail = |why: String| LibvirtError::BadFile {
            attr,
            file: name.to_owned(),
            dir: self.dir.to_owned(),
            why,
        };
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(fail(
                "only a plain file name in the job's sandbox is allowed".to_owned(),
            ));
        }
        let path = self.dir.join(name);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".to_owned()));
        }
        if let Some(owner) = self.owner {
            if meta.uid() != owner {
                return Err(fail(format!(
                    "it belongs to uid {}, the sandbox to uid {owner}",
                    meta.uid()
                )));
            }
        }
        Ok(path)
    }
}

fn esc_path(p: &Path) -> String {
    esc(&p.to_string_lossy())
}

/// XML text and attribute escaping; control characters become spaces (one line).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A job sandbox: owned by an ordinary user, as the starter makes it (when we are root).
    fn sandbox_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        if rustix::process::geteuid().is_root() {
            let nobody = Some(rustix::process::Uid::from_raw(65534));
            for p in
                std::iter::once(d.path().to_owned()).chain(files.iter().map(|f| d.path().join(f)))
            {
                rustix::fs::chown(&p, nobody, None).unwrap();
            }
        }
        d
    }

    fn ad(dir: &Path, extra: &str) -> ClassAd {
        let text = format!(
            "VM_WORKING_DIR = \"{}\"\nVMPARAM_VM_NAME = \"slot1_alice\"\nJobVMType = \"kvm\"\nJobVMMemory = 512\nJobVM_VCPUS = 2\nVMCapsuleDataDisk = \"data.qcow2\"\nVMPARAM_vm_Disk = \"os.qcow2:vda:w:qcow2,data.qcow2:vdb:w:qcow2\"\n{extra}",
            dir.display()
        );
        classad::parse_old_ad(&text).unwrap()
    }

    #[test]
    fn direct_kernel_boot_qemu_domain() {
        let d = sandbox_with(&["os.qcow2", "data.qcow2", "vmlinuz", "initrd.gz"]);
        let a = ad(
            d.path(),
            "VMCapsuleKernel = \"vmlinuz\"\nVMCapsuleInitrd = \"initrd.gz\"\nVMCapsuleKernelArgs = \"root=/dev/ram0 console=ttyS0 a<b\"\n",
        );
        let x = domain_xml(&a, DomainType::Qemu).unwrap();
        let dir = d.path().display();
        assert!(x.starts_with("<domain type='qemu'>\n"), "{x}");
        assert!(
            x.contains(&format!("<kernel>{dir}/vmlinuz</kernel>")),
            "{x}"
        );
        assert!(
            x.contains(&format!("<initrd>{dir}/initrd.gz</initrd>")),
            "{x}"
        );
        assert!(
            x.contains("<cmdline>root=/dev/ram0 console=ttyS0 a&lt;b</cmdline>"),
            "{x}"
        );
        assert!(x.contains("<memory unit='MiB'>512</memory>") && x.contains("<vcpu>2</vcpu>"));
        assert!(x.contains("<target dev='vdb' bus='virtio'/>"));
        assert!(x.contains("<console type='pty'>") && !x.contains("<console type='file'"));
        for e in ["on_poweroff", "on_reboot", "on_crash"] {
            assert!(x.contains(&format!("<{e}>destroy</{e}>")), "{e}");
        }
        assert!(
            !x.contains("host-passthrough"),
            "TCG has no host CPU to pass through"
        );
        let kvm = domain_xml(&a, DomainType::Kvm).unwrap();
        assert!(kvm.starts_with("<domain type='kvm'>") && kvm.contains("host-passthrough"));
    }

    #[test]
    fn others_jobs_and_escapes_are_refused() {
        let d = sandbox_with(&["os.qcow2", "data.qcow2"]);
        let mut a = ad(d.path(), "");
        a.remove(DATA_DISK_ATTR);
        assert!(matches!(
            domain_xml(&a, DomainType::Qemu),
            Err(LibvirtError::NotOurs)
        ));
        for kernel in ["/etc/shadow", "../x", "missing"] {
            let a = ad(d.path(), &format!("VMCapsuleKernel = \"{kernel}\"\n"));
            let err = domain_xml(&a, DomainType::Qemu).unwrap_err().to_string();
            assert!(err.starts_with("VMCapsuleKernel names "), "{err}");
        }
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("link")).unwrap();
        let a = ad(d.path(), "VMCapsuleKernel = \"link\"\n");
        let err = domain_xml(&a, DomainType::Qemu).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        if rustix::process::geteuid().is_root() {
            // A file of another user (root's own), and a working dir that is root's.
            std::fs::write(d.path().join("roots"), b"x").unwrap();
            let a = ad(d.path(), "VMCapsuleKernel = \"roots\"\n");
            let err = domain_xml(&a, DomainType::Qemu).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 0"), "{err}");
            let a = ad(Path::new("/etc"), "");
            let err = domain_xml(&a, DomainType::Qemu).unwrap_err().to_string();
            assert!(err.contains("belongs to root"), "{err}");
        }
    }

    #[test]
    fn domain_type_values() {
        assert_eq!(DomainType::parse("KVM").unwrap(), DomainType::Kvm);
        assert_eq!(DomainType::parse("qemu").unwrap(), DomainType::Qemu);
        assert!(DomainType::parse("xen")
            .unwrap_err()
            .contains(DOMAIN_TYPE_KNOB));
        assert_ne!(DomainType::Auto.resolve(), DomainType::Auto);
    }
}
