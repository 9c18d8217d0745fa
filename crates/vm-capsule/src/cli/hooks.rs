//! `vm-capsule translate|finalize|cleanup|update`: the JobRouter hooks.
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

use vm_capsule::agent;
use vm_capsule::config::Knobs;
use vm_capsule::hooks::finalize::FinalizeConfig;
use vm_capsule::hooks::log::{
    owner_name, HookLog, LogOptions, DEFAULT_LOG_DIR, DEFAULT_MAX_LOG_BYTES,
};
use vm_capsule::hooks::translate::{
    hold_original, translate, TranslateConfig, DEFAULT_HOOK_TIMEOUT_SECS, DEFAULT_KEEP_FAILED,
};
use vm_capsule::hooks::watchdog::Watchdog;
use vm_capsule::hooks::{ad_lines, cleanup, finalize, read_stdin, update};
use vm_capsule::scratch::ScratchPrefix;

/// Options every hook takes.
#[derive(Debug, Args)]
pub struct HookArgs {
    /// Read knobs from this file (HTCondor syntax) instead of `condor_config_val`.
    #[arg(long, env = "VM_CAPSULE_CONFIG")]
    config: Option<PathBuf>,
    /// Also log DEBUG lines (the knob VM_CAPSULE_DEBUG = true does the same for hooks,
    /// which HTCondor runs without arguments).
    #[arg(long)]
    debug: bool,
}

fn knobs(args: &HookArgs) -> Result<Knobs> {
    Knobs::load(args.config.as_deref(), std::env::vars()).context("cannot read the configuration")
}

/// Which log a hook writes.
struct LogKnobs {
    file: &'static str,
    max: &'static str,
    default_name: &'static str,
}

const TRANSLATE_LOG: LogKnobs = LogKnobs {
    file: "VM_CAPSULE_TRANSLATE_LOG",
    max: "VM_CAPSULE_MAX_TRANSLATE_LOG",
    default_name: "TranslateLog",
};
const EXIT_LOG: LogKnobs = LogKnobs {
    file: "VM_CAPSULE_EXIT_LOG",
    max: "VM_CAPSULE_MAX_EXIT_LOG",
    default_name: "ExitLog",
};

/// The log of `hook`: the owner's file named by the knobs, about the job on `stdin`.
fn hook_log(
    hook: &'static str,
    which: &LogKnobs,
    knobs: &Knobs,
    args: &HookArgs,
    stdin: Option<&str>,
) -> HookLog {
    let (job, owner) = stdin.map(job_of).unwrap_or_default();
    let mut problems = Vec::new();
    let max_bytes = knobs.number(which.max).unwrap_or_else(|e| {
        problems.push(e.to_string());
        None
    });
    let debug = knobs.flag("VM_CAPSULE_DEBUG").unwrap_or_else(|e| {
        problems.push(e.to_string());
        false
    });
    let opts = LogOptions {
        base: Some(
            knobs
                .path(which.file)
                .unwrap_or_else(|| Path::new(DEFAULT_LOG_DIR).join(which.default_name)),
        ),
        owner: owner_name(owner.as_deref()),
        max_bytes: max_bytes.unwrap_or(DEFAULT_MAX_LOG_BYTES),
        debug: args.debug || debug,
    };
    let mut log = HookLog::with_options(hook, &opts);
    if let Some(id) = job {
        log.set_job(&id);
    }
    for p in problems {
        log.warn(&p);
    }
    for w in &knobs.warnings {
        log.warn(w);
    }
    log.debug(&format!("knobs from {}", knobs.source));
    if let Some(p) = &knobs.source_problem {
        log.info(&format!("the HTCondor configuration was not read: {p}"));
    }
    log
}

/// The job a hook's stdin is about (`RoutedFromJobId` of a routed ad, else `ClusterId.ProcId`
/// of the first job ad) and its `Owner`.
fn job_of(stdin: &str) -> (Option<String>, Option<String>) {
    use classad::eval::{integer_attr, string_attr};
    let Ok(ads) = classad::stream::parse_hook_stream(stdin) else {
        return (None, None);
    };
    let Some(ad) = ads.iter().find(|a| !a.new_syntax).map(|a| &a.ad) else {
        return (None, None);
    };
    let id = string_attr(ad, "RoutedFromJobId").or_else(|| {
        Some(format!(
            "{}.{}",
            integer_attr(ad, "ClusterId")?,
            integer_attr(ad, "ProcId")?
        ))
    });
    (id, string_attr(ad, "Owner"))
}

fn stdout_write(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// How often a problem of the pool's configuration is said loudly: the JobRouter's default
/// polling period (`JOB_ROUTER_POLLING_PERIOD`), so once per poll rather than once per job.
const ALARM_PERIOD: Duration = Duration::from_secs(10);

/// The translate hook.
pub fn run_translate(args: &HookArgs) -> Result<ExitCode> {
    let knobs = knobs(args)?;
    let cfg = TranslateConfig::from_knobs(&knobs);
    let limit = cfg
        .as_ref()
        .map_or(DEFAULT_HOOK_TIMEOUT_SECS, |c| c.hook_timeout_secs);
    // The answer is stdout or nothing: a timeout prints no ClassAd line.
    let watchdog = Watchdog::arm(Duration::from_secs(limit), 1, move || {
        eprintln!(
            "vm-capsule translate: error: did not finish within {limit} s (VM_CAPSULE_HOOK_TIMEOUT); the JobRouter will try again"
        );
        String::new()
    });
    // stdin first: the log is the job owner's and names the job.
    let stdin = read_stdin(std::io::stdin());
    let mut log = hook_log(
        "translate",
        &TRANSLATE_LOG,
        &knobs,
        args,
        stdin.as_deref().ok(),
    );
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            // An admin problem, not the job's: let the router retry after the fix.
            let why = knobs
                .source_problem
                .as_ref()
                .map(|p| format!(" (the HTCondor configuration was not read: {p})"))
                .unwrap_or_default();
            log.alarm(
                &format!("{e:#}{why}; the job stays idle until this is fixed"),
                ALARM_PERIOD,
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(agent) = &cfg.init_path {
        // A dynamic agent cannot start in a minimal guest: every job would end with 125.
        if let Err(e) = agent::check_shippable(agent) {
            log.error(&format!(
                "{e}; no job is held for this, they stay idle until it is fixed"
            ));
            return Ok(ExitCode::FAILURE);
        }
    }
    let stdin = match stdin {
        Ok(s) => s,
        Err(e) => {
            log.error(&e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let result = translate(&stdin, &cfg, &mut log);
    // A failure answers with an empty stdout: claimed here, so the watchdog stays silent
    // while the original is held.
    let answer = result.as_ref().map_or("", |done| done.stdout.as_str());
    if !watchdog.answer(answer)? {
        return Ok(ExitCode::FAILURE);
    }
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            match err.job_to_hold() {
                // Hold the original so the user sees why (docs/DESIGN.md, holds), then exit
                // non-zero so the router yields it; stdout stays empty.
                Some(id) => {
                    log.error(&err.to_string());
                    hold_original(id, &err.to_string(), &mut log);
                }
                None if err.is_admin_problem() => log.alarm(
                    &format!("{err}; no job is held for this, they stay idle until it is fixed"),
                    ALARM_PERIOD,
                ),
                None => log.error(&format!("{err}; the JobRouter will try again")),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The finalize hook: exits 0 on every input (a non-zero exit loses the terminate event).
pub fn run_finalize(args: &HookArgs) -> Result<ExitCode> {
    let knobs = Knobs::load(args.config.as_deref(), std::env::vars()).unwrap_or_default();
    let limit = knobs
        .number("VM_CAPSULE_HOOK_TIMEOUT")
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_HOOK_TIMEOUT_SECS);
    let watchdog = Watchdog::arm(Duration::from_secs(limit), 0, move || {
        let mut attrs = classad::ClassAd::new();
        finalize::failure_attributes(
            &mut attrs,
            &format!("finalize did not finish within {limit} s (VM_CAPSULE_HOOK_TIMEOUT); outputs may be incomplete"),
            None,
        );
        ad_lines(&attrs).unwrap_or_default()
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
    let stdin = read_stdin(std::io::stdin());
    let mut log = hook_log("finalize", &EXIT_LOG, &knobs, args, stdin.as_deref().ok());
    let done = match stdin {
        Ok(stdin) => finalize::finalize(&stdin, &cfg, watchdog.temps(), &mut log),
        Err(e) => finalize::failed(&e, &mut log),
    };
    let text = ad_lines(&done.attrs).context("cannot print the exit attributes")?;
    watchdog.answer(&text)?;
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
    let stdin = read_stdin(std::io::stdin());
    let mut log = hook_log(
        "cleanup",
        &TRANSLATE_LOG,
        &knobs,
        args,
        stdin.as_deref().ok(),
    );
    let prefix = ScratchPrefix::new(&scratch_prefix(&knobs));
    let keep_failed = knobs
        .number("VM_CAPSULE_KEEP_FAILED")
        .ok()
        .flatten()
        .map_or(DEFAULT_KEEP_FAILED, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        });
    let test_any_user = knobs.flag("VM_CAPSULE_TEST_ANY_USER").unwrap_or(false);
    match stdin {
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
