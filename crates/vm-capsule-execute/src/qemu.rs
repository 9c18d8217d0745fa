//! Finding QEMU and knowing whether KVM is usable, the same way for the launcher, the startd
//! probe, `doctor` and the libvirt domain script.
//!
//! QEMU is, in order: the `VM_CAPSULE_QEMU` knob (a path, or a name looked up on `PATH`),
//! `qemu-system-x86_64` on `PATH` (Debian, Ubuntu, Fedora), `/usr/libexec/qemu-kvm` (RHEL
//! and its rebuilds, where it is not on `PATH`).
//!
//! KVM counts as usable only when the kernel has a hardware KVM module (`kvm_intel` or
//! `kvm_amd`), the CPU says `vmx` or `svm`, and `/dev/kvm` can be opened for reading and
//! writing: a `/dev/kvm` alone is not enough (paravirtual layers provide one that hangs
//! guests).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The knob naming QEMU.
pub const QEMU_KNOB: &str = vm_capsule_core::settings::knobs::QEMU.name;
/// QEMU's name on `PATH`.
pub const QEMU_NAME: &str = "qemu-system-x86_64";
/// Where RHEL puts QEMU.
pub const RHEL_QEMU: &str = "/usr/libexec/qemu-kvm";
/// The KVM device.
pub const DEV_KVM: &str = "/dev/kvm";
/// `PATH` assumed when the environment has none (a job's environment may not).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// QEMU was not found.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum QemuNotFound {
    /// The knob names something that is not an executable file.
    #[error("{QEMU_KNOB} = {value} is not an executable file; hint: point it at QEMU (e.g. /usr/bin/{QEMU_NAME} or {RHEL_QEMU}) or unset it")]
    BadKnob {
        /// The knob's value.
        value: String,
    },
    /// Nothing anywhere.
    #[error("QEMU not found: {QEMU_KNOB} is not set, no {QEMU_NAME} on PATH ({path}), no {RHEL_QEMU}; hint: install it (Debian/Ubuntu: apt-get install qemu-system-x86; RHEL: dnf install qemu-kvm) or set {QEMU_KNOB}")]
    Nowhere {
        /// The `PATH` searched.
        path: String,
    },
}

/// Find QEMU: `knob` (the value of `VM_CAPSULE_QEMU`), then `path`, then [`RHEL_QEMU`].
///
/// # Errors
/// [`QemuNotFound`] saying where it looked.
pub fn find_qemu(knob: Option<&str>, path: Option<&OsStr>) -> Result<PathBuf, QemuNotFound> {
    let path: OsString = path
        .filter(|p| !p.is_empty())
        .map_or_else(|| DEFAULT_PATH.into(), OsStr::to_os_string);
    if let Some(value) = knob.map(str::trim).filter(|v| !v.is_empty()) {
        let found = if value.contains('/') {
            Some(PathBuf::from(value)).filter(|p| is_executable(p))
        } else {
            on_path(value, &path)
        };
        return found.ok_or_else(|| QemuNotFound::BadKnob {
            value: value.to_owned(),
        });
    }
    if let Some(p) = on_path(QEMU_NAME, &path) {
        return Ok(p);
    }
    let rhel = Path::new(RHEL_QEMU);
    if is_executable(rhel) {
        return Ok(rhel.to_owned());
    }
    Err(QemuNotFound::Nowhere {
        path: path.to_string_lossy().into_owned(),
    })
}

fn on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What the host offers for KVM, and why not when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmStatus {
    /// Hardware KVM: a `kvm_intel`/`kvm_amd` module and CPU support.
    pub hardware: Result<(), String>,
    /// `/dev/kvm`'s mode, owner and group, when it exists.
    pub device: Option<DeviceMode>,
}

/// Ownership and permission bits of a device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMode {
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
}

impl DeviceMode {
    /// Whether a user with `uid` and groups `gids` may open it for reading and writing.
    pub fn allows(&self, uid: u32, gids: &[u32]) -> bool {
        if uid == 0 {
            return true;
        }
        let rw = |shift: u32| (self.mode >> shift) & 0o6 == 0o6;
        if uid == self.uid {
            return rw(6);
        }
        if gids.contains(&self.gid) {
            return rw(3);
        }
        rw(0)
    }

    /// Whether every user may open it.
    pub fn allows_everyone(&self) -> bool {
        self.mode & 0o006 == 0o006
    }
}

impl KvmStatus {
    /// Look at this host.
    pub fn probe() -> KvmStatus {
        let module = Path::new("/sys/module/kvm_intel").exists()
            || Path::new("/sys/module/kvm_amd").exists();
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|c| c.contains(" vmx") || c.contains(" svm"));
        let hardware = if !module {
            Err("no kvm_intel or kvm_amd kernel module is loaded (a /dev/kvm without them is not hardware KVM)".to_owned())
        } else if !cpu {
            Err("the CPU advertises neither vmx nor svm".to_owned())
        } else {
            Ok(())
        };
        let device = fs::metadata(DEV_KVM).ok().map(|m| DeviceMode {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        });
        KvmStatus { hardware, device }
    }

    /// Why KVM is unusable for a user with `uid` and `gids`, `None` when it is usable.
    pub fn unusable_for(&self, uid: u32, gids: &[u32]) -> Option<String> {
        if let Err(why) = &self.hardware {
            return Some(why.clone());
        }
        match &self.device {
            None => Some(format!("{DEV_KVM} does not exist")),
            Some(d) if !d.allows(uid, gids) => Some(format!(
                "{DEV_KVM} (mode {:o}, uid {}, gid {}) is not readable and writable by uid {uid}; hint: {}",
                d.mode, d.uid, d.gid, KVM_ACCESS_HINT
            )),
            Some(_) => None,
        }
    }

    /// Why KVM is unusable for an arbitrary slot user, `None` when anyone may use it.
    pub fn unusable_for_slot_users(&self) -> Option<String> {
        if let Err(why) = &self.hardware {
            return Some(why.clone());
        }
        match &self.device {
            None => Some(format!("{DEV_KVM} does not exist")),
            Some(d) if !d.allows_everyone() => Some(format!(
                "{DEV_KVM} (mode {:o}, gid {}) is not open to every slot user; hint: {}",
                d.mode, d.gid, KVM_ACCESS_HINT
            )),
            Some(_) => None,
        }
    }
}

/// How slot users get `/dev/kvm`.
pub const KVM_ACCESS_HINT: &str = "make /dev/kvm rw for the slot users: a udev rule KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0666\" (docs/ADMIN.md, /dev/kvm), or add the slot users to its group";

/// Whether this process may use KVM now (hardware KVM and `/dev/kvm` opens read-write).
pub fn kvm_usable_here() -> bool {
    KvmStatus::probe().hardware.is_ok()
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEV_KVM)
            .is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn knob_then_path() {
        let d = tempfile::tempdir().unwrap();
        let a = exe(d.path(), QEMU_NAME);
        let custom = exe(d.path(), "my-qemu");
        let path = d.path().as_os_str();
        assert_eq!(find_qemu(None, Some(path)).unwrap(), a);
        assert_eq!(
            find_qemu(Some(custom.to_str().unwrap()), Some(path)).unwrap(),
            custom
        );
        assert_eq!(find_qemu(Some("my-qemu"), Some(path)).unwrap(), custom);
        let err = find_qemu(Some("/nonexistent/qemu"), Some(path)).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("VM_CAPSULE_QEMU = /nonexistent/qemu is not"));
    }

    #[test]
    fn nowhere_names_every_place() {
        let d = tempfile::tempdir().unwrap();
        match find_qemu(None, Some(d.path().as_os_str())) {
            // This machine may have a RHEL-style QEMU; then it is found there.
            Ok(p) => assert_eq!(p, PathBuf::from(RHEL_QEMU)),
            Err(e) => {
                let t = e.to_string();
                assert!(
                    t.contains(RHEL_QEMU) && t.contains(&d.path().display().to_string()),
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn device_permissions() {
        let d = DeviceMode {
            mode: 0o660,
            uid: 0,
            gid: 104,
        };
        assert!(d.allows(0, &[]));
        assert!(d.allows(1000, &[104]));
        assert!(!d.allows(1000, &[1000]));
        assert!(!d.allows_everyone());
        let open = DeviceMode { mode: 0o666, ..d };
        assert!(open.allows(1000, &[]) && open.allows_everyone());
        let s = KvmStatus {
            hardware: Ok(()),
            device: Some(d),
        };
        let why = s.unusable_for(1000, &[1000]).unwrap();
        assert!(why.contains("mode 660") && why.contains("udev"), "{why}");
        assert_eq!(s.unusable_for(1000, &[104]), None);
        let no_hw = KvmStatus {
            hardware: Err("no module".into()),
            device: Some(open),
        };
        assert_eq!(
            no_hw.unusable_for_slot_users().as_deref(),
            Some("no module")
        );
    }
}
