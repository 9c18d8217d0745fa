//! The FAT volume as partition-relative I/O (STYLE rule 10).
//!
//! [`Bounds`] is the one place where an offset inside the partition becomes an offset on the
//! disk, and every access is checked against the partition's end there. Two views use it:
//! [`PartitionSlice`], the `Read + Write + Seek` window handed to `fatfs`, and [`Locked`], the
//! positional view the crate's own FAT code ([`crate::fat`]) works on while holding the cache.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, MutexGuard};

use crate::cache::{lock, Cache, Shared, SharedCache};
use crate::fat::VolumeRw;

/// Where a partition lies on the disk: `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    start: u64,
    len: u64,
}

impl Bounds {
    /// The partition of `len` bytes starting at disk byte `start`.
    pub(crate) fn new(start: u64, len: u64) -> Self {
        Bounds { start, len }
    }

    /// The partition's length in bytes.
    pub(crate) fn len(self) -> u64 {
        self.len
    }

    /// The disk offset of the `n` bytes at partition offset `off`, or an error if they do not
    /// lie wholly inside the partition.
    pub(crate) fn disk_offset(self, off: u64, n: u64) -> io::Result<u64> {
        let inside = off.checked_add(n).is_some_and(|end| end <= self.len);
        match self.start.checked_add(off) {
            Some(at) if inside => Ok(at),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "access of {n} bytes at volume offset {off} is past the end of the {}-byte partition",
                    self.len
                ),
            )),
        }
    }

    /// Where partition offset `off` lies on the disk, for messages (saturating).
    pub(crate) fn position(self, off: u64) -> u64 {
        self.start.saturating_add(off)
    }
}

/// A partition of the cached disk: hands out [`PartitionSlice`]s and [`Locked`] views.
#[derive(Debug, Clone)]
pub(crate) struct Volume {
    cache: SharedCache,
    bounds: Bounds,
}

impl Volume {
    /// The partition `bounds` of the disk behind `cache`.
    pub(crate) fn new(cache: SharedCache, bounds: Bounds) -> Self {
        Volume { cache, bounds }
    }

    /// Where the partition lies.
    pub(crate) fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The disk cache behind the partition.
    pub(crate) fn cache(&self) -> &SharedCache {
        &self.cache
    }

    /// Lock the cache for a run of positional accesses.
    pub(crate) fn lock(&self) -> io::Result<Locked<'_>> {
        Ok(Locked {
            cache: lock(&self.cache)?,
            bounds: self.bounds,
        })
    }

    /// A `Read + Write + Seek` window onto the partition, positioned at its start.
    pub(crate) fn slice(&self) -> PartitionSlice {
        // A poisoned lock here only means we start without the shared counters' history.
        let shared = match self.cache.lock() {
            Ok(c) => c.shared(),
            Err(p) => p.get_ref().shared(),
        };
        PartitionSlice {
            cache: Arc::clone(&self.cache),
            shared,
            bounds: self.bounds,
            pos: 0,
            win: Vec::new(),
            win_off: 0,
            win_gen: u64::MAX,
        }
    }

    /// Limit the bytes the next slice reads may fetch (`None`: no limit), so a looping
    /// directory chain fails inside `fatfs` instead of spinning.
    pub(crate) fn set_read_budget(&self, budget: Option<u64>) -> io::Result<()> {
        lock(&self.cache)?.set_read_budget(budget);
        Ok(())
    }
}

/// The partition with the cache locked: positional, partition-relative reads and writes.
#[derive(Debug)]
pub(crate) struct Locked<'a> {
    cache: MutexGuard<'a, Cache>,
    bounds: Bounds,
}

impl VolumeRw for Locked<'_> {
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = self.bounds.disk_offset(off, buf.len() as u64)?;
        self.cache.read_at(at, buf)
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        let at = self.bounds.disk_offset(off, buf.len() as u64)?;
        self.cache.write_at(at, buf)
    }
}

/// Size of a [`PartitionSlice`]'s private read window. `fatfs` reads a directory entry field
/// by field (a dozen reads of 1-11 bytes), so serving those from a local copy matters.
const WINDOW: u64 = 4096;

/// A bounded `Read + Write + Seek` window onto a partition of the cached disk, handed to
/// `fatfs`. Seeks past the end are refused; reads stop and writes fail at the end.
#[derive(Debug)]
pub(crate) struct PartitionSlice {
    cache: SharedCache,
    shared: Arc<Shared>,
    bounds: Bounds,
    pos: u64,
    win: Vec<u8>,
    /// Partition offset of `win`, and the cache generation it was read at.
    win_off: u64,
    win_gen: u64,
}

impl PartitionSlice {
    fn locked(&self) -> io::Result<Locked<'_>> {
        Ok(Locked {
            cache: lock(&self.cache)?,
            bounds: self.bounds,
        })
    }

    /// Refill the read window so that it holds `pos`.
    fn refill(&mut self, generation: u64) -> io::Result<()> {
        let wstart = self.pos / WINDOW * WINDOW;
        let wlen = WINDOW.min(self.bounds.len().saturating_sub(wstart));
        let mut win = std::mem::take(&mut self.win);
        win.resize(usize::try_from(wlen).map_err(io::Error::other)?, 0);
        let read = self.locked()?.read_at(wstart, &mut win);
        self.win = win;
        read?;
        self.win_off = wstart;
        self.win_gen = generation;
        Ok(())
    }
}

impl Read for PartitionSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.bounds.len().saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let (head, _) = buf.split_at_mut(n);
        self.shared.charge(n as u64, self.pos)?;
        let generation = self.shared.generation();
        if (n as u64) < WINDOW {
            let fresh = self.win_gen == generation;
            let inside = self.pos >= self.win_off
                && self.pos + n as u64 <= self.win_off + self.win.len() as u64;
            if !(fresh && inside) {
                self.refill(generation)?;
            }
            let s = usize::try_from(self.pos - self.win_off).map_err(io::Error::other)?;
            if let Some(src) = self.win.get(s..s + n) {
                head.copy_from_slice(src);
                self.pos += n as u64;
                return Ok(n);
            }
        }
        let pos = self.pos;
        self.locked()?.read_at(pos, head)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for PartitionSlice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.bounds.len().saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write at volume offset {} is past the end of the partition",
                    self.pos
                ),
            ));
        }
        let (head, _) = buf.split_at(n);
        let pos = self.pos;
        self.locked()?.write_at(pos, head)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(&self.cache)?.flush_data()
    }
}

impl Seek for PartitionSlice {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let len = self.bounds.len();
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(t) if t <= len => {
                self.pos = t;
                Ok(t)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("seek {pos:?} leaves the {len}-byte partition"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bounds_refuse_the_outside() {
        let b = Bounds::new(32256, 1000);
        assert_eq!(b.disk_offset(0, 1000).unwrap(), 32256);
        assert_eq!(b.disk_offset(999, 1).unwrap(), 32256 + 999);
        assert!(b.disk_offset(999, 2).is_err());
        assert!(b.disk_offset(1000, 1).is_err());
        assert!(b.disk_offset(u64::MAX, 1).is_err());
        assert_eq!(b.disk_offset(1000, 0).unwrap(), 33256);
        assert_eq!(b.position(u64::MAX), u64::MAX);
    }
}
