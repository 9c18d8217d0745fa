//! The node policy (`VM_CAPSULE_JOB`), with no router: `prepare-job`, the starter's
//! prepare-job hook (`VMCAPSULE_HOOK_PREPARE_JOB`), decides per job and rewrites a picked job's
//! `Cmd` to `node-run`, the node's launcher, which plans the capsule from the job ad and the
//! sandbox as HTCondor transferred it (the translate hook's planning, run on the node), stages
//! the capsule's small files there and runs the vanilla flavour's launcher.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use classad::ClassAd;
use vm_capsule_core::capsule::InputPlan;
use vm_capsule_core::environment::Environment;
use vm_capsule_core::job::JobSpec;
use vm_capsule_core::routed;
use vm_capsule_core::settings::{knobs, Settings, TranslateSettings, Unfit};
use vm_capsule_core::template::{Flavour, Template};
use vm_capsule_execute::launcher::ad_file::{read_ad_text, read_bounded};
use vm_capsule_execute::policy::{self, Decision};
use vm_capsule_submit::translate::{self, Binaries, CapsulePlan, TranslateError, TranslateRequest};

/// `HookStatusCode` for trouble that is not the job's (the node's configuration, a passing
/// failure): 300 and above put the job back to idle, to run elsewhere or later.
const NOT_THE_JOB_STATUS: i64 = 300;
/// The starter's copies of the ads in the sandbox, when the environment does not say.
const JOB_AD_IN_SANDBOX: &str = ".job.ad";
const MACHINE_AD_IN_SANDBOX: &str = ".machine.ad";

/// Arguments of `prepare-job` (none: the starter runs the hook with none).
#[derive(Debug, Args)]
pub struct PrepareJobArgs {}

/// Arguments of `node-run`.
#[derive(Debug, Args)]
pub struct NodeRunArgs {
    /// The node's knobs as the hook read them, `VM_CAPSULE_<NAME>=<value>` (the job's
    /// environment has no `CONDOR_CONFIG` to read them from).
    knobs: Vec<String>,
}

/// Why a picked job does not run in the VM.
enum NotInVm {
    /// The job's own: too big, an executable for another OS, a name the capsule uses.
    Unfit(String),
    /// The node's configuration or a passing failure.
    Node(String),
}

/// `reader`, bounded as an ad file is ([`read_bounded`]), as one old-syntax ad.
fn read_ad(reader: impl Read, what: &str) -> Result<ClassAd, String> {
    let text = read_bounded(reader, what)?;
    classad::parse_old_ad(&text).map_err(|e| format!("{what} is not a ClassAd: {e}"))
}

/// Open an ad file the starter wrote (never a FIFO or a link: the sandbox is the job's).
fn read_ad_file(path: &Path, what: &str) -> Result<ClassAd, String> {
    let text = read_ad_text(path).map_err(|e| format!("{what}: {e}"))?;
    classad::parse_old_ad(&text)
        .map_err(|e| format!("{what} {} is not a ClassAd: {e}", path.display()))
}

/// The slot ad the starter gave the job: `$_CONDOR_MACHINE_AD`, else `.machine.ad` here.
fn machine_ad(env: &Environment) -> Result<ClassAd, String> {
    let path = env
        .machine_ad
        .as_ref()
        .map_or_else(|| PathBuf::from(MACHINE_AD_IN_SANDBOX), PathBuf::from);
    read_ad_file(&path, "the slot ad")
}

/// The hook: job ad on stdin, the slot ad from the starter; stdout is merged into the job ad.
///
/// # Errors
/// Only for a failure to write stdout; every other problem is said in `HookStatusMessage`.
pub fn run_prepare_job(_args: &PrepareJobArgs, env: &Environment) -> Result<ExitCode> {
    let out = match prepare_job(env) {
        Ok(lines) => lines,
        Err(NotInVm::Node(why)) => status(NOT_THE_JOB_STATUS, &why),
        Err(NotInVm::Unfit(why)) => policy::hold_lines(&why),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn status(code: i64, why: &str) -> String {
    let text = policy::native_note_lines(&format!("vm-capsule node policy: {why}"));
    text.replace("HookStatusCode = 0", &format!("HookStatusCode = {code}"))
}

/// The hook's stdout for this job: nothing (native), the rewrite, or a status.
fn prepare_job(env: &Environment) -> Result<String, NotInVm> {
    let slot = machine_ad(env).map_err(NotInVm::Node)?;
    // No policy advertised: nothing more to read, the job runs natively.
    if !slot.contains(policy::ATTR_POLICY) {
        return Ok(String::new());
    }
    let job_ad = read_ad(std::io::stdin().lock(), "the job ad on stdin").map_err(NotInVm::Node)?;
    if policy::decide(&slot, &job_ad) == Decision::Native {
        return Ok(String::new());
    }
    let settings = Settings::load(None, env)
        .map_err(|e| NotInVm::Node(format!("cannot read the configuration: {e}")))?;
    let unfit_native = settings
        .node_policy()
        .map_err(|e| NotInVm::Node(format!("the node's configuration: {e}")))?
        .unfit
        == Unfit::Native;
    let sandbox =
        std::env::current_dir().map_err(|e| NotInVm::Node(format!("no working directory: {e}")))?;
    match check_fits(&job_ad, &sandbox, &settings, env) {
        Ok(()) => {}
        Err(NotInVm::Unfit(why)) if unfit_native => {
            return Ok(policy::native_note_lines(&format!(
                "vm-capsule node policy: runs natively, not in a VM ({} = native): {why}",
                knobs::JOB_UNFIT.name
            )))
        }
        Err(NotInVm::Unfit(why)) => {
            return Err(NotInVm::Unfit(format!(
                "vm-capsule node policy: this node runs the job in a VM and cannot: {why}"
            )))
        }
        Err(e) => return Err(e),
    }
    let launcher = env
        .current_exe
        .clone()
        .ok_or_else(|| NotInVm::Node("cannot tell vm-capsule's own path".to_owned()))?;
    let mut passed: Vec<(String, String)> = settings
        .set_knobs()
        .filter(|(k, _)| k.name != knobs::JOB.name && k.name != knobs::JOB_UNFIT.name)
        .map(|(k, v)| (k.name.to_owned(), v.to_owned()))
        .collect();
    // The job's environment has no PATH (the starter gives the job only its own): name QEMU
    // as the hook finds it.
    if !passed.iter().any(|(k, _)| k == knobs::QEMU.name) {
        let qemu = vm_capsule_execute::qemu::find_qemu(None, env.path())
            .map_err(|e| NotInVm::Node(e.to_string()))?;
        passed.push((knobs::QEMU.name.to_owned(), qemu.display().to_string()));
    }
    policy::vm_lines(&launcher, &passed).map_err(NotInVm::Node)
}

/// Whether the job can run in this node's VM: its executable, and the plan the launcher will
/// follow (sizes, names).
fn check_fits(
    job_ad: &ClassAd,
    sandbox: &Path,
    settings: &Settings,
    env: &Environment,
) -> Result<(), NotInVm> {
    if let Some(why) = policy::ad_problem(job_ad) {
        return Err(NotInVm::Unfit(why));
    }
    let job = JobSpec::from_ad(job_ad).map_err(|e| NotInVm::Unfit(e.detail()))?;
    if job.transfer_executable {
        if let Some(why) = policy::executable_problem(&sandbox.join(job.executable_name())) {
            return Err(NotInVm::Unfit(why));
        }
    }
    let cfg = translate_settings(settings, env)?;
    let plan = node_plan(job_ad, sandbox, &cfg)?;
    // The launcher stages its files under these names: an input HTCondor brought under one
    // would be lost.
    let reserved = plan.reserved_names();
    let taken: Vec<String> = vm_capsule_execute::launcher::sandbox::job_entries(sandbox, &[])
        .into_iter()
        .map(|i| i.name)
        .filter(|n| reserved.contains(n))
        .collect();
    if !taken.is_empty() {
        return Err(NotInVm::Unfit(format!(
            "its input(s) {} arrive in the sandbox under a name the VM capsule uses there; rename them",
            taken.join(", ")
        )));
    }
    Ok(())
}

/// The translate settings of this node, its launcher running the agent beside it.
fn translate_settings(
    settings: &Settings,
    env: &Environment,
) -> Result<TranslateSettings, NotInVm> {
    let mut cfg = settings
        .translate()
        .map_err(|e| NotInVm::Node(format!("the node's configuration: {e}")))?;
    cfg.node_launcher = env.current_exe.clone();
    Ok(cfg)
}

/// The capsule for `job_ad` from what is in `sandbox`: translate's own planning, with the
/// sandbox's entries as the inputs (HTCondor has transferred them), but the names the capsule
/// stages (the hook refuses an input under one; later they are an earlier run's, when a
/// self-checkpointing job restarts in place).
fn node_plan(
    job_ad: &ClassAd,
    sandbox: &Path,
    cfg: &TranslateSettings,
) -> Result<CapsulePlan, NotInVm> {
    let mut job = JobSpec::from_ad(job_ad).map_err(|e| NotInVm::Unfit(e.detail()))?;
    // The starter runs the job as the native vanilla job it is, not a self-checkpointing one:
    // a launcher exiting with a checkpoint code would end the job with that code.
    job.checkpoint = Some(false);
    let request = TranslateRequest {
        route_universe: Some(routed::VANILLA_UNIVERSE),
        ad: job_ad.clone(),
        job: job.clone(),
    };
    let template = Template::load(&cfg.template_root, cfg.classad_template.as_deref())
        .map_err(|e| NotInVm::Node(format!("the node's template: {e}")))?;
    if template.flavour == Flavour::Vmware {
        return Err(NotInVm::Node(
            "the node's template is a VMware one; the node policy boots KVM templates".to_owned(),
        ));
    }
    let binaries = Binaries {
        agent_bytes: cfg
            .init_path
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len()),
        launcher_bytes: 0,
        agent_on_node: true,
    };
    let plan_with = |inputs| translate::plan(&request, cfg, &template, inputs, binaries);
    let empty = InputPlan {
        items: Vec::new(),
        tar_bytes: 0,
    };
    let reserved = plan_with(empty)
        .map_err(translate_problem)?
        .reserved_names();
    let exe = job.transfer_executable.then(|| job.executable_name());
    let mut items = vm_capsule_execute::launcher::sandbox::job_entries(sandbox, &reserved);
    for item in &mut items {
        item.executable = exe.as_deref() == Some(item.name.as_str());
    }
    let inputs =
        InputPlan::of(items).map_err(|e| NotInVm::Unfit(format!("the sandbox's files: {e}")))?;
    let plan = plan_with(inputs).map_err(translate_problem)?;
    for disk in &plan.template.os_disks {
        let overlay = translate::overlay_name(&translate::file_name(&disk.path));
        if !plan.node_bases.iter().any(|b| b.overlay == overlay) {
            return Err(NotInVm::Node(format!(
                "the template's OS disk {} is not staged in VM_CAPSULE_NODE_IMAGE_DIR (the node policy boots OS disks from there)",
                disk.path.display()
            )));
        }
    }
    Ok(plan)
}

fn translate_problem(e: TranslateError) -> NotInVm {
    match e {
        TranslateError::Job { reason, .. } => NotInVm::Unfit(reason),
        other => NotInVm::Node(other.to_string()),
    }
}

/// Write the capsule's small files into the sandbox: the VM description, the manifest, the
/// job ad, the template's boot files (copied: a link would let the job's files name them) and
/// the overlays over the node's OS disks. A name staged by an earlier run is replaced.
fn stage(plan: &CapsulePlan, sandbox: &Path) -> Result<()> {
    let capsule_ad = plan
        .routed
        .capsule_ad
        .as_deref()
        .context("the plan has no VM description")?;
    for name in plan.reserved_names() {
        // Never follows a link: a leftover of ours, or nothing.
        let _ = std::fs::remove_file(sandbox.join(&name));
    }
    let write = |name: &str, data: &[u8]| -> Result<()> {
        let path = sandbox.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(data)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write(routed::CAPSULE_AD, capsule_ad.as_bytes())?;
    write(routed::CAPSULE_JSON_FILE, &plan.manifest_json)?;
    write(routed::JOB_AD_FILE, plan.job_ad_text.as_bytes())?;
    if let Some(boot) = &plan.template.boot {
        for file in std::iter::once(&boot.kernel).chain(boot.initrd.as_ref()) {
            let bytes = std::fs::read(file)
                .with_context(|| format!("cannot read the template's {}", file.display()))?;
            write(&translate::file_name(file), &bytes)?;
        }
    }
    for disk in &plan.template.os_disks {
        let overlay = translate::overlay_name(&translate::file_name(&disk.path));
        if let Some(base) = plan.node_bases.iter().find(|b| b.overlay == overlay) {
            vm_capsule_core::template::overlay::create_overlay(
                &sandbox.join(&overlay),
                &base.path.display().to_string(),
                disk.format.name(),
                disk.virtual_size,
            )
            .with_context(|| format!("cannot create the overlay {overlay}"))?;
        }
    }
    Ok(())
}

/// The node's launcher: the job as `.job.ad` describes it, in a VM, in this sandbox.
///
/// # Errors
/// When the capsule cannot be planned or staged (exit 125, as the vanilla launcher's failures).
pub fn run_node_run(args: &NodeRunArgs, env: &Environment) -> Result<ExitCode> {
    match node_run(args, env) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("vm-capsule launcher: the VM capsule failed: {e:#}");
            Ok(ExitCode::from(vm_capsule_core::exit::CAPSULE_FAILED))
        }
    }
}

fn node_run(args: &NodeRunArgs, env: &Environment) -> Result<ExitCode> {
    let pairs = args
        .knobs
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{kv:?} is not KNOB=value"))
        })
        .collect::<Result<Vec<_>>>()?;
    let settings = Settings::from_pairs(pairs).with_exe(env.current_exe.clone());
    let job_ad_path = env
        .job_ad
        .as_ref()
        .map_or_else(|| PathBuf::from(JOB_AD_IN_SANDBOX), PathBuf::from);
    let job_ad = read_ad_file(&job_ad_path, "the job ad").map_err(anyhow::Error::msg)?;
    let sandbox = std::env::current_dir().context("no working directory")?;
    let cfg = translate_settings(&settings, env).map_err(not_in_vm)?;
    let plan = node_plan(&job_ad, &sandbox, &cfg).map_err(not_in_vm)?;
    stage(&plan, &sandbox)?;
    let run = settings.run().context("the node's configuration")?;
    super::run::launch_vanilla(
        Path::new(routed::CAPSULE_AD),
        plan.launcher_timeout,
        env,
        &run,
    )
}

fn not_in_vm(e: NotInVm) -> anyhow::Error {
    match e {
        NotInVm::Unfit(why) | NotInVm::Node(why) => anyhow::Error::msg(why),
    }
}
