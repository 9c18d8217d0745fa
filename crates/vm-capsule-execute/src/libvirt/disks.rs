//! What a job's disk image contains, read with capsule-disk from the file already opened and
//! taken from the job's user, and what it may name: nothing, except, for an overlay the
//! routed ad pairs with a node image, that image in this node's `VM_CAPSULE_NODE_IMAGE_DIR`.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use capsule_disk::{Access, Error as DiskError, Image, ImageFormat, Reference, Resolver};
use rustix::fs::{Mode, OFlags};

use super::sandbox::Checked;
use super::LibvirtError;
use vm_capsule_core::node_image::{self, NodeBase};

/// What libvirt is told about one disk's image.
#[derive(Debug)]
pub(super) struct Inspected {
    /// Its format, as its content says.
    pub(super) format: ImageFormat,
    /// The node image below it (an overlay), with that image's format.
    pub(super) base: Option<(PathBuf, ImageFormat)>,
}

/// The node image an overlay may have below it, found and checked when the overlay names it.
#[derive(Debug)]
pub(super) struct AllowedBase<'a> {
    /// The routed ad's pairing of this overlay with a base image and its sha256.
    pub(super) base: &'a NodeBase,
    /// This node's `VM_CAPSULE_NODE_IMAGE_DIR`.
    pub(super) dir: Option<&'a Path>,
}

/// Read `checked` (at `path`, named by `VMPARAM_vm_Disk`) with capsule-disk; `base` is the
/// only file it may name.
pub(super) fn inspect(
    checked: &Checked,
    path: &Path,
    dir: &Path,
    base: Option<&AllowedBase<'_>>,
) -> Result<Inspected, LibvirtError> {
    let fail = |why: String| LibvirtError::BadFile {
        attr: "VMPARAM_vm_Disk",
        file: checked.name.clone(),
        dir: dir.to_owned(),
        why,
    };
    let file = checked.file.try_clone().map_err(|e| fail(e.to_string()))?;
    let mut resolver = JobDisk { base, given: None };
    let image = Image::open_file(path, file, Access::ReadOnly, None, &mut resolver).map_err(
        |e| match e {
            DiskError::Reference {
                kind, name, why, ..
            } => fail(format!("the image names the {kind} {name}: {why}")),
            e => fail(format!("it is not an image QEMU may be given: {e}")),
        },
    )?;
    Ok(Inspected {
        format: image.format(),
        base: resolver.given,
    })
}

/// The resolver for a job's disk: refuses every named file but the allowed node image.
struct JobDisk<'a> {
    base: Option<&'a AllowedBase<'a>>,
    /// The node image handed out, with its format.
    given: Option<(PathBuf, ImageFormat)>,
}

impl Resolver for JobDisk<'_> {
    fn open(
        &mut self,
        image: &Path,
        kind: Reference,
        name: &str,
        _access: Access,
    ) -> Result<(PathBuf, File), DiskError> {
        let refuse = |why: String| DiskError::Reference {
            path: image.to_owned(),
            kind,
            name: name.into(),
            why: why.into(),
        };
        let only_base = "only the node's own base image (VM_CAPSULE_NODE_IMAGE_DIR) may back a job's disk, never a file the image or the ad names";
        match (kind, self.base) {
            (Reference::BackingFile, Some(allowed)) if self.given.is_none() => {
                let (path, file, format) = allowed.open(name).map_err(refuse)?;
                self.given = Some((path.clone(), format));
                Ok((path, file))
            }
            (Reference::BackingFile, _) => Err(refuse(only_base.to_owned())),
            (Reference::Extent | Reference::Parent, _) => Err(refuse(
                "a job's VMDK must be one file; hint: qemu-img convert -O qcow2".to_owned(),
            )),
            _ => Err(refuse(only_base.to_owned())),
        }
    }
}

impl AllowedBase<'_> {
    /// Open the node image the overlay names as `name`: it must be the base the routed ad
    /// pairs with the overlay, directly in this node's image directory, root's and writable
    /// by no one else, standalone, with the ad's sha256.
    fn open(&self, name: &str) -> Result<(PathBuf, File, ImageFormat), String> {
        let dir = self.dir.ok_or_else(|| {
            format!(
                "the job's overlay needs the node image {}, but this execute node has no {}",
                self.base.path.display(),
                node_image::KNOB
            )
        })?;
        let file_name = self
            .base
            .path
            .file_name()
            .ok_or_else(|| "the routed ad's base image has no file name".to_owned())?;
        let path = dir.join(file_name);
        if Path::new(name) != path {
            return Err(format!(
                "the overlay must name the node image {} ({} on this node)",
                path.display(),
                node_image::KNOB
            ));
        }
        let dir_meta =
            std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(why) = not_roots(dir, &dir_meta) {
            return Err(why);
        }
        let fd = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open the node image {}: {e}", path.display()))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err(format!(
                "the node image {} is not a regular file",
                path.display()
            ));
        }
        if let Some(why) = not_roots(&path, &meta) {
            return Err(why);
        }
        // The sum recorded beside it is trusted only when root wrote it after the image.
        let sum_file = PathBuf::from(format!("{}.sha256", path.display()));
        let recorded = std::fs::symlink_metadata(&sum_file)
            .ok()
            .filter(|m| m.is_file() && not_roots(&sum_file, m).is_none())
            .and_then(|_| node_image::recorded_sha256(&path).ok());
        let sum = match recorded {
            Some(sum) => sum,
            None => vm_capsule_core::digest::sha256_file(&path)
                .map_err(|e| format!("cannot checksum the node image {}: {e}", path.display()))?,
        };
        if !sum.eq_ignore_ascii_case(&self.base.sha256) {
            return Err(format!(
                "the node image {} has sha256 {sum}, the job needs {}; re-stage the template's OS disk on this node",
                path.display(),
                self.base.sha256
            ));
        }
        let standalone = Image::open_file(
            &path,
            file.try_clone().map_err(|e| e.to_string())?,
            Access::ReadOnly,
            None,
            &mut NoReferences,
        )
        .map_err(|e| format!("the node image must be a standalone image: {e}"))?;
        Ok((path, file, standalone.format()))
    }
}

/// Why `path` is not the admin's alone: it must be root's and writable by no one else.
fn not_roots(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    (meta.uid() != 0 || meta.mode() & 0o022 != 0).then(|| {
        format!(
            "{} belongs to uid {} with mode {:o}; node images, their .sha256 and their directory must be root's and writable by no one else (chown root, chmod go-w)",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )
    })
}

/// Refuses every file an image names.
struct NoReferences;

impl Resolver for NoReferences {
    fn open(
        &mut self,
        image: &Path,
        kind: Reference,
        name: &str,
        _access: Access,
    ) -> Result<(PathBuf, File), DiskError> {
        Err(DiskError::Reference {
            path: image.to_owned(),
            kind,
            name: name.into(),
            why: "it must name no other file".into(),
        })
    }
}
