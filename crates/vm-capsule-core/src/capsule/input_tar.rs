//! `input.tar`: the job's inputs as top-level sandbox entries, and writing them onto the data
//! disk, streamed from where they are, with no temporary copy.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use capsule_disk::DataDisk;

use super::input_walk::{Ancestors, EntryBudget, MAX_INPUT_DEPTH, MAX_INPUT_ENTRIES};

/// One top-level entry of `input.tar`.
#[derive(Debug, Clone)]
pub struct TarItem {
    /// Where it is.
    pub source: PathBuf,
    /// Its name in the sandbox.
    pub name: String,
    /// A directory (its whole tree goes in).
    pub is_dir: bool,
    /// The job's executable (made executable, as HTCondor does).
    pub executable: bool,
}

/// The inputs with their sizes, checked to exist.
#[derive(Debug, Clone)]
pub struct InputPlan {
    /// The entries.
    pub items: Vec<TarItem>,
    /// Bytes `input.tar` will take.
    pub tar_bytes: u64,
}

impl InputPlan {
    /// The plan for `items`, with the bytes their archive will take.
    ///
    /// # Errors
    /// [`InputTarError`]: an input that cannot be read, a directory that contains itself
    /// through a link, inputs nested too deep or holding too many entries.
    pub fn of(items: Vec<TarItem>) -> Result<InputPlan, InputTarError> {
        let tar_bytes = super::input_walk::tar_bytes(
            items.iter().map(|i| i.source.as_path()),
            MAX_INPUT_ENTRIES,
        )?;
        Ok(InputPlan { items, tar_bytes })
    }
}

/// Why `input.tar` could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InputTarError {
    /// An input could not be read (it changed, or its permissions did, since the survey).
    #[error("input {path} cannot be read: {source}")]
    Source {
        /// The input.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A directory of the inputs contains itself through a link.
    #[error("input {path} leads back to {ancestor}, a directory it is in (a link loops); remove the link, or name the files it should bring")]
    Loop {
        /// The entry that loops.
        path: PathBuf,
        /// The directory it leads back to.
        ancestor: PathBuf,
    },
    /// The inputs hold more entries than the limit.
    #[error("the inputs hold more than {limit} files and directories (links followed), at {path}; pack them into an archive and unpack it in the job")]
    TooManyEntries {
        /// Where the limit was reached.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The data disk could not take it (the scratch file system may be full).
    #[error(transparent)]
    Disk(#[from] capsule_disk::Error),
}

impl InputTarError {
    /// Whether the job's own inputs are at fault (not the disk).
    pub fn is_the_jobs(&self) -> bool {
        !matches!(self, InputTarError::Disk(_))
    }
}

/// `input.tar` as a byte stream, made as it is read: headers come from the tar crate (long
/// names included), file data is read straight into the reader's buffer. The disk reads it
/// directly, so every input byte is copied once from its file to the disk, with no archive
/// thread or pipe between them. Directories are walked depth first in name order; symlinks
/// are followed, as HTCondor's file transfer follows them.
struct TarStream {
    /// Entries still to write, the next one last.
    todo: Vec<Todo>,
    /// Writes headers (and at the end the two zero blocks) into `out`.
    tar: Option<tar::Builder<Shared>>,
    /// Bytes made by `tar`, not yet handed out; `out_pos` of them already were.
    out: Shared,
    out_pos: usize,
    /// The file whose data comes next, with the bytes its header promised.
    file: Option<(fs::File, u64, PathBuf)>,
    /// Zero bytes that pad the last file's data to a 512-byte block.
    pad: usize,
    /// Why the stream stopped, naming the input (the disk only sees an I/O error).
    failure: Option<InputTarError>,
    /// Entries still allowed.
    budget: EntryBudget,
}

/// One entry to write: `source` as `name`, with the mode the job's executable gets, below
/// the directories `ancestors`.
struct Todo {
    source: PathBuf,
    name: String,
    mode: Option<u32>,
    depth: usize,
    ancestors: Ancestors,
}

/// A byte buffer the tar builder writes into and the stream drains.
#[derive(Clone, Default)]
struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TarStream {
    fn new(items: &[TarItem]) -> TarStream {
        let out = Shared::default();
        let mut tar = tar::Builder::new(out.clone());
        tar.mode(tar::HeaderMode::Complete);
        let todo = items
            .iter()
            .rev()
            .map(|i| Todo {
                source: i.source.clone(),
                name: i.name.clone(),
                // HTCondor makes the transferred executable executable.
                mode: i.executable.then_some(0o755),
                depth: 0,
                ancestors: Ancestors::default(),
            })
            .collect();
        TarStream {
            todo,
            tar: Some(tar),
            out,
            out_pos: 0,
            file: None,
            pad: 0,
            failure: None,
            budget: EntryBudget::new(MAX_INPUT_ENTRIES),
        }
    }

    /// Stop with `failure` (already naming the input).
    fn stop(&mut self, failure: InputTarError) -> io::Error {
        let e = io::Error::other(failure.to_string());
        self.failure = Some(failure);
        e
    }

    /// Stop with `source` as the reason, naming `path`.
    fn fail(&mut self, path: &Path, source: io::Error) -> io::Error {
        let e = io::Error::new(source.kind(), format!("input {}: {source}", path.display()));
        self.failure = Some(InputTarError::Source {
            path: path.to_owned(),
            source,
        });
        e
    }

    /// Write the header of the next entry (queueing a directory's children), or the end of the
    /// archive. False when there is nothing left at all.
    fn next_entry(&mut self) -> io::Result<bool> {
        let Some(tar) = self.tar.as_mut() else {
            return Ok(false);
        };
        let Some(t) = self.todo.pop() else {
            tar.finish()?;
            self.tar = None;
            return Ok(true);
        };
        if let Err(e) = self.budget.take(&t.source, MAX_INPUT_ENTRIES) {
            return Err(self.stop(e));
        }
        let Some(tar) = self.tar.as_mut() else {
            return Ok(false);
        };
        let meta = match fs::metadata(&t.source) {
            Ok(m) => m,
            Err(e) => return Err(self.fail(&t.source, e)),
        };
        if meta.is_dir() {
            if t.depth > MAX_INPUT_DEPTH {
                let e = io::Error::other(format!(
                    "nested more than {MAX_INPUT_DEPTH} directories deep"
                ));
                return Err(self.fail(&t.source, e));
            }
            // Checked again here: the tree may have changed since the survey.
            let ancestors = match t.ancestors.enter(&t.source, &meta) {
                Ok(a) => a,
                Err(e) => return Err(self.stop(e)),
            };
            let Some(tar) = self.tar.as_mut() else {
                return Ok(false);
            };
            tar.append_dir(&t.name, &t.source)?;
            let mut children: Vec<_> =
                match fs::read_dir(&t.source).and_then(|rd| rd.collect::<io::Result<Vec<_>>>()) {
                    Ok(c) => c,
                    Err(e) => return Err(self.fail(&t.source, e)),
                };
            children.sort_by_key(fs::DirEntry::file_name);
            self.todo.extend(children.into_iter().rev().map(|c| Todo {
                name: format!("{}/{}", t.name, c.file_name().to_string_lossy()),
                source: c.path(),
                mode: None,
                depth: t.depth + 1,
                ancestors: ancestors.clone(),
            }));
            return Ok(true);
        }
        let file = match fs::File::open(&t.source) {
            Ok(f) => f,
            Err(e) => return Err(self.fail(&t.source, e)),
        };
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        if let Some(mode) = t.mode {
            header.set_mode(mode);
        }
        // The header (after a long-name entry if the name needs one) and no data: the data
        // follows from the file itself.
        tar.append_data(&mut header, &t.name, io::empty())?;
        let size = meta.len();
        self.pad = usize::try_from(size.next_multiple_of(512) - size).unwrap_or(0);
        self.file = Some((file, size, t.source));
        Ok(true)
    }
}

impl io::Read for TarStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut out = self.out.0.borrow_mut();
                if self.out_pos < out.len() {
                    let n = (out.len() - self.out_pos).min(buf.len());
                    buf[..n].copy_from_slice(&out[self.out_pos..self.out_pos + n]);
                    self.out_pos += n;
                    if self.out_pos == out.len() {
                        out.clear();
                        self.out_pos = 0;
                    }
                    return Ok(n);
                }
            }
            if let Some((file, left, path)) = self.file.as_mut() {
                if *left > 0 {
                    let want = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    match file.read(&mut buf[..want]) {
                        Ok(0) => {
                            let (path, e) = (
                                path.clone(),
                                io::Error::other("it shrank while being archived"),
                            );
                            return Err(self.fail(&path, e));
                        }
                        Ok(n) => {
                            *left -= n as u64;
                            return Ok(n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let path = path.clone();
                            return Err(self.fail(&path, e));
                        }
                    }
                }
                self.file = None;
                self.out.0.borrow_mut().resize(self.pad, 0);
                continue;
            }
            if !self.next_entry()? {
                return Ok(0);
            }
        }
    }
}

/// Stream `input.tar` onto the disk, read from the inputs where they are: no temporary copy.
///
/// # Errors
/// [`InputTarError`]: the input that could not be read, else the disk's own error (a full
/// scratch file system shows as such).
pub fn write_input_tar(disk: &DataDisk, inputs: &InputPlan) -> Result<(), InputTarError> {
    let mut stream = TarStream::new(&inputs.items);
    let put = disk.put_file(capsule_manifest::INPUT_TAR, &mut stream);
    if let Some(failure) = stream.failure.take() {
        return Err(failure);
    }
    put?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Inputs with what makes a tar stream hard: a name longer than a header holds, nested
    /// and empty directories, a symlink (followed), the executable, an empty file and sizes
    /// that do not end on a block.
    fn inputs(root: &Path) -> Vec<TarItem> {
        let long = "n".repeat(150);
        fs::create_dir_all(root.join("d/sub/empty")).unwrap();
        fs::write(root.join("d/a.txt"), b"a\n").unwrap();
        fs::write(root.join("d/sub").join(&long), vec![7u8; 1000]).unwrap();
        fs::write(root.join("d/zero"), b"").unwrap();
        fs::write(root.join("target.dat"), vec![1u8; 513]).unwrap();
        std::os::unix::fs::symlink(root.join("target.dat"), root.join("link.dat")).unwrap();
        fs::write(root.join("job.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("job.sh"), fs::Permissions::from_mode(0o600)).unwrap();
        let item = |name: &str, is_dir, executable| TarItem {
            source: root.join(name),
            name: name.to_owned(),
            is_dir,
            executable,
        };
        vec![
            item("job.sh", false, true),
            item("d", true, false),
            item("link.dat", false, false),
        ]
    }

    /// Read the whole stream `step` bytes at a time.
    fn read_all(items: &[TarItem], step: usize) -> Vec<u8> {
        let mut stream = TarStream::new(items);
        let mut out = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn the_stream_is_the_archive_gnu_tar_reads() {
        let dir = tempfile::tempdir().unwrap();
        let items = inputs(dir.path());
        let whole = read_all(&items, 1 << 20);
        // Block boundaries fall anywhere in the reader's buffer: the bytes must not change.
        assert_eq!(read_all(&items, 7), whole);
        assert_eq!(whole.len() % 512, 0);
        assert!(whole.len() as u64 <= InputPlan::of(items.clone()).unwrap().tar_bytes);

        // GNU tar, the tool admins use, lists and unpacks it.
        let tar_path = dir.path().join("input.tar");
        fs::write(&tar_path, &whole).unwrap();
        let listed = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&tar_path)
            .output()
            .unwrap();
        assert!(listed.status.success());
        let listing = String::from_utf8_lossy(&listed.stdout);
        let long = "n".repeat(150);
        for want in [
            "job.sh",
            "d",
            "d/a.txt",
            "d/sub",
            "d/sub/empty",
            "d/zero",
            "link.dat",
        ] {
            assert!(
                listing.lines().any(|l| l.ends_with(&format!(" {want}"))),
                "{want} missing from:\n{listing}"
            );
        }
        assert!(listing.contains(&format!("d/sub/{long}")), "{listing}");
        assert!(listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" job.sh")));
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let unpacked = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&tar_path)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap();
        assert!(unpacked.success());
        assert_eq!(fs::read(out.join("link.dat")).unwrap(), vec![1u8; 513]);
        assert!(!fs::symlink_metadata(out.join("link.dat"))
            .unwrap()
            .is_symlink());
        assert_eq!(
            fs::read(out.join("d/sub").join(&long)).unwrap(),
            vec![7u8; 1000]
        );
        assert_eq!(fs::read(out.join("d/a.txt")).unwrap(), b"a\n");
        assert!(out.join("d/sub/empty").is_dir());
    }

    #[test]
    fn an_input_that_vanished_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let items = inputs(dir.path());
        fs::remove_file(dir.path().join("d/a.txt")).unwrap();
        fs::remove_dir_all(dir.path().join("d")).unwrap();
        let mut stream = TarStream::new(&items);
        let mut sink = Vec::new();
        assert!(stream.read_to_end(&mut sink).is_err());
        match stream.failure {
            Some(InputTarError::Source { path, .. }) => assert_eq!(path, dir.path().join("d")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_loop_made_after_the_survey_stops_the_stream_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        fs::create_dir_all(d.join("sub")).unwrap();
        let items = vec![TarItem {
            source: d.clone(),
            name: "d".into(),
            is_dir: true,
            executable: false,
        }];
        let plan = InputPlan::of(items.clone()).unwrap();
        std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap();
        let mut stream = TarStream::new(&plan.items);
        let mut sink = Vec::new();
        assert!(stream.read_to_end(&mut sink).is_err());
        match stream.failure {
            Some(InputTarError::Loop { path, ancestor }) => {
                assert_eq!((path, ancestor), (d.join("sub/up"), d));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            InputPlan::of(items),
            Err(InputTarError::Loop { .. })
        ));
    }

    #[test]
    fn a_file_that_shrank_is_an_error_not_a_short_entry() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("big"), vec![0u8; 4096]).unwrap();
        let items = vec![TarItem {
            source: dir.path().join("big"),
            name: "big".into(),
            is_dir: false,
            executable: false,
        }];
        let mut stream = TarStream::new(&items);
        let mut buf = [0u8; 512];
        // The header is out; then the file loses its data.
        assert_eq!(stream.read(&mut buf).unwrap(), 512);
        fs::File::create(dir.path().join("big")).unwrap();
        let err = stream.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
        assert!(matches!(stream.failure, Some(InputTarError::Source { .. })));
    }
}
