//! Walking the job's inputs as `input.tar` holds them: links followed (HTCondor's transfer
//! follows them), directories in name order, and bounded: a directory that contains itself
//! through a link is the job's mistake, named; the depth and the number of entries are capped,
//! so two links to `.` cannot spin the hook until its watchdog.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::input_tar::InputTarError;

/// Most entries (files and directories, links followed) the inputs may hold.
pub const MAX_INPUT_ENTRIES: u64 = 1_000_000;
/// Deepest directory nesting of an input.
pub const MAX_INPUT_DEPTH: usize = 64;

/// The directories above an entry, as `(device, inode)`, outermost first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ancestors(Option<Rc<(u64, u64, PathBuf, Ancestors)>>);

impl Ancestors {
    /// The path of the ancestor that is `meta`'s directory, if it is one (a loop).
    fn find(&self, meta: &fs::Metadata) -> Option<&Path> {
        let mut here = self;
        while let Some(node) = &here.0 {
            if node.0 == meta.dev() && node.1 == meta.ino() {
                return Some(&node.2);
            }
            here = &node.3;
        }
        None
    }

    /// These ancestors and directory `path` below them; an error when it is one of them.
    pub(crate) fn enter(
        &self,
        path: &Path,
        meta: &fs::Metadata,
    ) -> Result<Ancestors, InputTarError> {
        if let Some(ancestor) = self.find(meta) {
            return Err(InputTarError::Loop {
                path: path.to_owned(),
                ancestor: ancestor.to_owned(),
            });
        }
        Ok(Ancestors(Some(Rc::new((
            meta.dev(),
            meta.ino(),
            path.to_owned(),
            self.clone(),
        )))))
    }
}

/// Counts entries against a limit.
#[derive(Debug)]
pub(crate) struct EntryBudget {
    left: u64,
}

impl EntryBudget {
    /// A budget of `limit` entries.
    pub(crate) fn new(limit: u64) -> EntryBudget {
        EntryBudget { left: limit }
    }

    /// Take one entry for `path`.
    pub(crate) fn take(&mut self, path: &Path, limit: u64) -> Result<(), InputTarError> {
        self.left = self
            .left
            .checked_sub(1)
            .ok_or_else(|| InputTarError::TooManyEntries {
                path: path.to_owned(),
                limit,
            })?;
        Ok(())
    }
}

/// Bytes the inputs `paths` take in a tar archive: a header per entry (long names estimated
/// generously), data rounded to 512.
///
/// # Errors
/// [`InputTarError`]: an entry that cannot be read, a directory loop, too deep, too many.
pub(crate) fn tar_bytes<'a>(
    paths: impl Iterator<Item = &'a Path>,
    limit: u64,
) -> Result<u64, InputTarError> {
    let mut budget = EntryBudget::new(limit);
    let mut total = 1024u64;
    for path in paths {
        let size = size_of(path, &Ancestors::default(), 0, &mut budget, limit)?;
        total = total.saturating_add(size);
    }
    Ok(total)
}

fn size_of(
    path: &Path,
    ancestors: &Ancestors,
    depth: usize,
    budget: &mut EntryBudget,
    limit: u64,
) -> Result<u64, InputTarError> {
    let source = |e| InputTarError::Source {
        path: path.to_owned(),
        source: e,
    };
    budget.take(path, limit)?;
    let meta = fs::metadata(path).map_err(source)?;
    let header = 1536u64;
    if !meta.is_dir() {
        return Ok(header.saturating_add(meta.len().div_ceil(512).saturating_mul(512)));
    }
    if depth > MAX_INPUT_DEPTH {
        return Err(source(std::io::Error::other(format!(
            "nested more than {MAX_INPUT_DEPTH} directories deep"
        ))));
    }
    let inside = ancestors.enter(path, &meta)?;
    let mut total = header;
    for entry in fs::read_dir(path).map_err(source)? {
        let entry = entry.map_err(source)?;
        let size = size_of(&entry.path(), &inside, depth + 1, budget, limit)?;
        total = total.saturating_add(size);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_directory_with_links_to_itself_is_a_loop_named() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("f"), b"x").unwrap();
        symlink(".", dir.join("a")).unwrap();
        symlink(".", dir.join("b")).unwrap();
        let started = std::time::Instant::now();
        match tar_bytes(std::iter::once(dir.as_path()), MAX_INPUT_ENTRIES) {
            Err(InputTarError::Loop { path, ancestor }) => {
                assert_eq!(ancestor, dir);
                assert!(path == dir.join("a") || path == dir.join("b"), "{path:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed().as_secs() < 5);
        // A link to a directory elsewhere is followed, as HTCondor follows it.
        let other = d.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("g"), vec![1u8; 600]).unwrap();
        let tree = d.path().join("tree");
        fs::create_dir(&tree).unwrap();
        symlink(&other, tree.join("x")).unwrap();
        symlink(&other, tree.join("y")).unwrap();
        let bytes = tar_bytes(std::iter::once(tree.as_path()), MAX_INPUT_ENTRIES).unwrap();
        assert_eq!(bytes, 1024 + 1536 * 5 + 1024 * 2);
    }

    #[test]
    fn links_that_double_at_every_level_meet_the_entry_limit() {
        let d = tempfile::tempdir().unwrap();
        // level0/{a,b} -> level1, level1/{a,b} -> level2 ...: 2^30 paths, no loop.
        for i in 0..30 {
            fs::create_dir(d.path().join(format!("level{i}"))).unwrap();
        }
        for i in 0..29 {
            for l in ["a", "b"] {
                symlink(
                    d.path().join(format!("level{}", i + 1)),
                    d.path().join(format!("level{i}/{l}")),
                )
                .unwrap();
            }
        }
        let top = d.path().join("level0");
        match tar_bytes(std::iter::once(top.as_path()), 10_000) {
            Err(e @ InputTarError::TooManyEntries { .. }) => {
                assert!(e.to_string().contains("more than 10000"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
