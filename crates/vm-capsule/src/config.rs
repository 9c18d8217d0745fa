//! Knobs: the seed's `VM_CAPSULE_*` configuration and ours, read the way HTCondor tools do.
//!
//! Sources, later winning: `condor_config_val -dump VM_CAPSULE_` (found as
//! [`crate::condor_tools`] says, when no `--config` is given; hooks inherit the router's
//! `CONDOR_CONFIG`) or a config file in the
//! HTCondor syntax subset (`NAME = value`, `#` comments, `\` continuations, `$(NAME)`
//! expansion), then `_CONDOR_<KNOB>` environment variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// Every knob we understand, with its default and meaning (for docs and warnings).
pub const KNOBS: &[(&str, &str, &str)] = &[
    (
        "VM_CAPSULE_TEMPLATE",
        "(required)",
        "directory holding condor_vm_capsule/, the template VM",
    ),
    (
        "VM_CAPSULE_SCRATCH_DIR_PREFIX",
        "/tmp/vm-capsule",
        "per-job scratch dirs go under <prefix>/<owner>/",
    ),
    (
        "VM_CAPSULE_TRANSLATE_LOG",
        "/var/log/vm-capsule/TranslateLog",
        "log of the translate, update and cleanup hooks; each job owner writes <file>.<owner>",
    ),
    (
        "VM_CAPSULE_EXIT_LOG",
        "/var/log/vm-capsule/ExitLog",
        "log of the finalize hook; each job owner writes <file>.<owner>",
    ),
    (
        "VM_CAPSULE_MAX_TRANSLATE_LOG",
        "10485760",
        "bytes after which the translate log is renamed to <file>.old (0: never)",
    ),
    (
        "VM_CAPSULE_MAX_EXIT_LOG",
        "10485760",
        "bytes after which the finalize log is renamed to <file>.old (0: never)",
    ),
    (
        "VM_CAPSULE_DEBUG",
        "false",
        "true: the hooks also log DEBUG lines (as --debug does)",
    ),
    (
        "VM_CAPSULE_DISK_PART_OFFSET",
        "(from the template's data disk, else 1048576)",
        "byte offset of the data disk's FAT partition",
    ),
    (
        "VM_CAPSULE_CONDOR_TARBALL",
        "(unused)",
        "seed knob: a Condor tarball for the guest; capsule-init needs none",
    ),
    (
        "VM_CAPSULE_CONDOR_TARBALL_VERSION",
        "(unused)",
        "seed knob: version of that tarball",
    ),
    (
        "VM_CAPSULE_INIT_SCRIPT_PATH",
        "capsule-init beside the vm-capsule binary",
        "the guest agent copied onto the data disk; none: the guest image has its own",
    ),
    (
        "VM_CAPSULE_DATA_DISK_MOUNT_POINT",
        "/condor-data",
        "where the guest mounts the data disk (seed layout)",
    ),
    (
        "VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE",
        "(classad-template.ad in VM_CAPSULE_TEMPLATE when there is one, else built-in kvm defaults)",
        "condor_submit -dump output of the admin's VM submit file",
    ),
    (
        "VM_CAPSULE_DATA_DISK_LABEL",
        "CONDORDATA",
        "FAT volume label of the data disk",
    ),
    (
        "VM_CAPSULE_OUTPUT_HEADROOM_MB",
        "256",
        "free space on the data disk for outputs when RequestDisk is unset",
    ),
    (
        "VM_CAPSULE_VM_MEMORY_MB",
        "512",
        "VM memory when neither the template nor RequestMemory says",
    ),
    (
        "VM_CAPSULE_JOB_USER",
        "condor",
        "user the job runs as inside the guest (fallback nobody)",
    ),
    (
        "VM_CAPSULE_WALL_TIME_LIMIT",
        "0 (none)",
        "seconds before the guest agent kills the job",
    ),
    (
        "VM_CAPSULE_MAX_DATA_DISK_MB",
        "65536",
        "largest data disk translate creates; bigger jobs are held",
    ),
    (
        "VM_CAPSULE_ROUTED_UNIVERSE",
        "(from the route: 13 vm, 5 vanilla)",
        "vm or vanilla: the kind of routed job, overriding the route",
    ),
    (
        "VM_CAPSULE_FLAVOUR",
        "vanilla",
        "the flavour the shipped route gives every +WantJobRouter job: vanilla (QEMU inside ordinary slots) or vm (the VM universe); HTCondor reads it, in JOB_ROUTER_ROUTE_NAMES",
    ),
    (
        "VM_CAPSULE_LAUNCHER_PATH",
        "the vm-capsule binary running the hook",
        "launcher a vanilla-flavour job runs (a static vm-capsule build)",
    ),
    (
        "VM_CAPSULE_NODE_LAUNCHER",
        "(unset: the launcher travels with each job)",
        "vanilla flavour: vm-capsule's path on the execute nodes; jobs run it there with the capsule-init beside it, ship neither, and match nodes advertising this version",
    ),
    (
        "VM_CAPSULE_BOOT_TIMEOUT",
        "600",
        "vanilla flavour: seconds allowed for boot and poweroff beyond the job's time limit",
    ),
    (
        "VM_CAPSULE_AGENT_START",
        "image",
        "image: the guest image starts capsule-init (unit); cloud-init: the data disk is also a NoCloud seed that runs it",
    ),
    (
        "VM_CAPSULE_NODE_IMAGE_DIR",
        "(unset: the OS disk travels with each job)",
        "directory on every execute node holding the template's OS disk and its .sha256",
    ),
    (
        "VM_CAPSULE_HOOK_TIMEOUT",
        "3600",
        "seconds a hook may run; then translate gives up (retried) and finalize reports failure",
    ),
    (
        "VM_CAPSULE_KEEP_FAILED",
        "10",
        "failed job dirs kept per owner for inspection; older ones are removed",
    ),
    (
        "VM_CAPSULE_TEST_ANY_USER",
        "false",
        "tests only: let hooks run as root or as a user other than the job's owner",
    ),
    (
        "VM_CAPSULE_QEMU",
        "(qemu-system-x86_64 on PATH, else /usr/libexec/qemu-kvm)",
        "execute nodes: the QEMU the launcher runs and the probe checks",
    ),
    (
        "VM_CAPSULE_LIBVIRT_DOMAIN_TYPE",
        "auto",
        "execute nodes, VM universe: kvm, qemu (TCG) or auto (kvm where the node has it)",
    ),
    (
        "VM_CAPSULE_LIBVIRT_OTHER_JOBS",
        "refuse",
        "execute nodes, VM universe: what VM jobs that are not vm-capsule jobs get from the libvirt script: refuse, or builtin (HTCondor's own XML)",
    ),
];

/// Configuration that cannot be read or is invalid.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not `NAME = value`.
    #[error("{path}:{line}: expected NAME = value, found {text:?}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
    },
    /// A knob that must be set is not.
    #[error("{knob} is not set; set it in the HTCondor configuration (see docs/ADMIN.md)")]
    Missing {
        /// The knob.
        knob: &'static str,
    },
    /// A knob whose value has the wrong form.
    #[error("{knob} = {value:?} is not {expected}")]
    Invalid {
        /// The knob.
        knob: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

/// Raw knob values by upper-case name, after expansion, plus warnings about them.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    values: BTreeMap<String, String>,
    /// Problems worth a log line (unknown `VM_CAPSULE_*` knobs).
    pub warnings: Vec<String>,
    /// Where the knobs came from (`condor_config_val /usr/bin/condor_config_val`, a file).
    pub source: String,
    /// Why the HTCondor configuration could not be read, when it could not: every knob then
    /// reads as unset (or as its `_CONDOR_` override), so an error about an unset knob must
    /// say this too.
    pub source_problem: Option<String>,
}

impl Knobs {
    /// Read knobs from `config_file`, or from `condor_config_val` when none is given and it is
    /// on `PATH`; then apply `_CONDOR_*` overrides from `env`.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or parsed.
    pub fn load(
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Knobs, ConfigError> {
        let mut source_problem = None;
        let (mut values, source) = match config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                (parse_config(&text, path)?, format!("{}", path.display()))
            }
            None => match from_condor_config_val() {
                Ok((values, tool)) => (values, format!("{}", tool.display())),
                Err(problem) => {
                    source_problem = Some(problem);
                    (
                        BTreeMap::new(),
                        "nothing (no HTCondor configuration)".to_owned(),
                    )
                }
            },
        };
        for (name, value) in env {
            if let Some(knob) = name.strip_prefix("_CONDOR_") {
                values.insert(knob.to_ascii_uppercase(), value);
            }
        }
        let warnings = unknown_knobs(&values);
        values.retain(|k, _| k.starts_with("VM_CAPSULE_"));
        Ok(Knobs {
            values,
            warnings,
            source,
            source_problem,
        })
    }

    /// Knobs from a literal map (tests, and callers that already have values).
    pub fn from_pairs<I, K, V>(pairs: I) -> Knobs
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Knobs {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.into().to_ascii_uppercase(), v.into()))
                .collect(),
            warnings: Vec::new(),
            source: "literal values".to_owned(),
            source_problem: None,
        }
    }

    /// The same knobs, with a warning for each unknown `VM_CAPSULE_*` name.
    #[must_use]
    pub fn with_unknown_warnings(mut self) -> Knobs {
        self.warnings = unknown_knobs(&self.values);
        self
    }

    /// The value of `knob`, if set and not empty.
    pub fn get(&self, knob: &str) -> Option<&str> {
        self.values
            .get(&knob.to_ascii_uppercase())
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
            .map(str::trim)
    }

    /// A path knob.
    pub fn path(&self, knob: &str) -> Option<PathBuf> {
        self.get(knob).map(PathBuf::from)
    }

    /// An unsigned integer knob.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when set to something that is not a number.
    pub fn number(&self, knob: &'static str) -> Result<Option<u64>, ConfigError> {
        match self.get(knob) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ConfigError::Invalid {
                knob,
                value: v.to_owned(),
                expected: "a whole number",
            }),
        }
    }
}

impl Knobs {
    /// A boolean knob (HTCondor spellings: true/false, yes/no, 1/0, case-insensitive).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for anything else.
    pub fn flag(&self, knob: &'static str) -> Result<bool, ConfigError> {
        match self.get(knob).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "no" | "0" | "f" | "n") => Ok(false),
            Some("true" | "yes" | "1" | "t" | "y") => Ok(true),
            Some(v) => Err(ConfigError::Invalid {
                knob,
                value: v.to_owned(),
                expected: "true or false",
            }),
        }
    }
}

/// A warning for each `VM_CAPSULE_*` name we do not know (a typo is otherwise silent).
fn unknown_knobs(values: &BTreeMap<String, String>) -> Vec<String> {
    values
        .keys()
        .filter(|name| name.starts_with("VM_CAPSULE_") && !KNOBS.iter().any(|(k, _, _)| k == *name))
        .map(|name| {
            format!(
                "unknown knob {name} is ignored (the known ones: `vm-capsule install-hooks --print`, docs/ADMIN.md)"
            )
        })
        .collect()
}

/// Run `condor_config_val -dump VM_CAPSULE_`; the error says why there are no values
/// (not installed where we looked, failed, unreadable output).
fn from_condor_config_val() -> Result<(BTreeMap<String, String>, PathBuf), String> {
    let tool = crate::condor_tools::condor_tool("condor_config_val").map_err(|e| e.to_string())?;
    let out = Command::new(&tool)
        .args(["-dump", "VM_CAPSULE_"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -dump VM_CAPSULE_ failed ({}): {}",
            tool.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The dump is already expanded: `NAME = value` lines and `#` comments.
    let values = parse_config(&text, &tool).map_err(|e| e.to_string())?;
    Ok((values, tool))
}

/// Parse the HTCondor config subset and expand `$(NAME)` references (case-insensitive,
/// unknown names expand to nothing, as HTCondor does).
///
/// # Errors
/// [`ConfigError::Syntax`] for a line that is not an assignment.
pub fn parse_config(text: &str, path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut raw: BTreeMap<String, String> = BTreeMap::new();
    let mut pending = String::new();
    let mut start_line = 0;
    for (i, line) in text.lines().enumerate() {
        if pending.is_empty() {
            start_line = i + 1;
        }
        let line = line.trim_end();
        if let Some(stripped) = line.strip_suffix('\\') {
            pending.push_str(stripped);
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let trimmed = full.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, value)) = trimmed.split_once('=') else {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line: start_line,
                text: trimmed.to_owned(),
            });
        };
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line: start_line,
                text: trimmed.to_owned(),
            });
        }
        let name = name.to_ascii_uppercase();
        let value = with_self_reference(&name, value.trim(), raw.get(&name).map(String::as_str));
        raw.insert(name, value);
    }
    let expanded = raw
        .iter()
        .map(|(k, v)| (k.clone(), expand(v, &raw, 0)))
        .collect();
    Ok(expanded)
}

/// `value` assigned to `name` (upper case) with its references to `name` itself replaced by
/// `previous`, the value before this assignment, as HTCondor does (`X = $(X) more` appends);
/// other references stay for later expansion.
pub fn with_self_reference(name: &str, value: &str, previous: Option<&str>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else {
            break;
        };
        out.push_str(&rest[..start]);
        if after[..end].trim().eq_ignore_ascii_case(name) {
            out.push_str(previous.unwrap_or_default());
        } else {
            out.push_str(&rest[start..start + 2 + end + 1]);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Expand `$(NAME)` in `value` from `vars` (upper-case names) as HTCondor does: unknown
/// names expand to nothing, cycles stop at a bounded depth.
pub fn expand_vars(value: &str, vars: &BTreeMap<String, String>) -> String {
    expand(value, vars, 0)
}

/// Expand `$(NAME)` in `value` from `vars`, to a bounded depth (cycles expand to nothing).
fn expand(value: &str, vars: &BTreeMap<String, String>, depth: usize) -> String {
    if depth > 16 {
        return String::new();
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim().to_ascii_uppercase();
        if let Some(v) = vars.get(&name) {
            out.push_str(&expand(v, vars, depth + 1));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_knob_that_names_itself_appends_to_its_previous_value() {
        let vars = parse_config(
            "L = a\nL = $(L) b\nl = $( l ),c $(M)\nM = m\nN = $(N)x\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(vars["L"], "a b,c m");
        assert_eq!(vars["N"], "x");
    }

    #[test]
    fn htcondor_syntax_subset() {
        let text = "# comment\nLOCAL_DIR = /var/lib/condor\nVM_CAPSULE_TEMPLATE = $(LOCAL_DIR)/vmt\nvm_capsule_scratch_dir_prefix = \\\n   /scratch\nVM_CAPSULE_BOGUS = 1\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.conf");
        std::fs::write(&path, text).unwrap();
        let env = vec![(
            "_CONDOR_VM_CAPSULE_EXIT_LOG".to_owned(),
            "/log/exit".to_owned(),
        )];
        let knobs = Knobs::load(Some(&path), env).unwrap();
        assert_eq!(
            knobs.get("VM_CAPSULE_TEMPLATE"),
            Some("/var/lib/condor/vmt")
        );
        assert_eq!(knobs.get("VM_CAPSULE_SCRATCH_DIR_PREFIX"), Some("/scratch"));
        assert_eq!(knobs.get("VM_CAPSULE_EXIT_LOG"), Some("/log/exit"));
        assert_eq!(knobs.warnings.len(), 1);
        assert!(knobs.warnings[0].contains("VM_CAPSULE_BOGUS"));
    }

    #[test]
    fn bad_lines_and_numbers() {
        let err = parse_config("A = 1\nnot an assignment\n", Path::new("x.conf")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.conf:2: expected NAME = value, found \"not an assignment\""
        );
        let knobs = Knobs::from_pairs([("VM_CAPSULE_VM_MEMORY_MB", "lots")]);
        assert!(knobs.number("VM_CAPSULE_VM_MEMORY_MB").is_err());
    }
}
