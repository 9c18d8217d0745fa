//! The job's inputs: planned into sandbox entries, streamed into `input.tar`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use capsule_disk::DataDisk;

use crate::job::{InputItem, JobSpec};

use super::*;

/// One top-level entry of `input.tar`.
#[derive(Debug, Clone)]
pub(super) struct TarItem {
    pub(super) source: PathBuf,
    pub(super) name: String,
    pub(super) is_dir: bool,
    pub(super) executable: bool,
}

/// The inputs with their sizes, checked to exist.
#[derive(Debug, Clone)]
pub(super) struct InputPlan {
    pub(super) items: Vec<TarItem>,
    /// Bytes `input.tar` will take.
    pub(super) tar_bytes: u64,
}

/// Resolve the executable, `In` and `TransferInput` into top-level sandbox entries.
pub(super) fn plan_inputs(job: &JobSpec) -> Result<InputPlan, TranslateError> {
    let mut items: Vec<TarItem> = Vec::new();
    let mut push = |item: TarItem, job: &JobSpec| -> Result<(), TranslateError> {
        if items.iter().any(|i| i.name == item.name) {
            return Err(permanent(
                job,
                format!(
                    "job {}: two inputs are named {:?} in the sandbox ({}); rename one",
                    job.id(),
                    item.name,
                    item.source.display()
                ),
            ));
        }
        items.push(item);
        Ok(())
    };
    if job.transfer_executable {
        let meta = fs::metadata(&job.executable).map_err(|e| {
            permanent(
                job,
                format!(
                    "job {}: executable {} cannot be read ({e}); check the path in the submit file",
                    job.id(),
                    job.executable.display()
                ),
            )
        })?;
        if !meta.is_file() {
            return Err(permanent(
                job,
                format!(
                    "job {}: executable {} is not a file",
                    job.id(),
                    job.executable.display()
                ),
            ));
        }
        push(
            TarItem {
                source: job.executable.clone(),
                name: job.executable_name(),
                is_dir: false,
                executable: true,
            },
            job,
        )?;
    }
    if let Some(stdin) = &job.stdin {
        let in_inputs = job.inputs.iter().any(|i| i.source == stdin.path);
        if !in_inputs {
            let meta = fs::metadata(&stdin.path).map_err(|e| {
                permanent(
                    job,
                    format!(
                        "job {}: input file {} (In) cannot be read ({e})",
                        job.id(),
                        stdin.path.display()
                    ),
                )
            })?;
            if meta.is_file() {
                push(
                    TarItem {
                        source: stdin.path.clone(),
                        name: stdin.name.clone(),
                        is_dir: false,
                        executable: false,
                    },
                    job,
                )?;
            }
        }
    }
    for InputItem {
        source,
        contents_only,
    } in &job.inputs
    {
        let meta = fs::metadata(source).map_err(|e| {
            permanent(
                job,
                format!(
                    "job {}: input {} (transfer_input_files) cannot be read ({e}); fix the path or create it",
                    job.id(),
                    source.display()
                ),
            )
        })?;
        if meta.is_dir() && *contents_only {
            let mut children: Vec<_> = fs::read_dir(source)
                .map_err(|e| permanent(job, format!("input dir {}: {e}", source.display())))?
                .filter_map(Result::ok)
                .collect();
            children.sort_by_key(fs::DirEntry::file_name);
            for child in children {
                let path = child.path();
                push(
                    TarItem {
                        is_dir: path.is_dir(),
                        name: child.file_name().to_string_lossy().into_owned(),
                        source: path,
                        executable: false,
                    },
                    job,
                )?;
            }
        } else {
            let name = source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    permanent(job, format!("input {} has no file name", source.display()))
                })?;
            push(
                TarItem {
                    source: source.clone(),
                    name,
                    is_dir: meta.is_dir(),
                    executable: false,
                },
                job,
            )?;
        }
    }
    let mut tar_bytes = 1024u64; // end-of-archive blocks
    for item in &items {
        tar_bytes = tar_bytes.saturating_add(tar_size(&item.source, 0));
    }
    Ok(InputPlan { items, tar_bytes })
}

/// Bytes a path takes in a tar archive: a header per entry, data rounded to 512, and long
/// names (GNU long-name entries) estimated generously.
pub(super) fn tar_size(path: &Path, depth: usize) -> u64 {
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

/// Stream `input.tar` onto the disk: a thread writes the archive into a pipe that the disk
/// reads, so no temporary copy of the inputs is made.
/// Append `path` as `name` (directories recursively, symlinks followed as HTCondor's file
/// transfer follows them), reading file data in 1 MiB pieces: `io::copy` uses a `BufReader`'s
/// buffer directly, where the tar crate's own path helpers read 8 KiB at a time.
fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &str,
    mode: Option<u32>,
    depth: usize,
) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    if meta.is_dir() {
        if depth > 64 {
            return Err(io::Error::other(format!(
                "{} is nested more than 64 directories deep",
                path.display()
            )));
        }
        tar.append_dir(name, path)?;
        let mut children: Vec<_> = fs::read_dir(path)?.collect::<io::Result<_>>()?;
        children.sort_by_key(fs::DirEntry::file_name);
        for child in children {
            let child_name = format!("{name}/{}", child.file_name().to_string_lossy());
            append_tree(tar, &child.path(), &child_name, None, depth + 1)?;
        }
        return Ok(());
    }
    let file = fs::File::open(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata(&meta);
    if let Some(mode) = mode {
        header.set_mode(mode);
    }
    tar.append_data(
        &mut header,
        name,
        io::BufReader::with_capacity(1 << 20, file),
    )
}

pub(super) fn write_input_tar(disk: &DataDisk, inputs: &InputPlan) -> io::Result<()> {
    let (reader, writer) = io::pipe()?;
    // A 1 MiB pipe instead of 64 KiB: the writer and the disk hand over large pieces instead
    // of switching threads every 64 KiB (which dominated the profile). Best effort.
    let _ = rustix::pipe::fcntl_setpipe_size(&writer, 1 << 20);
    let items = inputs.items.clone();
    let builder = std::thread::spawn(move || -> io::Result<()> {
        // Unbuffered: file data goes from the 1 MiB read buffer straight into the pipe.
        let mut tar = tar::Builder::new(writer);
        tar.mode(tar::HeaderMode::Complete);
        for item in &items {
            // HTCondor makes the transferred executable executable.
            let mode = item.executable.then_some(0o755);
            append_tree(&mut tar, &item.source, &item.name, mode, 0)?;
        }
        tar.into_inner()?.flush()
    });
    let mut reader = reader;
    let put = disk.put_file(capsule_manifest::INPUT_TAR, &mut reader);
    drop(reader);
    let built = builder
        .join()
        .map_err(|_| io::Error::other("input.tar writer panicked"))?;
    built?;
    put.map(|_| ()).map_err(io::Error::other)
}
