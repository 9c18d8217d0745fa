//! The libvirt domain of a vm-capsule VM-universe job, for HTCondor's `LIBVIRT_XML_SCRIPT`.
//!
//! HTCondor's vm-gahp (condor_vm-gahp/xen_type.linux.cpp, `VirshType::CreateVirshConfigFile`)
//! runs the script as root with `LIBVIRT_XML_SCRIPT_ARGS`, writes on its stdin the job's
//! attributes in long ClassAd form (`Name = value`, one per line: the whole job ad unless
//! `VM_GAHP_SEND_ALL_CLASSAD = false`, plus `VM_WORKING_DIR`, `VMPARAM_VM_NAME`, and appended
//! `VMPARAM_Xen_Bootloader`, `JobVMNetworkingType`...), and joins the lines of its stdout
//! into the domain XML. A non-zero exit makes it fall back to its built-in XML (`KVMType::
//! CreateVirshConfigFile`), which hands libvirt the job's disk images as they are: libvirt
//! then follows whatever backing file an image names, as root.
//!
//! HTCondor's built-in KVM domain has no kernel, initrd or command line, and is always of
//! type `kvm`; ours boots what the routed ad names (`VMCapsuleKernel`, `VMCapsuleInitrd`,
//! `VMCapsuleKernelArgs`, else `VMPARAM_Xen_*`), is of type `qemu` (TCG) where the node has
//! no usable KVM, attaches the disks as `VMPARAM_vm_Disk` says, puts the console on a pty (a
//! serial *file* is created by virtlogd as root 0600, which then breaks the job's output
//! transfer) and destroys the domain on poweroff, reboot and crash so the job ends.
//!
//! # Security
//! The script runs as root; the ad, every byte of every disk image, and any process running
//! as the sandbox's user belong to the job's owner. So (`sandbox`, `disks`, `pin`):
//! - files are only plain names inside `VM_WORKING_DIR`, opened once without following
//!   links or blocking, regular files with one link, the sandbox user's;
//! - each image is parsed with capsule-disk from that open file, and refused when it names
//!   any other file: a qcow2 backing file (except the node's own base image, named by this
//!   node's configuration and checked against the routed ad's sha256), an external data
//!   file, VMDK extents or parents; every disk is emitted with its backing chain spelled out
//!   (`<backingStore/>` at the end), so libvirt reads no chain from the image;
//! - before the images are read they become libvirt's QEMU user's (group read kept for the
//!   output transfer, no relabelling by libvirt) and no process may hold them open for writing, so what was read stays what
//!   QEMU reads; libvirt gets hard links to the checked files in a root-owned directory
//!   beside the sandbox, which the job's user can neither rename nor replace;
//! - the node's read-only host paths are checked as the launcher checks them (every
//!   component a real directory, no link followed; one that is not is left out, or refuses a
//!   job that needs it) and shared `<readonly/>` over 9p, with
//!   the node settings in fw_cfg (`<sysinfo type='fwcfg'>`) so the agent mounts them;
//! - a refused job gets a domain libvirt cannot create, with the words that make the vm-gahp
//!   hold it, and one line on stderr for the vm-gahp's log: never a non-zero exit, which
//!   would boot the same images with HTCondor's built-in XML. Other VM jobs are refused too
//!   unless the admin leaves them to the built-in XML (`VM_CAPSULE_LIBVIRT_OTHER_JOBS`).

mod disks;
mod domain;
mod pin;
mod sandbox;

use std::path::PathBuf;

use classad::eval::integer_attr;
use classad::ClassAd;
use thiserror::Error;

pub use domain::{DomainType, DOMAIN_TYPE_KNOB};

/// The routed ad's data disk: marks a vm-capsule job.
pub const DATA_DISK_ATTR: &str = "VMCapsuleDataDisk";
/// The knob saying what other VM jobs get: `refuse` (the default) or `builtin`.
pub const OTHER_JOBS_KNOB: &str = vm_capsule_core::settings::knobs::LIBVIRT_OTHER_JOBS.name;
/// Where a refused job's line is understood: libvirt's error for the refusal document
/// contains these words, and the vm-gahp then holds the job (`VirshType::Start`).
pub const HOLD_WORDS: &str = "image is not in qcow2 format";

/// What a VM job that is not a vm-capsule job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherJobs {
    /// Refused: the built-in XML lets a job's images name host files.
    Refuse,
    /// HTCondor's built-in XML (the script exits 1).
    Builtin,
}

impl OtherJobs {
    /// Parse the knob's value.
    ///
    /// # Errors
    /// The value, when it is not `refuse` or `builtin`.
    pub fn parse(value: &str) -> Result<OtherJobs, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "refuse" | "" => Ok(OtherJobs::Refuse),
            "builtin" => Ok(OtherJobs::Builtin),
            _ => Err(format!(
                "{OTHER_JOBS_KNOB} = {value} is not refuse or builtin"
            )),
        }
    }
}

/// This execute node's side of the decision, from its own (root-owned) configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The domain type (already resolved).
    pub domain: DomainType,
    /// `VM_CAPSULE_NODE_IMAGE_DIR`: the only place a job's overlay may have its base.
    pub node_image_dir: Option<PathBuf>,
    /// What other VM jobs get.
    pub other_jobs: OtherJobs,
    /// HTCondor's account's uid from `CONDOR_IDS`, when set: trusted, as root and `condor`
    /// are, to own the directories above the sandbox.
    pub condor_uid: Option<u32>,
    /// `VM_CAPSULE_HOST_PATHS`: the node's read-only host paths, shared with every domain.
    pub host_paths: Vec<String>,
}

/// What the vm-gahp gets.
#[derive(Debug)]
pub enum Outcome {
    /// The domain XML, exit 0.
    Domain(String),
    /// Not ours and left to HTCondor's built-in XML: this line, exit 1.
    Builtin(String),
    /// Refused: this line for the log, [`refusal_document`] on stdout, exit 0.
    Refused(String),
}

/// Why no domain XML can be written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LibvirtError {
    /// The job is not a vm-capsule job.
    #[error("not a vm-capsule job (no {DATA_DISK_ATTR})")]
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
    /// A host path the job needs cannot be shared.
    #[error(transparent)]
    HostPath(#[from] crate::host_paths::MissingHostPath),
    /// The checked files cannot be handed to libvirt unchanged.
    #[error("cannot hand libvirt the checked files: {why}")]
    Pin {
        /// What is wrong, and the fix.
        why: String,
    },
}

/// The job's id for the log: `ClusterId.ProcId`.
fn job_id(ad: &ClassAd) -> String {
    match (integer_attr(ad, "ClusterId"), integer_attr(ad, "ProcId")) {
        (Some(c), Some(p)) => format!("{c}.{p}"),
        _ => "(no ClusterId.ProcId)".to_owned(),
    }
}

/// Decide what the vm-gahp gets for `ad` on this node. Never fails: a problem is a refusal.
pub fn decide(ad: &ClassAd, node: &NodeConfig) -> Outcome {
    let job = job_id(ad);
    match domain::Domain::from_ad(ad, node) {
        Ok(domain) => Outcome::Domain(domain.render()),
        Err(LibvirtError::NotOurs) if node.other_jobs == OtherJobs::Builtin => Outcome::Builtin(
            one_line(&format!("job {job}: {}: HTCondor's built-in domain XML applies ({OTHER_JOBS_KNOB} = builtin)", LibvirtError::NotOurs)),
        ),
        Err(LibvirtError::NotOurs) => Outcome::Refused(one_line(&format!(
            "job {job}: refused: {}, and HTCondor's built-in domain XML would let the job's disk images name host files; set {OTHER_JOBS_KNOB} = builtin to let other VM jobs use it",
            LibvirtError::NotOurs
        ))),
        Err(e) => Outcome::Refused(one_line(&format!("job {job}: refused: {e}"))),
    }
}

/// One line for the vm-gahp's log: names from the ad and the images keep no control or
/// line-breaking character, and the line is bounded.
fn one_line(text: &str) -> String {
    vm_capsule_core::text::safe_text(text, 4000)
}

/// The refusal of the job `ad` for `why` (this node's configuration cannot be read).
pub fn refused(ad: &ClassAd, why: &str) -> Outcome {
    Outcome::Refused(one_line(&format!("job {}: refused: {why}", job_id(ad))))
}

/// The refusal line for a job whose attributes could not even be read.
pub fn refused_unread(why: &str) -> Outcome {
    Outcome::Refused(one_line(&format!("refused: {why}")))
}

/// What a refused job gets on stdout: a domain libvirt will not create, whose error carries
/// [`HOLD_WORDS`] so that the vm-gahp puts the job on hold.
pub fn refusal_document() -> String {
    format!("<domain type='vm-capsule refused this job (its reason is the line before in this log); libvirt reports: {HOLD_WORDS}'><name>vm-capsule-refused</name></domain>\n")
}

#[cfg(test)]
mod tests;
