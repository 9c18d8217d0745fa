//! The job's inputs, surveyed before anything is written: each top-level sandbox entry with
//! its source, checked to exist (local files) and, where translate packs them itself (the VM
//! universe), the bytes `input.tar` will take. In the vanilla flavour HTCondor's own transfer
//! moves the inputs, so only their names are needed: the survey's cost does not grow with
//! the inputs' size.

use std::fs;

use super::error::{job_problem, TranslateError};
use crate::capsule::{InputPlan, TarItem};
use crate::job::{InputItem, JobSpec};

/// Resolve the executable, `In` and `TransferInput` into top-level sandbox entries; `packed`
/// when translate writes `input.tar` itself (the VM universe: URL inputs are refused, since
/// only HTCondor's transfer on the execute node can fetch them).
pub fn survey_inputs(job: &JobSpec, packed: bool) -> Result<InputPlan, TranslateError> {
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
    for item in &job.inputs {
        let InputItem {
            source,
            contents_only,
            url,
            ..
        } = item;
        if let Some(url) = url {
            if packed {
                return Err(job_problem(
                    &job.id(),
                    format!(
                        "job {}: input {url} is a URL, which HTCondor fetches only on the execute node; the VM-universe route cannot carry it: use the vanilla-flavour route (UNIVERSE VANILLA)",
                        job.id()
                    ),
                ));
            }
            let name = item.sandbox_name().ok_or_else(|| {
                job_problem(
                    &job.id(),
                    format!("job {}: input URL {url} names no file", job.id()),
                )
            })?;
            push(
                TarItem {
                    source: source.clone(),
                    name,
                    is_dir: false,
                    executable: false,
                },
                job,
            )?;
            continue;
        }
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
    if packed {
        Ok(InputPlan::of(items))
    } else {
        Ok(InputPlan {
            items,
            tar_bytes: 0,
        })
    }
}
