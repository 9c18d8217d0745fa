//! Staging the capsule: the data disk with manifest, job ad, agent and inputs; the routed ad.

use std::fs;
use std::path::Path;

use capsule_disk::{CreateOptions, DataDisk};
use capsule_manifest::{EntryKind, InputEntry, Manifest, OutputRule};
use classad::ClassAd;

use crate::hooks::log::HookLog;
use crate::job::JobSpec;
use crate::routed::{self};
use crate::template::Template;

use super::*;

/// Build everything in `scratch` and the routed ad.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
pub(super) fn stage(
    cfg: &TranslateConfig,
    job: &JobSpec,
    job_ad: &ClassAd,
    template: &Template,
    inputs: &InputPlan,
    scratch: &Path,
    universe: RoutedUniverse,
    log: &mut HookLog,
) -> Result<Translated, TranslateError> {
    // The guest agent travels on the data disk (unless the guest image has its own).
    let init_size = match &cfg.init_path {
        Some(path) => fs::metadata(path)
            .map_err(|e| {
                permanent(
                    job,
                    format!(
                        "vm-capsule guest agent {} is missing ({e}); set VM_CAPSULE_INIT_SCRIPT_PATH (or to none if the guest image has one)",
                        path.display()
                    ),
                )
            })?
            .len(),
        None => 0,
    };

    let manifest = build_manifest(cfg, job, inputs);
    let manifest_json = manifest
        .to_json()
        .map_err(|e| permanent(job, format!("job {}: {e}", job.id())))?;
    let job_ad_text = classad::print::ad_to_hook_string(job_ad)
        .unwrap_or_else(|_| classad::print::ad_to_new_string(job_ad));

    // Size: inputs + agent + manifest, plus room for outputs, plus FAT overhead.
    let payload = inputs.tar_bytes
        + init_size
        + u64::try_from(manifest_json.len() + job_ad_text.len()).unwrap_or(0);
    let headroom = job
        .request_disk_kib
        .map_or(cfg.headroom_mib << 20, |kib| kib.saturating_mul(1024));
    let mib = 1u64 << 20;
    let needed = payload
        .saturating_add(headroom)
        .saturating_add(payload / 32 + 4 * mib)
        .div_ceil(mib)
        .max(64);
    if needed > cfg.max_data_disk_mib {
        return Err(permanent(
            job,
            format!(
                "job {}: needs a {needed} MiB data disk (inputs {} MiB + output room {} MiB), more than VM_CAPSULE_MAX_DATA_DISK_MB = {}; lower request_disk or transfer less",
                job.id(),
                inputs.tar_bytes >> 20,
                headroom >> 20,
                cfg.max_data_disk_mib
            ),
        ));
    }

    let data_name = template.data_disk.path.file_name().map_or_else(
        || "data.img".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let data_path = scratch.join(&data_name);
    let offset = cfg
        .partition_offset
        .unwrap_or(template.data_partition_offset);
    let opts = CreateOptions::new()
        .size(needed * mib)
        .format(template.data_disk.format)
        .partition_offset(offset)
        .label(cfg.label.clone());
    let disk = DataDisk::create(&data_path, &opts).map_err(|e| {
        transient(
            &format!("cannot create data disk {}", data_path.display()),
            e,
        )
    })?;
    let io_err = |what: &str, e: capsule_disk::Error| {
        transient(&format!("{what} on {}", data_path.display()), e)
    };
    disk.put_file(
        capsule_manifest::CAPSULE_JSON,
        &mut manifest_json.as_slice(),
    )
    .map_err(|e| io_err("writing capsule.json", e))?;
    disk.put_file(capsule_manifest::JOB_AD, &mut job_ad_text.as_bytes())
        .map_err(|e| io_err("writing job.ad", e))?;
    if let Some(path) = &cfg.init_path {
        let mut agent = fs::File::open(path)
            .map_err(|e| transient(&format!("cannot read {}", path.display()), e))?;
        disk.put_file(capsule_manifest::CAPSULE_INIT, &mut agent)
            .map_err(|e| io_err("writing capsule-init", e))?;
    }
    write_input_tar(&disk, inputs).map_err(|e| {
        permanent(
            job,
            format!("job {}: cannot pack the inputs: {e}", job.id()),
        )
    })?;
    disk.finish().map_err(|e| io_err("finishing", e))?;

    let staged = stage_vm(cfg, job, template, scratch, &data_name)?;
    let vm_ad = routed::build(job, job_ad, template, &staged);
    let routed = match universe {
        RoutedUniverse::Vm => vm_ad,
        RoutedUniverse::Vanilla => {
            // The launcher boots the VM described by the VM ad, from its own sandbox.
            let description = crate::hooks::ad_lines(&vm_ad)
                .map_err(|e| permanent(job, format!("job {}: capsule.ad: {e}", job.id())))?;
            fs::write(scratch.join(routed::CAPSULE_AD), description)
                .map_err(|e| transient("cannot write capsule.ad", e))?;
            // Without a job time limit the launcher still stops a guest that hangs.
            let timeout = cfg.wall_time_limit_secs.unwrap_or(24 * 3600) + cfg.boot_timeout_secs;
            routed::build_vanilla(job, job_ad, &staged, &cfg.launcher_path, timeout)
        }
    };
    let stdout = crate::hooks::ad_lines(&routed)
        .map_err(|e| permanent(job, format!("job {}: routed ad: {e}", job.id())))?;
    if stdout.len() > PIPE_BUFFER_MAX {
        return Err(permanent(
            job,
            format!(
                "job {}: the routed ad is {} bytes, over the JobRouter's PIPE_BUFFER_MAX of {PIPE_BUFFER_MAX}; raise JOB_ROUTER.PIPE_BUFFER_MAX",
                job.id(),
                stdout.len()
            ),
        ));
    }
    if stdout.len() > PIPE_BUFFER_WARN {
        log.warn(&format!(
            "routed ad for job {} is {} bytes, close to PIPE_BUFFER_MAX ({PIPE_BUFFER_MAX}); consider raising JOB_ROUTER.PIPE_BUFFER_MAX",
            job.id(),
            stdout.len()
        ));
    }
    log.info(&format!(
        "job {} staged in {} ({} MiB {} data disk)",
        job.id(),
        scratch.display(),
        needed,
        template.data_disk.format.name()
    ));
    Ok(Translated {
        stdout,
        scratch: scratch.to_owned(),
        routed,
    })
}

pub(super) fn build_manifest(cfg: &TranslateConfig, job: &JobSpec, inputs: &InputPlan) -> Manifest {
    let (executable, argv0) = if job.transfer_executable {
        let name = job.executable_name();
        (name.clone(), name)
    } else {
        let path = job.executable.display().to_string();
        (path.clone(), path)
    };
    let mut argv = vec![argv0];
    argv.extend(job.args.iter().cloned());
    let mut m = Manifest::new(executable, argv);
    m.env = job.env.iter().cloned().collect();
    m.stdin = job.stdin.as_ref().map(|s| s.name.clone());
    m.user.clone_from(&cfg.job_user);
    m.wall_time_limit_secs = cfg.wall_time_limit_secs;
    m.output = match &job.outputs {
        Some(paths) => OutputRule::Explicit {
            paths: paths.clone(),
        },
        None => OutputRule::Default,
    };
    m.inputs = inputs
        .items
        .iter()
        .map(|i| InputEntry {
            path: i.name.clone(),
            kind: if i.is_dir {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
        })
        .collect();
    m
}
