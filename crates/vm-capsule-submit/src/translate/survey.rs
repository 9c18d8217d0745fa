//! The job's inputs, surveyed before anything is written: each top-level sandbox entry with
//! its source, checked to exist (local files) and, where translate packs them itself (the VM
//! universe), the bytes `input.tar` will take. In the vanilla flavour HTCondor's own transfer
//! moves the inputs, so only their names are needed: the survey's cost does not grow with
//! the inputs' size.

use std::fs;
use std::path::Path;

use super::error::{job_problem, TranslateError};
use vm_capsule_core::capsule::{InputPlan, TarItem};
use vm_capsule_core::job::{InputItem, JobSpec};

/// Resolve the executable, `In` and `TransferInput` into top-level sandbox entries; `packed`
/// when translate writes `input.tar` itself (the VM universe: URL inputs are refused, since
/// only HTCondor's transfer on the execute node can fetch them).
///
/// # Errors
/// [`TranslateError::Job`] naming the input that is missing, unreadable or clashes.
pub fn survey_inputs(job: &JobSpec, packed: bool) -> Result<InputPlan, TranslateError> {
    let mut survey = Survey {
        job,
        items: Vec::new(),
    };
    if job.transfer_executable {
        survey.executable()?;
    }
    if let Some(stdin) = &job.stdin {
        if !job.inputs.iter().any(|i| i.source == stdin.path) {
            let meta = survey.metadata(&stdin.path, "input file", "(In)")?;
            if meta.is_file() {
                survey.push(&stdin.path, stdin.name.clone(), false, false)?;
            }
        }
    }
    for item in &job.inputs {
        survey.input(item, packed)?;
    }
    Ok(if packed {
        // A loop or an endless tree of links is the job's mistake, named in the hold.
        let items = std::mem::take(&mut survey.items);
        InputPlan::of(items).map_err(|e| survey.problem(e.to_string()))?
    } else {
        InputPlan {
            items: survey.items,
            tar_bytes: 0,
        }
    })
}

struct Survey<'a> {
    job: &'a JobSpec,
    items: Vec<TarItem>,
}

impl Survey<'_> {
    fn problem(&self, text: String) -> TranslateError {
        job_problem(&self.job.id(), text)
    }

    fn push(
        &mut self,
        source: &Path,
        name: String,
        is_dir: bool,
        executable: bool,
    ) -> Result<(), TranslateError> {
        if self.items.iter().any(|i| i.name == name) {
            return Err(self.problem(format!(
                "two inputs are named {name:?} in the sandbox ({}); rename one",
                source.display()
            )));
        }
        self.items.push(TarItem {
            source: source.to_owned(),
            name,
            is_dir,
            executable,
        });
        Ok(())
    }

    fn metadata(
        &self,
        path: &Path,
        what: &str,
        knob: &str,
    ) -> Result<fs::Metadata, TranslateError> {
        fs::metadata(path).map_err(|e| {
            self.problem(format!(
                "{what} {} {knob} cannot be read ({e}); fix the path or create it",
                path.display()
            ))
        })
    }

    fn executable(&mut self) -> Result<(), TranslateError> {
        let exe = &self.job.executable;
        let meta = self.metadata(exe, "executable", "(check the path in the submit file)")?;
        if !meta.is_file() {
            return Err(self.problem(format!("executable {} is not a file", exe.display())));
        }
        self.push(exe, self.job.executable_name(), false, true)
    }

    fn input(&mut self, item: &InputItem, packed: bool) -> Result<(), TranslateError> {
        if let Some(url) = &item.url {
            if packed {
                return Err(self.problem(format!(
                    "input {url} is a URL, which HTCondor fetches only on the execute node; the VM-universe route cannot carry it: use the vanilla-flavour route (UNIVERSE VANILLA)"
                )));
            }
            let name = item
                .sandbox_name()
                .ok_or_else(|| self.problem(format!("input URL {url} names no file")))?;
            return self.push(&item.source, name, false, false);
        }
        let source = &item.source;
        let meta = self.metadata(source, "input", "(transfer_input_files)")?;
        if meta.is_dir() && item.contents_only {
            // `dir/`: its children are top-level entries of their own.
            let mut children: Vec<_> = fs::read_dir(source)
                .map_err(|e| {
                    self.problem(format!(
                        "input dir {} cannot be read: {e}",
                        source.display()
                    ))
                })?
                .filter_map(Result::ok)
                .collect();
            children.sort_by_key(fs::DirEntry::file_name);
            for child in children {
                let path = child.path();
                let name = child.file_name().to_string_lossy().into_owned();
                self.push(&path, name, path.is_dir(), false)?;
            }
            return Ok(());
        }
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| self.problem(format!("input {} has no file name", source.display())))?;
        self.push(source, name, meta.is_dir(), false)
    }
}
