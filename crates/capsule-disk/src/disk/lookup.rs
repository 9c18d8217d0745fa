//! Paths to directories: lookups read the raw entries (`fat::dir`), each directory's cluster
//! chain is checked before it is read or handed to `fatfs`, and missing directories are made
//! by `fatfs` and then fixed up.

use std::io;

use super::{DataDisk, FatDir, MAX_DEPTH};
use crate::fat::{self, DirLoc, FatError, RawEntry, Slot};
use crate::Access;
use crate::Error;

/// Bytes of volume metadata one `fatfs` directory operation may read before we call it a loop.
const METADATA_BUDGET: u64 = 8 * 1024 * 1024;

fn check_depth(depth: usize, full: &str) -> Result<(), Error> {
    if depth >= MAX_DEPTH {
        return Err(Error::LimitExceeded {
            path: full.to_owned(),
            what: "directory depth",
            limit: MAX_DEPTH as u64,
        });
    }
    Ok(())
}

fn not_a_directory(full: &str) -> Error {
    Error::WrongKind {
        path: full.to_owned(),
        found: "a file",
        expected: "a directory",
    }
}

impl DataDisk {
    /// Visit the entries of directory `loc` (without `.` and `..`) until `f` returns false.
    /// `full` names the directory in errors.
    pub(super) fn visit(
        &self,
        loc: DirLoc,
        full: &str,
        f: &mut dyn FnMut(&Slot<'_>) -> bool,
    ) -> Result<(), Error> {
        let visited = match self.volume.lock() {
            Ok(mut v) => self
                .boot
                .visit_dir(&mut v, loc, &mut |e| e.is_dot() || f(e)),
            Err(e) => Err(e.into()),
        };
        visited.map_err(|e| self.fat_error(e, full, &format!("directory '{full}'")))
    }

    /// Find `name` in directory `loc`, by long or short name, case-insensitively (as FAT and
    /// `fatfs` do: the first match wins).
    pub(super) fn find(
        &self,
        loc: DirLoc,
        name: &str,
        full: &str,
    ) -> Result<Option<RawEntry>, Error> {
        let mut found = None;
        self.visit(loc, full, &mut |e| {
            if e.is_named(name) {
                found = Some(e.entry());
                return false;
            }
            true
        })?;
        Ok(found)
    }

    /// Check the cluster chain of subdirectory `e` (a hostile volume may point it outside the
    /// volume or into a loop) and return where it lies.
    fn enter(&self, e: &RawEntry, full: &str) -> Result<DirLoc, Error> {
        let checked = match self.volume.lock() {
            Ok(mut v) => self.boot.check_dir_chain(&mut v, e.first_cluster),
            Err(e) => Err(e.into()),
        };
        checked.map_err(|x| self.fat_error(x, full, &format!("directory '{full}'")))?;
        Ok(DirLoc::Chain(e.first_cluster))
    }

    /// Resolve the directory at `comps` (every component must exist and be a directory).
    pub(super) fn dir_at(&self, comps: &[&str], full: &str) -> Result<DirLoc, Error> {
        let mut loc = self.boot.root_dir();
        for (depth, c) in comps.iter().enumerate() {
            check_depth(depth, full)?;
            loc = match self.find(loc, c, full)? {
                Some(e) if e.is_dir() => self.enter(&e, full)?,
                Some(_) => return Err(not_a_directory(full)),
                None => {
                    return Err(Error::NotFound {
                        path: full.to_owned(),
                    })
                }
            };
        }
        Ok(loc)
    }

    /// Create the missing directories of `comps`; returns the last one as `fatfs` sees it (to
    /// create entries in) and where it lies.
    pub(super) fn create_dirs(
        &self,
        comps: &[&str],
        full: &str,
    ) -> Result<(FatDir<'_>, DirLoc), Error> {
        self.writable()?;
        let mut dir = self.fs.root_dir();
        let mut loc = self.boot.root_dir();
        for (depth, name) in comps.iter().enumerate() {
            check_depth(depth, full)?;
            loc = match self.find(loc, name, full)? {
                Some(e) if e.is_dir() => {
                    let inner = self.enter(&e, full)?;
                    dir = self.fatfs(full, || dir.open_dir(name))?;
                    inner
                }
                Some(_) => return Err(not_a_directory(full)),
                None => {
                    dir = self.fatfs(full, || dir.create_dir(name))?;
                    DirLoc::Chain(self.fix_new_dir(loc, name, full)?)
                }
            };
        }
        Ok((dir, loc))
    }

    /// Find the directory `name` that `fatfs` just made in `parent`, give it plain `.` and
    /// `..` entries (see [`fat::dot_entries`]) and return its first cluster.
    fn fix_new_dir(&self, parent: DirLoc, name: &str, full: &str) -> Result<u32, Error> {
        let made = self.find(parent, name, full)?.filter(RawEntry::is_dir);
        let Some(made) = made else {
            return Err(self.fat_err(full)(io::Error::other(
                "the new directory's entry is missing",
            )));
        };
        let fixed = match self.volume.lock() {
            Ok(mut v) => fat::dot_entries(
                &self.boot,
                &mut v,
                made.first_cluster,
                parent == self.boot.root_dir(),
            ),
            Err(e) => Err(e.into()),
        };
        fixed.map_err(|e| self.fat_error(e, full, &format!("directory '{full}'")))?;
        Ok(made.first_cluster)
    }

    /// Run a `fatfs` directory operation on behalf of `path` with a read budget, so a looping
    /// directory chain fails instead of hanging inside `fatfs`.
    pub(super) fn fatfs<T>(
        &self,
        path: &str,
        op: impl FnOnce() -> io::Result<T>,
    ) -> Result<T, Error> {
        self.volume
            .set_read_budget(Some(METADATA_BUDGET))
            .map_err(self.fat_err(path))?;
        let result = op();
        self.volume
            .set_read_budget(None)
            .map_err(self.fat_err(path))?;
        result.map_err(|e| self.fatfs_failed(path, e))
    }

    /// A `fatfs` call on behalf of `path` failed. `fatfs` 0.3.6 reports a full volume as an
    /// untyped error, so a failure while no cluster is free is taken for a full volume.
    pub(super) fn fatfs_failed(&self, path: &str, e: io::Error) -> Error {
        let untyped = e.kind() == io::ErrorKind::Other
            && !e.get_ref().is_some_and(|inner| inner.is::<Error>());
        if untyped && self.access == Access::ReadWrite && !self.has_free_cluster() {
            return self.fat_error(FatError::Full, path, "");
        }
        self.fat_err(path)(e)
    }

    /// True if the volume has a free cluster (or the FAT cannot be read to tell).
    fn has_free_cluster(&self) -> bool {
        match self.volume.lock() {
            Ok(mut v) => !matches!(self.boot.find_free(&mut v, 2), Ok(None)),
            Err(_) => true,
        }
    }
}
