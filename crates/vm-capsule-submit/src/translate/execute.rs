//! Carrying out a [`CapsulePlan`]: the only part of translate that writes.
//!
//! The job dir is made as `<cluster>.<proc>.<random>.staging` and renamed to its final name
//! only once everything is staged: a translate killed on the way leaves a `.staging` dir
//! that a later translate of the same owner reclaims, and any error removes what was staged.
//! A full scratch file system is a passing problem, said as such, never a hold.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::error::{error_chain, is_storage_full, TranslateError, Translated};
use super::plan::{file_name, overlay_name, CapsulePlan};
use super::vm::{link_into, write_vmx};
use crate::log::HookLog;
use vm_capsule_core::capsule::{BuildError, DiskContents};
use vm_capsule_core::routed;
use vm_capsule_core::scratch::{OwnerDir, ScratchError, ScratchPrefix};
use vm_capsule_core::settings::TranslateSettings;
use vm_capsule_core::template::overlay::create_overlay;
use vm_capsule_core::template::Flavour;

/// Stage the capsule the plan describes and return the routed ad.
///
/// # Errors
/// [`TranslateError`]: an unsafe scratch prefix is the admin's to fix; I/O trouble (a full
/// file system included) is passing. Nothing staged stays behind on error.
pub fn execute(
    plan: &CapsulePlan,
    cfg: &TranslateSettings,
    log: &mut HookLog,
) -> Result<Translated, TranslateError> {
    let prefix = ScratchPrefix::new(&cfg.scratch_prefix);
    let owner = prefix
        .owner_dir(&plan.job.owner, true)
        .map_err(scratch_error)?;
    let reclaimed = owner.sweep(
        Duration::from_secs(cfg.hook_timeout_secs + 60),
        cfg.keep_failed,
    );
    if reclaimed > 0 {
        log.info(&format!(
            "removed {reclaimed} stale or old failed job dir(s) in {}",
            owner.path().display()
        ));
    }
    // The name the routed ad was built for; taken already (by chance) means try again later.
    let staging = owner
        .create_named_job_dir(&plan.job_dir_name)
        .map_err(|e| match e {
            e if e.is_exists() => TranslateError::Io {
                what: format!(
                    "cannot make job dir {} (the name is taken; the next try picks another)",
                    owner.path().join(&plan.job_dir_name).display()
                ),
                source: std::io::Error::other(error_chain(&e)),
            },
            e => scratch_error(e),
        })?;
    let staged = stage(plan, staging.path(), plan.routed.capsule_ad.as_deref());
    let committed = staged.and_then(|()| staging_commit(staging, &owner));
    match committed {
        Ok(dir) => {
            log.info(&format!(
                "job {} staged in {} ({} MiB {} data disk)",
                plan.job.id(),
                dir.display(),
                plan.disk.bytes.unwrap_or(0) >> 20,
                plan.disk.recipe.format.name()
            ));
            Ok(Translated {
                stdout: plan.routed.stdout.clone(),
                scratch: dir,
                routed: plan.routed.ad.clone(),
            })
        }
        Err((dir, err)) => {
            if let Err(e) = fs::remove_dir_all(&dir) {
                log.warn(&format!("cannot remove {}: {e}", dir.display()));
            }
            Err(err)
        }
    }
}

fn staging_commit(
    staging: vm_capsule_core::scratch::JobDir,
    owner: &OwnerDir,
) -> Result<std::path::PathBuf, (std::path::PathBuf, TranslateError)> {
    let path = staging.path().to_owned();
    staging
        .commit(owner)
        .map(|d| d.path().to_owned())
        .map_err(|e| (path, scratch_error(e)))
}

fn scratch_error(e: ScratchError) -> TranslateError {
    if e.is_admin_problem() {
        TranslateError::Admin(e.to_string())
    } else if e.is_storage_full() {
        TranslateError::ScratchFull {
            path: match &e {
                ScratchError::Io { path, .. } => path.clone(),
                _ => Default::default(),
            },
            detail: error_chain(&e),
        }
    } else {
        TranslateError::Admin(error_chain(&e))
    }
}

/// Write everything into `dir`; on error, the error and the dir to remove.
fn stage(
    plan: &CapsulePlan,
    dir: &Path,
    capsule_ad: Option<&str>,
) -> Result<(), (std::path::PathBuf, TranslateError)> {
    let fail = |e| (dir.to_owned(), e);
    match capsule_ad {
        None => write_data_disk(plan, dir).map_err(fail)?,
        // The vanilla launcher makes the data disk on the node, from the inputs HTCondor
        // brings there: translate writes only these small files, whatever the inputs weigh.
        Some(text) => {
            let files: [(&str, &[u8]); 3] = [
                (routed::CAPSULE_AD, text.as_bytes()),
                (routed::CAPSULE_JSON_FILE, &plan.manifest_json),
                (routed::JOB_AD_FILE, plan.job_ad_text.as_bytes()),
            ];
            for (name, data) in files {
                let path = dir.join(name);
                fs::write(&path, data).map_err(|e| fail(io_error(&path, "cannot write", e)))?;
            }
        }
    }
    stage_vm(plan, dir).map_err(fail)?;
    Ok(())
}

/// An I/O failure while staging: a full file system is said as such.
fn io_error(
    path: &Path,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> TranslateError {
    if is_storage_full(&e) {
        TranslateError::ScratchFull {
            path: path.to_owned(),
            detail: format!("{what} {}: {}", path.display(), error_chain(&e)),
        }
    } else {
        TranslateError::Io {
            what: format!("{what} {}", path.display()),
            source: std::io::Error::other(error_chain(&e)),
        }
    }
}

/// The data disk: manifest, job ad, agent, inputs.
fn write_data_disk(plan: &CapsulePlan, dir: &Path) -> Result<(), TranslateError> {
    let path = dir.join(&plan.disk.name);
    let contents = DiskContents {
        manifest_json: &plan.manifest_json,
        job_ad: plan.job_ad_text.as_bytes(),
        agent: plan.agent.as_deref(),
        inputs: &plan.inputs,
        seed: &plan.seed,
    };
    let bytes = plan.disk.bytes.unwrap_or(0);
    plan.disk
        .recipe
        .build(&path, bytes, &contents)
        .map_err(|e| match e {
            BuildError::Inputs(ref inputs) if inputs.is_the_jobs() => TranslateError::Job {
                job: plan.job.id(),
                reason: e.to_string(),
            },
            BuildError::Agent { .. } => {
                TranslateError::Admin(format!("{e}; check VM_CAPSULE_INIT_SCRIPT_PATH"))
            }
            other => io_error(&path, "cannot make the data disk", other),
        })
}

/// The VM around the data disk: template files linked in, overlays, the VMware `.vmx`, the
/// direct-boot files.
fn stage_vm(plan: &CapsulePlan, dir: &Path) -> Result<(), TranslateError> {
    let template = &plan.template;
    for disk in &template.os_disks {
        let base = file_name(&disk.path);
        let overlay_file = overlay_name(&base);
        // Staged once per execute node: nothing of it travels, the overlay names its path there.
        let node = plan.node_bases.iter().find(|b| b.overlay == overlay_file);
        if node.is_none() {
            for file in &disk.files {
                link_into(file, dir).map_err(|e| io_error(file, "cannot link into scratch", e))?;
            }
        }
        if matches!(template.flavour, Flavour::Kvm | Flavour::Xen) {
            let backing = node.map_or_else(|| base.clone(), |b| b.path.display().to_string());
            let overlay = dir.join(&overlay_file);
            create_overlay(&overlay, &backing, disk.format.name(), disk.virtual_size)
                .map_err(|e| io_error(&overlay, "cannot create the overlay", e))?;
        }
    }
    if let (Flavour::Vmware, Some(vmx)) = (&template.flavour, &template.vmx) {
        let dest = dir.join(file_name(vmx));
        write_vmx(vmx, &dest, &plan.disk.name).map_err(|e| io_error(&dest, "cannot write", e))?;
    }
    if let Some(boot) = &template.boot {
        for file in std::iter::once(&boot.kernel).chain(boot.initrd.as_ref()) {
            link_into(file, dir).map_err(|e| io_error(file, "cannot link into scratch", e))?;
        }
    }
    Ok(())
}
