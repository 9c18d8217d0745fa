//! The vanilla flavour's data-disk recipe: what translate writes into the capsule ad and the
//! launcher reads back on the execute node to make the data disk there. One type, written by
//! [`CapsuleRecipe::to_attrs`] and read by [`CapsuleRecipe::from_attrs`], so the two sides
//! cannot drift apart.
//!
//! # Security
//! The capsule ad travels in the job's sandbox and is its owner's to edit: every name read
//! back must be a plain file name in the sandbox, every number a non-negative integer.

use classad::eval::{integer_attr, string_attr};
use classad::{ClassAd, Expr};

use super::DiskRecipe;
use crate::nocloud::{AgentStart, ATTR_AGENT_START};
use crate::routed;

/// The original job's id, `<cluster>.<proc>` (it goes into the cloud-init meta-data).
pub const ATTR_ORIGINAL_JOB: &str = "VMCapsuleOriginalJob";

/// Whether `name` is a plain file name: one component, not `.` or `..`, and nothing QEMU's
/// option syntax gives a meaning (`,`).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', ',', '\0'])
}

/// Where the data disk's guest agent comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSource {
    /// The guest image has its own: none goes on the disk.
    Image,
    /// This file in the sandbox, which HTCondor transferred.
    Sandbox(String),
    /// The `capsule-init` installed beside the node's launcher (`VM_CAPSULE_NODE_LAUNCHER`).
    Node,
}

/// The data disk the vanilla launcher makes, as the capsule ad describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleRecipe {
    /// The disk's file name in the sandbox (a plain name).
    pub data_disk: String,
    /// Its layout and room.
    pub disk: DiskRecipe,
    /// Its agent.
    pub agent: AgentSource,
    /// Who starts the agent (cloud-init needs a NoCloud seed on the disk).
    pub agent_start: AgentStart,
    /// The original job, `<cluster>.<proc>`.
    pub job_id: String,
}

/// Why a capsule ad's recipe cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    /// An attribute the launcher needs is absent (or not of its type).
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A file name attribute names a path or something QEMU would misread.
    #[error("{attr} names {name:?}, not a plain file name in the job's sandbox; was the capsule ad edited?")]
    NotAPlainName {
        /// The attribute.
        attr: &'static str,
        /// What it says.
        name: String,
    },
    /// The original job's id is not `<cluster>.<proc>`.
    #[error("{ATTR_ORIGINAL_JOB} = {0:?} is not a job id <cluster>.<proc>")]
    NotAJobId(String),
}

impl CapsuleRecipe {
    /// Write the recipe into `ad` (the capsule ad).
    pub fn to_attrs(&self, ad: &mut ClassAd) {
        let int = |v: u64| Expr::integer(i64::try_from(v).unwrap_or(i64::MAX));
        let r = &self.disk;
        ad.insert(routed::ATTR_DATA_DISK, Expr::string(self.data_disk.clone()));
        ad.insert(routed::ATTR_DATA_DISK_FORMAT, Expr::string(r.format.name()));
        ad.insert(routed::ATTR_DISK_OFFSET, int(r.offset));
        ad.insert(routed::ATTR_DISK_LABEL, Expr::string(r.label.clone()));
        if let Some(request) = r.request_bytes {
            ad.insert(routed::ATTR_DISK_REQUEST, int(request));
        }
        ad.insert(routed::ATTR_DISK_HEADROOM, int(r.headroom_bytes));
        ad.insert(routed::ATTR_DISK_MAX, int(r.max_bytes));
        match &self.agent {
            AgentSource::Image => {}
            AgentSource::Sandbox(name) => ad.insert(routed::ATTR_AGENT, Expr::string(name.clone())),
            AgentSource::Node => ad.insert(routed::ATTR_AGENT_ON_NODE, Expr::boolean(true)),
        }
        if self.agent_start == AgentStart::CloudInit {
            ad.insert(ATTR_AGENT_START, Expr::string("cloud-init"));
        }
        ad.insert(ATTR_ORIGINAL_JOB, Expr::string(self.job_id.clone()));
    }

    /// Read and check the recipe in `ad` (the capsule ad).
    ///
    /// # Errors
    /// [`RecipeError`] naming the attribute that is missing or wrong.
    pub fn from_attrs(ad: &ClassAd) -> Result<CapsuleRecipe, RecipeError> {
        let int = |name: &'static str| {
            integer_attr(ad, name)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or(RecipeError::Missing(name))
        };
        let name = string_attr(ad, routed::ATTR_DATA_DISK)
            .ok_or(RecipeError::Missing(routed::ATTR_DATA_DISK))?;
        let data_disk = plain_name(routed::ATTR_DATA_DISK, name)?;
        let format = string_attr(ad, routed::ATTR_DATA_DISK_FORMAT)
            .and_then(|f| f.parse().ok())
            .ok_or(RecipeError::Missing(routed::ATTR_DATA_DISK_FORMAT))?;
        let disk = DiskRecipe {
            format,
            offset: int(routed::ATTR_DISK_OFFSET)?,
            label: string_attr(ad, routed::ATTR_DISK_LABEL)
                .ok_or(RecipeError::Missing(routed::ATTR_DISK_LABEL))?,
            request_bytes: int(routed::ATTR_DISK_REQUEST).ok(),
            headroom_bytes: int(routed::ATTR_DISK_HEADROOM)?,
            max_bytes: int(routed::ATTR_DISK_MAX)?,
        };
        let on_node = classad::eval::evaluate_attr(ad, routed::ATTR_AGENT_ON_NODE)
            == classad::Value::Bool(true);
        let agent = match (string_attr(ad, routed::ATTR_AGENT), on_node) {
            (Some(name), _) => AgentSource::Sandbox(plain_name(routed::ATTR_AGENT, name)?),
            (None, true) => AgentSource::Node,
            (None, false) => AgentSource::Image,
        };
        // An unknown value is the image's own start, as before the knob existed.
        let agent_start = AgentStart::from_word(string_attr(ad, ATTR_AGENT_START).as_deref());
        Ok(CapsuleRecipe {
            data_disk,
            disk,
            agent,
            agent_start,
            job_id: job_id(ad)?,
        })
    }
}

/// `name`, read from `attr`, when it is a plain file name.
fn plain_name(attr: &'static str, name: String) -> Result<String, RecipeError> {
    if is_plain_name(&name) {
        Ok(name)
    } else {
        Err(RecipeError::NotAPlainName { attr, name })
    }
}

/// [`ATTR_ORIGINAL_JOB`], checked.
fn job_id(ad: &ClassAd) -> Result<String, RecipeError> {
    let id = string_attr(ad, ATTR_ORIGINAL_JOB).unwrap_or_default();
    let number = |s: Option<&str>| {
        s.is_some_and(|s| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut parts = id.split('.');
    if number(parts.next()) && number(parts.next()) && parts.next().is_none() {
        return Ok(id);
    }
    Err(RecipeError::NotAJobId(id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use capsule_disk::ImageFormat;

    fn recipe() -> CapsuleRecipe {
        CapsuleRecipe {
            data_disk: "data.qcow2".into(),
            disk: DiskRecipe {
                format: ImageFormat::Qcow2,
                offset: 1 << 20,
                label: "CAPSULE".into(),
                request_bytes: Some(5 << 20),
                headroom_bytes: 64 << 20,
                max_bytes: 1 << 30,
            },
            agent: AgentSource::Sandbox("capsule-init".into()),
            agent_start: AgentStart::CloudInit,
            job_id: "12.3".into(),
        }
    }

    #[test]
    fn what_translate_writes_the_launcher_reads_back() {
        for (agent, request) in [
            (AgentSource::Sandbox("capsule-init".into()), Some(5 << 20)),
            (AgentSource::Node, None),
            (AgentSource::Image, Some(0)),
        ] {
            let mut r = recipe();
            r.agent = agent;
            r.disk.request_bytes = request;
            let mut ad = ClassAd::new();
            r.to_attrs(&mut ad);
            let text = classad::print::ad_to_hook_string(&ad).unwrap();
            let back = classad::parse_old_ad(&text).unwrap();
            assert_eq!(CapsuleRecipe::from_attrs(&back).unwrap(), r);
        }
    }

    /// The capsule ad is the job owner's to edit: paths, commas, negative numbers and forged
    /// job ids are refused with the attribute named.
    #[test]
    fn edited_recipes_are_refused_by_attribute() {
        let cases: [(&str, &str, &str); 5] = [
            (
                routed::ATTR_DATA_DISK,
                "\"../../etc/x\"",
                "VMCapsuleDataDisk names",
            ),
            (
                routed::ATTR_AGENT,
                "\"a,file=/etc/shadow\"",
                "VMCapsuleAgent names",
            ),
            (
                routed::ATTR_DISK_MAX,
                "-1",
                "VMCapsuleMaxDataDiskBytes is missing",
            ),
            (
                routed::ATTR_DATA_DISK_FORMAT,
                "\"floppy\"",
                "VMCapsuleDataDiskFormat is missing",
            ),
            (ATTR_ORIGINAL_JOB, "\"1.2; rm\"", "is not a job id"),
        ];
        for (attr, value, want) in cases {
            let mut ad = ClassAd::new();
            recipe().to_attrs(&mut ad);
            let text = format!(
                "{}{attr} = {value}\n",
                classad::print::ad_to_hook_string(&ad).unwrap()
            );
            let edited = classad::parse_old_ad(&text).unwrap();
            let e = CapsuleRecipe::from_attrs(&edited).unwrap_err().to_string();
            assert!(e.contains(want), "{attr} = {value}: {e}");
        }
    }
}
