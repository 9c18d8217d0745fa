//! Tree walks and streaming tar in and out of the volume. File data is streamed in 256 KiB
//! pieces; nothing is held whole in memory.
//!
//! # Security
//! `tar_in` follows tar-rs's path rules: a leading `/` is dropped, entries with `..` are
//! skipped, and only regular files and directories are created (FAT cannot hold links or
//! devices; they are reported in [`TarStats::skipped`]). `walk` and `tar_out` check every name
//! read from the volume (no `/`, `\`, NUL, `.` or `..`) and bound depth and entry count.

use std::io::{self, Read, Write};

use capsule_manifest::RelPath;

use super::{DataDisk, DirEntryInfo, MAX_DEPTH};
use crate::Error;

/// Most entries one walk (or tar transfer) handles.
pub const MAX_WALK_ENTRIES: usize = 200_000;

/// What a tar transfer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarStats {
    /// Regular files transferred.
    pub files: u64,
    /// Directories transferred.
    pub dirs: u64,
    /// File bytes transferred.
    pub bytes: u64,
    /// Archive entries not transferred, with the reason (links, devices, unsafe names).
    pub skipped: Vec<String>,
}

/// Reject names that cannot be a single path component on the host.
fn check_name(dir: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(Error::InvalidPath {
            path: format!("{dir}/{name}"),
            reason: "a name read from the volume is empty, '.', '..', or contains '/', '\\' or NUL",
        });
    }
    Ok(())
}

fn join(dir: &str, name: &str) -> String {
    let d = dir.trim_end_matches('/');
    if d.is_empty() {
        name.to_owned()
    } else {
        format!("{d}/{name}")
    }
}

/// Errors from the archive side of a transfer.
fn tar_err(detail: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let detail = detail.into();
    move |e| {
        Error::from_io(e, |source| Error::Tar {
            detail,
            source: Some(source),
        })
    }
}

/// A reader that fails instead of returning fewer bytes than the header promised, so a
/// truncated chain on a hostile volume cannot produce a silently corrupt archive.
struct Exact<R> {
    inner: R,
    left: u64,
    path: String,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let cap = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..cap])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "'{}' ended {} bytes before its recorded size",
                    self.path, self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

impl DataDisk {
    /// Every entry below `dir`, parents before children, as (path relative to `dir`, info).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidPath`] for an unsafe name on the volume,
    /// [`Error::LimitExceeded`] past [`MAX_DEPTH`] levels or [`MAX_WALK_ENTRIES`] entries.
    pub fn walk(&self, dir: &str) -> Result<Vec<(String, DirEntryInfo)>, Error> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), 0usize)];
        while let Some((rel, depth)) = stack.pop() {
            if depth >= MAX_DEPTH {
                return Err(Error::LimitExceeded {
                    path: join(dir, &rel),
                    what: "directory depth",
                    limit: MAX_DEPTH as u64,
                });
            }
            let entries = self.list(&join(dir, &rel))?;
            let mut subdirs = Vec::new();
            for e in entries {
                check_name(&join(dir, &rel), &e.name)?;
                let path = join(&rel, &e.name);
                if e.is_dir {
                    subdirs.push((path.clone(), depth + 1));
                }
                out.push((path, e));
                if out.len() > MAX_WALK_ENTRIES {
                    return Err(Error::LimitExceeded {
                        path: dir.to_owned(),
                        what: "entry count of the tree",
                        limit: MAX_WALK_ENTRIES as u64,
                    });
                }
            }
            // Reverse so the first subdirectory is walked first.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(out)
    }

    /// Write the tree below `dir` as a tar stream (ustar/GNU, long names supported).
    ///
    /// # Errors
    /// As [`DataDisk::walk`]; [`Error::Tar`] when writing to `out` fails or a file is shorter
    /// than its directory entry says.
    pub fn tar_out(&self, dir: &str, out: &mut dyn Write) -> Result<TarStats, Error> {
        let mut stats = TarStats::default();
        let mut builder = tar::Builder::new(out);
        for (rel, info) in self.walk(dir)? {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(info.modified);
            h.set_uid(0);
            h.set_gid(0);
            if info.is_dir {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                builder
                    .append_data(&mut h, format!("{rel}/"), io::empty())
                    .map_err(tar_err(format!("writing '{rel}/'")))?;
                stats.dirs += 1;
            } else {
                let full = join(dir, &rel);
                let reader = self.open_file(&full)?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(info.size);
                let exact = Exact {
                    inner: reader,
                    left: info.size,
                    path: full.clone(),
                };
                builder
                    .append_data(&mut h, &rel, exact)
                    .map_err(tar_err(format!("writing '{rel}'")))?;
                stats.files += 1;
                stats.bytes += info.size;
            }
        }
        builder.finish().map_err(tar_err("finishing the archive"))?;
        Ok(stats)
    }

    /// Unpack a tar stream into directory `dir` of the volume (created if missing).
    ///
    /// # Errors
    /// [`Error::Tar`] for a malformed archive; errors of [`DataDisk::put_file`].
    pub fn tar_in(&self, dir: &str, archive: &mut dyn Read) -> Result<TarStats, Error> {
        self.create_dir_all(dir)?;
        let mut stats = TarStats::default();
        let mut ar = tar::Archive::new(archive);
        let entries = ar.entries().map_err(tar_err("reading the archive"))?;
        for (n, entry) in entries.enumerate() {
            if n >= MAX_WALK_ENTRIES {
                return Err(Error::LimitExceeded {
                    path: dir.to_owned(),
                    what: "archive entry count",
                    limit: MAX_WALK_ENTRIES as u64,
                });
            }
            let mut entry = entry.map_err(tar_err(format!("reading entry {n}")))?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            // One rule set for relative paths (capsule_manifest::RelPath): an absolute name is
            // refused, not quietly re-rooted.
            let rel = match RelPath::from_archive_name(&raw) {
                Ok(rel) => rel,
                Err(reason) => {
                    stats.skipped.push(format!("{shown}: {reason}"));
                    continue;
                }
            };
            let parts: Vec<&str> = rel.iter().flat_map(RelPath::components).collect();
            let dest = join(dir, &parts.join("/"));
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    if !parts.is_empty() {
                        self.create_dir_all(&dest)?;
                    }
                    stats.dirs += 1;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if parts.is_empty() {
                        stats
                            .skipped
                            .push(format!("{shown}: a file without a name"));
                        continue;
                    }
                    stats.bytes += self.put_file(&dest, &mut entry)?;
                    stats.files += 1;
                }
                other => stats.skipped.push(format!(
                    "{shown}: {other:?} entries cannot be stored on FAT"
                )),
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_volume_are_checked() {
        for bad in ["", ".", "..", "a/b", "a\\b", "nul\0"] {
            assert!(check_name("d", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("d", "Long Name.txt").is_ok());
    }

    #[test]
    fn exact_reader_refuses_short_data() {
        let mut r = Exact {
            inner: &b"abc"[..],
            left: 5,
            path: "x".into(),
        };
        let mut v = Vec::new();
        assert!(r.read_to_end(&mut v).is_err());
    }
}
