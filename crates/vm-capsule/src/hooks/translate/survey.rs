//! The job's inputs, surveyed before anything is written: each top-level sandbox entry with
//! its source, checked to exist and be readable, and the bytes `input.tar` will take.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{job_problem, TranslateError};
use crate::job::{InputItem, JobSpec};

/// One top-level entry of `input.tar`.
#[derive(Debug, Clone)]
pub struct TarItem {
    pub source: PathBuf,
    pub name: String,
    pub is_dir: bool,
    pub executable: bool,
}

/// The inputs with their sizes, checked to exist.
#[derive(Debug, Clone)]
pub struct InputPlan {
    pub items: Vec<TarItem>,
    /// Bytes `input.tar` will take.
    pub tar_bytes: u64,
}

/// Resolve the executable, `In` and `TransferInput` into top-level sandbox entries.
pub fn survey_inputs(job: &JobSpec) -> Result<InputPlan, TranslateError> {
    let mut items: Vec<TarItem> = Vec::new();
    let mut push = |item: TarItem, job: &JobSpec| -> Result<(), TranslateError> {
        if items.iter().any(|i| i.name == item.name) {
            return Err(job_problem(
                &job.id(),
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
            job_problem(
                &job.id(),
                format!(
                    "job {}: executable {} cannot be read ({e}); check the path in the submit file",
                    job.id(),
                    job.executable.display()
                ),
            )
        })?;
        if !meta.is_file() {
            return Err(job_problem(
                &job.id(),
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
                job_problem(
                    &job.id(),
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
            job_problem(
                &job.id(),
                format!(
                    "job {}: input {} (transfer_input_files) cannot be read ({e}); fix the path or create it",
                    job.id(),
                    source.display()
                ),
            )
        })?;
        if meta.is_dir() && *contents_only {
            let mut children: Vec<_> = fs::read_dir(source)
                .map_err(|e| {
                    job_problem(
                        &job.id(),
                        format!(
                            "job {}: input dir {} cannot be read: {e}",
                            job.id(),
                            source.display()
                        ),
                    )
                })?
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
                    job_problem(
                        &job.id(),
                        format!(
                            "job {}: input {} has no file name",
                            job.id(),
                            source.display()
                        ),
                    )
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
