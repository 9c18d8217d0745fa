//! `vm-capsule translate|finalize|cleanup|update`: the JobRouter hooks, and `install-hooks`.
//!
//! HTCondor runs a hook by path with no arguments (JobRouterHookMgr: `spawn(client, NULL, ...)`),
//! so each hook is also reachable as its own executable name: `vm-capsule-translate`, ...
//! (links made by `install-hooks`) dispatch here by `argv[0]`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use vm_capsule::config::Knobs;
use vm_capsule::hooks::finalize::FinalizeConfig;
use vm_capsule::hooks::log::HookLog;
use vm_capsule::hooks::translate::{
    hold_original, translate, TranslateConfig, DEFAULT_HOOK_TIMEOUT_SECS, DEFAULT_KEEP_FAILED,
};
use vm_capsule::hooks::{ad_lines, cleanup, finalize, read_stdin, update, watchdog};
use vm_capsule::scratch::ScratchPrefix;

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
    let cfg = match TranslateConfig::from_knobs(&knobs) {
        Ok(c) => c,
        Err(e) => {
            // An admin problem, not the job's: let the router retry after the fix.
            log.error(&format!("{e:#}; the job stays idle until this is fixed"));
            return Ok(ExitCode::FAILURE);
        }
    };
    let limit = cfg.hook_timeout_secs;
    watchdog::arm(Duration::from_secs(limit), 1, move || {
        eprintln!(
            "vm-capsule translate: error: did not finish within {limit} s (VM_CAPSULE_HOOK_TIMEOUT); the JobRouter will try again"
        );
    });
    let stdin = match read_stdin(std::io::stdin()) {
        Ok(s) => s,
        Err(e) => {
            log.error(&e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let result = translate(&stdin, &cfg, &mut log);
    if !watchdog::claim_answer() {
        return Ok(ExitCode::FAILURE);
    }
    match result {
        Ok(done) => {
            stdout_write(&done.stdout)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            match err.job_to_hold() {
                // Hold the original so the user sees why (docs/DESIGN.md, holds), then exit
                // non-zero so the router yields it; stdout stays empty.
                Some(id) => {
                    log.error(&err.to_string());
                    hold_original(id, &err.to_string(), &mut log);
                }
                None if err.is_admin_problem() => log.error(&format!(
                    "{err}; no job is held for this, they stay idle until it is fixed"
                )),
                None => log.error(&format!("{err}; the JobRouter will try again")),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The finalize hook: exits 0 on every input (a non-zero exit loses the terminate event).
pub fn run_finalize(args: &HookArgs) -> Result<ExitCode> {
    let knobs = Knobs::load(args.config.as_deref(), std::env::vars()).unwrap_or_default();
    let mut log = HookLog::open("finalize", knobs.path("VM_CAPSULE_EXIT_LOG").as_deref());
    let limit = knobs
        .number("VM_CAPSULE_HOOK_TIMEOUT")
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_HOOK_TIMEOUT_SECS);
    watchdog::arm(Duration::from_secs(limit), 0, move || {
        let mut attrs = classad::ClassAd::new();
        finalize::failure_attributes(
            &mut attrs,
            &format!("finalize did not finish within {limit} s (VM_CAPSULE_HOOK_TIMEOUT); outputs may be incomplete"),
            None,
        );
        let _ = ad_lines(&attrs).map(|t| stdout_write(&t));
    });
    let cfg = FinalizeConfig {
        prefix: ScratchPrefix::new(&scratch_prefix(&knobs)),
        max_disk_bytes: knobs
            .number("VM_CAPSULE_MAX_DATA_DISK_MB")
            .ok()
            .flatten()
            .unwrap_or(64 * 1024)
            .saturating_mul(1 << 20),
        test_any_user: knobs.flag("VM_CAPSULE_TEST_ANY_USER").unwrap_or(false),
    };
    let done = match read_stdin(std::io::stdin()) {
        Ok(stdin) => finalize::finalize(&stdin, &cfg, &mut log),
        Err(e) => finalize::failed(&e, &mut log),
    };
    if !watchdog::claim_answer() {
        return Ok(ExitCode::SUCCESS);
    }
    let text = ad_lines(&done.attrs).context("cannot print the exit attributes")?;
    stdout_write(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn scratch_prefix(knobs: &Knobs) -> PathBuf {
    knobs
        .path("VM_CAPSULE_SCRATCH_DIR_PREFIX")
        .unwrap_or_else(|| PathBuf::from("/tmp/vm-capsule"))
}

/// The cleanup hook: always exits 0 (non-zero would re-run it every poll).
pub fn run_cleanup(args: &HookArgs) -> Result<ExitCode> {
    let knobs = Knobs::load(args.config.as_deref(), std::env::vars()).unwrap_or_default();
    let mut log = HookLog::open("cleanup", knobs.path("VM_CAPSULE_TRANSLATE_LOG").as_deref());
    let prefix = ScratchPrefix::new(&scratch_prefix(&knobs));
    let keep_failed = knobs
        .number("VM_CAPSULE_KEEP_FAILED")
        .ok()
        .flatten()
        .map_or(DEFAULT_KEEP_FAILED, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        });
    let test_any_user = knobs.flag("VM_CAPSULE_TEST_ANY_USER").unwrap_or(false);
    match read_stdin(std::io::stdin()) {
        Ok(stdin) => {
            cleanup::cleanup(&stdin, &prefix, keep_failed, test_any_user, &mut log);
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
