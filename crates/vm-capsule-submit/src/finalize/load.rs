//! The returned data disk, loaded into validated types before anything is placed.
//!
//! Everything in the job dir came back from the execute node and is untrusted: only regular
//! files are opened (a FIFO named like a VMware delta once blocked finalize forever), the
//! disk must be what was staged (same format, same virtual size) and its files bounded in size
//! (a 5 GiB raw image replaced a 64 MiB qcow2 and 5.3 GB landed in Iwd). What the disk holds
//! is read by [`vm_capsule_core::returned`].

use std::path::PathBuf;

use capsule_disk::{Access, DataDisk, Image};
use rustix::fs::FileType;

use super::error::FinalizeError;
use super::request::RoutedCapsule;
use vm_capsule_core::scratch::JobDir;

/// Container overhead allowed beyond the virtual size (tables, descriptors), in bytes.
const CONTAINER_SLACK: u64 = 64 << 20;

/// Check the data disk in `dir` and open it read-only (the top of a VMware delta chain if
/// there is one), for [`vm_capsule_core::returned::read`].
///
/// # Errors
/// [`FinalizeError`] saying what is missing or wrong.
pub fn load(
    dir: &JobDir,
    capsule: &RoutedCapsule,
    max_bytes: u64,
) -> Result<DataDisk, FinalizeError> {
    let name = capsule.data_disk.as_str();
    let top = top_of_chain(dir, name);
    // Every file of the chain: a regular file (lstat: no link, no FIFO), bounded in size.
    let limit = capsule
        .virtual_size
        .map_or(max_bytes, |v| v.saturating_add(v / 8))
        .saturating_add(CONTAINER_SLACK);
    for file in std::iter::once(name).chain(top.as_deref()) {
        let st = dir.stat(file)?.ok_or_else(|| {
            FinalizeError::Returned(format!(
                "the VM's data disk {} is missing",
                dir.path().join(file).display()
            ))
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(FinalizeError::OwnerFiles(format!(
                "{} is not a regular file; refused",
                dir.path().join(file).display()
            )));
        }
        let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
        if size > limit {
            return Err(FinalizeError::Returned(format!(
                "the returned data disk {} is {size} bytes, more than the {limit} bytes a disk of the staged size can take; refused",
                dir.path().join(file).display()
            )));
        }
    }
    let path: PathBuf = dir.path().join(top.as_deref().unwrap_or(name));
    let unreadable = |e: capsule_disk::Error| {
        FinalizeError::Returned(format!(
            "the VM's data disk {} is unreadable: {e}",
            path.display()
        ))
    };
    let image = Image::open(&path, Access::ReadOnly).map_err(unreadable)?;
    if let Some(format) = capsule.format {
        if image.format() != format {
            return Err(FinalizeError::Returned(format!(
                "the returned data disk {} is {}, but a {} disk was staged; refused",
                path.display(),
                image.format().name(),
                format.name()
            )));
        }
    }
    if let Some(size) = capsule.virtual_size {
        if image.virtual_size() != size {
            return Err(FinalizeError::Returned(format!(
                "the returned data disk {} has a virtual size of {} bytes, but {size} were staged; refused",
                path.display(),
                image.virtual_size()
            )));
        }
    }
    contained_in(dir, &image.every_file())?;
    drop(image);
    DataDisk::open(&path, Access::ReadOnly).map_err(unreadable)
}

/// Every file a container is made of (descriptor, extents, parents, backing files) must be a
/// regular file directly in the job dir, as staged: a qcow2 backing file or a VMware extent
/// elsewhere, or a link to one, would make the outputs come from a file the disk only names.
fn contained_in(dir: &JobDir, files: &[PathBuf]) -> Result<(), FinalizeError> {
    for file in files {
        let name = file
            .strip_prefix(dir.path())
            .ok()
            .and_then(|rel| rel.to_str())
            .filter(|rel| !rel.is_empty() && !rel.contains('/'));
        let Some(name) = name else {
            return Err(FinalizeError::Returned(format!(
                "the returned data disk names {}, outside its job dir {}; refused",
                file.display(),
                dir.path().display()
            )));
        };
        let st = dir.stat(name)?;
        if !st.is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile) {
            return Err(FinalizeError::OwnerFiles(format!(
                "the returned data disk names {}, which is not a regular file; refused",
                file.display()
            )));
        }
    }
    Ok(())
}

/// The newest VMware snapshot delta over `name` (`data-000001.vmdk` over `data.vmdk`), among
/// the regular files of the dir; `None` when there is none.
fn top_of_chain(dir: &JobDir, name: &str) -> Option<String> {
    let stem = name.strip_suffix(".vmdk")?;
    let is_delta = |n: &str| {
        n.strip_prefix(stem)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".vmdk"))
            .is_some_and(|d| d.len() == 6 && d.bytes().all(|c| c.is_ascii_digit()))
    };
    dir.regular_files(&is_delta).pop()
}
