//! Select the job's outputs as HTCondor would and pack them into `output.tar`.
//!
//! Nothing the job left behind is trusted, because the agent reads it as root: symlinks are
//! never followed (a job could point one at a file only root may read), a hard link to a file
//! the job does not own is skipped (the same trick through `link(2)`), only regular files and
//! directories are packed, and trees deeper than [`MAX_DEPTH`] are cut with a warning.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use capsule_manifest::{EntryKind, OutputEntry, OutputPath, OutputRule, RelPath, MAX_REMOVED};

use crate::workdir::{self, Catalog};

/// Deepest directory level packed below an explicit output directory.
pub const MAX_DEPTH: usize = 128;

/// What went into `output.tar`.
#[derive(Debug, Default)]
pub struct Collected {
    /// Top-level entries packed.
    pub outputs: Vec<OutputEntry>,
    /// Explicit entries that did not exist.
    pub missing: Vec<OutputPath>,
    /// Things skipped, for the result.
    pub warnings: Vec<String>,
    /// After a checkpoint exit: what came in from the data disk and the job removed.
    pub removed: Vec<RelPath>,
}

impl Collected {
    /// After a checkpoint exit: note what came in (`came_in`, from
    /// [`workdir::top_names`]) and the job removed from `work`, for the host to remove from
    /// the sandbox the job restarts in, as natively.
    pub fn note_removed(&mut self, work: &Path, came_in: &[std::ffi::OsString]) {
        let (removed, more) = workdir::removed_since(work, came_in, MAX_REMOVED);
        if more > 0 {
            self.warnings.push(format!(
                "the job removed {more} entries more than the {MAX_REMOVED} the host is told of: they are back at its restart"
            ));
        }
        self.removed = removed;
    }
}

/// The rule after a checkpoint exit: every top-level entry of `work` the job may have
/// written (directories whole, files new or changed since the inputs were unpacked), so the
/// host's sandbox holds the job's files when HTCondor restarts it there. Symlinks, special
/// files and names that are not UTF-8 stay behind (the default rule skips them too).
pub fn checkpoint_rule(work: &Path, catalog: &Catalog) -> Result<OutputRule> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(work).with_context(|| format!("cannot list {}", work.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?; // does not follow symlinks
        let unchanged = catalog.get(&entry.file_name()) == Some(&workdir::stamp(&meta));
        if !(meta.is_dir() || meta.file_type().is_file() && !unchanged) {
            continue;
        }
        if let Some(path) = entry
            .file_name()
            .to_str()
            .and_then(|n| OutputPath::parse(n).ok())
        {
            paths.push(path);
        }
    }
    paths.sort_by(|a, b| a.path().as_str().cmp(b.path().as_str()));
    Ok(OutputRule::Explicit { paths })
}

/// Pack the outputs of `work` selected by `rule` into `out` as a tar archive.
/// `executable` (relative to `work`, if it is there) is never an output of the default rule.
/// `job_uid` is the account the job ran as (`None`: the agent's own, nothing to guard against).
pub fn collect(
    work: &Path,
    rule: &OutputRule,
    catalog: &Catalog,
    executable: &str,
    job_uid: Option<u32>,
    out: impl Write,
) -> Result<Collected> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut p = Packer {
        b: builder,
        work,
        job_uid,
        got: Collected::default(),
    };
    match rule {
        OutputRule::Default => {
            let mut names: Vec<_> = fs::read_dir(work)
                .with_context(|| format!("cannot list {}", work.display()))?
                .collect::<std::io::Result<_>>()?;
            names.sort_by_key(fs::DirEntry::file_name);
            for entry in names {
                let meta = entry.metadata()?; // does not follow symlinks
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    p.warn(format!(
                        "output {:?} skipped: the name is not UTF-8",
                        entry.file_name()
                    ));
                    continue;
                };
                if !meta.file_type().is_file() {
                    if meta.file_type().is_symlink() {
                        p.warn(format!("output {name:?} skipped: it is a symlink"));
                    }
                    continue; // HTCondor's default rule skips subdirectories
                }
                if name == executable {
                    continue;
                }
                if catalog.get(&entry.file_name()) == Some(&workdir::stamp(&meta)) {
                    continue; // an input left unchanged
                }
                let path = match RelPath::file_name_only(&name) {
                    Ok(path) => path,
                    Err(e) => {
                        p.warn(format!("output {name:?} skipped: {e}"));
                        continue;
                    }
                };
                if let Some(size) = p.file(&name, &meta)? {
                    p.got.outputs.push(OutputEntry {
                        path,
                        kind: EntryKind::File,
                        size,
                    });
                }
            }
        }
        OutputRule::Explicit { paths } => {
            for given in paths {
                let rel = given.path().as_str();
                if let Err(e) = workdir::check_no_symlink(work, rel) {
                    if fs::symlink_metadata(work.join(rel)).is_err() {
                        p.got.missing.push(given.clone());
                    } else {
                        p.warn(format!("output {given:?} skipped: {e:#}"));
                    }
                    continue;
                }
                let meta = fs::symlink_metadata(work.join(rel))?;
                let (kind, size) = if meta.is_dir() {
                    (EntryKind::Dir, Some(p.tree(rel, &meta, 0)?))
                } else if meta.is_file() {
                    (EntryKind::File, p.file(rel, &meta)?)
                } else {
                    p.warn(format!("output {given:?} skipped: not a file or directory"));
                    continue;
                };
                if let Some(size) = size {
                    p.got.outputs.push(OutputEntry {
                        path: given.path().clone(),
                        kind,
                        size,
                    });
                }
            }
        }
    }
    p.b.into_inner()
        .context("cannot finish output.tar")?
        .flush()?;
    Ok(p.got)
}

/// The archive being written and what has been said about it.
struct Packer<'a, W: Write> {
    b: tar::Builder<W>,
    work: &'a Path,
    job_uid: Option<u32>,
    got: Collected,
}

impl<W: Write> Packer<'_, W> {
    fn warn(&mut self, warning: String) {
        self.got.warnings.push(warning);
    }

    /// Append one regular file; its size, or `None` when it was skipped.
    fn file(&mut self, rel: &str, meta: &fs::Metadata) -> Result<Option<u64>> {
        if let Some(uid) = self.job_uid {
            if meta.uid() != uid && meta.nlink() > 1 {
                self.warn(format!(
                    "output {rel:?} skipped: a hard link to a file of uid {} (the job ran as uid {uid})",
                    meta.uid()
                ));
                return Ok(None);
            }
        }
        let file = workdir::open_no_follow(self.work, rel)?;
        // Size from the open file, so the header matches what is read even if the path changed.
        let meta_now = file.metadata()?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta_now.len());
        h.set_mode(meta.permissions().mode() & 0o777);
        h.set_mtime(u64::try_from(meta_now.mtime()).unwrap_or(0));
        self.b
            .append_data(&mut h, rel, Exact::new(file, meta_now.len()))
            .with_context(|| format!("cannot add {rel} to output.tar"))?;
        Ok(Some(meta_now.len()))
    }

    /// Append a directory and everything below it; returns the bytes of file data.
    fn tree(&mut self, rel: &str, meta: &fs::Metadata, depth: usize) -> Result<u64> {
        let dir = self.work.join(rel);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(meta.permissions().mode() & 0o777);
        h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        self.b
            .append_data(&mut h, format!("{rel}/"), std::io::empty())?;
        if depth >= MAX_DEPTH {
            self.warn(format!(
                "output {rel:?}: contents skipped, deeper than {MAX_DEPTH} levels"
            ));
            return Ok(0);
        }
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        let mut total = 0u64;
        for entry in entries {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                self.warn(format!(
                    "output {rel}/{:?} skipped: the name is not UTF-8",
                    entry.file_name()
                ));
                continue;
            };
            let child = format!("{rel}/{name}");
            let meta = entry.metadata()?;
            if meta.is_dir() {
                total = total.saturating_add(self.tree(&child, &meta, depth + 1)?);
            } else if meta.is_file() {
                total = total.saturating_add(self.file(&child, &meta)?.unwrap_or(0));
            } else {
                self.warn(format!("output {child:?} skipped: not a file or directory"));
            }
        }
        Ok(total)
    }
}

/// A reader that yields exactly `len` bytes: a file that shrank meanwhile is padded with zeros
/// and one that grew is cut, so the tar header never lies.
struct Exact {
    inner: std::io::Take<File>,
    remaining: u64,
}

impl Exact {
    fn new(file: File, len: u64) -> Self {
        Exact {
            inner: file.take(len),
            remaining: len,
        }
    }
}

impl std::io::Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.remaining -= u64::try_from(n).unwrap_or(self.remaining);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        let mut ar = tar::Archive::new(tar_bytes);
        ar.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn hard_link_to_a_foreign_file_is_skipped() {
        let work = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // stands for /etc/shadow: owned by someone else than the job, linked into the work dir
        fs::write(outside.path().join("secret"), "x").unwrap();
        fs::hard_link(outside.path().join("secret"), work.path().join("linked")).unwrap();
        fs::write(work.path().join("plain"), "y").unwrap();
        let me = fs::metadata(work.path()).unwrap().uid();
        let mut out = Vec::new();
        let got = collect(
            work.path(),
            &OutputRule::Default,
            &Catalog::new(),
            "job",
            Some(me + 1),
            &mut out,
        )
        .unwrap();
        // `plain` has one link, so its owner does not matter: the job may have been given it
        assert_eq!(names(&out), ["plain"]);
        assert!(
            got.warnings[0].contains("\"linked\" skipped: a hard link"),
            "{:?}",
            got.warnings
        );
        // the job's own hard links are fine
        let mut out = Vec::new();
        collect(
            work.path(),
            &OutputRule::Default,
            &Catalog::new(),
            "job",
            Some(me),
            &mut out,
        )
        .unwrap();
        assert_eq!(names(&out), ["linked", "plain"]);
    }

    #[test]
    fn deep_trees_are_cut() {
        let work = tempfile::tempdir().unwrap();
        let deep: String = (0..MAX_DEPTH + 5).map(|_| "d/").collect();
        fs::create_dir_all(work.path().join(&deep)).unwrap();
        let rule = OutputRule::Explicit {
            paths: vec!["d".parse().unwrap()],
        };
        let mut out = Vec::new();
        let got = collect(work.path(), &rule, &Catalog::new(), "job", None, &mut out).unwrap();
        assert_eq!(names(&out).len(), MAX_DEPTH + 1);
        assert!(
            got.warnings[0].contains("deeper than"),
            "{:?}",
            got.warnings
        );
    }

    /// After a checkpoint exit everything the job may have written comes back: new and
    /// changed files, directories; not unchanged inputs nor symlinks.
    #[test]
    fn the_checkpoint_rule_takes_what_the_job_wrote() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        fs::write(w.join("input.txt"), "in").unwrap();
        fs::write(w.join("changed.txt"), "in").unwrap();
        let catalog = workdir::catalog(w).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(w.join("changed.txt"), "more").unwrap();
        fs::write(w.join("ckpt.dat"), "1").unwrap();
        fs::create_dir(w.join("state")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", w.join("link")).unwrap();
        let OutputRule::Explicit { paths } = checkpoint_rule(w, &catalog).unwrap() else {
            panic!("not explicit");
        };
        let paths: Vec<String> = paths.iter().map(ToString::to_string).collect();
        assert_eq!(paths, ["changed.txt", "ckpt.dat", "state"]);
    }
}
