//! Disks restored from a checkpoint: written back sparse, bounded, and checked to name no file
//! but the node image they overlay before QEMU opens them.

use std::path::{Path, PathBuf};

use super::file::{Checkpoint, SparseFile};
use crate::launcher::ad_file::open_regular;
use crate::runner::WritableDisk;

/// Put `disk` back from `checkpoint` (at most `bound` bytes) and check it is what it must
/// be: its format, and no file named in it but the node image it overlays.
pub(super) fn restore_disk(
    checkpoint: &Checkpoint,
    sandbox: &Path,
    disk: &WritableDisk,
    bound: u64,
) -> Result<(), String> {
    let path = sandbox.join(&disk.file);
    let mut out = SparseFile::create(&path).map_err(|e| format!("{}: {e}", disk.file))?;
    checkpoint
        .extract(&disk.file, bound, &mut out)
        .map_err(|e| e.to_string())?;
    out.finish().map_err(|e| format!("{}: {e}", disk.file))?;
    let file = open_regular(&path).map_err(|e| format!("{}: {e}", disk.file))?;
    let format = disk.format.parse::<capsule_disk::ImageFormat>().ok();
    let mut only_base = OnlyBase(disk.base.clone());
    capsule_disk::Image::open_file(
        &path,
        file,
        capsule_disk::Access::ReadOnly,
        format,
        &mut only_base,
    )
    .map(|_| ())
    .map_err(|e| format!("the checkpoint's {} is refused: {e}", disk.file))
}

/// Lets a restored disk name only the node image it overlays.
struct OnlyBase(Option<PathBuf>);

impl capsule_disk::Resolver for OnlyBase {
    fn open(
        &mut self,
        image: &Path,
        kind: capsule_disk::Reference,
        name: &str,
        access: capsule_disk::Access,
    ) -> Result<(PathBuf, std::fs::File), capsule_disk::Error> {
        let allowed = kind == capsule_disk::Reference::BackingFile
            && self.0.as_deref() == Some(Path::new(name));
        if !allowed {
            return Err(capsule_disk::Error::Reference {
                path: image.to_owned(),
                kind,
                name: name.into(),
                why: "a restored disk may name only the node image it overlays".into(),
            });
        }
        capsule_disk::FollowReferences.open(image, kind, name, access)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::launcher::checkpoint::file::{Trailer, Writer};

    /// A restored disk that names any file but the node image it overlays (a job owner's
    /// checkpoint naming another job's file, say) is refused before QEMU opens it.
    #[test]
    fn a_restored_disk_names_only_its_node_image() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.qcow2");
        let other = d.path().join("someone-elses.img");
        std::fs::write(&other, vec![0u8; 65536]).unwrap();
        let mk = |over: &Path, backing: &Path| {
            let out = std::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(backing)
                .arg(over)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        std::fs::write(&base, vec![0u8; 65536]).unwrap();
        let good = d.path().join("good.qcow2");
        let evil = d.path().join("evil.qcow2");
        mk(&good, &base);
        mk(&evil, &other);
        let disk = WritableDisk {
            file: String::new(),
            format: "qcow2".into(),
            base: Some(base.clone()),
        };
        for (path, ok) in [(&good, true), (&evil, false)] {
            let name = path.file_name().unwrap().to_str().unwrap();
            let mut w = Writer::create(
                &d.path().join(format!("{name}.ckpt")),
                &d.path().join(format!("{name}.partial")),
            )
            .unwrap();
            let mut f = std::fs::File::open(path).unwrap();
            w.section(name, &mut f).unwrap();
            w.finish(Trailer {
                qemu: String::new(),
                machine: String::new(),
                stdout: 0,
                stderr: 0,
                save_ms: 0,
                restored_ms: None,
                sections: Vec::new(),
            })
            .unwrap();
            let c = Checkpoint::open(&d.path().join(format!("{name}.ckpt")), 1 << 30).unwrap();
            let sandbox = d.path().join(format!("sb-{name}"));
            std::fs::create_dir(&sandbox).unwrap();
            let disk = WritableDisk {
                file: name.to_owned(),
                ..disk.clone()
            };
            let got = restore_disk(&c, &sandbox, &disk, 1 << 30);
            assert_eq!(got.is_ok(), ok, "{name}: {got:?}");
            if let Err(e) = &got {
                assert!(e.contains("only the node image"), "{e}");
            }
        }
    }
}
