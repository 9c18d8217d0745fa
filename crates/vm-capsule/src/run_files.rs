//! The files of one local run (`vm-capsule run`): what is copied into its sandbox, what is only
//! linked, and how the writable disks go back.
//!
//! Only a disk the guest writes and that must come back (the data disk, an overlay) is
//! copied; everything read-only (the OS disk behind an overlay, its extents and backing files,
//! kernel, initrd) is hard-linked, so a 2 GB template costs nothing per run. The writable disks
//! return by rename when the sandbox is on the `Iwd`'s file system.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

/// Put `name` from `from` into the sandbox `to`: a sparse copy when `writable`, else a hard
/// link (a symlink to the absolute path across file systems).
///
/// # Errors
/// I/O errors, naming nothing: the caller says which file.
pub fn stage(from: &Path, to: &Path, name: &str, writable: bool) -> io::Result<()> {
    let (src, dest) = (from.join(name), to.join(name));
    if writable {
        return copy_sparse(&src, &dest);
    }
    match fs::hard_link(&src, &dest) {
        Ok(()) => Ok(()),
        Err(_) => std::os::unix::fs::symlink(fs::canonicalize(&src)?, &dest),
    }
}

/// Move the writable disk `name` from the sandbox back into `iwd` (a rename; a sparse copy
/// when they are on different file systems), replacing the one there atomically.
///
/// # Errors
/// I/O errors.
pub fn give_back(sandbox: &Path, iwd: &Path, name: &str) -> io::Result<()> {
    let (src, dest) = (sandbox.join(name), iwd.join(name));
    if fs::rename(&src, &dest).is_ok() {
        return Ok(());
    }
    let tmp = iwd.join(format!(".{name}.returning"));
    copy_sparse(&src, &tmp)?;
    fs::rename(&tmp, &dest)
}

/// Copy preserving holes (disk images are sparse).
fn copy_sparse(from: &Path, to: &Path) -> io::Result<()> {
    let status = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("cp {} failed", from.display())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn read_only_files_are_linked_writable_ones_copied_and_moved_back() {
        let dir = tempfile::tempdir().unwrap();
        let iwd = dir.path();
        fs::write(iwd.join("base.img"), vec![7u8; 1 << 20]).unwrap();
        fs::write(iwd.join("data.img"), b"data").unwrap();
        let sandbox = iwd.join("sandbox");
        fs::create_dir(&sandbox).unwrap();
        stage(iwd, &sandbox, "base.img", false).unwrap();
        let (a, b) = (
            fs::metadata(iwd.join("base.img")).unwrap(),
            fs::metadata(sandbox.join("base.img")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "linked, not copied");
        stage(iwd, &sandbox, "data.img", true).unwrap();
        fs::write(sandbox.join("data.img"), b"written by the guest").unwrap();
        assert_eq!(fs::read(iwd.join("data.img")).unwrap(), b"data");
        give_back(&sandbox, iwd, "data.img").unwrap();
        assert_eq!(
            fs::read(iwd.join("data.img")).unwrap(),
            b"written by the guest"
        );
        assert!(!sandbox.join("data.img").exists(), "moved, not copied");
        assert!(
            iwd.join("base.img").exists(),
            "the template's file is untouched"
        );
    }
}
