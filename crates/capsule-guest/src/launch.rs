//! Before the job: locate a data disk named by its label, and hand over to the agent the host
//! shipped on the data disk when it differs from this binary, so the hooks and the agent that
//! runs the job are always the same version, whatever agent the guest image was built with.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use capsule_disk::{Access, DataDisk};
use capsule_manifest::CAPSULE_INIT;

use crate::agent::SourceSpec;
use crate::args::Args;
use crate::find;

/// Largest shipped agent accepted (the static build is about 2 MiB).
const MAX_AGENT_BYTES: u64 = 64 << 20;

/// Turn `--label` into the device that carries it, waiting for it up to `--wait`.
///
/// # Errors
/// No such disk appeared in time (the message lists the disks seen).
pub fn locate(args: &mut Args) -> Result<()> {
    let SourceSpec::Label(label) = &args.source else {
        return Ok(());
    };
    let start = Instant::now();
    let device = find::wait_for(label, args.wait, &args.places)?;
    crate::log!(
        "data disk labelled {label}: {} (found after {:.1} ms)",
        device.display(),
        start.elapsed().as_secs_f64() * 1e3
    );
    args.source = SourceSpec::Device(device);
    Ok(())
}

/// With `--shipped-agent`, run the data disk's `capsule-init` in place of this process when it
/// differs from this binary. Returns when this binary should run the job itself: no shipped
/// agent, the same one, or one that cannot be run (logged; this one is as good a fallback).
pub fn hand_over(args: &Args) {
    if !args.shipped_agent {
        return;
    }
    let device = match &args.source {
        SourceSpec::Device(d) | SourceSpec::Image(d) => d.clone(),
        SourceSpec::Dir(_) | SourceSpec::Label(_) => return,
    };
    match exec_shipped(args, &device) {
        Ok(Handover::NotShipped) => crate::log!("no agent on the data disk; running this one"),
        Ok(Handover::Same) => crate::log!("the agent on the data disk is this one"),
        Err(e) => {
            crate::log!("cannot run the agent shipped on the data disk ({e:#}); running this one")
        }
    }
}

/// Why [`exec_shipped`] returned instead of replacing the process.
enum Handover {
    NotShipped,
    Same,
}

fn exec_shipped(args: &Args, device: &Path) -> Result<Handover> {
    let shipped = {
        let disk = DataDisk::open(device, Access::ReadOnly)
            .with_context(|| format!("cannot open {}", device.display()))?;
        match disk.stat(CAPSULE_INIT)? {
            None => return Ok(Handover::NotShipped),
            Some(s) if s.is_dir => return Ok(Handover::NotShipped),
            Some(s) if s.size > MAX_AGENT_BYTES => {
                anyhow::bail!("{CAPSULE_INIT} is {} bytes, over {MAX_AGENT_BYTES}", s.size)
            }
            Some(_) => {}
        }
        let mut bytes = Vec::new();
        disk.open_file(CAPSULE_INIT)?
            .take(MAX_AGENT_BYTES)
            .read_to_end(&mut bytes)
            .context("cannot read it")?;
        bytes
    };
    let own = fs::read("/proc/self/exe").context("cannot read /proc/self/exe")?;
    if own == shipped {
        return Ok(Handover::Same);
    }
    // In the scratch root, on the guest's own file system: /run and /tmp may be noexec.
    // The scratch root stays traversable: the job's work dir will be inside it.
    fs::create_dir_all(&args.scratch)
        .with_context(|| format!("cannot create {}", args.scratch.display()))?;
    let dir = args.scratch.join("agent");
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cannot create {}", dir.display()));
        }
        _ => {}
    }
    let path = dir.join(CAPSULE_INIT);
    let _ = fs::remove_file(&path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &shipped))
        .with_context(|| format!("cannot write {}", path.display()))?;
    crate::log!(
        "running the agent shipped on the data disk ({} bytes, {})",
        shipped.len(),
        path.display()
    );
    let mut cmd = Command::new(&path);
    cmd.arg("--device")
        .arg(device)
        .arg("--scratch")
        .arg(&args.scratch)
        .arg("--etc-dir")
        .arg(&args.etc_dir);
    if args.no_poweroff {
        cmd.arg("--no-poweroff");
    }
    if args.as_current_user {
        cmd.arg("--as-current-user");
    }
    // Only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot execute {}", path.display()))
}
