//! The cleanup hook: remove the routed job's scratch dir, unless finalize failed.
//!
//! stdin is the routed ad. A non-zero exit makes the router re-run cleanup every poll
//! (`CleanupClient::hookExited`), so this hook exits 0 and logs what it could not do.

use std::fs;
use std::path::{Path, PathBuf};

use classad::stream::parse_hook_stream;

use super::finalize::FAILED_MARKER;
use super::log::HookLog;

/// Remove the scratch dir named by the routed ad, if it lies under `prefix/<Owner>/`.
/// Returns the dir removed, if any.
pub fn cleanup(stdin: &str, prefix: &Path, log: &mut HookLog) -> Option<PathBuf> {
    let ads = match parse_hook_stream(stdin) {
        Ok(ads) => ads,
        Err(e) => {
            log.error(&format!("cannot parse the routed ad: {e}"));
            return None;
        }
    };
    let ad = &ads.last()?.ad;
    let text = |n: &str| classad::eval::string_attr(ad, n);
    let scratch = PathBuf::from(text("VMCapsuleScratch")?);
    let owner = text("Owner").unwrap_or_default();
    // Only ever remove a dir of ours: directly under <prefix>/<owner>, and not a symlink.
    let owner_dir = prefix.join(&owner);
    let inside = scratch.parent() == Some(owner_dir.as_path())
        && !owner.is_empty()
        && !owner.contains('/')
        && fs::symlink_metadata(&scratch).is_ok_and(|m| m.is_dir());
    if !inside {
        log.error(&format!(
            "not removing {}: it is not a scratch dir under {}",
            scratch.display(),
            owner_dir.display()
        ));
        return None;
    }
    if let Ok(reason) = fs::read_to_string(scratch.join(FAILED_MARKER)) {
        log.warn(&format!(
            "keeping {} for inspection: finalize failed: {}",
            scratch.display(),
            reason.trim()
        ));
        return None;
    }
    match fs::remove_dir_all(&scratch) {
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
