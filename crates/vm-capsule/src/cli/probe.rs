//! `vm-capsule probe`: the startd cron job that advertises what this execute node offers
//! the vanilla flavour (`HasVMCapsuleQemu`, `VMCapsuleKvm`, `VMCapsuleVersion`, ...).
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
    let settings = Settings::load(args.config.as_deref(), env)
        .and_then(|s| s.run())
        .context("cannot read the configuration")?;
    let probe =
        Probe::run(settings.qemu.as_deref(), env.path()).with_host_paths(&settings.host_paths);
    let text = classad::print::ad_to_hook_string(&probe.attributes())
        .context("cannot print the machine attributes")?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
