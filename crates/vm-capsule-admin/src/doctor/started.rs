//! Run a program the way an HTCondor daemon starts it, to see that it works there: the
//! startd cron (`CronJob::StartJobProcess`: argv[0] is the cron job's name, then
//! `STARTD_CRON_<NAME>_ARGS`; the startd's environment plus `_ENV`; `_CWD` or the startd's
//! working directory, its `LOG`; the condor user) and the vm-gahp's `LIBVIRT_XML_SCRIPT`
//! (`VirshType::CreateVirshConfigFile`: argv[0] is its path, then `LIBVIRT_XML_SCRIPT_ARGS`;
//! root).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::ConfigSource;
use vm_capsule_core::job::args::{parse_env_v1_raw_or_v2_quoted, split_v1_raw_or_v2_quoted};

/// Longest a program run by doctor may take.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of a program's output kept.
const MAX_OUTPUT: u64 = 1 << 20;

/// A program as an HTCondor daemon starts it.
#[derive(Debug, Clone)]
pub struct Start {
    /// The executable.
    pub exe: PathBuf,
    /// argv, argv[0] included.
    pub argv: Vec<OsString>,
    /// Variables added to doctor's own environment (which stands for the daemon's).
    pub env: Vec<(String, String)>,
    /// Working directory (`None`: doctor's own).
    pub cwd: Option<PathBuf>,
    /// (uid, gid) to run as (`None`: doctor's own).
    pub user: Option<(u32, u32)>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Ran {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Ran {
    /// The last non-empty line of stderr, for a one-line report.
    pub fn last_error_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(nothing on stderr)")
    }
}

impl Start {
    /// Startd cron job `name` of `config`, or why its knobs are unusable.
    ///
    /// # Errors
    /// When `_EXECUTABLE` is unset or `_ARGS` / `_ENV` do not parse as HTCondor parses them.
    pub fn startd_cron(config: &ConfigSource, name: &str) -> Result<Start, String> {
        let knob = |k: &str| config.get(&format!("STARTD_CRON_{name}_{k}"));
        let exe = knob("EXECUTABLE")
            .map(|e| PathBuf::from(e.trim()))
            .ok_or_else(|| format!("STARTD_CRON_{name}_EXECUTABLE is not set"))?;
        let mut argv: Vec<OsString> = vec![name.into()];
        if let Some(args) = knob("ARGS") {
            let args = split_v1_raw_or_v2_quoted(&args, "STARTD_CRON_<NAME>_ARGS")
                .map_err(|e| e.to_string())?;
            argv.extend(args.into_iter().map(OsString::from));
        }
        let env = match knob("ENV") {
            Some(e) => parse_env_v1_raw_or_v2_quoted(&e, "STARTD_CRON_<NAME>_ENV")
                .map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let cwd = knob("CWD")
            .or_else(|| config.get("LOG"))
            .map(|d| PathBuf::from(d.trim()))
            .filter(|d| d.is_dir());
        Ok(Start {
            exe,
            argv,
            env,
            cwd,
            user: condor_user(config),
        })
    }

    /// The vm-gahp's `LIBVIRT_XML_SCRIPT`, when set.
    ///
    /// # Errors
    /// When `LIBVIRT_XML_SCRIPT_ARGS` does not parse as HTCondor parses it.
    pub fn libvirt_script(config: &ConfigSource) -> Result<Option<Start>, String> {
        let Some(exe) = config.get("LIBVIRT_XML_SCRIPT") else {
            return Ok(None);
        };
        let exe = PathBuf::from(exe.trim());
        let mut argv: Vec<OsString> = vec![exe.clone().into()];
        if let Some(args) = config.get("LIBVIRT_XML_SCRIPT_ARGS") {
            let args = split_v1_raw_or_v2_quoted(&args, "LIBVIRT_XML_SCRIPT_ARGS")
                .map_err(|e| e.to_string())?;
            argv.extend(args.into_iter().map(OsString::from));
        }
        Ok(Some(Start {
            exe,
            argv,
            env: Vec::new(),
            cwd: None,
            user: None,
        }))
    }

    /// Whether this is vm-capsule: the executable's name, or the program a link leads to.
    pub fn is_vm_capsule(&self) -> bool {
        let ours = |p: &Path| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "vm-capsule" || n.starts_with("vm-capsule-"))
        };
        ours(&self.exe) || std::fs::canonicalize(&self.exe).is_ok_and(|p| ours(&p))
    }

    /// The vm-capsule command this start runs, when it names one (`None`: a usage error).
    pub fn command(&self) -> Option<String> {
        crate::snippet::command_of(&self.argv)
    }

    /// The command line for a message: `argv[0]` = ..., then the arguments.
    pub fn describe(&self) -> String {
        let args: Vec<String> = self.argv[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!(
            "{} with argv[0] `{}` and arguments [{}]",
            self.exe.display(),
            self.argv[0].to_string_lossy(),
            args.join(" ")
        )
    }

    /// Run it with `stdin`, bounded in time and output.
    ///
    /// # Errors
    /// When it cannot be started or does not end in time.
    pub fn run(&self, stdin: &[u8]) -> Result<Ran, String> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg0(&self.argv[0])
            .args(&self.argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        let input = stdin.to_vec();
        let mut pipe_in = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(p) = pipe_in.as_mut() {
                let _ = p.write_all(&input);
            }
        });
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                if let Some(p) = pipe {
                    let _ = p.take(MAX_OUTPUT).read_to_end(&mut out);
                }
                String::from_utf8_lossy(&out).into_owned()
            })
        };
        let out = reader(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = reader(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() < TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not end within {} s",
                        self.exe.display(),
                        TIMEOUT.as_secs()
                    ));
                }
            }
        };
        let _ = writer.join();
        Ok(Ran {
            code: status.code(),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }
}

/// The user HTCondor's daemons run cron jobs as, when doctor runs as root: `CONDOR_IDS`, else
/// the `condor` account.
fn condor_user(config: &ConfigSource) -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    if let Some(ids) = config.get("CONDOR_IDS") {
        let (u, g) = ids.trim().split_once('.')?;
        return Some((u.trim().parse().ok()?, g.trim().parse().ok()?));
    }
    let u = super::execute::SlotUser::lookup("condor").ok()?;
    Some((u.uid, *u.gids.first()?))
}
