//! `vm-capsule probe`: the startd cron job that advertises what this execute node offers
//! the vanilla flavour (`HasVMCapsuleQemu`, `VMCapsuleKvm`, `VMCapsuleVersion`,
//! `VMCapsuleNetwork`, ...).
//!
//! The startd runs `STARTD_CRON_<NAME>_EXECUTABLE` (`vm-capsule`) with the cron job's name as
//! argv[0] and `STARTD_CRON_<NAME>_ARGS` (`probe`) after it, and reads ClassAd lines from
//! stdout; it always exits 0 so the attributes are published even when the answer is "no".

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use vm_capsule_core::environment::Environment;
use vm_capsule_core::settings::Settings;
use vm_capsule_execute::probe::Probe;

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Read knobs from this file (HTCondor syntax) instead of `condor_config_val`.
    #[arg(long, env = "VM_CAPSULE_CONFIG")]
    config: Option<PathBuf>,
}

/// Print the machine attributes.
pub fn run_probe(args: &ProbeArgs, env: &Environment) -> Result<ExitCode> {
    let all =
        Settings::load(args.config.as_deref(), env).context("cannot read the configuration")?;
    let settings = all.run().context("cannot read the configuration")?;
    let probe =
        Probe::run(settings.qemu.as_deref(), env.path()).with_host_paths(&settings.host_paths);
    let mut attrs = probe.attributes();
    let network = vm_capsule_execute::network::probe_attributes(
        settings.network,
        settings.passt.as_deref(),
        env.path(),
    );
    for (name, expr) in network.iter() {
        attrs.insert(name, expr.clone());
    }
    node_policy_attrs(&all, probe.qemu.is_ok(), &mut attrs);
    let text =
        classad::print::ad_to_hook_string(&attrs).context("cannot print the machine attributes")?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The node policy, for `condor_status` and users' requirements: `HasVMCapsule` (the node runs
/// the jobs `VM_CAPSULE_JOB` picks in its VM: the expression is set, QEMU answers, the template
/// loads), the expression as text (`VMCapsuleJob` itself, advertised through `STARTD_ATTRS`,
/// prints `false` with no job to match) and the template it boots.
fn node_policy_attrs(settings: &Settings, qemu_ok: bool, ad: &mut classad::ClassAd) {
    use classad::Expr;
    let expression = settings.node_policy().ok().and_then(|p| p.expression);
    let template = settings.translate().ok().and_then(|cfg| {
        vm_capsule_core::template::Template::load(
            &cfg.template_root,
            cfg.classad_template.as_deref(),
        )
        .ok()
    });
    let has = expression.is_some() && qemu_ok && template.is_some();
    ad.insert("HasVMCapsule", Expr::boolean(has));
    if let Some(expr) = expression {
        ad.insert("VMCapsuleJobText", Expr::string(expr));
        if let Some(t) = template {
            ad.insert(
                "VMCapsuleNodeTemplate",
                Expr::string(t.dir.display().to_string()),
            );
        }
    }
}
