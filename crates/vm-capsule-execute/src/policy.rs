//! The node policy (`VM_CAPSULE_JOB`): the starter's prepare-job hook decides, per job, whether
//! a vanilla job runs in this node's template VM, as `SINGULARITY_JOB` decides for Apptainer.
//!
//! The decision reads only the two ads the starter hands the hook: the job ad on stdin and the
//! slot ad (`$_CONDOR_MACHINE_AD`), whose `VMCapsuleJob` is the node's expression as the startd
//! advertises it (`STARTD_ATTRS`). A job the policy does not pick costs one short process and
//! no configuration read. A picked job's `Cmd` becomes the node's launcher (`vm-capsule
//! node-run`), which builds the capsule from the sandbox HTCondor filled.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use classad::eval::{integer_attr, match_is_true};
use classad::{ClassAd, Expr};

use vm_capsule_core::job::args::join_v2;

/// The slot attribute holding the node's expression (`VMCapsuleJob = $(VM_CAPSULE_JOB)`).
pub const ATTR_POLICY: &str = "VMCapsuleJob";
/// The launcher's subcommand the rewritten job runs.
pub const NODE_RUN: &str = "node-run";
/// `HookStatusCode` of a job the policy picks but cannot run in a VM: 1-299 holds the job
/// (`HookPrepareJobClient::hookExited`), with `HookStatusMessage` as the hold reason.
pub const UNFIT_STATUS: i64 = 100;
/// The vanilla universe's number.
const VANILLA: i64 = 5;

/// What the hook does with one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Natively, saying nothing: the policy does not pick it (or it is no plain vanilla job).
    Native,
    /// In the node's VM.
    Vm,
}

/// True when the node's expression (the slot ad's [`ATTR_POLICY`], `MY` = the slot, `TARGET`
/// = the job) is true for this job, as `param_boolean(.., &machineAd, &jobAd)` reads
/// `SINGULARITY_JOB`: undefined, an error or a missing attribute mean false.
pub fn policy_picks(machine_ad: &ClassAd, job_ad: &ClassAd) -> bool {
    machine_ad
        .get(ATTR_POLICY)
        .is_some_and(|expr| match_is_true(expr, machine_ad, job_ad))
}

/// Why a job is never run in a VM whatever the policy says (`None`: it may be): another
/// universe. Nothing else in the ad counts: its owner writes it (a `+VMCapsuleFlavour` of
/// their own takes nothing out of the VM, and a job whose `Cmd` is vm-capsule itself could
/// still name its own QEMU). A routed vanilla-flavour job the policy picks runs its launcher
/// in the guest, where it fails with the reason: leave such jobs out in the expression.
pub fn never_in_vm(job_ad: &ClassAd) -> Option<&'static str> {
    if integer_attr(job_ad, "JobUniverse") != Some(VANILLA) {
        return Some("not a vanilla-universe job");
    }
    None
}

/// Why a job the policy picks cannot run in the VM for what its ad asks (`None`: nothing):
/// a container job, which the starter would wrap, launcher and all, in Apptainer.
pub fn ad_problem(job_ad: &ClassAd) -> Option<String> {
    ["ContainerImage", "DockerImage", "SingularityImage"]
        .iter()
        .find(|a| job_ad.get(a).is_some())
        .map(|a| {
            format!(
                "it asks for a container ({a}), in which the starter would run the VM's launcher"
            )
        })
}

/// The decision for a job: [`Decision::Vm`] when the policy picks it and nothing rules it out.
pub fn decide(machine_ad: &ClassAd, job_ad: &ClassAd) -> Decision {
    if never_in_vm(job_ad).is_none() && policy_picks(machine_ad, job_ad) {
        Decision::Vm
    } else {
        Decision::Native
    }
}

/// Why the executable at `path` (the job's, in its sandbox) cannot run in the x86_64 Linux
/// guest: an ELF for another architecture or OS, or another executable format. `None`: it can
/// (an x86_64 Linux ELF, a `#!` script, or anything the guest will treat as natively).
/// Opened without following a link and without blocking on a FIFO; only a regular file is read.
pub fn executable_problem(path: &Path) -> Option<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(
            i32::try_from((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits())
                .unwrap_or(0),
        )
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = [0u8; 64];
    let n = read_head(&file, &mut head);
    let head = head.get(..n).unwrap_or_default();
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    if head.starts_with(b"\x7fELF") {
        if let Some(why) = vm_capsule_core::agent::x86_64_elf_problem(head) {
            return Some(format!(
                "its executable {name} is an ELF program the x86_64 Linux VM cannot run ({why})"
            ));
        }
        // EI_OSABI: System V or GNU/Linux; any other names another OS.
        let osabi = head.get(7).copied().unwrap_or(0);
        if osabi != 0 && osabi != 3 {
            return Some(format!(
                "its executable {name} is an ELF program for another OS (EI_OSABI {osabi}), not Linux"
            ));
        }
        return None;
    }
    let foreign = [
        (&b"MZ"[..], "a Windows (PE) program"),
        (&b"\xcf\xfa\xed\xfe"[..], "a macOS (Mach-O) program"),
        (
            &b"\xca\xfe\xba\xbe"[..],
            "a macOS (Mach-O universal) program",
        ),
    ];
    foreign
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, what)| format!("its executable {name} is {what}, not a Linux one"))
}

/// Up to `buf.len()` bytes from the start of `file`.
fn read_head(mut file: &File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// The hook's stdout for a job that runs in the VM: the starter runs `launcher node-run
/// <knob=value>...` instead of the job (`TransferExecutable = false`, or the starter would look
/// for the launcher in the sandbox). The knobs travel in `Arguments` because the job's
/// environment has no `CONDOR_CONFIG`, and the hook's own additions never reach `.job.ad`,
/// where the launcher finds the original job.
///
/// # Errors
/// A message when the lines cannot be printed (a path that is not text).
pub fn vm_lines(launcher: &Path, knobs: &[(String, String)]) -> Result<String, String> {
    let launcher = launcher
        .to_str()
        .ok_or_else(|| format!("the launcher's path {} is not UTF-8", launcher.display()))?;
    let mut args = vec![NODE_RUN.to_owned()];
    args.extend(knobs.iter().map(|(k, v)| format!("{k}={v}")));
    let mut ad = ClassAd::new();
    ad.insert("Cmd", Expr::string(launcher));
    ad.insert(
        "TransferExecutable",
        Expr::Literal(classad::Literal::Bool(false)),
    );
    ad.insert("Arguments", Expr::string(join_v2(&args)));
    // The launcher and its QEMU (a dynamic program) get none of the job's environment: an
    // LD_PRELOAD of the owner's would run their code on the node, outside the VM. The guest
    // gets the job's environment from `.job.ad`, which the hook does not change.
    ad.insert("Environment", Expr::string(""));
    ad.insert("Env", Expr::string(""));
    classad::print::ad_to_hook_string(&ad).map_err(|e| e.to_string())
}

/// The hook's stdout for a job put on hold: `reason` becomes its hold reason.
pub fn hold_lines(reason: &str) -> String {
    status_lines(UNFIT_STATUS, reason)
}

/// The hook's stdout for a job that runs natively although the policy picked it: the starter
/// writes `reason` to the job's event log as a warning and starts the job.
pub fn native_note_lines(reason: &str) -> String {
    status_lines(0, reason)
}

fn status_lines(code: i64, reason: &str) -> String {
    let mut ad = ClassAd::new();
    ad.insert(
        "HookStatusCode",
        Expr::Literal(classad::Literal::Integer(code)),
    );
    // Printable text only: the message lands in the user's log and condor_q.
    let clean: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    ad.insert("HookStatusMessage", Expr::string(clean));
    classad::print::ad_to_hook_string(&ad).unwrap_or_else(|_| format!("HookStatusCode = {code}\n"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ad(text: &str) -> ClassAd {
        classad::parse_old_ad(text).unwrap()
    }

    #[test]
    fn the_slot_s_expression_decides_per_job() {
        let slot = ad("Memory = 2048\nVMCapsuleJob = TARGET.Owner =!= \"trusted\"\n");
        let alice = ad("JobUniverse = 5\nOwner = \"alice\"\n");
        let trusted = ad("JobUniverse = 5\nOwner = \"trusted\"\n");
        assert_eq!(decide(&slot, &alice), Decision::Vm);
        assert_eq!(decide(&slot, &trusted), Decision::Native);
        // No policy advertised, or one that is undefined: native.
        assert_eq!(decide(&ad("Memory = 1\n"), &alice), Decision::Native);
        let undefined = ad("VMCapsuleJob = TARGET.WantVM\n");
        assert_eq!(decide(&undefined, &alice), Decision::Native);
    }

    #[test]
    fn other_universes_stay_native_and_owner_attributes_change_nothing() {
        let slot = ad("VMCapsuleJob = true\n");
        assert_eq!(decide(&slot, &ad("JobUniverse = 13\n")), Decision::Native);
        let faked = ad(
            "JobUniverse = 5\nVMCapsuleFlavour = \"vanilla\"\nCmd = \"/usr/libexec/vm-capsule/vm-capsule\"\nSingularityImage = \"x\"\n",
        );
        assert_eq!(decide(&slot, &faked), Decision::Vm);
        assert!(ad_problem(&faked).unwrap().contains("SingularityImage"));
    }

    #[test]
    fn foreign_executables_are_named() {
        let d = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        assert_eq!(executable_problem(&me), None);
        let script = d.path().join("job.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(executable_problem(&script), None);
        let mut arm = std::fs::read(&me).unwrap();
        arm[18] = 183; // EM_AARCH64
        let arm_path = d.path().join("arm");
        std::fs::write(&arm_path, &arm[..4096]).unwrap();
        let why = executable_problem(&arm_path).unwrap();
        assert!(why.contains("arm") && why.contains("x86_64"), "{why}");
        let mut bsd = std::fs::read(&me).unwrap();
        bsd[7] = 9; // FreeBSD
        let bsd_path = d.path().join("bsd");
        std::fs::write(&bsd_path, &bsd[..4096]).unwrap();
        assert!(executable_problem(&bsd_path)
            .unwrap()
            .contains("another OS"));
        let exe = d.path().join("prog.exe");
        std::fs::write(&exe, b"MZ\x90\0rest").unwrap();
        assert!(executable_problem(&exe).unwrap().contains("Windows"));
        // A FIFO is never opened for reading in a way that blocks.
        let fifo = d.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert_eq!(executable_problem(&fifo), None);
    }

    #[test]
    fn lines_the_starter_merges() {
        let out = vm_lines(
            Path::new("/usr/libexec/vm-capsule/vm-capsule"),
            &[("VM_CAPSULE_TEMPLATE".into(), "/var/lib/vm capsule".into())],
        )
        .unwrap();
        assert!(
            out.contains("Cmd = \"/usr/libexec/vm-capsule/vm-capsule\""),
            "{out}"
        );
        assert!(out.contains("TransferExecutable = false"), "{out}");
        assert!(out.contains("Environment = \"\""), "{out}");
        assert!(
            out.contains("Arguments = \"node-run VM_CAPSULE_TEMPLATE=/var/lib/vm' 'capsule\""),
            "{out}"
        );
        let hold = hold_lines("too \"big\"\nfor this");
        assert!(hold.contains("HookStatusCode = 100"), "{hold}");
        assert!(
            hold.contains("HookStatusMessage = \"too \\\"big\\\" for this\""),
            "{hold}"
        );
    }
}
