//! The VM-universe ad the translate hook prints: the routed job HTCondor will run.
//!
//! The JobRouter replaces the routed ad with the hook's output and submits it attribute by
//! attribute without `condor_submit` (`JobRouter::FinishSubmitJob`, `submit_job.cpp`), so the ad
//! must be complete: universe, VM parameters, file transfer, `Requirements`, identity and
//! accounting. It is built, not echoed: the original's history must not leak into the copy.

use classad::print::expr_to_string;
use classad::{parse_expr, ClassAd, Expr, Syntax};

use crate::boot::DirectBoot;
use crate::job::JobSpec;
use crate::template::{Flavour, Template};

mod checkpoint;

pub use checkpoint::job_checkpoint_exit_code;

/// `JobUniverse` of VM jobs.
pub const VM_UNIVERSE: i64 = 13;
/// `JobUniverse` of vanilla jobs.
pub const VANILLA_UNIVERSE: i64 = 5;
/// The VM description a vanilla-flavour launcher boots (the VM-universe ad, old syntax).
pub const CAPSULE_AD: &str = "vm-capsule.ad";
/// Vanilla flavour: the manifest the launcher puts on the data disk it makes.
pub const CAPSULE_JSON_FILE: &str = "vm-capsule.json";
/// Vanilla flavour: the original job ad the launcher puts on the data disk.
pub const JOB_AD_FILE: &str = "vm-capsule.job.ad";
/// The files translate writes for the vanilla launcher (their names are taken in its sandbox).
pub const VANILLA_FILES: [&str; 3] = [CAPSULE_AD, CAPSULE_JSON_FILE, JOB_AD_FILE];
/// Capsule-ad attribute: the data disk's partition offset (the launcher makes the disk).
pub const ATTR_DISK_OFFSET: &str = "VMCapsuleDataDiskOffset";
/// Capsule-ad attribute: the data disk's FAT label.
pub const ATTR_DISK_LABEL: &str = "VMCapsuleDataDiskLabel";
/// Capsule-ad attribute: what the job asked for in all (`RequestDisk`), bytes.
pub const ATTR_DISK_REQUEST: &str = "VMCapsuleRequestDiskBytes";
/// Capsule-ad attribute: the least room for outputs, bytes.
pub const ATTR_DISK_HEADROOM: &str = "VMCapsuleOutputHeadroomBytes";
/// Capsule-ad attribute: the largest data disk, bytes.
pub const ATTR_DISK_MAX: &str = "VMCapsuleMaxDataDiskBytes";
/// Capsule-ad attribute: the agent's file name in the sandbox (absent: the guest has one).
pub const ATTR_AGENT: &str = "VMCapsuleAgent";
/// Capsule-ad attribute: `true` when the agent is the `capsule-init` beside the launcher
/// installed on the execute node (`VM_CAPSULE_NODE_LAUNCHER`).
pub const ATTR_AGENT_ON_NODE: &str = "VMCapsuleAgentOnNode";
/// Routed-ad attribute: the job dir in the scratch prefix.
pub const ATTR_SCRATCH: &str = "VMCapsuleScratch";
/// Routed-ad attribute: the data disk's file name.
pub const ATTR_DATA_DISK: &str = "VMCapsuleDataDisk";
/// Routed-ad attribute: the data disk's container format as staged.
pub const ATTR_DATA_DISK_FORMAT: &str = "VMCapsuleDataDiskFormat";
/// Routed-ad attribute: the data disk's virtual size in bytes as staged.
pub const ATTR_DATA_DISK_BYTES: &str = "VMCapsuleDataDiskBytes";
/// Routed-ad attribute: `vanilla` for the vanilla flavour.
pub const ATTR_FLAVOUR: &str = "VMCapsuleFlavour";
/// Machine attribute an execute node advertises when it can run the vanilla flavour.
pub const HAS_QEMU_ATTR: &str = "HasVMCapsuleQemu";
/// Machine attribute: the read-only host paths the node offers (and the job attribute naming
/// those a job needs).
pub const HOST_PATHS_ATTR: &str = crate::host_paths::ATTR;
/// Machine attribute: what network the node gives jobs that ask (`nat` or `none`).
pub const NODE_NETWORK_ATTR: &str = "VMCapsuleNetwork";
/// VM-universe attribute: the job wants a network (`vm_networking`).
pub const ATTR_VM_NETWORKING: &str = "JobVMNetworking";
/// VM-universe attribute: which kind (`vm_networking_type`).
pub const ATTR_VM_NETWORKING_TYPE: &str = "JobVMNetworkingType";
/// Job and capsule-ad attribute: whole-VM checkpoints (`+VMCapsuleCheckpoint = true`).
pub const ATTR_CHECKPOINT: &str = "VMCapsuleCheckpoint";
/// Routed-job attribute the launcher sets over Chirp after its first checkpoint: the
/// `VMCapsuleQemuVersion` of the QEMU that wrote it, which the restore needs again.
pub const ATTR_CHECKPOINT_QEMU: &str = "VMCapsuleCheckpointQemu";
/// Capsule-ad attribute of a checkpointed job: the job's own checkpoint exit code, when it
/// checkpoints itself by exit code (absent: an exit with the routed job's
/// `SuccessCheckpointExitCode` inside the guest is the job's ordinary exit, not a checkpoint).
pub const ATTR_JOB_CHECKPOINT_CODE: &str = "VMCapsuleJobCheckpointExitCode";
/// Machine attribute: the version of the node's QEMU, as the probe advertises it.
pub const QEMU_VERSION_ATTR: &str = "VMCapsuleQemuVersion";
/// The file a checkpointing launcher writes the VM's state into, in its sandbox.
pub const CHECKPOINT_FILE: &str = "vm-capsule.checkpoint";
/// The exit code that tells the starter "checkpointed" when the job has none of its own.
pub const VM_CHECKPOINT_EXIT_CODE: i64 = 85;
/// Seconds the launcher allows for boot and poweroff beyond the job's own time limit
/// (`VM_CAPSULE_BOOT_TIMEOUT`).
pub const BOOT_MARGIN_SECS: u64 = 600;

/// Attributes copied from the original job: identity, accounting, priority and notification.
const CARRIED: &[&str] = &[
    "Owner",
    "User",
    "AcctGroup",
    "AcctGroupUser",
    "AccountingGroup",
    "ProjectName",
    "NiceUser",
    "JobPrio",
    "JobNotification",
    "NotifyUser",
    "ConcurrencyLimits",
    "MaxJobRetirementTime",
    "JobMaxVacateTime",
    "QDate",
    "SubmitterGroup",
    "OsUser",
];

/// Vanilla flavour: what the starter reads to interrupt, checkpoint and restart the job
/// (`user_proc.cpp`, `vanilla_proc.cpp`); the launcher reads them back from the starter's job
/// ad to forward the soft-kill signal and to keep its files after a checkpoint exit.
const INTERRUPTION: &[&str] = &[
    "KillSig",
    "RemoveKillSig",
    "HoldKillSig",
    "KillSigTimeout",
    "WantFTOnCheckpoint",
    "SuccessCheckpointExitCode",
    "SuccessCheckpointExitBySignal",
    "SuccessCheckpointExitSignal",
    "TransferCheckpoint",
    "CheckpointDestination",
];

/// One disk of the routed VM, as `VMPARAM_vm_Disk` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// File name in the scratch dir (transferred).
    pub file: String,
    /// Guest device.
    pub device: String,
    /// `w` or `r`.
    pub perm: &'static str,
    /// `raw`, `qcow2` or `vmdk`.
    pub format: &'static str,
}

/// What the translate hook staged, for the ad.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The scratch dir: the routed job's `Iwd`.
    pub scratch: String,
    /// VM disks in device order (the data disk last).
    pub disks: Vec<VmDisk>,
    /// Every file to transfer (disks, backing files, kernel, vmx).
    pub transfer: Vec<String>,
    /// The data disk's file name.
    pub data_disk: String,
    /// The data disk's container format.
    pub data_disk_format: &'static str,
    /// The data disk's virtual size, bytes (none: the vanilla launcher sizes it).
    pub data_disk_bytes: Option<u64>,
    /// VM memory, MiB.
    pub memory_mib: u64,
    /// VM CPUs.
    pub vcpus: u64,
    /// VMware: the `.vmx` name.
    pub vmx: Option<String>,
    /// Direct kernel boot (file names in scratch).
    pub boot: Option<DirectBoot<String>>,
    /// What the routed job asks the execute node for (`RequestDisk`), KiB.
    pub request_disk_kib: u64,
    /// OS disks staged on the execute nodes (`VM_CAPSULE_NODE_IMAGE_DIR`), not transferred.
    pub node_bases: Vec<crate::node_image::NodeBase>,
}

/// Build the routed VM-universe ad.
///
/// # Panics
/// Never: the fixed `Requirements` texts are valid expressions (checked by a unit test).
pub fn build(job: &JobSpec, original: &ClassAd, template: &Template, staged: &Staged) -> ClassAd {
    let mut ad = ClassAd::new();
    carry(&mut ad, original, CARRIED);
    ad.insert("MyType", Expr::string("Job"));
    ad.insert("TargetType", Expr::string("Machine"));
    ad.insert("JobUniverse", Expr::integer(VM_UNIVERSE));
    ad.insert("JobStatus", Expr::integer(1));
    // `Cmd` is only a label for VM jobs.
    ad.insert("Cmd", Expr::string(format!("vm-capsule job {}", job.id())));
    ad.insert("Iwd", Expr::string(staged.scratch.clone()));
    ad.insert("JobVMType", Expr::string(template.flavour.vm_type()));
    ad.insert("JobVMMemory", Expr::integer(to_i64(staged.memory_mib)));
    ad.insert("JobVM_VCPUS", Expr::integer(to_i64(staged.vcpus)));
    ad.insert("JobVMCheckpoint", Expr::boolean(false));
    ad.insert("RequestMemory", Expr::attr("JobVMMemory"));
    ad.insert("RequestCpus", Expr::integer(to_i64(staged.vcpus)));
    ad.insert(
        "RequestDisk",
        Expr::integer(to_i64(staged.request_disk_kib)),
    );
    ad.insert("ShouldTransferFiles", Expr::string("YES"));
    ad.insert("WhenToTransferOutput", Expr::string("ON_EXIT"));
    ad.insert("TransferExecutable", Expr::boolean(false));
    ad.insert("TransferInput", Expr::string(staged.transfer.join(",")));
    ad.insert("ImageSize", Expr::integer(to_i64(staged.memory_mib * 1024)));
    ad.insert(
        "ExecutableSize",
        Expr::integer(to_i64(staged.memory_mib * 1024)),
    );
    ad.insert("DiskUsage", Expr::integer(1));
    match template.flavour {
        Flavour::Kvm | Flavour::Xen => {
            let disks: Vec<String> = staged
                .disks
                .iter()
                .map(|d| format!("{}:{}:{}:{}", d.file, d.device, d.perm, d.format))
                .collect();
            ad.insert("VMPARAM_vm_Disk", Expr::string(disks.join(",")));
        }
        Flavour::Vmware => {
            ad.insert("VMPARAM_VMware_Dir", Expr::string(staged.scratch.clone()));
            ad.insert("VMPARAM_VMware_Transfer", Expr::boolean(true));
            // OS disks are hard links to the template: writes must go to snapshot deltas.
            ad.insert("VMPARAM_VMware_SnapshotDisk", Expr::boolean(true));
            if let Some(vmx) = &staged.vmx {
                ad.insert("VMPARAM_VMware_VMX_File", Expr::string(vmx.clone()));
            }
            let vmdks: Vec<&str> = staged.disks.iter().map(|d| d.file.as_str()).collect();
            ad.insert("VMPARAM_VMware_VMDK_Files", Expr::string(vmdks.join(",")));
        }
    }
    ad.insert("VMPARAM_No_Output_VM", Expr::boolean(false));
    // The admin's classad template may refine VM parameters (not disks or memory we computed).
    for (name, expr) in template.vm_attrs.iter() {
        let lower = name.to_ascii_lowercase();
        let ours = [
            "vmparam_vm_disk",
            "vmparam_vmware_dir",
            "vmparam_vmware_vmdk_files",
            "vmparam_vmware_vmx_file",
            "jobvmmemory",
            "jobvmtype",
            "jobvm_vcpus",
        ];
        // Boot attributes name what travels: written below from what was staged.
        if !ours.contains(&lower.as_str()) && !lower.starts_with("vmparam_xen_") {
            ad.insert(name, expr.clone());
        }
    }
    if !ad.contains("Requirements") {
        ad.insert("Requirements", default_requirements(template.flavour));
    }
    require_node_bases(&mut ad, staged);
    ask_for_network(&mut ad, job.network);
    let xen = template.flavour == Flavour::Xen;
    match &staged.boot {
        Some(boot) => boot.write_to(&mut ad, xen),
        None if xen => {
            ad.insert(crate::boot::XEN_KERNEL, Expr::string(crate::boot::INCLUDED));
        }
        None => {}
    }
    capsule_attrs(&mut ad, staged);
    ad.insert("VMCapsuleOriginalJob", Expr::string(job.id()));
    ad.insert("VMCapsuleVersion", Expr::string(env!("CARGO_PKG_VERSION")));
    ad
}

/// What a vanilla-flavour routed job runs and ships besides the capsule's own files.
#[derive(Debug, Clone, Copy)]
pub struct VanillaInputs<'a> {
    /// The launcher (`vm-capsule run --vanilla`), the routed job's executable.
    pub launcher: &'a std::path::Path,
    /// The guest agent to put on the data disk, unless the guest image has its own.
    pub agent: Option<&'a std::path::Path>,
    /// The launcher's time limit (none: as long as HTCondor lets the job run).
    pub timeout_secs: Option<u64>,
    /// `launcher` is installed on the execute nodes (`VM_CAPSULE_NODE_LAUNCHER`): run it
    /// there, on nodes whose probe advertises this version.
    pub launcher_on_node: bool,
    /// The launcher checkpoints the whole VM: the routed job is a self-checkpointing one.
    pub checkpoint: bool,
}

/// `TransferInput` of a vanilla-flavour routed job: the capsule's files (VM disks but the data
/// disk, which the launcher makes; the launcher's own files; the agent), then the job's own
/// executable, `In` and inputs exactly as the user wrote them (URLs and `dir/` included), so
/// HTCondor's transfer moves them straight to the execute node.
fn vanilla_transfer(job: &JobSpec, staged: &Staged, parts: &VanillaInputs<'_>) -> Vec<String> {
    let scratch = std::path::Path::new(&staged.scratch);
    let mut transfer: Vec<String> = staged
        .transfer
        .iter()
        .filter(|f| **f != staged.data_disk)
        // The launcher makes the overlays over node-staged bases itself.
        .filter(|f| !staged.node_bases.iter().any(|b| &b.overlay == *f))
        .chain(
            VANILLA_FILES
                .iter()
                .map(|f| (*f).to_owned())
                .collect::<Vec<_>>()
                .iter(),
        )
        .map(|f| scratch.join(f).display().to_string())
        .collect();
    transfer.extend(parts.agent.map(|a| a.display().to_string()));
    if job.transfer_executable {
        transfer.push(job.executable.display().to_string());
    }
    if let Some(stdin) = &job.stdin {
        if !job.inputs.iter().any(|i| i.source == stdin.path) {
            transfer.push(stdin.path.display().to_string());
        }
    }
    transfer.extend(job.inputs.iter().map(|i| i.entry.clone()));
    transfer
}

/// Build the vanilla-flavour routed ad: an ordinary vanilla job whose executable, the
/// launcher (`vm-capsule run`), boots the capsule with QEMU on the execute node and exits as
/// the job did. HTCondor's own file transfer then brings the outputs and streams to where the
/// original job named them, so `Iwd`, `Out`, `Err`, `TransferOutput` and the remaps are the
/// original's, and so are `StreamOut`/`StreamErr` (the launcher writes the job's streams as
/// the job does); `TransferInput` carries the capsule's files and the job's own inputs as
/// written.
pub fn build_vanilla(
    job: &JobSpec,
    original: &ClassAd,
    staged: &Staged,
    parts: &VanillaInputs<'_>,
) -> ClassAd {
    let mut ad = ClassAd::new();
    carry(&mut ad, original, CARRIED);
    carry(
        &mut ad,
        original,
        &[
            "Out",
            "Err",
            "StreamOut",
            "StreamErr",
            "TransferOutput",
            "TransferOutputRemaps",
        ],
    );
    carry(&mut ad, original, INTERRUPTION);
    ad.insert("MyType", Expr::string("Job"));
    ad.insert("TargetType", Expr::string("Machine"));
    ad.insert("JobUniverse", Expr::integer(VANILLA_UNIVERSE));
    ad.insert("JobStatus", Expr::integer(1));
    ad.insert("Iwd", Expr::string(job.iwd.display().to_string()));
    ad.insert("Cmd", Expr::string(parts.launcher.display().to_string()));
    ad.insert("TransferExecutable", Expr::boolean(!parts.launcher_on_node));
    // Without a job time limit the launcher waits as long as HTCondor lets the job run.
    let timeout = parts
        .timeout_secs
        .map_or_else(String::new, |t| format!(" --timeout {t}"));
    ad.insert(
        "Arguments",
        Expr::string(format!("run {CAPSULE_AD} --vanilla --accel auto{timeout}")),
    );
    ad.insert(
        "TransferInput",
        Expr::string(vanilla_transfer(job, staged, parts).join(",")),
    );
    ad.insert("ShouldTransferFiles", Expr::string("YES"));
    // ON_EXIT_OR_EVICT: the files a soft-killed job wrote travel as a native job's would.
    let evict = classad::eval::string_attr(original, "WhenToTransferOutput")
        .is_some_and(|w| w.eq_ignore_ascii_case("ON_EXIT_OR_EVICT"));
    ad.insert(
        "WhenToTransferOutput",
        Expr::string(if evict { "ON_EXIT_OR_EVICT" } else { "ON_EXIT" }),
    );
    // The launcher publishes the job's own usage through the starter's Chirp server.
    ad.insert("WantIOProxy", Expr::boolean(true));
    // QEMU itself needs memory beyond the guest's.
    ad.insert(
        "RequestMemory",
        Expr::integer(to_i64(staged.memory_mib + 128)),
    );
    ad.insert("RequestCpus", Expr::integer(to_i64(staged.vcpus)));
    ad.insert(
        "RequestDisk",
        Expr::integer(to_i64(staged.request_disk_kib)),
    );
    ad.insert("DiskUsage", Expr::integer(1));
    ad.insert("ImageSize", Expr::integer(to_i64(staged.memory_mib * 1024)));
    let mut qemu = format!("(TARGET.{HAS_QEMU_ATTR} =?= true)");
    if parts.launcher_on_node {
        // The node's launcher reads what this translate wrote: the same release only.
        qemu.push_str(&format!(
            " && (TARGET.VMCapsuleVersion =?= \"{}\")",
            env!("CARGO_PKG_VERSION")
        ));
    }
    let requirements = match original.get("Requirements") {
        Some(req) => format!("{qemu} && ({})", expr_to_string(req, Syntax::New)),
        None => format!("{qemu} && (TARGET.Arch == \"X86_64\") && (TARGET.OpSys == \"LINUX\")"),
    };
    ad.insert(
        "Requirements",
        parse_expr(&requirements, Syntax::New).unwrap_or(Expr::boolean(false)),
    );
    require_node_bases(&mut ad, staged);
    if job.network {
        and_requirement(
            &mut ad,
            &format!("(TARGET.{NODE_NETWORK_ATTR} =?= \"nat\")"),
        );
        ad.insert(crate::job::NETWORK_ATTR, Expr::boolean(true));
    }
    if parts.checkpoint {
        checkpoint::ask_for_checkpoint(&mut ad, original);
    }
    ad.insert(ATTR_FLAVOUR, Expr::string("vanilla"));
    capsule_attrs(&mut ad, staged);
    ad.insert("VMCapsuleOriginalJob", Expr::string(job.id()));
    ad.insert("VMCapsuleVersion", Expr::string(env!("CARGO_PKG_VERSION")));
    ad
}

/// Where the capsule is, for finalize, cleanup and the launcher.
fn capsule_attrs(ad: &mut ClassAd, staged: &Staged) {
    ad.insert(ATTR_SCRATCH, Expr::string(staged.scratch.clone()));
    ad.insert(ATTR_DATA_DISK, Expr::string(staged.data_disk.clone()));
    ad.insert(ATTR_DATA_DISK_FORMAT, Expr::string(staged.data_disk_format));
    if let Some(bytes) = staged.data_disk_bytes {
        ad.insert(ATTR_DATA_DISK_BYTES, Expr::integer(to_i64(bytes)));
    }
}

/// With OS disks staged on the nodes: name them, and match only nodes that hold them.
fn require_node_bases(ad: &mut ClassAd, staged: &Staged) {
    if staged.node_bases.is_empty() {
        return;
    }
    crate::node_image::write_to(ad, &staged.node_bases);
    let clause = crate::node_image::requirement(&staged.node_bases);
    let text = match ad.get("Requirements") {
        Some(req) => format!("({}) && {clause}", expr_to_string(req, Syntax::New)),
        None => clause,
    };
    if let Ok(expr) = parse_expr(&text, Syntax::New) {
        ad.insert("Requirements", expr);
    }
}

/// A VM job that asks for a network, as `condor_submit` writes `vm_networking = true` with
/// `vm_networking_type = nat` (`SetVMParams`, `SetRequirements`); else none, whatever the
/// template's classad said. The capsule ad of the vanilla flavour is this ad, so the launcher
/// reads the same attribute.
fn ask_for_network(ad: &mut ClassAd, wanted: bool) {
    ad.insert(ATTR_VM_NETWORKING, Expr::boolean(wanted));
    if wanted {
        ad.insert(ATTR_VM_NETWORKING_TYPE, Expr::string("nat"));
        and_requirement(
            ad,
            "TARGET.VM_Networking && stringListIMember(JobVMNetworkingType, TARGET.VM_Networking_Types, \",\")",
        );
    } else {
        ad.remove(ATTR_VM_NETWORKING_TYPE);
    }
}

/// `Requirements = (<old>) && <clause>`.
fn and_requirement(ad: &mut ClassAd, clause: &str) {
    let text = match ad.get("Requirements") {
        Some(req) => format!("({}) && {clause}", expr_to_string(req, Syntax::New)),
        None => clause.to_owned(),
    };
    if let Ok(expr) = parse_expr(&text, Syntax::New) {
        ad.insert("Requirements", expr);
    }
}

/// What `condor_submit` adds for VM jobs (`SetRequirements`); Xen skips `TotalMemory`.
fn default_requirements(flavour: Flavour) -> Expr {
    let memory = match flavour {
        Flavour::Xen => "",
        _ => " && (TARGET.TotalMemory >= MY.JobVMMemory)",
    };
    let text = format!(
        "(TARGET.Arch == \"X86_64\") && (TARGET.HasVM =?= true) && (TARGET.VM_Type == MY.JobVMType) && (TARGET.VM_AvailNum > 0){memory} && (TARGET.VM_Memory >= MY.JobVMMemory)"
    );
    parse_expr(&text, Syntax::New).unwrap_or(Expr::boolean(false))
}

/// Copy `names` that `original` has into `ad`, keeping their spelling.
fn carry(ad: &mut ClassAd, original: &ClassAd, names: &[&str]) {
    for name in names {
        if let (Some(n), Some(e)) = (original.name_of(name), original.get(name)) {
            ad.insert(n, e.clone());
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_parse() {
        for f in [Flavour::Kvm, Flavour::Xen, Flavour::Vmware] {
            assert_ne!(default_requirements(f), Expr::boolean(false));
        }
    }
}
