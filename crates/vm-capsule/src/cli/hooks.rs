//! `vm-capsule translate|finalize|cleanup|update`: the JobRouter hooks.
//!
//! HTCondor runs a hook by path with no arguments (JobRouterHookMgr: `spawn(client, NULL, ...)`),
//! so each hook is also reachable as its own executable name: `vm-capsule-translate`, ...
//! (links made by `install-hooks`) dispatch here by `argv[0]`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use vm_capsule_core::agent;
use vm_capsule_core::environment::Environment;
use vm_capsule_core::settings::{knobs, Settings, WhichLog};
use vm_capsule_submit::log::{owner_name, HookLog, LogOptions};
use vm_capsule_submit::translate::{hold_original, translate};
use vm_capsule_submit::watchdog::Watchdog;
use vm_capsule_submit::{ad_lines, cleanup, finalize, read_stdin, update};

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

/// The hooks' edge: the knobs, read once, and the running program.
fn settings(args: &HookArgs, env: &Environment) -> Result<Settings> {
    Settings::load(args.config.as_deref(), env).context("cannot read the configuration")
}

/// The log of `hook`: the owner's file named by the knobs, about the job on `stdin`.
fn hook_log(
    hook: &'static str,
    which: WhichLog,
    settings: &Settings,
    args: &HookArgs,
    stdin: Option<&str>,
) -> HookLog {
    let (job, owner) = stdin.map(job_of).unwrap_or_default();
    let (log_settings, problems) = settings.hook_log(which);
    let opts = LogOptions {
        base: Some(log_settings.base),
        owner: owner_name(owner.as_deref()),
        max_bytes: log_settings.max_bytes,
        debug: args.debug || log_settings.debug,
    };
    let mut log = HookLog::with_options(hook, &opts);
    if let Some(id) = job {
        log.set_job(&id);
    }
    for p in problems {
        log.warn(&p.to_string());
    }
    for w in &settings.warnings {
        log.warn(w);
    }
    log.debug(&format!("knobs from {}", settings.source));
    if let Some(p) = &settings.source_problem {
        log.info(&format!("the HTCondor configuration was not read: {p}"));
    }
    log
}

/// Why a configuration error may be about an unset knob: the configuration was not read.
fn unread_because(settings: &Settings) -> String {
    settings
        .source_problem
        .as_ref()
        .map(|p| format!(" (the HTCondor configuration was not read: {p})"))
        .unwrap_or_default()
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
pub fn run_translate(args: &HookArgs, env: &Environment) -> Result<ExitCode> {
    let settings = settings(args, env)?;
    let cfg = settings.translate();
    let limit = settings.hook_timeout();
    let watchdog = Watchdog::arm(limit, 1, move || {
        eprintln!(
            "vm-capsule translate: error: did not finish within {} s ({}); the JobRouter will try again",
            limit.as_secs(),
            knobs::HOOK_TIMEOUT.name
        );
        String::new()
    });
    // stdin first: the log is the job owner's and names the job.
    let stdin = read_stdin(std::io::stdin());
    let mut log = hook_log(
        "translate",
        WhichLog::Translate,
        &settings,
        args,
        stdin.as_deref().ok(),
    );
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            // An admin problem, not the job's: let the router retry after the fix.
            let why = unread_because(&settings);
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
                    hold_original(id, &err.to_string(), &env.tool_search(), &mut log);
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
/// A configuration it cannot use is reported like any other failure, in the attributes; the
/// job's outputs stay in its scratch dir, which cleanup keeps while the configuration is wrong.
pub fn run_finalize(args: &HookArgs, env: &Environment) -> Result<ExitCode> {
    let settings = settings(args, env);
    let limit = settings.as_ref().map_or_else(
        |_| Settings::default().hook_timeout(),
        Settings::hook_timeout,
    );
    let watchdog = Watchdog::arm(limit, 0, move || {
        let mut attrs = classad::ClassAd::new();
        finalize::failure_attributes(
            &mut attrs,
            &format!(
                "finalize did not finish within {} s ({}); outputs may be incomplete",
                limit.as_secs(),
                knobs::HOOK_TIMEOUT.name
            ),
            None,
        );
        ad_lines(&attrs).unwrap_or_default()
    });
    let stdin = read_stdin(std::io::stdin());
    let unread = Settings::default();
    let mut log = hook_log(
        "finalize",
        WhichLog::Exit,
        settings.as_ref().unwrap_or(&unread),
        args,
        stdin.as_deref().ok(),
    );
    let cfg = settings
        .as_ref()
        .map_err(|e| format!("{e:#}"))
        .and_then(|s| {
            s.finalize()
                .map_err(|e| format!("{e}{}", unread_because(s)))
        });
    let done = match (stdin, cfg) {
        (Ok(stdin), Ok(cfg)) => finalize::finalize(&stdin, &cfg, watchdog.temps(), &mut log),
        (Err(e), _) => finalize::failed(&e, &mut log),
        (Ok(_), Err(e)) => finalize::failed(
            &format!("the vm-capsule configuration on the submit machine is wrong: {e}; the job's outputs were not placed and stay in its scratch dir until an administrator fixes it"),
            &mut log,
        ),
    };
    let text = ad_lines(&done.attrs).context("cannot print the exit attributes")?;
    watchdog.answer(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The cleanup hook: always exits 0 (non-zero would re-run it every poll). With a
/// configuration it cannot use it removes nothing: the error is logged, the dir stays.
pub fn run_cleanup(args: &HookArgs, env: &Environment) -> Result<ExitCode> {
    let settings = settings(args, env);
    let stdin = read_stdin(std::io::stdin());
    let unread = Settings::default();
    let mut log = hook_log(
        "cleanup",
        WhichLog::Translate,
        settings.as_ref().unwrap_or(&unread),
        args,
        stdin.as_deref().ok(),
    );
    let cfg = settings
        .as_ref()
        .map_err(|e| format!("{e:#}"))
        .and_then(|s| s.cleanup().map_err(|e| format!("{e}{}", unread_because(s))));
    match (stdin, cfg) {
        (Ok(stdin), Ok(cfg)) => {
            cleanup::cleanup(&stdin, &cfg, &env.tool_search(), &mut log);
        }
        (Err(e), _) => log.error(&e),
        (Ok(_), Err(e)) => log.alarm(
            &format!("{e}; scratch dirs are kept until this is fixed"),
            ALARM_PERIOD,
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The update hook: prints nothing, exits 0.
pub fn run_update(_args: &HookArgs) -> Result<ExitCode> {
    let stdin = read_stdin(std::io::stdin()).unwrap_or_default();
    stdout_write(&update::update(&stdin))?;
    Ok(ExitCode::SUCCESS)
}
