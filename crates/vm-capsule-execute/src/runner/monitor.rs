//! QEMU's machine protocol (QMP) on a socketpair whose other end QEMU inherits
//! (`-chardev socket,fd=N` + `-mon mode=control`): the launcher stops, saves and continues the
//! guest through it. Like the control channel, no socket path exists in the file system and it
//! works under QEMU's `-sandbox on`.
//!
//! QEMU is what the guest attacks, so what it answers is read with a bounded line length, a
//! bounded number of events skipped per command, and a deadline per command.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use super::socketpair::QemuSocket;
use rustix::event::{PollFd, PollFlags};
use serde_json::{json, Map, Value};

/// Longest line QEMU may send (its answers here are a few hundred bytes).
const MAX_LINE: usize = 1 << 20;
/// Most asynchronous events skipped while waiting for one answer.
const MAX_EVENTS: usize = 1000;
/// QEMU's id for the monitor's character device.
const CHARDEV_ID: &str = "vmcapsule-qmp";

/// Why a QMP command did not give an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The socket failed or QEMU closed it.
    #[error("QEMU's monitor: {0}")]
    Io(#[from] io::Error),
    /// No answer in time.
    #[error("QEMU's monitor did not answer {command} within {secs} s")]
    Timeout {
        /// The command.
        command: String,
        /// The deadline.
        secs: u64,
    },
    /// QEMU refused the command.
    #[error("QEMU refused {command}: {why}")]
    Refused {
        /// The command.
        command: String,
        /// QEMU's description.
        why: String,
    },
    /// What QEMU sent is not QMP.
    #[error("QEMU's monitor sent something that is not QMP: {0}")]
    Protocol(String),
}

/// The launcher's end of QEMU's monitor.
#[derive(Debug)]
pub struct Monitor {
    socket: QemuSocket,
    /// Bytes read past the last line.
    pending: Vec<u8>,
    greeted: bool,
}

impl Monitor {
    /// A new monitor socketpair (both ends close-on-exec until [`Self::inherit`]).
    ///
    /// # Errors
    /// `socketpair` failing.
    pub fn new() -> io::Result<Monitor> {
        Ok(Monitor {
            socket: QemuSocket::new()?,
            pending: Vec::new(),
            greeted: false,
        })
    }

    /// Make QEMU's end inheritable for the QEMU spawned next and say its number; see
    /// [`super::ControlChannel::inherit`].
    ///
    /// # Errors
    /// `fcntl` failing, or QEMU's end already handed over.
    pub fn inherit(&mut self) -> io::Result<RawFd> {
        self.socket.inherit("monitor")
    }

    /// Take QEMU's end, to play QEMU in tests.
    #[cfg(test)]
    pub(crate) fn take_guest_end(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.socket.guest.take()
    }

    /// The QEMU arguments attaching the monitor.
    pub fn qemu_args(fd: RawFd) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id={CHARDEV_ID},fd={fd}"),
            "-mon".into(),
            format!("chardev={CHARDEV_ID},mode=control"),
        ]
    }

    /// QEMU has started with its end: close ours of it.
    pub fn started(&mut self) {
        self.socket.started();
    }

    /// Run `command` with `arguments` (an object, or null for none) and return its answer.
    ///
    /// # Errors
    /// [`MonitorError`]: no answer within `deadline`, a refusal, a broken socket.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        deadline: Duration,
    ) -> Result<Value, MonitorError> {
        self.execute_passing(command, arguments, None, deadline)
    }

    /// [`Self::execute`], passing `fd` along with the command (QMP's `getfd`, `add-fd`).
    ///
    /// # Errors
    /// As [`Self::execute`].
    pub fn execute_passing(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<BorrowedFd<'_>>,
        deadline: Duration,
    ) -> Result<Value, MonitorError> {
        let until = Instant::now() + deadline;
        let timeout = || MonitorError::Timeout {
            command: command.to_owned(),
            secs: deadline.as_secs(),
        };
        if !self.greeted {
            self.greet(until).map_err(|e| match e {
                MonitorError::Timeout { .. } => timeout(),
                other => other,
            })?;
        }
        self.send(command, arguments, fd, until)
            .map_err(|e| match e {
                MonitorError::Timeout { .. } => timeout(),
                other => other,
            })
    }

    /// Read QEMU's greeting and leave capabilities negotiation mode.
    fn greet(&mut self, until: Instant) -> Result<(), MonitorError> {
        let hello = self.read_line(until)?;
        if hello.get("QMP").is_none() {
            return Err(MonitorError::Protocol("no QMP greeting".to_owned()));
        }
        self.greeted = true;
        self.send("qmp_capabilities", Value::Null, None, until)?;
        Ok(())
    }

    fn send(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<BorrowedFd<'_>>,
        until: Instant,
    ) -> Result<Value, MonitorError> {
        let mut request = Map::new();
        request.insert("execute".into(), json!(command));
        if !arguments.is_null() {
            request.insert("arguments".into(), arguments);
        }
        let mut line = Value::Object(request).to_string().into_bytes();
        line.push(b'\n');
        self.write_all(&line, fd, until)?;
        for _ in 0..MAX_EVENTS {
            let answer = self.read_line(until)?;
            if let Some(value) = answer.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = answer.get("error") {
                let why = error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no description")
                    .chars()
                    .take(500)
                    .collect();
                return Err(MonitorError::Refused {
                    command: command.to_owned(),
                    why,
                });
            }
            // An event ("event": ...): not the answer.
        }
        Err(MonitorError::Protocol(format!(
            "more than {MAX_EVENTS} events and no answer to {command}"
        )))
    }

    fn write_all(
        &mut self,
        mut bytes: &[u8],
        mut fd: Option<BorrowedFd<'_>>,
        until: Instant,
    ) -> Result<(), MonitorError> {
        while !bytes.is_empty() {
            self.wait_for(PollFlags::OUT, until)?;
            let sent = match fd.take() {
                Some(fd) => {
                    // The fd travels with the first byte of the command, as QMP expects.
                    let fds = [fd];
                    let mut space =
                        [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
                    if !control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)) {
                        return Err(MonitorError::Protocol("cannot attach the fd".into()));
                    }
                    rustix::net::sendmsg(
                        &self.socket.host,
                        &[io::IoSlice::new(bytes)],
                        &mut control,
                        rustix::net::SendFlags::NOSIGNAL,
                    )
                }
                None => {
                    rustix::net::send(&self.socket.host, bytes, rustix::net::SendFlags::NOSIGNAL)
                }
            };
            match sent {
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(e) => return Err(MonitorError::Io(e.into())),
            }
        }
        Ok(())
    }

    /// The next line QEMU sends, as JSON.
    fn read_line(&mut self, until: Instant) -> Result<Value, MonitorError> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return serde_json::from_slice(&line)
                    .map_err(|e| MonitorError::Protocol(format!("bad JSON: {e}")));
            }
            if self.pending.len() > MAX_LINE {
                return Err(MonitorError::Protocol(format!(
                    "a line longer than {MAX_LINE} bytes"
                )));
            }
            self.wait_for(PollFlags::IN, until)?;
            let mut buf = [0u8; 8192];
            match rustix::io::read(&self.socket.host, &mut buf) {
                Ok(0) => {
                    return Err(MonitorError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "QEMU closed its monitor",
                    )))
                }
                Ok(n) => self
                    .pending
                    .extend_from_slice(buf.get(..n).unwrap_or_default()),
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(e) => return Err(MonitorError::Io(e.into())),
            }
        }
    }

    fn wait_for(&self, flags: PollFlags, until: Instant) -> Result<(), MonitorError> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(MonitorError::Timeout {
                command: String::new(),
                secs: 0,
            });
        }
        let timeout = rustix::event::Timespec::try_from(left.min(Duration::from_millis(200)))
            .map_err(|_| MonitorError::Protocol("bad timeout".into()))?;
        let mut fds = [PollFd::new(&self.socket.host, flags)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(MonitorError::Io(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    /// A stand-in QEMU on the other end: greets, answers `qmp_capabilities`, then replays
    /// `script` (one line per command).
    fn fake_qemu(
        script: &'static [&'static str],
    ) -> (Monitor, std::thread::JoinHandle<Vec<String>>) {
        let mut m = Monitor::new().unwrap();
        let end = UnixStream::from(m.socket.guest.take().unwrap());
        let handle = std::thread::spawn(move || {
            let mut w = end.try_clone().unwrap();
            let mut r = BufReader::new(end);
            let mut seen = Vec::new();
            writeln!(
                w,
                "{{\"QMP\": {{\"version\": {{}}, \"capabilities\": []}}}}"
            )
            .unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            seen.push(line.trim().to_owned());
            writeln!(w, "{{\"return\": {{}}}}").unwrap();
            for answer in script {
                line.clear();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push(line.trim().to_owned());
                w.write_all(answer.as_bytes()).unwrap();
            }
            seen
        });
        (m, handle)
    }

    #[test]
    fn commands_are_answered_and_events_skipped() {
        let (mut m, qemu) = fake_qemu(&[
            "{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"paused\"}}\n",
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such\"}}\n",
        ]);
        let t = Duration::from_secs(5);
        let r = m.execute("query-status", Value::Null, t).unwrap();
        assert_eq!(r["status"], "paused");
        let e = m.execute("bogus", json!({"a": 1}), t).unwrap_err();
        assert!(e.to_string().contains("no such"), "{e}");
        let seen = qemu.join().unwrap();
        assert_eq!(seen[0], "{\"execute\":\"qmp_capabilities\"}");
        assert_eq!(seen[2], "{\"arguments\":{\"a\":1},\"execute\":\"bogus\"}");
    }

    /// A QEMU that never answers, or floods one endless line, is given up on in bounded
    /// time and memory.
    #[test]
    fn a_silent_or_flooding_qemu_is_bounded() {
        let mut m = Monitor::new().unwrap();
        let end = UnixStream::from(m.socket.guest.take().unwrap());
        let started = Instant::now();
        let e = m
            .execute("stop", Value::Null, Duration::from_millis(300))
            .unwrap_err();
        assert!(matches!(e, MonitorError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let mut w = end;
        let flood = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..64 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let e = m
            .execute("stop", Value::Null, Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(e, MonitorError::Protocol(_)), "{e}");
        drop(m);
        flood.join().unwrap();
    }

    #[test]
    fn qemu_args_name_the_fd() {
        let a = Monitor::qemu_args(9).join(" ");
        assert!(a.contains("-chardev socket,id=vmcapsule-qmp,fd=9"), "{a}");
        assert!(a.contains("-mon chardev=vmcapsule-qmp,mode=control"), "{a}");
    }
}
