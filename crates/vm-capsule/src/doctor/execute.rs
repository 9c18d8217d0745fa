//! The execute side: QEMU and KVM for the vanilla flavour, the startd probe, libvirt for the
//! VM universe.

use std::path::Path;

use super::{ConfigSource, Report, Side};
use crate::probe::Probe;
use crate::qemu::{KvmStatus, KVM_ACCESS_HINT, QEMU_KNOB};
use crate::snippet::{command_for_program, LIBEXEC_DIR};

/// A user whose KVM access to check (`--user`).
#[derive(Debug, Clone)]
pub struct SlotUser {
    /// The name, for messages.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary and supplementary gids.
    pub gids: Vec<u32>,
}

impl SlotUser {
    /// Look `name` up in `/etc/passwd` and `/etc/group`.
    ///
    /// # Errors
    /// When the user is not in `/etc/passwd`.
    pub fn lookup(name: &str) -> Result<SlotUser, String> {
        let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
        let (uid, gid) = passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&name)).then(|| {
                    Some((
                        f.get(2)?.parse::<u32>().ok()?,
                        f.get(3)?.parse::<u32>().ok()?,
                    ))
                })?
            })
            .ok_or_else(|| format!("no user {name} in /etc/passwd"))?;
        let mut gids = vec![gid];
        if let Ok(group) = std::fs::read_to_string("/etc/group") {
            for l in group.lines() {
                let f: Vec<&str> = l.split(':').collect();
                let members = f.get(3).copied().unwrap_or_default();
                if members.split(',').any(|m| m == name) {
                    if let Some(g) = f.get(2).and_then(|g| g.parse().ok()) {
                        gids.push(g);
                    }
                }
            }
        }
        Ok(SlotUser {
            name: name.to_owned(),
            uid,
            gids,
        })
    }
}

/// Check the execute side; `user` is the slot user to check KVM for (else any slot user).
pub fn check(
    config: &ConfigSource,
    knobs: &crate::config::Knobs,
    user: Option<&SlotUser>,
    report: &mut Report,
) {
    let mut s = Side {
        side: "execute",
        report,
    };
    let probe = Probe::run(knobs.get(QEMU_KNOB));
    match &probe.qemu {
        Ok((path, version)) => s.ok("QEMU", format!("{} (version {version})", path.display())),
        Err(why) => s.fail(
            "QEMU",
            why.clone(),
            format!("install QEMU (Debian/Ubuntu: apt-get install qemu-system-x86; RHEL: dnf install qemu-kvm) or set {QEMU_KNOB}"),
        ),
    }
    let kvm = KvmStatus::probe();
    let (who, why) = match user {
        Some(u) => (format!("user {}", u.name), kvm.unusable_for(u.uid, &u.gids)),
        None => ("every slot user".to_owned(), kvm.unusable_for_slot_users()),
    };
    match why {
        None => s.ok("KVM", format!("usable by {who}")),
        Some(why) => s.warn(
            "KVM",
            format!("not usable by {who}, so jobs run under TCG emulation (several times slower): {why}"),
            if kvm.hardware.is_ok() {
                KVM_ACCESS_HINT.to_owned()
            } else {
                "nothing to fix unless this machine should have hardware KVM (load kvm_intel or kvm_amd)".to_owned()
            },
        ),
    }
    check_probe_config(&mut s, config, &probe);
    check_vm_universe(&mut s, config);
}

fn check_probe_config(s: &mut Side<'_>, config: &ConfigSource, probe: &Probe) {
    let attrs = crate::hooks::ad_lines(&probe.attributes())
        .unwrap_or_default()
        .lines()
        .collect::<Vec<_>>()
        .join(", ");
    let jobs = config.get("STARTD_CRON_JOBLIST").unwrap_or_default();
    let configured = jobs.split([',', ' ']).filter(|j| !j.is_empty()).any(|j| {
        config
            .get(&format!("STARTD_CRON_{j}_EXECUTABLE"))
            .is_some_and(|exe| command_for_program(Path::new(exe.trim())) == Some("probe"))
    });
    if configured {
        s.ok("startd probe", format!("configured; it advertises {attrs}"));
    } else if !matches!(config, ConfigSource::Missing(_)) {
        s.warn(
            "startd probe",
            format!("not configured: nothing advertises {}; right now it would say {attrs}", crate::probe::HAS_QEMU),
            format!("STARTD_CRON_JOBLIST = $(STARTD_CRON_JOBLIST) VMCAPSULE, STARTD_CRON_VMCAPSULE_EXECUTABLE = {LIBEXEC_DIR}/vm-capsule-probe, STARTD_CRON_VMCAPSULE_PERIOD = 10m"),
        );
    }
}

fn check_vm_universe(s: &mut Side<'_>, config: &ConfigSource) {
    let Some(vm_type) = config.get("VM_TYPE") else {
        s.info(
            "VM_TYPE",
            "not set: no VM universe here (the vanilla flavour does not need it)",
        );
        return;
    };
    s.ok("VM_TYPE", vm_type.trim().to_owned());
    match config.get("VM_MEMORY") {
        Some(m) => s.ok("VM_MEMORY", format!("{} MiB for VMs", m.trim())),
        None => s.fail(
            "VM_MEMORY",
            "not set: the startd offers no VM universe without it",
            "VM_MEMORY = <MiB all VMs on this node may use together>, e.g. 4096",
        ),
    }
    match config.get("LIBVIRT_XML_SCRIPT") {
        Some(p) if command_for_program(Path::new(p.trim())) == Some("libvirt-xml") => {
            match crate::perms::unsafe_program(Path::new(p.trim())) {
                None => s.ok("LIBVIRT_XML_SCRIPT", p.trim().to_owned()),
                Some(why) => s.fail("LIBVIRT_XML_SCRIPT", why, format!("run `vm-capsule install-hooks {LIBEXEC_DIR}`")),
            }
        }
        other => s.fail(
            "LIBVIRT_XML_SCRIPT",
            format!(
                "{}: HTCondor's built-in domain XML lets a job's disk images name host files that root's libvirt then opens (docs/ADMIN.md section 2c), cannot boot a direct-kernel template and is always of type kvm",
                other.map_or_else(|| "not set".to_owned(), |p| format!("{} is not vm-capsule-libvirt-xml", p.trim()))
            ),
            format!("LIBVIRT_XML_SCRIPT = {LIBEXEC_DIR}/vm-capsule-libvirt-xml"),
        ),
    }
    let virsh = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([Path::new("/usr/bin").to_owned()])
        .map(|d| d.join("virsh"))
        .find(|p| p.is_file());
    match virsh {
        Some(p) => s.ok("libvirt", format!("{} present", p.display())),
        None => s.warn(
            "libvirt",
            "virsh not found: is libvirt installed?",
            "Debian/Ubuntu: apt-get install libvirt-daemon-system libvirt-clients; RHEL: dnf install libvirt",
        ),
    }
    let interval = config
        .get("VM_STATUS_INTERVAL")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(60);
    if interval > 30 {
        s.info(
            "VM_STATUS_INTERVAL",
            format!("{interval} s: a job ends up to {interval} s after its VM powered off; 30 (the minimum) shortens that"),
        );
    } else {
        s.ok("VM_STATUS_INTERVAL", format!("{interval} s"));
    }
}
