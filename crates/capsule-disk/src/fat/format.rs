//! Formatting choices, as `mkfs.vfat` would make them: FAT type by size, label, layout.

use std::fmt;

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
