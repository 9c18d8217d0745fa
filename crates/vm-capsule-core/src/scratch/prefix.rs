//! The prefix, checked with every directory above it and never created by a hook, and the
//! owner dir made or opened under it.

use super::*;

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
        let unsafe_dir = |path: &Path, why: DirProblem| ScratchError::PrefixUnsafe {
            prefix: self.path.clone(),
            path: path.to_owned(),
            why,
        };
        if !self.path.is_absolute() {
            return Err(unsafe_dir(&self.path, DirProblem::NotAbsolute));
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
            return Err(unsafe_dir(&self.path, DirProblem::DotDot));
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
                        return Err(unsafe_dir(&here, DirProblem::NotDirOrRootLink));
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
