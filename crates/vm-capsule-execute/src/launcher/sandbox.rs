//! The vanilla flavour's sandbox before the boot: HTCondor's own transfer brought the job's
//! executable and inputs (local files, directories, URLs fetched by its plugins) and the
//! capsule's files; the launcher makes the data disk from them, as translate does for the VM
//! universe.

use std::path::Path;

use capsule_manifest::{CheckpointExit, EntryKind, Manifest};
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

/// Names HTCondor's starter puts in a job's sandbox: never the job's files.
const STARTER_NAMES: [&str; 7] = [
    ".chirp.config",
    ".job.ad",
    ".machine.ad",
    ".update.ad",
    ".job_wrapper_failure",
    "tmp",
    "var",
];

/// What the sandbox holds besides the inputs HTCondor transferred this time, and how the job
/// checkpoints: a self-checkpointing job restarted in the same sandbox, or a job restarted
/// after an eviction with the files it left, finds them in its work dir, as natively.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resume<'a> {
    /// The capsule's own names in the sandbox: never the job's files.
    pub capsule_files: &'a [String],
    /// How the job checkpoints, for the agent.
    pub checkpoint_exit: Option<CheckpointExit>,
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
    make_data_disk_with(sandbox, capsule, node_agent, Resume::default())
}

/// [`make_data_disk`], taking every other file the job has in the sandbox along (see
/// [`Resume`]).
///
/// # Errors
/// [`SandboxError`] naming what is missing.
pub fn make_data_disk_with(
    sandbox: &Path,
    capsule: &ClassAd,
    node_agent: Option<&Path>,
    resume: Resume<'_>,
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
    let description = |e: capsule_manifest::Error| SandboxError::Description {
        file: routed::CAPSULE_JSON_FILE,
        what: e.to_string(),
    };
    let mut manifest = Manifest::from_json(&manifest_json).map_err(description)?;
    let manifest_json = match resume.checkpoint_exit {
        Some(exit) => {
            manifest.set_checkpoint_exit(Some(exit));
            drop_removed_inputs(sandbox, &mut manifest);
            manifest.to_json().map_err(description)?
        }
        None => manifest_json,
    };
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
    let inputs = inputs(sandbox, &manifest, resume.capsule_files)?;
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

/// A self-checkpointing job restarted in place lacks the inputs it removed before its
/// checkpoint exit (see [`remove_deleted`]), as natively: they are no inputs of this run.
/// The executable stays listed, so its absence is still an error.
fn drop_removed_inputs(sandbox: &Path, manifest: &mut Manifest) {
    let executable = manifest.executable.as_str().to_owned();
    manifest.inputs.retain(|entry| {
        entry.path.as_str() == executable
            || std::fs::symlink_metadata(sandbox.join(&entry.path)).is_ok()
    });
}

/// The inputs the manifest names, as HTCondor placed them in the sandbox (the executable
/// first, made executable), then every other file or directory the sandbox holds that is
/// neither the capsule's (`capsule_files`) nor the starter's: what the job wrote in an
/// earlier run here, or what HTCondor brought back from the last checkpoint or eviction.
fn inputs(
    sandbox: &Path,
    manifest: &Manifest,
    capsule_files: &[String],
) -> Result<InputPlan, SandboxError> {
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
    items.extend(left_by_the_job(sandbox, manifest, capsule_files));
    Ok(InputPlan::of(items).map_err(vm_capsule_core::capsule::BuildError::from)?)
}

/// The sandbox's other entries (see [`inputs`]): plain files and directories only, by name,
/// sorted; links and special files stay behind.
fn left_by_the_job(sandbox: &Path, manifest: &Manifest, capsule_files: &[String]) -> Vec<TarItem> {
    let listed = |name: &str| {
        manifest
            .inputs
            .iter()
            .any(|i| i.path.components().next() == Some(name))
    };
    entries(sandbox, capsule_files, &listed)
}

/// The job's entries in `sandbox` as HTCondor's transfer left them: every plain file and
/// directory but the starter's and `capsule_files`, by name, sorted; links and special files
/// stay behind. The node policy's inputs.
pub fn job_entries(sandbox: &Path, capsule_files: &[String]) -> Vec<TarItem> {
    entries(sandbox, capsule_files, &|_| false)
}

fn entries(
    sandbox: &Path,
    capsule_files: &[String],
    listed: &dyn Fn(&str) -> bool,
) -> Vec<TarItem> {
    let Ok(dir) = std::fs::read_dir(sandbox) else {
        return Vec::new();
    };
    let mut items: Vec<TarItem> = dir
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let meta = entry.metadata().ok()?; // does not follow a link
            let ours = capsule_files.contains(&name)
                || STARTER_NAMES.contains(&name.as_str())
                || name.starts_with("_condor_")
                || name.starts_with(".condor_");
            if ours || listed(&name) || !(meta.is_file() || meta.is_dir()) {
                return None;
            }
            capsule_manifest::RelPath::file_name_only(&name).ok()?;
            Some(TarItem {
                executable: false,
                is_dir: meta.is_dir(),
                source: entry.path(),
                name,
            })
        })
        .collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    items
}

/// After a checkpoint exit: remove from `sandbox` the entries the guest says the job removed
/// (`reported`), so the restart in place does not find them again, as natively. Only names
/// the launcher took along as the job's files are removed (not the executable, the capsule's
/// or the starter's names), only plain files and directories, never through a link; what the
/// guest says of anything else is ignored. Returns the names removed.
pub(crate) fn remove_deleted(
    sandbox: &Path,
    capsule_files: &[String],
    reported: &[String],
) -> Vec<String> {
    if reported.is_empty() {
        return Vec::new();
    }
    let Some(manifest) = read_manifest(sandbox) else {
        return Vec::new();
    };
    // The job's entries as the next start would take them along, inputs included but the
    // executable.
    let executable = manifest.executable.as_str();
    let exe_top = executable.split('/').next().unwrap_or(executable);
    let mut removed = Vec::new();
    for item in entries(sandbox, capsule_files, &|name| name == exe_top) {
        if !reported.contains(&item.name) {
            continue;
        }
        // Looked at again just before: only what is still a plain file or directory.
        let gone = match std::fs::symlink_metadata(&item.source) {
            Ok(m) if m.is_file() => std::fs::remove_file(&item.source).is_ok(),
            // Never follows a link inside the tree.
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&item.source).is_ok(),
            _ => false,
        };
        if gone {
            removed.push(item.name);
        }
    }
    removed
}

/// The capsule's description in the sandbox, read bounded and only as a plain file.
fn read_manifest(sandbox: &Path) -> Option<Manifest> {
    let file = super::ad_file::open_regular(&sandbox.join(routed::CAPSULE_JSON_FILE)).ok()?;
    Manifest::from_reader(file).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What the job left in the sandbox goes back in; the capsule's files, the starter's,
    /// the listed inputs and links do not.
    #[test]
    fn the_job_s_own_files_are_taken_along() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        for f in [
            "job.sh",
            "in.txt",
            "ckpt.dat",
            "vmlinuz",
            "_condor_stdout",
            ".job.ad",
        ] {
            std::fs::write(s.join(f), f).unwrap();
        }
        std::fs::create_dir(s.join("state")).unwrap();
        std::fs::create_dir(s.join("tmp")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.join("link")).unwrap();
        let mut m = Manifest::new("job.sh".parse().unwrap(), vec!["job.sh".into()]);
        for input in ["job.sh", "in.txt"] {
            m.inputs.push(capsule_manifest::InputEntry {
                path: input.parse().unwrap(),
                kind: EntryKind::File,
            });
        }
        let items = left_by_the_job(s, &m, &["vmlinuz".to_owned()]);
        let names: Vec<(&str, bool)> = items.iter().map(|i| (i.name.as_str(), i.is_dir)).collect();
        assert_eq!(names, [("ckpt.dat", false), ("state", true)]);
    }

    /// Only what the job had in the sandbox goes, whatever the guest says: not the
    /// executable, the capsule's files, the starter's, what a link points to, or a name
    /// that is not there.
    #[test]
    fn only_the_job_s_removed_files_leave_the_sandbox() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "p").unwrap();
        for f in [
            "job.sh",
            "in.txt",
            "old.dat",
            "vmlinuz",
            "_condor_stdout",
            ".job.ad",
        ] {
            std::fs::write(s.join(f), f).unwrap();
        }
        std::fs::create_dir_all(s.join("state/sub")).unwrap();
        std::os::unix::fs::symlink(outside.path(), s.join("state/sub/link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), s.join("link")).unwrap();
        let mut m = Manifest::new("job.sh".parse().unwrap(), vec!["job.sh".into()]);
        for input in ["job.sh", "in.txt"] {
            m.inputs.push(capsule_manifest::InputEntry {
                path: input.parse().unwrap(),
                kind: EntryKind::File,
            });
        }
        std::fs::write(s.join(routed::CAPSULE_JSON_FILE), m.to_json().unwrap()).unwrap();
        let capsule = ["vmlinuz".to_owned(), routed::CAPSULE_JSON_FILE.to_owned()];
        let said: Vec<String> = [
            "job.sh",
            "in.txt",
            "old.dat",
            "state",
            "vmlinuz",
            "_condor_stdout",
            ".job.ad",
            "link",
            "nothere",
            routed::CAPSULE_JSON_FILE,
        ]
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
        let mut removed = remove_deleted(s, &capsule, &said);
        removed.sort();
        assert_eq!(removed, ["in.txt", "old.dat", "state"]);
        for kept in ["job.sh", "vmlinuz", "_condor_stdout", ".job.ad", "link"] {
            assert!(
                std::fs::symlink_metadata(s.join(kept)).is_ok(),
                "{kept} removed"
            );
        }
        assert!(outside.path().join("precious").exists());
        // The restart in place goes on without the removed input, not without its program.
        std::fs::remove_file(s.join("job.sh")).unwrap();
        let mut resumed = m.clone();
        drop_removed_inputs(s, &mut resumed);
        let inputs: Vec<&str> = resumed.inputs.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(inputs, ["job.sh"]);
        // Without the capsule's description nothing is removed.
        std::fs::write(s.join("old.dat"), "again").unwrap();
        std::fs::remove_file(s.join(routed::CAPSULE_JSON_FILE)).unwrap();
        assert!(remove_deleted(s, &capsule, &said).is_empty());
        assert!(s.join("old.dat").exists());
    }
}
