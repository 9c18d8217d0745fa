//! `vm-capsule template`: make a template (`build`), put the agent into an existing image
//! (`install-agent`), and boot a template once with a probe job to see that it works (`check`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use vm_capsule_admin::template::build::{self, AgentStart, BuildOptions};
use vm_capsule_admin::template::check::{self, CheckOptions, CheckReport};
use vm_capsule_core::environment::Environment;
use vm_capsule_core::settings::knobs;

/// `template` subcommands.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Build a template from Debian's packages (mmdebstrap): a BIOS-bootable qcow2 OS disk
    /// with systemd, the agent and its unit, a data disk and a classad template. Needs root.
    Build(BuildArgs),
    /// Put the agent and its systemd unit into an existing image (in place) with
    /// virt-customize (Debian: libguestfs-tools; Rocky/Alma: guestfs-tools).
    InstallAgent(InstallArgs),
    /// Boot a template once with a probe job: time each stage, show what the job saw, and say
    /// which stage failed if one did (exit 1).
    Check(CheckArgs),
}

/// Arguments of `template install-agent`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The image to change (qcow2, raw, vmdk...); keep a copy if you need the original.
    image: PathBuf,
    /// The static agent [default: capsule-init beside vm-capsule].
    #[arg(long, value_name = "FILE")]
    agent: Option<PathBuf>,
    /// The data disk label the unit waits for (VM_CAPSULE_DATA_DISK_LABEL).
    #[arg(long, default_value = "CONDORDATA")]
    label: String,
}

/// Arguments of `template check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The template directory (what VM_CAPSULE_TEMPLATE names: it holds condor_vm_capsule/).
    dir: PathBuf,
    /// The static agent shipped on the data disk [default: capsule-init beside vm-capsule].
    #[arg(long, value_name = "FILE")]
    agent: Option<PathBuf>,
    /// Check it as a stock cloud image (VM_CAPSULE_AGENT_START = cloud-init).
    #[arg(long)]
    cloud_init: bool,
    /// The classad template to use [default: DIR/classad-template.ad when it exists].
    #[arg(long, value_name = "FILE")]
    classad_template: Option<PathBuf>,
    /// Seconds before a guest that does not power off is given up on.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = super::run::AccelArg::Auto)]
    accel: super::run::AccelArg,
    /// Work in this directory and keep it (capsule, console log).
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Boot this many times and also print the medians (for benchmarks).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

/// Arguments of `template build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Debian suite to build from.
    #[arg(long = "debian", value_name = "SUITE", default_value = "bookworm")]
    suite: String,
    /// The template directory to create (what VM_CAPSULE_TEMPLATE names).
    out: PathBuf,
    /// Make a plain Debian cloud image (cloud-init, no agent in it), for
    /// VM_CAPSULE_AGENT_START = cloud-init.
    #[arg(long)]
    cloud_init: bool,
    /// The static agent to put in the image [default: capsule-init beside vm-capsule].
    #[arg(long, value_name = "FILE")]
    agent: Option<PathBuf>,
    /// Virtual size of the OS disk (only what is used takes space).
    #[arg(long, default_value = "2G")]
    size: String,
    /// Debian mirror [default: deb.debian.org].
    #[arg(long)]
    mirror: Option<String>,
    /// Where root file systems and packages are kept between builds: a directory of yours
    /// that no one else can write (made with mode 0700 if missing) [default:
    /// $XDG_CACHE_HOME/vm-capsule/template-build, else ~/.cache/vm-capsule/template-build;
    /// never the temp dir].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Also boot the image's own kernel directly (vmlinuz, initrd.img, cmdline in the
    /// template): faster; VM-universe nodes need vm-capsule's `libvirt-xml` as their
    /// LIBVIRT_XML_SCRIPT (docs/ADMIN.md).
    #[arg(long)]
    direct_boot: bool,
    /// SOURCE_DATE_EPOCH: every time stamp in the image (same inputs, same image).
    #[arg(long, default_value_t = 1_700_000_000)]
    epoch: u64,
}

/// Dispatch one `template` subcommand.
pub fn run(cmd: TemplateCommand, env: &Environment) -> Result<ExitCode> {
    match cmd {
        TemplateCommand::Build(a) => run_build(&a, env),
        TemplateCommand::Check(a) => run_check(&a, env),
        TemplateCommand::InstallAgent(a) => run_install(&a, env),
    }
}

fn run_build(a: &BuildArgs, env: &Environment) -> Result<ExitCode> {
    let size = capsule_disk::parse_size(&a.size)
        .with_context(|| format!("--size {:?}: expected a size such as 2G or 1536M", a.size))?;
    let agent = a.agent.clone().unwrap_or_else(|| default_agent(env));
    let start = if a.cloud_init {
        AgentStart::CloudInit
    } else {
        check_static(&agent)?;
        AgentStart::Image
    };
    let cache = match &a.cache {
        Some(c) => std::path::absolute(c)
            .with_context(|| format!("--cache {}: cannot resolve it", c.display()))?,
        None => build::cache::default_cache(env.xdg_cache_home.clone(), env.home.clone())?,
    };
    let opts = BuildOptions {
        suite: a.suite.clone(),
        mirror: a.mirror.clone(),
        out: a.out.clone(),
        start,
        agent,
        size,
        cache,
        epoch: a.epoch,
        direct_boot: a.direct_boot,
    };
    let started = std::time::Instant::now();
    let built = build::build(&opts, &mut |m| {
        eprintln!(
            "template build: [{:5.1} s] {m}",
            started.elapsed().as_secs_f64()
        );
    })?;
    eprintln!(
        "template build: done in {:.0} s: {} ({} MiB, kernel {}, sha256 {})",
        started.elapsed().as_secs_f64(),
        built.os_disk.display(),
        built.os_bytes >> 20,
        built.kernel_version,
        built.os_sha256
    );
    // The configuration to use it, on stdout. Its classad-template.ad is read from there
    // without a knob of its own.
    let out = std::path::absolute(&a.out).unwrap_or_else(|_| a.out.clone());
    println!("{} = {}", knobs::TEMPLATE.name, out.display());
    if start == AgentStart::CloudInit {
        println!("{} = cloud-init", knobs::AGENT_START.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// The agent must be a static binary: it runs in guests whose C library we do not know.
fn check_static(agent: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(agent).with_context(|| {
        format!(
            "cannot read the agent {}; pass --agent (scripts/build-test-guest.sh builds a static one)",
            agent.display()
        )
    })?;
    match vm_capsule_admin::template::elf::interpreter(&bytes) {
        Ok(None) => Ok(()),
        Ok(Some(interp)) => anyhow::bail!(
            "the agent {} is dynamically linked (interpreter {interp}); build it static: RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p capsule-guest --target x86_64-unknown-linux-gnu",
            agent.display()
        ),
        Err(why) => anyhow::bail!("the agent {} is not an x86_64 Linux program: {why}", agent.display()),
    }
}

fn run_install(a: &InstallArgs, env: &Environment) -> Result<ExitCode> {
    let agent = a.agent.clone().unwrap_or_else(|| default_agent(env));
    check_static(&agent)?;
    let opts = vm_capsule_admin::template::install::InstallOptions {
        image: a.image.clone(),
        agent,
        label: a.label.clone(),
    };
    let started = std::time::Instant::now();
    vm_capsule_admin::template::install::install_agent(&opts, &mut |m| {
        eprintln!("template install-agent: {m}");
    })?;
    eprintln!(
        "template install-agent: done in {:.0} s: /usr/local/sbin/capsule-init and capsule-init.service (enabled) in {}; check it: vm-capsule template check DIR",
        started.elapsed().as_secs_f64(),
        a.image.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The agent installed beside this program.
fn default_agent(env: &Environment) -> PathBuf {
    env.current_exe
        .as_deref()
        .and_then(|p| p.parent().map(|d| d.join("capsule-init")))
        .unwrap_or_else(|| PathBuf::from("capsule-init"))
}

fn run_check(a: &CheckArgs, env: &Environment) -> Result<ExitCode> {
    let mut knobs = Vec::new();
    if a.cloud_init {
        knobs.push((knobs::AGENT_START.name.to_owned(), "cloud-init".to_owned()));
    }
    let classad =
        vm_capsule_core::template::classad_template_for(&a.dir, a.classad_template.clone());
    if let Some(path) = classad {
        knobs.push((
            knobs::CONDOR_CLASSAD_TEMPLATE.name.to_owned(),
            path.display().to_string(),
        ));
    }
    let opts = CheckOptions {
        template_root: std::path::absolute(&a.dir).unwrap_or_else(|_| a.dir.clone()),
        agent: a.agent.clone().unwrap_or_else(|| default_agent(env)),
        knobs,
        timeout: std::time::Duration::from_secs(a.timeout),
        accel: a.accel.into(),
        keep: a.keep.clone(),
        env: env.clone(),
    };
    let mut reports = Vec::new();
    for i in 0..a.repeat.max(1) {
        let report = check::check(&opts, &mut |m| eprintln!("template check: {m}"))?;
        print_report(&report, (a.repeat > 1).then_some(i + 1));
        let good = report.verdict.is_good();
        reports.push(report);
        if !good {
            return Ok(ExitCode::FAILURE);
        }
    }
    if reports.len() > 1 {
        let median = |f: &dyn Fn(&CheckReport) -> Option<std::time::Duration>| {
            let mut v: Vec<f64> = reports
                .iter()
                .filter_map(|r| f(r).map(|d| d.as_secs_f64()))
                .collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        println!(
            "medians of {}: QEMU start -> agent start {:.2} s, agent start -> job start {:.2} s, QEMU start -> job start {:.2} s, job end -> poweroff {:.2} s",
            reports.len(),
            median(&|r| r.timings.boot_to_agent()),
            median(&|r| r.timings.agent_to_job()),
            median(&|r| r.timings.job),
            median(&|r| r.timings.end_to_poweroff()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &CheckReport, run: Option<u32>) {
    let secs = |d: Option<std::time::Duration>| {
        d.map_or_else(|| "-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
    };
    if let Some(n) = run {
        println!("run {n}:");
    }
    println!(
        "  QEMU start -> agent start   {}",
        secs(r.timings.boot_to_agent())
    );
    println!(
        "  agent start -> job start    {}",
        secs(r.timings.agent_to_job())
    );
    println!(
        "  job end -> poweroff         {}",
        secs(r.timings.end_to_poweroff())
    );
    println!("  QEMU start -> job start     {}", secs(r.timings.job));
    if let Some(p) = &r.probe {
        println!("  the job saw: kernel {}", p.kernel);
        println!("               distribution {}", p.distribution);
        if p.user == r.job_user {
            println!("               user {}", p.user);
        } else {
            println!(
                "               user {} (the image has no account {}, VM_CAPSULE_JOB_USER: add one if jobs need it)",
                p.user, r.job_user
            );
        }
        println!("               working dir {}", p.working_dir);
        println!(
            "               free disk {}",
            p.free_kib
                .map_or_else(|| "unknown".to_owned(), |k| format!("{} MiB", k / 1024))
        );
    }
    println!("verdict: {}", r.verdict.explain());
    if !r.verdict.is_good() {
        println!("console log {} ends with:", r.console.display());
        for line in &r.console_tail {
            println!("  | {line}");
        }
    }
}
