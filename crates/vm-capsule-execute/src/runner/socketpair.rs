//! A socketpair whose one end QEMU inherits (`-chardev socket,fd=N`): the control channel and
//! QEMU's monitor. No path in the file system: nothing to race for or to leave behind, no
//! socket path limit, and it works under QEMU's `-sandbox on`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Our end (never blocking) and QEMU's end until QEMU has it.
#[derive(Debug)]
pub(crate) struct QemuSocket {
    /// The launcher's end.
    pub(crate) host: OwnedFd,
    /// QEMU's end, until QEMU has started with it.
    pub(crate) guest: Option<OwnedFd>,
}

impl QemuSocket {
    /// A new pair, both ends close-on-exec until [`Self::inherit`].
    pub(crate) fn new() -> io::Result<QemuSocket> {
        let (host, guest) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        // QEMU's end blocks as QEMU expects of an inherited socket; ours never blocks.
        rustix::io::ioctl_fionbio(&guest, false)?;
        Ok(QemuSocket {
            host,
            guest: Some(guest),
        })
    }

    /// Make QEMU's end inheritable, for the QEMU spawned next, and say its number. Called
    /// right before the spawn, and [`Self::started`] right after: the launcher starts no other
    /// process meanwhile, so QEMU alone inherits it.
    pub(crate) fn inherit(&mut self, what: &str) -> io::Result<RawFd> {
        let guest = self
            .guest
            .as_ref()
            .ok_or_else(|| io::Error::other(format!("the {what} was already handed over")))?;
        rustix::io::fcntl_setfd(guest, rustix::io::FdFlags::empty())?;
        Ok(guest.as_raw_fd())
    }

    /// QEMU has started with its end: close ours of it.
    pub(crate) fn started(&mut self) {
        self.guest = None;
    }
}
