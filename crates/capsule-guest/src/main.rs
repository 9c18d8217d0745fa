//! capsule-init: the vm-capsule guest agent.
//!
//! Reads `capsule.json` from the data disk (a mounted directory, a block device or an image file),
//! runs the job exactly as a vanilla job would run on an execute node, writes `stdout`, `stderr`,
//! `output.tar` and finally `result.json` back, and powers the VM off. Built as a static binary
//! so it runs on any x86_64 Linux guest, including a bare initramfs.

mod agent;
mod args;
mod collect;
mod control;
mod devices;
mod disk;
mod find;
mod host_paths;
mod launch;
mod live;
mod log;
mod network;
mod power;
mod runner;
mod source;
mod users;
mod workdir;

use std::process::ExitCode;
use std::time::Instant;

use agent::Options;
use args::{Args, Parsed};

fn main() -> ExitCode {
    let t0 = Instant::now();
    // Guessed before parsing, so a bad command line still powers the guest off; a parsed
    // command line then decides.
    let mut no_poweroff = std::env::args_os().any(|a| a == "--no-poweroff");
    let mut data_dir = None;
    let code = match args::parse(std::env::args_os().skip(1)) {
        // A panic must not skip the poweroff: as PID 1 an exit would hang a guest booted
        // without panic=-1.
        Ok(Parsed::Run(mut args)) => {
            crate::log!("started (pid {})", std::process::id());
            no_poweroff = args.no_poweroff;
            if let agent::SourceSpec::Dir(dir) = &args.source {
                data_dir = Some(dir.clone());
            }
            match launch::locate(&mut args) {
                Ok(()) => {
                    launch::hand_over(&args);
                    std::panic::catch_unwind(|| run(&args, t0)).unwrap_or((ExitCode::FAILURE, None))
                }
                Err(e) => {
                    crate::log!("error: {e:#}");
                    (ExitCode::FAILURE, None)
                }
            }
        }
        Ok(Parsed::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("capsule-init {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("capsule-init: error: {e}\n\n{}", args::USAGE);
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
    if let Some(dir) = &data_dir {
        power::unmount(dir);
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
    // In a VM: as init (it powers off), or on the data disk's device (a systemd unit, which
    // leaves the poweroff to systemd). There: wait for the virtio drivers, listen for the
    // launcher's signals, and mount the node's read-only host paths before the job starts.
    let in_vm = !args.no_poweroff || matches!(args.source, agent::SourceSpec::Device(_));
    let mut host_paths_problem = None;
    if in_vm {
        devices::await_drivers();
        control::start();
        host_paths_problem = host_paths::mount_all().err().map(|e| format!("{e:#}"));
    }
    let opts = Options {
        source: args.source.clone(),
        scratch: args.scratch.clone(),
        etc: args.etc_dir.clone(),
        as_current_user: args.as_current_user,
        host_paths_problem,
        network: in_vm,
    };
    match agent::run(&opts, t0) {
        Ok(report) => {
            crate::log!("result.json written: {:?}", report.result.outcome);
            if report.job_end.is_some() {
                let setup_ms = report.result.agent.setup_secs * 1e3;
                crate::log!("overhead: start -> exec {setup_ms:.3} ms");
            }
            (ExitCode::SUCCESS, report.job_end)
        }
        Err(e) => {
            crate::log!("error: {e:#}");
            (ExitCode::FAILURE, None)
        }
    }
}
