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
    pub why: DirProblem,
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
    let fail = |here: &Path, why: DirProblem| NotOwnDir {
        path: here.to_owned(),
        why,
    };
    if !path.is_absolute() {
        return Err(fail(path, DirProblem::NotAbsolute));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(fail(path, DirProblem::DotDot));
    }
    let mut here = PathBuf::from("/");
    let mut fd = rustix::fs::open("/", dir_flags(), Mode::empty())
        .map_err(|e| fail(&here, DirProblem::Unreachable(e)))?;
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
                    Err(e) => return Err(fail(&here, DirProblem::CannotCreate(e))),
                }
                rustix::fs::openat(&fd, name, dir_flags(), Mode::empty())
                    .map_err(|e| fail(&here, DirProblem::Unreachable(e)))?
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {
                let st = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| fail(&here, DirProblem::Unreachable(e)))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink || st.st_uid != 0 {
                    return Err(fail(&here, DirProblem::NotDirOrRootLink));
                }
                rustix::fs::openat(&fd, name, dir_flags() & !OFlags::NOFOLLOW, Mode::empty())
                    .map_err(|e| fail(&here, DirProblem::Unreachable(e)))?
            }
            Err(e) => return Err(fail(&here, DirProblem::Unreachable(e))),
        };
        let st = rustix::fs::fstat(&next).map_err(|e| fail(&here, DirProblem::Unreachable(e)))?;
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
fn check_own(st: &Stat) -> Result<(), DirProblem> {
    if st.st_uid != me() {
        return Err(DirProblem::OwnNotOurs {
            uid: st.st_uid,
            me: me(),
        });
    }
    if st.st_mode & 0o022 != 0 {
        return Err(DirProblem::OthersCanWrite {
            mode: st.st_mode & 0o7777,
        });
    }
    Ok(())
}
