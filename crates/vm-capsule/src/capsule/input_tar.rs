//! `input.tar`: the job's inputs as top-level sandbox entries, and writing them onto the data
//! disk, streamed from where they are, with no temporary copy.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use capsule_disk::DataDisk;

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
    pub fn of(items: Vec<TarItem>) -> InputPlan {
        let tar_bytes = items
            .iter()
            .fold(1024u64, |n, i| n.saturating_add(tar_size(&i.source, 0)));
        InputPlan { items, tar_bytes }
    }
}

/// Bytes a path takes in a tar archive: a header per entry, data rounded to 512, and long
/// names (GNU long-name entries) estimated generously.
pub fn tar_size(path: &Path, depth: usize) -> u64 {
    let Ok(meta) = fs::metadata(path) else {
        return 0;
    };
    let header = 1536u64;
    if meta.is_dir() {
        if depth > 64 {
            return header;
        }
        let children = fs::read_dir(path).map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| tar_size(&e.path(), depth + 1))
                .sum::<u64>()
        });
        header + children.unwrap_or(0)
    } else {
        header + meta.len().div_ceil(512) * 512
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
    /// The data disk could not take it (the scratch file system may be full).
    #[error(transparent)]
    Disk(#[from] capsule_disk::Error),
    /// The pipe between the archive writer and the disk.
    #[error("input.tar: {0}")]
    Pipe(#[source] io::Error),
}

/// Append `path` as `name` (directories recursively, symlinks followed as HTCondor's file
/// transfer follows them), reading file data in 1 MiB pieces: `io::copy` uses a `BufReader`'s
/// buffer directly, where the tar crate's own path helpers read 8 KiB at a time. Errors name
/// the input they happened on.
fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &str,
    mode: Option<u32>,
    depth: usize,
) -> Result<(), InputTarError> {
    let source = |e: io::Error| InputTarError::Source {
        path: path.to_owned(),
        source: e,
    };
    let meta = fs::metadata(path).map_err(source)?;
    if meta.is_dir() {
        if depth > 64 {
            return Err(source(io::Error::other(
                "nested more than 64 directories deep",
            )));
        }
        tar.append_dir(name, path).map_err(InputTarError::Pipe)?;
        let mut children: Vec<_> = fs::read_dir(path)
            .and_then(|rd| rd.collect::<io::Result<_>>())
            .map_err(source)?;
        children.sort_by_key(fs::DirEntry::file_name);
        for child in children {
            let child_name = format!("{name}/{}", child.file_name().to_string_lossy());
            append_tree(tar, &child.path(), &child_name, None, depth + 1)?;
        }
        return Ok(());
    }
    let file = fs::File::open(path).map_err(source)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata(&meta);
    if let Some(mode) = mode {
        header.set_mode(mode);
    }
    // A read error and a pipe error look alike here; a pipe error only happens when the disk
    // side failed, whose own error is reported first.
    tar.append_data(
        &mut header,
        name,
        io::BufReader::with_capacity(1 << 20, file),
    )
    .map_err(source)
}

/// Stream `input.tar` onto the disk: a thread writes the archive into a pipe that the disk
/// reads, so no temporary copy of the inputs is made.
///
/// # Errors
/// [`InputTarError`]: the disk's own error when the disk failed (a full scratch file system
/// shows as such, not as the broken pipe it causes), else the input that could not be read.
pub fn write_input_tar(disk: &DataDisk, inputs: &InputPlan) -> Result<(), InputTarError> {
    let (reader, writer) = io::pipe().map_err(InputTarError::Pipe)?;
    // A 1 MiB pipe instead of 64 KiB: the writer and the disk hand over large pieces instead
    // of switching threads every 64 KiB (which dominated the profile). Best effort.
    let _ = rustix::pipe::fcntl_setpipe_size(&writer, 1 << 20);
    let items = inputs.items.clone();
    let builder = std::thread::spawn(move || -> Result<(), InputTarError> {
        // Unbuffered: file data goes from the 1 MiB read buffer straight into the pipe.
        let mut tar = tar::Builder::new(writer);
        tar.mode(tar::HeaderMode::Complete);
        for item in &items {
            // HTCondor makes the transferred executable executable.
            let mode = item.executable.then_some(0o755);
            append_tree(&mut tar, &item.source, &item.name, mode, 0)?;
        }
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(InputTarError::Pipe)
    });
    let mut reader = reader;
    let put = disk.put_file(capsule_manifest::INPUT_TAR, &mut reader);
    drop(reader);
    let built = builder
        .join()
        .map_err(|_| InputTarError::Pipe(io::Error::other("the input.tar writer panicked")))?;
    put?;
    built
}
