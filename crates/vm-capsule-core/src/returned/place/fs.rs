//! Writing outputs below a root directory without following links: directories are walked
//! and created with `openat`/`mkdirat` (`O_NOFOLLOW`), files are written to a temporary name
//! beside the target and renamed over it.
//!
//! The open directories of the last member are kept (a stack of descriptors), so a member
//! costs only the components it does not share with the previous one: an archive of nested
//! directories is placed in linear time (walking from the root for each member was cubic). Temporary names are derived
//! from the job id and the target name, so a re-run after `kill -9` finds and replaces the
//! leftovers of the run it repeats instead of leaving them in the user's directory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use capsule_manifest::RelPath;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::temp_record::TempRecord;

/// Deepest directory nesting placed (each level holds one open descriptor while in use).
pub const MAX_DEPTH: usize = 256;
/// Size of the copy buffer.
const COPY_BUF: usize = 1 << 20;

/// Why one member could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// A path component exists and is not a real directory.
    #[error("{0} exists and is not a directory (links are not followed)")]
    NotADirectory(PathBuf),
    /// The archive ended inside the member's data.
    #[error("the archive ends after {got} of its {size} bytes; the file was not placed")]
    Truncated {
        /// Bytes read.
        got: u64,
        /// Bytes promised.
        size: u64,
    },
    /// Deeper than [`MAX_DEPTH`].
    #[error("it is nested more than {MAX_DEPTH} directories deep")]
    TooDeep,
    /// Any other I/O error, with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        #[source]
        source: io::Error,
    },
}

impl PlaceError {
    fn io(path: &Path, source: impl Into<io::Error>) -> PlaceError {
        PlaceError::Io {
            path: path.to_owned(),
            source: source.into(),
        }
    }

    /// Whether the destination file system is full (a reason to stop placing).
    pub fn is_storage_full(&self) -> bool {
        matches!(self, PlaceError::Io { source, .. } if capsule_disk::is_storage_full(source))
    }
}

/// Places files and directories below root directories, one member at a time.
#[derive(Debug)]
pub struct Placer {
    /// Distinguishes this job's temporary files (`cluster.proc`).
    tag: String,
    root: Option<(PathBuf, OwnedFd)>,
    /// Open directories below the root, outermost first.
    chain: Vec<(String, OwnedFd)>,
    buf: Vec<u8>,
    /// Where the temporary file being written is recorded (for the hook's watchdog).
    temps: TempRecord,
}

impl Placer {
    /// A placer whose temporary names carry `tag` (the job id).
    pub fn new(tag: &str) -> Placer {
        Placer {
            tag: tag.to_owned(),
            root: None,
            chain: Vec::new(),
            buf: Vec::new(),
            temps: TempRecord::new(),
        }
    }

    /// Record each temporary file in `temps` while it is written.
    pub fn recording_in(mut self, temps: &TempRecord) -> Placer {
        self.temps = temps.clone();
        self
    }

    /// Make directory `below` (and missing parents) under `root`.
    ///
    /// # Errors
    /// [`PlaceError`]; directories this call created are removed again.
    pub fn make_dir(&mut self, root: &Path, below: &RelPath) -> Result<(), PlaceError> {
        let mut created = Vec::new();
        let result = self
            .descend(root, below.components(), &mut created)
            .map(|_| ());
        if result.is_err() {
            self.undo(root, &created);
        }
        result
    }

    /// Write exactly `size` bytes from `data` as file `below` under `root` with `mode`.
    ///
    /// # Errors
    /// [`PlaceError`]; nothing of the member stays (no temporary file, no directory made
    /// for it), and a short archive is [`PlaceError::Truncated`].
    pub fn write_file(
        &mut self,
        root: &Path,
        below: &RelPath,
        data: &mut dyn Read,
        size: u64,
        mode: u32,
    ) -> Result<(), PlaceError> {
        let mut created = Vec::new();
        let name = below.file_name().to_owned();
        let parents = below.parent();
        let mut buf = std::mem::take(&mut self.buf);
        let tmp = temp_name(&self.tag, &name);
        let temps = self.temps.clone();
        let result = (|| {
            let dir = match &parents {
                Some(p) => self.descend(root, p.components(), &mut created)?,
                None => self.descend(root, std::iter::empty(), &mut created)?,
            };
            let dir_path = dir_path(root, parents.as_ref());
            write_beside(
                &temps, dir, &dir_path, &name, &tmp, data, size, mode, &mut buf,
            )
        })();
        self.buf = buf;
        if result.is_err() {
            self.undo(root, &created);
        }
        result
    }

    /// Open (or create) the directories `comps` below `root`, reusing what is open already;
    /// returns the innermost. Names of directories created are pushed to `created`.
    fn descend<'a>(
        &mut self,
        root: &Path,
        comps: impl Iterator<Item = &'a str>,
        created: &mut Vec<usize>,
    ) -> Result<&OwnedFd, PlaceError> {
        if self.root.as_ref().is_none_or(|(p, _)| p != root) {
            self.chain.clear();
            let fd = rustix::fs::open(
                root,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| PlaceError::io(root, e))?;
            self.root = Some((root.to_owned(), fd));
        }
        let comps: Vec<&str> = comps.collect();
        if comps.len() > MAX_DEPTH {
            return Err(PlaceError::TooDeep);
        }
        let shared = self
            .chain
            .iter()
            .zip(&comps)
            .take_while(|((open, _), want)| open == *want)
            .count();
        self.chain.truncate(shared);
        for (i, name) in comps.iter().enumerate().skip(shared) {
            let parent = match self.chain.last() {
                Some((_, fd)) => fd.as_fd(),
                None => match &self.root {
                    Some((_, fd)) => fd.as_fd(),
                    None => return Err(PlaceError::io(root, Errno::BADF)),
                },
            };
            let here = || dir_path(root, None).join(comps[..=i].join("/"));
            let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
            let fd = match rustix::fs::openat(parent, *name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(parent, *name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => created.push(i),
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(PlaceError::io(&here(), e)),
                    }
                    rustix::fs::openat(parent, *name, flags, Mode::empty())
                        .map_err(|e| not_a_dir(&here(), e))?
                }
                Err(e) => return Err(not_a_dir(&here(), e)),
            };
            self.chain.push(((*name).to_owned(), fd));
        }
        match self.chain.last() {
            Some((_, fd)) => Ok(fd),
            None => self
                .root
                .as_ref()
                .map(|(_, fd)| fd)
                .ok_or_else(|| PlaceError::io(root, Errno::BADF)),
        }
    }

    /// Remove the directories made for a member that was not placed, deepest first.
    fn undo(&mut self, root: &Path, created: &[usize]) {
        for &level in created.iter().rev() {
            if level >= self.chain.len() {
                continue;
            }
            let Some((name, _)) = self.chain.get(level).map(|(n, _)| (n.clone(), ())) else {
                continue;
            };
            self.chain.truncate(level);
            let parent = match self.chain.last() {
                Some((_, fd)) => fd.as_fd(),
                None => match &self.root {
                    Some((p, fd)) if p == root => fd.as_fd(),
                    _ => return,
                },
            };
            // Empty by construction: the member failed before anything went inside.
            let _ = rustix::fs::unlinkat(parent, name.as_str(), AtFlags::REMOVEDIR);
        }
    }
}

fn not_a_dir(path: &Path, e: Errno) -> PlaceError {
    if e == Errno::LOOP || e == Errno::NOTDIR {
        PlaceError::NotADirectory(path.to_owned())
    } else {
        PlaceError::io(path, e)
    }
}

fn dir_path(root: &Path, below: Option<&RelPath>) -> PathBuf {
    match below {
        Some(b) => root.join(b),
        None => root.to_owned(),
    }
}

/// The temporary name for `name`, the same in every run of this job's finalize.
pub fn temp_name(tag: &str, name: &str) -> String {
    // FNV-1a: a stable short digest keeps the name under NAME_MAX whatever `name` is.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!(".vm-capsule.{tag}.{hash:016x}.tmp")
}

/// Write `size` bytes of `data` to `tmp` in `dir`, then rename it over `name`.
#[allow(clippy::too_many_arguments)] // one caller; the pieces are distinct roles
fn write_beside(
    temps: &TempRecord,
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    tmp: &str,
    data: &mut dyn Read,
    size: u64,
    mode: u32,
    buf: &mut Vec<u8>,
) -> Result<(), PlaceError> {
    let target = dir_path.join(name);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let create = || rustix::fs::openat(dir, tmp, flags, Mode::from_raw_mode(mode & 0o777));
    // Recorded for the hook's watchdog, which removes it if time runs out mid-copy.
    let fd = temps
        .create(dir.as_fd(), tmp, || match create() {
            // A leftover of an interrupted run of this very job: ours to replace.
            Err(Errno::EXIST) => {
                let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
                create()
            }
            other => other,
        })
        .map_err(|e| PlaceError::io(&target, e))?;
    let mut file = File::from(fd);
    let copied = copy_exact(data, &mut file, size, buf).map_err(|e| PlaceError::io(&target, e));
    temps.finish(|| {
        let result = match copied {
            Ok(got) if got == size => {
                rustix::fs::renameat(dir, tmp, dir, name).map_err(|e| match e {
                    Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => {
                        PlaceError::io(&target, io::Error::other("a directory is in the way"))
                    }
                    e => PlaceError::io(&target, e),
                })
            }
            Ok(got) => Err(PlaceError::Truncated { got, size }),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
        }
        result
    })
}

/// Copy at most `size` bytes; returns how many there were.
fn copy_exact(
    data: &mut dyn Read,
    out: &mut File,
    size: u64,
    buf: &mut Vec<u8>,
) -> io::Result<u64> {
    if buf.len() < COPY_BUF {
        buf.resize(COPY_BUF, 0);
    }
    let mut done = 0u64;
    while done < size {
        let want = usize::try_from(size - done)
            .unwrap_or(COPY_BUF)
            .min(COPY_BUF);
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let got = match data.read(chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(chunk.get(..got).unwrap_or_default())?;
        done += u64::try_from(got).unwrap_or(0);
    }
    Ok(done)
}

/// Write a whole stream (a job's stdout, say) to `path` the same way: a temporary name
/// beside it, renamed over it; the parent must exist (it is the user's choice of path).
///
/// # Errors
/// [`PlaceError`]; no temporary file stays.
pub fn write_stream(
    path: &Path,
    tag: &str,
    data: &mut dyn Read,
    max: u64,
) -> Result<u64, PlaceError> {
    let parent = path.parent().unwrap_or_else(|| Path::new("/"));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PlaceError::io(path, io::Error::other("names no file")))?;
    let dir = rustix::fs::open(
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| PlaceError::io(parent, e))?;
    let mut counted = CountingReader { inner: data, n: 0 };
    let mut buf = Vec::new();
    // The stream's length is unknown: copy up to `max` and accept whatever there was.
    let tmp = temp_name(tag, name);
    let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, tmp.as_str(), flags, Mode::from_raw_mode(0o644))
        .map_err(|e| PlaceError::io(path, e))?;
    let mut file = File::from(fd);
    let result = copy_exact(&mut counted, &mut file, max, &mut buf)
        .map_err(|e| PlaceError::io(path, e))
        .and_then(|_| {
            rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)
                .map_err(|e| PlaceError::io(path, e))
        });
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
    }
    result.map(|()| counted.n)
}

struct CountingReader<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = self.inner.read(buf)?;
        self.n += u64::try_from(got).unwrap_or(0);
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn symlinked_components_stop_the_member_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("iwd");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let mut p = Placer::new("1.0");
        p.write_file(&root, &rel("new/deeper/link2/x"), &mut &b"x"[..], 1, 0o644)
            .unwrap();
        let err = p
            .write_file(&root, &rel("link/x"), &mut &b"x"[..], 1, 0o644)
            .unwrap_err();
        assert!(matches!(err, PlaceError::NotADirectory(_)), "{err}");
        assert!(!outside.join("x").exists());
        // A member that fails below new directories leaves none of them.
        let err = p
            .write_file(&root, &rel("a/b/c/x"), &mut &b"short"[..], 100, 0o644)
            .unwrap_err();
        assert!(matches!(err, PlaceError::Truncated { .. }), "{err}");
        assert!(!root.join("a").exists());
    }

    #[test]
    fn truncated_data_is_not_placed_and_no_temp_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Placer::new("7.3");
        std::fs::write(dir.path().join("out"), "old").unwrap();
        let err = p
            .write_file(dir.path(), &rel("out"), &mut &b"short"[..], 100, 0o644)
            .unwrap_err();
        assert!(matches!(err, PlaceError::Truncated { got: 5, size: 100 }));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out")).unwrap(),
            "old"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_leftover_temp_of_the_same_job_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(temp_name("7.3", "out"));
        std::fs::write(&tmp, "crash leftover").unwrap();
        let mut p = Placer::new("7.3");
        p.write_file(dir.path(), &rel("out"), &mut &b"new"[..], 3, 0o600)
            .unwrap();
        assert!(!tmp.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out")).unwrap(),
            "new"
        );
    }
}
