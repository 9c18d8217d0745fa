//! `vm-capsule install-hooks DIR`: link the hooks as executables HTCondor can run by path,
//! then write the configuration they need.
//!
//! HTCondor runs a hook by path with no arguments (JobRouterHookMgr: `spawn(client, NULL,
//! ...)`), so each is a link named after it that dispatches by `argv[0]`. The startd probe
//! and the libvirt script are `vm-capsule` itself with the command as an argument
//! (`STARTD_CRON_<NAME>_ARGS`, `LIBVIRT_XML_SCRIPT_ARGS`): the startd cron passes the cron
//! job's name as argv[0]. HTCondor refuses hooks in a world-writable directory
//! (`validateHookPath`), so we refuse to put them there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use vm_capsule_admin::snippet::{Snippet, HOOKS, LINKED_COMMANDS};
use vm_capsule_core::agent::{self, Linkage};
use vm_capsule_core::environment::Environment;
use vm_capsule_core::perms;

/// Where the configuration goes unless told otherwise.
pub const DEFAULT_CONFIG_FILE: &str = vm_capsule_admin::snippet::CONFIG_FILE;

/// Arguments of `install-hooks`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Directory for the hook executables (not world-writable: HTCondor refuses those).
    dir: PathBuf,
    /// HTCondor hook keyword used in the configuration.
    #[arg(long, default_value = "VMCAPSULE")]
    keyword: String,
    /// The guest agent to name in the configuration [default: capsule-init beside this
    /// program].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Print the configuration on stdout instead of writing it.
    #[arg(long)]
    print: bool,
    /// Where to write the configuration.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_FILE)]
    config_file: PathBuf,
    /// Replace an existing configuration file that differs.
    #[arg(long)]
    force: bool,
    /// Stage into this root instead of `/` (packaging): links go to DESTDIR/DIR, the
    /// configuration to DESTDIR/FILE, and both name the final paths.
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
}

/// Make the links, check the agent, write or print the configuration.
pub fn run_install(args: &InstallArgs, env: &Environment) -> Result<ExitCode> {
    let exe = env
        .current_exe
        .clone()
        .context("cannot find the vm-capsule binary")?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let staged = |p: &Path| match &args.destdir {
        Some(root) => root.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_owned(),
    };
    let real_dir = staged(&args.dir);
    if let Some(why) = perms::unsafe_dir(&real_dir) {
        bail!("refusing to install hooks in {}: {why}", real_dir.display());
    }
    if let Some(why) = perms::unsafe_program(&exe) {
        bail!("refusing to link the hooks to {}: {why}", exe.display());
    }
    create_dir(&real_dir)?;
    let real_dir = std::fs::canonicalize(&real_dir).unwrap_or(real_dir);
    // What the configuration names: the final path (under DESTDIR: as given).
    let dir = if args.destdir.is_some() {
        args.dir.clone()
    } else {
        real_dir.clone()
    };
    let beside = exe.parent() == Some(real_dir.as_path());
    for name in HOOKS.iter().map(|(h, _)| *h).chain(LINKED_COMMANDS) {
        let link = real_dir.join(format!("vm-capsule-{name}"));
        // Relative when beside the binary, so a packaged tree works wherever it is unpacked.
        let target = if beside {
            PathBuf::from(exe.file_name().unwrap_or_default())
        } else {
            exe.clone()
        };
        replace_symlink(&target, &link)?;
    }
    // Earlier versions linked the probe too; from the startd cron it only printed its usage.
    let stale = real_dir.join("vm-capsule-probe");
    if std::fs::symlink_metadata(&stale).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&stale)
            .with_context(|| format!("cannot remove the old link {}", stale.display()))?;
    }
    let final_exe = if beside {
        dir.join(exe.file_name().unwrap_or_default())
    } else {
        exe.clone()
    };
    let mut snippet = Snippet::for_dir(&dir);
    snippet.keyword.clone_from(&args.keyword);
    snippet.agent = args
        .agent
        .clone()
        .unwrap_or_else(|| final_exe.with_file_name("capsule-init"));
    snippet.program = final_exe;
    warn_about_program(
        &staged(&snippet.agent),
        "the guest agent (VM_CAPSULE_INIT_SCRIPT_PATH)",
    );
    warn_about_program(&exe, "the launcher (VM_CAPSULE_LAUNCHER_PATH)");
    let text = snippet.render();
    if args.print {
        std::io::stdout().lock().write_all(text.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let config_file = staged(&args.config_file);
    if args.destdir.is_some() {
        if let Some(parent) = config_file.parent() {
            create_dir(parent)?;
        }
    }
    write_config(&config_file, &text, args.force)?;
    eprintln!(
        "vm-capsule install-hooks: hooks in {}; configuration written to {}; check with `vm-capsule doctor`",
        real_dir.display(),
        config_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A warning on stderr when `path` is missing or dynamically linked (it would fail in a
/// guest or on an execute node without our libraries).
fn warn_about_program(path: &Path, what: &str) {
    match agent::linkage(path) {
        Ok(Linkage::Static | Linkage::Script) => {}
        Ok(Linkage::Dynamic { interpreter }) => eprintln!(
            "vm-capsule install-hooks: warning: {what} {} is dynamically linked (needs {interpreter}): it will not run in a minimal guest or on a node without the same libraries; use a static build (`cargo build --release` in the vm-capsule workspace makes one)",
            path.display()
        ),
        Err(e) => eprintln!("vm-capsule install-hooks: warning: {what}: {e}"),
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn write_config(file: &Path, text: &str, force: bool) -> Result<()> {
    if let Ok(old) = std::fs::read_to_string(file) {
        if old == text {
            return Ok(());
        }
        if !force {
            bail!(
                "{} exists and differs from what this version writes; compare with `vm-capsule install-hooks --print`, then re-run with --force to replace it",
                file.display()
            );
        }
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "{} does not exist (is HTCondor installed here?); use --print to see the configuration, or --config-file to put it elsewhere",
            dir.display()
        );
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".vm-capsule-conf.")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(link)
            .with_context(|| format!("cannot replace {}", link.display()))?,
        Ok(_) => anyhow::bail!(
            "{} exists and is not a link; remove it first",
            link.display()
        ),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot create {}", link.display()))
}
