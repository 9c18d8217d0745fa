//! `vm-capsule doctor [submit|execute]`: check this node's configuration and say what to fix
//! (see [`vm_capsule_admin::doctor`]). Exit 0 when nothing failed (warnings allowed), 1 otherwise.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};

use vm_capsule_admin::doctor::execute::SlotUser;
use vm_capsule_admin::doctor::{execute, submit, ConfigSource, Report};
use vm_capsule_core::environment::Environment;

/// Which side to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The submit node: JobRouter, hooks, knobs, template.
    Submit,
    /// An execute node: QEMU, KVM, the startd probe, libvirt.
    Execute,
    /// Both.
    Both,
}

/// Arguments of `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The side to check.
    #[arg(value_enum, default_value_t = Which::Both)]
    side: Which,
    /// Read this HTCondor configuration file (and the local files it names) instead of
    /// asking condor_config_val.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check KVM access for this slot user instead of for every slot user.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
    /// The package's configuration file, to check that HTCondor reads it.
    #[arg(long, value_name = "FILE", default_value = vm_capsule_admin::snippet::CONFIG_FILE)]
    package_config: PathBuf,
}

/// Run the checks, print the report, exit 1 when something failed.
pub fn run_doctor(args: &DoctorArgs, env: &Environment) -> Result<ExitCode> {
    let config = match &args.config {
        Some(f) => {
            anyhow::ensure!(f.is_file(), "{} is not a file", f.display());
            ConfigSource::file(f)
        }
        None => ConfigSource::from_env(env),
    };
    let user = args
        .user
        .as_deref()
        .map(SlotUser::lookup)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut report = Report::default();
    let settings = config.settings(env);
    if args.side != Which::Execute {
        submit::check(&config, &settings, env, &args.package_config, &mut report);
    }
    if args.side != Which::Submit {
        execute::check(
            &config,
            &settings,
            env,
            user.as_ref(),
            &args.package_config,
            &mut report,
        );
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{:#}", report.to_json())?;
    } else {
        write!(
            out,
            "vm-capsule doctor {}\n{}",
            env!("CARGO_PKG_VERSION"),
            report.render()
        )?;
    }
    out.flush()?;
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
