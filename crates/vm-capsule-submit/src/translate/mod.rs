//! The translate hook: vanilla job ad in, routed ad out, capsule staged in scratch.
//!
//! stdin is the route line, `------`, and the job ad (JobRouterHookMgr `hookTranslateJob`).
//! stdout must be the complete routed ad: it replaces the router's copy. Exit codes follow
//! `TranslateClient::hookExited`: 0 with output continues; non-zero makes the router yield
//! the job and retry later, so job problems first put the original on hold with
//! `condor_hold`, while passing trouble and the admin's mistakes just exit non-zero.
//!
//! Phases: [`request`] parses stdin, the identity and template are checked, [`survey`] reads
//! the inputs' metadata, [`plan`] decides everything without writing, [`execute`] writes.

mod checkpoint;
mod config;
mod error;
mod execute;
mod hold;
mod plan;
mod request;
mod sizing;
mod survey;
mod vm;

pub use config::{PIPE_BUFFER_MAX, PIPE_BUFFER_WARN};
pub use error::{TranslateError, Translated};
pub use hold::{hold_original, hold_reason};
pub use plan::{build_manifest, file_name, overlay_name, plan, Binaries, CapsulePlan, DiskPlan};
pub use request::TranslateRequest;
pub use survey::survey_inputs;

use crate::log::HookLog;
use vm_capsule_core::settings::{RoutedUniverse, TranslateSettings};
use vm_capsule_core::template::Template;

/// Translate the hook's stdin into a routed ad, staging the capsule in a new job dir.
///
/// # Errors
/// [`TranslateError`]; nothing is left in scratch on any error.
pub fn translate(
    stdin: &str,
    cfg: &TranslateSettings,
    log: &mut HookLog,
) -> Result<Translated, TranslateError> {
    let request = TranslateRequest::parse(stdin)?;
    let job = &request.job;
    vm_capsule_core::identity::check_runs_as(&job.owner, cfg.test_any_user)
        .map_err(|e| TranslateError::Admin(e.to_string()))?;
    log.info(&format!("translating job {} of {}", job.id(), job.owner));
    let template =
        Template::load(&cfg.template_root, cfg.classad_template.as_deref()).map_err(|e| {
            TranslateError::Admin(format!("vm-capsule template: {}", error::error_chain(&e)))
        })?;
    let universe = plan::universe(&request, cfg);
    let inputs = survey_inputs(job, universe == RoutedUniverse::Vm)?;
    let binaries = binaries(cfg)?;
    let plan = plan::plan(&request, cfg, &template, inputs, binaries)?;
    let done = execute::execute(&plan, cfg, log)?;
    if done.stdout.len() > PIPE_BUFFER_WARN {
        log.warn(&format!(
            "routed ad for job {} is {} bytes, close to PIPE_BUFFER_MAX ({PIPE_BUFFER_MAX}); consider raising JOB_ROUTER.PIPE_BUFFER_MAX",
            job.id(),
            done.stdout.len()
        ));
    }
    Ok(done)
}

/// The agent's and launcher's sizes; a missing agent is the admin's to fix.
fn binaries(cfg: &TranslateSettings) -> Result<Binaries, TranslateError> {
    let agent_bytes = match &cfg.init_path {
        Some(path) => Some(
            std::fs::metadata(path)
                .map_err(|e| {
                    TranslateError::Admin(format!(
                        "vm-capsule guest agent {} is missing ({e}); set VM_CAPSULE_INIT_SCRIPT_PATH (or to none if the guest image has one)",
                        path.display()
                    ))
                })?
                .len(),
        ),
        None => None,
    };
    // The node's own launcher (and agent) do not travel.
    let launcher_bytes = match cfg.node_launcher {
        Some(_) => 0,
        None => std::fs::metadata(&cfg.launcher_path).map_or(0, |m| m.len()),
    };
    Ok(Binaries {
        agent_bytes,
        launcher_bytes,
        agent_on_node: cfg.node_launcher.is_some(),
    })
}
