//! Settings: every `VM_CAPSULE_*` knob, read once at the program's edge into a [`Settings`],
//! from which each hook and command takes the typed projection it needs.
//!
//! [`knobs::KNOBS`] is the one table of knobs (name, type, default, side, meaning); loading,
//! validation, the `config.d` snippet, `doctor`'s checks and the documentation ([`docs`]) are
//! all produced from it. Sources, later winning: `condor_config_val -dump VM_CAPSULE_`
//! (found as [`crate::condor_tools`] says, when no `--config` is given; hooks inherit the
//! router's `CONDOR_CONFIG`) or a config file in the HTCondor syntax subset
//! ([`crate::condor_config`]), then `_CONDOR_<KNOB>` environment variables.

pub mod docs;
mod host_paths;
pub mod knobs;
mod projections;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::condor_config::{parse_config, SyntaxError};
use crate::condor_tools::ToolSearch;
use crate::environment::Environment;
pub use knobs::{Kind, Knob, Side, KNOBS};
pub use projections::{
    CleanupSettings, FinalizeSettings, HookLogSettings, LibvirtXmlSettings, NodePolicySettings,
    RoutedUniverse, RunSettings, TranslateSettings, Unfit, WhichLog,
};

/// The prefix of every knob's name.
const PREFIX: &str = "VM_CAPSULE_";

/// Configuration that cannot be read, or a knob whose value is wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SettingsError {
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
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// A knob that must be set is not.
    #[error("{knob} is not set; set it in the HTCondor configuration (see docs/ADMIN.md)")]
    Missing {
        /// The knob.
        knob: &'static str,
    },
    /// A knob whose value has the wrong form.
    #[error("{knob} = {value:?} is not {expected}; fix it in the HTCondor configuration (docs/ADMIN.md lists every knob)")]
    Invalid {
        /// The knob.
        knob: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: String,
    },
    /// An entry of a list knob that is wrong.
    #[error("{knob}: the entry {entry:?} is refused: {why}; fix: list absolute, normalised directories (`/cvmfs, /etc/grid-security/certificates`), each once, in the HTCondor configuration")]
    BadEntry {
        /// The knob.
        knob: &'static str,
        /// The entry.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The knobs as read, once, at the program's edge: raw values by upper-case name (after
/// expansion and `_CONDOR_` overrides), checked against the table by each projection.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: BTreeMap<String, String>,
    /// The running program (for the defaults beside it: the guest agent, the launcher).
    exe: Option<PathBuf>,
    /// Problems worth a log line (unknown `VM_CAPSULE_*` knobs).
    pub warnings: Vec<String>,
    /// Where the knobs came from (`condor_config_val /usr/bin/condor_config_val`, a file).
    pub source: String,
    /// Why the HTCondor configuration could not be read, when it could not: every knob then
    /// reads as unset (or as its `_CONDOR_` override), so an error about an unset knob must
    /// say this too.
    pub source_problem: Option<String>,
}

impl Settings {
    /// Read knobs from `config_file`, or from `condor_config_val` when none is given and it is
    /// found (where `env` says); then apply `_CONDOR_*` overrides from `env`, whose running
    /// program is the one the knobs' defaults are beside.
    ///
    /// # Errors
    /// [`SettingsError`] when the file cannot be read or parsed.
    pub fn load(config_file: Option<&Path>, env: &Environment) -> Result<Settings, SettingsError> {
        let mut source_problem = None;
        let (mut values, source) = match config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                (parse_config(&text, path)?, format!("{}", path.display()))
            }
            None => match from_condor_config_val(&env.tool_search()) {
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
        Ok(Settings {
            source,
            source_problem,
            ..Settings::from_values(&mut values, env)
        })
    }

    /// Settings from the variables of an HTCondor configuration read by the caller (`doctor`
    /// given a file: upper-case names, unexpanded), then `_CONDOR_*` overrides from `env`.
    pub fn from_config(vars: &BTreeMap<String, String>, env: &Environment) -> Settings {
        let mut values = vars
            .iter()
            .filter(|(k, _)| k.starts_with(PREFIX))
            .map(|(k, v)| (k.clone(), crate::condor_config::expand_vars(v, vars)))
            .collect();
        Settings::from_values(&mut values, env)
    }

    /// Our knobs of `values`, with `_CONDOR_*` overrides from `env`.
    fn from_values(values: &mut BTreeMap<String, String>, env: &Environment) -> Settings {
        for (name, value) in &env.vars {
            if let Some(knob) = name.strip_prefix("_CONDOR_") {
                values.insert(knob.to_ascii_uppercase(), value.clone());
            }
        }
        values.retain(|k, _| k.starts_with(PREFIX));
        Settings {
            warnings: unknown_knobs(values),
            values: std::mem::take(values),
            exe: env.current_exe.clone(),
            source: "literal values".to_owned(),
            source_problem: None,
        }
    }

    /// Settings from literal values (tests, `doctor` reading a file, `template check`), with a
    /// warning for each unknown `VM_CAPSULE_*` name.
    pub fn from_pairs<I, K, V>(pairs: I) -> Settings
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let values: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into().to_ascii_uppercase(), v.into()))
            .collect();
        Settings {
            warnings: unknown_knobs(&values),
            values,
            exe: None,
            source: "literal values".to_owned(),
            source_problem: None,
        }
    }

    /// No knobs, because the configuration could not be read (`why`).
    pub fn unreadable(why: String) -> Settings {
        Settings {
            source: "nothing (no HTCondor configuration)".to_owned(),
            source_problem: Some(why),
            ..Settings::default()
        }
    }

    /// The same settings, with `exe` as the running program.
    #[must_use]
    pub fn with_exe(mut self, exe: Option<PathBuf>) -> Settings {
        self.exe = exe;
        self
    }

    /// Whether `knob` is set (to something not blank).
    pub fn is_set(&self, knob: &Knob) -> bool {
        self.raw(knob).is_some()
    }

    /// The knobs of the table that are set, with their values.
    pub fn set_knobs(&self) -> impl Iterator<Item = (&'static Knob, &str)> + '_ {
        KNOBS.iter().filter_map(|k| self.raw(k).map(|v| (k, v)))
    }

    /// Check `knob`'s value (set or default) against its kind.
    ///
    /// # Errors
    /// [`SettingsError`] naming the knob, its value and what is expected.
    pub fn check(&self, knob: &Knob) -> Result<(), SettingsError> {
        match knob.kind {
            Kind::Path | Kind::PathOrNone | Kind::Text | Kind::Unused => Ok(()),
            Kind::AbsolutePath => self.absolute_path(knob).map(|_| ()),
            Kind::PathList => self.path_list(knob).map(|_| ()),
            Kind::Bytes | Kind::Mib | Kind::Seconds | Kind::Count => self.number(knob).map(|_| ()),
            Kind::Bool => self.flag(knob).map(|_| ()),
            Kind::Choice(_) => self.choice(knob).map(|_| ()),
        }
    }

    /// The value as set, trimmed, if not blank.
    fn raw(&self, knob: &Knob) -> Option<&str> {
        self.values
            .get(knob.name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The value as set, else the table's default value.
    fn value(&self, knob: &Knob) -> Option<&str> {
        self.raw(knob).or(match knob.default {
            knobs::DefaultValue::Value(v) => Some(v),
            knobs::DefaultValue::Required | knobs::DefaultValue::Described(_) => None,
        })
    }

    fn invalid(knob: &Knob, value: &str) -> SettingsError {
        SettingsError::Invalid {
            knob: knob.name,
            value: value.to_owned(),
            expected: knob.kind.expected(),
        }
    }

    /// A path knob (set, else its default).
    fn path(&self, knob: &Knob) -> Option<PathBuf> {
        self.value(knob).map(PathBuf::from)
    }

    /// A path knob that must be absolute when set.
    fn absolute_path(&self, knob: &Knob) -> Result<Option<PathBuf>, SettingsError> {
        match self.value(knob) {
            Some(v) if !Path::new(v).is_absolute() => Err(Settings::invalid(knob, v)),
            v => Ok(v.map(PathBuf::from)),
        }
    }

    /// A whole-number knob (set, else its default).
    fn number(&self, knob: &Knob) -> Result<Option<u64>, SettingsError> {
        self.value(knob)
            .map(|v| v.parse().map_err(|_| Settings::invalid(knob, v)))
            .transpose()
    }

    /// A whole-number knob with a default value in the table.
    fn number_or_default(&self, knob: &Knob) -> Result<u64, SettingsError> {
        self.number(knob)?
            .ok_or(SettingsError::Missing { knob: knob.name })
    }

    /// A boolean knob (HTCondor spellings, case-insensitive; unset is false).
    fn flag(&self, knob: &Knob) -> Result<bool, SettingsError> {
        match self.value(knob).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "no" | "0" | "f" | "n") => Ok(false),
            Some("true" | "yes" | "1" | "t" | "y") => Ok(true),
            Some(_) => Err(Settings::invalid(
                knob,
                self.value(knob).unwrap_or_default(),
            )),
        }
    }

    /// A choice knob: the table's spelling it matches (case-insensitive), or `None` unset.
    fn choice(&self, knob: &Knob) -> Result<Option<&'static str>, SettingsError> {
        let Kind::Choice(words) = knob.kind else {
            return Ok(None);
        };
        match self.value(knob) {
            None => Ok(None),
            Some(v) => words
                .iter()
                .find(|w| w.split('|').any(|s| s.eq_ignore_ascii_case(v)))
                .map(|w| Some(knobs::canonical(w)))
                .ok_or_else(|| Settings::invalid(knob, v)),
        }
    }
}

/// A warning for each `VM_CAPSULE_*` name we do not know (a typo is otherwise silent).
fn unknown_knobs(values: &BTreeMap<String, String>) -> Vec<String> {
    values
        .keys()
        .filter(|name| name.starts_with(PREFIX) && knobs::find(name).is_none())
        .map(|name| {
            format!(
                "unknown knob {name} is ignored (the known ones: `vm-capsule install-hooks --print`, docs/ADMIN.md)"
            )
        })
        .collect()
}

/// Run `condor_config_val -dump VM_CAPSULE_`; the error says why there are no values
/// (not installed where we looked, failed, unreadable output).
fn from_condor_config_val(
    tools: &ToolSearch,
) -> Result<(BTreeMap<String, String>, PathBuf), String> {
    let tool = tools.find("condor_config_val").map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests;
