//! The cluster map: L2 tables loaded through a bounded cache, virtual clusters looked up
//! and newly mapped at the end of the file.

use std::io;

use super::*;

impl Qcow2Backend {
    /// The L2 table for L1 index `i`, loading it (None if not allocated).
    pub(super) fn l2(&mut self, i: u64) -> io::Result<Option<&mut L2>> {
        let idx = usize::try_from(i).map_err(io::Error::other)?;
        let Some(&e) = self.l1.get(idx) else {
            return Err(self.corrupt("qcow2 L1 table", self.h.l1_offset, format!("no entry {i}")));
        };
        let off = e & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if !self.l2.contains_key(&i) {
            let cs = self.cs();
            if !off.is_multiple_of(cs) || off + cs > self.file_end() {
                return Err(self.corrupt(
                    "qcow2 L1 entry",
                    self.h.l1_offset + i * 8,
                    format!(
                        "L2 table at {off} is unaligned or past the end of the {}-byte file",
                        self.file_end()
                    ),
                ));
            }
            self.evict_l2()?;
            let mut raw = vec![0u8; usize::try_from(cs).map_err(io::Error::other)?];
            read_padded(&self.file, off, &mut raw)?;
            self.l2.insert(
                i,
                L2 {
                    entries: be_entries(&raw),
                    dirty: false,
                },
            );
            self.l2_order.push_back(i);
        }
        Ok(self.l2.get_mut(&i))
    }

    pub(super) fn evict_l2(&mut self) -> io::Result<()> {
        let max = usize::try_from((L2_CACHE_BYTES / self.cs()).max(2)).unwrap_or(2);
        while self.l2.len() >= max {
            let Some(i) = self.l2_order.pop_front() else {
                break;
            };
            if let Some(t) = self.l2.remove(&i) {
                if t.dirty {
                    self.write_l2(i, &t.entries)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn write_l2(&self, i: u64, entries: &[u64]) -> io::Result<()> {
        let off = self
            .l1
            .get(usize::try_from(i).map_err(io::Error::other)?)
            .copied()
            .unwrap_or(0)
            & OFFSET_MASK;
        if off == 0 {
            return Err(io::Error::other("dirty L2 table without an L1 entry"));
        }
        self.file.write_all_at(&be_bytes(entries), off)
    }

    pub(super) fn lookup(&mut self, vcluster: u64) -> io::Result<Loc> {
        let per = self.h.l2_entries();
        let (i, j) = (
            vcluster / per,
            usize::try_from(vcluster % per).map_err(io::Error::other)?,
        );
        let v3 = self.h.version >= 3;
        let cb = self.h.cluster_bits;
        let cs = self.cs();
        let end = self.file_end();
        let l1_off = self
            .l1
            .get(usize::try_from(i).map_err(io::Error::other)?)
            .copied()
            .unwrap_or(0)
            & OFFSET_MASK;
        let Some(t) = self.l2(i)? else {
            return Ok(Loc::Unallocated);
        };
        let e = t.entries.get(j).copied().unwrap_or(0);
        let at = l1_off + j as u64 * 8;
        if e & COMPRESSED != 0 {
            let x = 62 - (cb - 8);
            let off = e & ((1u64 << x) - 1);
            let sectors = (e >> x) & ((1u64 << (cb - 8)) - 1);
            let len = (sectors + 1) * 512 - (off & 511);
            if off >= end {
                return Err(self.corrupt(
                    "qcow2 L2 entry",
                    at,
                    format!("compressed cluster at {off} lies past the end"),
                ));
            }
            return Ok(Loc::Compressed(off, len.min(2 * cs)));
        }
        let off = e & OFFSET_MASK;
        if v3 && e & ZERO != 0 {
            return Ok(Loc::Zero((off != 0).then_some(off)));
        }
        if off == 0 {
            return Ok(Loc::Unallocated);
        }
        if !off.is_multiple_of(cs) || off >= end {
            return Err(self.corrupt(
                "qcow2 L2 entry",
                at,
                format!(
                    "data cluster at {off} is unaligned or past the end of the {end}-byte file"
                ),
            ));
        }
        if e & COPIED == 0 && self.read_only.is_none() {
            self.read_only = Some("it has shared (snapshot) clusters".to_owned());
        }
        Ok(Loc::Data(off))
    }

    pub(super) fn inflate(&mut self, vcluster: u64, off: u64, len: u64) -> io::Result<&[u8]> {
        if self.inflated.as_ref().is_none_or(|(c, _)| *c != vcluster) {
            if self.h.zstd {
                return Err(Error::Unsupported {
                    path: self.path.clone(),
                    what: "qcow2 compression",
                    detail: "zstd-compressed clusters; hint: qemu-img convert -O qcow2 without -c"
                        .into(),
                }
                .into_io());
            }
            let mut packed = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
            read_padded(&self.file, off, &mut packed)?;
            let cs = self.cs();
            let mut out = Vec::with_capacity(usize::try_from(cs).map_err(io::Error::other)?);
            // Raw deflate, and the stream may end early: the rest of the cluster is zeros.
            let r = flate2::read::DeflateDecoder::new(&packed[..])
                .take(cs)
                .read_to_end(&mut out);
            if r.is_err() && out.is_empty() {
                return Err(self.corrupt(
                    "qcow2 compressed cluster",
                    off,
                    "deflate stream is bad".into(),
                ));
            }
            out.resize(usize::try_from(cs).map_err(io::Error::other)?, 0);
            self.inflated = Some((vcluster, out));
        }
        Ok(self
            .inflated
            .as_ref()
            .map(|(_, d)| d.as_slice())
            .unwrap_or_default())
    }

    pub(super) fn fill_backing(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.backing {
            Some(b) => {
                let avail = usize::try_from(b.virtual_size().saturating_sub(off))
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let (head, tail) = buf.split_at_mut(avail);
                if !head.is_empty() {
                    b.read_at(off, head)?;
                }
                tail.fill(0);
            }
            None => buf.fill(0),
        }
        Ok(())
    }

    pub(super) fn alloc(&mut self) -> u64 {
        let off = self.next_free;
        self.next_free += self.cs();
        self.new_clusters.push(off / self.cs());
        off
    }

    /// Point virtual cluster `vcluster` at a new host cluster (allocating its L2 table too).
    pub(super) fn map_new(&mut self, vcluster: u64, reuse: Option<u64>) -> io::Result<u64> {
        let per = self.h.l2_entries();
        let (i, j) = (
            vcluster / per,
            usize::try_from(vcluster % per).map_err(io::Error::other)?,
        );
        let idx = usize::try_from(i).map_err(io::Error::other)?;
        let l1e = self.l1.get(idx).copied().unwrap_or(0);
        if l1e & OFFSET_MASK == 0 {
            let off = self.alloc();
            if let Some(slot) = self.l1.get_mut(idx) {
                *slot = off | COPIED;
            }
            self.l1_dirty = true;
            self.evict_l2()?;
            let n = usize::try_from(per).map_err(io::Error::other)?;
            self.l2.insert(
                i,
                L2 {
                    entries: vec![0; n],
                    dirty: true,
                },
            );
            self.l2_order.push_back(i);
        } else if l1e & COPIED == 0 {
            return Err(self.refuse("its L2 table is shared with a snapshot"));
        }
        let data = match reuse {
            Some(off) => off,
            None => self.alloc(),
        };
        let t = self
            .l2(i)?
            .ok_or_else(|| io::Error::other("L2 table vanished"))?;
        if let Some(e) = t.entries.get_mut(j) {
            *e = data | COPIED;
        }
        t.dirty = true;
        Ok(data)
    }
}
