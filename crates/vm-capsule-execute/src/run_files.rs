//! The files of one local run (`vm-capsule run`): the routed job's `Iwd` they come from, what
//! is copied into the run's sandbox, what is only linked, and how the writable disks go back.
//!
//! Only a disk the guest writes and that must come back (the data disk, an overlay) is
//! copied; everything read-only (the OS disk behind an overlay, its extents and backing files,
//! kernel, initrd) is hard-linked, so a 2 GB template costs nothing per run. The writable disks
//! return by rename when the sandbox is on the `Iwd`'s file system.
//!
//! # Security
//! A routed ad and its job dir are the job owner's to edit, and an admin may run it as root.
//! The `Iwd` is opened once without following its last component, every file is a plain name
//! in it, and it is judged before anything in it is read: it must be the invoking user's own
//! (owned by them and writable by nobody else; for root also a job dir as translate makes
//! them, `<cluster>.<proc>.<random>` mode 0700, not `/boot` or `/etc`). Root runs another
//! user's ad only as that user (`run --as-owner`), so the kernel applies that user's rights to
//! every file the ad and its disks name. Files are opened non-blocking and checked to be
//! regular (a FIFO cannot hang the run), and a disk returned across file systems is written
//! to a new random name (`O_EXCL`, no link followed) and renamed into place.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// How the invoking user may use an `Iwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Theirs.
    Own,
    /// Another user's: only that user may run it.
    Foreign {
        /// Its owner's uid.
        uid: u32,
        /// Its owner's name (or `uid N`).
        owner: String,
    },
    /// Never run, by anyone: why.
    Never(String),
}

/// A routed job's `Iwd`, open (`O_PATH`, its last component not followed).
#[derive(Debug)]
pub struct Iwd {
    path: PathBuf,
    fd: OwnedFd,
    st: Stat,
}

/// Why a file of the `Iwd` is not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Not a file that can be used.
    #[error("{name} in {dir} is not used: {why}")]
    Refused {
        /// The file's name.
        name: String,
        /// The `Iwd`.
        dir: PathBuf,
        /// Why.
        why: String,
    },
    /// An I/O error on it.
    #[error("{name} in {dir}: {source}")]
    Io {
        /// The file's name.
        name: String,
        /// The `Iwd` or sandbox.
        dir: PathBuf,
        /// What.
        #[source]
        source: io::Error,
    },
}

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}

fn is_type(st: &Stat, t: FileType) -> bool {
    FileType::from_raw_mode(st.st_mode) == t
}

impl Iwd {
    /// Open the `Iwd` at `path` (absolute) without following its last component.
    ///
    /// # Errors
    /// The open's I/O error (`ENOENT`: gone), or not a directory.
    pub fn open(path: &Path) -> io::Result<Iwd> {
        if !path.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path",
            ));
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => {
                io::Error::other("is a link or not a directory (links are not followed)")
            }
            e => e.into(),
        })?;
        let st = rustix::fs::fstat(&fd)?;
        Ok(Iwd {
            path: path.to_owned(),
            fd,
            st,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its owner's uid.
    pub fn owner(&self) -> u32 {
        self.st.st_uid
    }

    /// How the invoking user may use it.
    pub fn judge(&self) -> Judgement {
        let (uid, mode) = (self.st.st_uid, self.st.st_mode & 0o7777);
        if mode & 0o022 != 0 {
            return Judgement::Never(format!(
                "is writable by others (mode {mode:o}): anyone could swap its files"
            ));
        }
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if uid == 0 && !(vm_capsule_core::scratch::is_job_dir_name(name) && mode & 0o077 == 0) {
            return Judgement::Never(
                "belongs to root and is not a vm-capsule job dir (<cluster>.<proc>.<random>, mode 0700)"
                    .to_owned(),
            );
        }
        if uid == me() {
            return Judgement::Own;
        }
        Judgement::Foreign {
            uid,
            owner: user_name(uid),
        }
    }

    fn refused(&self, name: &str, why: impl Into<String>) -> FileError {
        FileError::Refused {
            name: name.to_owned(),
            dir: self.path.clone(),
            why: why.into(),
        }
    }

    fn io(&self, name: &str, source: impl Into<io::Error>) -> FileError {
        FileError::Io {
            name: name.to_owned(),
            dir: self.path.clone(),
            source: source.into(),
        }
    }

    /// Open `name` for reading: non-blocking (a FIFO swapped in cannot hang the run), and
    /// only a regular file.
    fn open_file(&self, name: &str) -> Result<File, FileError> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::empty())
            .map_err(|e| self.io(name, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| self.io(name, e))?;
        if !is_type(&st, FileType::RegularFile) {
            return Err(self.refused(name, "not a regular file"));
        }
        Ok(File::from(fd))
    }

    /// Whether `name` exists in it (links not followed).
    pub fn has(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Put `name` into the sandbox `to`: a sparse copy when `writable`, else a hard link (a
    /// symlink to the file across file systems or where the kernel refuses the link).
    ///
    /// # Errors
    /// [`FileError`] naming the file.
    pub fn stage(&self, to: &Path, name: &str, writable: bool) -> Result<(), FileError> {
        let sandbox = open_dir(to).map_err(|e| self.io(name, e))?;
        if !writable {
            // A link of the entry itself, never followed: a link stays a link.
            match rustix::fs::linkat(&self.fd, name, &sandbox, name, AtFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(Errno::XDEV | Errno::PERM) => {
                    let real = std::fs::canonicalize(self.path.join(name))
                        .map_err(|e| self.io(name, e))?;
                    return std::os::unix::fs::symlink(real, to.join(name))
                        .map_err(|e| self.io(name, e));
                }
                Err(e) => return Err(self.io(name, e)),
            }
        }
        let from = self.open_file(name)?;
        let dest = create_in(&sandbox, name, &from).map_err(|e| self.io(name, e))?;
        copy_sparse(&from, &dest).map_err(|e| self.io(name, e))
    }

    /// Move the writable disk `name` from the sandbox back into the `Iwd` (a rename; a
    /// sparse copy when they are on different file systems), replacing the one there
    /// atomically.
    ///
    /// # Errors
    /// I/O errors.
    pub fn give_back(&self, sandbox: &Path, name: &str) -> io::Result<()> {
        let dir = open_dir(sandbox)?;
        match rustix::fs::renameat(&dir, name, &self.fd, name) {
            Ok(()) => return Ok(()),
            Err(Errno::XDEV) => {}
            Err(e) => return Err(e.into()),
        }
        let from = File::from(rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        // A new name nobody can have planted (O_EXCL, never through a link), then a rename.
        let tmp = format!(".{name}.{}.returning", random_tag());
        let tmp = tmp.as_str();
        let out = create_in(&self.fd, tmp, &from)?;
        let done = copy_sparse(&from, &out)
            .and_then(|()| Ok(rustix::fs::renameat(&self.fd, tmp, &self.fd, name)?));
        if done.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, tmp, AtFlags::empty());
        }
        done
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Create `name` in `dir` for writing: new (`O_EXCL`, never through a link), with the mode
/// of `like`.
fn create_in(dir: impl AsFd, name: &str, like: &File) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let mode = like.metadata()?.permissions().mode() & 0o777;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

/// A random tag for a temporary name.
fn random_tag() -> String {
    let mut bytes = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copy `from` into the empty file `to`, keeping holes (disk images are sparse): only the
/// data regions are copied (`copy_file_range`, which also shares extents where the file
/// system can).
///
/// # Errors
/// I/O errors, and a source that shrank while being copied.
pub fn copy_sparse(from: &File, to: &File) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    let len = from.metadata()?.len();
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(from, SeekFrom::Data(pos)) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(from, SeekFrom::Hole(data))?.min(len);
        copy_range(from, to, data, hole)?;
        pos = hole;
    }
    to.set_len(len)
}

/// Copy bytes `[start, end)` of `from` to the same offsets of `to`.
fn copy_range(from: &File, to: &File, start: u64, end: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let want = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want) {
            Ok(0) => return Err(io::Error::other("the file shrank while being copied")),
            Ok(_) => {}
            // Not between these file systems: read and write.
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                let mut buf = vec![0u8; 1 << 20];
                while off_in < end {
                    let n = usize::try_from(end - off_in)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let got = from.read_at(&mut buf[..n], off_in)?;
                    if got == 0 {
                        return Err(io::Error::other("the file shrank while being copied"));
                    }
                    to.write_all_at(&buf[..got], off_out)?;
                    off_in += got as u64;
                    off_out += got as u64;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn read_only_files_are_linked_writable_ones_copied_and_moved_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let iwd_path = root.join("12.0.abcdef");
        fs::create_dir(&iwd_path).unwrap();
        fs::write(iwd_path.join("base.img"), vec![7u8; 1 << 20]).unwrap();
        fs::write(iwd_path.join("data.img"), b"data").unwrap();
        let sandbox = root.join("sandbox");
        fs::create_dir(&sandbox).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&iwd_path, fs::Permissions::from_mode(0o700)).unwrap();
        let iwd = Iwd::open(&iwd_path).unwrap();
        assert_eq!(iwd.judge(), Judgement::Own);
        iwd.stage(&sandbox, "base.img", false).unwrap();
        let (a, b) = (
            fs::metadata(iwd_path.join("base.img")).unwrap(),
            fs::metadata(sandbox.join("base.img")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "linked, not copied");
        iwd.stage(&sandbox, "data.img", true).unwrap();
        fs::write(sandbox.join("data.img"), b"written by the guest").unwrap();
        assert_eq!(fs::read(iwd_path.join("data.img")).unwrap(), b"data");
        iwd.give_back(&sandbox, "data.img").unwrap();
        assert_eq!(
            fs::read(iwd_path.join("data.img")).unwrap(),
            b"written by the guest"
        );
        assert!(!sandbox.join("data.img").exists(), "moved, not copied");
        assert!(
            iwd_path.join("base.img").exists(),
            "the template's file is untouched"
        );
    }

    #[test]
    fn sparse_copies_keep_holes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        let from = File::open(&src).unwrap();
        let dest = dir.path().join("dest");
        let to = File::create(&dest).unwrap();
        copy_sparse(&from, &to).unwrap();
        assert_eq!(fs::read(&src).unwrap(), fs::read(&dest).unwrap());
        let blocks = fs::metadata(&dest).unwrap().blocks();
        assert!(blocks * 512 < 8 << 20, "holes kept: {blocks} blocks");
    }

    #[test]
    fn writable_iwds_and_roots_other_dirs_are_never_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(
            Iwd::open(&open).unwrap().judge(),
            Judgement::Never(why) if why.contains("writable by others")
        ));
        if me() == 0 {
            let boot = dir.path().join("boot");
            fs::create_dir(&boot).unwrap();
            fs::set_permissions(&boot, fs::Permissions::from_mode(0o755)).unwrap();
            assert!(matches!(
                Iwd::open(&boot).unwrap().judge(),
                Judgement::Never(why) if why.contains("not a vm-capsule job dir")
            ));
        }
        std::os::unix::fs::symlink(&open, dir.path().join("link")).unwrap();
        let e = Iwd::open(&dir.path().join("link")).unwrap_err();
        assert!(e.to_string().contains("is a link"), "{e}");
    }
}
