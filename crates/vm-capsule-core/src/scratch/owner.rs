//! An owner dir: job dirs made, committed and found in it, stale and failed ones swept.

use super::*;

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
            match self.create_named_job_dir(&new_job_dir_name(job_id)) {
                Err(e) if e.is_exists() => continue,
                other => return other,
            }
        }
        Err(ScratchError::io(&self.path, Errno::EXIST))
    }

    /// Make job dir `<name>.staging` (mode 0700) for a name from [`new_job_dir_name`], chosen
    /// beforehand (the routed ad names the job dir before it exists).
    ///
    /// # Errors
    /// [`ScratchError::Io`]; [`ScratchError::is_exists`] when the name is taken.
    pub fn create_named_job_dir(&self, name: &str) -> Result<JobDir, ScratchError> {
        let name = format!("{name}{STAGING_SUFFIX}");
        let path = self.path.join(&name);
        rustix::fs::mkdirat(&self.fd, name.as_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| ScratchError::io(&path, e))?;
        let fd = rustix::fs::openat(&self.fd, name.as_str(), dir_flags(), Mode::empty())
            .map_err(|e| ScratchError::io(&path, e))?;
        check_private(&fd, &path)?;
        Ok(JobDir { path, name, fd })
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

/// Whether `name` is a job dir name translate makes: `<cluster>.<proc>.<6 alphanumerics>`.
pub fn is_job_dir_name(name: &str) -> bool {
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

/// A fresh job dir name for `job_id`: `<job_id>.<random>` (see [`is_job_dir_name`]).
pub fn new_job_dir_name(job_id: &str) -> String {
    format!("{job_id}.{}", random_suffix())
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
