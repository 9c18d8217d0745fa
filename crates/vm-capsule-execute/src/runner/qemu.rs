//! The QEMU command line for a [`VmSpec`], built without running anything so tests can read
//! it; and what this host's QEMU supports.
//!
//! The guest is untrusted and QEMU is what it can attack, so the device set is the smallest
//! that boots the capsule (no defaults, no network, no display, no USB, virtio or IDE disks,
//! a serial console into a file), QEMU sandboxes itself with seccomp where it can
//! (`-sandbox on` plus denying obsolete syscalls, privilege changes, spawning and resource
//! control), and under TCG the translation cache is bounded so QEMU's memory stays near the
//! guest's own (it defaults to 1 GiB).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::spec::VmSpec;
use super::Accel;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// The seccomp policy: everything QEMU lets a sandbox deny.
const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// How QEMU is confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// `-sandbox on,...` (QEMU built with seccomp).
    pub seccomp: bool,
    /// TCG translation cache size, MiB.
    pub tb_size_mib: u64,
}

impl Hardening {
    /// What the QEMU at `qemu` supports: seccomp is probed once (a QEMU built without it
    /// refuses the option); `tb_size_mib` is the TCG translation cache to ask for.
    pub fn probe(qemu: &Path, tb_size_mib: u64) -> Hardening {
        let seccomp = Command::new(qemu)
            .args(["-sandbox", SANDBOX, "-version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Hardening {
            seccomp,
            tb_size_mib,
        }
    }
}

/// The command that runs QEMU `qemu` to boot `spec` from the files in `sandbox`, its console
/// into `console`.
pub fn qemu_command(
    qemu: &Path,
    spec: &VmSpec,
    sandbox: &Path,
    console: &Path,
    accel: Accel,
    hardening: Hardening,
) -> Command {
    let mut cmd = Command::new(qemu);
    let accel_arg = match accel {
        Accel::Kvm => "kvm".to_owned(),
        _ if hardening.tb_size_mib == 0 => "tcg".to_owned(),
        _ => format!("tcg,tb-size={}", hardening.tb_size_mib),
    };
    cmd.current_dir(sandbox)
        .args(["-accel", &accel_arg])
        .args(["-m", &spec.memory_mib.to_string()])
        .args(["-smp", &spec.vcpus.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-nic",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        // SeaBIOS mirrors its screen on the serial port at this I/O port (0x3f8, as a
        // little-endian integer): "No bootable device." lands in the console log.
        .arg("-fw_cfg")
        .arg(OsStr::from_bytes(b"name=etc/sercon-port,string=\xf8\x03"));
    if hardening.seccomp {
        cmd.args(["-sandbox", SANDBOX]);
    }
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
    cmd
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runner::spec::Drive;
    use vm_capsule_core::boot::DirectBoot;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn spec(drives: Vec<Drive>, boot: Option<DirectBoot<String>>) -> VmSpec {
        VmSpec {
            iwd: "/iwd".into(),
            transfer: vec![],
            drives,
            memory_mib: 256,
            vcpus: 2,
            boot,
        }
    }

    fn drive(
        file: &str,
        format: &str,
        interface: &'static str,
        writable: bool,
        snapshot: bool,
    ) -> Drive {
        Drive {
            file: file.into(),
            format: format.into(),
            interface,
            writable,
            snapshot,
        }
    }

    const HARD: Hardening = Hardening {
        seccomp: true,
        tb_size_mib: 64,
    };

    #[test]
    fn direct_boot_template() {
        let s = spec(
            vec![drive("data.qcow2", "qcow2", "virtio", true, false)],
            Some(DirectBoot {
                kernel: "vmlinuz".into(),
                initrd: Some("initrd.gz".into()),
                root: Some("/dev/ram0".into()),
                params: "console=ttyS0".into(),
            }),
        );
        let a = args(&qemu_command(
            Path::new(QEMU),
            &s,
            Path::new("/sb"),
            Path::new("/sb/console.log"),
            Accel::Tcg,
            HARD,
        ));
        let joined = a.join(" ");
        assert!(joined.contains("-accel tcg,tb-size=64"), "{joined}");
        assert!(joined.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        assert!(joined.contains("-nic none") && joined.contains("-nodefaults"));
        assert!(joined.contains("-drive file=/sb/data.qcow2,format=qcow2,if=virtio"));
        assert!(joined.contains(
            "-kernel /sb/vmlinuz -initrd /sb/initrd.gz -append root=/dev/ram0 console=ttyS0"
        ));
        assert!(!joined.contains("-netdev") && !joined.contains("usb"));
        assert!(joined.contains("-fw_cfg name=etc/sercon-port"), "{joined}");
    }

    #[test]
    fn disk_booted_template_with_a_read_only_base_and_kvm() {
        let s = spec(
            vec![
                drive("os.img", "raw", "ide", false, false),
                drive("data.img", "raw", "virtio", true, false),
            ],
            None,
        );
        let soft = Hardening {
            seccomp: false,
            tb_size_mib: 64,
        };
        let a = args(&qemu_command(
            Path::new(QEMU),
            &s,
            Path::new("/sb"),
            Path::new("/c"),
            Accel::Kvm,
            soft,
        ))
        .join(" ");
        assert!(a.contains("-accel kvm") && !a.contains("tb-size") && !a.contains("-sandbox"));
        assert!(a.contains("file=/sb/os.img,format=raw,if=ide,readonly=on"));
        assert!(!a.contains("-kernel"));
    }

    #[test]
    fn vmware_template_snapshots_the_os_disk() {
        let s = spec(
            vec![
                drive("os.vmdk", "vmdk", "virtio", false, true),
                drive("data.vmdk", "vmdk", "virtio", true, false),
            ],
            None,
        );
        let a = args(&qemu_command(
            Path::new(QEMU),
            &s,
            Path::new("/sb"),
            Path::new("/c"),
            Accel::Tcg,
            HARD,
        ))
        .join(" ");
        assert!(a.contains("file=/sb/os.vmdk,format=vmdk,if=virtio,snapshot=on"));
        assert!(
            a.contains("file=/sb/data.vmdk,format=vmdk,if=virtio -")
                || a.ends_with("file=/sb/data.vmdk,format=vmdk,if=virtio")
        );
    }
}
