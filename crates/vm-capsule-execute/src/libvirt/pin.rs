//! The checked files handed to libvirt under names the job's user cannot touch.
//!
//! libvirt opens files by path, after this script has exited, and the sandbox is the job
//! user's directory: they could rename a checked file and put a link to a host file in its
//! place. So libvirt gets hard links to the checked files (linked from the open file, not
//! by name) in a root-owned directory beside the sandbox, `<EXECUTE>/.vm-capsule-libvirt/
//! <domain>.<random>/`; every directory from `/` down to it must be out of the job user's
//! reach. The links outlive the domain: each run removes those whose sandbox file is gone
//! (the link is the last one left).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::sandbox::{id_at, Checked, Sandbox};
use super::LibvirtError;

/// The directory of pinned files in the sandbox's parent.
pub(super) const PIN_DIR: &str = ".vm-capsule-libvirt";
/// Pin dirs looked at per run (a bound on the sweep's work).
const MAX_SWEEP: usize = 4096;
/// An empty pin dir older than this was left by a run that died: removed.
const STALE_EMPTY_SECS: i64 = 3600;

fn pin_error(why: String) -> LibvirtError {
    LibvirtError::Pin { why }
}

fn dir_flags() -> OFlags {
    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW
}

/// Pin `files` (checked in `sandbox`) for domain `domain`; their paths for libvirt, in order.
/// Not root: nothing to protect from, the sandbox's paths are used as they are. `condor_uid`
/// is HTCondor's account from `CONDOR_IDS`.
pub(super) fn pin(
    sandbox: &Sandbox,
    domain: &str,
    files: &[&Checked],
    condor_uid: Option<u32>,
) -> Result<Vec<PathBuf>, LibvirtError> {
    let Some(owner) = sandbox.owner else {
        return Ok(files.iter().map(|c| sandbox.path.join(&c.name)).collect());
    };
    let execute = sandbox
        .path
        .parent()
        .ok_or_else(|| pin_error("the sandbox has no parent directory".to_owned()))?;
    let execute_fd = open_trusted_dir(execute, owner, condor_uid)?;
    // The sandbox must be the directory checked, directly in this one.
    let name = sandbox.path.file_name().unwrap_or_default();
    let under = rustix::fs::statat(&execute_fd, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| (st.st_dev, st.st_ino));
    if under.is_none() || under != sandbox.id() {
        return Err(pin_error(format!(
            "{} is no longer the sandbox that was opened",
            sandbox.path.display()
        )));
    }
    let root = pin_root(&execute_fd, execute)?;
    sweep(&root);
    let (dir_name, dir_fd) = job_dir(&root, domain)?;
    let dir_path = execute.join(PIN_DIR).join(&dir_name);
    let mut out = Vec::new();
    for c in files {
        rustix::fs::linkat(&c.file, "", &dir_fd, c.name.as_str(), AtFlags::EMPTY_PATH).map_err(
            |e| {
                let hint = if e == Errno::XDEV {
                    "; the sandbox is a file system of its own (per-job disk limits?), so its files cannot be pinned beside it"
                } else {
                    ""
                };
                pin_error(format!(
                    "cannot link {} into {}: {e}{hint}",
                    c.name,
                    dir_path.display()
                ))
            },
        )?;
        if id_at(&dir_fd, &c.name) != Some(c.id) {
            return Err(pin_error(format!(
                "{} in {} is not the checked file",
                c.name,
                dir_path.display()
            )));
        }
        out.push(dir_path.join(&c.name));
    }
    Ok(out)
}

/// Open `dir` walking from `/` without following links (but root-owned ones), each
/// directory owned by root or HTCondor's account, writable by others only when sticky: the
/// job's user (`sandbox_owner`) can change nothing on the way.
fn open_trusted_dir(
    dir: &Path,
    sandbox_owner: u32,
    condor_uid: Option<u32>,
) -> Result<OwnedFd, LibvirtError> {
    let trusted = trusted_owners(sandbox_owner, condor_uid);
    let mut here = PathBuf::from("/");
    let mut fd = rustix::fs::open("/", dir_flags(), Mode::empty())
        .map_err(|e| pin_error(format!("cannot open /: {e}")))?;
    check_dir(
        &here,
        &rustix::fs::fstat(&fd).map_err(|e| pin_error(e.to_string()))?,
        &trusted,
    )?;
    for comp in dir.components() {
        let name = match comp {
            Component::RootDir => continue,
            Component::Normal(n) => n,
            _ => {
                return Err(pin_error(format!(
                    "{} is not a plain absolute path",
                    dir.display()
                )))
            }
        };
        here.push(name);
        let next = match rustix::fs::openat(&fd, name, dir_flags(), Mode::empty()) {
            Ok(next) => next,
            Err(Errno::LOOP | Errno::NOTDIR) => {
                // A link is followed only when root owns it (`/var/run -> /run`).
                let st = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| pin_error(format!("{}: {e}", here.display())))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink || st.st_uid != 0 {
                    return Err(pin_error(format!(
                        "{} is not a directory or a root-owned link",
                        here.display()
                    )));
                }
                rustix::fs::openat(&fd, name, dir_flags() & !OFlags::NOFOLLOW, Mode::empty())
                    .map_err(|e| pin_error(format!("{}: {e}", here.display())))?
            }
            Err(e) => return Err(pin_error(format!("{}: {e}", here.display()))),
        };
        let st = rustix::fs::fstat(&next).map_err(|e| pin_error(e.to_string()))?;
        check_dir(&here, &st, &trusted)?;
        fd = next;
    }
    Ok(fd)
}

/// Root and HTCondor's account (`condor`, or `condor_uid` from `CONDOR_IDS`), never the
/// sandbox's user.
fn trusted_owners(sandbox_owner: u32, condor_uid: Option<u32>) -> Vec<u32> {
    let mut uids = vec![0];
    if let Ok(Some(u)) = nix::unistd::User::from_name("condor") {
        uids.push(u.uid.as_raw());
    }
    uids.extend(condor_uid);
    uids.retain(|u| *u != sandbox_owner || *u == 0);
    uids
}

fn check_dir(path: &Path, st: &Stat, trusted: &[u32]) -> Result<(), LibvirtError> {
    if !trusted.contains(&st.st_uid) {
        return Err(pin_error(format!(
            "{} belongs to uid {}, neither root nor HTCondor's account: its owner could swap the files handed to libvirt",
            path.display(),
            st.st_uid
        )));
    }
    if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
        return Err(pin_error(format!(
            "{} has mode {:o}: others can write it and it is not sticky",
            path.display(),
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// `<EXECUTE>/.vm-capsule-libvirt`, made (root, 0711: libvirt's QEMU user must pass) or
/// opened and checked.
fn pin_root(execute: &OwnedFd, execute_path: &Path) -> Result<OwnedFd, LibvirtError> {
    let path = execute_path.join(PIN_DIR);
    match rustix::fs::mkdirat(execute, PIN_DIR, Mode::from_raw_mode(0o711)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(pin_error(format!("cannot create {}: {e}", path.display()))),
    }
    let fd = rustix::fs::openat(execute, PIN_DIR, dir_flags(), Mode::empty())
        .map_err(|e| pin_error(format!("{}: {e}", path.display())))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| pin_error(e.to_string()))?;
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        return Err(pin_error(format!(
            "{} belongs to uid {} with mode {:o}, not root's 0711; remove it",
            path.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok(fd)
}

/// A new pin dir for `domain` under `root`: its name and open fd.
fn job_dir(root: &OwnedFd, domain: &str) -> Result<(String, OwnedFd), LibvirtError> {
    let safe: String = domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let mut bytes = [0u8; 8];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| pin_error(format!("no random bytes: {e}")))?;
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("{safe}.{suffix}");
    rustix::fs::mkdirat(root, name.as_str(), Mode::from_raw_mode(0o711))
        .map_err(|e| pin_error(format!("cannot create {PIN_DIR}/{name}: {e}")))?;
    let fd = rustix::fs::openat(root, name.as_str(), dir_flags(), Mode::empty())
        .map_err(|e| pin_error(format!("{PIN_DIR}/{name}: {e}")))?;
    Ok((name, fd))
}

/// Remove the pin dirs whose every file is linked nowhere else (the sandbox is gone), and
/// empty ones left by runs that died. Best effort.
fn sweep(root: &OwnedFd) {
    let Ok(dir) = rustix::fs::Dir::read_from(root) else {
        return;
    };
    let now = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for entry in dir.flatten().take(MAX_SWEEP) {
        let name = entry.file_name().to_owned();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let Ok(fd) = rustix::fs::openat(root, name.as_c_str(), dir_flags(), Mode::empty()) else {
            continue;
        };
        let Some(files) = pinned_files(&fd) else {
            continue;
        };
        let gone = files.iter().all(|(_, st)| st.st_nlink <= 1);
        let stale = files.is_empty()
            && rustix::fs::fstat(&fd).is_ok_and(|st| now - st.st_mtime > STALE_EMPTY_SECS);
        if (gone && !files.is_empty()) || stale {
            for (file, _) in &files {
                let _ = rustix::fs::unlinkat(&fd, file.as_os_str(), AtFlags::empty());
            }
            let _ = rustix::fs::unlinkat(root, name.as_c_str(), AtFlags::REMOVEDIR);
        }
    }
}

/// The regular files of a pin dir with their status; `None` when it holds anything else.
fn pinned_files(dir: &OwnedFd) -> Option<Vec<(PathBuf, Stat)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).ok()?.flatten().take(64) {
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return None;
        }
        let path = PathBuf::from(OsStr::from_bytes(name.to_bytes()));
        out.push((path, st));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::trusted_owners;

    #[test]
    fn the_account_condor_ids_names_is_trusted_but_never_the_sandbox_owner() {
        assert!(trusted_owners(1000, Some(64)).contains(&64));
        assert!(!trusted_owners(1000, None).contains(&64));
        assert!(!trusted_owners(64, Some(64)).contains(&64));
        assert!(trusted_owners(0, Some(64)).contains(&0));
    }
}
