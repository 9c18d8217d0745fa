//! The domain itself: the ad's attributes checked into a [`Domain`] (files opened, images
//! inspected, pinned), then rendered as libvirt's XML.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use capsule_disk::ImageFormat;
use capsule_manifest::node::{NodeSettings, FW_CFG_NAME};
use classad::eval::{integer_attr, string_attr};
use classad::{ClassAd, Value};

use super::disks::{inspect, AllowedBase, Inspected};
use super::sandbox::{Checked, Sandbox};
use super::{pin, LibvirtError, NodeConfig, DATA_DISK_ATTR};
use vm_capsule_core::boot::DirectBoot;
use vm_capsule_core::node_image::{self, NodeBase};
use vm_capsule_core::template::{parse_vm_disks, VmDiskEntry};

/// The knob choosing the domain type.
pub const DOMAIN_TYPE_KNOB: &str = vm_capsule_core::settings::knobs::LIBVIRT_DOMAIN_TYPE.name;

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

/// One disk of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Disk {
    path: PathBuf,
    device: String,
    bus: &'static str,
    readonly: bool,
    /// The format libvirt is told (none for Xen, whose driver reads it from the image).
    format: Option<ImageFormat>,
    /// The node image below an overlay, with its format.
    base: Option<(PathBuf, ImageFormat)>,
}

/// What the domain is made of, checked.
#[derive(Debug)]
pub(super) struct Domain {
    kind: &'static str,
    name: String,
    memory_mib: u64,
    vcpus: u64,
    boot: Option<DirectBoot<PathBuf>>,
    bootloader: Option<String>,
    disks: Vec<Disk>,
    /// The node's read-only host paths.
    shares: NodeSettings,
}

/// A disk of `VMPARAM_vm_Disk`, its file checked and inspected, not yet pinned.
struct Staged {
    device: String,
    readonly: bool,
    checked: Checked,
    inspected: Inspected,
}

impl Domain {
    /// Check everything `ad` names and pin the files for libvirt.
    pub(super) fn from_ad(ad: &ClassAd, node: &NodeConfig) -> Result<Domain, LibvirtError> {
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
        if entries.is_empty() {
            return Err(bad("VMPARAM_vm_Disk", "names no disk"));
        }
        let bases = node_image::from_routed_ad(ad).map_err(|e| LibvirtError::BadAttribute {
            attr: node_image::OVERLAY_ATTR,
            why: e.to_string(),
        })?;
        let name = string_attr(ad, "VMPARAM_VM_NAME").unwrap_or_else(|| {
            let id = |a| integer_attr(ad, a).unwrap_or(0);
            format!("vm-capsule-{}.{}", id("ClusterId"), id("ProcId"))
        });
        // Checked before anything of the job is taken, so a refusal gives nothing back.
        let needed =
            vm_capsule_core::host_paths::wanted(ad).map_err(|why| LibvirtError::BadAttribute {
                attr: vm_capsule_core::host_paths::ATTR,
                why,
            })?;
        let shares = crate::host_paths::shares(&node.host_paths, &needed)?;
        let mut sandbox = Sandbox::open(&dir)?;
        let checked = Self::check(ad, node, &mut sandbox, &entries, &bases, &name);
        if checked.is_err() {
            sandbox.give_back();
        }
        let (disks, boot) = checked?;
        let bootloader = string_attr(ad, "VMPARAM_Xen_Bootloader")
            .filter(|l| xen && boot.is_none() && !l.is_empty());
        Ok(Domain {
            kind: match (xen, node.domain) {
                (true, _) => "xen",
                (false, DomainType::Kvm) => "kvm",
                (false, _) => "qemu",
            },
            name,
            memory_mib,
            vcpus: positive(ad, "JobVM_VCPUS").unwrap_or(1),
            boot,
            bootloader,
            disks,
            shares,
        })
    }

    /// Open, take and inspect every file, then pin them: the disks and the boot files.
    fn check(
        ad: &ClassAd,
        node: &NodeConfig,
        sandbox: &mut Sandbox,
        entries: &[VmDiskEntry],
        bases: &[NodeBase],
        name: &str,
    ) -> Result<(Vec<Disk>, Option<DirectBoot<PathBuf>>), LibvirtError> {
        let xen = string_attr(ad, "JobVMType").is_some_and(|t| t.eq_ignore_ascii_case("xen"));
        // Every file is opened and taken from the job's user before any is read.
        let mut opened = Vec::new();
        for e in entries {
            opened.push(sandbox.open_file("VMPARAM_vm_Disk", &e.file)?);
        }
        let boot = DirectBoot::from_routed_ad(ad)
            .map(|b| -> Result<_, LibvirtError> {
                Ok(DirectBoot {
                    kernel: sandbox.open_file("VMCapsuleKernel", &b.kernel)?,
                    // The vm-gahp appends `VMPARAM_Xen_Initrd = ""` when the ad has none.
                    initrd: b
                        .initrd
                        .as_deref()
                        .filter(|i| !i.is_empty())
                        .map(|i| sandbox.open_file("VMCapsuleInitrd", i))
                        .transpose()?,
                    root: b.root.clone(),
                    params: b.params.clone(),
                })
            })
            .transpose()?;
        let boot_files: Vec<&Checked> = boot
            .iter()
            .flat_map(|b| std::iter::once(&b.kernel).chain(b.initrd.as_ref()))
            .collect();
        let all: Vec<&Checked> = opened.iter().chain(boot_files.iter().copied()).collect();
        sandbox.refuse_writers(&all)?;
        let mut staged = Vec::new();
        for (e, checked) in entries.iter().zip(opened) {
            let base = bases.iter().find(|b| b.overlay == e.file);
            let inspected = inspect_entry(sandbox, node, &checked, base)?;
            let detected = inspected.format;
            if let Some(said) = e.format.as_deref().filter(|f| *f != detected.name()) {
                return Err(LibvirtError::BadFile {
                    attr: "VMPARAM_vm_Disk",
                    file: e.file.clone(),
                    dir: sandbox.path.clone(),
                    why: format!("it is said to be {said}, but the image is {detected}"),
                });
            }
            staged.push(Staged {
                device: e.device.clone(),
                readonly: !e.writable,
                checked,
                inspected,
            });
        }
        let mut to_pin: Vec<&Checked> = staged.iter().map(|s| &s.checked).collect();
        to_pin.extend(boot_files.iter().copied());
        let pinned = pin::pin(sandbox, name, &to_pin, node.condor_uid)?;
        // Nobody may have opened a file for writing while it was read.
        sandbox.refuse_writers(&to_pin)?;
        let mut paths = pinned.into_iter();
        let disks = staged
            .into_iter()
            .map(|s| Disk {
                path: paths.next().unwrap_or_default(),
                bus: bus(&s.device, xen),
                readonly: s.readonly,
                device: s.device,
                // libvirt's Xen driver takes the format from the image itself.
                format: (!xen).then_some(s.inspected.format),
                base: s.inspected.base,
            })
            .collect();
        let boot = boot.map(|b| DirectBoot {
            kernel: paths.next().unwrap_or_default(),
            initrd: b.initrd.map(|_| paths.next().unwrap_or_default()),
            root: b.root,
            params: b.params,
        });
        Ok((disks, boot))
    }

    /// The XML, one element per line (the vm-gahp joins the lines).
    pub(super) fn render(&self) -> String {
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
        if !self.shares.host_paths.is_empty() {
            // One line: the vm-gahp joins the script's lines without newlines.
            let _ = writeln!(
                x,
                "  <sysinfo type='fwcfg'><entry name='{FW_CFG_NAME}'>{}</entry></sysinfo>",
                self.shares
                    .to_text()
                    .lines()
                    .map(|l| esc(l) + "&#10;")
                    .collect::<String>()
            );
        }
        if self.kind == "kvm" {
            let _ = writeln!(x, "  <cpu mode='host-passthrough'/>");
        }
        // The job ends when the guest powers off, whatever else happens.
        for event in ["on_poweroff", "on_reboot", "on_crash"] {
            let _ = writeln!(x, "  <{event}>destroy</{event}>");
        }
        let _ = writeln!(x, "  <devices>");
        for d in &self.disks {
            d.render(&mut x, self.kind == "xen");
        }
        render_shares(&mut x, &self.shares);
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

/// Inspect one disk; an overlay the routed ad pairs with a node image may name that image.
fn inspect_entry(
    sandbox: &Sandbox,
    node: &NodeConfig,
    checked: &Checked,
    base: Option<&NodeBase>,
) -> Result<Inspected, LibvirtError> {
    let allowed = base.map(|base| AllowedBase {
        base,
        dir: node.node_image_dir.as_deref(),
    });
    inspect(
        checked,
        &sandbox.path.join(&checked.name),
        &sandbox.path,
        allowed.as_ref(),
    )
}

impl Disk {
    fn render(&self, x: &mut String, xen: bool) {
        let _ = writeln!(x, "    <disk type='file' device='disk'>");
        if let Some(f) = self.format {
            let _ = writeln!(x, "      <driver name='qemu' type='{}'/>", f.name());
        }
        // The checked files are already the QEMU user's (see `sandbox`): libvirt's relabelling
        // would only risk giving them back as root's.
        if xen {
            let _ = writeln!(x, "      <source file='{}'/>", esc_path(&self.path));
        } else {
            let _ = writeln!(
                x,
                "      <source file='{}'><seclabel model='dac' relabel='no'/></source>",
                esc_path(&self.path)
            );
        }
        // The chain is spelled out: libvirt must not read one from the image.
        match &self.base {
            Some((base, format)) => {
                let _ = writeln!(x, "      <backingStore type='file'>");
                let _ = writeln!(x, "        <format type='{}'/>", format.name());
                // libvirt's QEMU driver would make the admin's image its QEMU user's, and
                // leave it so (the Xen driver relabels nothing, and knows no DAC labels).
                let label = if xen {
                    ""
                } else {
                    "<seclabel model='dac' relabel='no'/>"
                };
                let _ = writeln!(
                    x,
                    "        <source file='{}'>{label}</source>",
                    esc_path(base)
                );
                let _ = writeln!(x, "        <backingStore/>");
                let _ = writeln!(x, "      </backingStore>");
            }
            None => {
                let _ = writeln!(x, "      <backingStore/>");
            }
        }
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
/// The node's read-only host paths, as 9p shares: libvirt's `<readonly/>` is QEMU's
/// `readonly=on`, and `squash` (QEMU's `security_model=none`) sets no owners on the host.
fn render_shares(x: &mut String, shares: &NodeSettings) {
    for h in &shares.host_paths {
        let _ = writeln!(
            x,
            "    <filesystem type='mount' accessmode='squash'><source dir='{}'/><target dir='{}'/><readonly/></filesystem>",
            esc(&h.path),
            esc(&h.tag)
        );
    }
}

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
