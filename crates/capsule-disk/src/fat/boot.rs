//! The boot sector: parsed and checked once into a [`BootInfo`] (the volume's layout), enough
//! that neither `fatfs` nor our own code divides by zero or indexes out of range on a hostile
//! volume.

use super::{FatError, FatKind};
use crate::bytes::{le16, le32};

/// The volume's layout as the boot sector gives it; every offset is relative to the volume.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BootInfo {
    pub(crate) volume_bytes: u64,
    /// Byte offset of the first FAT.
    pub(crate) fat_offset: u64,
    /// Number of data clusters.
    pub(crate) clusters: u64,
    pub(crate) kind: FatKind,
    /// Bytes per cluster.
    pub(crate) cluster_size: u64,
    /// FAT32 only: first cluster of the root directory.
    pub(crate) root_cluster: Option<u32>,
    /// Byte offset of cluster 2.
    pub(crate) data_offset: u64,
    /// Number of FAT copies and bytes per copy.
    pub(crate) fats: u64,
    pub(crate) fat_bytes: u64,
    /// FAT12/16: byte offset and length of the fixed root directory region.
    pub(crate) root_offset: u64,
    pub(crate) root_bytes: u64,
    /// FAT32: byte offset of the FSInfo sector (None if absent).
    pub(crate) fs_info_offset: Option<u64>,
    /// FAT32: sector of the backup boot sector (None if absent).
    pub(crate) backup_boot_sector: Option<u64>,
    /// Bytes per sector.
    pub(crate) sector_size: u64,
}

/// Byte offset of the "hidden sectors" field (sectors before the volume) in a boot sector.
pub(crate) const HIDDEN_SECTORS_FIELD: u64 = 28;

/// The BIOS parameter block fields the layout comes from, each checked on its own.
struct Bpb {
    sector: u64,
    sectors_per_cluster: u64,
    reserved: u64,
    fats: u64,
    total: u64,
    fat_size: u64,
    root_entries: u64,
    /// FAT32 fields: root cluster, FSInfo sector, backup boot sector.
    root_cluster: u32,
    fs_info: u16,
    backup: u16,
}

fn corrupt(offset: u64, detail: String) -> FatError {
    FatError::Corrupt {
        what: "FAT boot sector",
        offset,
        detail,
    }
}

impl Bpb {
    fn read(b: &[u8; 512]) -> Result<Bpb, FatError> {
        if b[510..512] != [0x55, 0xaa] {
            return Err(corrupt(
                510,
                "missing 0x55aa signature; not a FAT volume".into(),
            ));
        }
        let bps = le16(b, 11);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err(corrupt(
                11,
                format!("bytes per sector {bps} is not 512, 1024, 2048 or 4096"),
            ));
        }
        let spc = b[13];
        if !spc.is_power_of_two() {
            return Err(corrupt(
                13,
                format!("sectors per cluster {spc} is not a power of two"),
            ));
        }
        let cluster_size = u32::from(bps) * u32::from(spc);
        if cluster_size > 64 * 1024 {
            return Err(corrupt(
                13,
                format!("cluster size {cluster_size} exceeds 64 KiB"),
            ));
        }
        let reserved = le16(b, 14);
        if reserved == 0 {
            return Err(corrupt(14, "zero reserved sectors".into()));
        }
        let fats = b[16];
        if !(1..=2).contains(&fats) {
            return Err(corrupt(16, format!("{fats} FATs; expected 1 or 2")));
        }
        let fat_size = match le16(b, 22) {
            0 => le32(b, 36),
            n => u32::from(n),
        };
        if fat_size == 0 {
            return Err(corrupt(22, "FAT size is zero".into()));
        }
        Ok(Bpb {
            sector: u64::from(bps),
            sectors_per_cluster: u64::from(spc),
            reserved: u64::from(reserved),
            fats: u64::from(fats),
            total: u64::from(match le16(b, 19) {
                0 => le32(b, 32),
                n => u32::from(n),
            }),
            fat_size: u64::from(fat_size),
            root_entries: u64::from(le16(b, 17)),
            root_cluster: le32(b, 44),
            fs_info: le16(b, 48),
            backup: le16(b, 50),
        })
    }
}

impl BootInfo {
    /// Parse and check the boot sector `b` of a volume that may span `part_size` bytes.
    pub(crate) fn parse(b: &[u8; 512], part_size: u64) -> Result<BootInfo, FatError> {
        let p = Bpb::read(b)?;
        let sector = p.sector;
        let volume_bytes = p.total * sector;
        let meta = p.reserved + p.fats * p.fat_size;
        if meta >= p.total {
            return Err(corrupt(
                19,
                format!(
                    "{} total sectors leave no room after {meta} FAT sectors",
                    p.total
                ),
            ));
        }
        let root_sectors = (p.root_entries * 32).div_ceil(sector);
        let data_sectors = p.total - meta - root_sectors.min(p.total - meta);
        let clusters = data_sectors / p.sectors_per_cluster;
        let kind = kind_of(clusters);
        if (clusters + 2) * kind.entry_bits() > p.fat_size * sector * 8 {
            return Err(corrupt(
                22,
                format!(
                    "a FAT of {} sectors cannot map {clusters} clusters",
                    p.fat_size
                ),
            ));
        }
        if volume_bytes > part_size {
            return Err(corrupt(
                32,
                format!(
                    "volume of {volume_bytes} bytes does not fit its {part_size}-byte partition"
                ),
            ));
        }
        let fat32 = kind == FatKind::Fat32;
        // A FAT32 sector field of 0 or 0xffff means "none"; it must lie in the reserved area.
        let reserved_sector = |v: u16| {
            let v = u64::from(v);
            (fat32 && v != 0 && v != 0xffff && v < p.reserved).then_some(v)
        };
        Ok(BootInfo {
            volume_bytes,
            fat_offset: p.reserved * sector,
            clusters,
            kind,
            cluster_size: sector * p.sectors_per_cluster,
            root_cluster: fat32.then_some(p.root_cluster),
            data_offset: (meta + root_sectors) * sector,
            fats: p.fats,
            fat_bytes: p.fat_size * sector,
            root_offset: meta * sector,
            root_bytes: p.root_entries * 32,
            fs_info_offset: reserved_sector(p.fs_info).map(|s| s * sector),
            backup_boot_sector: reserved_sector(p.backup),
            sector_size: sector,
        })
    }

    /// True if `c` is a data cluster of this volume.
    pub(crate) fn is_valid_cluster(&self, c: u64) -> bool {
        (2..self.clusters + 2).contains(&c)
    }

    /// Byte offset of data cluster `c`, or None if `c` is not one.
    pub(crate) fn cluster_offset(&self, c: u64) -> Option<u64> {
        self.is_valid_cluster(c)
            .then(|| self.data_offset + (c - 2) * self.cluster_size)
    }

    /// Bytes the data area holds.
    pub(crate) fn capacity(&self) -> u64 {
        self.clusters * self.cluster_size
    }

    /// Byte offset of the backup boot sector (FAT32), if there is one.
    pub(crate) fn backup_boot_offset(&self) -> Option<u64> {
        self.backup_boot_sector.map(|s| s * self.sector_size)
    }
}

/// The FAT type follows from the cluster count alone (Microsoft's FAT specification).
fn kind_of(clusters: u64) -> FatKind {
    if clusters < 4085 {
        FatKind::Fat12
    } else if clusters < 65525 {
        FatKind::Fat16
    } else {
        FatKind::Fat32
    }
}

impl FatKind {
    /// Bits per FAT entry.
    pub(crate) fn entry_bits(self) -> u64 {
        match self {
            FatKind::Fat12 => 12,
            FatKind::Fat16 => 16,
            FatKind::Fat32 => 32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fat16_sector() -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0] = 0xeb;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4; // 2 KiB clusters
        b[14..16].copy_from_slice(&4u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&512u16.to_le_bytes());
        b[19..21].copy_from_slice(&0u16.to_le_bytes());
        b[32..36].copy_from_slice(&131_072u32.to_le_bytes()); // 64 MiB
        b[22..24].copy_from_slice(&128u16.to_le_bytes());
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn layout_of_a_fat16_volume() {
        let Ok(info) = BootInfo::parse(&fat16_sector(), 64 << 20) else {
            panic!("valid boot sector refused");
        };
        assert_eq!(info.kind, FatKind::Fat16);
        assert_eq!(info.fat_offset, 4 * 512);
        assert_eq!(info.root_offset, (4 + 2 * 128) * 512);
        assert_eq!(info.data_offset, info.root_offset + 512 * 32);
        assert_eq!(info.cluster_offset(2), Some(info.data_offset));
        assert_eq!(info.cluster_offset(3), Some(info.data_offset + 2048));
        assert_eq!(info.cluster_offset(1), None);
        assert_eq!(info.cluster_offset(info.clusters + 2), None);
        assert_eq!(info.fs_info_offset, None);
    }

    #[test]
    fn bad_fields_are_named_with_their_offset() {
        let cases: [(usize, &[u8], u64, &str); 4] = [
            (11, &[0x00, 0x03], 11, "bytes per sector"),
            (13, &[3], 13, "power of two"),
            (16, &[3], 16, "FATs"),
            (510, &[0, 0], 510, "signature"),
        ];
        for (at, bytes, offset, text) in cases {
            let mut b = fat16_sector();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            match BootInfo::parse(&b, 64 << 20) {
                Err(FatError::Corrupt {
                    offset: o, detail, ..
                }) => {
                    assert_eq!(o, offset);
                    assert!(detail.contains(text), "{detail}");
                }
                other => panic!("{at}: {other:?}"),
            }
        }
        assert!(BootInfo::parse(&fat16_sector(), 32 << 20).is_err());
    }
}
