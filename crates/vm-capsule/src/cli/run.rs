//! `vm-capsule run`: execute a routed VM-universe job locally, as an execute node would.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use vm_capsule::runner::{run, Accel, RunOptions};

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

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The routed ad: the translate hook's output (old or new syntax).
    routed_ad: PathBuf,
    /// Seconds before a guest that does not power off is killed.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// Boot the disks in the routed job's Iwd instead of copies in a sandbox.
    #[arg(long)]
    in_place: bool,
}

/// Run the VM; exit 0 when the guest powered off by itself.
pub fn run_cmd(args: &RunArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.routed_ad)
        .with_context(|| format!("cannot read {}", args.routed_ad.display()))?;
    let ads = classad::parse_ads(&text)
        .with_context(|| format!("{}: not a ClassAd", args.routed_ad.display()))?;
    let ad = ads
        .last()
        .with_context(|| format!("{}: no ad found", args.routed_ad.display()))?;
    let opts = RunOptions {
        timeout: Duration::from_secs(args.timeout),
        accel: match args.accel {
            AccelArg::Tcg => Accel::Tcg,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Auto => Accel::Auto,
        },
        in_place: args.in_place,
        sandbox_parent: None,
    };
    let report = run(ad, &opts, &mut |m| eprintln!("vm-capsule run: {m}"))?;
    eprintln!(
        "vm-capsule run: guest powered off after {:.1} s; returned {} to the job's Iwd; console log {}",
        report.elapsed.as_secs_f64(),
        if report.returned.is_empty() {
            "nothing (in place)".to_owned()
        } else {
            report.returned.join(", ")
        },
        report.console.display()
    );
    Ok(ExitCode::SUCCESS)
}
