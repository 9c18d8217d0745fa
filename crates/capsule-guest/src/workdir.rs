//! The job's work dir: unpack `input.tar` into it, hand it to the job's user, and remember what
//! the top level looked like so the default output rule can tell new and changed files.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{lchown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use capsule_manifest::{EntryKind, InputEntry, RelPath};

/// What a top-level file looked like after unpacking: (mtime seconds, mtime nanoseconds, size).
pub type Catalog = BTreeMap<std::ffi::OsString, (i64, i64, u64)>;

/// Unpack `archive` into the empty directory `work`. Only regular files and directories are
/// accepted; every path is checked to stay inside `work`; setuid/setgid bits are dropped and
/// owners are not taken from the archive.
pub fn unpack(archive: impl Read, work: &Path) -> Result<()> {
    let mut ar = tar::Archive::new(archive);
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in ar.entries().context("cannot read input.tar")? {
        let mut entry = entry.context("cannot read an input.tar entry")?;
        // pax global headers (Python's tarfile, `git archive`) carry no file and may be unnamed
        if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let rel = match RelPath::from_archive_name(&raw) {
            Ok(Some(rel)) => rel,
            Ok(None) => continue, // the archive's own root
            Err(reason) => bail!("input.tar entry {name:?} is refused: {reason}"),
        };
        let dest = work.join(rel);
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o1777;
        let mtime = header.mtime().unwrap_or(0);
        match header.entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&dest)
                    .with_context(|| format!("cannot create {}", dest.display()))?;
                dir_modes.push((dest, mode));
            }
            // pax global headers (Python's tarfile, `git archive`) carry no file
            tar::EntryType::XGlobalHeader => {}
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                if let Some(parent) = dest.parent() {
                    // Safe to create: nothing but files and directories exists under `work`.
                    fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&dest)
                    .with_context(|| format!("cannot create {} (listed twice in input.tar?)", dest.display()))?;
                io::copy(&mut entry, &mut file)
                    .with_context(|| format!("cannot unpack {}", dest.display()))?;
                // umask may have cut bits off at create time
                file.set_permissions(fs::Permissions::from_mode(mode))?;
                file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))?;
            }
            other => bail!(
                "input.tar entry {name:?} is a {other:?}; only regular files and directories are supported"
            ),
        }
    }
    // Directory modes last, deepest first, so a read-only directory cannot block its children.
    dir_modes.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (dir, mode) in dir_modes {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700))
            .with_context(|| format!("cannot chmod {}", dir.display()))?;
    }
    Ok(())
}

/// Check that every entry the manifest lists was unpacked with the right kind.
pub fn check_inputs(work: &Path, inputs: &[InputEntry]) -> Result<()> {
    for input in inputs {
        let path = work.join(&input.path);
        let meta = fs::symlink_metadata(&path);
        let ok = match (&meta, input.kind) {
            (Ok(m), EntryKind::File) => m.file_type().is_file(),
            (Ok(m), EntryKind::Dir) => m.file_type().is_dir(),
            (Err(_), _) => false,
        };
        if !ok {
            bail!(
                "input {:?} ({:?}) listed in capsule.json is not in input.tar",
                input.path,
                input.kind
            );
        }
    }
    Ok(())
}

/// Give the whole tree under `work` (and `work` itself) to `uid:gid`, never following links.
pub fn chown_tree(work: &Path, uid: u32, gid: u32) -> Result<()> {
    lchown(work, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {}", work.display()))?;
    for entry in fs::read_dir(work).with_context(|| format!("cannot list {}", work.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            chown_tree(&path, uid, gid)?;
        } else {
            lchown(&path, Some(uid), Some(gid))
                .with_context(|| format!("cannot chown {}", path.display()))?;
        }
    }
    Ok(())
}

/// Record mtime and size of every regular file in the top level of `work`.
pub fn catalog(work: &Path) -> Result<Catalog> {
    let mut cat = Catalog::new();
    for entry in fs::read_dir(work).with_context(|| format!("cannot list {}", work.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?; // DirEntry::metadata does not follow symlinks
        if meta.file_type().is_file() {
            cat.insert(entry.file_name(), stamp(&meta));
        }
    }
    Ok(cat)
}

/// The names of every top-level entry of `work`, of any kind: what came in from the data
/// disk, for [`removed_since`].
pub fn top_names(work: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(work).with_context(|| format!("cannot list {}", work.display()))? {
        names.push(entry?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Which of `before` (from [`top_names`]) are gone from `work`, as plain names, at most
/// `limit` of them; and how many more were gone. Whatever now has the name (a link, a new
/// file) counts as there, and so does a name that cannot be looked at.
pub fn removed_since(work: &Path, before: &[OsString], limit: usize) -> (Vec<RelPath>, usize) {
    let mut removed = Vec::new();
    let mut more = 0;
    for name in before {
        let gone = matches!(
            fs::symlink_metadata(work.join(name)),
            Err(e) if e.kind() == io::ErrorKind::NotFound
        );
        let Some(name) = name.to_str().and_then(|n| RelPath::file_name_only(n).ok()) else {
            continue;
        };
        if !gone {
            continue;
        }
        if removed.len() < limit {
            removed.push(name);
        } else {
            more += 1;
        }
    }
    (removed, more)
}

/// The parts of a file's metadata HTCondor's `FindChangedFiles` compares.
pub fn stamp(meta: &fs::Metadata) -> (i64, i64, u64) {
    (meta.mtime(), meta.mtime_nsec(), meta.size())
}

/// Open `rel` under `work` for reading without following a symlink anywhere on the way.
pub fn open_no_follow(work: &Path, rel: &str) -> Result<File> {
    let path = work.join(rel);
    check_no_symlink(work, rel)?;
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Fail when any component of `rel` below `work` is a symlink.
pub fn check_no_symlink(work: &Path, rel: &str) -> Result<()> {
    let mut cur = work.to_path_buf();
    for comp in rel.trim_end_matches('/').split('/') {
        cur.push(comp);
        let meta =
            fs::symlink_metadata(&cur).with_context(|| format!("cannot stat {}", cur.display()))?;
        if meta.file_type().is_symlink() {
            bail!(
                "{} is a symlink; capsule-init does not follow symlinks",
                cur.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(u64::try_from(data.len()).unwrap());
            h.set_mode(0o4755);
            h.set_mtime(1_000_000);
            // set_path refuses `..`, so write the raw name bytes like a hostile archive would
            let field = &mut h.as_old_mut().name;
            field[..name.len()].copy_from_slice(name.as_bytes());
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacks_files_and_dirs_without_setuid() {
        let work = tempfile::tempdir().unwrap();
        let ar = tar_with(&[
            ("./", tar::EntryType::Directory, b""),
            ("d/", tar::EntryType::Directory, b""),
            ("d/e/f", tar::EntryType::Regular, b"hello"),
            ("job.sh", tar::EntryType::Regular, b"#!/bin/sh\n"),
        ]);
        unpack(&ar[..], work.path()).unwrap();
        assert_eq!(fs::read(work.path().join("d/e/f")).unwrap(), b"hello");
        let meta = fs::metadata(work.path().join("job.sh")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!(meta.mtime(), 1_000_000);
        check_inputs(
            work.path(),
            &[InputEntry {
                path: "d".parse().unwrap(),
                kind: EntryKind::Dir,
            }],
        )
        .unwrap();
        assert!(check_inputs(
            work.path(),
            &[InputEntry {
                path: "job.sh".parse().unwrap(),
                kind: EntryKind::Dir
            }]
        )
        .is_err());
        let cat = catalog(work.path()).unwrap();
        assert_eq!(cat.len(), 1);
    }

    #[test]
    fn pax_and_gnu_archives_from_other_tools() {
        let work = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        // a pax global header, as Python's tarfile and `git archive` write
        let mut g = tar::Header::new_ustar();
        g.set_entry_type(tar::EntryType::XGlobalHeader);
        let record = b"19 comment=capsule\n";
        g.set_size(u64::try_from(record.len()).unwrap());
        g.set_cksum();
        b.append(&g, &record[..]).unwrap();
        // a name over 100 bytes (GNU long-name entry)
        let long = format!("{}/f.txt", "d".repeat(120));
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hi"[..]).unwrap();
        let ar = b.into_inner().unwrap();
        unpack(&ar[..], work.path()).unwrap();
        assert_eq!(fs::read(work.path().join(&long)).unwrap(), b"hi");
        // and what GNU tar itself writes in pax format
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("sub")).unwrap();
        fs::write(src.path().join("sub/x"), "gnu").unwrap();
        let tarball = src.path().join("t.tar");
        let ok = std::process::Command::new("tar")
            .arg("--format=pax")
            .arg("-C")
            .arg(src.path())
            .arg("-cf")
            .arg(&tarball)
            .arg("sub")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let work = tempfile::tempdir().unwrap();
        unpack(fs::File::open(&tarball).unwrap(), work.path()).unwrap();
        assert_eq!(fs::read(work.path().join("sub/x")).unwrap(), b"gnu");
    }

    #[test]
    fn hostile_entries_are_refused() {
        for (name, kind) in [
            ("../x", tar::EntryType::Regular),
            ("/tmp/x", tar::EntryType::Regular),
            ("a/../../x", tar::EntryType::Regular),
            ("a//b", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
            ("dev", tar::EntryType::Char),
        ] {
            let outer = tempfile::tempdir().unwrap();
            let work = outer.path().join("work");
            fs::create_dir(&work).unwrap();
            let ar = tar_with(&[(name, kind, b"")]);
            assert!(unpack(&ar[..], &work).is_err(), "{name} accepted");
            assert_eq!(
                fs::read_dir(outer.path()).unwrap().count(),
                1,
                "{name} escaped"
            );
        }
    }

    /// What the job removed of what came in is named; what it replaced, even by a link, is
    /// not; the list is bounded.
    #[test]
    fn the_entries_the_job_removed_are_named() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        for f in ["a", "b", "c", "d"] {
            fs::write(w.join(f), f).unwrap();
        }
        fs::create_dir(w.join("dir")).unwrap();
        let before = top_names(w).unwrap();
        assert_eq!(before, ["a", "b", "c", "d", "dir"]);
        fs::remove_file(w.join("a")).unwrap();
        fs::remove_file(w.join("b")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", w.join("b")).unwrap();
        fs::remove_file(w.join("c")).unwrap();
        fs::remove_dir(w.join("dir")).unwrap();
        fs::write(w.join("new"), "n").unwrap();
        let (removed, more) = removed_since(w, &before, 10);
        let names: Vec<&str> = removed.iter().map(RelPath::as_str).collect();
        assert_eq!((names, more), (vec!["a", "c", "dir"], 0));
        let (removed, more) = removed_since(w, &before, 2);
        assert_eq!((removed.len(), more), (2, 1));
    }

    #[test]
    fn symlinks_are_not_followed() {
        let work = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", work.path().join("l")).unwrap();
        assert!(open_no_follow(work.path(), "l/passwd").is_err());
        assert!(open_no_follow(work.path(), "l").is_err());
    }
}
