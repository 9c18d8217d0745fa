//! The translate hook from stdin to routed ad.

use std::fs;
use std::path::PathBuf;

use classad::stream::parse_hook_stream;

use crate::hooks::log::HookLog;
use crate::job::JobSpec;
use crate::template::Template;

use super::*;

/// Translate the hook's stdin into a routed ad, staging the capsule in a new scratch dir.
///
/// # Errors
/// [`TranslateError`]; on a permanent error a partly staged scratch dir is kept (and
/// logged) for inspection, on a transient one it is removed.
pub fn translate(
    stdin: &str,
    cfg: &TranslateConfig,
    log: &mut HookLog,
) -> Result<Translated, TranslateError> {
    let ads = parse_hook_stream(stdin).map_err(|e| TranslateError::Permanent {
        job: None,
        reason: format!("cannot parse the job ad from the JobRouter: {e}"),
    })?;
    let job_ad = ads
        .iter()
        .rev()
        .find(|a| !a.new_syntax)
        .map(|a| a.ad.clone())
        .ok_or_else(|| TranslateError::Permanent {
            job: None,
            reason: "no job ad on stdin (expected the route line, ------, then the job ad)"
                .to_owned(),
        })?;
    let job = JobSpec::from_ad(&job_ad).map_err(|e| TranslateError::Permanent {
        job: None,
        reason: e.to_string(),
    })?;
    // The route's universe picks the flavour (13: VM universe, 5: vanilla); a knob overrides.
    let route_universe = ads
        .iter()
        .find(|a| a.new_syntax)
        .and_then(|a| classad::eval::evaluate_attr(&a.ad, "TargetUniverse").as_integer());
    let universe = cfg.routed_universe.unwrap_or(match route_universe {
        Some(5) => RoutedUniverse::Vanilla,
        _ => RoutedUniverse::Vm,
    });
    log.info(&format!(
        "translating job {} of {} ({:?} flavour)",
        job.id(),
        job.owner,
        universe
    ));

    let template = Template::load(&cfg.template_root, cfg.classad_template.as_deref())
        .map_err(|e| permanent(&job, format!("vm-capsule template: {}", error_chain(&e))))?;
    let inputs = plan_inputs(&job)?;

    let scratch = make_scratch(cfg, &job)?;
    match stage(
        cfg, &job, &job_ad, &template, &inputs, &scratch, universe, log,
    ) {
        Ok(translated) => Ok(translated),
        Err(err) => {
            if matches!(err, TranslateError::Transient(_)) {
                let _ = fs::remove_dir_all(&scratch);
            } else {
                log.warn(&format!(
                    "kept partly staged scratch dir {}",
                    scratch.display()
                ));
            }
            Err(err)
        }
    }
}

/// Create `<prefix>/<owner>/<cluster>.<proc>.XXXXXX`, private to the owner.
pub(super) fn make_scratch(
    cfg: &TranslateConfig,
    job: &JobSpec,
) -> Result<PathBuf, TranslateError> {
    use std::os::unix::fs::PermissionsExt;
    let owner_dir = cfg.scratch_prefix.join(&job.owner);
    if !owner_dir.is_dir() {
        fs::create_dir_all(&owner_dir).map_err(|e| {
            transient(
                &format!(
                    "cannot create scratch dir {} (VM_CAPSULE_SCRATCH_DIR_PREFIX must exist and be writable by job owners, e.g. mode 1777)",
                    owner_dir.display()
                ),
                e,
            )
        })?;
        let _ = fs::set_permissions(&owner_dir, fs::Permissions::from_mode(0o700));
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}.{}.", job.cluster, job.proc_id))
        .tempdir_in(&owner_dir)
        .map_err(|e| {
            transient(
                &format!("cannot create a scratch dir in {}", owner_dir.display()),
                e,
            )
        })?;
    Ok(dir.keep())
}
