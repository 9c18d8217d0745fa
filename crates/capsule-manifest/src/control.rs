//! The control channel between the vanilla launcher and the guest agent: a virtio-serial port
//! named [`CONTROL_PORT`] carrying frames of one type byte, a big-endian `u32` payload length
//! and the payload. Both sides use this codec, and both distrust what they read: every length
//! is bounded by [`MAX_PAYLOAD`] before anything is buffered, a frame of an unknown type is
//! skipped (a newer peer may send more), and a known type with a malformed payload is an
//! error for that frame only.
//!
//! | type | direction | payload |
//! |---|---|---|
//! | 1 `signal` | host -> guest | one byte: the signal number to deliver to the job |
//! | 2 `stdout` | guest -> host | the next bytes the job wrote to its stdout (1 to [`MAX_OUTPUT_CHUNK`]) |
//! | 3 `stderr` | guest -> host | the same for its stderr |
//! | 4 `kill` | host -> guest | none: SIGKILL the job's process group now and write its results as after any end (the vacate time is running out) |
//! | 6 `time` | host -> guest | 8 bytes of seconds and 4 of nanoseconds since the epoch (big-endian): the guest sets its clock (after a restore) |
//!
//! The output frames are a live copy only: the streams on the data disk stay authoritative,
//! and the host checks what it was sent against them at the end.

/// The virtio-serial port's name (`/sys/class/virtio-ports/*/name` in the guest).
pub const CONTROL_PORT: &str = "org.vm-capsule.control";

/// Largest payload accepted, bytes: far above any message, small enough to buffer.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// Bytes before the payload: the type and the length.
pub const HEADER: usize = 5;

/// Most output bytes in one frame: a frame then fits one virtio-serial write (32 KiB).
pub const MAX_OUTPUT_CHUNK: usize = 32 * 1024 - HEADER;

/// Type byte of [`Message::Signal`].
const TYPE_SIGNAL: u8 = 1;
/// Type byte of [`Message::Time`].
const TYPE_TIME: u8 = 6;
/// Type byte of [`Message::Output`] for stdout.
const TYPE_STDOUT: u8 = 2;
/// Type byte of [`Message::Output`] for stderr.
const TYPE_STDERR: u8 = 3;
/// Type byte of [`Message::Kill`].
const TYPE_KILL: u8 = 4;

/// One of the job's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Its stdout.
    Stdout,
    /// Its stderr.
    Stderr,
}

impl Stream {
    fn kind(self) -> u8 {
        match self {
            Stream::Stdout => TYPE_STDOUT,
            Stream::Stderr => TYPE_STDERR,
        }
    }
}

/// A message on the control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Deliver this signal to the job (the host received it as the job's soft-kill signal).
    Signal(u8),
    /// The next bytes the job wrote to one of its streams (1 to [`MAX_OUTPUT_CHUNK`]).
    Output(Stream, Vec<u8>),
    /// The host's time of day (seconds and nanoseconds since the epoch): a guest restored
    /// from a checkpoint resumes with the clock it was saved with.
    Time(u64, u32),
    /// Kill the job's whole process group now (SIGKILL), then write its results as after
    /// any end: the host powers the guest off soon after.
    Kill,
}

/// One frame of `kind` carrying `payload` (at most [`MAX_PAYLOAD`] bytes: callers bound it).
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.push(kind);
    let len = u32::try_from(payload.len()).unwrap_or(MAX_PAYLOAD);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The frame of [`Message::Output`] for `stream` and `bytes`, without copying them into a
/// message first (the guest sends these as the job writes).
///
/// # Panics
/// Never; `bytes` longer than [`MAX_OUTPUT_CHUNK`] is a caller's bug and is cut to it.
#[must_use]
pub fn output_frame(stream: Stream, bytes: &[u8]) -> Vec<u8> {
    frame(
        stream.kind(),
        bytes.get(..MAX_OUTPUT_CHUNK).unwrap_or(bytes),
    )
}

impl Message {
    /// The message as one frame.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Signal(s) => frame(TYPE_SIGNAL, &[*s]),
            Message::Output(stream, bytes) => output_frame(*stream, bytes),
            Message::Time(secs, nanos) => {
                let mut payload = secs.to_be_bytes().to_vec();
                payload.extend_from_slice(&nanos.to_be_bytes());
                frame(TYPE_TIME, &payload)
            }
            Message::Kill => frame(TYPE_KILL, &[]),
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length is over [`MAX_PAYLOAD`]: the stream cannot be resynchronised and must be
    /// abandoned.
    #[error(
        "control frame of type {kind} announces {len} bytes, over the {MAX_PAYLOAD}-byte limit"
    )]
    TooLong {
        /// The type byte.
        kind: u8,
        /// The announced length.
        len: u32,
    },
    /// A known type whose payload is not what it must be (the frame is skipped).
    #[error("control frame of type {kind} has a malformed {len}-byte payload")]
    BadPayload {
        /// The type byte.
        kind: u8,
        /// The payload's length.
        len: usize,
    },
}

/// Reassembles frames from bytes read in arbitrary pieces. Holds at most one frame's bytes
/// (header plus [`MAX_PAYLOAD`]) beyond what it has decoded.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    broken: bool,
}

impl Decoder {
    /// A decoder with nothing buffered.
    #[must_use]
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Bytes this decoder will take now without holding more than one frame: feed at most
    /// this many from the next read (0 once the stream is abandoned).
    #[must_use]
    pub fn room(&self) -> usize {
        if self.broken {
            return 0;
        }
        (HEADER + MAX_PAYLOAD as usize).saturating_sub(self.buf.len())
    }

    /// Add bytes read from the channel. More than [`Decoder::room`] would break the framing,
    /// so the stream is then abandoned instead.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() > self.room() {
            self.broken = true;
            self.buf.clear();
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message: `Ok(None)` when more bytes are needed; frames of unknown
    /// types are skipped.
    ///
    /// # Errors
    /// [`FrameError::TooLong`] (then every later call says the same: the stream is lost) or
    /// [`FrameError::BadPayload`] (that frame is dropped; the next call goes on).
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let Some((&kind, rest)) = self.buf.split_first() else {
                return Ok(None);
            };
            let Some(len) = rest.get(..4) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            if len > MAX_PAYLOAD {
                self.broken = true;
                self.buf.clear();
                return Err(FrameError::TooLong { kind, len });
            }
            let end = HEADER + len as usize;
            if self.buf.len() < end {
                return Ok(None);
            }
            let payload: Vec<u8> = self.buf.drain(..end).skip(HEADER).collect();
            match kind {
                TYPE_SIGNAL => {
                    return match payload[..] {
                        [s] if s != 0 => Ok(Some(Message::Signal(s))),
                        _ => Err(FrameError::BadPayload {
                            kind,
                            len: payload.len(),
                        }),
                    }
                }
                TYPE_TIME => {
                    let bad = FrameError::BadPayload {
                        kind,
                        len: payload.len(),
                    };
                    let (Some(secs), Some(nanos)) = (payload.get(..8), payload.get(8..)) else {
                        return Err(bad);
                    };
                    let (Ok(secs), Ok(nanos)) =
                        (<[u8; 8]>::try_from(secs), <[u8; 4]>::try_from(nanos))
                    else {
                        return Err(bad);
                    };
                    let nanos = u32::from_be_bytes(nanos);
                    if nanos >= 1_000_000_000 {
                        return Err(bad);
                    }
                    return Ok(Some(Message::Time(u64::from_be_bytes(secs), nanos)));
                }
                TYPE_STDOUT | TYPE_STDERR => {
                    if payload.is_empty() || payload.len() > MAX_OUTPUT_CHUNK {
                        return Err(FrameError::BadPayload {
                            kind,
                            len: payload.len(),
                        });
                    }
                    let stream = if kind == TYPE_STDOUT {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    return Ok(Some(Message::Output(stream, payload)));
                }
                TYPE_KILL if payload.is_empty() => return Ok(Some(Message::Kill)),
                TYPE_KILL => {
                    return Err(FrameError::BadPayload {
                        kind,
                        len: payload.len(),
                    })
                }
                // A type this version does not know: skip it.
                _ => continue,
            }
        }
    }

    /// Whether the stream was abandoned (a length over the limit).
    #[must_use]
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_time_goes_through_and_a_bad_one_is_dropped() {
        let mut d = Decoder::new();
        d.push(&Message::Time(1_796_628_225, 5).encode());
        assert_eq!(d.next_message(), Ok(Some(Message::Time(1_796_628_225, 5))));
        for payload in [vec![0u8; 11], vec![0u8; 13], {
            let mut p = vec![0u8; 8];
            p.extend(2_000_000_000u32.to_be_bytes());
            p
        }] {
            d.push(&frame(TYPE_TIME, &payload));
            assert!(matches!(
                d.next_message(),
                Err(FrameError::BadPayload { .. })
            ));
        }
    }

    #[test]
    fn round_trip_in_pieces() {
        let mut bytes = Message::Signal(15).encode();
        bytes.extend(Message::Signal(10).encode());
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![Message::Signal(15), Message::Signal(10)]);
    }

    #[test]
    fn output_frames_round_trip_and_bad_sizes_are_refused() {
        let mut d = Decoder::new();
        d.push(&Message::Output(Stream::Stdout, b"line 1\n".to_vec()).encode());
        assert_eq!(
            d.next_message().unwrap(),
            Some(Message::Output(Stream::Stdout, b"line 1\n".to_vec()))
        );
        // Cut to the chunk size.
        d.push(&output_frame(Stream::Stderr, &[7u8; MAX_OUTPUT_CHUNK + 10]));
        assert_eq!(
            d.next_message().unwrap(),
            Some(Message::Output(Stream::Stderr, vec![7u8; MAX_OUTPUT_CHUNK]))
        );
        // Empty, and over the chunk size (though under the frame limit): refused.
        d.push(&[TYPE_STDOUT, 0, 0, 0, 0]);
        assert!(matches!(
            d.next_message(),
            Err(FrameError::BadPayload { len: 0, .. })
        ));
        let mut over = vec![TYPE_STDERR];
        over.extend(u32::try_from(MAX_OUTPUT_CHUNK + 1).unwrap().to_be_bytes());
        over.extend(vec![1u8; MAX_OUTPUT_CHUNK + 1]);
        d.push(&over);
        assert!(matches!(
            d.next_message(),
            Err(FrameError::BadPayload {
                kind: TYPE_STDERR,
                ..
            })
        ));
        assert_eq!(d.next_message(), Ok(None));
        assert!(!d.is_broken());
    }

    /// The kill request has no payload: one with a payload is refused, and the next frame
    /// read.
    #[test]
    fn a_kill_round_trips_and_a_kill_with_a_payload_is_refused() {
        let mut d = Decoder::new();
        d.push(&Message::Kill.encode());
        d.push(&[TYPE_KILL, 0, 0, 0, 1, 9]);
        d.push(&Message::Signal(15).encode());
        assert_eq!(d.next_message(), Ok(Some(Message::Kill)));
        assert_eq!(
            d.next_message(),
            Err(FrameError::BadPayload {
                kind: TYPE_KILL,
                len: 1
            })
        );
        assert_eq!(d.next_message(), Ok(Some(Message::Signal(15))));
        assert_eq!(Message::Kill.encode(), [TYPE_KILL, 0, 0, 0, 0]);
    }

    #[test]
    fn unknown_types_are_skipped() {
        let mut bytes = vec![200, 0, 0, 0, 3, b'a', b'b', b'c'];
        bytes.extend([7, 0, 0, 0, 0]);
        bytes.extend(Message::Signal(2).encode());
        let mut d = Decoder::new();
        d.push(&bytes);
        assert_eq!(d.next_message().unwrap(), Some(Message::Signal(2)));
        assert_eq!(d.next_message().unwrap(), None);
    }

    #[test]
    fn a_huge_length_abandons_the_stream_without_buffering_it() {
        let mut d = Decoder::new();
        d.push(&[TYPE_SIGNAL, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert_eq!(
            d.next_message(),
            Err(FrameError::TooLong {
                kind: TYPE_SIGNAL,
                len: u32::MAX
            })
        );
        assert!(d.is_broken());
        assert_eq!(d.room(), 0);
        d.push(&Message::Signal(15).encode());
        assert_eq!(d.next_message(), Ok(None));
    }

    #[test]
    fn a_truncated_frame_waits_and_the_buffer_stays_bounded() {
        let mut d = Decoder::new();
        // A frame of the largest size, of an unknown type, sent one byte short.
        let mut frame = vec![99];
        frame.extend(MAX_PAYLOAD.to_be_bytes());
        frame.extend(vec![0u8; MAX_PAYLOAD as usize - 1]);
        d.push(&frame);
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(d.room(), 1);
        // The last byte completes it: skipped, and the buffer is empty again.
        d.push(&[0]);
        assert_eq!(d.next_message(), Ok(None));
        assert!(d.buf.is_empty() && !d.is_broken());
        // A truncated header alone is just "not yet".
        d.push(&[TYPE_SIGNAL, 0, 0]);
        assert_eq!(d.next_message(), Ok(None));
        // More than the room is never buffered: the stream is abandoned.
        d.push(&vec![0u8; MAX_PAYLOAD as usize + HEADER]);
        assert!(d.is_broken() && d.buf.is_empty());
    }

    #[test]
    fn a_malformed_signal_is_refused_and_the_next_frame_read() {
        let mut d = Decoder::new();
        d.push(&[TYPE_SIGNAL, 0, 0, 0, 2, 15, 15]);
        d.push(&[TYPE_SIGNAL, 0, 0, 0, 1, 0]);
        d.push(&Message::Signal(9).encode());
        assert!(matches!(
            d.next_message(),
            Err(FrameError::BadPayload { len: 2, .. })
        ));
        assert!(matches!(
            d.next_message(),
            Err(FrameError::BadPayload { len: 1, .. })
        ));
        assert_eq!(d.next_message(), Ok(Some(Message::Signal(9))));
    }
}
