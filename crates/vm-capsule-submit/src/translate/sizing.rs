//! How much disk the routed job asks the execute node for (`RequestDisk`), and whether a
//! data disk for the job can be made at all.

use super::error::{job_problem, TranslateError};
use super::plan::{Binaries, DiskPlan};
use vm_capsule_core::capsule::BuildError;
use vm_capsule_core::job::JobSpec;
use vm_capsule_core::node_image::NodeBase;
use vm_capsule_core::template::{Template, TemplateDisk};

const MIB: u64 = 1 << 20;

/// Bytes of the files that travel with every job of `template`: its boot files and the OS
/// disks not staged on the nodes.
fn travelling_bytes(template: &Template, node_bases: &[NodeBase]) -> u64 {
    let travelling = |d: &&TemplateDisk| {
        !node_bases
            .iter()
            .any(|b| b.path.file_name() == d.path.file_name())
    };
    template
        .os_disks
        .iter()
        .filter(travelling)
        .map(|d| d.bytes)
        .fold(template.boot_bytes, u64::saturating_add)
}

/// What the routed job asks the execute node for (`RequestDisk`, KiB); never less than the
/// job itself asked. `payload` is what translate puts on the data disk besides the inputs
/// (the agent, the manifest, the job ad), plus the inputs when it packs them (VM universe).
///
/// VM universe: the files that travel and the data disk at its full size (a raw disk arrives
/// whole: HTCondor's transfer does not keep holes).
///
/// Vanilla flavour, the sandbox at its fullest (after the job, while the launcher extracts the
/// outputs, before it removes the capsule's files):
/// - what HTCondor transferred: the launcher, the agent, the capsule's description, the boot
///   files and OS disks that travel (nodes that stage them get small overlays instead), and
///   the job's inputs; with `VM_CAPSULE_NODE_LAUNCHER` neither the launcher nor the agent;
/// - the data disk as allocated: the agent and the description again, the inputs again, the
///   outputs, and FAT and container tables (a thirty-second, as when sizing the disk). Its
///   unwritten room (`VM_CAPSULE_OUTPUT_HEADROOM_MB` when the job asks for little) is sparse
///   and counts only when written;
/// - the outputs once more, extracted from the disk;
/// - QEMU's console log and the overlays' own tables: 2 MiB.
///
/// The job's inputs and outputs are what its own request covers (condor_submit's
/// `RequestDisk` is the inputs' size unless the job asks more), and each is there twice, so
/// they count as twice the request; the headroom is not asked for beyond that, as a native job
/// that writes more than it asked is not either.
pub fn request_disk_kib(
    job: &JobSpec,
    template: &Template,
    disk: &DiskPlan,
    binaries: Binaries,
    payload: u64,
    node_bases: &[NodeBase],
) -> u64 {
    let travel = travelling_bytes(template, node_bases);
    let asked = job.request_disk_kib.unwrap_or(0).saturating_mul(1024);
    let on_node = match disk.bytes {
        Some(bytes) => bytes.saturating_add(MIB),
        None => {
            let on_disk = payload.saturating_add(asked);
            let node_agent = match binaries.agent_on_node {
                true => binaries.agent_bytes.unwrap_or(0),
                false => 0,
            };
            binaries
                .launcher_bytes
                .saturating_add(payload.saturating_sub(node_agent))
                .saturating_add(on_disk)
                .saturating_add(on_disk / 32)
                .saturating_add(asked)
                .saturating_add(2 * MIB)
        }
    };
    on_node
        .saturating_add(travel)
        .div_ceil(1024)
        .max(job.request_disk_kib.unwrap_or(0))
}

/// Vanilla flavour: the data disk is sized on the node from the inputs that arrive, but it is
/// at least `payload` (agent, manifest, job ad) plus the room the job asked for; when that
/// alone is over `VM_CAPSULE_MAX_DATA_DISK_MB` no node can ever run the job, so it is held now,
/// as the VM universe holds it.
///
/// # Errors
/// [`TranslateError::Job`] naming `request_disk` and the knob.
pub fn check_vanilla_disk(
    job: &JobSpec,
    disk: &DiskPlan,
    payload: u64,
) -> Result<(), TranslateError> {
    match disk.recipe.size(payload, 0) {
        Ok(_) => Ok(()),
        Err(BuildError::TooBig {
            needed_mib,
            max_mib,
            ..
        }) => Err(job_problem(
            &job.id(),
            format!(
                "request_disk = {} MiB needs a data disk of at least {needed_mib} MiB, more than VM_CAPSULE_MAX_DATA_DISK_MB = {max_mib}; lower request_disk",
                job.request_disk_kib.unwrap_or(0) >> 10
            ),
        )),
        Err(e) => Err(job_problem(&job.id(), e.to_string())),
    }
}
