//! `vm-capsule translate|finalize|cleanup|update`: the JobRouter hooks, and `install-hooks`.
//!
//! HTCondor runs a hook by path with no arguments (JobRouterHookMgr: `spawn(client, NULL, ...)`),
//! so each hook is also reachable as its own executable name: `vm-capsule-translate`, ...
//! (links made by `install-hooks`) dispatch here by `argv[0]`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use vm_capsule::config::Knobs;
use vm_capsule::hooks::log::HookLog;
use vm_capsule::hooks::translate::{hold_original, translate, TranslateConfig, TranslateError};
use vm_capsule::hooks::{ad_lines, cleanup, finalize, read_stdin, update};

/// The hook names, as executables and subcommands.
pub const HOOKS: [&str; 4] = ["translate", "update", "finalize", "cleanup"];

/// Options every hook takes.
#[derive(Debug, Args)]
pub struct HookArgs {
    /// Read knobs from this file (HTCondor syntax) instead of `condor_config_val`.
    #[arg(long, env = "VM_CAPSULE_CONFIG")]
    config: Option<PathBuf>,
}

fn knobs(args: &HookArgs) -> Result<Knobs> {
    Knobs::load(args.config.as_deref(), std::env::vars()).context("cannot read the configuration")
}

fn stdout_write(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The translate hook.
pub fn run_translate(args: &HookArgs) -> Result<ExitCode> {
    let knobs = knobs(args)?;
    let mut log = HookLog::open(
        "translate",
        knobs.path("VM_CAPSULE_TRANSLATE_LOG").as_deref(),
    );
    for w in &knobs.warnings {
        log.warn(w);
    }
    let stdin = match read_stdin(std::io::stdin()) {
        Ok(s) => s,
        Err(e) => {
            log.error(&e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let cfg = match TranslateConfig::from_knobs(&knobs) {
        Ok(c) => c,
        Err(e) => {
            // An admin problem, not the job's: let the router retry after the fix.
            log.error(&format!("{e:#}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    match translate(&stdin, &cfg, &mut log) {
        Ok(done) => {
            stdout_write(&done.stdout)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(TranslateError::Transient(msg)) => {
            log.error(&format!("{msg}; the JobRouter will try again"));
            Ok(ExitCode::FAILURE)
        }
        Err(TranslateError::Permanent { job, reason }) => {
            log.error(&reason);
            // Hold the original so the user sees why (hold-path.md, option c), then exit
            // non-zero so the router yields it; stdout stays empty.
            if let Some(id) = job {
                hold_original(&id, &reason, &mut log);
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The finalize hook: always exits 0 once it could read its input.
pub fn run_finalize(args: &HookArgs) -> Result<ExitCode> {
    let knobs = knobs(args)?;
    let mut log = HookLog::open("finalize", knobs.path("VM_CAPSULE_EXIT_LOG").as_deref());
    let stdin = match read_stdin(std::io::stdin()) {
        Ok(s) => s,
        Err(e) => {
            log.error(&e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let done = finalize::finalize(&stdin, &mut log);
    let text = ad_lines(&done.attrs).context("cannot print the exit attributes")?;
    stdout_write(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The cleanup hook: always exits 0 (non-zero would re-run it every poll).
pub fn run_cleanup(args: &HookArgs) -> Result<ExitCode> {
    let knobs = knobs(args)?;
    let mut log = HookLog::open("cleanup", knobs.path("VM_CAPSULE_TRANSLATE_LOG").as_deref());
    let prefix = knobs
        .path("VM_CAPSULE_SCRATCH_DIR_PREFIX")
        .unwrap_or_else(|| PathBuf::from("/tmp/vm-capsule"));
    match read_stdin(std::io::stdin()) {
        Ok(stdin) => {
            cleanup::cleanup(&stdin, &prefix, &mut log);
        }
        Err(e) => log.error(&e),
    }
    Ok(ExitCode::SUCCESS)
}

/// The update hook: prints nothing, exits 0.
pub fn run_update(_args: &HookArgs) -> Result<ExitCode> {
    let stdin = read_stdin(std::io::stdin()).unwrap_or_default();
    stdout_write(&update::update(&stdin))?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `install-hooks`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Directory for the hook executables (must not be world-writable: HTCondor refuses it).
    dir: PathBuf,
    /// HTCondor hook keyword used in the printed configuration.
    #[arg(long, default_value = "VMCAPSULE")]
    keyword: String,
}

/// Make `vm-capsule-<hook>` links to this binary in a directory and print the config lines.
pub fn run_install(args: &InstallArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the vm-capsule binary")?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut lines = Vec::new();
    for hook in HOOKS {
        let link = args.dir.join(format!("vm-capsule-{hook}"));
        replace_symlink(&exe, &link)?;
        let knob = match hook {
            "translate" => "HOOK_TRANSLATE_JOB",
            "update" => "HOOK_UPDATE_JOB_INFO",
            "finalize" => "HOOK_JOB_FINALIZE",
            _ => "HOOK_JOB_CLEANUP",
        };
        lines.push(format!("{}_{knob} = {}", args.keyword, link.display()));
    }
    let capsule_init = exe.with_file_name("capsule-init");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# vm-capsule hooks installed in {}; add to the JobRouter's configuration:",
        args.dir.display()
    )?;
    writeln!(out, "JOB_ROUTER_HOOK_KEYWORD = {}", args.keyword)?;
    for l in lines {
        writeln!(out, "{l}")?;
    }
    writeln!(
        out,
        "VM_CAPSULE_INIT_SCRIPT_PATH = {}",
        capsule_init.display()
    )?;
    writeln!(
        out,
        "# see docs/ADMIN.md for the route, the template and the other knobs"
    )?;
    Ok(ExitCode::SUCCESS)
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(link)
            .with_context(|| format!("cannot replace {}", link.display()))?,
        Ok(_) => anyhow::bail!(
            "{} exists and is not a link; remove it first",
            link.display()
        ),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot create {}", link.display()))
}

/// The subcommand implied by the program name (`vm-capsule-translate` -> `translate`).
pub fn hook_from_argv0(argv0: &std::ffi::OsStr) -> Option<&'static str> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    let hook = name.strip_prefix("vm-capsule-")?;
    HOOKS.iter().copied().find(|h| *h == hook)
}
