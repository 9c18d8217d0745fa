//! Refcounts for clusters allocated in this session (qcow2 refcount_order 4, 16-bit entries).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;

use super::{be_bytes, be_entries, read_padded, Qcow2Backend, MAX_REFTABLE_BYTES, OFFSET_MASK};

impl Qcow2Backend {
    /// Write refcount 1 for every cluster allocated since the last flush, allocating refcount
    /// blocks as needed (a new block can need an entry in itself or in another new block).
    pub(super) fn write_refcounts(&mut self) -> io::Result<()> {
        if self.new_clusters.is_empty() {
            return Ok(());
        }
        let cs = self.cs();
        let rt_bytes = u64::from(self.h.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(self.refuse("refcount table too large"));
        }
        let mut raw = vec![0u8; usize::try_from(rt_bytes).map_err(io::Error::other)?];
        read_padded(&self.file, self.h.refcount_table_offset, &mut raw)?;
        let mut rt = be_entries(&raw);
        let mut rt_dirty = false;
        let per_block = cs / 2;
        let mut blocks: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut pending = std::mem::take(&mut self.new_clusters);
        while let Some(c) = pending.pop() {
            let bi = c / per_block;
            let slot = usize::try_from(bi).map_err(io::Error::other)?;
            let Some(&boff) = rt.get(slot) else {
                return Err(self.refuse("the refcount table is full (image too large for it)"));
            };
            if let std::collections::hash_map::Entry::Vacant(v) = blocks.entry(bi) {
                let mut block = vec![0u8; usize::try_from(cs).map_err(io::Error::other)?];
                if boff & OFFSET_MASK == 0 {
                    // A new block, which itself needs a refcount (queued).
                    let nb = self.next_free;
                    self.next_free += cs;
                    rt[slot] = nb;
                    rt_dirty = true;
                    pending.push(nb / cs);
                } else {
                    read_padded(&self.file, boff & OFFSET_MASK, &mut block)?;
                }
                v.insert(block);
            }
            let at = usize::try_from((c % per_block) * 2).map_err(io::Error::other)?;
            if let Some(b) = blocks.get_mut(&bi).and_then(|b| b.get_mut(at..at + 2)) {
                b.copy_from_slice(&1u16.to_be_bytes());
            }
        }
        for (bi, block) in &blocks {
            let off = rt
                .get(usize::try_from(*bi).map_err(io::Error::other)?)
                .copied()
                .unwrap_or(0)
                & OFFSET_MASK;
            self.file.write_all_at(block, off)?;
        }
        if rt_dirty {
            self.file
                .write_all_at(&be_bytes(&rt), self.h.refcount_table_offset)?;
        }
        Ok(())
    }
}
