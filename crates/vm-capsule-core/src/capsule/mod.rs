//! The capsule's data disk: how big it must be and what goes on it (manifest, job ad, agent,
//! `input.tar`). Built by translate on the submit side for the VM universe, and by the
//! launcher on the execute node for the vanilla flavour, where HTCondor's own file transfer
//! brought the inputs (URLs and plugins included) into the sandbox first.

mod input_tar;
mod input_walk;
mod recipe;

use std::fs;
use std::io::Read;
use std::path::Path;

use capsule_disk::{CreateOptions, DataDisk, ImageFormat};

pub use input_tar::{write_input_tar, InputPlan, InputTarError, TarItem};
pub use input_walk::{MAX_INPUT_DEPTH, MAX_INPUT_ENTRIES};
pub use recipe::{is_plain_name, AgentSource, CapsuleRecipe, RecipeError, ATTR_ORIGINAL_JOB};

const MIB: u64 = 1 << 20;
/// Smallest data disk made, MiB.
pub const MIN_DATA_DISK_MIB: u64 = 64;

/// How to make a data disk: the template's layout and the room the job asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecipe {
    /// Container format (the template data disk's).
    pub format: ImageFormat,
    /// Byte offset of the FAT partition.
    pub offset: u64,
    /// FAT volume label.
    pub label: String,
    /// Bytes the job asked for in all (`RequestDisk`), if it said.
    pub request_bytes: Option<u64>,
    /// The least room for outputs (`VM_CAPSULE_OUTPUT_HEADROOM_MB`), bytes.
    pub headroom_bytes: u64,
    /// The largest disk allowed (`VM_CAPSULE_MAX_DATA_DISK_MB`), bytes.
    pub max_bytes: u64,
}

/// What goes on the disk.
#[derive(Debug)]
pub struct DiskContents<'a> {
    /// `capsule.json`.
    pub manifest_json: &'a [u8],
    /// `job.ad`.
    pub job_ad: &'a [u8],
    /// The agent binary, unless the guest image has its own.
    pub agent: Option<&'a Path>,
    /// The inputs.
    pub inputs: &'a InputPlan,
    /// Further top-level files (the NoCloud seed's `user-data` and `meta-data`).
    pub seed: &'a [(&'static str, String)],
}

/// Why a data disk is not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// It would be larger than allowed.
    #[error("needs a {needed_mib} MiB data disk (inputs {input_mib} MiB + output room {room_mib} MiB), more than VM_CAPSULE_MAX_DATA_DISK_MB = {max_mib}; lower request_disk or transfer less")]
    TooBig {
        /// MiB needed.
        needed_mib: u64,
        /// MiB of inputs.
        input_mib: u64,
        /// MiB left for outputs.
        room_mib: u64,
        /// The limit, MiB.
        max_mib: u64,
    },
    /// The agent cannot be read.
    #[error("the guest agent {path} cannot be read: {source}")]
    Agent {
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An input cannot be read, or the disk cannot take what is written.
    #[error(transparent)]
    Inputs(#[from] InputTarError),
    /// The disk itself (create, write, finish).
    #[error("{what} {path}: {source}")]
    Disk {
        /// What was being done.
        what: String,
        /// The disk.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: capsule_disk::Error,
    },
}

impl DiskRecipe {
    /// The disk's size for `payload` bytes of files of which `input_bytes` are inputs: the
    /// payload, plus room for outputs (what the job asks beyond its inputs, at least the
    /// headroom: condor_submit sets `RequestDisk = DiskUsage`, about the inputs, so the
    /// headroom is the floor), plus FAT overhead; whole MiB, at least 64.
    ///
    /// # Errors
    /// [`BuildError::TooBig`] over the limit.
    pub fn size(&self, payload: u64, input_bytes: u64) -> Result<u64, BuildError> {
        let room = self
            .request_bytes
            .unwrap_or(0)
            .saturating_sub(input_bytes)
            .max(self.headroom_bytes);
        let needed_mib = payload
            .saturating_add(room)
            .saturating_add(payload / 32 + 4 * MIB)
            .div_ceil(MIB)
            .max(MIN_DATA_DISK_MIB);
        if needed_mib.saturating_mul(MIB) > self.max_bytes {
            return Err(BuildError::TooBig {
                needed_mib,
                input_mib: input_bytes >> 20,
                room_mib: room >> 20,
                max_mib: self.max_bytes >> 20,
            });
        }
        Ok(needed_mib * MIB)
    }

    /// The size for `contents` (the agent's size read from its file).
    ///
    /// # Errors
    /// As [`DiskRecipe::size`]; an agent that cannot be read.
    pub fn size_for(&self, contents: &DiskContents<'_>) -> Result<u64, BuildError> {
        let agent = match contents.agent {
            Some(path) => fs::metadata(path)
                .map_err(|source| BuildError::Agent {
                    path: path.to_owned(),
                    source,
                })?
                .len(),
            None => 0,
        };
        let seed: usize = contents.seed.iter().map(|(_, t)| t.len()).sum();
        let text = u64::try_from(contents.manifest_json.len() + contents.job_ad.len() + seed)
            .unwrap_or(u64::MAX);
        let inputs = contents.inputs.tar_bytes;
        self.size(inputs.saturating_add(agent).saturating_add(text), inputs)
    }

    /// Make the data disk at `path`, `bytes` large, holding `contents`.
    ///
    /// # Errors
    /// [`BuildError`]; the half-made file is the caller's to remove.
    pub fn build(
        &self,
        path: &Path,
        bytes: u64,
        contents: &DiskContents<'_>,
    ) -> Result<(), BuildError> {
        let disk_err = |what: &str| {
            let what = what.to_owned();
            move |source| BuildError::Disk {
                what: what.clone(),
                path: path.to_owned(),
                source,
            }
        };
        let opts = CreateOptions::new()
            .size(bytes)
            .format(self.format)
            .partition_offset(self.offset)
            .label(self.label.clone());
        let disk =
            DataDisk::create(path, &opts).map_err(disk_err("cannot create the data disk"))?;
        disk.put_file(
            capsule_manifest::CAPSULE_JSON,
            &mut &contents.manifest_json[..],
        )
        .map_err(disk_err("cannot write capsule.json on"))?;
        disk.put_file(capsule_manifest::JOB_AD, &mut &contents.job_ad[..])
            .map_err(disk_err("cannot write job.ad on"))?;
        if let Some(agent) = contents.agent {
            let mut file = fs::File::open(agent).map_err(|source| BuildError::Agent {
                path: agent.to_owned(),
                source,
            })?;
            disk.put_file(capsule_manifest::CAPSULE_INIT, &mut file as &mut dyn Read)
                .map_err(disk_err("cannot write capsule-init on"))?;
        }
        for (name, text) in contents.seed {
            disk.put_file(name, &mut text.as_bytes())
                .map_err(disk_err(&format!("cannot write {name} on")))?;
        }
        write_input_tar(&disk, contents.inputs)?;
        disk.finish().map_err(disk_err("cannot finish"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn recipe(request: Option<u64>) -> DiskRecipe {
        DiskRecipe {
            format: ImageFormat::Qcow2,
            offset: 1 << 20,
            label: "CONDORDATA".into(),
            request_bytes: request,
            headroom_bytes: 64 * MIB,
            max_bytes: 1024 * MIB,
        }
    }

    /// Issue 11.14: `RequestDisk = DiskUsage` (about the inputs) leaves the headroom; a larger
    /// request grows the disk; too large is refused.
    #[test]
    fn sizing_takes_the_headroom_as_a_floor() {
        let tiny = recipe(Some(2048)).size(10 * MIB, 10 * MIB).unwrap();
        assert!(tiny >= 10 * MIB + 64 * MIB, "{tiny}");
        let asked = recipe(Some(500 * MIB)).size(10 * MIB, 10 * MIB).unwrap();
        assert!(asked >= 500 * MIB, "{asked}");
        assert!(matches!(
            recipe(Some(2000 * MIB)).size(0, 0),
            Err(BuildError::TooBig { .. })
        ));
        assert_eq!(recipe(None).size(0, 0).unwrap(), 68 * MIB);
    }
}
