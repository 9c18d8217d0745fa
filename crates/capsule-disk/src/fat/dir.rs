//! Directory entries as stored: 32-byte short entries, the long-name entries in front of them,
//! and the regions a directory occupies (the fixed FAT12/16 root, or a cluster chain).
//!
//! Everything the file API reads from a directory comes from here, parsed from raw bytes with
//! the same rules `fatfs` 0.3.6 uses to list a directory (which entries count, how long names
//! are assembled and checked, how short names are shown), so that the entries `fatfs`
//! creates and the entries we read are the same ones.

use std::io;

use super::{BootInfo, FatError, FatKind, VolumeRw};
use crate::bytes::{le16, le32};

/// Bytes per directory entry.
pub(crate) const ENTRY_SIZE: u64 = 32;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
/// Read-only + hidden + system + volume id marks a long-name entry.
const ATTR_LFN: u8 = 0x0f;
const DELETED: u8 = 0xe5;
/// A stored first byte of 0x05 stands for a name starting with 0xE5.
const REALLY_E5: u8 = 0x05;
/// Characters of a long name held by one long-name entry.
const LFN_PART: usize = 13;
/// Directory bytes read per step of the fixed root region.
const READ_STEP: u64 = 64 * 1024;

/// Where a directory's entries are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirLoc {
    /// The fixed root directory region of FAT12/16.
    FixedRoot,
    /// A cluster chain (the FAT32 root and every subdirectory), by its first cluster.
    Chain(u32),
}

/// One directory entry as stored: a short entry and the long name in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEntry {
    /// The long name if a valid one precedes the entry, else the short name with the
    /// lower-case flags applied (what `fatfs`'s `file_name` returns).
    pub(crate) name: String,
    /// The 8.3 name as stored, `NAME.EXT` (what `fatfs`'s `short_file_name` returns).
    pub(crate) short_name: String,
    /// Attribute byte.
    pub(crate) attrs: u8,
    /// First cluster (the high half counts on FAT32 only, as in `fatfs`); 0 for none.
    pub(crate) first_cluster: u32,
    /// Size in bytes (meaningless for directories).
    pub(crate) size: u32,
    /// Last modification date and time, DOS encoding.
    pub(crate) modified: (u16, u16),
    /// Volume offset of the 32-byte short entry.
    pub(crate) pos: u64,
}

impl RawEntry {
    /// True for a directory.
    pub(crate) fn is_dir(&self) -> bool {
        self.attrs & ATTR_DIRECTORY != 0
    }

    /// Parse the short entry `e`, stored at `pos`, preceded by the long name `long`.
    fn parse(kind: FatKind, e: &[u8; 32], long: Option<&[u16]>, pos: u64) -> RawEntry {
        let mut raw = [0u8; 11];
        raw.copy_from_slice(&e[..11]);
        let hi = if kind == FatKind::Fat32 {
            le16(e, 20)
        } else {
            0
        };
        let flags = e[12];
        RawEntry {
            name: long.map(String::from_utf16_lossy).unwrap_or_else(|| {
                let mut lower = raw;
                let (base, ext) = lower.split_at_mut(8);
                if flags & 0x08 != 0 {
                    base.make_ascii_lowercase();
                }
                if flags & 0x10 != 0 {
                    ext.make_ascii_lowercase();
                }
                short_name(&lower)
            }),
            short_name: short_name(&raw),
            attrs: e[11],
            first_cluster: (u32::from(hi) << 16) | u32::from(le16(e, 26)),
            size: le32(e, 28),
            modified: (le16(e, 24), le16(e, 22)),
            pos,
        }
    }
}

/// A short entry met during a directory walk, with the long name in front of it. Borrowed:
/// a lookup builds nothing for the entries it passes over.
#[derive(Debug)]
pub(crate) struct Slot<'a> {
    kind: FatKind,
    e: &'a [u8; 32],
    long: Option<&'a [u16]>,
    pos: u64,
}

impl Slot<'_> {
    fn raw_name(&self) -> &[u8; 11] {
        let (name, _) = self.e.split_first_chunk::<11>().unwrap_or((&[0; 11], &[]));
        name
    }

    /// True for the `.` and `..` entries of a subdirectory.
    pub(crate) fn is_dot(&self) -> bool {
        matches!(self.raw_name(), b".          " | b"..         ")
    }

    /// True if `name` is this entry's long or short name, case-insensitively (FAT's rule,
    /// and `fatfs`'s when it looks a name up).
    pub(crate) fn is_named(&self, name: &str) -> bool {
        self.long.is_some_and(|l| {
            same_name(
                char::decode_utf16(l.iter().copied()).map(|c| c.unwrap_or('\u{fffd}')),
                name,
            )
        }) || same_name(short_chars(self.raw_name()), name)
    }

    /// The entry, parsed.
    pub(crate) fn entry(&self) -> RawEntry {
        RawEntry::parse(self.kind, self.e, self.long, self.pos)
    }
}

/// `NAME.EXT` from the 11 stored bytes, as `fatfs` shows it: padding dropped, a leading 0x05
/// read as 0xE5, bytes above 0x7F (OEM code page) shown as U+FFFD.
fn short_name(raw: &[u8; 11]) -> String {
    short_chars(raw).collect()
}

/// The characters of [`short_name`], without allocating.
fn short_chars(raw: &[u8; 11]) -> impl Iterator<Item = char> + '_ {
    let (base, ext) = raw.split_at(8);
    let used = |part: &[u8]| part.iter().rposition(|b| *b != b' ').map_or(0, |p| p + 1);
    let base = base.get(..used(base)).unwrap_or_default();
    let ext = ext.get(..used(ext)).unwrap_or_default();
    let dot: &[u8] = if ext.is_empty() { b"" } else { b"." };
    let first = base.first().or(dot.first());
    let e5 = first == Some(&REALLY_E5);
    base.iter()
        .chain(dot)
        .chain(ext)
        .enumerate()
        .map(move |(i, b)| if i == 0 && e5 { DELETED } else { *b })
        .map(|b| if b <= 0x7f { char::from(b) } else { '\u{fffd}' })
}

/// Compare names as FAT does: case-insensitively.
fn same_name(a: impl Iterator<Item = char>, b: &str) -> bool {
    a.flat_map(char::to_uppercase)
        .eq(b.chars().flat_map(char::to_uppercase))
}

/// The checksum of a short name that its long-name entries carry.
pub(crate) fn lfn_checksum(raw: &[u8; 11]) -> u8 {
    raw.iter().fold(0u8, |sum, b| {
        (sum << 7).wrapping_add(sum >> 1).wrapping_add(*b)
    })
}

/// Long-name entries collected in front of a short entry (the rules of `fatfs` 0.3.6's
/// `LongNameBuilder`: entries come last part first, each one's index one below the previous,
/// all with the same checksum; anything else drops the long name).
#[derive(Debug, Default)]
struct LongName {
    buf: Vec<u16>,
    checksum: u8,
    index: u8,
}

impl LongName {
    fn clear(&mut self) {
        self.buf.clear();
        self.index = 0;
    }

    fn add(&mut self, e: &[u8; 32]) {
        let order = e[0];
        let index = order & 0x1f;
        if index == 0 {
            self.clear();
            return;
        }
        if order & 0x40 != 0 {
            self.index = index;
            self.checksum = e[13];
            self.buf.resize(usize::from(index) * LFN_PART, 0);
        } else if self.index == 0 || index != self.index - 1 || e[13] != self.checksum {
            self.clear();
            return;
        } else {
            self.index -= 1;
        }
        let at = LFN_PART * usize::from(index - 1);
        let chars = [1usize, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (slot, off) in self.buf.iter_mut().skip(at).zip(chars) {
            *slot = le16(e, off);
        }
    }

    /// The long name (UTF-16, padding dropped) for the short entry `raw`, if a complete one
    /// with its checksum was seen. Call [`LongName::clear`] before the next entry.
    fn finish(&self, raw: &[u8; 11]) -> Option<&[u16]> {
        if self.index != 1 || lfn_checksum(raw) != self.checksum {
            return None;
        }
        let end = self
            .buf
            .iter()
            .rposition(|c| *c != 0 && *c != 0xffff)
            .map_or(0, |p| p + 1);
        self.buf.get(..end).filter(|n| !n.is_empty())
    }
}

impl BootInfo {
    /// Where the root directory is.
    pub(crate) fn root_dir(&self) -> DirLoc {
        match self.root_cluster {
            Some(c) => DirLoc::Chain(c),
            None => DirLoc::FixedRoot,
        }
    }

    /// Visit the entries of directory `loc` in order until `f` returns false: deleted
    /// entries, volume labels and long-name entries are skipped (the long name is attached
    /// to its short entry), `.` and `..` are included. Reads at most 2 MiB of entries.
    pub(crate) fn visit_dir(
        &self,
        v: &mut dyn VolumeRw,
        loc: DirLoc,
        f: &mut dyn FnMut(&Slot<'_>) -> bool,
    ) -> Result<(), FatError> {
        let mut walk = DirWalk {
            kind: self.kind,
            long: LongName::default(),
            buf: Vec::new(),
            f,
        };
        match loc {
            DirLoc::FixedRoot => {
                let end = self.root_offset + self.root_bytes;
                let mut off = self.root_offset;
                while off < end {
                    let len = (end - off).min(READ_STEP);
                    if walk.region(v, off, len)? {
                        return Ok(());
                    }
                    off += len;
                }
                Ok(())
            }
            DirLoc::Chain(first) => {
                let mut c = u64::from(first);
                for _ in 0..self.max_dir_clusters() {
                    let off = self.cluster_offset(c).ok_or_else(|| FatError::Corrupt {
                        what: "FAT directory",
                        offset: self.fat_offset,
                        detail: format!(
                            "first cluster {c} is outside the volume (2..{})",
                            self.clusters + 2
                        ),
                    })?;
                    if walk.region(v, off, self.cluster_size)? {
                        return Ok(());
                    }
                    match self.next_dir_cluster(v, c)? {
                        Some(next) => c = next,
                        None => return Ok(()),
                    }
                }
                Err(FatError::Corrupt {
                    what: "FAT directory",
                    offset: self.fat_offset,
                    detail: "cluster chain longer than the 2 MiB a directory can hold (a loop?)"
                        .to_owned(),
                })
            }
        }
    }

    /// Set the first cluster and size of the short entry at `pos`, keeping its other fields.
    pub(crate) fn set_entry_data(
        &self,
        v: &mut dyn VolumeRw,
        pos: u64,
        first: u64,
        size: u64,
    ) -> io::Result<()> {
        let hi = u16::try_from(first >> 16).map_err(io::Error::other)?;
        let lo = u16::try_from(first & 0xffff).map_err(io::Error::other)?;
        let size = u32::try_from(size).map_err(io::Error::other)?;
        let mut fields = [0u8; 12]; // bytes 20..32 of the entry
        v.read_at(pos + 20, &mut fields)?;
        // The high word is FAT32's; FAT12/16 keep what is there (as fatfs does).
        if self.kind == FatKind::Fat32 {
            fields[0..2].copy_from_slice(&hi.to_le_bytes());
        }
        fields[6..8].copy_from_slice(&lo.to_le_bytes());
        fields[8..12].copy_from_slice(&size.to_le_bytes());
        v.write_at(pos + 20, &fields)
    }
}

/// The state of one directory walk across its regions.
struct DirWalk<'f> {
    kind: FatKind,
    long: LongName,
    buf: Vec<u8>,
    f: &'f mut dyn FnMut(&Slot<'_>) -> bool,
}

impl DirWalk<'_> {
    /// Visit the entries in `len` bytes at volume offset `off`; true when the walk is over.
    fn region(&mut self, v: &mut dyn VolumeRw, off: u64, len: u64) -> Result<bool, FatError> {
        self.buf
            .resize(usize::try_from(len).map_err(io::Error::other)?, 0);
        v.read_at(off, &mut self.buf)?;
        for (i, chunk) in (0u64..).zip(self.buf.chunks_exact(32)) {
            let Ok(e) = <&[u8; 32]>::try_from(chunk) else {
                continue;
            };
            match (e[0], e[11]) {
                (0, _) => return Ok(true),
                (DELETED, _) => self.long.clear(),
                (_, attrs) if attrs & ATTR_LFN == ATTR_LFN => self.long.add(e),
                (_, attrs) if attrs & ATTR_VOLUME_ID != 0 => self.long.clear(),
                _ => {
                    let mut raw = [0u8; 11];
                    raw.copy_from_slice(&e[..11]);
                    let slot = Slot {
                        kind: self.kind,
                        e,
                        long: self.long.finish(&raw),
                        pos: off + i * ENTRY_SIZE,
                    };
                    let go_on = (self.f)(&slot);
                    self.long.clear();
                    if !go_on {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn short_names_as_fatfs_shows_them() {
        assert_eq!(short_name(b"HELLO   TXT"), "HELLO.TXT");
        assert_eq!(short_name(b"NOEXT      "), "NOEXT");
        assert_eq!(short_name(b".          "), ".");
        assert_eq!(short_name(b"..         "), "..");
        assert_eq!(short_name(b"\x05BC     TXT"), "\u{fffd}BC.TXT");
        assert_eq!(short_name(b"A\x80      B  "), "A\u{fffd}.B");
    }

    #[test]
    fn checksum_of_a_known_name() {
        // Computed by hand with the algorithm of Microsoft's FAT specification.
        let mut sum = 0u8;
        for b in b"HELLO   TXT" {
            sum = ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(*b);
        }
        assert_eq!(lfn_checksum(b"HELLO   TXT"), sum);
    }

    fn lfn_entry(order: u8, checksum: u8, part: &[u16]) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[0] = order;
        e[11] = ATTR_LFN;
        e[13] = checksum;
        let offs = [1usize, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (i, off) in offs.iter().enumerate() {
            let c = part
                .get(i)
                .copied()
                .unwrap_or(if i == part.len() { 0 } else { 0xffff });
            e[*off..*off + 2].copy_from_slice(&c.to_le_bytes());
        }
        e
    }

    #[test]
    fn long_names_need_order_and_checksum() {
        let raw = *b"LONGFI~1TXT";
        let sum = lfn_checksum(&raw);
        let name: Vec<u16> = "Long file name.txt".encode_utf16().collect();
        let (a, b) = name.split_at(13);
        let mut l = LongName::default();
        l.add(&lfn_entry(0x42, sum, b));
        l.add(&lfn_entry(0x01, sum, a));
        assert_eq!(l.finish(&raw), Some(&name[..]));
        // Wrong checksum, or a part missing: no long name.
        assert_eq!(l.finish(b"OTHER   TXT"), None);
        l.clear();
        l.add(&lfn_entry(0x42, sum, b));
        assert_eq!(l.finish(&raw), None);
        l.clear();
        l.add(&lfn_entry(0x01, sum, a));
        assert_eq!(l.finish(&raw), None);
    }

    #[test]
    fn lookups_match_long_and_short_names_in_any_case() {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(b"LONGFI~1TXT");
        e[12] = 0x18; // lower-case base and extension
        let long: Vec<u16> = "Long File.txt".encode_utf16().collect();
        let with_long = Slot {
            kind: FatKind::Fat16,
            e: &e,
            long: Some(&long),
            pos: 0,
        };
        for name in [
            "Long File.txt",
            "LONG FILE.TXT",
            "longfi~1.txt",
            "LONGFI~1.TXT",
        ] {
            assert!(with_long.is_named(name), "{name}");
        }
        assert!(!with_long.is_named("Long File"));
        assert_eq!(with_long.entry().name, "Long File.txt");
        let short = Slot {
            long: None,
            ..with_long
        };
        assert!(short.is_named("LongFi~1.Txt"));
        assert!(!short.is_named("Long File.txt"));
        assert_eq!(short.entry().name, "longfi~1.txt");
        assert_eq!(short.entry().short_name, "LONGFI~1.TXT");
        let mut dot = [b' '; 32];
        dot[0] = b'.';
        assert!(Slot { e: &dot, ..short }.is_dot());
    }
}
