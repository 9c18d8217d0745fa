//! `doctor`: check a node's configuration before jobs arrive, and say what to fix.
//!
//! Submit side ([`submit`]): the configuration is readable, the knobs are valid, the hooks
//! are where HTCondor will run them, the agent is static and of our version, the scratch
//! prefix and log directories are shared the safe way, the template loads, the routes have
//! the right universe, `PIPE_BUFFER_MAX` is big enough. Execute side ([`execute`]): QEMU,
//! KVM for the slot users, the startd probe, the VM universe's libvirt settings.
//!
//! A check yields [`Finding`]s; the [`Report`] renders them for a person (one line each,
//! the fix under a problem) or as JSON for scripts.

pub mod execute;
mod policy;
pub(crate) mod started;
pub mod submit;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use vm_capsule_core::condor_config::expand_vars;
use vm_capsule_core::condor_tools::read_condor_config;
use vm_capsule_core::environment::Environment;
use vm_capsule_core::settings::Settings;

/// The knob that picks the shipped route (`JOB_ROUTER_ROUTE_NAMES` names `VMCapsule_<it>`).
pub const FLAVOUR_KNOB: &str = vm_capsule_core::settings::knobs::FLAVOUR.name;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Ok,
    /// Worth knowing, nothing to fix.
    Info,
    /// Works, but not as well as it could, or may bite later.
    Warn,
    /// Jobs will fail or never be routed.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One result of one check.
#[derive(Debug, Clone)]
pub struct Finding {
    /// `submit` or `execute`.
    pub side: &'static str,
    /// What was checked (a knob, a file, a setting).
    pub check: String,
    /// How it came out.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it, for a warning or failure.
    pub fix: Option<String>,
}

/// All findings of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// In check order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }

    /// The findings of check `check`.
    pub fn of<'a>(&'a self, check: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.check == check)
    }

    /// A report a person reads at a glance: one line per finding, grouped by side, the fix
    /// below each problem, a summary last.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let width = self
            .findings
            .iter()
            .map(|f| f.check.len())
            .max()
            .unwrap_or(0)
            .min(34);
        let mut side = "";
        for f in &self.findings {
            if f.side != side {
                side = f.side;
                let _ = writeln!(out, "{side} side");
            }
            let _ = writeln!(
                out,
                "  {:<4}  {:<width$}  {}",
                f.status.label(),
                f.check,
                f.detail
            );
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "  {:<4}  {:<width$}  fix: {fix}", "", "");
            }
        }
        let count = |s| self.findings.iter().filter(|f| f.status == s).count();
        let (fails, warns) = (count(Status::Fail), count(Status::Warn));
        let _ = writeln!(
            out,
            "{}: {fails} problem(s), {warns} warning(s)",
            if fails == 0 { "ready" } else { "NOT READY" }
        );
        out
    }

    /// The findings as JSON: `{"ok": bool, "findings": [{side, check, status, detail, fix}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let findings: Vec<serde_json::Value> = self
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "side": f.side,
                    "check": f.check,
                    "status": f.status.label().to_ascii_lowercase(),
                    "detail": f.detail,
                    "fix": f.fix,
                })
            })
            .collect();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "ok": !self.failed(),
            "findings": findings,
        })
    }
}

/// Findings of one side, collected by the checks.
#[derive(Debug)]
pub(crate) struct Side<'a> {
    side: &'static str,
    report: &'a mut Report,
}

impl Side<'_> {
    fn push(&mut self, status: Status, check: &str, detail: String, fix: Option<String>) {
        self.report.findings.push(Finding {
            side: self.side,
            check: check.to_owned(),
            status,
            detail,
            fix,
        });
    }

    fn ok(&mut self, check: &str, detail: impl Into<String>) {
        self.push(Status::Ok, check, detail.into(), None);
    }

    fn info(&mut self, check: &str, detail: impl Into<String>) {
        self.push(Status::Info, check, detail.into(), None);
    }

    fn warn(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(Status::Warn, check, detail.into(), Some(fix.into()));
    }

    fn fail(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(Status::Fail, check, detail.into(), Some(fix.into()));
    }
}

/// Where HTCondor configuration values come from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// `condor_config_val` (the configuration `CONDOR_CONFIG` names, as HTCondor reads it).
    Tool {
        /// `condor_config_val`.
        tool: PathBuf,
        /// `CONDOR_CONFIG`, as it was set.
        condor_config: Option<OsString>,
    },
    /// An HTCondor configuration file read by us (`--config`), with the local files it names.
    File(PathBuf, BTreeMap<String, String>),
    /// Nothing could be read: why.
    Missing(String),
}

impl ConfigSource {
    /// `condor_config_val` when it is found (where `env` says) and reads the configuration,
    /// else [`ConfigSource::Missing`].
    pub fn from_env(env: &Environment) -> ConfigSource {
        match env.tool_search().find("condor_config_val") {
            Ok(tool) => match config_readable(&tool) {
                Ok(()) => ConfigSource::Tool {
                    tool,
                    condor_config: env.condor_config.clone(),
                },
                Err(why) => ConfigSource::Missing(format!(
                    "{} cannot read the configuration (CONDOR_CONFIG={}): {why}",
                    tool.display(),
                    shown(env.condor_config.as_deref())
                )),
            },
            Err(e) => ConfigSource::Missing(e.to_string()),
        }
    }

    /// An HTCondor configuration file.
    pub fn file(path: &Path) -> ConfigSource {
        ConfigSource::File(path.to_owned(), read_condor_config(path))
    }

    /// The value of `name`, expanded; `None` when not defined.
    pub fn get(&self, name: &str) -> Option<String> {
        match self {
            ConfigSource::Tool { tool, .. } => config_val(tool, &[name]),
            ConfigSource::File(_, vars) => vars
                .get(&name.to_ascii_uppercase())
                .map(|v| expand_vars(v, vars)),
            ConfigSource::Missing(_) => None,
        }
        .filter(|v| !v.trim().is_empty())
    }

    /// The value of `name` as daemon `subsys` sees it (`SUBSYS.NAME` first).
    pub fn get_for(&self, subsys: &str, name: &str) -> Option<String> {
        match self {
            ConfigSource::Tool { tool, .. } => config_val(tool, &["-subsystem", subsys, name]),
            _ => self
                .get(&format!("{subsys}.{name}"))
                .or_else(|| self.get(name)),
        }
        .filter(|v| !v.trim().is_empty())
    }

    /// The `VM_CAPSULE_*` knobs, with `_CONDOR_` overrides from `env` (whose running program
    /// is the one the knobs' defaults are beside).
    pub fn settings(&self, env: &Environment) -> Settings {
        match self {
            ConfigSource::File(_, vars) => Settings::from_config(vars, env),
            ConfigSource::Tool { .. } => Settings::load(None, env).unwrap_or_else(|e| {
                Settings::unreadable(e.to_string()).with_exe(env.current_exe.clone())
            }),
            ConfigSource::Missing(_) => Settings::from_config(&BTreeMap::new(), env),
        }
    }

    /// `VM_CAPSULE_FLAVOUR`, lower case: the flavour the shipped route offers.
    pub fn flavour(&self) -> Option<String> {
        self.get(FLAVOUR_KNOB)
            .map(|f| f.trim().to_ascii_lowercase())
    }

    /// A line saying where the configuration came from.
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::Tool {
                tool,
                condor_config,
            } => format!(
                "read with {} (CONDOR_CONFIG={})",
                tool.display(),
                shown(condor_config.as_deref())
            ),
            ConfigSource::File(p, _) => format!("read from {}", p.display()),
            ConfigSource::Missing(why) => why.clone(),
        }
    }
}

/// `CONDOR_CONFIG`'s value for a message.
fn shown(condor_config: Option<&OsStr>) -> String {
    condor_config.map_or_else(|| "unset".to_owned(), |c| c.to_string_lossy().into_owned())
}

/// Whether `condor_config_val` reads its configuration: `FULL_HOSTNAME` is defined by HTCondor
/// itself, so only a configuration it cannot find or parse makes it fail.
fn config_readable(tool: &Path) -> Result<(), String> {
    let out = Command::new(tool)
        .arg("FULL_HOSTNAME")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    let said: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .map(str::to_owned)
        .collect();
    Err(if said.is_empty() {
        format!("it exits with {}", out.status)
    } else {
        said.join(" ")
    })
}

fn config_val(tool: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(tool).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.trim_end_matches('\n').to_owned())
}

/// Whether HTCondor reads the package's configuration file `file`: a directory
/// `LOCAL_CONFIG_DIR` names holds it, or `LOCAL_CONFIG_FILE` names it. An HTCondor not from the
/// distribution's packages may read neither; then the file does nothing unless its lines were
/// copied elsewhere.
fn check_package_config(s: &mut Side<'_>, config: &ConfigSource, file: &Path) {
    const CHECK: &str = "package configuration";
    if matches!(config, ConfigSource::Missing(_)) {
        return;
    }
    let Ok(real) = std::fs::canonicalize(file) else {
        s.info(
            CHECK,
            format!(
                "{} is not here: the configuration's vm-capsule lines are its own",
                file.display()
            ),
        );
        return;
    };
    let same = |p: &str| std::fs::canonicalize(p.trim()).is_ok_and(|c| c == real);
    let list = |knob: &str| config.get(knob).unwrap_or_default();
    let dirs = list("LOCAL_CONFIG_DIR");
    if let Some(dir) = dirs
        .split([',', ' ', '\t'])
        .find(|d| !d.is_empty() && real.parent().is_some_and(|p| same_dir(d, p)))
    {
        s.ok(
            CHECK,
            format!("{} is read (LOCAL_CONFIG_DIR names {dir})", file.display()),
        );
        return;
    }
    if list("LOCAL_CONFIG_FILE").split([',', ' ', '\t']).any(same) {
        s.ok(
            CHECK,
            format!("{} is read (LOCAL_CONFIG_FILE names it)", file.display()),
        );
        return;
    }
    let dir = file
        .parent()
        .unwrap_or(Path::new("/"))
        .display()
        .to_string();
    let why = format!(
        "{} is not read: LOCAL_CONFIG_DIR = {} does not name {dir}, nor LOCAL_CONFIG_FILE the file (an HTCondor not installed from the distribution's packages?)",
        file.display(),
        if dirs.trim().is_empty() { "(unset)" } else { dirs.trim() }
    );
    if config.get("JOB_ROUTER_HOOK_KEYWORD").is_some() || config.get(FLAVOUR_KNOB).is_some() {
        s.info(
            CHECK,
            format!("{why}; the configuration has vm-capsule's lines from elsewhere: keep them in step with it after upgrades"),
        );
    } else {
        s.fail(
            CHECK,
            why,
            format!("in the configuration CONDOR_CONFIG names: LOCAL_CONFIG_DIR = $(LOCAL_CONFIG_DIR) {dir}; or copy {} into a directory LOCAL_CONFIG_DIR names", file.display()),
        );
    }
}

/// Whether directory `named` (as configured) is `dir` (canonical).
fn same_dir(named: &str, dir: &Path) -> bool {
    std::fs::canonicalize(named.trim()).is_ok_and(|c| c == dir)
}

/// Where the configuration came from, or a failure when it cannot be read.
fn check_config_source(s: &mut Side<'_>, config: &ConfigSource) {
    match config {
        ConfigSource::Missing(why) => s.fail(
            "configuration",
            format!("cannot read the HTCondor configuration: {why}"),
            "run doctor where HTCondor is installed, with the CONDOR_CONFIG its daemons use, or name the configuration with --config FILE",
        ),
        other => s.ok("configuration", other.describe()),
    }
}

/// Whether `dir` is made like `/tmp`: root-owned, mode 1777; else what is wrong.
pub(crate) fn shared_dir_problem(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return Some(format!("{}: {e}", dir.display())),
    };
    if !meta.is_dir() {
        return Some(format!("{} is not a directory", dir.display()));
    }
    let mode = meta.mode() & 0o7777;
    if mode != 0o1777 {
        return Some(format!(
            "{} has mode {mode:o}, not 1777 (every job owner writes there; the sticky bit keeps them apart)",
            dir.display()
        ));
    }
    if meta.uid() != 0 {
        return Some(format!(
            "{} belongs to uid {}, not root (its owner could delete everyone's files)",
            dir.display(),
            meta.uid()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn render_and_json() {
        let mut r = Report::default();
        let mut s = Side {
            side: "submit",
            report: &mut r,
        };
        s.ok("hooks", "all four");
        s.fail("VM_CAPSULE_TEMPLATE", "missing", "set it");
        let text = r.render();
        assert!(text.starts_with("submit side\n  ok    "), "{text}");
        assert!(
            text.contains("FAIL  VM_CAPSULE_TEMPLATE  missing\n"),
            "{text}"
        );
        assert!(text.contains("fix: set it"), "{text}");
        assert!(
            text.ends_with("NOT READY: 1 problem(s), 0 warning(s)\n"),
            "{text}"
        );
        let j = r.to_json();
        assert_eq!(j["ok"], false);
        assert_eq!(j["findings"][1]["status"], "fail");
        assert!(r.failed());
    }

    #[test]
    fn file_source_expands_and_knows_subsystems() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("condor_config");
        std::fs::write(
            &f,
            "LOCAL = /srv\nVM_CAPSULE_TEMPLATE = $(LOCAL)/t\nJOB_ROUTER.PIPE_BUFFER_MAX = 1048576\nX @=e\n  UNIVERSE VM\n@e\n",
        )
        .unwrap();
        let c = ConfigSource::file(&f);
        assert_eq!(c.get("vm_capsule_template").as_deref(), Some("/srv/t"));
        assert_eq!(
            c.get_for("JOB_ROUTER", "PIPE_BUFFER_MAX").as_deref(),
            Some("1048576")
        );
        assert_eq!(c.get_for("SCHEDD", "PIPE_BUFFER_MAX"), None);
        assert_eq!(c.get("X").as_deref(), Some("  UNIVERSE VM"));
        let env = Environment {
            vars: vec![(
                "_CONDOR_VM_CAPSULE_JOB_USER".to_owned(),
                "nobody".to_owned(),
            )],
            ..Environment::default()
        };
        let k = c.settings(&env).translate().unwrap();
        assert_eq!(k.template_root, Path::new("/srv/t"));
        assert_eq!(k.job_user, "nobody");
    }
}
