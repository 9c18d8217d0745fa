//! Partition tables: read MBR (primary entries) and GPT, find the FAT partition, and write a
//! one-partition MBR at a chosen byte offset.
//!
//! Everything read here comes from a possibly hostile disk: entries are parsed from fixed-size
//! buffers with checked arithmetic, the GPT entry array is capped, and each partition is checked
//! against the disk size before it is used.

use std::fmt;
use std::io;

use crate::bytes::{le16, le32, le64};
use crate::Error;

/// Bytes per logical sector assumed for partition tables (as QEMU and mkfs.vfat do for images).
pub const SECTOR: u64 = 512;

/// GPT entry arrays larger than this are rejected (the spec minimum is 128 entries = 16 KiB).
const MAX_GPT_ENTRY_BYTES: u64 = 1024 * 1024;

/// Which partition table a disk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Classic DOS/MBR table.
    Mbr,
    /// GUID partition table (behind a protective MBR).
    Gpt,
    /// No table: the FAT volume starts at byte 0 ("superfloppy").
    None,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableKind::Mbr => "MBR",
            TableKind::Gpt => "GPT",
            TableKind::None => "none (superfloppy)",
        })
    }
}

/// The partition type as stored in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionType {
    /// MBR system id byte.
    Mbr(u8),
    /// GPT type GUID, in the on-disk (mixed-endian) byte order.
    Gpt([u8; 16]),
    /// The whole disk (superfloppy).
    WholeDisk,
}

impl fmt::Display for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionType::Mbr(t) => write!(f, "0x{t:02x}"),
            PartitionType::Gpt(g) => f.write_str(&guid_string(g)),
            PartitionType::WholeDisk => f.write_str("whole disk"),
        }
    }
}

/// One partition: where it is and what type it claims to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based index in the table (0 for a superfloppy).
    pub index: u32,
    /// Byte offset of the first sector.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type from the table.
    pub kind: PartitionType,
}

impl Partition {
    /// True if the type says FAT (MBR 0x01/04/06/0b/0c/0e/ef; GPT basic data or EFI system).
    #[must_use]
    pub fn is_fat_type(&self) -> bool {
        match self.kind {
            PartitionType::Mbr(t) => matches!(t, 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e | 0xef),
            PartitionType::Gpt(g) => g == GPT_BASIC_DATA || g == GPT_EFI_SYSTEM,
            PartitionType::WholeDisk => true,
        }
    }
}

/// A parsed partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// The kind of table.
    pub kind: TableKind,
    /// Its non-empty entries, in table order.
    pub partitions: Vec<Partition>,
}

/// Microsoft basic data partition EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 (on-disk byte order).
const GPT_BASIC_DATA: [u8; 16] = [
    0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
];
/// EFI system partition C12A7328-F81F-11D2-BA4B-00A0C93EC93B (on-disk byte order).
const GPT_EFI_SYSTEM: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
    )
}

/// Does this sector look like a FAT boot sector (jump instruction, sane BPB)?
pub(crate) fn looks_like_fat_boot(sector: &[u8]) -> bool {
    let jump = matches!(sector.first(), Some(0xeb | 0xe9));
    let bps = le16(sector, 11);
    let spc = sector.get(13).copied().unwrap_or(0);
    let fats = sector.get(16).copied().unwrap_or(0);
    jump && matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && (1..=2).contains(&fats)
}

/// Read the partition table of a disk of `disk_size` bytes through `read_at`.
///
/// # Errors
/// [`Error::Corrupt`] for a malformed GPT; I/O errors from `read_at` as [`Error::Io`].
pub fn read_table(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    disk_size: u64,
    path: &std::path::Path,
) -> Result<PartitionTable, Error> {
    let mut mbr = [0u8; 512];
    if disk_size < SECTOR {
        return Err(Error::corrupt(
            path,
            "disk",
            0,
            format!("disk is only {disk_size} bytes"),
        ));
    }
    read_at(0, &mut mbr).map_err(|e| Error::io("read the MBR of", path, e))?;
    if looks_like_fat_boot(&mbr) {
        return Ok(PartitionTable {
            kind: TableKind::None,
            partitions: vec![Partition {
                index: 0,
                start: 0,
                size: disk_size,
                kind: PartitionType::WholeDisk,
            }],
        });
    }
    if mbr[510..512] != [0x55, 0xaa] {
        return Ok(PartitionTable {
            kind: TableKind::Mbr,
            partitions: Vec::new(),
        });
    }
    let mut partitions = Vec::new();
    let mut protective = false;
    for i in 0..4u32 {
        let at = 446 + 16 * usize::try_from(i).unwrap_or(0);
        let Some(e) = mbr.get(at..at + 16) else {
            continue;
        };
        let kind = e[4];
        let lba = u64::from(le32(e, 8));
        let count = u64::from(le32(e, 12));
        if kind == 0 || count == 0 {
            continue;
        }
        if kind == 0xee {
            protective = true;
        }
        partitions.push(Partition {
            index: i + 1,
            start: lba * SECTOR,
            size: count * SECTOR,
            kind: PartitionType::Mbr(kind),
        });
    }
    if protective {
        return read_gpt(read_at, disk_size, path);
    }
    Ok(PartitionTable {
        kind: TableKind::Mbr,
        partitions,
    })
}

fn read_gpt(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    disk_size: u64,
    path: &std::path::Path,
) -> Result<PartitionTable, Error> {
    let bad = |off: u64, d: String| Error::corrupt(path, "GPT header", off, d);
    if disk_size < 2 * SECTOR {
        return Err(bad(SECTOR, "disk too small for a GPT header".into()));
    }
    let mut hdr = [0u8; 512];
    read_at(SECTOR, &mut hdr).map_err(|e| Error::io("read the GPT header of", path, e))?;
    if &hdr[0..8] != b"EFI PART" {
        return Err(bad(
            SECTOR,
            "protective MBR present but no 'EFI PART' signature".into(),
        ));
    }
    let entries_lba = le64(&hdr, 72);
    let count = u64::from(le32(&hdr, 80));
    let entry_size = u64::from(le32(&hdr, 84));
    if !(128..=4096).contains(&entry_size) || !entry_size.is_power_of_two() {
        return Err(bad(
            SECTOR + 84,
            format!("partition entry size {entry_size} is not 128..4096"),
        ));
    }
    let total = count
        .checked_mul(entry_size)
        .filter(|t| *t <= MAX_GPT_ENTRY_BYTES)
        .ok_or_else(|| {
            bad(
                SECTOR + 80,
                format!("{count} entries of {entry_size} bytes is too many"),
            )
        })?;
    let start = entries_lba
        .checked_mul(SECTOR)
        .filter(|s| s.checked_add(total).is_some_and(|e| e <= disk_size))
        .ok_or_else(|| {
            bad(
                SECTOR + 72,
                format!("entry array at LBA {entries_lba} lies past the end of the disk"),
            )
        })?;
    let mut buf = vec![0u8; usize::try_from(total).map_err(|e| bad(SECTOR + 80, e.to_string()))?];
    read_at(start, &mut buf).map_err(|e| Error::io("read the GPT entries of", path, e))?;
    let mut partitions = Vec::new();
    let es = usize::try_from(entry_size).map_err(|e| bad(SECTOR + 84, e.to_string()))?;
    for (i, e) in buf.chunks_exact(es).enumerate() {
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&e[..16]);
        if guid == [0u8; 16] {
            continue;
        }
        let first = le64(e, 32);
        let last = le64(e, 40);
        let entry_off = start + (i as u64) * entry_size;
        let size = last
            .checked_sub(first)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(SECTOR))
            .ok_or_else(|| {
                Error::corrupt(
                    path,
                    "GPT entry",
                    entry_off,
                    format!("last LBA {last} before first LBA {first}"),
                )
            })?;
        let start = first.checked_mul(SECTOR).ok_or_else(|| {
            Error::corrupt(
                path,
                "GPT entry",
                entry_off,
                format!("first LBA {first} overflows"),
            )
        })?;
        partitions.push(Partition {
            index: u32::try_from(i + 1).unwrap_or(u32::MAX),
            start,
            size,
            kind: PartitionType::Gpt(guid),
        });
    }
    Ok(PartitionTable {
        kind: TableKind::Gpt,
        partitions,
    })
}

impl PartitionTable {
    /// Choose the FAT partition: `index` (1-based) if given, else the first FAT-typed one, else
    /// the first whose boot sector looks like FAT (checked by `is_fat`). The choice is checked to
    /// lie inside the disk.
    ///
    /// # Errors
    /// [`Error::NoFatPartition`] if nothing matches, [`Error::PartitionOutOfBounds`] if the
    /// chosen partition extends past `disk_size`.
    pub fn find_fat(
        &self,
        index: Option<u32>,
        disk_size: u64,
        path: &std::path::Path,
        is_fat: &mut dyn FnMut(&Partition) -> bool,
    ) -> Result<Partition, Error> {
        let chosen = match index {
            Some(i) => self.partitions.iter().find(|p| p.index == i).cloned(),
            None => self
                .partitions
                .iter()
                .find(|p| p.is_fat_type() && fits(p, disk_size) && is_fat(p))
                .or_else(|| {
                    self.partitions
                        .iter()
                        .find(|p| fits(p, disk_size) && is_fat(p))
                })
                .or_else(|| self.partitions.iter().find(|p| p.is_fat_type()))
                .cloned(),
        };
        let Some(p) = chosen else {
            let seen: Vec<String> = self
                .partitions
                .iter()
                .map(|p| format!("#{} type {} at byte {}", p.index, p.kind, p.start))
                .collect();
            return Err(Error::NoFatPartition {
                path: path.to_owned(),
                detail: if seen.is_empty() {
                    format!("{} table with no partitions", self.kind)
                } else {
                    format!("{} table: {}", self.kind, seen.join(", "))
                },
            });
        };
        if !fits(&p, disk_size) {
            return Err(Error::PartitionOutOfBounds {
                path: path.to_owned(),
                index: p.index,
                end: p.start.saturating_add(p.size),
                disk_size,
            });
        }
        Ok(p)
    }
}

fn fits(p: &Partition, disk_size: u64) -> bool {
    p.size > 0 && p.start.checked_add(p.size).is_some_and(|e| e <= disk_size)
}

/// Build a one-partition MBR sector: partition 1 from byte `start` to the end of the disk
/// (`disk_size`), system id `kind`, disk signature `disk_id`.
///
/// # Errors
/// [`Error::InvalidArgument`] if `start` is not a positive multiple of 512 inside the disk, or
/// the partition does not fit the 32-bit LBA fields (2 TiB).
pub fn build_mbr(disk_size: u64, start: u64, kind: u8, disk_id: u32) -> Result<[u8; 512], Error> {
    let invalid = |reason: String| Error::InvalidArgument {
        what: "partition offset",
        value: start.to_string(),
        reason,
    };
    if start == 0 || !start.is_multiple_of(SECTOR) {
        return Err(invalid(
            "must be a positive multiple of 512 (e.g. 32256 or 1048576)".into(),
        ));
    }
    if start >= disk_size {
        return Err(invalid(format!("must be below the disk size {disk_size}")));
    }
    let lba =
        u32::try_from(start / SECTOR).map_err(|_| invalid("past the 2 TiB MBR limit".into()))?;
    let count = u32::try_from((disk_size - start) / SECTOR)
        .map_err(|_| invalid("partition larger than the 2 TiB MBR limit".into()))?;
    let mut mbr = [0u8; 512];
    mbr[440..444].copy_from_slice(&disk_id.to_le_bytes());
    let e = &mut mbr[446..462];
    e[0] = 0x00;
    e[1..4].copy_from_slice(&chs(lba));
    e[4] = kind;
    e[5..8].copy_from_slice(&chs(lba + count - 1));
    e[8..12].copy_from_slice(&lba.to_le_bytes());
    e[12..16].copy_from_slice(&count.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    Ok(mbr)
}

/// CHS address of `lba` with the 255-head, 63-sector geometry; 1023/254/63 when out of range.
fn chs(lba: u32) -> [u8; 3] {
    const HEADS: u32 = 255;
    const SPT: u32 = 63;
    let cyl = lba / (HEADS * SPT);
    if cyl > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / SPT) % HEADS;
    let sect = lba % SPT + 1;
    let b = |v: u32| u8::try_from(v & 0xff).unwrap_or(0xff);
    [b(head), b((sect & 0x3f) | ((cyl >> 2) & 0xc0)), b(cyl)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_from(img: &[u8]) -> impl FnMut(u64, &mut [u8]) -> io::Result<()> + '_ {
        move |off, buf| {
            let s = usize::try_from(off).map_err(io::Error::other)?;
            let src = img
                .get(s..s + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    #[test]
    fn mbr_round_trip() {
        let size = 64 * 1024 * 1024;
        let mbr = build_mbr(size, 32256, 0x0c, 7).unwrap_or([0; 512]);
        let mut img = vec![0u8; 4096];
        img[..512].copy_from_slice(&mbr);
        let t = read_table(&mut read_from(&img), size, "x".as_ref());
        let t = t.unwrap_or(PartitionTable {
            kind: TableKind::None,
            partitions: vec![],
        });
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.partitions.len(), 1);
        assert_eq!(t.partitions[0].start, 32256);
        assert_eq!(t.partitions[0].size, size - 32256);
        assert!(t.partitions[0].is_fat_type());
    }

    #[test]
    fn partition_past_end_is_named() {
        let mbr = build_mbr(1 << 30, 1 << 20, 0x0c, 7).unwrap_or([0; 512]);
        let mut img = vec![0u8; 4096];
        img[..512].copy_from_slice(&mbr);
        let t = read_table(&mut read_from(&img), 1 << 30, "x".as_ref());
        let err = t.and_then(|t| t.find_fat(None, 1 << 24, "x".as_ref(), &mut |_| true));
        assert!(
            matches!(err, Err(Error::PartitionOutOfBounds { index: 1, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn bad_offsets_rejected() {
        assert!(build_mbr(1 << 30, 1000, 0x0c, 0).is_err());
        assert!(build_mbr(1 << 30, 0, 0x0c, 0).is_err());
        assert!(build_mbr(1 << 20, 1 << 20, 0x0c, 0).is_err());
    }
}
