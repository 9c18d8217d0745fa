//! Placing a job's outputs where HTCondor would: into the original `Iwd`, or where
//! `TransferOutputRemaps` says, from an untrusted `output.tar`.
//!
//! # Security
//! The archive comes from the guest. Entry paths are walked component by component: absolute
//! paths, `..`, and empty or non-UTF-8 names are refused; only regular files and directories
//! are written (links and devices are skipped). Directories are created one at a time and an
//! existing path component that is not a real directory (a symlink, say) stops the entry.
//! Files are written to a temporary name in the destination directory and renamed over the
//! target, which replaces a symlink there instead of writing through it. A re-run writes the
//! same files again. Races with a concurrent writer in the user's directory are out of scope.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// Where outputs go.
#[derive(Debug, Clone)]
pub struct OutputMap<'a> {
    /// The original job's `Iwd`.
    pub iwd: &'a Path,
    /// `TransferOutputRemaps`: name -> target.
    pub remaps: &'a [(String, String)],
    /// `TransferOutput` entries, if explicit.
    pub explicit: Option<&'a [String]>,
}

/// The result of placing outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Entries that could not be placed, with the reason.
    pub problems: Vec<String>,
}

impl OutputMap<'_> {
    /// The destination of archive entry `path` (already validated as relative and clean),
    /// and the directory it must stay inside.
    fn destination(&self, path: &str) -> (PathBuf, PathBuf) {
        // Which named output this entry belongs to: itself, or a directory above it.
        let entry = self
            .explicit
            .and_then(|list| {
                list.iter()
                    .map(|e| e.trim_end_matches('/'))
                    .filter(|e| path == *e || path.starts_with(&format!("{e}/")))
                    .max_by_key(|e| e.len())
            })
            .unwrap_or_else(|| path.split('/').next().unwrap_or(path));
        let rest = path
            .get(entry.len()..)
            .unwrap_or("")
            .trim_start_matches('/');
        let base = entry.rsplit('/').next().unwrap_or(entry);
        let remap = self
            .remaps
            .iter()
            .find(|(from, _)| from == entry)
            .or_else(|| self.remaps.iter().find(|(from, _)| from == base));
        let (root, target) = match remap {
            Some((_, to)) if Path::new(to).is_absolute() => {
                let to = PathBuf::from(to);
                let root = to.parent().map_or_else(|| to.clone(), Path::to_path_buf);
                (root, to)
            }
            Some((_, to)) => (self.iwd.to_path_buf(), self.iwd.join(to)),
            // HTCondor places a named output by its base name.
            None => (self.iwd.to_path_buf(), self.iwd.join(base)),
        };
        let dest = if rest.is_empty() {
            target
        } else {
            target.join(rest)
        };
        (dest, root)
    }
}

/// Check an archive path: relative, no `..`, no empty or `.` parts; returns it with `/`.
pub fn clean_entry_path(path: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => {
                let n = n
                    .to_str()
                    .ok_or_else(|| format!("non-UTF-8 name {}", path.display()))?;
                parts.push(n.to_owned());
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!("unsafe path {}", path.display()))
            }
        }
    }
    if parts.is_empty() {
        return Err("empty path".to_owned());
    }
    Ok(parts.join("/"))
}

/// Unpack `archive` by the map. Every problem is recorded; placement goes on with the rest.
pub fn unpack_outputs(archive: impl Read, map: &OutputMap<'_>) -> Placement {
    let mut placement = Placement::default();
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, archive));
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            placement
                .problems
                .push(format!("output.tar is unreadable: {e}"));
            return placement;
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                placement
                    .problems
                    .push(format!("output.tar is damaged: {e}"));
                break;
            }
        };
        let raw = match entry.path() {
            Ok(p) => p.into_owned(),
            Err(e) => {
                placement
                    .problems
                    .push(format!("bad entry name in output.tar: {e}"));
                continue;
            }
        };
        let path = match clean_entry_path(&raw) {
            Ok(p) => p,
            Err(e) => {
                placement
                    .problems
                    .push(format!("output.tar entry skipped: {e}"));
                continue;
            }
        };
        let (dest, root) = map.destination(&path);
        let kind = entry.header().entry_type();
        let result = if kind.is_dir() {
            ensure_dirs(&root, &dest)
        } else if kind.is_file() {
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            dest.parent()
                .map_or(Ok(()), |parent| ensure_dirs(&root, parent))
                .and_then(|()| write_atomic(&dest, &mut entry, mode).map(|_| ()))
                .map(|()| placement.files.push(dest.clone()))
        } else {
            Err(io::Error::other("not a regular file or directory; skipped"))
        };
        if let Err(e) = result {
            placement
                .problems
                .push(format!("output {path} -> {}: {e}", dest.display()));
        }
    }
    placement
}

/// Create `dir` and its missing parents below `root`, refusing any existing component that is
/// not a real directory (no symlink is followed).
pub fn ensure_dirs(root: &Path, dir: &Path) -> io::Result<()> {
    let rel = dir.strip_prefix(root).map_err(|_| {
        io::Error::other(format!("{} is outside {}", dir.display(), root.display()))
    })?;
    let root_meta = fs::metadata(root)?;
    if !root_meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let mut current = root.to_path_buf();
    for part in rel.components() {
        let Component::Normal(name) = part else {
            return Err(io::Error::other("unsafe path component"));
        };
        current.push(name);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} exists and is not a directory (symlinks are not followed)",
                    current.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&current)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write `src` to `dest` atomically: a temporary file beside it, then renamed over
/// `dest` (a symlink at `dest` is replaced, not followed).
///
/// # Errors
/// I/O errors; the temporary file is removed on failure.
pub fn write_atomic(dest: &Path, src: &mut dyn Read, mode: u32) -> io::Result<u64> {
    let parent = dest.parent().unwrap_or_else(|| Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::other("destination has no file name"))?;
    let tmp = parent.join(format!(
        ".{}.vm-capsule-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            // create_new is O_CREAT|O_EXCL, which fails on an existing path, symlinks included.
            .open(&tmp)?;
        // Large copies in large writes (io::copy moves 8 KiB at a time here).
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let got = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            file.write_all(buf.get(..got).unwrap_or(&[]))?;
            n += u64::try_from(got).unwrap_or(0);
        }
        file.flush()?;
        // No fsync, as HTCondor's own file transfer does none: the rename is atomic, and a
        // finalize re-run rewrites the same files.
        fs::rename(&tmp, dest)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Write the raw name so hostile names reach the unpacker unchanged.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn hostile_names_do_not_escape() {
        let dir = tempfile::tempdir().unwrap();
        let iwd = dir.path().join("iwd");
        fs::create_dir(&iwd).unwrap();
        let hostile = [
            "../escape",
            "/tmp/abs-escape",
            "a/../../escape2",
            "./../escape3",
            "//////..",
            "",
        ];
        let entries: Vec<(&str, &[u8])> = hostile.iter().map(|n| (*n, &b"x"[..])).collect();
        let map = OutputMap {
            iwd: &iwd,
            remaps: &[],
            explicit: None,
        };
        let placed = unpack_outputs(tar_with(&entries).as_slice(), &map);
        assert!(placed.files.is_empty(), "{placed:?}");
        assert_eq!(placed.problems.len(), hostile.len(), "{placed:?}");
        assert!(!dir.path().join("escape").exists());
        assert!(!Path::new("/tmp/abs-escape").exists());
    }

    #[test]
    fn symlinked_directories_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let iwd = dir.path().join("iwd");
        let outside = dir.path().join("outside");
        fs::create_dir(&iwd).unwrap();
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, iwd.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), iwd.join("link.txt")).unwrap();
        let map = OutputMap {
            iwd: &iwd,
            remaps: &[],
            explicit: None,
        };
        let placed = unpack_outputs(
            tar_with(&[("out/file.txt", b"x"), ("link.txt", b"new")]).as_slice(),
            &map,
        );
        assert!(!outside.join("file.txt").exists());
        assert!(!outside.join("victim").exists());
        // The symlink itself was replaced by a regular file.
        let meta = fs::symlink_metadata(iwd.join("link.txt")).unwrap();
        assert!(meta.is_file());
        assert_eq!(placed.problems.len(), 1, "{placed:?}");
    }

    #[test]
    fn remaps_and_named_paths() {
        let dir = tempfile::tempdir().unwrap();
        let iwd = dir.path().join("iwd");
        fs::create_dir(&iwd).unwrap();
        let abs = dir.path().join("abs");
        fs::create_dir(&abs).unwrap();
        let remaps = vec![
            ("a.out".to_owned(), "results/a.txt".to_owned()),
            ("b.out".to_owned(), abs.join("b.txt").display().to_string()),
        ];
        let explicit = vec![
            "a.out".to_owned(),
            "b.out".to_owned(),
            "sub/c.txt".to_owned(),
            "outdir".to_owned(),
        ];
        let map = OutputMap {
            iwd: &iwd,
            remaps: &remaps,
            explicit: Some(&explicit),
        };
        let placed = unpack_outputs(
            tar_with(&[
                ("a.out", b"a"),
                ("b.out", b"b"),
                ("sub/c.txt", b"c"),
                ("outdir/x/y.txt", b"y"),
            ])
            .as_slice(),
            &map,
        );
        assert!(placed.problems.is_empty(), "{placed:?}");
        assert_eq!(fs::read(iwd.join("results/a.txt")).unwrap(), b"a");
        assert_eq!(fs::read(abs.join("b.txt")).unwrap(), b"b");
        assert_eq!(fs::read(iwd.join("c.txt")).unwrap(), b"c");
        assert_eq!(fs::read(iwd.join("outdir/x/y.txt")).unwrap(), b"y");
    }
}
