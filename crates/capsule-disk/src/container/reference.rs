//! The files an image names besides itself: qcow2 backing files, VMDK parents and extents.
//!
//! Who opens them is the caller's choice ([`Resolver`]): the default ([`FollowReferences`])
//! opens them beside the image, as QEMU would; a caller acting for someone else (root opening
//! a job's disk) refuses them or opens only what it has checked, and the image is refused
//! with the caller's error.

use std::fmt;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use super::{open_referenced, Access};
use crate::Error;

/// What an image names another file as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reference {
    /// A qcow2 backing file, read below the image.
    BackingFile,
    /// A VMDK delta's parent (`parentFileNameHint`).
    Parent,
    /// A VMDK extent named by a descriptor.
    Extent,
    /// A qcow2 external data file: the image's data lives there (never read by this crate).
    ExternalDataFile,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reference::BackingFile => "backing file",
            Reference::Parent => "parent image",
            Reference::Extent => "extent",
            Reference::ExternalDataFile => "external data file",
        })
    }
}

/// Opens the files an image names; an error refuses the whole image.
pub trait Resolver {
    /// Open `name`, which `image` names as its `kind`, for `access`: the path to report (in
    /// errors and [`super::Image::every_file`]) and the open file.
    ///
    /// # Errors
    /// Whatever refuses the file; [`Error::Reference`] says which file and why.
    fn open(
        &mut self,
        image: &Path,
        kind: Reference,
        name: &str,
        access: Access,
    ) -> Result<(PathBuf, File), Error>;
}

/// Opens named files beside the image (an absolute name as it is), as QEMU does; extents
/// only by relative names without `..`; only regular files, opened without blocking.
#[derive(Debug, Default, Clone, Copy)]
pub struct FollowReferences;

impl Resolver for FollowReferences {
    fn open(
        &mut self,
        image: &Path,
        kind: Reference,
        name: &str,
        access: Access,
    ) -> Result<(PathBuf, File), Error> {
        let dir = image.parent().unwrap_or(Path::new("."));
        let path = match kind {
            Reference::Extent => extent_path(dir, name, image)?,
            Reference::ExternalDataFile => return Err(Error::Reference {
                path: image.to_owned(),
                kind,
                name: name.into(),
                why: "external data files are not read; hint: qemu-img convert it to a plain qcow2"
                    .into(),
            }),
            _ if Path::new(name).is_absolute() => PathBuf::from(name),
            _ => dir.join(name),
        };
        let file = open_referenced(&path, access)?;
        Ok((path, file))
    }
}

/// Resolve an extent file name relative to the descriptor's directory; absolute names and
/// `..` are refused so a hostile descriptor cannot point at host files.
fn extent_path(dir: &Path, name: &str, desc: &Path) -> Result<PathBuf, Error> {
    let p = Path::new(name);
    let ok = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(Error::corrupt(
            desc,
            "vmdk extent line",
            0,
            format!("extent file '{name}' must be a relative path without '..'"),
        ));
    }
    Ok(dir.join(p))
}
