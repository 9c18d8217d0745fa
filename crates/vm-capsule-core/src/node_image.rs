//! The template's OS disk staged once per execute node (`VM_CAPSULE_NODE_IMAGE_DIR`), instead
//! of travelling with every job.
//!
//! The admin copies the template's OS disk (with its `.sha256`) into the same directory on
//! every execute node, or puts it on a shared file system, and advertises its checksum in the
//! machine ad (`VMCapsuleImages`). Translate then ships only the data disk and, in the VM
//! universe, a 256 KiB qcow2 overlay whose backing file is the node's copy; the routed job
//! requires a machine that advertises the checksum. On the node, `vm-capsule run` checks the
//! copy against the checksum before it boots, and the vanilla flavour's launcher makes the
//! overlay itself, so nothing but the data disk travels.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use capsule_disk::{Access, Image};
use classad::eval::string_attr;
use classad::{ClassAd, Expr};
use thiserror::Error;

use crate::digest::sha256_file;
use crate::template::overlay::create_overlay;
use crate::template::{Flavour, Template, TemplateDisk};

/// The knob: the directory holding the OS disks on every execute node.
pub const KNOB: &str = crate::settings::knobs::NODE_IMAGE_DIR.name;
/// Routed-ad attribute: the OS disk(s) on the node, comma-separated absolute paths.
pub const BASE_ATTR: &str = "VMCapsuleBaseImage";
/// Routed-ad attribute: their sha256 sums, in the same order.
pub const SHA_ATTR: &str = "VMCapsuleBaseImageSha256";
/// Routed-ad attribute: the overlay over each, in the same order (file names in the sandbox).
pub const OVERLAY_ATTR: &str = "VMCapsuleOverlay";
/// Machine-ad attribute an execute node advertises: the sha256 sums of the images it holds.
pub const MACHINE_ATTR: &str = "VMCapsuleImages";

/// One OS disk that lives on the execute nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBase {
    /// Its path on the nodes.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// The overlay over it (a file name in the job's sandbox).
    pub overlay: String,
}

/// Why a per-node base image cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeImageError {
    /// No usable checksum beside the template's OS disk.
    #[error("{KNOB} is set but {sum} {why}; write it with `sha256sum {disk_name} > {disk_name}.sha256` in the template directory (template build does) and copy both to the nodes")]
    NoChecksum {
        /// The checksum file.
        sum: String,
        /// The disk's file name.
        disk_name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The node's copy is missing or unreadable.
    #[error("the OS image {path} is missing or unreadable on this execute node ({source}); stage it there (see {KNOB} in docs/ADMIN.md)")]
    Missing {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The node's copy is not the one the job was made for.
    #[error("the OS image {path} on this execute node has sha256 {found}, the job needs {expected}; re-stage the template's OS disk there")]
    Mismatch {
        /// The path.
        path: PathBuf,
        /// Its checksum.
        found: String,
        /// The job's.
        expected: String,
    },
    /// The overlay could not be made.
    #[error("cannot create the overlay {path} over {base}")]
    Overlay {
        /// The overlay.
        path: PathBuf,
        /// Its base.
        base: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// VMware templates are booted from their `.vmx` and snapshots, not overlays.
    #[error("{KNOB} needs a KVM or Xen template (VMware boots the OS disk named in its .vmx)")]
    Vmware,
    /// The routed ad names bases and sums that do not pair up.
    #[error("routed ad: {BASE_ATTR}, {SHA_ATTR} and {OVERLAY_ATTR} do not list the same number of images")]
    BadAd,
    /// The routed ad names an overlay that is not a plain file name.
    #[error(
        "routed ad: {OVERLAY_ATTR} names {name:?}, not a plain file name in the job's sandbox"
    )]
    BadOverlayName {
        /// The name.
        name: String,
    },
}

/// The checksum recorded beside `disk` (`<disk>.sha256`, the first word of `sha256sum`'s
/// output), refused when it is older than the disk.
///
/// # Errors
/// [`NodeImageError::NoChecksum`] saying what is wrong.
pub fn recorded_sha256(disk: &Path) -> Result<String, NodeImageError> {
    let sum = PathBuf::from(format!("{}.sha256", disk.display()));
    let err = |why| NodeImageError::NoChecksum {
        sum: sum.display().to_string(),
        disk_name: disk
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        why,
    };
    let text = fs::read_to_string(&sum).map_err(|_| err("is missing"))?;
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(err("holds no sha256"));
    }
    if modified(&sum) < modified(disk) {
        return Err(err("is older than the disk"));
    }
    Ok(hex)
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Submit side: where the template's OS `disk` lives on the nodes when `dir` (the knob) is
/// set, with its recorded checksum and the name of the `overlay` over it.
///
/// # Errors
/// [`NodeImageError`] for a VMware template or a missing or stale checksum.
pub fn plan(
    dir: Option<&Path>,
    template: &Template,
    disk: &TemplateDisk,
    overlay: &str,
) -> Result<Option<NodeBase>, NodeImageError> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    if template.flavour == Flavour::Vmware {
        return Err(NodeImageError::Vmware);
    }
    let sha256 = recorded_sha256(&disk.path)?;
    let name = disk.path.file_name().unwrap_or_default();
    Ok(Some(NodeBase {
        path: dir.join(name),
        sha256,
        overlay: overlay.to_owned(),
    }))
}

/// The `Requirements` clause that sends the job only to nodes holding every base.
pub fn requirement(bases: &[NodeBase]) -> String {
    bases
        .iter()
        .map(|b| format!("stringListMember(\"{}\", TARGET.{MACHINE_ATTR})", b.sha256))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// Name the bases in a routed ad.
pub fn write_to(ad: &mut ClassAd, bases: &[NodeBase]) {
    let join = |f: &dyn Fn(&NodeBase) -> String| bases.iter().map(f).collect::<Vec<_>>().join(",");
    ad.insert(
        BASE_ATTR,
        Expr::string(join(&|b| b.path.display().to_string())),
    );
    ad.insert(SHA_ATTR, Expr::string(join(&|b| b.sha256.clone())));
    ad.insert(OVERLAY_ATTR, Expr::string(join(&|b| b.overlay.clone())));
}

/// The bases a routed ad names (none when the OS disk travels with the job).
///
/// # Errors
/// [`NodeImageError::BadAd`] when the three lists differ in length.
pub fn from_routed_ad(ad: &ClassAd) -> Result<Vec<NodeBase>, NodeImageError> {
    let list = |name| -> Vec<String> {
        string_attr(ad, name)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let (paths, sums, overlays) = (list(BASE_ATTR), list(SHA_ATTR), list(OVERLAY_ATTR));
    if paths.len() != sums.len() || paths.len() != overlays.len() {
        return Err(NodeImageError::BadAd);
    }
    Ok(paths
        .into_iter()
        .zip(sums)
        .zip(overlays)
        .map(|((path, sha256), overlay)| NodeBase {
            path: PathBuf::from(path),
            sha256,
            overlay,
        })
        .collect())
}

/// On the execute node: check every base the ad names against its checksum (trusting an
/// up-to-date `<image>.sha256` beside it, as the admin staged it, else hashing the image), and
/// create in `sandbox` each overlay over it, replacing any file of that name.
/// Returns the bases, for the caller's log.
///
/// # Errors
/// [`NodeImageError`] naming the image and what to do.
pub fn prepare(ad: &ClassAd, sandbox: &Path) -> Result<Vec<NodeBase>, NodeImageError> {
    let bases = from_routed_ad(ad)?;
    for b in &bases {
        let missing = |source| NodeImageError::Missing {
            path: b.path.clone(),
            source,
        };
        let found = match recorded_sha256(&b.path) {
            Ok(sum) => sum,
            Err(_) => sha256_file(&b.path).map_err(missing)?,
        };
        if !found.eq_ignore_ascii_case(&b.sha256) {
            return Err(NodeImageError::Mismatch {
                path: b.path.clone(),
                found,
                expected: b.sha256.clone(),
            });
        }
        if !crate::capsule::is_plain_name(&b.overlay) {
            return Err(NodeImageError::BadOverlayName {
                name: b.overlay.clone(),
            });
        }
        // Always made here, over the image just checked: a file of that name in the sandbox
        // (HTCondor transfers whatever the routed ad lists) is not booted in its place.
        let overlay = sandbox.join(&b.overlay);
        match fs::remove_file(&overlay) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NodeImageError::Overlay {
                    path: overlay,
                    base: b.path.clone(),
                    source,
                })
            }
        }
        let image = Image::open(&b.path, Access::ReadOnly)
            .map_err(|e| missing(std::io::Error::other(e.to_string())))?;
        let (format, size) = (image.format().name(), image.virtual_size());
        create_overlay(&overlay, &b.path.display().to_string(), format, size).map_err(
            |source| NodeImageError::Overlay {
                path: overlay.clone(),
                base: b.path.clone(),
                source,
            },
        )?;
    }
    Ok(bases)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn recorded_checksum_must_exist_be_hex_and_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("os.qcow2");
        fs::write(&disk, b"image").unwrap();
        let e = recorded_sha256(&disk).unwrap_err().to_string();
        assert!(
            e.contains(
                "os.qcow2.sha256 is missing; write it with `sha256sum os.qcow2 > os.qcow2.sha256`"
            ),
            "{e}"
        );
        let sum = dir.path().join("os.qcow2.sha256");
        fs::write(&sum, "nothex  os.qcow2\n").unwrap();
        assert!(recorded_sha256(&disk)
            .unwrap_err()
            .to_string()
            .contains("holds no sha256"));
        let hex = sha256_file(&disk).unwrap();
        fs::write(&sum, format!("{}  os.qcow2\n", hex.to_ascii_uppercase())).unwrap();
        assert_eq!(recorded_sha256(&disk).unwrap(), hex);
        // The disk changed after the sum was written.
        let later = SystemTime::now() + std::time::Duration::from_secs(10);
        fs::File::options()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(recorded_sha256(&disk)
            .unwrap_err()
            .to_string()
            .contains("is older than the disk"));
    }

    #[test]
    fn routed_ad_round_trip_and_requirement() {
        let bases = vec![NodeBase {
            path: "/var/lib/vm-capsule/os.qcow2".into(),
            sha256: "ab".repeat(32),
            overlay: "os.overlay.qcow2".into(),
        }];
        let mut ad = ClassAd::new();
        write_to(&mut ad, &bases);
        assert_eq!(from_routed_ad(&ad).unwrap(), bases);
        assert_eq!(
            requirement(&bases),
            format!(
                "stringListMember(\"{}\", TARGET.VMCapsuleImages)",
                "ab".repeat(32)
            )
        );
        assert!(classad::parse_expr(&requirement(&bases), classad::Syntax::New).is_ok());
        ad.insert(SHA_ATTR, Expr::string("a,b"));
        assert!(matches!(from_routed_ad(&ad), Err(NodeImageError::BadAd)));
        assert_eq!(from_routed_ad(&ClassAd::new()).unwrap(), vec![]);
    }

    #[test]
    fn prepare_checks_the_sum_and_makes_the_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("os.raw");
        fs::File::create(&base).unwrap().set_len(8 << 20).unwrap();
        let sandbox = dir.path().join("sandbox");
        fs::create_dir(&sandbox).unwrap();
        let mut bases = vec![NodeBase {
            path: base.clone(),
            sha256: sha256_file(&base).unwrap(),
            overlay: "os.overlay.qcow2".into(),
        }];
        let mut ad = ClassAd::new();
        write_to(&mut ad, &bases);
        prepare(&ad, &sandbox).unwrap();
        // QEMU's own tool must see the node's copy as the backing file.
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(sandbox.join("os.overlay.qcow2"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(
            text.contains(&format!("\"backing-filename\": \"{}\"", base.display())),
            "{text}"
        );
        assert!(text.contains("\"virtual-size\": 8388608"), "{text}");
        // A file of the overlay's name already there (transferred with the job) is replaced.
        let theirs = dir.path().join("theirs.raw");
        fs::File::create(&theirs).unwrap().set_len(1 << 20).unwrap();
        fs::remove_file(sandbox.join("os.overlay.qcow2")).unwrap();
        create_overlay(
            &sandbox.join("os.overlay.qcow2"),
            &theirs.display().to_string(),
            "raw",
            1 << 20,
        )
        .unwrap();
        prepare(&ad, &sandbox).unwrap();
        let image = Image::open(&sandbox.join("os.overlay.qcow2"), Access::ReadOnly).unwrap();
        assert_eq!(
            image.every_file().get(1),
            Some(&base),
            "made over the node's image"
        );
        assert_eq!(image.virtual_size(), 8 << 20);
        let mut hostile = ad.clone();
        hostile.insert(OVERLAY_ATTR, Expr::string("../os.overlay.qcow2"));
        assert!(matches!(
            prepare(&hostile, &sandbox),
            Err(NodeImageError::BadOverlayName { .. })
        ));
        bases[0].sha256 = "0".repeat(64);
        write_to(&mut ad, &bases);
        let e = prepare(&ad, &sandbox).unwrap_err().to_string();
        assert!(e.contains("the job needs 0000"), "{e}");
        bases[0].path = dir.path().join("gone.qcow2");
        write_to(&mut ad, &bases);
        let e = prepare(&ad, &sandbox).unwrap_err().to_string();
        assert!(
            e.contains("gone.qcow2 is missing or unreadable on this execute node"),
            "{e}"
        );
    }
}
