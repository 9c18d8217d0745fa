//! Directory entries and volume paths: names, timestamps, the path rule.

use super::DirEntryInfo;
use crate::fat::RawEntry;
use crate::Error;

/// Seconds since the epoch of a FAT timestamp, DOS-encoded `(date, time)` and read as UTC
/// (days-from-civil, Howard Hinnant's algorithm).
pub(super) fn unix_time((date, time): (u16, u16)) -> u64 {
    let (y, m, d) = (
        i64::from((date >> 9) + 1980),
        i64::from((date >> 5) & 0xf),
        i64::from(date & 0x1f),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400
        + i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 0x3f) * 60
        + i64::from(time & 0x1f) * 2;
    u64::try_from(secs).unwrap_or(0)
}

pub(super) fn info_of(e: &RawEntry) -> DirEntryInfo {
    DirEntryInfo {
        name: e.name.clone(),
        is_dir: e.is_dir(),
        size: if e.is_dir() { 0 } else { u64::from(e.size) },
        modified: unix_time(e.modified),
    }
}

/// Split a volume path into components, rejecting `..` and control characters.
///
/// The check of volume paths given to the file API: `/job/out.txt` and `job/out.txt` name the
/// same file from the volume's root. Archive entry names, which are relative to a work dir and
/// come from the guest, are `capsule_manifest::RelPath`s instead.
pub(crate) fn components(path: &str) -> Result<Vec<&str>, Error> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::InvalidPath {
                    path: path.to_owned(),
                    reason: "'..' is not allowed",
                })
            }
            c if c.chars().any(|ch| ch.is_control() || ch == '\\') => {
                return Err(Error::InvalidPath {
                    path: path.to_owned(),
                    reason: "control characters or '\\' in a name",
                })
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A deterministic volume serial (reproducible images), mixed from the label, the size and
/// the image path, so that two data disks made for different jobs differ.
pub(super) fn volume_id(label: &[u8; 11], size: u64, path: &std::path::Path) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u32 = 0x811c_9dc5;
    let path = path.as_os_str().as_bytes();
    for b in label.iter().chain(size.to_le_bytes().iter()).chain(path) {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_timestamps() {
        // 2024-02-29 13:45:58 -> date (44 << 9) | (2 << 5) | 29, time (13 << 11) | (45 << 5) | 29
        let date = (44 << 9) | (2 << 5) | 29;
        let time = (13 << 11) | (45 << 5) | 29;
        assert_eq!(unix_time((date, time)), 1_709_214_358);
        assert_eq!(unix_time(((1 << 5) | 1, 0)), 315_532_800);
    }
}
