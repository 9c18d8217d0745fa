//! The scratch prefix (`VM_CAPSULE_SCRATCH_DIR_PREFIX`) and the private directories under it:
//! `<prefix>/<owner>/` per job owner, `<prefix>/<owner>/<cluster>.<proc>.<random>/` per job.
//!
//! # Security
//! The prefix is shared by every job owner, so everything under it is attacker-controlled
//! unless proven otherwise (issue 11: a squatted owner dir let another user swap a returned
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
    #[error("VM_CAPSULE_SCRATCH_DIR_PREFIX {path} does not exist; create it as root: install -d -m 1777 -o root {path}")]
    PrefixMissing {
        /// The prefix.
        path: PathBuf,
    },
    /// The prefix, or a directory above it, could be changed by other users.
    #[error("VM_CAPSULE_SCRATCH_DIR_PREFIX {prefix} is not safe: {path} {why}; make it root-owned mode 1777 (install -d -m 1777 -o root {prefix})")]
    PrefixUnsafe {
        /// The prefix.
        prefix: PathBuf,
        /// The offending directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A private directory that is not ours (another user squats it) or not private.
    #[error("scratch dir {path} {why}; refusing to use it (another user may have created it: remove it as root)")]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
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

impl ScratchError {
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
        matches!(self, ScratchError::Io { source, .. } if is_storage_full(source))
    }
}

/// Whether an I/O error means the file system (or the user's quota) is full.
pub fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == Errno::NOSPC.raw_os_error() || c == Errno::DQUOT.raw_os_error())
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

impl ScratchPrefix {
    /// The prefix at `path` (checked when used).
    pub fn new(path: &Path) -> ScratchPrefix {
        ScratchPrefix {
            path: path.to_owned(),
        }
    }

    /// The prefix path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the prefix, checking it and every directory above it.
    ///
    /// # Errors
    /// [`ScratchError::PrefixMissing`] or [`ScratchError::PrefixUnsafe`].
    pub fn open(&self) -> Result<OwnedFd, ScratchError> {
        let unsafe_dir = |path: &Path, why: String| ScratchError::PrefixUnsafe {
            prefix: self.path.clone(),
            path: path.to_owned(),
            why,
        };
        if !self.path.is_absolute() {
            return Err(unsafe_dir(&self.path, "is not an absolute path".to_owned()));
        }
        let mut here = PathBuf::from("/");
        let mut fd = rustix::fs::open("/", dir_flags(), Mode::empty())
            .map_err(|e| ScratchError::io(&here, e))?;
        let comps: Vec<&OsStr> = self
            .path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        if self
            .path
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(unsafe_dir(&self.path, "contains '..'".to_owned()));
        }
        let last = comps.len();
        for (i, name) in comps.into_iter().enumerate() {
            here.push(name);
            let next = match rustix::fs::openat(&fd, name, dir_flags(), Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) if i + 1 == last => {
                    return Err(ScratchError::PrefixMissing { path: here })
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    // A link is followed only when root owns it (`/var/run -> /run`).
                    let st = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| ScratchError::io(&here, e))?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink || st.st_uid != 0 {
                        return Err(unsafe_dir(
                            &here,
                            "is not a directory or a root-owned link".to_owned(),
                        ));
                    }
                    rustix::fs::openat(&fd, name, dir_flags() & !OFlags::NOFOLLOW, Mode::empty())
                        .map_err(|e| ScratchError::io(&here, e))?
                }
                Err(e) => return Err(ScratchError::io(&here, e)),
            };
            let st = rustix::fs::fstat(&next).map_err(|e| ScratchError::io(&here, e))?;
            check_shared_dir(&st).map_err(|why| unsafe_dir(&here, why))?;
            fd = next;
        }
        Ok(fd)
    }

    /// The owner's dir, created (mode 0700) when `create` and missing.
    ///
    /// # Errors
    /// [`ScratchError`]: an unsafe prefix, or an owner dir that is not ours and private.
    pub fn owner_dir(&self, owner: &str, create: bool) -> Result<OwnerDir, ScratchError> {
        let prefix = self.open()?;
        let path = self.path.join(owner);
        if owner.is_empty() || owner.contains('/') || owner == "." || owner == ".." {
            return Err(ScratchError::NotAJobDir {
                path,
                owner_dir: self.path.clone(),
            });
        }
        let fd = match rustix::fs::openat(&prefix, owner, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&prefix, owner, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(ScratchError::io(&path, e)),
                }
                rustix::fs::openat(&prefix, owner, dir_flags(), Mode::empty())
                    .map_err(|e| not_private_or_io(&path, e))?
            }
            Err(e) => return Err(not_private_or_io(&path, e)),
        };
        check_private(&fd, &path)?;
        Ok(OwnerDir { path, fd })
    }
}

fn not_private_or_io(path: &Path, e: Errno) -> ScratchError {
    if e == Errno::LOOP || e == Errno::NOTDIR {
        ScratchError::NotPrivate {
            path: path.to_owned(),
            why: "is a link or not a directory".to_owned(),
        }
    } else {
        ScratchError::io(path, e)
    }
}

/// A directory above or at the prefix: owned by root or us; writable by others only when
/// sticky and root-owned.
fn check_shared_dir(st: &Stat) -> Result<(), String> {
    let uid = st.st_uid;
    if uid != 0 && uid != me() {
        return Err(format!("is owned by uid {uid}, neither root nor us"));
    }
    let writable_by_others = st.st_mode & 0o022 != 0;
    let sticky = st.st_mode & 0o1000 != 0;
    if writable_by_others && !(sticky && uid == 0) {
        return Err(format!(
            "has mode {:o}: others can write it but it is not a root-owned sticky directory",
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

/// A directory of ours: owned by us, no permissions for group or others.
fn check_private(fd: &OwnedFd, path: &Path) -> Result<(), ScratchError> {
    let st = rustix::fs::fstat(fd).map_err(|e| ScratchError::io(path, e))?;
    let not_private = |why: String| ScratchError::NotPrivate {
        path: path.to_owned(),
        why,
    };
    if st.st_uid != me() {
        return Err(not_private(format!(
            "is owned by uid {}, not by us (uid {})",
            st.st_uid,
            me()
        )));
    }
    if st.st_mode & 0o077 != 0 {
        return Err(not_private(format!(
            "has mode {:o}, not 0700",
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

impl OwnerDir {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make a new job dir `<job_id>.<random>.staging` (mode 0700).
    ///
    /// # Errors
    /// [`ScratchError::Io`] (a full file system is [`ScratchError::is_storage_full`]).
    pub fn create_job_dir(&self, job_id: &str) -> Result<JobDir, ScratchError> {
        for _ in 0..16 {
            let name = format!("{job_id}.{}{STAGING_SUFFIX}", random_suffix());
            let path = self.path.join(&name);
            match rustix::fs::mkdirat(&self.fd, name.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(ScratchError::io(&path, e)),
            }
            let fd = rustix::fs::openat(&self.fd, name.as_str(), dir_flags(), Mode::empty())
                .map_err(|e| ScratchError::io(&path, e))?;
            check_private(&fd, &path)?;
            return Ok(JobDir { path, name, fd });
        }
        Err(ScratchError::io(&self.path, Errno::EXIST))
    }

    /// Open the job dir `path` names: it must be a direct child of this owner dir, a name we
    /// generate (`<cluster>.<proc>.<random>`, staged and committed), a real directory, ours
    /// and private.
    ///
    /// # Errors
    /// [`ScratchError::NotAJobDir`], [`ScratchError::NotPrivate`], [`ScratchError::Io`].
    pub fn open_job_dir(&self, path: &Path) -> Result<JobDir, ScratchError> {
        let not_ours = || ScratchError::NotAJobDir {
            path: path.to_owned(),
            owner_dir: self.path.clone(),
        };
        let mut comps = path.components();
        let name = match comps.next_back() {
            Some(Component::Normal(n)) => n.to_str().ok_or_else(not_ours)?,
            _ => return Err(not_ours()),
        };
        if comps.as_path() != self.path || !is_job_dir_name(name) {
            return Err(not_ours());
        }
        let fd = rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty())
            .map_err(|e| not_private_or_io(path, e))?;
        check_private(&fd, path)?;
        Ok(JobDir {
            path: path.to_owned(),
            name: name.to_owned(),
            fd,
        })
    }

    /// Remove a job dir of ours (named as [`OwnerDir::open_job_dir`] requires).
    ///
    /// # Errors
    /// As [`OwnerDir::open_job_dir`], or the removal's I/O error.
    pub fn remove_job_dir(&self, dir: JobDir) -> Result<(), ScratchError> {
        drop(dir.fd);
        // std's remove_dir_all never follows links (it works with openat/unlinkat), and the
        // owner dir is private, so the path cannot be swapped under us.
        std::fs::remove_dir_all(&dir.path).map_err(|e| ScratchError::io(&dir.path, e))
    }

    /// Remove job dirs left by killed translates (`*.staging` older than `stale_after`) and
    /// failed ones beyond the newest `keep_failed`; at most once per ten minutes. Returns how
    /// many dirs were removed.
    pub fn sweep(&self, stale_after: Duration, keep_failed: usize) -> usize {
        let now = SystemTime::now();
        if let Ok(st) = rustix::fs::statat(&self.fd, SWEPT_MARKER, AtFlags::SYMLINK_NOFOLLOW) {
            let age = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(u64::try_from(st.st_mtime).unwrap_or(0));
            if age < SWEEP_EVERY.as_secs() {
                return 0;
            }
        }
        let _ = rustix::fs::unlinkat(&self.fd, SWEPT_MARKER, AtFlags::empty());
        let _ = rustix::fs::openat(
            &self.fd,
            SWEPT_MARKER,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        );
        self.sweep_now(stale_after, keep_failed)
    }

    /// [`OwnerDir::sweep`] without the rate limit.
    pub fn sweep_now(&self, stale_after: Duration, keep_failed: usize) -> usize {
        let Ok(mut dir) = rustix::fs::Dir::read_from(&self.fd) else {
            return 0;
        };
        let now = SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_secs());
        let mut failed: Vec<(i64, String)> = Vec::new();
        let mut removed = 0;
        while let Some(Ok(entry)) = dir.read() {
            let Ok(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(st) = rustix::fs::statat(&self.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory || st.st_uid != me() {
                continue;
            }
            let age = now.saturating_sub(u64::try_from(st.st_mtime).unwrap_or(0));
            if let Some(base) = name.strip_suffix(STAGING_SUFFIX) {
                if is_job_dir_name(base) && age > stale_after.as_secs() {
                    removed += usize::from(std::fs::remove_dir_all(self.path.join(&name)).is_ok());
                }
            } else if is_job_dir_name(&name) {
                let marker = self.path.join(&name).join(FAILED_MARKER);
                if std::fs::symlink_metadata(&marker).is_ok_and(|m| m.is_file()) {
                    failed.push((st.st_mtime, name));
                }
            }
        }
        failed.sort();
        let excess = failed.len().saturating_sub(keep_failed);
        for (_, name) in failed.into_iter().take(excess) {
            removed += usize::from(std::fs::remove_dir_all(self.path.join(&name)).is_ok());
        }
        removed
    }
}

/// `<cluster>.<proc>.<6 alphanumerics>`.
fn is_job_dir_name(name: &str) -> bool {
    let mut parts = name.split('.');
    let digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next())
        && digits(parts.next())
        && parts
            .next()
            .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
        && parts.next().is_none()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = [0u8; 6];
    if rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).is_err() {
        // Uniqueness, not secrecy, is what matters here (mkdirat refuses a clash).
        let seed = u64::from(
            SystemTime::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.subsec_nanos()),
        ) ^ u64::from(std::process::id()) << 32;
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed.to_le_bytes().get(i).copied().unwrap_or(0);
        }
    }
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

impl JobDir {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its name in the owner dir.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is still being staged.
    pub fn is_staging(&self) -> bool {
        self.name.ends_with(STAGING_SUFFIX)
    }

    /// Rename a staged dir to its final name (`.staging` dropped).
    ///
    /// # Errors
    /// [`ScratchError::Io`].
    pub fn commit(self, owner: &OwnerDir) -> Result<JobDir, ScratchError> {
        let Some(final_name) = self.name.strip_suffix(STAGING_SUFFIX) else {
            return Ok(self);
        };
        rustix::fs::renameat(&owner.fd, self.name.as_str(), &owner.fd, final_name)
            .map_err(|e| ScratchError::io(&self.path, e))?;
        Ok(JobDir {
            path: owner.path.join(final_name),
            name: final_name.to_owned(),
            fd: self.fd,
        })
    }

    /// `lstat` of a file in the dir: `None` when it does not exist.
    ///
    /// # Errors
    /// Other I/O errors.
    pub fn stat(&self, name: &str) -> Result<Option<Stat>, ScratchError> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(ScratchError::io(&self.path.join(name), e)),
        }
    }

    /// The regular files in the dir whose names pass `keep`.
    pub fn regular_files(&self, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
        let Ok(mut dir) = rustix::fs::Dir::read_from(self.fd.as_fd()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(Ok(entry)) = dir.read() {
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            let Some(name) = name.to_str() else { continue };
            if keep(name)
                && self
                    .stat(name)
                    .ok()
                    .flatten()
                    .is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
            {
                out.push(name.to_owned());
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn prefix() -> (tempfile::TempDir, ScratchPrefix) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let p = ScratchPrefix::new(dir.path());
        (dir, p)
    }

    #[test]
    fn names_of_job_dirs() {
        assert!(is_job_dir_name("12.0.aB3dE9"));
        for bad in [
            "..",
            "12.0",
            "12.0.aB3dE9.staging",
            "x.0.aB3dE9",
            "12.0.ab/cd1",
            "12.0.aB3dE",
        ] {
            assert!(!is_job_dir_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_missing_prefix_is_never_created() {
        let (dir, _) = prefix();
        let missing = ScratchPrefix::new(&dir.path().join("nope"));
        let err = missing.owner_dir("alice", true).unwrap_err();
        assert!(matches!(err, ScratchError::PrefixMissing { .. }), "{err}");
        assert!(err.to_string().contains("install -d -m 1777 -o root"));
        assert!(!dir.path().join("nope").exists());
    }

    #[test]
    fn a_squatted_or_open_owner_dir_is_refused_and_not_chmodded() {
        let (dir, p) = prefix();
        std::fs::create_dir(dir.path().join("alice")).unwrap();
        std::fs::set_permissions(
            dir.path().join("alice"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let err = p.owner_dir("alice", true).unwrap_err();
        assert!(matches!(err, ScratchError::NotPrivate { .. }), "{err}");
        let mode = std::fs::metadata(dir.path().join("alice"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o777, "the squat was modified");
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), dir.path().join("bob")).unwrap();
        assert!(matches!(
            p.owner_dir("bob", true).unwrap_err(),
            ScratchError::NotPrivate { .. }
        ));
    }

    #[test]
    fn job_dirs_are_created_committed_found_and_nothing_else_is() {
        let (_dir, p) = prefix();
        let owner = p.owner_dir("carol", true).unwrap();
        let staged = owner.create_job_dir("7.2").unwrap();
        assert!(staged.is_staging());
        let job = staged.commit(&owner).unwrap();
        assert!(is_job_dir_name(job.name()));
        let again = owner.open_job_dir(job.path()).unwrap();
        assert_eq!(again.path(), job.path());
        for bad in [
            owner.path().join(".."),
            owner.path().join("7.2.abcdef/.."),
            owner.path().to_owned(),
            p.path().join("dave").join(job.name()),
        ] {
            assert!(owner.open_job_dir(&bad).is_err(), "{}", bad.display());
        }
        owner.remove_job_dir(again).unwrap();
        assert!(!job.path().exists());
    }

    #[test]
    fn sweep_removes_stale_staging_and_old_failures_only() {
        let (_dir, p) = prefix();
        let owner = p.owner_dir("erin", true).unwrap();
        let stale = owner.create_job_dir("1.0").unwrap();
        let fresh = owner.create_job_dir("2.0").unwrap();
        let mut failed = Vec::new();
        for i in 0..4 {
            let d = owner
                .create_job_dir(&format!("3.{i}"))
                .unwrap()
                .commit(&owner)
                .unwrap();
            std::fs::write(d.path().join(FAILED_MARKER), "x").unwrap();
            failed.push(d);
        }
        let old = SystemTime::now() - Duration::from_secs(7200);
        let touch = |p: &Path| std::fs::File::open(p).unwrap().set_modified(old).unwrap();
        touch(stale.path());
        touch(failed[0].path());
        let removed = owner.sweep_now(Duration::from_secs(3600), 2);
        assert_eq!(removed, 3);
        assert!(!stale.path().exists());
        assert!(fresh.path().exists());
        assert!(!failed[0].path().exists());
        assert_eq!(failed.iter().filter(|d| d.path().exists()).count(), 2);
    }
}
