//! The update hook: nothing to change on the routed job. Kept for configurations that name
//! it; the shipped one does not, as it delays every job ([`vm_capsule_admin::snippet::UNCONFIGURED_HOOK`]).
//!
//! A non-zero exit would skip the router's status mirroring for that poll
//! (`StatusClient::hookExited`), so it always succeeds and prints nothing.

/// Attributes to merge into the routed job: none.
pub fn update(_stdin: &str) -> String {
    String::new()
}
