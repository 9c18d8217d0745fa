//! A directory of our own at a given path (an admin tool's cache), checked as the prefix is:
//! no other user can put anything in it or swap it, or it is not used.

use super::*;

/// Why a directory path is no place for our files.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path} {why}")]
pub struct NotOwnDir {
    /// The directory at fault (the path itself or one above it).
    pub path: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// Open the directory `path` (absolute), creating what is missing of it with `mode` (0700
/// for a private cache, 0755 for what others must read).
/// Every directory on the way is checked as the scratch prefix's are (owned by root or us,
/// writable by others only when root-owned and sticky, a link followed only when root owns
/// it); the directory itself must be ours and writable by nobody else.
///
/// # Errors
/// [`NotOwnDir`] naming the directory at fault.
pub fn open_own_dir(path: &Path, mode: u32) -> Result<OwnedFd, NotOwnDir> {
    let fail = |here: &Path, why: String| NotOwnDir {
        path: here.to_owned(),
        why,
    };
    if !path.is_absolute() {
        return Err(fail(path, "is not an absolute path".to_owned()));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(fail(path, "contains '..'".to_owned()));
    }
    let mut here = PathBuf::from("/");
    let mut fd = rustix::fs::open("/", dir_flags(), Mode::empty())
        .map_err(|e| fail(&here, e.to_string()))?;
    let comps: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let last = comps.len();
    for (i, name) in comps.into_iter().enumerate() {
        here.push(name);
        let next = match rustix::fs::openat(&fd, name, dir_flags(), Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(mode & 0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail(&here, format!("cannot be created: {e}"))),
                }
                rustix::fs::openat(&fd, name, dir_flags(), Mode::empty())
                    .map_err(|e| fail(&here, e.to_string()))?
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {
                let st = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| fail(&here, e.to_string()))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink || st.st_uid != 0 {
                    return Err(fail(
                        &here,
                        "is not a directory or a root-owned link".to_owned(),
                    ));
                }
                rustix::fs::openat(&fd, name, dir_flags() & !OFlags::NOFOLLOW, Mode::empty())
                    .map_err(|e| fail(&here, e.to_string()))?
            }
            Err(e) => return Err(fail(&here, e.to_string())),
        };
        let st = rustix::fs::fstat(&next).map_err(|e| fail(&here, e.to_string()))?;
        if i + 1 == last {
            check_own(&st).map_err(|why| fail(&here, why))?;
        } else {
            check_shared_dir(&st).map_err(|why| fail(&here, why))?;
        }
        fd = next;
    }
    Ok(fd)
}

/// The directory itself: ours, and nobody else may write it.
fn check_own(st: &Stat) -> Result<(), String> {
    if st.st_uid != me() {
        return Err(format!(
            "is owned by uid {}, not by us (uid {}); another user may have made it",
            st.st_uid,
            me()
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(format!(
            "has mode {:o}: others can write it",
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}
