//! The returned data disk, loaded into validated types before anything is placed.
//!
//! Everything in the job dir came back from the execute node and is untrusted: only regular
//! files are opened (a FIFO named like a VMware delta once blocked finalize forever), the
//! disk must be what was staged (same format, same virtual size) and its files bounded in size
//! (a 5 GiB raw image replaced a 64 MiB qcow2 and 5.3 GB landed in Iwd), and `result.json` is
//! read bounded and validated.

use std::io::Read;
use std::path::PathBuf;

use capsule_disk::{Access, DataDisk, Image};
use capsule_manifest::JobResult;
use rustix::fs::FileType;

use super::request::RoutedCapsule;
use crate::scratch::JobDir;

/// Container overhead allowed beyond the virtual size (tables, descriptors), in bytes.
const CONTAINER_SLACK: u64 = 64 << 20;

/// A returned capsule that passed every check.
#[derive(Debug)]
pub struct Returned {
    /// The data disk, open read-only (the top of a VMware delta chain if there is one).
    pub disk: DataDisk,
    /// The guest's validated result.
    pub result: JobResult,
}

/// Open and check the data disk in `dir`, then read its result.
///
/// # Errors
/// A message for `VMCapsuleError` saying what is missing or wrong.
pub fn load(dir: &JobDir, capsule: &RoutedCapsule, max_bytes: u64) -> Result<Returned, String> {
    let name = capsule.data_disk.as_str();
    let top = top_of_chain(dir, name)?;
    // Every file of the chain: a regular file (lstat: no link, no FIFO), bounded in size.
    let limit = capsule
        .virtual_size
        .map_or(max_bytes, |v| v.saturating_add(v / 8))
        .saturating_add(CONTAINER_SLACK);
    for file in std::iter::once(name).chain(top.as_deref()) {
        let st = dir.stat(file).map_err(|e| e.to_string())?.ok_or_else(|| {
            format!(
                "the VM's data disk {} is missing",
                dir.path().join(file).display()
            )
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(format!(
                "{} is not a regular file; refused",
                dir.path().join(file).display()
            ));
        }
        let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
        if size > limit {
            return Err(format!(
                "the returned data disk {} is {size} bytes, more than the {limit} bytes a disk of the staged size can take; refused",
                dir.path().join(file).display()
            ));
        }
    }
    let path: PathBuf = dir.path().join(top.as_deref().unwrap_or(name));
    let image = Image::open(&path, Access::ReadOnly)
        .map_err(|e| format!("the VM's data disk {} is unreadable: {e}", path.display()))?;
    if let Some(format) = capsule.format {
        if image.format() != format {
            return Err(format!(
                "the returned data disk {} is {}, but a {} disk was staged; refused",
                path.display(),
                image.format().name(),
                format.name()
            ));
        }
    }
    if let Some(size) = capsule.virtual_size {
        if image.virtual_size() != size {
            return Err(format!(
                "the returned data disk {} has a virtual size of {} bytes, but {size} were staged; refused",
                path.display(),
                image.virtual_size()
            ));
        }
    }
    contained_in(dir, &image.every_file())?;
    drop(image);
    let disk = DataDisk::open(&path, Access::ReadOnly)
        .map_err(|e| format!("the VM's data disk {} is unreadable: {e}", path.display()))?;
    let result = read_result(&disk).map_err(|e| {
        format!(
            "the VM ended without a result ({e}); the guest may have crashed or run out of time"
        )
    })?;
    Ok(Returned { disk, result })
}

/// Every file a container is made of (descriptor, extents, parents, backing files) must be a
/// regular file directly in the job dir, as staged: a qcow2 backing file or a VMware extent
/// elsewhere, or a link to one, would make the outputs come from a file the disk only names.
fn contained_in(dir: &JobDir, files: &[PathBuf]) -> Result<(), String> {
    for file in files {
        let name = file
            .strip_prefix(dir.path())
            .ok()
            .and_then(|rel| rel.to_str())
            .filter(|rel| !rel.is_empty() && !rel.contains('/'));
        let Some(name) = name else {
            return Err(format!(
                "the returned data disk names {}, outside its job dir {}; refused",
                file.display(),
                dir.path().display()
            ));
        };
        let st = dir.stat(name).map_err(|e| e.to_string())?;
        if !st.is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile) {
            return Err(format!(
                "the returned data disk names {}, which is not a regular file; refused",
                file.display()
            ));
        }
    }
    Ok(())
}

/// Read and validate `result.json` from a returned data disk (bounded).
///
/// # Errors
/// A message saying what is missing or invalid.
pub fn read_result(disk: &DataDisk) -> Result<JobResult, String> {
    let reader = disk
        .open_file(capsule_manifest::RESULT_JSON)
        .map_err(|e| format!("no result.json: {e}"))?;
    let mut bytes = Vec::new();
    reader
        .take(capsule_manifest::MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("result.json unreadable: {e}"))?;
    JobResult::from_json(&bytes).map_err(|e| format!("result.json invalid: {e}"))
}

/// The newest VMware snapshot delta over `name` (`data-000001.vmdk` over `data.vmdk`), among
/// the regular files of the dir; `None` when there is none.
fn top_of_chain(dir: &JobDir, name: &str) -> Result<Option<String>, String> {
    let Some(stem) = name.strip_suffix(".vmdk") else {
        return Ok(None);
    };
    let is_delta = |n: &str| {
        n.strip_prefix(stem)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".vmdk"))
            .is_some_and(|d| d.len() == 6 && d.bytes().all(|c| c.is_ascii_digit()))
    };
    Ok(dir.regular_files(&is_delta).pop())
}
