//! The job's stdout and stderr while it runs: the agent sends what the job adds to its
//! streams as output frames on the control channel, and the launcher writes them to its own
//! stdout and stderr, which the starter pointed at the job's stdout and stderr files in the
//! scratch dir (`condor_tail` reads those) or at a pipe (`stream_output = true`).
//!
//! The streams on the returned data disk stay authoritative. What was written live is only
//! remembered as a length and a SHA-256 (memory stays bounded whatever the job prints); at
//! the end the disk's copy is read through [`Finish`]: when the live bytes are its prefix only
//! the rest is written, else (a guest that lied on the channel, or a job that rewrote its own
//! stream) a regular file is cut back to where the run began and the disk's copy written in
//! full. A pipe cannot be taken back: that case is an error the launcher reports.
//!
//! The launcher never blocks on a slow reader of a pipe: at most one read of the channel is
//! held, written as the pipe takes it, and the channel is not read meanwhile, so the guest is
//! held back instead (it then just follows its files later).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use capsule_manifest::control::{Message, Stream};
use rustix::fs::{FileType, OFlags, SeekFrom};
use sha2::{Digest, Sha256};

/// Most bytes written to a pipe at once: a pipe that polls writable takes this many without
/// blocking.
const PIPE_CHUNK: usize = 4096;

/// Where one of the launcher's streams goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A regular file: what the run wrote starts at this offset and can be cut back.
    File { base: u64 },
    /// A pipe, socket or terminal: written once and for all.
    Pipe,
}

/// The live copy of one stream.
#[derive(Debug)]
struct Live {
    stream: Stream,
    /// Our own duplicate of the launcher's stream (close-on-exec: QEMU does not get it).
    fd: OwnedFd,
    kind: Kind,
    /// Bytes written live.
    written: u64,
    /// Their SHA-256.
    hash: Sha256,
    /// Bytes received and not yet written (a pipe that was full).
    pending: Vec<u8>,
    /// A write failed: no more live output on this stream.
    failed: bool,
    /// The bytes written count, but their hash is not known (a checkpoint's, to a pipe).
    trusted: bool,
}

/// Feeds what is written to a hash.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Live {
    /// A live copy onto `fd` (the launcher's stdout or stderr); `None` when it cannot be
    /// told where the stream goes.
    fn new(stream: Stream, fd: BorrowedFd<'_>) -> Option<Live> {
        let fd = rustix::io::fcntl_dupfd_cloexec(fd, 3).ok()?;
        let stat = rustix::fs::fstat(&fd).ok()?;
        let kind = if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
            let append = rustix::fs::fcntl_getfl(&fd).ok()?.contains(OFlags::APPEND);
            // Writes to an O_APPEND file go to its end; others to the shared offset.
            let base = if append {
                u64::try_from(stat.st_size).ok()?
            } else {
                rustix::fs::seek(&fd, SeekFrom::Current(0)).ok()?
            };
            Kind::File { base }
        } else {
            Kind::Pipe
        };
        Some(Live {
            stream,
            fd,
            kind,
            written: 0,
            hash: Sha256::new(),
            pending: Vec::new(),
            failed: false,
            trusted: false,
        })
    }

    /// See [`LiveOutput::resume`]. A file's last `earlier` bytes are read back (through our
    /// own descriptor's file, opened anew for reading) and hashed as if written here; a
    /// pipe's cannot be, and are trusted.
    fn resume(&mut self, earlier: u64) {
        match self.kind {
            Kind::File { base } => {
                let start = base.saturating_sub(earlier);
                let reopened = std::fs::File::open(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd)
                ));
                self.kind = Kind::File { base: start };
                self.written = base - start;
                let Ok(mut file) = reopened else {
                    self.trusted = true;
                    return;
                };
                let mut hash = Sha256::new();
                let mut taken = io::Seek::seek(&mut file, io::SeekFrom::Start(start))
                    .map(|_| (&mut file).take(base - start));
                if let Ok(reader) = taken.as_mut() {
                    let mut sink = HashWriter(&mut hash);
                    if io::copy(reader, &mut sink).is_ok() {
                        self.hash = hash;
                        return;
                    }
                }
                self.trusted = true;
            }
            Kind::Pipe => {
                self.trusted = true;
                self.written = earlier;
            }
        }
    }

    /// Write what is pending, as far as the stream takes it now.
    fn flush(&mut self) {
        while !self.pending.is_empty() && !self.failed {
            let chunk = match self.kind {
                Kind::File { .. } => self.pending.len(),
                Kind::Pipe => {
                    let mut fds = [rustix::event::PollFd::new(
                        &self.fd,
                        rustix::event::PollFlags::OUT,
                    )];
                    let ready =
                        rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default()));
                    if !matches!(ready, Ok(n) if n > 0)
                        || !fds[0].revents().contains(rustix::event::PollFlags::OUT)
                    {
                        return;
                    }
                    self.pending.len().min(PIPE_CHUNK)
                }
            };
            match rustix::io::write(&self.fd, self.pending.get(..chunk).unwrap_or_default()) {
                Ok(n) => {
                    let done = self.pending.get(..n).unwrap_or_default();
                    self.hash.update(done);
                    self.written = self
                        .written
                        .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    self.pending.drain(..n.min(self.pending.len()));
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return,
                // EPIPE, ENOSPC, ...: the final copy meets the same fate and reports it.
                Err(_) => {
                    self.failed = true;
                    self.pending = Vec::new();
                }
            }
        }
    }
}

/// The live copies of the job's two streams.
#[derive(Debug, Default)]
pub struct LiveOutput {
    streams: Vec<Live>,
    /// Most bytes one stream may get live: no stream on the data disk can be longer.
    cap: Option<u64>,
    /// Already going on from a checkpoint's streams (see [`LiveOutput::resume`]).
    resumed: bool,
}

impl LiveOutput {
    /// No live copy: everything comes at the end (a failed run's cleanup, tests).
    pub fn off() -> LiveOutput {
        LiveOutput::default()
    }

    /// Live copies onto this process's stdout and stderr (what the starter gave the
    /// launcher). When both are the same file, neither: the two streams' offsets could not
    /// be told apart there, and the job's files then arrive at the end as before.
    pub fn std_streams() -> LiveOutput {
        Self::onto(io::stdout().as_fd(), io::stderr().as_fd())
    }

    /// Live copies onto `out` and `err`.
    pub fn onto(out: BorrowedFd<'_>, err: BorrowedFd<'_>) -> LiveOutput {
        let same = match (rustix::fs::fstat(out), rustix::fs::fstat(err)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => true,
        };
        if same {
            return LiveOutput::off();
        }
        LiveOutput {
            streams: [(Stream::Stdout, out), (Stream::Stderr, err)]
                .into_iter()
                .filter_map(|(s, fd)| Live::new(s, fd))
                .collect(),
            cap: None,
            resumed: false,
        }
    }

    /// No stream gets more than `bytes` live (the data disk's size: a guest sending more
    /// lies, and the final copy from the disk then stands alone).
    pub fn cap(&mut self, bytes: u64) {
        self.cap = Some(bytes);
    }

    /// Bytes written live so far, stdout and stderr (a checkpoint records them).
    pub fn delivered(&self) -> (u64, u64) {
        let of = |stream| {
            self.streams
                .iter()
                .find(|l| l.stream == stream)
                .map_or(0, |l| l.written)
        };
        (of(Stream::Stdout), of(Stream::Stderr))
    }

    /// This run goes on from a checkpoint whose run had written `stdout` and `stderr` bytes
    /// live: the streams' files already end with them (HTCondor appends to a
    /// self-checkpointing job's streams, and brings them back with its checkpoint), so they
    /// count as written here, and the disk's copy at the end is compared from there.
    pub fn resume(&mut self, stdout: u64, stderr: u64) {
        if std::mem::replace(&mut self.resumed, true) {
            return;
        }
        for live in &mut self.streams {
            let earlier = match live.stream {
                Stream::Stdout => stdout,
                Stream::Stderr => stderr,
            };
            live.resume(earlier);
        }
    }

    /// Whether the channel may be read again: nothing received is still waiting for a slow
    /// pipe.
    pub fn wants_more(&mut self) -> bool {
        self.flush();
        self.streams.iter().all(|l| l.pending.is_empty())
    }

    /// Write what the guest sent (other messages are not ours).
    pub fn deliver(&mut self, messages: Vec<Message>) {
        for m in messages {
            if let Message::Output(stream, bytes) = m {
                let cap = self.cap.unwrap_or(u64::MAX);
                if let Some(live) = self
                    .streams
                    .iter_mut()
                    .find(|l| l.stream == stream && !l.failed)
                {
                    let after = [live.pending.len(), bytes.len()]
                        .iter()
                        .filter_map(|n| u64::try_from(*n).ok())
                        .fold(live.written, u64::saturating_add);
                    if after > cap {
                        live.failed = true;
                        live.pending = Vec::new();
                        continue;
                    }
                    live.pending.extend_from_slice(&bytes);
                }
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        for live in &mut self.streams {
            live.flush();
        }
    }

    /// The writers of the streams' final copies from the data disk: `out` and `err` (the
    /// launcher's own streams) where there is no live copy.
    pub fn finish<'a>(
        &'a mut self,
        out: &'a mut dyn Write,
        err: &'a mut dyn Write,
    ) -> (Finish<'a>, Finish<'a>) {
        let (mut live_out, mut live_err) = (None, None);
        for live in &mut self.streams {
            match live.stream {
                Stream::Stdout => live_out = Some(live),
                Stream::Stderr => live_err = Some(live),
            }
        }
        (Finish::new(live_out, out), Finish::new(live_err, err))
    }
}

/// The final copy of one stream, read from the data disk: skips what was written live when
/// it is the disk copy's prefix. See [`Finish::settle`].
#[allow(missing_debug_implementations)]
pub struct Finish<'a> {
    live: Option<&'a mut Live>,
    fallback: &'a mut dyn Write,
    /// Bytes of the disk copy still to compare with the live copy.
    skip: u64,
    hash: Sha256,
    /// Whether the live copy is the disk copy's prefix (`None`: not known yet).
    verdict: Option<bool>,
}

impl<'a> Finish<'a> {
    fn new(live: Option<&'a mut Live>, fallback: &'a mut dyn Write) -> Finish<'a> {
        let skip = live.as_ref().map_or(0, |l| l.written);
        Finish {
            live,
            fallback,
            skip,
            hash: Sha256::new(),
            verdict: (skip == 0).then_some(true),
        }
    }
}

impl Write for Finish<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(live) = self.live.as_deref_mut() else {
            return self.fallback.write(buf);
        };
        let mut rest = buf;
        if self.skip > 0 {
            let take = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(rest.len());
            let (head, tail) = rest.split_at(take);
            self.hash.update(head);
            self.skip -= u64::try_from(take).unwrap_or(self.skip);
            rest = tail;
            if self.skip == 0 {
                let live_hash = live.hash.clone().finalize();
                self.verdict = Some(live.trusted || self.hash.clone().finalize() == live_hash);
            }
        }
        if self.verdict == Some(true) {
            write_all_fd(&live.fd, rest)?;
        }
        // Bytes after a mismatch are dropped here: settle() writes the disk copy again.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.fallback.flush()
    }
}

impl Finish<'_> {
    /// After the disk copy went through: when the live bytes were not its prefix, cut a
    /// regular file back to where the run began and write the disk copy (from `disk_copy`:
    /// `None` when the disk has none, an empty stream) in full.
    ///
    /// # Errors
    /// A message for the launcher's report when the live copy went to a pipe and cannot be
    /// taken back, or the file could not be repaired.
    pub fn settle<R: Read>(self, disk_copy: impl FnOnce() -> Option<R>) -> Result<(), String> {
        let Some(live) = self.live else {
            return Ok(());
        };
        if self.verdict == Some(true) {
            return Ok(());
        }
        let what = match live.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let Kind::File { base } = live.kind else {
            return Err(format!(
                "the job's {what} sent while it ran ({} bytes) is not the start of its {what} on the data disk, and it went to a pipe (stream_output) that cannot take it back: the streamed {what} is wrong; the guest lied on the control channel, or the job rewrote its own {what}",
                live.written
            ));
        };
        let repaired = rustix::fs::ftruncate(&live.fd, base)
            .and_then(|()| rustix::fs::seek(&live.fd, SeekFrom::Start(base)))
            .map_err(io::Error::from)
            .and_then(|_| match disk_copy() {
                Some(mut reader) => copy_to_fd(&mut reader, &live.fd),
                None => Ok(()),
            });
        repaired.map_err(|e| {
            format!("cannot replace the job's live {what} by its copy on the data disk: {e}")
        })
    }
}

fn write_all_fd(fd: &OwnedFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_to_fd(reader: &mut dyn Read, fd: &OwnedFd) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        write_all_fd(fd, buf.get(..n).unwrap_or_default())?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runner::ControlChannel;
    use capsule_manifest::control::output_frame;
    use std::fs::{File, OpenOptions};
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    /// A channel whose guest end the test plays, as a hostile guest would.
    fn channel() -> (ControlChannel, UnixStream) {
        let mut c = ControlChannel::new().unwrap();
        let guest = UnixStream::from(c.take_guest_end().unwrap());
        (c, guest)
    }

    /// What the launcher's tick does, until nothing more comes.
    fn pump(c: &mut ControlChannel, live: &mut LiveOutput) {
        for _ in 0..1000 {
            if live.wants_more() {
                let m = c.poll();
                if m.is_empty() {
                    return;
                }
                live.deliver(m);
            }
        }
    }

    /// The final stage: the disk's copies through [`Finish`], then settled.
    fn finish(live: &mut LiveOutput, disk_out: &[u8], disk_err: &[u8]) -> Result<(), String> {
        let (mut fo, mut fe) = (Vec::new(), Vec::new());
        let (mut out, mut err) = live.finish(&mut fo, &mut fe);
        std::io::copy(&mut &disk_out[..], &mut out).unwrap();
        std::io::copy(&mut &disk_err[..], &mut err).unwrap();
        let a = out.settle(|| Some(disk_out));
        let b = err.settle(|| Some(disk_err));
        assert!(
            fo.is_empty() && fe.is_empty(),
            "live streams bypass the fallback"
        );
        a.and(b)
    }

    fn slot_file(dir: &Path, name: &str, before: &[u8], append: bool) -> File {
        let path = dir.join(name);
        std::fs::write(&path, before).unwrap();
        let mut f = OpenOptions::new()
            .write(true)
            .append(append)
            .open(&path)
            .unwrap();
        if !append {
            // Where a non-appending starter's fd stands: after what is there.
            std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).unwrap();
        }
        f
    }

    /// Output sent while the job runs reaches the slot's files at once; at the end only the
    /// rest of the disk's copy is added (appending or not, after what the file held).
    #[test]
    fn live_output_is_written_then_completed_from_the_disk() {
        for append in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let out = slot_file(d.path(), "out", b"earlier run\n", append);
            let err = slot_file(d.path(), "err", b"", append);
            let mut live = LiveOutput::onto(out.as_fd(), err.as_fd());
            let (mut c, mut guest) = channel();
            guest
                .write_all(&output_frame(Stream::Stdout, b"line 1\n"))
                .unwrap();
            guest
                .write_all(&output_frame(Stream::Stderr, b"warn"))
                .unwrap();
            pump(&mut c, &mut live);
            assert_eq!(
                std::fs::read(d.path().join("out")).unwrap(),
                b"earlier run\nline 1\n"
            );
            assert_eq!(std::fs::read(d.path().join("err")).unwrap(), b"warn");
            finish(&mut live, b"line 1\nline 2\n", b"warning\n").unwrap();
            assert_eq!(
                std::fs::read(d.path().join("out")).unwrap(),
                b"earlier run\nline 1\nline 2\n"
            );
            assert_eq!(std::fs::read(d.path().join("err")).unwrap(), b"warning\n");
        }
    }

    /// A guest that streams bytes its data disk does not hold (other bytes, more bytes, or a
    /// stream the disk lacks): the slot's files end as the disk's copy, after what they held.
    #[test]
    fn a_lying_guest_ends_with_the_disks_copy() {
        for (sent, disk) in [
            (&b"EVIL\n"[..], &b"line 1\nline 2\n"[..]),
            (b"line 1\nline 2\nmore\n", b"line 1\n"),
            (b"line 1\n", b""),
        ] {
            for append in [true, false] {
                let d = tempfile::tempdir().unwrap();
                let out = slot_file(d.path(), "out", b"earlier\n", append);
                let err = slot_file(d.path(), "err", b"", append);
                let mut live = LiveOutput::onto(out.as_fd(), err.as_fd());
                let (mut c, mut guest) = channel();
                guest
                    .write_all(&output_frame(Stream::Stdout, sent))
                    .unwrap();
                guest
                    .write_all(&output_frame(Stream::Stderr, sent))
                    .unwrap();
                pump(&mut c, &mut live);
                finish(&mut live, disk, disk).unwrap();
                let mut want = b"earlier\n".to_vec();
                want.extend_from_slice(disk);
                assert_eq!(std::fs::read(d.path().join("out")).unwrap(), want);
                assert_eq!(std::fs::read(d.path().join("err")).unwrap(), disk);
            }
        }
    }

    /// A pipe (`stream_output`) gets the live bytes and then the rest; a lie there cannot be
    /// taken back, and is reported.
    #[test]
    fn a_pipe_gets_the_rest_or_the_lie_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let err = slot_file(d.path(), "err", b"", true);
        let (reader, writer) = std::io::pipe().unwrap();
        let mut live = LiveOutput::onto(writer.as_fd(), err.as_fd());
        let (mut c, mut guest) = channel();
        guest
            .write_all(&output_frame(Stream::Stdout, b"a\n"))
            .unwrap();
        pump(&mut c, &mut live);
        finish(&mut live, b"a\nb\n", b"").unwrap();
        drop(live);
        drop(writer);
        let mut got = Vec::new();
        let mut reader = reader;
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"a\nb\n");

        let (_reader, writer) = std::io::pipe().unwrap();
        let mut live = LiveOutput::onto(writer.as_fd(), err.as_fd());
        guest
            .write_all(&output_frame(Stream::Stdout, b"EVIL"))
            .unwrap();
        pump(&mut c, &mut live);
        let e = finish(&mut live, b"a\nb\n", b"").unwrap_err();
        assert!(e.contains("stdout") && e.contains("pipe"), "{e}");
    }

    /// A guest flooding the channel while nobody drains the pipe: the launcher neither
    /// blocks nor holds more than one read of the channel.
    #[test]
    fn a_flood_into_a_stalled_pipe_neither_blocks_nor_grows() {
        let d = tempfile::tempdir().unwrap();
        let err = slot_file(d.path(), "err", b"", true);
        let (_reader, writer) = std::io::pipe().unwrap();
        let mut live = LiveOutput::onto(writer.as_fd(), err.as_fd());
        let (mut c, guest) = channel();
        guest.set_nonblocking(true).unwrap();
        let flooder = std::thread::spawn(move || {
            let frame = output_frame(Stream::Stdout, &[b'x'; 30_000]);
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_secs(2) {
                let _ = (&guest).write(&frame);
            }
        });
        let started = std::time::Instant::now();
        let mut most = 0;
        while started.elapsed() < std::time::Duration::from_secs(2) {
            if live.wants_more() {
                live.deliver(c.poll());
            }
            most = most.max(live.streams.iter().map(|l| l.pending.len()).sum::<usize>());
        }
        flooder.join().unwrap();
        assert!(most > 0, "the pipe never filled");
        assert!(most <= 128 * 1024, "held {most} bytes");
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }

    /// A guest sending more than the data disk can hold: the live copy stops at the cap,
    /// and the final copy from the disk stands alone.
    #[test]
    fn no_stream_gets_more_live_than_the_data_disk_holds() {
        let d = tempfile::tempdir().unwrap();
        let out = slot_file(d.path(), "out", b"", false);
        let err = slot_file(d.path(), "err", b"", false);
        let mut live = LiveOutput::onto(out.as_fd(), err.as_fd());
        live.cap(10);
        let (mut c, mut guest) = channel();
        for _ in 0..3 {
            guest
                .write_all(&output_frame(Stream::Stdout, b"1234"))
                .unwrap();
            pump(&mut c, &mut live);
        }
        assert_eq!(std::fs::read(d.path().join("out")).unwrap(), b"12341234");
        finish(&mut live, b"abc\n", b"").unwrap();
        assert_eq!(std::fs::read(d.path().join("out")).unwrap(), b"abc\n");
    }

    /// The same file as stdout and stderr: no live copy (their bytes could not be told
    /// apart there); the final copy goes to the fallback writers as before.
    #[test]
    fn one_file_for_both_streams_has_no_live_copy() {
        let d = tempfile::tempdir().unwrap();
        let out = slot_file(d.path(), "both", b"", true);
        let mut live = LiveOutput::onto(out.as_fd(), out.as_fd());
        assert!(live.streams.is_empty());
        let (mut fo, mut fe) = (Vec::new(), Vec::new());
        let (mut a, mut b) = live.finish(&mut fo, &mut fe);
        a.write_all(b"x").unwrap();
        b.write_all(b"y").unwrap();
        a.settle(|| None::<&[u8]>).unwrap();
        b.settle(|| None::<&[u8]>).unwrap();
        assert_eq!((fo, fe), (b"x".to_vec(), b"y".to_vec()));
    }
}
