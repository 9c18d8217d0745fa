//! Subcommands: one module each, each with a clap `Args` struct and a `run` function.

mod ad;
mod demo;
mod disk;
pub mod hooks;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for any error that reaches `main` (usage errors are clap's 2).
pub const EXIT_FAILURE: u8 = 1;

/// Run HTCondor vanilla jobs inside virtual machines.
#[derive(Debug, Parser)]
#[command(name = "vm-capsule", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read, print and evaluate ClassAds as HTCondor does.
    #[command(subcommand)]
    Ad(ad::AdCommand),
    /// Create, fill and read FAT data disks in raw, VMDK and qcow2 images (no qemu-img/mtools).
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// JobRouter translate hook: vanilla job ad on stdin, VM-universe ad on stdout.
    Translate(hooks::HookArgs),
    /// JobRouter finalize hook: original and routed ad on stdin, exit attributes on stdout.
    Finalize(hooks::HookArgs),
    /// JobRouter cleanup hook: routed ad on stdin; removes the scratch dir.
    Cleanup(hooks::HookArgs),
    /// JobRouter update hook: prints nothing.
    Update(hooks::HookArgs),
    /// Link the hooks as vm-capsule-<hook> executables into a directory and print the config.
    InstallHooks(hooks::InstallArgs),
    /// Run a routed VM-universe job here with QEMU, as an execute node would.
    Run(run::RunArgs),
    /// Show a vanilla job going into a VM and coming back, end to end, on this machine.
    Demo(demo::DemoArgs),
}

/// Dispatch one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ad(cmd) => ad::run(cmd),
        Command::Disk(cmd) => disk::run(cmd),
        Command::Translate(a) => hooks::run_translate(&a),
        Command::Finalize(a) => hooks::run_finalize(&a),
        Command::Cleanup(a) => hooks::run_cleanup(&a),
        Command::Update(a) => hooks::run_update(&a),
        Command::InstallHooks(a) => hooks::run_install(&a),
        Command::Run(a) => run::run_cmd(&a),
        Command::Demo(a) => demo::run_demo(&a),
    }
}
