//! What HTCondor itself would bring back for a job, and where it would put it: decided on the
//! host from the original ad, never from what the guest claims it produced.
//!
//! HTCondor's rules (`FileTransfer::Init` and `FindChangedFiles` in file_transfer.cpp):
//! - with `transfer_output_files`, exactly the named entries: a file lands in `Iwd` under its
//!   base name (its relative path with `preserve_relative_paths`), a directory as its whole
//!   tree under its base name, `dir/` as the directory's contents;
//! - without it, the regular files in the top level of the sandbox that are new or changed,
//!   never directories, never the executable (`Cmd`'s base name) nor the proxy file;
//! - `transfer_output_remaps` renames an output (by its entry or its base name) to a path
//!   relative to `Iwd` or absolute.
//!
//! An archive member outside these rules is reported, not placed.

use std::path::{Component, Path, PathBuf};

use capsule_manifest::{PathError, RelPath};

use crate::job::JobSpec;
use crate::whose::Whose;

/// Names HTCondor's starter keeps for itself in a sandbox; a guest may not create them there.
const SANDBOX_RESERVED: [&str; 6] = [
    ".job.ad",
    ".machine.ad",
    ".chirp.config",
    ".update.ad",
    "_condor_stdout",
    "_condor_stderr",
];

/// A `transfer_output_files` entry that no output can match: the job's owner must fix the
/// ad (HTCondor would not find such an output in the sandbox either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transfer_output_files entry {entry:?} cannot be an output: {problem}")]
pub struct BadOutputEntry {
    /// The entry as the user wrote it.
    pub entry: String,
    /// Why it is not a clean relative path.
    pub problem: PathError,
}

/// Why HTCondor would not bring an archive member back, or could not put it where the job's
/// remaps say. The member is reported, not placed; see [`RuleRefusal::whose`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleRefusal {
    /// A nested member under the default rule, which takes only the top level.
    #[error(
        "it is not in the top level of the sandbox, and transfer_output_files does not name it"
    )]
    NotTopLevel,
    /// A directory under the default rule, which takes only files.
    #[error("HTCondor brings back no directory that transfer_output_files does not name")]
    UnnamedDirectory,
    /// The job's executable or proxy file, which the default rule never takes.
    #[error("HTCondor never brings back the job's executable or proxy")]
    ExecutableOrProxy,
    /// A member that no `transfer_output_files` entry names.
    #[error("transfer_output_files does not name it")]
    NotNamed,
    /// A top-level name the starter or the capsule keeps for itself in a sandbox.
    #[error("{name:?} is a name HTCondor or the capsule uses in the sandbox")]
    ReservedName {
        /// The top-level name.
        name: String,
    },
    /// The output's name is not a clean relative path.
    #[error("its name: {0}")]
    BadName(PathError),
    /// The destination path breaks a path rule (too long once joined, say).
    #[error("{0}")]
    BadDestination(PathError),
    /// `transfer_output_remaps` sends the output to a URL, which only HTCondor's own
    /// transfer can do.
    #[error("transfer_output_remaps sends it to the URL {to:?}, which the VM flavour cannot do; use the vanilla flavour, whose output transfer is HTCondor's own")]
    RemapToUrl {
        /// The remap target.
        to: String,
    },
    /// `transfer_output_remaps` names a directory, not a file.
    #[error("transfer_output_remaps target {to:?} names no file")]
    RemapNamesNoFile {
        /// The remap target.
        to: String,
    },
    /// The file name a `transfer_output_remaps` target ends in breaks a path rule.
    #[error("transfer_output_remaps target {to:?}: {problem}")]
    BadRemapTarget {
        /// The remap target.
        to: String,
        /// What is wrong with its file name.
        problem: PathError,
    },
}

impl RuleRefusal {
    /// Who must act: the job's owner for a remap the VM flavour cannot follow, the guest (or
    /// the job in it) for a member the rules do not take.
    pub fn whose(&self) -> Whose {
        match self {
            RuleRefusal::RemapToUrl { .. }
            | RuleRefusal::RemapNamesNoFile { .. }
            | RuleRefusal::BadRemapTarget { .. } => Whose::Owner,
            _ => Whose::Guest,
        }
    }
}

/// Which members are outputs.
#[derive(Debug, Clone)]
enum Selection {
    /// `transfer_output_files`.
    Named(Vec<Named>),
    /// New and changed top-level files, except these names.
    Changed { excluded: Vec<String> },
    /// Everything by its relative path (the vanilla launcher's own sandbox, from which
    /// HTCondor then applies the job's rules), except these names and names starting with
    /// `_condor_`.
    Sandbox { excluded: Vec<String> },
}

#[derive(Debug, Clone)]
struct Named {
    /// The entry as the user wrote it (remaps may name it so).
    raw: String,
    /// Its path.
    path: RelPath,
    /// `dir/`: the directory's contents, not the directory.
    contents_only: bool,
}

/// Where an accepted member goes: `root` is opened as it is (a path the user chose, links
/// and all); `below` is walked component by component without following links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// A directory that must exist.
    pub root: PathBuf,
    /// The member's path below `root` (its last component is the file or directory itself).
    pub below: RelPath,
}

/// The placement rules of one job.
#[derive(Debug, Clone)]
pub struct OutputRules {
    iwd: PathBuf,
    selection: Selection,
    remaps: Vec<(String, String)>,
    preserve_relative_paths: bool,
}

impl OutputRules {
    /// The rules of `job`, as HTCondor's file transfer would apply them to its `Iwd`.
    ///
    /// # Errors
    /// [`BadOutputEntry`] for a `transfer_output_files` entry that is not a clean relative
    /// path.
    pub fn for_job(job: &JobSpec) -> Result<OutputRules, BadOutputEntry> {
        let selection = match &job.outputs {
            Some(list) => {
                let mut named = Vec::new();
                for raw in list {
                    let contents_only = raw.len() > 1 && raw.ends_with('/');
                    let body = raw.strip_suffix('/').unwrap_or(raw);
                    let path = RelPath::parse(body).map_err(|problem| BadOutputEntry {
                        entry: raw.clone(),
                        problem,
                    })?;
                    named.push(Named {
                        raw: raw.clone(),
                        path,
                        contents_only,
                    });
                }
                Selection::Named(named)
            }
            None => {
                let mut excluded = vec![job.executable_name()];
                excluded.extend(job.proxy_name.clone());
                Selection::Changed { excluded }
            }
        };
        Ok(OutputRules {
            iwd: job.iwd.clone(),
            selection,
            remaps: job.remaps.clone(),
            preserve_relative_paths: job.preserve_relative_paths,
        })
    }

    /// The rules of the vanilla flavour's launcher: members keep their relative paths in
    /// `sandbox` (HTCondor applies the job's own rules from there), but never take a name
    /// the starter or the capsule uses (`excluded`, `.job.ad`, `_condor_*`...).
    pub fn sandbox(sandbox: &Path, excluded: &[String]) -> OutputRules {
        OutputRules {
            iwd: sandbox.to_owned(),
            selection: Selection::Sandbox {
                excluded: excluded.to_vec(),
            },
            remaps: Vec::new(),
            preserve_relative_paths: true,
        }
    }

    /// Where member `path` (a directory when `is_dir`) goes.
    ///
    /// # Errors
    /// [`RuleRefusal`]: why HTCondor would not bring it back, for the report.
    pub fn destination(
        &self,
        path: &RelPath,
        is_dir: bool,
    ) -> Result<Option<Destination>, RuleRefusal> {
        match &self.selection {
            Selection::Named(named) => self.named_destination(named, path),
            Selection::Changed { excluded } => {
                if path.depth() > 1 {
                    return Err(RuleRefusal::NotTopLevel);
                }
                if is_dir {
                    return Err(RuleRefusal::UnnamedDirectory);
                }
                if excluded.iter().any(|e| e == path.as_str()) {
                    return Err(RuleRefusal::ExecutableOrProxy);
                }
                self.remapped(path.as_str(), path.as_str(), None).map(Some)
            }
            Selection::Sandbox { excluded } => {
                let top = path.components().next().unwrap_or_default();
                if excluded.iter().any(|e| e == top)
                    || SANDBOX_RESERVED.contains(&top)
                    || top.starts_with("_condor_")
                {
                    return Err(RuleRefusal::ReservedName {
                        name: top.to_owned(),
                    });
                }
                Ok(Some(Destination {
                    root: self.iwd.clone(),
                    below: path.clone(),
                }))
            }
        }
    }

    fn named_destination(
        &self,
        named: &[Named],
        path: &RelPath,
    ) -> Result<Option<Destination>, RuleRefusal> {
        let Some(entry) = named
            .iter()
            .filter(|n| path.starts_with(&n.path))
            .max_by_key(|n| n.path.as_str().len())
        else {
            return Err(RuleRefusal::NotNamed);
        };
        let rest = path.strip_prefix(&entry.path).flatten();
        if entry.contents_only {
            // `dir/`: the children land as top-level outputs of their own.
            let Some(rest) = rest else { return Ok(None) };
            let first = rest.components().next().unwrap_or_default();
            let tail = rest
                .strip_prefix(&RelPath::parse(first).map_err(RuleRefusal::BadDestination)?)
                .flatten();
            return self.remapped(first, first, tail.as_ref()).map(Some);
        }
        let base = if self.preserve_relative_paths {
            entry.path.as_str()
        } else {
            entry.path.file_name()
        };
        self.remapped(entry.raw.trim_end_matches('/'), base, rest.as_ref())
            .map(Some)
    }

    /// The destination of output `name` (as the user wrote it) with base `base`, plus `rest`
    /// below it, after `transfer_output_remaps`.
    fn remapped(
        &self,
        name: &str,
        base: &str,
        rest: Option<&RelPath>,
    ) -> Result<Destination, RuleRefusal> {
        let remap = self
            .remaps
            .iter()
            .find(|(from, _)| from == name)
            .or_else(|| self.remaps.iter().find(|(from, _)| from == base))
            .map(|(_, to)| to.as_str());
        let (root, below) = match remap {
            None => (
                self.iwd.clone(),
                RelPath::parse(base).map_err(RuleRefusal::BadName)?,
            ),
            Some(to) => remap_target(&self.iwd, to)?,
        };
        let below = match rest {
            Some(rest) => below.join(rest).map_err(RuleRefusal::BadDestination)?,
            None => below,
        };
        Ok(Destination { root, below })
    }
}

/// Split a remap target into an existing root and a clean path below it: a clean relative
/// target stays below `Iwd` (missing directories are created there); anything else (absolute,
/// or with `..`) is resolved lexically and its parent directory must exist.
fn remap_target(iwd: &Path, to: &str) -> Result<(PathBuf, RelPath), RuleRefusal> {
    if to.contains("://") {
        return Err(RuleRefusal::RemapToUrl { to: to.to_owned() });
    }
    if let Ok(rel) = RelPath::parse(to) {
        return Ok((iwd.to_owned(), rel));
    }
    let mut full = PathBuf::new();
    for c in iwd.join(to).components() {
        match c {
            Component::ParentDir => {
                full.pop();
            }
            Component::CurDir => {}
            other => full.push(other),
        }
    }
    let name = full
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| RuleRefusal::RemapNamesNoFile { to: to.to_owned() })?;
    let below = RelPath::parse(name).map_err(|problem| RuleRefusal::BadRemapTarget {
        to: to.to_owned(),
        problem,
    })?;
    let root = full
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    Ok((root, below))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn job(extra: &str) -> JobSpec {
        let ad = classad::parse_old_ad(&format!(
            "ClusterId = 1\nProcId = 0\nOwner = \"u\"\nIwd = \"/home/u/run\"\nCmd = \"job.sh\"\n{extra}"
        ))
        .unwrap();
        JobSpec::from_ad(&ad).unwrap()
    }

    fn dest(
        rules: &OutputRules,
        path: &str,
        is_dir: bool,
    ) -> Result<Option<(String, String)>, RuleRefusal> {
        rules
            .destination(&RelPath::parse(path).unwrap(), is_dir)
            .map(|d| d.map(|d| (d.root.display().to_string(), d.below.to_string())))
    }

    #[test]
    fn default_rule_takes_top_level_files_but_not_the_executable_or_dirs() {
        let rules = OutputRules::for_job(&job("x509userproxy = \"/tmp/x509up_u1\"\n")).unwrap();
        assert_eq!(
            dest(&rules, ".bashrc", false).unwrap().unwrap().1,
            ".bashrc"
        );
        let refusal = |path, is_dir| dest(&rules, path, is_dir).unwrap_err();
        assert_eq!(
            refusal(".ssh/authorized_keys", false),
            RuleRefusal::NotTopLevel
        );
        assert_eq!(refusal(".ssh", true), RuleRefusal::UnnamedDirectory);
        assert_eq!(refusal("job.sh", false), RuleRefusal::ExecutableOrProxy);
        assert_eq!(refusal("x509up_u1", false), RuleRefusal::ExecutableOrProxy);
    }

    #[test]
    fn named_outputs_by_base_name_dirs_contents_and_remaps() {
        let rules = OutputRules::for_job(&job(
            "TransferOutput = \"sub/c.txt,outdir,flat/,a.out,url.out\"\n\
             TransferOutputRemaps = \"a.out = res/a.txt;url.out = osdf:///x/y\"\n",
        ))
        .unwrap();
        assert_eq!(
            dest(&rules, "sub/c.txt", false).unwrap().unwrap().1,
            "c.txt"
        );
        assert_eq!(
            dest(&rules, "outdir/x/y", false).unwrap().unwrap().1,
            "outdir/x/y"
        );
        assert_eq!(dest(&rules, "flat/k/v", false).unwrap().unwrap().1, "k/v");
        assert_eq!(dest(&rules, "flat", true).unwrap(), None);
        assert_eq!(
            dest(&rules, "a.out", false).unwrap().unwrap().1,
            "res/a.txt"
        );
        let url = dest(&rules, "url.out", false).unwrap_err();
        assert_eq!(url.whose(), Whose::Owner);
        assert!(url.to_string().contains("URL"), "{url}");
        for unnamed in ["sub/other", ".bashrc", "job.sh"] {
            let refusal = dest(&rules, unnamed, false).unwrap_err();
            assert_eq!(refusal, RuleRefusal::NotNamed, "{unnamed}");
            assert_eq!(refusal.whose(), Whose::Guest);
        }
    }

    #[test]
    fn refusals_read_as_they_always_have() {
        let cases = [
            (
                RuleRefusal::NotTopLevel,
                "it is not in the top level of the sandbox, and transfer_output_files does not name it",
            ),
            (
                RuleRefusal::UnnamedDirectory,
                "HTCondor brings back no directory that transfer_output_files does not name",
            ),
            (
                RuleRefusal::ExecutableOrProxy,
                "HTCondor never brings back the job's executable or proxy",
            ),
            (RuleRefusal::NotNamed, "transfer_output_files does not name it"),
            (
                RuleRefusal::ReservedName {
                    name: ".job.ad".to_owned(),
                },
                "\".job.ad\" is a name HTCondor or the capsule uses in the sandbox",
            ),
            (
                RuleRefusal::BadName(PathError::Nul),
                "its name: the path contains a NUL byte",
            ),
            (
                RuleRefusal::BadDestination(PathError::TooLong),
                "the path is longer than 4096 bytes",
            ),
            (
                RuleRefusal::RemapToUrl {
                    to: "osdf:///x".to_owned(),
                },
                "transfer_output_remaps sends it to the URL \"osdf:///x\", which the VM flavour cannot do; use the vanilla flavour, whose output transfer is HTCondor's own",
            ),
            (
                RuleRefusal::RemapNamesNoFile { to: "/".to_owned() },
                "transfer_output_remaps target \"/\" names no file",
            ),
            (
                RuleRefusal::BadRemapTarget {
                    to: "x".to_owned(),
                    problem: PathError::ComponentTooLong,
                },
                "transfer_output_remaps target \"x\": a component is longer than 255 bytes",
            ),
        ];
        for (refusal, text) in cases {
            assert_eq!(refusal.to_string(), text);
        }
    }

    #[test]
    fn a_bad_output_entry_names_itself() {
        let err = OutputRules::for_job(&job("TransferOutput = \"../up\"\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "transfer_output_files entry \"../up\" cannot be an output: the path has a '..' component; it must stay inside the work dir"
        );
    }

    #[test]
    fn absolute_and_dotted_remaps_resolve_to_an_existing_parent() {
        let rules = OutputRules::for_job(&job(
            "TransferOutput = \"a,b\"\nTransferOutputRemaps = \"a = /data/x/a.txt;b = ../b.txt\"\n",
        ))
        .unwrap();
        assert_eq!(
            dest(&rules, "a", false).unwrap().unwrap(),
            ("/data/x".to_owned(), "a.txt".to_owned())
        );
        assert_eq!(
            dest(&rules, "b", false).unwrap().unwrap(),
            ("/home/u".to_owned(), "b.txt".to_owned())
        );
    }

    #[test]
    fn preserve_relative_paths_keeps_the_path() {
        let rules = OutputRules::for_job(&job(
            "TransferOutput = \"sub/c.txt\"\nPreserveRelativePaths = true\n",
        ))
        .unwrap();
        assert_eq!(
            dest(&rules, "sub/c.txt", false).unwrap().unwrap().1,
            "sub/c.txt"
        );
    }

    #[test]
    fn the_sandbox_keeps_paths_but_not_reserved_names() {
        let rules = OutputRules::sandbox(Path::new("/sb"), &["data.qcow2".to_owned()]);
        assert_eq!(dest(&rules, "a/b", false).unwrap().unwrap().1, "a/b");
        for bad in [
            "data.qcow2",
            ".job.ad",
            "_condor_stdout",
            "_condor_x/y",
            ".chirp.config",
        ] {
            assert!(
                matches!(
                    dest(&rules, bad, false),
                    Err(RuleRefusal::ReservedName { .. })
                ),
                "{bad}"
            );
        }
    }
}
