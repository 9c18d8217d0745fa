//! Power the VM off once the result is durable.

use nix::sys::reboot::{reboot, RebootMode};

/// Flush every file system, then power off with reboot(2). Returns only when that failed
/// (not root, or not allowed), with the reason.
pub fn off() -> nix::Error {
    nix::unistd::sync();
    match reboot(RebootMode::RB_POWER_OFF) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
