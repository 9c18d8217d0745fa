//! A small write-back cache between the FAT layer and a container.
//!
//! `fatfs` does many tiny accesses (4-byte FAT entries, 32-byte directory entries) and writes file
//! data one cluster at a time. Without help that is one system call (and one grain-table lookup)
//! per access. This layer keeps a bounded set of 64 KiB pages for the small accesses and merges
//! consecutive large writes into one buffer of up to 1 MiB, so a streamed file reaches the
//! container in big sequential writes. Memory stays bounded by `MAX_PAGES * PAGE + PENDING_MAX`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::container::{check_range, Backend};

const PAGE: usize = 64 * 1024;
const PAGE_U64: u64 = 64 * 1024;
const MAX_PAGES: usize = 128;
const PENDING_MAX: usize = 1024 * 1024;
/// Writes at least this large (a typical cluster) bypass the pages.
const DIRECT_MIN: usize = 4096;

#[derive(Debug)]
struct Page {
    data: Vec<u8>,
    dirty: bool,
}

/// The cache itself; shared behind a mutex by every partition slice.
#[derive(Debug)]
pub(crate) struct Cache {
    backend: Box<dyn Backend>,
    size: u64,
    pages: HashMap<u64, Page>,
    order: VecDeque<u64>,
    pending_off: u64,
    pending: Vec<u8>,
    /// Counters shared with every partition slice without taking the lock.
    shared: Arc<Shared>,
}

impl Cache {
    pub(crate) fn new(backend: Box<dyn Backend>) -> Self {
        let size = backend.virtual_size();
        Cache {
            backend,
            size,
            pages: HashMap::new(),
            order: VecDeque::new(),
            pending_off: 0,
            pending: Vec::new(),
            shared: Arc::new(Shared {
                generation: AtomicU64::new(0),
                budget: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// The counters shared with every partition slice.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Limit the bytes the volume's next reads may fetch: a looping FAT directory chain then
    /// fails with an error instead of spinning forever inside `fatfs`.
    pub(crate) fn set_read_budget(&mut self, budget: Option<u64>) {
        self.shared
            .budget
            .store(budget.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    fn pending_end(&self) -> u64 {
        self.pending_off + self.pending.len() as u64
    }

    fn overlaps_pending(&self, off: u64, len: u64) -> bool {
        !self.pending.is_empty() && off < self.pending_end() && self.pending_off < off + len
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.backend.write_at(self.pending_off, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    fn page_len(&self, idx: u64) -> usize {
        let start = idx * PAGE_U64;
        usize::try_from(self.size.saturating_sub(start).min(PAGE_U64)).unwrap_or(PAGE)
    }

    fn load(&mut self, idx: u64) -> io::Result<&mut Page> {
        if !self.pages.contains_key(&idx) {
            if self.pages.len() >= MAX_PAGES {
                self.evict_one()?;
            }
            let len = self.page_len(idx);
            let start = idx * PAGE_U64;
            if self.overlaps_pending(start, len as u64) {
                self.flush_pending()?;
            }
            let mut data = vec![0u8; len];
            self.backend.read_at(start, &mut data)?;
            self.pages.insert(idx, Page { data, dirty: false });
            self.order.push_back(idx);
        }
        self.pages
            .get_mut(&idx)
            .ok_or_else(|| io::Error::other("cache page vanished"))
    }

    fn evict_one(&mut self) -> io::Result<()> {
        while let Some(idx) = self.order.pop_front() {
            if let Some(page) = self.pages.remove(&idx) {
                if page.dirty {
                    if self.overlaps_pending(idx * PAGE_U64, page.data.len() as u64) {
                        self.flush_pending()?;
                    }
                    self.backend.write_at(idx * PAGE_U64, &page.data)?;
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Copy `buf` (destined for `off`) into any cached pages it overlaps.
    fn update_pages(&mut self, off: u64, buf: &[u8]) {
        if self.pages.is_empty() {
            return;
        }
        let end = off + buf.len() as u64;
        for idx in off / PAGE_U64..=(end - 1) / PAGE_U64 {
            if let Some(page) = self.pages.get_mut(&idx) {
                copy_overlap(idx * PAGE_U64, &mut page.data, off, buf);
            }
        }
    }

    pub(crate) fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size, off, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len() as u64;
        if self.overlaps_pending(off, len) {
            self.flush_pending()?;
        }
        if buf.len() >= PAGE {
            self.backend.read_at(off, buf)?;
            // Dirty pages are newer than the disk.
            for idx in off / PAGE_U64..=(off + len - 1) / PAGE_U64 {
                if let Some(page) = self.pages.get(&idx).filter(|p| p.dirty) {
                    copy_overlap(off, buf, idx * PAGE_U64, &page.data);
                }
            }
            return Ok(());
        }
        for idx in off / PAGE_U64..=(off + len - 1) / PAGE_U64 {
            let page = self.load(idx)?;
            copy_overlap(off, buf, idx * PAGE_U64, &page.data);
        }
        Ok(())
    }

    pub(crate) fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        check_range(self.size, off, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len() as u64;
        self.shared.generation.fetch_add(1, Ordering::Relaxed);
        let continues = !self.pending.is_empty() && off == self.pending_end();
        if buf.len() >= DIRECT_MIN || continues {
            self.update_pages(off, buf);
            if !continues || self.pending.len() + buf.len() > PENDING_MAX {
                self.flush_pending()?;
            }
            if buf.len() >= PENDING_MAX {
                return self.backend.write_at(off, buf);
            }
            if self.pending.is_empty() {
                self.pending_off = off;
            }
            self.pending.extend_from_slice(buf);
            return Ok(());
        }
        if self.overlaps_pending(off, len) {
            self.flush_pending()?;
        }
        let pages = off / PAGE_U64..=(off + len - 1) / PAGE_U64;
        // Zeros onto a region that already reads as zero (formatting a new disk writes
        // megabytes of them into the FATs) need neither a page nor a write.
        if crate::container::is_zero(buf)
            && pages.clone().all(|i| !self.pages.contains_key(&i))
            && self.backend.reads_as_zero(off, len)?
        {
            return Ok(());
        }
        for idx in pages {
            let page = self.load(idx)?;
            copy_overlap(idx * PAGE_U64, &mut page.data, off, buf);
            page.dirty = true;
        }
        Ok(())
    }

    /// Write every buffered byte to the container (not its metadata).
    pub(crate) fn flush_data(&mut self) -> io::Result<()> {
        self.flush_pending()?;
        let mut dirty: Vec<u64> = self
            .pages
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(&i, _)| i)
            .collect();
        dirty.sort_unstable();
        for idx in dirty {
            if let Some(page) = self.pages.get_mut(&idx) {
                self.backend.write_at(idx * PAGE_U64, &page.data)?;
                page.dirty = false;
            }
        }
        Ok(())
    }

    /// Write buffered data, then the container's metadata.
    pub(crate) fn flush_all(&mut self) -> io::Result<()> {
        self.flush_data()?;
        self.backend.flush_meta()
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // Best effort: DataDisk::finish reports errors; this only saves data on early returns.
        let _ = self.flush_all();
    }
}

/// Copy the overlap of `src` (at absolute offset `src_off`) into `dst` (at `dst_off`).
fn copy_overlap(dst_off: u64, dst: &mut [u8], src_off: u64, src: &[u8]) {
    let start = dst_off.max(src_off);
    let end = (dst_off + dst.len() as u64).min(src_off + src.len() as u64);
    if start >= end {
        return;
    }
    let (Ok(d0), Ok(s0), Ok(n)) = (
        usize::try_from(start - dst_off),
        usize::try_from(start - src_off),
        usize::try_from(end - start),
    ) else {
        return;
    };
    if let (Some(d), Some(s)) = (dst.get_mut(d0..d0 + n), src.get(s0..s0 + n)) {
        d.copy_from_slice(s);
    }
}

/// Shared handle to a cache.
pub(crate) type SharedCache = Arc<Mutex<Cache>>;

pub(crate) fn lock(cache: &SharedCache) -> io::Result<MutexGuard<'_, Cache>> {
    cache
        .lock()
        .map_err(|_| io::Error::other("disk cache lock poisoned by an earlier panic"))
}

/// State every [`PartitionSlice`](crate::slice::PartitionSlice) checks on each read without
/// locking the cache.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Bumped on every write, so a reader's private window knows when it is stale.
    generation: AtomicU64,
    /// Bytes volume reads may still fetch (`u64::MAX`: unlimited).
    budget: AtomicU64,
}

impl Shared {
    /// The current write generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Take `n` bytes from the read budget; `at` (a volume offset) is for the message.
    pub(crate) fn charge(&self, n: u64, at: u64) -> io::Result<()> {
        let left = self.budget.load(Ordering::Relaxed);
        if left == u64::MAX {
            return Ok(());
        }
        let rest = left.checked_sub(n).ok_or_else(|| {
            io::Error::other(format!(
                "directory read at volume offset {at} exceeds the metadata read budget (cluster chain loop?)"
            ))
        })?;
        self.budget.store(rest, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
    use super::*;
    use crate::container::ContainerInfo;
    use crate::slice::{Bounds, Volume};
    use std::io::{Read, Seek, SeekFrom, Write};

    /// An in-memory backend that counts writes (a fake, for the model test).
    #[derive(Debug)]
    struct MemBackend(Vec<u8>);

    impl Backend for MemBackend {
        fn virtual_size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
        fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
            let o = offset as usize;
            self.0[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush_meta(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn info(&self) -> ContainerInfo {
            ContainerInfo {
                format: crate::ImageFormat::Raw,
                subformat: "memory".into(),
                virtual_size: self.0.len() as u64,
                files: Vec::new(),
                backing_chain: Vec::new(),
            }
        }
        fn reads_as_zero(&mut self, offset: u64, len: u64) -> io::Result<bool> {
            let o = offset as usize;
            Ok(self.0[o..o + len as usize].iter().all(|&b| b == 0))
        }
    }

    /// Random reads and writes of every size class (tiny FAT-entry writes, cluster writes
    /// that go to the pending buffer, big direct ones, zeros) against a plain byte vector.
    #[test]
    fn matches_a_plain_buffer_model() {
        // Small enough that every page stays cached, and large enough to force evictions.
        for pages in [24, MAX_PAGES + 40] {
            model_run(pages * PAGE);
        }
    }

    fn model_run(size: usize) {
        let mut model = vec![0u8; size];
        let shared: SharedCache = Arc::new(Mutex::new(Cache::new(Box::new(MemBackend(vec![
            0u8;
            size
        ])))));
        let volume = Volume::new(Arc::clone(&shared), Bounds::new(0, size as u64));
        let mut io = volume.slice();
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        for step in 0..20_000u64 {
            let len = match rnd(6) {
                0 => 1 + rnd(4),
                1 => 32,
                2 => 512,
                3 => 4096,
                4 => 1 + rnd(3 * PAGE_U64),
                _ => PENDING_MAX as u64 + rnd(5000),
            } as usize;
            let len = len.min(size);
            let off = rnd((size - len) as u64 + 1) as usize;
            io.seek(SeekFrom::Start(off as u64)).unwrap();
            if rnd(2) == 0 {
                let fill = if rnd(4) == 0 {
                    0
                } else {
                    (step % 251) as u8 + 1
                };
                let data = vec![fill; len];
                io.write_all(&data).unwrap();
                model[off..off + len].copy_from_slice(&data);
            } else {
                let mut got = vec![0u8; len];
                io.read_exact(&mut got).unwrap();
                assert!(
                    got == model[off..off + len],
                    "step {step}: read {len} at {off} differs"
                );
            }
            if rnd(500) == 0 {
                io.flush().unwrap();
            }
        }
        lock(&shared).unwrap().flush_all().unwrap();
        let mut all = vec![0u8; size];
        lock(&shared).unwrap().backend.read_at(0, &mut all).unwrap();
        assert!(all == model, "backend differs from the model after flush");
    }
}
