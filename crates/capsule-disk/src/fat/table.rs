//! The file allocation table: reading and writing entries (in every FAT copy), finding and
//! allocating free clusters, and checking chains read from a hostile volume before they are
//! followed.

use std::io;

use super::{BootInfo, FatError, FatKind, VolumeRw};

/// FAT entries read per step when looking for a free cluster: small enough (16 KiB of FAT32)
/// to be served from the cache's pages, where the FAT being written lives.
const FIND_ENTRIES: u64 = 4 * 1024;
/// FAT entries read per step when counting every free cluster (1 MiB of FAT32, read past the
/// pages).
const COUNT_ENTRIES: u64 = 256 * 1024;

/// A FAT directory holds at most 2 MiB (65536 entries of 32 bytes).
pub(crate) const MAX_DIR_BYTES: u64 = 2 * 1024 * 1024;

impl BootInfo {
    /// End-of-chain marker written for this FAT type.
    pub(crate) fn eoc(&self) -> u64 {
        match self.kind {
            FatKind::Fat12 => 0xfff,
            FatKind::Fat16 => 0xffff,
            FatKind::Fat32 => 0x0fff_ffff,
        }
    }

    /// Entries at or above this value end a chain.
    fn eoc_min(&self) -> u64 {
        self.eoc() - 7
    }

    /// Byte width of an entry for FAT16/32 (None for FAT12's 1.5 bytes).
    fn entry_width(&self) -> Option<u64> {
        match self.kind {
            FatKind::Fat12 => None,
            FatKind::Fat16 => Some(2),
            FatKind::Fat32 => Some(4),
        }
    }

    /// The FAT entry of cluster `c` (first FAT copy).
    pub(crate) fn entry(&self, v: &mut dyn VolumeRw, c: u64) -> io::Result<u64> {
        let mut b = [0u8; 4];
        match self.kind {
            FatKind::Fat12 => {
                let (two, _) = b.split_at_mut(2);
                v.read_at(self.fat_offset + c + c / 2, two)?;
                let pair = u64::from(u16::from_le_bytes([two[0], two[1]]));
                Ok(if c % 2 == 1 { pair >> 4 } else { pair & 0xfff })
            }
            FatKind::Fat16 => {
                let (two, _) = b.split_at_mut(2);
                v.read_at(self.fat_offset + c * 2, two)?;
                Ok(u64::from(u16::from_le_bytes([two[0], two[1]])))
            }
            FatKind::Fat32 => {
                v.read_at(self.fat_offset + c * 4, &mut b)?;
                Ok(u64::from(u32::from_le_bytes(b) & 0x0fff_ffff))
            }
        }
    }

    /// Set the entry of cluster `c` to `value` in every FAT copy (FAT32's top 4 bits kept).
    pub(crate) fn set_entry(&self, v: &mut dyn VolumeRw, c: u64, value: u64) -> io::Result<()> {
        for copy in 0..self.fats {
            let base = self.fat_offset + copy * self.fat_bytes;
            match self.kind {
                FatKind::Fat12 => {
                    let at = base + c + c / 2;
                    let mut b = [0u8; 2];
                    v.read_at(at, &mut b)?;
                    let old = u16::from_le_bytes(b);
                    let val = u16::try_from(value & 0xfff).unwrap_or(0xfff);
                    let new = if c % 2 == 1 {
                        (old & 0x000f) | (val << 4)
                    } else {
                        (old & 0xf000) | val
                    };
                    v.write_at(at, &new.to_le_bytes())?;
                }
                FatKind::Fat16 => {
                    let val = u16::try_from(value & 0xffff).unwrap_or(0xffff);
                    v.write_at(base + c * 2, &val.to_le_bytes())?;
                }
                FatKind::Fat32 => {
                    let at = base + c * 4;
                    let mut b = [0u8; 4];
                    v.read_at(at, &mut b)?;
                    let keep = u32::from_le_bytes(b) & 0xf000_0000;
                    let val = u32::try_from(value & 0x0fff_ffff).unwrap_or(0x0fff_ffff);
                    v.write_at(at, &(keep | val).to_le_bytes())?;
                }
            }
        }
        Ok(())
    }

    /// Chain the run `first..first + len` cluster to cluster and point its last cluster at
    /// `next` (another cluster or [`BootInfo::eoc`]). FAT16/32 runs are written with one write
    /// per FAT copy instead of one per cluster.
    pub(crate) fn link_run(
        &self,
        v: &mut dyn VolumeRw,
        first: u64,
        len: u64,
        next: u64,
    ) -> io::Result<()> {
        let Some(width) = self.entry_width() else {
            for c in first..first + len {
                let to = if c + 1 == first + len { next } else { c + 1 };
                self.set_entry(v, c, to)?;
            }
            return Ok(());
        };
        let bytes = usize::try_from(len * width).map_err(io::Error::other)?;
        let mut buf = vec![0u8; bytes];
        for copy in 0..self.fats {
            let at = self.fat_offset + copy * self.fat_bytes + first * width;
            if self.kind == FatKind::Fat32 {
                v.read_at(at, &mut buf)?; // FAT32 keeps each entry's top 4 bits
            }
            let step = usize::try_from(width).map_err(io::Error::other)?;
            for (i, slot) in (0u64..).zip(buf.chunks_exact_mut(step)) {
                let to = if i + 1 == len { next } else { first + i + 1 };
                match slot {
                    [a, b, c, d] => {
                        let keep = u32::from_le_bytes([*a, *b, *c, *d]) & 0xf000_0000;
                        let val = u32::try_from(to & 0x0fff_ffff).unwrap_or(0x0fff_ffff);
                        [*a, *b, *c, *d] = (keep | val).to_le_bytes();
                    }
                    _ => {
                        let val = u16::try_from(to & 0xffff).unwrap_or(0xffff);
                        slot.copy_from_slice(&val.to_le_bytes());
                    }
                }
            }
            v.write_at(at, &buf)?;
        }
        Ok(())
    }

    /// Visit the entries of clusters `from..to` in order until `stop(cluster, value)` returns
    /// true; returns that cluster. FAT16/32 are read `step` entries at a time.
    fn scan(
        &self,
        v: &mut dyn VolumeRw,
        (from, to): (u64, u64),
        step: u64,
        stop: &mut dyn FnMut(u64, u64) -> bool,
    ) -> io::Result<Option<u64>> {
        let Some(width) = self.entry_width() else {
            for c in from..to {
                if stop(c, self.entry(v, c)?) {
                    return Ok(Some(c));
                }
            }
            return Ok(None);
        };
        let mut buf = Vec::new();
        let mut c = from;
        while c < to {
            let n = (to - c).min(step);
            buf.resize(usize::try_from(n * width).map_err(io::Error::other)?, 0);
            v.read_at(self.fat_offset + c * width, &mut buf)?;
            let step = usize::try_from(width).map_err(io::Error::other)?;
            for (i, e) in (0u64..).zip(buf.chunks_exact(step)) {
                let value = match *e {
                    [a, b] => u64::from(u16::from_le_bytes([a, b])),
                    [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d & 0x0f])),
                    _ => 0,
                };
                if stop(c + i, value) {
                    return Ok(Some(c + i));
                }
            }
            c += n;
        }
        Ok(None)
    }

    /// Count the free clusters (entries of value 0 in the first FAT).
    pub(crate) fn count_free(&self, v: &mut dyn VolumeRw) -> io::Result<u64> {
        let mut free = 0u64;
        self.scan(v, (2, self.clusters + 2), COUNT_ENTRIES, &mut |_, value| {
            free += u64::from(value == 0);
            false
        })?;
        Ok(free)
    }

    /// The first free cluster at or after `from`, wrapping around to cluster 2.
    pub(crate) fn find_free(&self, v: &mut dyn VolumeRw, from: u64) -> io::Result<Option<u64>> {
        let end = self.clusters + 2;
        let from = from.clamp(2, end);
        let mut free = |_, value| value == 0;
        match self.scan(v, (from, end), FIND_ENTRIES, &mut free)? {
            Some(c) => Ok(Some(c)),
            None => self.scan(v, (2, from), FIND_ENTRIES, &mut free),
        }
    }

    /// Find up to `want` consecutive free clusters, the first of them at or after `hint`
    /// (wrapping). Returns (first cluster, count); [`FatError::Full`] when none is free.
    pub(crate) fn alloc_run(
        &self,
        v: &mut dyn VolumeRw,
        hint: u64,
        want: u64,
    ) -> Result<(u64, u64), FatError> {
        let first = self.find_free(v, hint)?.ok_or(FatError::Full)?;
        let end = (self.clusters + 2).min(first.saturating_add(want.max(1)));
        let used = self.scan(v, (first + 1, end), FIND_ENTRIES, &mut |_, value| {
            value != 0
        })?;
        Ok((first, used.unwrap_or(end) - first))
    }

    /// Mark up to `count` clusters of the chain starting at `first` free again.
    pub(crate) fn free_chain(
        &self,
        v: &mut dyn VolumeRw,
        first: u64,
        count: u64,
    ) -> io::Result<()> {
        let mut c = first;
        for _ in 0..count {
            if !self.is_valid_cluster(c) {
                break;
            }
            let next = self.entry(v, c)?;
            self.set_entry(v, c, 0)?;
            c = next;
        }
        Ok(())
    }

    fn outside(&self, first: u64) -> FatError {
        self.bad_chain(format!(
            "first cluster {first} is outside the volume (2..{})",
            self.clusters + 2
        ))
    }

    fn bad_chain(&self, detail: String) -> FatError {
        FatError::Corrupt {
            what: "FAT cluster chain",
            offset: self.fat_offset,
            detail,
        }
    }

    /// Check the cluster chain of a file of `size` bytes starting at cluster `first`: the
    /// first `n = ceil(size / cluster)` links stay inside the volume, and no cluster repeats
    /// among those `n` (Brent's cycle finding, O(1) memory, at most about 4n FAT reads; a
    /// valid chain costs n).
    pub(crate) fn check_chain(
        &self,
        v: &mut dyn VolumeRw,
        first: u32,
        size: u64,
    ) -> Result<(), FatError> {
        if size == 0 {
            return Ok(());
        }
        let first = u64::from(first);
        if !self.is_valid_cluster(first) {
            return Err(self.outside(first));
        }
        let n = size.div_ceil(self.cluster_size);
        if n > self.clusters {
            return Err(self.bad_chain(format!(
                "size {size} needs {n} clusters but the volume has only {}",
                self.clusters
            )));
        }
        let (mut tortoise, mut hare) = (first, first);
        let (mut power, mut lam) = (1u64, 1u64);
        let mut step = 1u64;
        let cycle_len = loop {
            let to = self.entry(v, hare)?;
            if !self.is_valid_cluster(to) {
                if step < n {
                    return Err(self.bad_chain(format!(
                        "cluster {hare} links to {to:#x} (end or outside the volume) before the file's {size} bytes"
                    )));
                }
                return Ok(()); // the chain ends (or turns to garbage) after the file's data
            }
            hare = to;
            if hare == tortoise {
                break lam;
            }
            if power == lam {
                tortoise = hare;
                power *= 2;
                lam = 0;
            }
            lam += 1;
            step += 1;
            if step > 4 * n + 4 {
                return Ok(()); // unreachable for a finite chain shorter than this; be safe
            }
        };
        // Find where the cycle starts (mu); the file repeats a cluster if mu + lambda <= n - 1.
        let mut hare = first;
        for _ in 0..cycle_len {
            hare = self.entry(v, hare)?;
        }
        let mut tortoise = first;
        let mut mu = 0u64;
        while tortoise != hare && mu <= n {
            tortoise = self.entry(v, tortoise)?;
            hare = self.entry(v, hare)?;
            mu += 1;
        }
        if mu + cycle_len < n {
            return Err(self.bad_chain(format!(
                "cyclic cluster chain: cluster {tortoise} is reached again after {cycle_len} links"
            )));
        }
        Ok(())
    }

    /// Check a directory's cluster chain: it starts at a valid cluster, every link is valid or
    /// end-of-chain, and it is no longer than the 2 MiB a FAT directory can hold.
    pub(crate) fn check_dir_chain(&self, v: &mut dyn VolumeRw, first: u32) -> Result<(), FatError> {
        let bad = |detail: String| FatError::Corrupt {
            what: "FAT directory",
            offset: self.fat_offset,
            detail,
        };
        let mut c = u64::from(first);
        if !self.is_valid_cluster(c) {
            return Err(bad(format!(
                "first cluster {c} is outside the volume (2..{})",
                self.clusters + 2
            )));
        }
        for _ in 0..self.max_dir_clusters() {
            let next = self.entry(v, c)?;
            if next >= self.eoc_min() {
                return Ok(());
            }
            if !self.is_valid_cluster(next) {
                return Err(bad(format!(
                    "cluster {c} links to {next:#x}, which is free, bad or outside the volume"
                )));
            }
            c = next;
        }
        Err(bad(
            "cluster chain longer than the 2 MiB a directory can hold (a loop?)".to_owned(),
        ))
    }

    /// Most clusters a directory chain may have.
    pub(crate) fn max_dir_clusters(&self) -> u64 {
        (MAX_DIR_BYTES / self.cluster_size).max(1)
    }

    /// The cluster after `c` in a directory chain, or None at its end (checked chains only).
    pub(crate) fn next_dir_cluster(
        &self,
        v: &mut dyn VolumeRw,
        c: u64,
    ) -> Result<Option<u64>, FatError> {
        let next = self.entry(v, c)?;
        if next >= self.eoc_min() {
            return Ok(None);
        }
        if !self.is_valid_cluster(next) {
            return Err(FatError::Corrupt {
                what: "FAT directory",
                offset: self.fat_offset,
                detail: format!(
                    "cluster {c} links to {next:#x}, which is free, bad or outside the volume"
                ),
            });
        }
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::testutil::{fake_volume, MemVolume};
    use super::*;

    fn kinds() -> Vec<(BootInfo, MemVolume)> {
        [2u64 << 20, 16 << 20, 36 << 20]
            .into_iter()
            .map(fake_volume)
            .collect()
    }

    #[test]
    fn entries_round_trip_in_every_copy() {
        for (boot, mut v) in kinds() {
            for c in [2u64, 3, 4, 5, 100, boot.clusters + 1] {
                boot.set_entry(&mut v, c, c + 7).unwrap();
            }
            for c in [2u64, 3, 4, 5, 100, boot.clusters + 1] {
                assert_eq!(boot.entry(&mut v, c).unwrap(), c + 7, "{:?} {c}", boot.kind);
            }
            // The second copy matches the first.
            let len = usize::try_from(boot.fat_bytes).unwrap();
            let a = usize::try_from(boot.fat_offset).unwrap();
            assert!(v.0[a..a + len] == v.0[a + len..a + 2 * len]);
        }
    }

    #[test]
    fn link_run_matches_set_entry() {
        for (boot, mut v) in kinds() {
            let mut w = v.clone();
            boot.link_run(&mut v, 10, 7, boot.eoc()).unwrap();
            for c in 10..16 {
                boot.set_entry(&mut w, c, c + 1).unwrap();
            }
            boot.set_entry(&mut w, 16, boot.eoc()).unwrap();
            assert!(v.0 == w.0, "{:?}", boot.kind);
        }
    }

    #[test]
    fn allocation_skips_used_clusters_and_reports_full() {
        for (boot, mut v) in kinds() {
            boot.set_entry(&mut v, 2, boot.eoc()).unwrap();
            boot.set_entry(&mut v, 5, boot.eoc()).unwrap();
            assert_eq!(boot.alloc_run(&mut v, 2, 10).unwrap(), (3, 2));
            assert_eq!(boot.alloc_run(&mut v, 5, 3).unwrap(), (6, 3));
            let free = boot.count_free(&mut v).unwrap();
            assert_eq!(free, boot.clusters - 2);
            // Fill everything: nothing is left to allocate.
            boot.link_run(&mut v, 2, boot.clusters, boot.eoc()).unwrap();
            assert_eq!(boot.count_free(&mut v).unwrap(), 0);
            assert!(matches!(boot.alloc_run(&mut v, 7, 1), Err(FatError::Full)));
            boot.free_chain(&mut v, 2, 3).unwrap();
            assert_eq!(boot.count_free(&mut v).unwrap(), 3);
            assert_eq!(boot.alloc_run(&mut v, 9, 5).unwrap(), (2, 3));
        }
    }

    #[test]
    fn chains_that_loop_or_leave_are_refused() {
        for (boot, mut v) in kinds() {
            let cs = boot.cluster_size;
            boot.link_run(&mut v, 2, 3, boot.eoc()).unwrap();
            assert!(boot.check_chain(&mut v, 2, 3 * cs).is_ok());
            assert!(boot.check_chain(&mut v, 2, 4 * cs).is_err());
            // A loop after the file's last cluster is harmless; one inside it is not.
            boot.set_entry(&mut v, 4, 3).unwrap();
            assert!(boot.check_chain(&mut v, 2, 3 * cs).is_ok());
            boot.set_entry(&mut v, 3, 2).unwrap();
            match boot.check_chain(&mut v, 2, 3 * cs) {
                Err(FatError::Corrupt { detail, .. }) => {
                    assert!(detail.contains("cyclic"), "{detail}");
                }
                other => panic!("{other:?}"),
            }
            assert!(boot.check_dir_chain(&mut v, 2).is_err());
            assert!(boot.check_dir_chain(&mut v, 0).is_err());
        }
    }
}
