//! Directory entries and volume paths: names, timestamps, first clusters.

use super::{DirEntryInfo, FatEntry};
use crate::Error;

/// Seconds since the epoch of a FAT timestamp (days-from-civil, Howard Hinnant's algorithm).
pub(super) fn unix_time(t: fatfs::DateTime) -> u64 {
    let (y, m, d) = (
        i64::from(t.date.year),
        i64::from(t.date.month),
        i64::from(t.date.day),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400
        + i64::from(t.time.hour) * 3600
        + i64::from(t.time.min) * 60
        + i64::from(t.time.sec);
    u64::try_from(secs).unwrap_or(0)
}

pub(super) fn info_of(e: &FatEntry<'_>) -> DirEntryInfo {
    DirEntryInfo {
        name: e.file_name(),
        is_dir: e.is_dir(),
        size: if e.is_dir() { 0 } else { e.len() },
        modified: unix_time(e.modified()),
    }
}

/// The first cluster of an entry. fatfs 0.3.6 (pinned with `=`) does not expose it, but its
/// `Debug` output prints the raw entry's `first_cluster_hi` and `first_cluster_lo` fields; the
/// unit test `first_cluster_is_read_from_debug` guards the format.
pub(super) fn first_cluster(e: &FatEntry<'_>) -> u32 {
    let text = format!("{e:?}");
    let field = |name: &str| -> u32 {
        text.split(name)
            .nth(1)
            .and_then(|rest| {
                rest.trim_start_matches([':', ' '])
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("first_cluster_hi") << 16) | field("first_cluster_lo")
}

/// Compare names as FAT does: case-insensitively.
pub(super) fn names_equal(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_uppercase)
        .eq(b.chars().flat_map(char::to_uppercase))
}

/// Split a volume path into components, rejecting `..` and control characters.
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

/// The raw 11-byte short name of an entry, from the same `Debug` output as [`first_cluster`]
/// (`name: [70, 73, ...]`).
pub(super) fn raw_short_name(e: &FatEntry<'_>) -> Option<[u8; 11]> {
    let text = format!("{e:?}");
    let list = text.split("name: [").nth(1)?.split(']').next()?;
    let mut out = [0u8; 11];
    let mut n = 0;
    for part in list.split(',') {
        *out.get_mut(n)? = part.trim().parse().ok()?;
        n += 1;
    }
    (n == 11).then_some(out)
}
