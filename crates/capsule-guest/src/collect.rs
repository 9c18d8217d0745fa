//! Select the job's outputs as HTCondor would and pack them into `output.tar`.
//!
//! Nothing the job left behind is trusted: symlinks are never followed (a job could point one at
//! a file only root may read) and only regular files and directories are packed.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use capsule_manifest::{EntryKind, OutputEntry, OutputRule};

use crate::workdir::{self, Catalog};

/// What went into `output.tar`.
#[derive(Debug, Default)]
pub struct Collected {
    /// Top-level entries packed.
    pub outputs: Vec<OutputEntry>,
    /// Explicit entries that did not exist.
    pub missing: Vec<String>,
    /// Things skipped, for the result.
    pub warnings: Vec<String>,
}

/// Pack the outputs of `work` selected by `rule` into `out` as a tar archive.
/// `executable` (relative to `work`, if it is there) is never an output of the default rule.
pub fn collect(
    work: &Path,
    rule: &OutputRule,
    catalog: &Catalog,
    executable: &str,
    out: impl Write,
) -> Result<Collected> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut got = Collected::default();
    match rule {
        OutputRule::Default => {
            let mut names: Vec<_> = fs::read_dir(work)
                .with_context(|| format!("cannot list {}", work.display()))?
                .collect::<std::io::Result<_>>()?;
            names.sort_by_key(fs::DirEntry::file_name);
            for entry in names {
                let meta = entry.metadata()?; // does not follow symlinks
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    got.warnings.push(format!(
                        "output {:?} skipped: the name is not UTF-8",
                        entry.file_name()
                    ));
                    continue;
                };
                if !meta.file_type().is_file() {
                    if meta.file_type().is_symlink() {
                        got.warnings
                            .push(format!("output {name:?} skipped: it is a symlink"));
                    }
                    continue; // HTCondor's default rule skips subdirectories
                }
                if name == executable {
                    continue;
                }
                if catalog.get(&entry.file_name()) == Some(&workdir::stamp(&meta)) {
                    continue; // an input left unchanged
                }
                let size = append_file(&mut b, work, &name, &meta)?;
                got.outputs.push(OutputEntry {
                    path: name,
                    kind: EntryKind::File,
                    size,
                });
            }
        }
        OutputRule::Explicit { paths } => {
            for given in paths {
                let rel = given.trim_end_matches('/');
                if let Err(e) = workdir::check_no_symlink(work, rel) {
                    if fs::symlink_metadata(work.join(rel)).is_err() {
                        got.missing.push(given.clone());
                    } else {
                        got.warnings
                            .push(format!("output {given:?} skipped: {e:#}"));
                    }
                    continue;
                }
                let meta = fs::symlink_metadata(work.join(rel))?;
                if meta.is_dir() {
                    let size = append_tree(&mut b, work, rel, &mut got.warnings)?;
                    got.outputs.push(OutputEntry {
                        path: rel.to_owned(),
                        kind: EntryKind::Dir,
                        size,
                    });
                } else if meta.is_file() {
                    let size = append_file(&mut b, work, rel, &meta)?;
                    got.outputs.push(OutputEntry {
                        path: rel.to_owned(),
                        kind: EntryKind::File,
                        size,
                    });
                } else {
                    got.warnings
                        .push(format!("output {given:?} skipped: not a file or directory"));
                }
            }
        }
    }
    b.into_inner()
        .context("cannot finish output.tar")?
        .flush()?;
    Ok(got)
}

/// Append one regular file; returns its size.
fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    work: &Path,
    rel: &str,
    meta: &fs::Metadata,
) -> Result<u64> {
    let file = workdir::open_no_follow(work, rel)?;
    // Size from the open file, so the header matches what is read even if the path changed.
    let meta_now = file.metadata()?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(meta_now.len());
    h.set_mode(meta.permissions().mode() & 0o777);
    h.set_mtime(u64::try_from(meta_now.mtime()).unwrap_or(0));
    b.append_data(&mut h, rel, Exact::new(file, meta_now.len()))
        .with_context(|| format!("cannot add {rel} to output.tar"))?;
    Ok(meta_now.len())
}

/// Append a directory and everything below it; returns the bytes of file data.
fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    work: &Path,
    rel: &str,
    warnings: &mut Vec<String>,
) -> Result<u64> {
    let dir = work.join(rel);
    let meta = fs::symlink_metadata(&dir)?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(meta.permissions().mode() & 0o777);
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    b.append_data(&mut h, format!("{rel}/"), std::io::empty())?;
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    let mut total = 0u64;
    for entry in entries {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            warnings.push(format!(
                "output {rel}/{:?} skipped: the name is not UTF-8",
                entry.file_name()
            ));
            continue;
        };
        let child = format!("{rel}/{name}");
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total = total.saturating_add(append_tree(b, work, &child, warnings)?);
        } else if meta.is_file() {
            total = total.saturating_add(append_file(b, work, &child, &meta)?);
        } else {
            warnings.push(format!("output {child:?} skipped: not a file or directory"));
        }
    }
    Ok(total)
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
