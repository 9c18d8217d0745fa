//! The cleanup hook: remove the routed job's scratch dir, unless finalize failed; and when
//! the owner removed the original while the routed job ran, record that it was killed
//! ([`super::removed`]).
//!
//! stdin is the routed ad. A non-zero exit makes the router re-run cleanup every poll
//! (`CleanupClient::hookExited`), so this hook exits 0 and logs what it could not do.
//!
//! # Security
//! The routed ad names the dir; it is removed only when it is a job dir of ours: a direct
//! child of `<prefix>/<Owner>` with a name we generate (so never `<prefix>/<owner>/..`), a
//! real directory owned by us and private (see [`vm_capsule_core::scratch`]).

use std::path::PathBuf;
use std::time::Duration;

use classad::stream::parse_hook_stream;

use super::log::HookLog;
use vm_capsule_core::condor_tools::ToolSearch;
use vm_capsule_core::routed::ATTR_SCRATCH;
use vm_capsule_core::scratch::FAILED_MARKER;
use vm_capsule_core::settings::CleanupSettings;

/// Remove the scratch dir named by the routed ad; HTCondor's tools are found with `tools`.
/// Returns the dir removed, if any.
pub fn cleanup(
    stdin: &str,
    cfg: &CleanupSettings,
    tools: &ToolSearch,
    log: &mut HookLog,
) -> Option<PathBuf> {
    let CleanupSettings {
        prefix,
        keep_failed,
        test_any_user,
    } = cfg;
    let ads = match parse_hook_stream(stdin) {
        Ok(ads) => ads,
        Err(e) => {
            log.error(&format!("cannot parse the routed ad: {e}"));
            return None;
        }
    };
    let ad = &ads.last()?.ad;
    let scratch = PathBuf::from(classad::eval::string_attr(ad, ATTR_SCRATCH)?);
    let owner = classad::eval::string_attr(ad, "Owner").unwrap_or_default();
    if let Err(e) = vm_capsule_core::identity::check_runs_as(&owner, *test_any_user) {
        log.error(&format!("not removing {}: {e}", scratch.display()));
        return None;
    }
    super::removed::mark_removed_original(ad, tools, log);
    let opened = prefix
        .owner_dir(&owner, false)
        .and_then(|o| o.open_job_dir(&scratch).map(|d| (o, d)));
    let (owner_dir, dir) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            log.error(&format!("not removing {}: {e}", scratch.display()));
            return None;
        }
    };
    if let Ok(Some(_)) = dir.stat(FAILED_MARKER) {
        let reason = std::fs::read_to_string(scratch.join(FAILED_MARKER)).unwrap_or_default();
        log.warn(&format!(
            "keeping {} for inspection: finalize failed: {}",
            scratch.display(),
            vm_capsule_core::text::safe_text(reason.trim(), 500)
        ));
        // Kept dirs are bounded: the oldest beyond VM_CAPSULE_KEEP_FAILED go.
        owner_dir.sweep_now(Duration::MAX, *keep_failed);
        return None;
    }
    match owner_dir.remove_job_dir(dir) {
        Ok(()) => {
            log.info(&format!("removed {}", scratch.display()));
            Some(scratch)
        }
        Err(e) => {
            log.error(&format!("cannot remove {}: {e}", scratch.display()));
            None
        }
    }
}
