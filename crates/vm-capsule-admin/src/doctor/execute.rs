//! The execute side: QEMU and KVM for the vanilla flavour, the startd probe, libvirt for the
//! VM universe.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::started::Start;
use super::{ConfigSource, Report, Side};
use crate::snippet::LIBEXEC_DIR;
use vm_capsule_core::environment::Environment;
use vm_capsule_execute::probe::Probe;
use vm_capsule_execute::qemu::{KvmStatus, KVM_ACCESS_HINT, QEMU_KNOB};

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

/// Check the execute side; `user` is the slot user to check KVM for (else any slot user),
/// `env` says where programs are looked for, `package_config` is the package's
/// configuration file.
pub fn check(
    config: &ConfigSource,
    settings: &vm_capsule_core::settings::Settings,
    env: &Environment,
    user: Option<&SlotUser>,
    package_config: &Path,
    report: &mut Report,
) {
    let mut s = Side {
        side: "execute",
        report,
    };
    // Without the configuration nothing below can be judged: the probe's cron job and the VM
    // universe are configuration, and a node that cannot read it is not ready.
    super::check_config_source(&mut s, config);
    super::check_package_config(&mut s, config, package_config);
    // Every knob set for this side, against its type in the table.
    for (knob, _) in settings.set_knobs() {
        if knob.side == vm_capsule_core::settings::Side::Execute {
            if let Err(e) = settings.check(knob) {
                s.fail(knob.name, e.to_string(), knob.kind.expected());
            }
        }
    }
    let qemu = settings.run().ok().and_then(|run| run.qemu);
    let probe = Probe::run(qemu.as_deref(), env.path());
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
    check_network(&mut s, settings, env.path());
    if !matches!(config, ConfigSource::Missing(_)) {
        check_probe_config(&mut s, config, &probe);
        check_vm_universe(&mut s, config, env.path());
        super::policy::check(&mut s, config, settings);
    }
}

/// Network on request: with `VM_CAPSULE_NETWORK = nat` the launcher needs `passt`.
fn check_network(
    s: &mut Side<'_>,
    settings: &vm_capsule_core::settings::Settings,
    path: Option<&OsStr>,
) {
    let Ok(run) = settings.run() else { return };
    if !run.network {
        s.ok(
            "network",
            "none: jobs that ask for a network do not match here (VM_CAPSULE_NETWORK = none)"
                .to_owned(),
        );
        return;
    }
    match vm_capsule_execute::network::find_passt(run.passt.as_deref(), path) {
        Ok(p) => s.ok("network", format!("nat through {} for jobs that ask", p.display())),
        Err(why) => s.fail(
            "network",
            why,
            "install passt (Debian/Ubuntu: apt-get install passt; RHEL: dnf install passt), or set VM_CAPSULE_NETWORK = none".to_owned(),
        ),
    }
}

/// The probe's cron job, run as the startd runs it: argv[0] is the job's name, so only a
/// command given in `_ARGS` reaches the program.
fn check_probe_config(s: &mut Side<'_>, config: &ConfigSource, probe: &Probe) {
    const CHECK: &str = "startd probe";
    let jobs = config.get("STARTD_CRON_JOBLIST").unwrap_or_default();
    let mut ours = 0;
    for name in jobs.split([',', ' ']).filter(|j| !j.is_empty()) {
        let start = match Start::startd_cron(config, name) {
            Ok(start) if start.is_vm_capsule() => start,
            Ok(_) => continue,
            Err(why) => {
                s.fail(CHECK, why, probe_fix(name, None));
                continue;
            }
        };
        ours += 1;
        let fix = probe_fix(name, Some(&start.exe));
        // Another command is not run: doctor starts only what cannot change anything.
        if let Some(other) = start.command().filter(|c| c != "probe") {
            s.fail(
                CHECK,
                format!(
                    "STARTD_CRON_{name} runs `vm-capsule {other}` ({}), not the probe",
                    start.describe()
                ),
                fix,
            );
            continue;
        }
        match start.run(b"") {
            Err(why) => s.fail(CHECK, format!("as the startd runs it: {why}"), fix),
            Ok(ran) if ran.code == Some(0) && ran.stdout.contains(vm_capsule_execute::probe::HAS_QEMU) => {
                let attrs: Vec<&str> = ran.stdout.lines().collect();
                s.ok(
                    CHECK,
                    format!(
                        "STARTD_CRON_{name} runs as the startd runs it ({}); it advertises {}",
                        start.describe(),
                        attrs.join(", ")
                    ),
                );
            }
            Ok(ran) => s.fail(
                CHECK,
                format!(
                    "broken: the startd runs {}, and so it {}: {}; no slot advertises {}, so routed vanilla-flavour jobs never start",
                    start.describe(),
                    ran.code.map_or_else(|| "dies by a signal".to_owned(), |c| format!("exits {c}")),
                    ran.last_error_line(),
                    vm_capsule_execute::probe::HAS_QEMU
                ),
                fix,
            ),
        }
    }
    if ours == 0 {
        let attrs = classad::print::ad_to_hook_string(&probe.attributes())
            .unwrap_or_default()
            .lines()
            .collect::<Vec<_>>()
            .join(", ");
        let detail = format!(
            "not configured: nothing advertises {}; right now it would say {attrs}",
            vm_capsule_execute::probe::HAS_QEMU
        );
        let fix = probe_fix("VMCAPSULE", None)
            + " and STARTD_CRON_JOBLIST = $(STARTD_CRON_JOBLIST) VMCAPSULE, STARTD_CRON_VMCAPSULE_PERIOD = 10m";
        match config.flavour().as_deref() {
            // The routed vanilla job requires HasVMCapsuleQemu: without it, it never starts.
            Some("vanilla") => s.fail(
                CHECK,
                format!(
                    "{detail}: with VM_CAPSULE_FLAVOUR = vanilla, routed jobs never start here"
                ),
                fix,
            ),
            Some("vm") => s.info(CHECK, "not configured, not needed: VM_CAPSULE_FLAVOUR = vm"),
            _ => s.warn(CHECK, detail, fix),
        }
    }
}

/// The working form of the probe's cron job, beside the configured program when there is one.
fn probe_fix(name: &str, configured: Option<&Path>) -> String {
    format!(
        "STARTD_CRON_{name}_EXECUTABLE = {}, STARTD_CRON_{name}_ARGS = probe (the startd passes the cron job's name as argv[0]: the command must be an argument)",
        vm_capsule_beside(configured).display()
    )
}

/// The `vm-capsule` program for a fix: the one a configured link of ours leads to, else the
/// one beside it, else the packaged one.
fn vm_capsule_beside(configured: Option<&Path>) -> PathBuf {
    let named = |p: &Path| p.file_name().is_some_and(|n| n == "vm-capsule");
    if let Some(real) = configured
        .and_then(|p| std::fs::canonicalize(p).ok())
        .filter(|p| named(p))
    {
        return real;
    }
    configured
        .and_then(Path::parent)
        .map(|d| d.join("vm-capsule"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| Path::new(LIBEXEC_DIR).join("vm-capsule"))
}

/// `LIBVIRT_XML_SCRIPT` run as the vm-gahp runs it (as root, its path as argv[0], then
/// `LIBVIRT_XML_SCRIPT_ARGS`) with another VM job's attributes: vm-capsule's script then says
/// the job is not its own and exits 1, which leaves that job to HTCondor's built-in XML.
fn check_libvirt_script(s: &mut Side<'_>, config: &ConfigSource) {
    const KNOB: &str = "LIBVIRT_XML_SCRIPT";
    let working = |configured: Option<&Path>| {
        format!(
            "LIBVIRT_XML_SCRIPT = {}, LIBVIRT_XML_SCRIPT_ARGS = libvirt-xml",
            vm_capsule_beside(configured).display()
        )
    };
    let start = match Start::libvirt_script(config) {
        Err(why) => return s.fail(KNOB, why, working(None)),
        Ok(Some(start)) if start.is_vm_capsule() => start,
        other => {
            let what = match other {
                Ok(Some(start)) => format!("{} is not vm-capsule's", start.exe.display()),
                _ => "not set".to_owned(),
            };
            return s.fail(
                KNOB,
                format!("{what}: HTCondor's built-in domain XML lets a job's disk images name host files that root's libvirt then opens (docs/ADMIN.md section 2c), cannot boot a direct-kernel template and is always of type kvm"),
                working(None),
            );
        }
    };
    if let Some(why) = vm_capsule_core::perms::unsafe_program(&start.exe) {
        return s.fail(
            KNOB,
            why,
            format!("run `vm-capsule install-hooks {LIBEXEC_DIR}` (root-owned, mode 0755)"),
        );
    }
    let fix = working(Some(&start.exe));
    if let Some(other) = start.command().filter(|c| c != "libvirt-xml") {
        return s.fail(
            KNOB,
            format!(
                "runs `vm-capsule {other}` ({}), not libvirt-xml",
                start.describe()
            ),
            fix,
        );
    }
    match start.run(b"JobVMType = \"kvm\"\nVMPARAM_vm_Disk = \"os.img:vda:w\"\n") {
        Err(why) => s.fail(KNOB, format!("as the vm-gahp runs it: {why}"), fix),
        // Another VM job is refused (exit 0, a domain libvirt will not create) or left to
        // HTCondor's built-in XML (exit 1), as VM_CAPSULE_LIBVIRT_OTHER_JOBS says.
        Ok(ran)
            if matches!(ran.code, Some(0 | 1)) && ran.stderr.contains("not a vm-capsule job") =>
        {
            s.ok(
                KNOB,
                format!("runs as the vm-gahp runs it ({})", start.describe()),
            )
        }
        Ok(ran) => s.fail(
            KNOB,
            format!(
                "broken: the vm-gahp runs {}, and so it {} instead of writing domains: {}",
                start.describe(),
                ran.code
                    .map_or_else(|| "dies by a signal".to_owned(), |c| format!("exits {c}")),
                ran.last_error_line()
            ),
            fix,
        ),
    }
}

fn check_vm_universe(s: &mut Side<'_>, config: &ConfigSource, path: Option<&OsStr>) {
    let Some(vm_type) = config.get("VM_TYPE") else {
        if config.flavour().as_deref() == Some("vm") {
            s.fail(
                "VM_TYPE",
                "not set: no VM universe here, and VM_CAPSULE_FLAVOUR = vm routes every job to it",
                "VM_TYPE = kvm, VM_MEMORY = <MiB> (ADMIN.md, VM-universe execute nodes), or VM_CAPSULE_FLAVOUR = vanilla",
            );
        } else {
            s.info(
                "VM_TYPE",
                "not set: no VM universe here (the vanilla flavour does not need it)",
            );
        }
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
    check_libvirt_script(s, config);
    let virsh = std::env::split_paths(path.unwrap_or_default())
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
