//! Subcommands: one module each, each with a clap `Args` struct and a `run` function.

mod ad;
mod demo;
mod disk;
mod doctor;
mod generate;
pub mod hooks;
mod install;
mod libvirt_xml;
mod node;
mod probe;
mod run;
mod template;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use vm_capsule_core::environment::Environment;

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
    /// Link the hooks as vm-capsule-<hook> executables into a directory and write the config.
    InstallHooks(install::InstallArgs),
    /// Run a routed VM-universe job here with QEMU, as an execute node would.
    Run(run::RunArgs),
    /// Show a vanilla job going into a VM and coming back, end to end, on this machine.
    Demo(demo::DemoArgs),
    /// Check this node's configuration (submit side, execute side, or both) before jobs come.
    Doctor(doctor::DoctorArgs),
    /// Startd cron job: print the machine attributes this node offers the vanilla flavour.
    Probe(probe::ProbeArgs),
    /// LIBVIRT_XML_SCRIPT for HTCondor's vm-gahp: the job's attributes on stdin, domain XML out.
    LibvirtXml(libvirt_xml::LibvirtXmlArgs),
    /// The node policy's prepare-job hook (VMCAPSULE_HOOK_PREPARE_JOB): decide whether this
    /// job runs in the node's VM (job ad on stdin, the slot ad from the starter).
    PrepareJob(node::PrepareJobArgs),
    /// The node policy's launcher, started by the starter in the job's place.
    #[command(hide = true)]
    NodeRun(node::NodeRunArgs),
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
    /// Make, fill and check template VMs: build from Debian, install the agent, boot a probe.
    #[command(subcommand)]
    Template(template::TemplateCommand),
}

/// Dispatch one parsed command line, run in environment `env`.
pub fn run(cli: Cli, env: &Environment) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ad(cmd) => ad::run(cmd),
        Command::Disk(cmd) => disk::run(cmd),
        Command::Translate(a) => hooks::run_translate(&a, env),
        Command::Finalize(a) => hooks::run_finalize(&a, env),
        Command::Cleanup(a) => hooks::run_cleanup(&a, env),
        Command::Update(a) => hooks::run_update(&a),
        Command::InstallHooks(a) => install::run_install(&a, env),
        Command::Run(a) => run::run_cmd(&a, env),
        Command::Demo(a) => demo::run_demo(&a, env),
        Command::Doctor(a) => doctor::run_doctor(&a, env),
        Command::Probe(a) => probe::run_probe(&a, env),
        Command::LibvirtXml(a) => libvirt_xml::run_libvirt_xml(&a, env),
        Command::PrepareJob(a) => node::run_prepare_job(&a, env),
        Command::NodeRun(a) => node::run_node_run(&a, env),
        Command::Generate(a) => generate::run_generate(&a),
        Command::Template(cmd) => template::run(cmd, env),
    }
}
