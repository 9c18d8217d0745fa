//! The VM around the capsule: template OS disks linked in, overlays, the VMware `.vmx`.

use std::fs;
use std::io;
use std::path::Path;

use capsule_disk::Image;

use crate::job::JobSpec;
use crate::routed::{Staged, VmDisk};
use crate::template::overlay::create_overlay;
use crate::template::{Flavour, Template};

use super::*;

/// Link the template's OS disks into scratch and describe the VM.
pub(super) fn stage_vm(
    cfg: &TranslateConfig,
    job: &JobSpec,
    template: &Template,
    scratch: &Path,
    data_name: &str,
) -> Result<Staged, TranslateError> {
    let _ = cfg;
    let mut disks = Vec::new();
    let mut transfer = Vec::new();
    for disk in &template.os_disks {
        let info = Image::open(&disk.path, capsule_disk::Access::ReadOnly)
            .map(|img| img.info())
            .map_err(|e| {
                permanent(
                    job,
                    format!("template OS disk {}: {e}", disk.path.display()),
                )
            })?;
        // The base and everything it is made of (extents, backing files) travel read-only.
        for file in &info.files {
            let name = link_into(file, scratch).map_err(|e| {
                transient(
                    &format!("cannot link template file {} into scratch", file.display()),
                    e,
                )
            })?;
            transfer.push(name);
        }
        let base_name = file_name(&disk.path);
        match template.flavour {
            Flavour::Kvm | Flavour::Xen => {
                // A small writable overlay keeps the base untouched on the execute node.
                let overlay = format!("{}.overlay.qcow2", stem(&base_name));
                create_overlay(
                    &scratch.join(&overlay),
                    &base_name,
                    disk.format.name(),
                    info.virtual_size,
                )
                .map_err(|e| transient(&format!("cannot create overlay {overlay}"), e))?;
                transfer.push(overlay.clone());
                disks.push(VmDisk {
                    file: overlay,
                    device: disk.device.clone(),
                    perm: "w",
                    format: "qcow2",
                });
            }
            Flavour::Vmware => disks.push(VmDisk {
                file: base_name,
                device: disk.device.clone(),
                perm: "w",
                format: "vmdk",
            }),
        }
    }
    let data_format = template.data_disk.format.name();
    disks.push(VmDisk {
        file: data_name.to_owned(),
        device: template.data_disk.device.clone(),
        perm: "w",
        format: data_format,
    });
    transfer.push(data_name.to_owned());
    let vmx = match (&template.flavour, &template.vmx) {
        (Flavour::Vmware, Some(vmx)) => {
            let name = file_name(vmx);
            write_vmx(vmx, &scratch.join(&name), data_name)
                .map_err(|e| transient(&format!("cannot write {name}"), e))?;
            transfer.push(name.clone());
            Some(name)
        }
        _ => None,
    };
    // Exactly the files the boot names travel, under the names the routed ad gives them.
    let boot = match &template.boot {
        Some(boot) => {
            for file in std::iter::once(&boot.kernel).chain(boot.initrd.as_ref()) {
                let name = link_into(file, scratch).map_err(|e| {
                    transient(&format!("cannot link {} into scratch", file.display()), e)
                })?;
                transfer.push(name);
            }
            Some(boot.map(|p| file_name(p)))
        }
        None => None,
    };
    let template_memory = match classad::eval::evaluate_attr(&template.vm_attrs, "JobVMMemory") {
        classad::Value::Integer(m) => u64::try_from(m).ok(),
        _ => None,
    };
    let memory_mib = template_memory
        .unwrap_or(cfg.default_memory_mib)
        .max(job.request_memory_mib.map_or(0, |m| m + 64));
    let vcpus = job.request_cpus.unwrap_or(1).max(1);
    Ok(Staged {
        scratch: scratch.display().to_string(),
        disks,
        transfer,
        data_disk: data_name.to_owned(),
        memory_mib,
        vcpus,
        vmx,
        boot,
    })
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

pub(super) fn stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

/// Hard-link `file` into `dir` under its own name (never a copy); a symlink where hard links
/// cannot cross file systems. Returns the name.
pub(super) fn link_into(file: &Path, dir: &Path) -> io::Result<String> {
    let name = file_name(file);
    let dest = dir.join(&name);
    if dest.exists() {
        return Ok(name);
    }
    match fs::hard_link(file, &dest) {
        Ok(()) => Ok(name),
        Err(_) => {
            let absolute = fs::canonicalize(file)?;
            std::os::unix::fs::symlink(absolute, &dest)?;
            Ok(name)
        }
    }
}

/// Copy the template's `.vmx`, marking the data disk independent-persistent so VMware writes
/// it in place (not into a snapshot delta) while OS disks stay snapshotted.
pub(super) fn write_vmx(src: &Path, dest: &Path, data_name: &str) -> io::Result<()> {
    let text = fs::read_to_string(src)?;
    let mut out = String::new();
    let mut data_key = None;
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim();
            let value = value.trim().trim_matches('"');
            if key.ends_with(".fileName") && value == data_name {
                data_key = key.strip_suffix(".fileName").map(str::to_owned);
            }
            if data_key
                .as_deref()
                .is_some_and(|k| key == format!("{k}.mode"))
            {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(k) = data_key {
        out.push_str(&format!("{k}.mode = \"independent-persistent\"\n"));
    }
    fs::write(dest, out)
}
