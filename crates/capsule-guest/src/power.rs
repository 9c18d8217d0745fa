//! Power the VM off once the result is durable.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::reboot::{reboot, RebootMode};

/// Unmount the data disk's directory if it is a mount point, so a vfat volume is marked clean
/// again (Linux sets FAT's dirty flag while it is mounted). Best effort: the data is already
/// synced, and a directory that is not a mount point is simply left alone.
pub fn unmount(dir: &Path) {
    nix::unistd::sync();
    match nix::mount::umount(dir) {
        Ok(()) => crate::log!("unmounted {}", dir.display()),
        Err(Errno::EINVAL) => {} // not a mount point
        // Busy, e.g. because this very binary runs from the data disk: read-only is as good
        // for the volume (vfat marks it clean) and only needs no file open for writing.
        Err(Errno::EBUSY) => {
            let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            match nix::mount::mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
                Ok(()) => crate::log!("remounted {} read-only (busy)", dir.display()),
                Err(e) => crate::log!("cannot remount {} read-only: {e}", dir.display()),
            }
        }
        Err(e) => crate::log!("cannot unmount {}: {e} (data is synced)", dir.display()),
    }
}

/// Flush every file system, then power off with reboot(2). Returns only when that failed
/// (not root, or not allowed), with the reason.
pub fn off() -> nix::Error {
    nix::unistd::sync();
    match reboot(RebootMode::RB_POWER_OFF) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
