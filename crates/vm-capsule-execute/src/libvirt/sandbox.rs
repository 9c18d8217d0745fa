//! The job's sandbox (`VM_WORKING_DIR`) and the files the ad names in it, each opened once
//! and checked on the open file.
//!
//! As root, a file is then taken from the job's user before anything reads it: it becomes
//! libvirt's QEMU user's (group read kept, so HTCondor can still transfer it back as the
//! user), and no process may hold it open for writing (`writers`). What is read afterwards
//! is what QEMU will read: nobody but root and the QEMU user can change it.
//!
//! The domain tells libvirt not to relabel these files: its DAC restore after the domain
//! gives a file back to root:root when it cannot recall the owner before, and then HTCondor,
//! which transfers the disks back as the job's user, cannot read them. Owned by the QEMU
//! user from the start, the files need no relabelling and keep their group.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::LibvirtError;

/// A file's identity: device and inode.
pub(super) type FileId = (u64, u64);

/// The job's working directory, open, with the owner its files must have (as root).
#[derive(Debug)]
pub(super) struct Sandbox {
    pub(super) path: PathBuf,
    pub(super) fd: OwnedFd,
    /// The sandbox's user, when we are root (only then is anything checked against it).
    pub(super) owner: Option<u32>,
    /// Who the checked files are given to (libvirt's QEMU user), looked up once.
    keeper: rustix::process::Uid,
    opened: HashSet<String>,
    /// The files taken from the job's user, with their owner and mode before.
    taken: Vec<(OwnedFd, u32, u32, u32)>,
}

/// A file of the sandbox, open and checked.
#[derive(Debug)]
pub(super) struct Checked {
    /// Its plain name in the sandbox.
    pub(super) name: String,
    /// The open file (read-only).
    pub(super) file: File,
    /// Its identity.
    pub(super) id: FileId,
}

impl Sandbox {
    /// Open `dir` (absolute, the last component not a link) and learn its user.
    pub(super) fn open(dir: &Path) -> Result<Sandbox, LibvirtError> {
        let bad = |why: String| LibvirtError::BadAttribute {
            attr: "VM_WORKING_DIR",
            why: format!("{}: {why}", dir.display()),
        };
        if !dir.is_absolute() {
            return Err(bad("not an absolute path".to_owned()));
        }
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| bad(format!("cannot open it as a directory ({e})")))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| bad(e.to_string()))?;
        let root = rustix::process::geteuid().is_root();
        if root && st.st_uid == 0 {
            return Err(bad(
                "belongs to root, not to the job's user: not a job sandbox".to_owned(),
            ));
        }
        Ok(Sandbox {
            path: dir.to_owned(),
            fd,
            owner: root.then_some(st.st_uid),
            keeper: rustix::process::Uid::from_raw(if root { qemu_user() } else { 0 }),
            opened: HashSet::new(),
            taken: Vec::new(),
        })
    }

    /// Open plain file `name` (named by `attr`) once and check it; as root, take it from the
    /// job's user (see the module doc).
    pub(super) fn open_file(
        &mut self,
        attr: &'static str,
        name: &str,
    ) -> Result<Checked, LibvirtError> {
        let fail = |why: String| LibvirtError::BadFile {
            attr,
            file: name.to_owned(),
            dir: self.path.clone(),
            why,
        };
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(fail(
                "only a plain file name in the job's sandbox is allowed".to_owned(),
            ));
        }
        if self.opened.contains(name) {
            return Err(fail("it is named twice".to_owned()));
        }
        // Non-blocking: a FIFO must not hang the vm-gahp; no link is followed.
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => fail("it is a symbolic link".to_owned()),
            e => fail(e.to_string()),
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| fail(e.to_string()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(fail("not a regular file".to_owned()));
        }
        if let Some(owner) = self.owner {
            if st.st_uid != owner {
                return Err(fail(format!(
                    "it belongs to uid {}, the sandbox to uid {owner}",
                    st.st_uid
                )));
            }
            if st.st_nlink != 1 {
                return Err(fail(format!(
                    "it has {} hard links: a file elsewhere would change with it",
                    st.st_nlink
                )));
            }
            // The job's user loses every way to write it; HTCondor's transfer back (as the
            // user, through the group) can still read it.
            let keep = rustix::io::dup(&fd).map_err(|e| fail(e.to_string()))?;
            self.taken
                .push((keep, st.st_uid, st.st_gid, st.st_mode & 0o7777));
            rustix::fs::fchown(
                &fd,
                Some(self.keeper),
                Some(rustix::process::Gid::from_raw(st.st_gid)),
            )
            .map_err(|e| fail(format!("cannot make it libvirt's QEMU user's ({e})")))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o640))
                .map_err(|e| fail(format!("cannot make it read-only for its user ({e})")))?;
        }
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|e| fail(e.to_string()))?;
        self.opened.insert(name.to_owned());
        Ok(Checked {
            name: name.to_owned(),
            file: File::from(fd),
            id: (st.st_dev, st.st_ino),
        })
    }

    /// Refuse when any process holds one of `files` open for writing (or mapped shared and
    /// writable): it could change the file after it was read.
    pub(super) fn refuse_writers(&self, files: &[&Checked]) -> Result<(), LibvirtError> {
        if self.owner.is_none() {
            return Ok(());
        }
        let ids: Vec<FileId> = files.iter().map(|c| c.id).collect();
        if let Some((pid, id)) = writers(&ids).into_iter().next() {
            let name = files
                .iter()
                .find(|c| c.id == id)
                .map_or_else(String::new, |c| c.name.clone());
            return Err(LibvirtError::BadFile {
                attr: "VM_WORKING_DIR",
                file: name,
                dir: self.path.clone(),
                why: format!(
                    "process {pid} has it open for writing: it could change after the check"
                ),
            });
        }
        Ok(())
    }

    /// Give the files taken back to the job's user as they were (the job is refused: nothing
    /// of them will be used). Best effort.
    pub(super) fn give_back(&mut self) {
        for (fd, uid, gid, mode) in self.taken.drain(..) {
            let _ = rustix::fs::fchown(
                &fd,
                Some(rustix::process::Uid::from_raw(uid)),
                Some(rustix::process::Gid::from_raw(gid)),
            );
            let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode));
        }
    }

    /// The sandbox's own identity.
    pub(super) fn id(&self) -> Option<FileId> {
        rustix::fs::fstat(&self.fd)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    }
}

/// Processes (other than this one) holding one of `ids` open for writing, or mapped shared
/// and writable, with the file they hold. Processes that end meanwhile are skipped.
pub(super) fn writers(ids: &[FileId]) -> Vec<(u32, FileId)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                let Ok(st) = rustix::fs::stat(fd.path()) else {
                    continue;
                };
                let id = (st.st_dev, st.st_ino);
                if ids.contains(&id) && opened_for_writing(&dir, &fd.file_name()) {
                    found.push((pid, id));
                }
            }
        }
        if let Ok(maps) = std::fs::read_to_string(dir.join("maps")) {
            for line in maps.lines() {
                if let Some(id) = shared_writable_mapping(line).filter(|id| ids.contains(id)) {
                    found.push((pid, id));
                }
            }
        }
    }
    found
}

/// True when `/proc/<pid>/fdinfo/<fd>` says the file was opened write-only or read-write.
fn opened_for_writing(proc_dir: &Path, fd: &std::ffi::OsStr) -> bool {
    let Ok(info) = std::fs::read_to_string(proc_dir.join("fdinfo").join(fd)) else {
        return false;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| flags & 0o3 != 0)
}

/// The file of a `/proc/<pid>/maps` line when the mapping is shared and writable.
pub(super) fn shared_writable_mapping(line: &str) -> Option<FileId> {
    let mut fields = line.split_whitespace();
    let perms = fields.nth(1)?;
    let dev = fields.nth(1)?;
    let ino = fields.next()?.parse::<u64>().ok()?;
    if !(perms.contains('w') && perms.contains('s')) || ino == 0 {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some((rustix::fs::makedev(major, minor), ino))
}

/// `name`'s identity in directory `dir`, without following a link.
pub(super) fn id_at(dir: &OwnedFd, name: &str) -> Option<FileId> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .filter(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
        .map(|st| (st.st_dev, st.st_ino))
}

/// The user libvirt's QEMU driver runs QEMU as: `libvirt-qemu` (Debian, Ubuntu) or `qemu`
/// (Fedora, RHEL), else root (a driver configured to run QEMU as root).
pub(crate) fn qemu_user() -> u32 {
    ["libvirt-qemu", "qemu"]
        .iter()
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
        .map_or(0, |user| user.uid.as_raw())
}
