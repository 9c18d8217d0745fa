//! capsule-init: the vm-capsule guest agent.
//!
//! Reads `capsule.json` from the data disk (a mounted directory, a block device or an image file),
//! runs the job exactly as a vanilla job would run on an execute node, writes `stdout`, `stderr`,
//! `output.tar` and finally `result.json` back, and powers the VM off. Built as a static binary
//! so it runs on any x86_64 Linux guest, including a bare initramfs.

mod agent;
mod collect;
mod disk;
mod log;
mod power;
mod runner;
mod source;
mod users;
mod workdir;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use agent::{Options, SourceSpec};

/// Run the vm-capsule job on this VM's data disk, then power off.
#[derive(Debug, Parser)]
#[command(name = "capsule-init", version)]
struct Args {
    /// Data disk mounted as a directory (the default when no source is given: /condor-data).
    #[arg(long, value_name = "DIR", group = "source")]
    data_dir: Option<PathBuf>,
    /// Data disk as a block device (e.g. /dev/vdb); FAT is read in user space, no mount needed.
    #[arg(long, value_name = "DEV", group = "source")]
    device: Option<PathBuf>,
    /// Data disk as an image file (raw, VMDK or qcow2).
    #[arg(long, value_name = "FILE", group = "source")]
    image: Option<PathBuf>,
    /// Fresh scratch directory on a native file system for the work dir and staged streams.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/capsule")]
    scratch: PathBuf,
    /// Directory holding the passwd and group files used to look the user up.
    #[arg(long, value_name = "DIR", default_value = "/etc", hide = true)]
    etc_dir: PathBuf,
    /// Run the job as the invoking user (for tests on a host) instead of the manifest's user.
    #[arg(long)]
    as_current_user: bool,
    /// Do not power off at the end (for tests on a host); exit instead.
    #[arg(long)]
    no_poweroff: bool,
}

fn main() -> ExitCode {
    let t0 = Instant::now();
    // Decided before parsing: a bad command line must still power the guest off.
    let no_poweroff = std::env::args_os().any(|a| a == "--no-poweroff");
    crate::log!("started (pid {})", std::process::id());
    let code = match Args::try_parse() {
        // A panic must not skip the poweroff: as PID 1 an exit would hang a guest booted
        // without panic=-1.
        Ok(args) => {
            std::panic::catch_unwind(|| run(&args, t0)).unwrap_or((ExitCode::FAILURE, None))
        }
        Err(e) => {
            let _ = e.print();
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                return ExitCode::SUCCESS;
            }
            (ExitCode::from(2), None)
        }
    };
    let (code, job_end) = code;
    if no_poweroff {
        if let Some(end) = job_end {
            crate::log!(
                "overhead: job end -> exit {:.3} ms",
                end.elapsed().as_secs_f64() * 1e3
            );
        }
        return code;
    }
    if let Some(end) = job_end {
        crate::log!(
            "overhead: job end -> poweroff call {:.3} ms",
            end.elapsed().as_secs_f64() * 1e3
        );
    }
    let e = power::off();
    crate::log!("power off failed: {e}; exiting instead");
    code
}

/// Turn the arguments into options, run the agent, and map the outcome to an exit code:
/// 0 when a result.json was written (whatever the job did), 1 when none could be.
fn run(args: &Args, t0: Instant) -> (ExitCode, Option<Instant>) {
    let source = if let Some(d) = &args.device {
        SourceSpec::Device(d.clone())
    } else if let Some(i) = &args.image {
        SourceSpec::Image(i.clone())
    } else {
        SourceSpec::Dir(
            args.data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/condor-data")),
        )
    };
    let opts = Options {
        source,
        scratch: args.scratch.clone(),
        etc: args.etc_dir.clone(),
        as_current_user: args.as_current_user,
    };
    match agent::run(&opts, t0) {
        Ok(report) => {
            crate::log!(
                "result.json written: {:?}; overhead: start -> exec {:.3} ms",
                report.result.outcome,
                report.result.agent.setup_secs * 1e3
            );
            (ExitCode::SUCCESS, report.job_end)
        }
        Err(e) => {
            crate::log!("error: {e:#}");
            (ExitCode::FAILURE, None)
        }
    }
}
