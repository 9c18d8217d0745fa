//! HTCondor's command-line tools (`condor_config_val`, `condor_hold`), found the way a hook
//! can rely on.
//!
//! The JobRouter runs hooks with `PATH=/usr/bin:/bin` (as a real 24.0 pool did), so a
//! tarball install or any prefix outside those dirs is invisible by name. In
//! order, a tool is looked for in:
//! 1. `BIN` of the configuration `CONDOR_CONFIG` names (else `/etc/condor/condor_config`),
//!    with its `LOCAL_CONFIG_FILE` and `LOCAL_CONFIG_DIR`, `RELEASE_DIR` and the
//!    `_CONDOR_BIN` / `_CONDOR_RELEASE_DIR` overrides, as HTCondor itself reads them;
//! 2. the install of the daemon that started us (the pid in `CONDOR_INHERIT`, else the parent
//!    process): its executable's directory and the `bin` beside it;
//! 3. `PATH`.
//!
//! When none holds the tool, the error says exactly where it looked.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::condor_config::{expand_vars, with_self_reference, LogicalLines};
use crate::environment::Environment;

/// HTCondor's default configuration file when `CONDOR_CONFIG` is unset.
pub const DEFAULT_CONDOR_CONFIG: &str = "/etc/condor/condor_config";
/// Largest configuration file read while looking for `BIN` (HTCondor configs are a few KiB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Most files read from a `LOCAL_CONFIG_DIR`.
const MAX_CONFIG_DIR_FILES: usize = 256;

/// A tool none of the places held.
#[derive(Debug, Clone, Error)]
#[error("{name} not found: {}; hint: set JOB_ROUTER_ENVIRONMENT = \"PATH=<HTCondor's bin dir>:/usr/bin:/bin\" or BIN in the HTCondor configuration", .tried.join("; "))]
pub struct ToolNotFound {
    /// The tool.
    pub name: String,
    /// Each place looked at, and what was there.
    pub tried: Vec<String>,
}

/// Where to look: from the process environment ([`ToolSearch::new`]), or a fixed one (tests).
#[derive(Debug, Clone, Default)]
pub struct ToolSearch {
    /// `CONDOR_CONFIG` (`None`: unset).
    pub condor_config: Option<PathBuf>,
    /// `_CONDOR_BIN` and `_CONDOR_RELEASE_DIR` overrides.
    pub env_bin: Option<PathBuf>,
    /// `_CONDOR_RELEASE_DIR`.
    pub env_release_dir: Option<PathBuf>,
    /// The pid of the HTCondor daemon that started us.
    pub daemon_pid: Option<u32>,
    /// `PATH`.
    pub path: Option<OsString>,
}

impl ToolSearch {
    /// The search a process with environment `env` would do (and its parent process, when
    /// `CONDOR_INHERIT` names no daemon).
    pub fn new(env: &Environment) -> ToolSearch {
        let set = |v: &Option<OsString>| v.clone().filter(|v| !v.is_empty());
        let inherit_pid = env
            .condor_inherit
            .as_deref()
            .and_then(|v| v.split_whitespace().next().and_then(|p| p.parse().ok()));
        ToolSearch {
            condor_config: set(&env.condor_config).map(PathBuf::from),
            env_bin: set(&env.condor_bin).map(PathBuf::from),
            env_release_dir: set(&env.condor_release_dir).map(PathBuf::from),
            daemon_pid: inherit_pid.or_else(|| Some(std::os::unix::process::parent_id())),
            path: set(&env.path),
        }
    }

    /// Find tool `name`.
    ///
    /// # Errors
    /// [`ToolNotFound`] listing every place looked at.
    pub fn find(&self, name: &str) -> Result<PathBuf, ToolNotFound> {
        let mut tried = Vec::new();
        let (dirs, note) = self.config_bin_dirs();
        tried.push(note);
        for dir in dirs {
            if let Some(found) = executable_in(&dir, name) {
                return Ok(found);
            }
            tried.push(format!("not in {}", dir.display()));
        }
        match self.daemon_dirs() {
            Ok(dirs) => {
                for dir in &dirs {
                    if let Some(found) = executable_in(dir, name) {
                        return Ok(found);
                    }
                }
                if !dirs.is_empty() {
                    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                    tried.push(format!(
                        "not beside the HTCondor daemon that started us ({})",
                        list.join(", ")
                    ));
                }
            }
            Err(why) => tried.push(why),
        }
        let path = self.path.clone().unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            if let Some(found) = executable_in(&dir, name) {
                return Ok(found);
            }
        }
        tried.push(format!("not on PATH ({})", path.to_string_lossy()));
        Err(ToolNotFound {
            name: name.to_owned(),
            tried,
        })
    }

    /// `BIN` dirs the configuration names, and a note saying what was read.
    fn config_bin_dirs(&self) -> (Vec<PathBuf>, String) {
        if let Some(bin) = &self.env_bin {
            return (
                vec![bin.clone()],
                format!("_CONDOR_BIN is {}", bin.display()),
            );
        }
        let file = self
            .condor_config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONDOR_CONFIG));
        let vars = read_condor_config(&file);
        let release = self
            .env_release_dir
            .as_ref()
            .map(|p| p.display().to_string())
            .or_else(|| vars.get("RELEASE_DIR").cloned())
            .filter(|v| !v.is_empty());
        let bin = vars
            .get("BIN")
            .filter(|v| !v.is_empty())
            .map(|b| {
                let mut vars = vars.clone();
                if let Some(r) = &release {
                    vars.insert("RELEASE_DIR".to_owned(), r.clone());
                }
                expand_vars(b, &vars)
            })
            .or_else(|| release.as_ref().map(|r| format!("{r}/bin")));
        let source = if self.condor_config.is_some() {
            format!("CONDOR_CONFIG={}", file.display())
        } else {
            format!("{} (CONDOR_CONFIG unset)", file.display())
        };
        match bin {
            Some(bin) if !bin.trim().is_empty() => (
                vec![PathBuf::from(bin.trim())],
                format!("{source} names BIN {}", bin.trim()),
            ),
            _ => (Vec::new(), format!("{source} names no BIN or RELEASE_DIR")),
        }
    }

    /// The directories of the HTCondor daemon that started us.
    fn daemon_dirs(&self) -> Result<Vec<PathBuf>, String> {
        let Some(pid) = self.daemon_pid else {
            return Ok(Vec::new());
        };
        let exe = fs::read_link(format!("/proc/{pid}/exe")).or_else(|e| {
            // A daemon running as another user hides its exe link; argv[0] is readable.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).map_err(|_| {
                format!("cannot see the executable of the parent process {pid}: {e}")
            })?;
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let argv0 = PathBuf::from(String::from_utf8_lossy(argv0).into_owned());
            if argv0.is_absolute() {
                Ok(argv0)
            } else {
                Err(format!(
                    "cannot see the executable of the parent process {pid} ({e}; argv[0] {} is not a path)",
                    argv0.display()
                ))
            }
        })?;
        let is_condor = exe
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("condor_"));
        if !is_condor {
            return Ok(Vec::new());
        }
        let Some(dir) = exe.parent() else {
            return Ok(Vec::new());
        };
        // sbin/condor_job_router -> bin; libexec/condor/x -> bin.
        let mut dirs = vec![dir.to_path_buf()];
        for up in [dir.parent(), dir.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            dirs.push(up.join("bin"));
        }
        Ok(dirs)
    }
}

fn executable_in(dir: &Path, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let candidate = dir.join(name);
    let meta = fs::metadata(&candidate).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
}

/// The plain `NAME = value` assignments of an HTCondor configuration file and of the local
/// files it names (`LOCAL_CONFIG_FILE`, `LOCAL_CONFIG_DIR`), later files winning, unexpanded.
/// Anything else (`include`, `use`, `if` blocks, `@=` texts) is skipped: this is only to find
/// where HTCondor is installed, the tools themselves read the real thing.
pub fn read_condor_config(file: &Path) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    scan_file(file, &mut vars);
    let locals: Vec<PathBuf> = vars
        .get("LOCAL_CONFIG_FILE")
        .map(|v| {
            expand_vars(v, &vars)
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    for local in locals {
        scan_file(&local, &mut vars);
    }
    if let Some(dir) = vars.get("LOCAL_CONFIG_DIR").map(|d| expand_vars(d, &vars)) {
        for d in dir.split([',', ' ']).filter(|s| !s.is_empty()) {
            let Ok(entries) = fs::read_dir(d) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    // HTCondor's LOCAL_CONFIG_DIR_EXCLUDE_REGEXP default skips these.
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
                    !(name.starts_with('.')
                        || name.ends_with('~')
                        || name.ends_with(".rpmsave")
                        || name.ends_with(".rpmnew")
                        || name.ends_with(".dpkg-old")
                        || name.ends_with(".dpkg-new")
                        || name.ends_with(".dpkg-dist"))
                })
                .take(MAX_CONFIG_DIR_FILES)
                .collect();
            files.sort();
            for f in files {
                scan_file(&f, &mut vars);
            }
        }
    }
    vars
}

fn scan_file(file: &Path, vars: &mut BTreeMap<String, String>) {
    use std::io::Read;
    let Ok(f) = fs::File::open(file) else {
        return;
    };
    let mut text = String::new();
    if f.take(MAX_CONFIG_BYTES).read_to_string(&mut text).is_err() {
        return;
    }
    scan_assignments(&text, vars);
}

/// Add the assignments of `text` to `vars`: `NAME = value` and `NAME @=tag` blocks (the
/// value keeps its line breaks); other statements are skipped (see [`read_condor_config`]).
pub fn scan_assignments(text: &str, vars: &mut BTreeMap<String, String>) {
    let mut lines = LogicalLines::new(text);
    while let Some((_, full)) = lines.next() {
        let trimmed = full.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // `NAME @=tag` ... `@tag`: a multi-line value, kept with its line breaks.
        if let Some((name, tag)) = trimmed.split_once("@=") {
            let end = format!("@{}", tag.trim());
            let mut value = Vec::new();
            while let Some(l) = lines.next_physical() {
                if l.trim() == end {
                    break;
                }
                value.push(l);
            }
            let name = name.trim();
            if is_knob_name(name) {
                vars.insert(name.to_ascii_uppercase(), value.join("\n"));
            }
            continue;
        }
        let Some((name, value)) = trimmed.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if is_knob_name(name) {
            let name = name.to_ascii_uppercase();
            let value =
                with_self_reference(&name, value.trim(), vars.get(&name).map(String::as_str));
            vars.insert(name, value);
        }
    }
}

fn is_knob_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.".contains(c))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tool(dir: &Path, name: &str) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn search(config: &Path) -> ToolSearch {
        ToolSearch {
            condor_config: Some(config.to_owned()),
            path: Some("/nonexistent".into()),
            ..ToolSearch::default()
        }
    }

    #[test]
    fn bin_from_release_dir_in_a_local_config_dir() {
        let t = tempfile::tempdir().unwrap();
        let prefix = t.path().join("condor");
        let want = tool(&prefix.join("bin"), "condor_hold");
        let conf = t.path().join("condor_config");
        let d = t.path().join("config.d");
        fs::create_dir(&d).unwrap();
        fs::write(
            &conf,
            format!(
                "use SECURITY : HOST_BASED\nLOCAL_CONFIG_DIR = {}\nBIN = $(RELEASE_DIR)/bin\nSTART @=end\n  RELEASE_DIR = /wrong\n@end\nif version > 9\nendif\n",
                d.display()
            ),
        )
        .unwrap();
        fs::write(
            d.join("00-release"),
            format!("RELEASE_DIR = {}\n", prefix.display()),
        )
        .unwrap();
        fs::write(d.join("99-x.dpkg-old"), "RELEASE_DIR = /wrong\n").unwrap();
        assert_eq!(search(&conf).find("condor_hold").unwrap(), want);
        let vars = read_condor_config(&conf);
        assert_eq!(
            vars.get("START").map(String::as_str),
            Some("  RELEASE_DIR = /wrong")
        );
        assert_eq!(vars.get("RELEASE_DIR"), Some(&prefix.display().to_string()));
    }

    #[test]
    fn not_found_says_where_it_looked() {
        let t = tempfile::tempdir().unwrap();
        let conf = t.path().join("condor_config");
        fs::write(&conf, format!("RELEASE_DIR = {}\n", t.path().display())).unwrap();
        let err = search(&conf).find("condor_config_val").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("condor_config_val not found: "), "{text}");
        assert!(
            text.contains(&format!("names BIN {}/bin", t.path().display())),
            "{text}"
        );
        assert!(text.contains("not on PATH (/nonexistent)"), "{text}");
    }

    #[test]
    fn env_bin_wins_and_path_is_last() {
        let t = tempfile::tempdir().unwrap();
        let a = tool(&t.path().join("a"), "condor_hold");
        let b = tool(&t.path().join("b"), "condor_hold");
        let mut s = search(Path::new("/dev/null"));
        s.path = Some(t.path().join("b").into_os_string());
        assert_eq!(s.find("condor_hold").unwrap(), b);
        s.env_bin = Some(t.path().join("a"));
        assert_eq!(s.find("condor_hold").unwrap(), a);
    }

    #[test]
    fn daemon_install_dir_is_searched() {
        // Our own parent (the test runner) is not an HTCondor daemon: nothing from there.
        let s = ToolSearch {
            daemon_pid: Some(std::os::unix::process::parent_id()),
            ..search(Path::new("/dev/null"))
        };
        assert_eq!(s.daemon_dirs().unwrap(), Vec::<PathBuf>::new());
    }
}
