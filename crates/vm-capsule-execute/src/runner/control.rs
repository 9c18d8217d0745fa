//! The host's end of the control channel to the guest agent (`capsule_manifest::control`): a
//! socketpair whose other end QEMU gets as an inherited fd behind a virtio-serial port. No
//! path in the file system: nothing to race for or to leave behind, no socket path limit, and
//! it works under QEMU's `-sandbox on`.
//!
//! The guest is untrusted: the host end is non-blocking, writes that do not go through wait
//! in a bounded outbox, and what the guest sends is read in bounded pieces and decoded by the
//! shared codec (a broken stream is abandoned, not buffered).

use std::io;
use std::os::fd::{AsFd, RawFd};

use super::socketpair::QemuSocket;
use capsule_manifest::control::{Decoder, Message, CONTROL_PORT};

/// Most bytes waiting to be written to the guest; more are dropped (a guest that reads
/// nothing cannot make the launcher grow).
const MAX_OUTBOX: usize = 64 * 1024;
/// Most bytes read from the guest per [`ControlChannel::poll`].
const READ_PER_POLL: usize = 64 * 1024;

/// QEMU's ids for the channel's devices.
const CHARDEV_ID: &str = "vmcapsule-control";
const SERIAL_ID: &str = "vmcapsule-serial";

/// One launcher <-> agent channel.
#[derive(Debug)]
pub struct ControlChannel {
    socket: QemuSocket,
    decoder: Decoder,
    outbox: Vec<u8>,
}

impl ControlChannel {
    /// A new channel (both ends close-on-exec until [`Self::inherit`]).
    ///
    /// # Errors
    /// `socketpair` or `fcntl` failing.
    pub fn new() -> io::Result<ControlChannel> {
        Ok(ControlChannel {
            socket: QemuSocket::new()?,
            decoder: Decoder::new(),
            outbox: Vec::new(),
        })
    }

    /// Make QEMU's end inheritable, for the QEMU spawned next, and say its number (see
    /// [`Self::qemu_args`]); [`Self::started`] right after the spawn.
    ///
    /// # Errors
    /// `fcntl` failing, or QEMU's end already closed.
    pub fn inherit(&mut self) -> io::Result<RawFd> {
        self.socket.inherit("control channel")
    }

    /// The QEMU arguments attaching the channel as the port the agent looks for.
    pub fn qemu_args(fd: RawFd) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id={CHARDEV_ID},fd={fd}"),
            "-device".into(),
            format!("virtio-serial-pci,id={SERIAL_ID}"),
            "-device".into(),
            format!("virtserialport,bus={SERIAL_ID}.0,chardev={CHARDEV_ID},name={CONTROL_PORT}"),
        ]
    }

    /// Take QEMU's end, to play the guest in tests.
    #[cfg(test)]
    pub(crate) fn take_guest_end(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.socket.guest.take()
    }

    /// QEMU has started with its end: close ours of it.
    pub fn started(&mut self) {
        self.socket.started();
    }

    /// Queue `message` and write what the guest takes now.
    pub fn send(&mut self, message: &Message) {
        let frame = message.encode();
        if self.outbox.len() + frame.len() <= MAX_OUTBOX {
            self.outbox.extend(frame);
        }
        self.flush();
    }

    fn flush(&mut self) {
        while !self.outbox.is_empty() {
            match rustix::io::write(self.socket.host.as_fd(), &self.outbox) {
                Ok(0) => return,
                Ok(n) => {
                    self.outbox.drain(..n.min(self.outbox.len()));
                }
                Err(rustix::io::Errno::INTR) => {}
                // Full (the guest is not reading) or gone: try again at the next poll.
                Err(_) => return,
            }
        }
    }

    /// Write what is queued and read what the guest sent, without blocking: the messages
    /// decoded (nothing the host acts on comes from the guest yet; they are read so its
    /// writes never stall).
    pub fn poll(&mut self) -> Vec<Message> {
        self.flush();
        let mut messages = Vec::new();
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < READ_PER_POLL {
            // A broken stream is still read (and dropped), so the guest's writes never stall.
            let room = match self.decoder.room() {
                0 => buf.len(),
                r => r.min(buf.len()),
            };
            let n = match rustix::io::read(self.socket.host.as_fd(), &mut buf[..room]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            read += n;
            if self.decoder.is_broken() {
                continue;
            }
            self.decoder.push(buf.get(..n).unwrap_or_default());
            loop {
                match self.decoder.next_message() {
                    Ok(Some(m)) => messages.push(m),
                    Ok(None) => break,
                    Err(_) if self.decoder.is_broken() => break,
                    Err(_) => {}
                }
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (ControlChannel, UnixStream) {
        let mut c = ControlChannel::new().unwrap();
        let guest = UnixStream::from(c.take_guest_end().unwrap());
        (c, guest)
    }

    #[test]
    fn a_signal_reaches_the_guest_end() {
        let (mut c, mut guest) = pair();
        c.send(&Message::Signal(15));
        let mut got = [0u8; 6];
        guest.read_exact(&mut got).unwrap();
        assert_eq!(got.to_vec(), Message::Signal(15).encode());
    }

    /// A guest that never reads cannot block the launcher nor make it buffer without end;
    /// one that floods it with garbage is read in bounded pieces and then ignored.
    #[test]
    fn a_hostile_guest_neither_blocks_nor_grows_the_host() {
        let (mut c, mut guest) = pair();
        let started = std::time::Instant::now();
        for _ in 0..100_000 {
            c.send(&Message::Signal(10));
        }
        assert!(c.outbox.len() <= MAX_OUTBOX);
        assert!(started.elapsed().as_secs() < 5);
        guest.set_nonblocking(true).unwrap();
        let huge = [1u8, 0xff, 0xff, 0xff, 0xff];
        guest.write_all(&huge).unwrap();
        let _ = guest.write(&[0u8; 100_000]);
        assert!(c.poll().is_empty());
        assert!(c.decoder.is_broken());
        assert!(c.poll().is_empty());
    }

    #[test]
    fn qemu_args_name_the_port_and_the_fd() {
        let a = ControlChannel::qemu_args(7).join(" ");
        assert!(
            a.contains("-chardev socket,id=vmcapsule-control,fd=7"),
            "{a}"
        );
        assert!(a.contains("name=org.vm-capsule.control"), "{a}");
    }
}
