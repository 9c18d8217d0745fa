//! The vanilla flavour's sandbox before the boot: HTCondor's own transfer brought the job's
//! executable and inputs (local files, directories, URLs fetched by its plugins) and the
//! capsule's files; the launcher makes the data disk from them, as translate does for the VM
//! universe.

use std::path::Path;

use capsule_manifest::{EntryKind, Manifest, RelPath};
use classad::eval::{integer_attr, string_attr};
use classad::ClassAd;

use crate::capsule::{BuildError, DiskContents, DiskRecipe, InputPlan, TarItem};
use crate::routed;

/// Why the data disk could not be made in the sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The capsule's description lacks what the launcher needs.
    #[error("{file}: {what}; was it made by the same vm-capsule release?")]
    Description {
        /// The file.
        file: &'static str,
        /// What is missing or wrong.
        what: String,
    },
    /// A file HTCondor should have transferred is not in the sandbox.
    #[error("{name} is not in the sandbox {dir}; HTCondor's input transfer did not bring it")]
    Missing {
        /// Its name.
        name: String,
        /// The sandbox.
        dir: String,
    },
    /// Making the disk.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// A file name the capsule ad gives: a plain name in the sandbox (the ad is the job owner's
/// to edit, so a path could name any file the slot's user can read or write).
fn plain_name(attr: &str, name: String) -> Result<String, SandboxError> {
    if crate::routed::is_plain_name(&name) {
        return Ok(name);
    }
    Err(SandboxError::Description {
        file: routed::CAPSULE_AD,
        what: format!(
            "{attr} names {name:?}, not a plain file name in the job's sandbox; was the capsule ad edited?"
        ),
    })
}

/// `VMCapsuleOriginalJob`: `<cluster>.<proc>` (it goes into the cloud-init meta-data).
fn original_job(ad: &ClassAd) -> Result<String, SandboxError> {
    const ATTR: &str = "VMCapsuleOriginalJob";
    let id = string_attr(ad, ATTR).unwrap_or_default();
    let number = |s: Option<&str>| {
        s.is_some_and(|s| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut parts = id.split('.');
    if number(parts.next()) && number(parts.next()) && parts.next().is_none() {
        return Ok(id);
    }
    Err(SandboxError::Description {
        file: routed::CAPSULE_AD,
        what: format!("{ATTR} = {id:?} is not a job id <cluster>.<proc>"),
    })
}

/// The data disk's recipe from the capsule ad.
fn recipe(ad: &ClassAd) -> Result<(String, DiskRecipe), SandboxError> {
    let missing = |what: &str| SandboxError::Description {
        file: routed::CAPSULE_AD,
        what: format!("{what} is missing"),
    };
    let int = |name: &str| integer_attr(ad, name).and_then(|v| u64::try_from(v).ok());
    let name =
        string_attr(ad, routed::ATTR_DATA_DISK).ok_or_else(|| missing(routed::ATTR_DATA_DISK))?;
    let name = plain_name(routed::ATTR_DATA_DISK, name)?;
    let format = string_attr(ad, routed::ATTR_DATA_DISK_FORMAT)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| missing(routed::ATTR_DATA_DISK_FORMAT))?;
    Ok((
        name,
        DiskRecipe {
            format,
            offset: int(routed::ATTR_DISK_OFFSET)
                .ok_or_else(|| missing(routed::ATTR_DISK_OFFSET))?,
            label: string_attr(ad, routed::ATTR_DISK_LABEL)
                .ok_or_else(|| missing(routed::ATTR_DISK_LABEL))?,
            request_bytes: int(routed::ATTR_DISK_REQUEST),
            headroom_bytes: int(routed::ATTR_DISK_HEADROOM)
                .ok_or_else(|| missing(routed::ATTR_DISK_HEADROOM))?,
            max_bytes: int(routed::ATTR_DISK_MAX).ok_or_else(|| missing(routed::ATTR_DISK_MAX))?,
        },
    ))
}

/// Make the data disk in `sandbox` as `capsule` (the capsule ad) describes, from the
/// manifest, the job ad, the agent and the inputs HTCondor transferred. `node_agent` is the
/// agent installed beside the launcher, used when the capsule ad asks for it
/// (`VM_CAPSULE_NODE_LAUNCHER`). Returns the disk's file name.
///
/// # Errors
/// [`SandboxError`] naming what is missing.
pub fn make_data_disk(
    sandbox: &Path,
    capsule: &ClassAd,
    node_agent: Option<&Path>,
) -> Result<String, SandboxError> {
    let (name, recipe) = recipe(capsule)?;
    let read = |file: &'static str| {
        std::fs::read(sandbox.join(file)).map_err(|e| SandboxError::Description {
            file,
            what: format!("cannot be read: {e}"),
        })
    };
    let manifest_json = read(routed::CAPSULE_JSON_FILE)?;
    let job_ad = read(routed::JOB_AD_FILE)?;
    let manifest = Manifest::from_json(&manifest_json).map_err(|e| SandboxError::Description {
        file: routed::CAPSULE_JSON_FILE,
        what: e.to_string(),
    })?;
    let on_node = classad::eval::evaluate_attr(capsule, routed::ATTR_AGENT_ON_NODE)
        == classad::Value::Bool(true);
    let agent = match (string_attr(capsule, routed::ATTR_AGENT), on_node) {
        (Some(name), _) => Some(sandbox.join(plain_name(routed::ATTR_AGENT, name)?)),
        (None, true) => {
            Some(
                node_agent
                    .map(Path::to_owned)
                    .ok_or_else(|| SandboxError::Description {
                        file: routed::CAPSULE_AD,
                        what: format!(
                            "{} asks for the agent beside the launcher, which is not known",
                            routed::ATTR_AGENT_ON_NODE
                        ),
                    })?,
            )
        }
        (None, false) => None,
    };
    let inputs = inputs(sandbox, &manifest)?;
    // A cloud image's NoCloud seed, made here as translate makes it for the VM universe.
    let start = crate::nocloud::AgentStart::from_word(
        string_attr(capsule, crate::nocloud::ATTR_AGENT_START).as_deref(),
    );
    let job_id = original_job(capsule)?;
    let seed = crate::nocloud::seed_files(start, &manifest.user, &job_id);
    let contents = DiskContents {
        manifest_json: &manifest_json,
        job_ad: &job_ad,
        agent: agent.as_deref(),
        inputs: &inputs,
        seed: &seed,
    };
    let bytes = recipe.size_for(&contents)?;
    recipe.build(&sandbox.join(&name), bytes, &contents)?;
    Ok(name)
}

/// The inputs the manifest names, as HTCondor placed them in the sandbox (the executable
/// first, made executable).
fn inputs(sandbox: &Path, manifest: &Manifest) -> Result<InputPlan, SandboxError> {
    let mut items = Vec::new();
    for entry in &manifest.inputs {
        let Ok(rel) = RelPath::parse(&entry.path) else {
            return Err(SandboxError::Description {
                file: routed::CAPSULE_JSON_FILE,
                what: format!("input {:?} is not a plain relative path", entry.path),
            });
        };
        let source = sandbox.join(rel.as_str());
        if std::fs::symlink_metadata(&source).is_err() {
            return Err(SandboxError::Missing {
                name: entry.path.clone(),
                dir: sandbox.display().to_string(),
            });
        }
        items.push(TarItem {
            executable: entry.path == manifest.executable,
            is_dir: entry.kind == EntryKind::Dir || source.is_dir(),
            name: entry.path.clone(),
            source,
        });
    }
    Ok(InputPlan::of(items).map_err(crate::capsule::BuildError::from)?)
}
