//! FAT volume layer: formatting choices (as `mkfs.vfat` would make them) and a light check of
//! the boot sector before `fatfs` is let loose on an untrusted volume.

use std::fmt;
use std::path::Path;

use crate::Error;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Smallest FAT volume we format.
pub const MIN_VOLUME: u64 = MIB;

/// The FAT variant of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatKind {
    /// 12-bit FAT.
    Fat12,
    /// 16-bit FAT.
    Fat16,
    /// 32-bit FAT.
    Fat32,
}

impl fmt::Display for FatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FatKind::Fat12 => "FAT12",
            FatKind::Fat16 => "FAT16",
            FatKind::Fat32 => "FAT32",
        })
    }
}

impl From<fatfs::FatType> for FatKind {
    fn from(t: fatfs::FatType) -> Self {
        match t {
            fatfs::FatType::Fat12 => FatKind::Fat12,
            fatfs::FatType::Fat16 => FatKind::Fat16,
            fatfs::FatType::Fat32 => FatKind::Fat32,
        }
    }
}

impl FatKind {
    /// MBR system id for a partition holding this FAT type (LBA variants).
    #[must_use]
    pub fn mbr_type(self) -> u8 {
        match self {
            FatKind::Fat12 => 0x01,
            FatKind::Fat16 => 0x0e,
            FatKind::Fat32 => 0x0c,
        }
    }
}

/// The FAT type `mkfs.vfat` picks for a volume of `bytes`: FAT32 from 512 MiB, FAT12 below
/// 4 MiB, FAT16 in between.
#[must_use]
pub fn fat_kind_for(bytes: u64) -> FatKind {
    if bytes >= 512 * MIB {
        FatKind::Fat32
    } else if bytes < 4 * MIB {
        FatKind::Fat12
    } else {
        FatKind::Fat16
    }
}

/// Turn a user label into the 11-byte boot-sector field (upper case, space padded).
///
/// # Errors
/// [`Error::InvalidArgument`] for labels longer than 11 bytes or with characters FAT forbids.
pub fn label_bytes(label: &str) -> Result<[u8; 11], Error> {
    let invalid = |reason: &str| Error::InvalidArgument {
        what: "volume label",
        value: label.to_owned(),
        reason: reason.to_owned(),
    };
    if label.len() > 11 {
        return Err(invalid("at most 11 characters"));
    }
    let mut out = [b' '; 11];
    if label.is_empty() {
        out.copy_from_slice(b"NO NAME    ");
        return Ok(out);
    }
    for (slot, c) in out.iter_mut().zip(label.bytes()) {
        if !c.is_ascii_graphic() && c != b' ' || b"*?.,;:/\\|+=<>[]\"".contains(&c) {
            return Err(invalid(
                "use ASCII letters, digits, space and -_!#$%&'()@^`{}~",
            ));
        }
        *slot = c.to_ascii_uppercase();
    }
    Ok(out)
}

/// `fatfs` 0.3.6 miscomputes the layout of volumes of 4096-4199 KiB (fixed on its unreleased
/// master); shrink such volumes to 4095 KiB, leaving the tail of the partition unused.
#[must_use]
pub(crate) fn safe_volume_size(bytes: u64) -> u64 {
    if (4096 * KIB..4200 * KIB).contains(&bytes) {
        4095 * KIB
    } else {
        bytes
    }
}

/// Format options for a volume of `bytes` with `label`.
pub(crate) fn format_options(
    bytes: u64,
    label: [u8; 11],
    volume_id: u32,
) -> Result<fatfs::FormatVolumeOptions, Error> {
    let sectors =
        u32::try_from(safe_volume_size(bytes) / 512).map_err(|_| Error::InvalidArgument {
            what: "size",
            value: bytes.to_string(),
            reason: "FAT volumes hold at most 2 TiB".to_owned(),
        })?;
    let kind = match fat_kind_for(bytes) {
        FatKind::Fat12 => fatfs::FatType::Fat12,
        FatKind::Fat16 => fatfs::FatType::Fat16,
        FatKind::Fat32 => fatfs::FatType::Fat32,
    };
    Ok(fatfs::FormatVolumeOptions::new()
        .fat_type(kind)
        .total_sectors(sectors)
        .volume_label(label)
        .volume_id(volume_id))
}

/// What the boot sector says, checked enough that `fatfs` will not divide by zero or index out
/// of range on a hostile volume.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BootInfo {
    pub(crate) volume_bytes: u64,
    /// Byte offset of the first FAT inside the volume.
    pub(crate) fat_offset: u64,
    /// Number of data clusters.
    pub(crate) clusters: u64,
    pub(crate) kind: FatKind,
    /// Bytes per cluster.
    pub(crate) cluster_size: u64,
    /// FAT32 only: first cluster of the root directory.
    pub(crate) root_cluster: Option<u32>,
    /// Byte offset of cluster 2 inside the volume.
    pub(crate) data_offset: u64,
    /// Number of FAT copies and bytes per copy.
    pub(crate) fats: u64,
    pub(crate) fat_bytes: u64,
    /// FAT12/16: byte offset and length of the fixed root directory region.
    pub(crate) root_offset: u64,
    pub(crate) root_bytes: u64,
    /// FAT32: byte offset of the FSInfo sector (None if absent).
    pub(crate) fs_info_offset: Option<u64>,
}

impl BootInfo {
    /// Check the cluster chain of a file of `size` bytes starting at cluster `first`: the
    /// first `n = ceil(size / cluster)` links stay inside the volume, and no cluster repeats
    /// among those `n` (Brent's cycle finding, O(1) memory, at most about 4n FAT reads; a
    /// valid chain costs n). `read` takes volume-relative offsets.
    pub(crate) fn check_chain(
        &self,
        first: u32,
        size: u64,
        cluster_size: u64,
        read: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<(), String> {
        if size == 0 {
            return Ok(());
        }
        let valid = |c: u64| (2..self.clusters + 2).contains(&c);
        let first = u64::from(first);
        if !valid(first) {
            return Err(format!(
                "first cluster {first} is outside the volume (2..{})",
                self.clusters + 2
            ));
        }
        let n = size.div_ceil(cluster_size);
        if n > self.clusters {
            return Err(format!(
                "size {size} needs {n} clusters but the volume has only {}",
                self.clusters
            ));
        }
        let mut next = |c: u64| {
            self.fat_entry(c, read)
                .map_err(|e| format!("cannot read the FAT: {e}"))
        };
        let (mut tortoise, mut hare) = (first, first);
        let (mut power, mut lam) = (1u64, 1u64);
        let mut step = 1u64;
        let cycle_len = loop {
            let to = next(hare)?;
            if !valid(to) {
                if step < n {
                    return Err(format!("cluster {hare} links to {to:#x} (end or outside the volume) before the file's {size} bytes"));
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
            hare = next(hare)?;
        }
        let mut tortoise = first;
        let mut mu = 0u64;
        while tortoise != hare && mu <= n {
            tortoise = next(tortoise)?;
            hare = next(hare)?;
            mu += 1;
        }
        if mu + cycle_len < n {
            return Err(format!(
                "cyclic cluster chain: cluster {tortoise} is reached again after {cycle_len} links"
            ));
        }
        Ok(())
    }

    /// Check a directory's cluster chain: it starts at a valid cluster, every link is valid or
    /// end-of-chain, and it is no longer than the 2 MiB a FAT directory can hold.
    pub(crate) fn check_dir_chain(
        &self,
        first: u32,
        cluster_size: u64,
        read: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<(), String> {
        let valid = |c: u64| (2..self.clusters + 2).contains(&c);
        let eoc: u64 = match self.kind {
            FatKind::Fat12 => 0xff8,
            FatKind::Fat16 => 0xfff8,
            FatKind::Fat32 => 0x0fff_fff8,
        };
        let mut c = u64::from(first);
        if !valid(c) {
            return Err(format!(
                "first cluster {c} is outside the volume (2..{})",
                self.clusters + 2
            ));
        }
        let max = (2 * 1024 * 1024 / cluster_size).max(1);
        for _ in 0..max {
            let next = self
                .fat_entry(c, read)
                .map_err(|e| format!("cannot read the FAT: {e}"))?;
            if next >= eoc {
                return Ok(());
            }
            if !valid(next) {
                return Err(format!(
                    "cluster {c} links to {next:#x}, which is free, bad or outside the volume"
                ));
            }
            c = next;
        }
        Err("cluster chain longer than the 2 MiB a directory can hold (a loop?)".to_owned())
    }

    /// End-of-chain marker for this FAT type.
    pub(crate) fn eoc(&self) -> u64 {
        match self.kind {
            FatKind::Fat12 => 0xfff,
            FatKind::Fat16 => 0xffff,
            FatKind::Fat32 => 0x0fff_ffff,
        }
    }

    /// Set the entry of cluster `c` to `value` in every FAT copy (FAT32's top 4 bits kept).
    /// `start` is the volume's byte offset on the disk behind `cache`.
    pub(crate) fn set_fat_entry(
        &self,
        c: u64,
        value: u64,
        cache: &mut crate::cache::Cache,
        start: u64,
    ) -> std::io::Result<()> {
        let read =
            |cache: &mut crate::cache::Cache, o: u64, b: &mut [u8]| cache.read_at(start + o, b);
        let write =
            |cache: &mut crate::cache::Cache, o: u64, b: &[u8]| cache.write_at(start + o, b);
        for copy in 0..self.fats {
            let base = self.fat_offset + copy * self.fat_bytes;
            match self.kind {
                FatKind::Fat12 => {
                    let at = base + c + c / 2;
                    let mut b = [0u8; 2];
                    read(cache, at, &mut b)?;
                    let old = u16::from_le_bytes(b);
                    let v = u16::try_from(value & 0xfff).unwrap_or(0xfff);
                    let new = if c % 2 == 1 {
                        (old & 0x000f) | (v << 4)
                    } else {
                        (old & 0xf000) | v
                    };
                    write(cache, at, &new.to_le_bytes())?;
                }
                FatKind::Fat16 => {
                    let v = u16::try_from(value & 0xffff).unwrap_or(0xffff);
                    write(cache, base + c * 2, &v.to_le_bytes())?;
                }
                FatKind::Fat32 => {
                    let at = base + c * 4;
                    let mut b = [0u8; 4];
                    read(cache, at, &mut b)?;
                    let keep = u32::from_le_bytes(b) & 0xf000_0000;
                    let v = u32::try_from(value & 0x0fff_ffff).unwrap_or(0x0fff_ffff);
                    write(cache, at, &(keep | v).to_le_bytes())?;
                }
            }
        }
        Ok(())
    }

    /// True if `c` is a data cluster of this volume.
    pub(crate) fn is_valid_cluster(&self, c: u64) -> bool {
        (2..self.clusters + 2).contains(&c)
    }

    /// The FAT entry of cluster `c`.
    pub(crate) fn fat_entry(
        &self,
        c: u64,
        read: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let mut b = [0u8; 4];
        match self.kind {
            FatKind::Fat12 => {
                read(self.fat_offset + c + c / 2, &mut b[..2])?;
                let v = u64::from(u16::from_le_bytes([b[0], b[1]]));
                Ok(if c % 2 == 1 { v >> 4 } else { v & 0xfff })
            }
            FatKind::Fat16 => {
                read(self.fat_offset + c * 2, &mut b[..2])?;
                Ok(u64::from(u16::from_le_bytes([b[0], b[1]])))
            }
            FatKind::Fat32 => {
                read(self.fat_offset + c * 4, &mut b)?;
                Ok(u64::from(u32::from_le_bytes(b) & 0x0fff_ffff))
            }
        }
    }

    /// Count free clusters by reading the first FAT in large chunks (much faster than one
    /// lookup per entry). `read` takes volume-relative offsets.
    pub(crate) fn count_free(
        &self,
        read: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let width: u64 = match self.kind {
            FatKind::Fat16 => 2,
            FatKind::Fat32 => 4,
            FatKind::Fat12 => return Err(std::io::Error::other("FAT12 is counted by fatfs")),
        };
        let mut free = 0u64;
        let mut entry = 2u64;
        let end = self.clusters + 2;
        let mut buf = vec![0u8; 1 << 20];
        while entry < end {
            let n = (end - entry).min(buf.len() as u64 / width);
            let bytes = usize::try_from(n * width).map_err(std::io::Error::other)?;
            let chunk = buf.get_mut(..bytes).unwrap_or_default();
            read(self.fat_offset + entry * width, chunk)?;
            free += if width == 4 {
                chunk
                    .chunks_exact(4)
                    .filter(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3] & 0x0f]) == 0)
                    .count() as u64
            } else {
                chunk
                    .chunks_exact(2)
                    .filter(|c| c[0] == 0 && c[1] == 0)
                    .count() as u64
            };
            entry += n;
        }
        Ok(free)
    }
}

/// Check the boot sector `b` of a volume that may span `part_size` bytes.
pub(crate) fn check_boot_sector(
    b: &[u8; 512],
    part_size: u64,
    path: &Path,
    part_start: u64,
) -> Result<BootInfo, Error> {
    let bad =
        |off: usize, d: String| Error::corrupt(path, "FAT boot sector", part_start + off as u64, d);
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if b[510..512] != [0x55, 0xaa] {
        return Err(bad(
            510,
            "missing 0x55aa signature; not a FAT volume".into(),
        ));
    }
    let bps = u16at(11);
    if !matches!(bps, 512 | 1024 | 2048 | 4096) {
        return Err(bad(
            11,
            format!("bytes per sector {bps} is not 512, 1024, 2048 or 4096"),
        ));
    }
    let spc = b[13];
    if !spc.is_power_of_two() {
        return Err(bad(
            13,
            format!("sectors per cluster {spc} is not a power of two"),
        ));
    }
    if u32::from(bps) * u32::from(spc) > 64 * 1024 {
        return Err(bad(
            13,
            format!(
                "cluster size {} exceeds 64 KiB",
                u32::from(bps) * u32::from(spc)
            ),
        ));
    }
    let reserved = u16at(14);
    if reserved == 0 {
        return Err(bad(14, "zero reserved sectors".into()));
    }
    let fats = b[16];
    if !(1..=2).contains(&fats) {
        return Err(bad(16, format!("{fats} FATs; expected 1 or 2")));
    }
    let total16 = u16at(19);
    let total = if total16 != 0 {
        u32::from(total16)
    } else {
        u32at(32)
    };
    let fat16_size = u16at(22);
    let fat_size = if fat16_size != 0 {
        u32::from(fat16_size)
    } else {
        u32at(36)
    };
    if fat_size == 0 {
        return Err(bad(22, "FAT size is zero".into()));
    }
    let volume_bytes = u64::from(total) * u64::from(bps);
    let meta = u64::from(reserved) + u64::from(fats) * u64::from(fat_size);
    if meta >= u64::from(total) {
        return Err(bad(
            19,
            format!("{total} total sectors leave no room after {meta} FAT sectors"),
        ));
    }
    let root_entries = u64::from(u16at(17));
    let root_sectors = (root_entries * 32).div_ceil(u64::from(bps));
    let data_sectors = u64::from(total) - meta - root_sectors.min(u64::from(total) - meta);
    let clusters = data_sectors / u64::from(spc);
    // The FAT type follows from the cluster count alone (Microsoft's FAT spec).
    let kind = if clusters < 4085 {
        FatKind::Fat12
    } else if clusters < 65525 {
        FatKind::Fat16
    } else {
        FatKind::Fat32
    };
    let entry_bits: u64 = match kind {
        FatKind::Fat12 => 12,
        FatKind::Fat16 => 16,
        FatKind::Fat32 => 32,
    };
    if (clusters + 2) * entry_bits > u64::from(fat_size) * u64::from(bps) * 8 {
        return Err(bad(
            22,
            format!("a FAT of {fat_size} sectors cannot map {clusters} clusters"),
        ));
    }
    if volume_bytes > part_size {
        return Err(bad(
            32,
            format!("volume of {volume_bytes} bytes does not fit its {part_size}-byte partition"),
        ));
    }
    let root_cluster = (kind == FatKind::Fat32).then(|| u32at(44));
    Ok(BootInfo {
        volume_bytes,
        fat_offset: u64::from(reserved) * u64::from(bps),
        clusters,
        kind,
        cluster_size: u64::from(bps) * u64::from(spc),
        root_cluster,
        data_offset: (meta + root_sectors) * u64::from(bps),
        fats: u64::from(fats),
        fat_bytes: u64::from(fat_size) * u64::from(bps),
        root_offset: meta * u64::from(bps),
        root_bytes: root_entries * 32,
        fs_info_offset: (kind == FatKind::Fat32)
            .then(|| u64::from(u16at(48)))
            .filter(|s| *s != 0 && *s != 0xffff && *s < u64::from(reserved))
            .map(|s| s * u64::from(bps)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(label_bytes("condordata").ok(), Some(*b"CONDORDATA "));
        assert_eq!(label_bytes("").ok(), Some(*b"NO NAME    "));
        assert!(label_bytes("TOO LONG LABEL").is_err());
        assert!(label_bytes("a/b").is_err());
    }

    #[test]
    fn kinds_follow_mkfs() {
        assert_eq!(fat_kind_for(MIB), FatKind::Fat12);
        assert_eq!(fat_kind_for(64 * MIB), FatKind::Fat16);
        assert_eq!(fat_kind_for(1024 * MIB), FatKind::Fat32);
        assert_eq!(safe_volume_size(4100 * KIB), 4095 * KIB);
    }
}
