//! One job's dir: its files looked at without following links.

use super::*;

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
