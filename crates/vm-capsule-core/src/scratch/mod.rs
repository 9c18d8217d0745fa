//! The scratch prefix (`VM_CAPSULE_SCRATCH_DIR_PREFIX`) and the private directories under it:
//! `<prefix>/<owner>/` per job owner, `<prefix>/<owner>/<cluster>.<proc>.<random>/` per job.
//!
//! # Security
//! The prefix is shared by every job owner, so everything under it is attacker-controlled
//! unless proven otherwise (a squatted owner dir would let another user swap a returned
//! disk). The prefix and every directory above it must be owned by root or by us and writable
//! by nobody else unless sticky and root-owned; hooks never create the prefix. The owner dir
//! is created by us with mode 0700, and opened without following links; an existing one is
//! used only when it is a real directory owned by us with no group or other permissions (it
//! is never "repaired": a chmod on someone else's squat would hand it over). Job dirs are
//! checked the same way, are named only by a single component we generated, and are opened
//! relative to the verified owner dir. Files in a job dir are opened only after `lstat`
//! shows a regular file.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use thiserror::Error;

use crate::whose::Whose;

mod job_dir;
mod own_dir;
mod owner;
mod prefix;

pub use own_dir::{open_own_dir, NotOwnDir};
pub use owner::{is_job_dir_name, new_job_dir_name};
#[cfg(test)]
mod tests;

/// The knob naming the prefix, for errors.
const PREFIX_KNOB: &str = crate::settings::knobs::SCRATCH_DIR_PREFIX.name;
/// Suffix of a job dir still being staged (reclaimed when stale).
pub const STAGING_SUFFIX: &str = ".staging";
/// Marker file left in a job dir whose results could not be placed (cleanup keeps the dir).
pub const FAILED_MARKER: &str = "VMCAPSULE_FAILED";
/// Marker whose mtime says when the owner dir was last swept.
const SWEPT_MARKER: &str = ".vm-capsule-swept";
/// How often an owner dir is swept for stale dirs at most.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// A scratch location that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ScratchError {
    /// The prefix does not exist: the admin must create it.
    #[error(
        "{PREFIX_KNOB} {path} does not exist; create it as root: install -d -m 1777 -o root {path}"
    )]
    PrefixMissing {
        /// The prefix.
        path: PathBuf,
    },
    /// The prefix, or a directory above it, could be changed by other users.
    #[error("{PREFIX_KNOB} {prefix} is not safe: {path} {why}; make it root-owned mode 1777 (install -d -m 1777 -o root {prefix})")]
    PrefixUnsafe {
        /// The prefix.
        prefix: PathBuf,
        /// The offending directory.
        path: PathBuf,
        /// What is wrong with it.
        why: DirProblem,
    },
    /// A private directory that is not ours (another user squats it) or not private.
    #[error("scratch dir {path} {why}; refusing to use it (another user may have created it: remove it as root)")]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: DirProblem,
    },
    /// A name that is not a job dir of ours.
    #[error("{path} is not a vm-capsule job dir under {owner_dir}")]
    NotAJobDir {
        /// What was named.
        path: PathBuf,
        /// Where job dirs live.
        owner_dir: PathBuf,
    },
    /// Any other I/O failure, with its path.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with a directory that must be safe from other users; the message follows
/// the directory's path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DirProblem {
    /// The configured path is relative.
    #[error("is not an absolute path")]
    NotAbsolute,
    /// The configured path has a `..` component.
    #[error("contains '..'")]
    DotDot,
    /// Neither a directory nor a link that only root could have made.
    #[error("is not a directory or a root-owned link")]
    NotDirOrRootLink,
    /// A link or a file where a private directory must be (links are not followed).
    #[error("is a link or not a directory")]
    LinkOrNotDir,
    /// A shared directory (the prefix or above) owned by another user.
    #[error("is owned by uid {uid}, neither root nor us")]
    SharedNotOurs {
        /// Its owner.
        uid: u32,
    },
    /// A shared directory others can write without the sticky bit's protection.
    #[error("has mode {mode:o}: others can write it but it is not a root-owned sticky directory")]
    SharedWritable {
        /// Its permission bits.
        mode: u32,
    },
    /// A private directory owned by another user.
    #[error("is owned by uid {uid}, not by us (uid {me})")]
    NotOurs {
        /// Its owner.
        uid: u32,
        /// Our uid.
        me: u32,
    },
    /// A directory of our own (not a scratch one) owned by another user.
    #[error("is owned by uid {uid}, not by us (uid {me}); another user may have made it")]
    OwnNotOurs {
        /// Its owner.
        uid: u32,
        /// Our uid.
        me: u32,
    },
    /// A private directory with permissions for group or others.
    #[error("has mode {mode:o}, not 0700")]
    NotPrivateMode {
        /// Its permission bits.
        mode: u32,
    },
    /// A directory of our own that others can write.
    #[error("has mode {mode:o}: others can write it")]
    OthersCanWrite {
        /// Its permission bits.
        mode: u32,
    },
    /// A missing directory that could not be made.
    #[error("cannot be created: {0}")]
    CannotCreate(Errno),
    /// It cannot be opened or examined.
    #[error("{0}")]
    Unreachable(Errno),
}

impl ScratchError {
    /// Who must act: the owner for a name that is not a job dir of theirs, us for a passing
    /// I/O error, the admin for the prefix or a squatted owner dir.
    pub fn whose(&self) -> Whose {
        match self {
            ScratchError::NotAJobDir { .. } => Whose::Owner,
            ScratchError::Io { .. } => Whose::Ours,
            _ => Whose::Admin,
        }
    }

    fn io(path: &Path, e: impl Into<std::io::Error>) -> ScratchError {
        ScratchError::Io {
            path: path.to_owned(),
            source: e.into(),
        }
    }

    /// Whether the admin must fix something (as opposed to a passing I/O problem).
    pub fn is_admin_problem(&self) -> bool {
        !matches!(self, ScratchError::Io { .. })
    }

    /// Whether the scratch file system is full.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, ScratchError::Io { source, .. } if capsule_disk::is_storage_full(source))
    }

    /// Whether the directory to make exists already.
    pub fn is_exists(&self) -> bool {
        matches!(self, ScratchError::Io { source, .. }
            if source.raw_os_error() == Some(Errno::EXIST.raw_os_error()))
    }
}

/// `VM_CAPSULE_SCRATCH_DIR_PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchPrefix {
    path: PathBuf,
}

/// `<prefix>/<owner>`, verified and open.
#[derive(Debug)]
pub struct OwnerDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// One job's private dir, verified and open.
#[derive(Debug)]
pub struct JobDir {
    path: PathBuf,
    name: String,
    fd: OwnedFd,
}

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn dir_flags() -> OFlags {
    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW
}

fn not_private_or_io(path: &Path, e: Errno) -> ScratchError {
    if e == Errno::LOOP || e == Errno::NOTDIR {
        ScratchError::NotPrivate {
            path: path.to_owned(),
            why: DirProblem::LinkOrNotDir,
        }
    } else {
        ScratchError::io(path, e)
    }
}

/// A directory above or at the prefix: owned by root or us; writable by others only when
/// sticky and root-owned.
fn check_shared_dir(st: &Stat) -> Result<(), DirProblem> {
    let uid = st.st_uid;
    if uid != 0 && uid != me() {
        return Err(DirProblem::SharedNotOurs { uid });
    }
    let writable_by_others = st.st_mode & 0o022 != 0;
    let sticky = st.st_mode & 0o1000 != 0;
    if writable_by_others && !(sticky && uid == 0) {
        return Err(DirProblem::SharedWritable {
            mode: st.st_mode & 0o7777,
        });
    }
    Ok(())
}

/// A directory of ours: owned by us, no permissions for group or others.
fn check_private(fd: &OwnedFd, path: &Path) -> Result<(), ScratchError> {
    let st = rustix::fs::fstat(fd).map_err(|e| ScratchError::io(path, e))?;
    let not_private = |why: DirProblem| ScratchError::NotPrivate {
        path: path.to_owned(),
        why,
    };
    if st.st_uid != me() {
        return Err(not_private(DirProblem::NotOurs {
            uid: st.st_uid,
            me: me(),
        }));
    }
    if st.st_mode & 0o077 != 0 {
        return Err(not_private(DirProblem::NotPrivateMode {
            mode: st.st_mode & 0o7777,
        }));
    }
    Ok(())
}
