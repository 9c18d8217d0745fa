//! `vm-capsule run`: execute a routed VM-universe job locally, as an execute node would; with
//! `--vanilla`, be the vanilla flavour's launcher inside an ordinary vanilla slot.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use vm_capsule_core::environment::Environment;
use vm_capsule_execute::launcher::ad_file::read_ad_text;
use vm_capsule_execute::launcher::interrupt::Interruption;
use vm_capsule_execute::launcher::{check_slot_sandbox, checkpoint, launch, LauncherExit, Slot};
use vm_capsule_execute::runner::{run, Accel, RunOptions};

/// `--timeout` when none is given (outside the vanilla flavour).
const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// Accelerator choice on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AccelArg {
    /// Software emulation.
    Tcg,
    /// Hardware virtualization.
    Kvm,
    /// KVM only when the host really supports it.
    Auto,
}

impl From<AccelArg> for Accel {
    fn from(a: AccelArg) -> Accel {
        match a {
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Auto => Accel::Auto,
        }
    }
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The routed ad: the translate hook's output (old or new syntax).
    routed_ad: PathBuf,
    /// Seconds before a guest that does not power off is killed (default 300; with
    /// `--vanilla`, none: the guest runs as long as HTCondor lets the job run).
    #[arg(long)]
    timeout: Option<u64>,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// Boot the disks in place instead of copies in a sandbox.
    #[arg(long)]
    in_place: bool,
    /// Keep the sandbox after a successful run (it is always kept after a failure).
    #[arg(long)]
    keep: bool,
    /// As root: run a routed ad whose Iwd belongs to another user (a job's owner) as that
    /// user, with their rights only. Without it such an ad is refused: a routed ad and its job
    /// dir are the job owner's to edit, so as root it could name any file on this host.
    #[arg(long)]
    as_owner: bool,
    /// QEMU to run [default: the VM_CAPSULE_QEMU knob, else qemu-system-x86_64 on PATH,
    /// else /usr/libexec/qemu-kvm].
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// Launcher mode (the vanilla flavour): the disks are in the current directory; afterwards
    /// unpack the job's outputs here, copy its stdout/stderr to ours, remove the capsule files
    /// and exit as the job did (125: the VM failed, 127: the job could not start).
    #[arg(long)]
    vanilla: bool,
}

/// `--as-owner`: as root, become the user the ad's `Iwd` belongs to, before anything in it is
/// read; nothing to do when it is root's own job dir.
fn become_iwd_owner(ad: &classad::ClassAd, args: &RunArgs) -> Result<()> {
    use vm_capsule_execute::run_files::{Iwd, Judgement};
    anyhow::ensure!(
        !args.vanilla,
        "--as-owner is for running a routed VM-universe ad by hand, not for the launcher"
    );
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "--as-owner needs root (it runs another user's routed ad as that user)"
    );
    let path = classad::eval::string_attr(ad, "Iwd")
        .with_context(|| format!("{}: Iwd is missing", args.routed_ad.display()))?;
    let iwd = Iwd::open(Path::new(&path))
        .with_context(|| format!("the routed ad's Iwd {path} cannot be opened"))?;
    match iwd.judge() {
        Judgement::Foreign { uid, .. } => {
            let name = vm_capsule_core::identity::become_user(uid).map_err(anyhow::Error::msg)?;
            eprintln!("vm-capsule run: running as {name}, who owns {path}");
        }
        // Root's own job dir; a dir that is never run is refused by the run itself.
        Judgement::Own | Judgement::Never(_) => {}
    }
    Ok(())
}

/// Run a routed VM-universe ad by hand: remove the sandbox on success unless `keep`, keep
/// it on failure, and say which.
fn run_here(
    ad: &classad::ClassAd,
    opts: &RunOptions,
    sandbox: Option<&Path>,
    keep: bool,
) -> Result<ExitCode> {
    let result = run(ad, opts, &mut |m| eprintln!("vm-capsule run: {m}"));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(dir) = sandbox {
                let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
                if empty {
                    let _ = std::fs::remove_dir(dir);
                } else {
                    eprintln!(
                        "vm-capsule run: the sandbox is kept for inspection: {} (remove it with rm -r)",
                        dir.display()
                    );
                }
            }
            return Err(e.into());
        }
    };
    eprintln!(
        "vm-capsule run: guest powered off after {:.1} s; returned {} to the job's Iwd",
        report.elapsed.as_secs_f64(),
        if report.returned.is_empty() {
            "nothing (in place)".to_owned()
        } else {
            report.returned.join(", ")
        },
    );
    match sandbox {
        Some(dir) if !keep => {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot remove the sandbox {}", dir.display()))?;
            eprintln!("vm-capsule run: sandbox removed (--keep keeps it)");
        }
        Some(dir) => eprintln!(
            "vm-capsule run: sandbox kept: {}; console log {}",
            dir.display(),
            report.console.display()
        ),
        None => eprintln!("vm-capsule run: console log {}", report.console.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The routed ad in `path` (its last ad), read as a bounded regular file.
fn read_routed_ad(path: &Path) -> Result<classad::ClassAd> {
    let text = read_ad_text(path).map_err(anyhow::Error::msg)?;
    classad::parse_ads(&text)
        .with_context(|| format!("{}: not a ClassAd", path.display()))?
        .pop()
        .with_context(|| format!("{}: no ad found", path.display()))
}

/// Run the VM; exit 0 when the guest powered off by itself (or, with `--vanilla`, as the job).
pub fn run_cmd(args: &RunArgs, env: &Environment) -> Result<ExitCode> {
    let ad = &read_routed_ad(&args.routed_ad)?;
    if args.as_owner {
        become_iwd_owner(ad, args)?;
    }
    let workdir = if args.vanilla {
        let cwd = std::env::current_dir().context("no working directory")?;
        check_slot_sandbox(ad, &cwd, &args.routed_ad)?;
        Some(cwd)
    } else {
        None
    };
    let settings = vm_capsule_core::settings::Settings::load(None, env)
        .and_then(|s| s.run())
        .context("cannot read the configuration")?;
    run_with_settings(args, env, ad, workdir, &settings)
}

/// The vanilla flavour's launcher for the routed ad `routed_ad` in the current directory, with
/// the launcher's time limit `timeout` (the node policy's launcher, which has its settings).
pub(crate) fn launch_vanilla(
    routed_ad: &Path,
    timeout: Option<u64>,
    env: &Environment,
    settings: &vm_capsule_core::settings::RunSettings,
) -> Result<ExitCode> {
    let args = RunArgs {
        routed_ad: routed_ad.to_owned(),
        timeout,
        accel: AccelArg::Auto,
        in_place: false,
        keep: false,
        as_owner: false,
        qemu: None,
        vanilla: true,
    };
    let ad = read_routed_ad(routed_ad)?;
    let cwd = std::env::current_dir().context("no working directory")?;
    check_slot_sandbox(&ad, &cwd, routed_ad)?;
    run_with_settings(&args, env, &ad, Some(cwd), settings)
}

/// [`run_cmd`] once the ad and the settings are read.
fn run_with_settings(
    args: &RunArgs,
    env: &Environment,
    ad: &classad::ClassAd,
    workdir: Option<PathBuf>,
    settings: &vm_capsule_core::settings::RunSettings,
) -> Result<ExitCode> {
    let network = match vm_capsule_execute::network::for_job(
        ad,
        settings.network,
        settings.passt.as_deref(),
        env.path(),
    ) {
        Ok(network) => network,
        // The launcher's failures reach the job's stderr and exit code, as any capsule failure.
        Err(why) if args.vanilla => {
            eprintln!("vm-capsule launcher: the VM capsule failed: {why}");
            return Ok(ExitCode::from(vm_capsule_core::exit::CAPSULE_FAILED));
        }
        Err(why) => anyhow::bail!(why),
    };
    let qemu = match &args.qemu {
        Some(q) => q.clone(),
        None => vm_capsule_execute::qemu::find_qemu(settings.qemu.as_deref(), env.path())?,
    };
    // Our own sandbox, so that we know it to remove or keep whatever happens.
    let sandbox = if args.vanilla || args.in_place {
        None
    } else {
        Some(
            tempfile::Builder::new()
                .prefix("vm-capsule-run.")
                .tempdir_in(&env.temp_dir)
                .context("cannot create a sandbox in the temp dir")?
                .keep(),
        )
    };
    let opts = RunOptions {
        timeout: match (args.timeout, args.vanilla) {
            (Some(secs), _) => Some(Duration::from_secs(secs)),
            (None, true) => None,
            (None, false) => Some(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
        },
        accel: match args.accel {
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Auto => Accel::Auto,
        },
        in_place: args.in_place || args.vanilla,
        sandbox_parent: env.temp_dir.clone(),
        sandbox: sandbox.clone(),
        qemu,
        workdir: workdir.clone(),
        cancel: None,
        tb_size_mib: settings.tcg_tb_mib,
        host_paths: settings.host_paths.clone(),
        network,
    };
    let Some(slot) = workdir else {
        return run_here(ad, &opts, sandbox.as_deref(), args.keep);
    };
    launch_here(args, env, ad, &opts, &slot, settings.checkpoint_interval)
}

/// The vanilla flavour's launcher: quiet on success (our stdout and stderr are the job's);
/// exits as the job did.
fn launch_here(
    args: &RunArgs,
    env: &Environment,
    ad: &classad::ClassAd,
    opts: &RunOptions,
    sandbox: &Path,
    checkpoint_interval: Option<Duration>,
) -> Result<ExitCode> {
    let slot = Slot {
        sandbox: sandbox.to_owned(),
        routed_ad: args.routed_ad.clone(),
        exe: env.current_exe.clone(),
        chirp_config: env.chirp_config.clone().map(PathBuf::from),
    };
    // What the starter's job and machine ads say about soft kills and checkpoints.
    let interruption = Interruption::from_files(
        env.job_ad.as_deref().map(Path::new),
        env.machine_ad.as_deref().map(Path::new),
    );
    // A job routed with VM checkpoints: how the starter's ad makes it self-checkpointing.
    let job_ad = env
        .job_ad
        .as_deref()
        .and_then(|p| read_ad_text(Path::new(p)).ok())
        .and_then(|text| classad::parse_ads(&text).ok()?.pop());
    let checkpoints = match checkpoint::Policy::from_ads(
        ad,
        job_ad.as_ref(),
        checkpoint_interval,
        interruption.checkpoint_exit_code(),
        interruption.vacate,
    ) {
        Ok(policy) => policy,
        Err(why) => {
            eprintln!("vm-capsule launcher: {why}");
            None
        }
    };
    let exit = launch(
        ad,
        opts,
        &slot,
        &interruption,
        checkpoints.as_ref(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
        &mut |line| eprintln!("vm-capsule launcher: {line}"),
    )?;
    let _ = std::io::stdout().flush();
    match exit {
        LauncherExit::Code(code) => Ok(ExitCode::from(code)),
        LauncherExit::Signal(signal) => {
            // Die by the same signal: exec a shell that sends it to itself (same pid, default
            // signal dispositions after exec), so HTCondor records ExitBySignal. Without a
            // core dump: the shell's core is nobody's, and the starter takes a job's death by
            // its checkpoint signal for a checkpoint only without one.
            let err = Command::new("/bin/sh")
                .args(["-c", &format!("ulimit -c 0; kill -{signal} $$")])
                .exec();
            eprintln!(
                "vm-capsule launcher: the job died by signal {signal}; cannot re-raise it: {err}"
            );
            Ok(ExitCode::from(128u8.saturating_add(signal)))
        }
        LauncherExit::NotStarted(why) => {
            eprintln!("vm-capsule launcher: the job could not start in the VM: {why}");
            Ok(ExitCode::from(vm_capsule_core::exit::NOT_STARTED))
        }
        LauncherExit::Failed(why) => {
            eprintln!("vm-capsule launcher: the VM capsule failed: {why}");
            Ok(ExitCode::from(vm_capsule_core::exit::CAPSULE_FAILED))
        }
    }
}
