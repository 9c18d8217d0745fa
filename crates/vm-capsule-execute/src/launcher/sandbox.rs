//! The vanilla flavour's sandbox before the boot: HTCondor's own transfer brought the job's
//! executable and inputs (local files, directories, URLs fetched by its plugins) and the
//! capsule's files; the launcher makes the data disk from them, as translate does for the VM
//! universe.

use std::path::Path;

use capsule_manifest::{EntryKind, Manifest};
use classad::ClassAd;

use vm_capsule_core::capsule::{
    AgentSource, BuildError, CapsuleRecipe, DiskContents, InputPlan, RecipeError, TarItem,
};
use vm_capsule_core::routed;

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

/// The capsule ad's own problems, named as such.
fn described(e: RecipeError) -> SandboxError {
    SandboxError::Description {
        file: routed::CAPSULE_AD,
        what: e.to_string(),
    }
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
    let recipe = CapsuleRecipe::from_attrs(capsule).map_err(described)?;
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
    let agent = match &recipe.agent {
        AgentSource::Sandbox(name) => Some(sandbox.join(name)),
        AgentSource::Node => {
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
        AgentSource::Image => None,
    };
    let inputs = inputs(sandbox, &manifest)?;
    // A cloud image's NoCloud seed, made here as translate makes it for the VM universe.
    let seed =
        vm_capsule_core::nocloud::seed_files(recipe.agent_start, &manifest.user, &recipe.job_id);
    let contents = DiskContents {
        manifest_json: &manifest_json,
        job_ad: &job_ad,
        agent: agent.as_deref(),
        inputs: &inputs,
        seed: &seed,
    };
    let bytes = recipe.disk.size_for(&contents)?;
    recipe
        .disk
        .build(&sandbox.join(&recipe.data_disk), bytes, &contents)?;
    Ok(recipe.data_disk)
}

/// The inputs the manifest names, as HTCondor placed them in the sandbox (the executable
/// first, made executable).
fn inputs(sandbox: &Path, manifest: &Manifest) -> Result<InputPlan, SandboxError> {
    let mut items = Vec::new();
    for entry in &manifest.inputs {
        // A clean relative path: the manifest's paths are checked as it is read.
        let source = sandbox.join(&entry.path);
        if std::fs::symlink_metadata(&source).is_err() {
            return Err(SandboxError::Missing {
                name: entry.path.to_string(),
                dir: sandbox.display().to_string(),
            });
        }
        items.push(TarItem {
            executable: entry.path.as_str() == manifest.executable.as_str(),
            is_dir: entry.kind == EntryKind::Dir || source.is_dir(),
            name: entry.path.to_string(),
            source,
        });
    }
    Ok(InputPlan::of(items).map_err(vm_capsule_core::capsule::BuildError::from)?)
}
