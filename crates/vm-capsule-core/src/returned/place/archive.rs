//! Reading `output.tar` from the guest with every length bounded.
//!
//! The `tar` crate reads GNU long names and PAX records whole into memory, however long the
//! archive says they are (a 50 MiB long name once cost finalize 1.6 GiB of RSS). So entries are
//! read raw, one header at a time, and the long-name and PAX members are handled here with a
//! bound on what is read; the crate still does the block arithmetic (checked) and skips data
//! not read. One parser decides where each entry starts: a PAX `size` record, which would
//! move the next header for a reader that honours it but not for raw reading, makes the
//! archive refused as a whole instead of being read two ways.

use std::io::{self, Read};

use capsule_manifest::{PathError, RelPath, MAX_PATH_BYTES};
use tar::EntryType;

/// Largest PAX extended header read, in bytes.
pub const MAX_PAX_BYTES: u64 = 64 * 1024;
/// Longest GNU long name read, in bytes (a path, its NUL, a little slack).
const MAX_LONG_NAME_BYTES: u64 = MAX_PATH_BYTES as u64 + 16;
/// Longest archive name quoted in a message.
const MAX_QUOTED: usize = 200;

/// One member of the archive, as placement sees it.
pub enum Member<'e> {
    /// A regular file with exactly `size` bytes to read from `data`.
    File {
        /// Its path.
        path: RelPath,
        /// Permission bits (`0o777` at most).
        mode: u32,
        /// Bytes the header promises.
        size: u64,
        /// The data (short if the archive is truncated).
        data: &'e mut dyn Read,
    },
    /// A directory.
    Dir {
        /// Its path.
        path: RelPath,
    },
    /// Something never placed (a link, a device, a bad name...).
    Refused {
        /// The name as the archive spells it, quoted and bounded for a message.
        name: String,
        /// Why.
        reason: MemberRefusal,
    },
}

/// Why one member of the archive is never placed; the guest's doing, like everything in the
/// archive. The message follows the member's name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberRefusal {
    /// Its GNU long name is longer than any path placed.
    #[error("its long name is {size} bytes, over the {MAX_PATH_BYTES}-byte path limit")]
    LongNameTooLong {
        /// The long name's size, as its header says.
        size: u64,
    },
    /// Its GNU long name could not be read.
    #[error("its long name cannot be read: {0}")]
    LongNameUnreadable(io::Error),
    /// Its PAX header is larger than this reader reads.
    #[error("its PAX header is {size} bytes, over the {MAX_PAX_BYTES}-byte limit")]
    PaxTooLarge {
        /// The PAX header's size, as its header says.
        size: u64,
    },
    /// Its PAX header has a record that does not parse.
    #[error("its PAX header is malformed")]
    PaxMalformed,
    /// Its PAX header has no `path` record.
    #[error("its PAX header has no path")]
    PaxNoPath,
    /// Its name is not a clean relative path.
    #[error("{0}")]
    BadName(PathError),
    /// Not a regular file or directory (links are never placed).
    #[error("it is a {0}, not a regular file or directory")]
    Special(SpecialKind),
}

/// A kind of archive entry that is never placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecialKind {
    /// A symbolic link.
    Symlink,
    /// A hard link.
    HardLink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO.
    Fifo,
    /// A GNU sparse file.
    Sparse,
    /// Any other entry type.
    Other,
}

impl SpecialKind {
    fn of(kind: EntryType) -> SpecialKind {
        match kind {
            EntryType::Symlink => SpecialKind::Symlink,
            EntryType::Link => SpecialKind::HardLink,
            EntryType::Char => SpecialKind::CharDevice,
            EntryType::Block => SpecialKind::BlockDevice,
            EntryType::Fifo => SpecialKind::Fifo,
            EntryType::GNUSparse => SpecialKind::Sparse,
            _ => SpecialKind::Other,
        }
    }
}

impl std::fmt::Display for SpecialKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpecialKind::Symlink => "symbolic link",
            SpecialKind::HardLink => "hard link",
            SpecialKind::CharDevice => "character device",
            SpecialKind::BlockDevice => "block device",
            SpecialKind::Fifo => "FIFO",
            SpecialKind::Sparse => "sparse file",
            SpecialKind::Other => "special entry",
        })
    }
}

impl std::fmt::Debug for Member<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::File {
                path, mode, size, ..
            } => {
                write!(f, "File({path}, {mode:o}, {size} bytes)")
            }
            Member::Dir { path } => write!(f, "Dir({path})"),
            Member::Refused { name, reason } => write!(f, "Refused({name}: {reason})"),
        }
    }
}

/// Why the archive as a whole cannot be read on: always the guest's doing (it wrote the
/// archive).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The archive's structure is damaged (bad checksum, truncated header, size overflow).
    #[error("output.tar is damaged: {0}")]
    Damaged(#[source] io::Error),
    /// A construct this reader refuses rather than risk reading it differently.
    #[error("output.tar is refused: {0}")]
    Unsupported(Unsupported),
}

/// A construct that would let two tar readers disagree on where entries start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsupported {
    /// Two name headers in a row.
    #[error("two long-name or PAX members describe the same entry")]
    TwoNameHeaders,
    /// A PAX `size` record, which moves the next header for readers that honour it.
    #[error("a PAX size record (the guest agent never writes one)")]
    PaxSize,
    /// A name header at the end of the archive.
    #[error("a long-name or PAX member describes no entry")]
    DanglingNameHeader,
}

/// Call `visit` for each member of `archive`, in order. Stops at the end of the archive, at
/// the first structural error, or when `visit` returns false.
///
/// # Errors
/// [`ArchiveError`] when the archive cannot be read on; members visited so far stand.
pub fn for_each_member<R: Read>(
    archive: R,
    visit: &mut dyn FnMut(Member<'_>) -> bool,
) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(archive);
    let entries = archive.entries().map_err(ArchiveError::Damaged)?.raw(true);
    let mut long_name: Option<Result<Vec<u8>, MemberRefusal>> = None;
    for entry in entries {
        let mut entry = entry.map_err(ArchiveError::Damaged)?;
        let kind = entry.header().entry_type();
        let size = entry.header().size().map_err(ArchiveError::Damaged)?;
        match kind {
            EntryType::GNULongName | EntryType::XHeader => {
                if long_name.is_some() {
                    return Err(ArchiveError::Unsupported(Unsupported::TwoNameHeaders));
                }
                long_name = Some(if kind == EntryType::XHeader {
                    pax_path(&mut entry, size)?
                } else {
                    read_long_name(&mut entry, size)
                });
                continue;
            }
            // Link targets are never used (links are not placed); their data is skipped.
            EntryType::GNULongLink | EntryType::XGlobalHeader => continue,
            _ => {}
        }
        let raw_name = match long_name.take() {
            Some(Ok(name)) => name,
            Some(Err(reason)) => {
                let name = quote(&entry.header().path_bytes());
                if !visit(Member::Refused { name, reason }) {
                    return Ok(());
                }
                continue;
            }
            None => entry.header().path_bytes().into_owned(),
        };
        let name = quote(&raw_name);
        let path = match RelPath::from_archive_name(&raw_name) {
            Ok(Some(path)) => path,
            Ok(None) => continue, // the archive's own root, `./`
            Err(e) => {
                if !visit(Member::Refused {
                    name,
                    reason: MemberRefusal::BadName(e),
                }) {
                    return Ok(());
                }
                continue;
            }
        };
        let member = match kind {
            EntryType::Regular | EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
                Member::File {
                    path,
                    mode,
                    size,
                    data: &mut entry,
                }
            }
            EntryType::Directory => Member::Dir { path },
            other => Member::Refused {
                name,
                reason: MemberRefusal::Special(SpecialKind::of(other)),
            },
        };
        if !visit(member) {
            return Ok(());
        }
    }
    if long_name.is_some() {
        return Err(ArchiveError::Unsupported(Unsupported::DanglingNameHeader));
    }
    Ok(())
}

/// A GNU long name, read only up to its bound.
fn read_long_name(entry: &mut impl Read, size: u64) -> Result<Vec<u8>, MemberRefusal> {
    if size > MAX_LONG_NAME_BYTES {
        return Err(MemberRefusal::LongNameTooLong { size });
    }
    let mut name = Vec::new();
    entry
        .take(MAX_LONG_NAME_BYTES)
        .read_to_end(&mut name)
        .map_err(MemberRefusal::LongNameUnreadable)?;
    while name.last() == Some(&0) {
        name.pop();
    }
    Ok(name)
}

/// The `path` of a PAX extended header. A `size` record is refused for the whole archive
/// (see the module docs); other records are ignored.
fn pax_path(
    entry: &mut impl Read,
    size: u64,
) -> Result<Result<Vec<u8>, MemberRefusal>, ArchiveError> {
    if size > MAX_PAX_BYTES {
        return Ok(Err(MemberRefusal::PaxTooLarge { size }));
    }
    let mut data = Vec::new();
    entry
        .take(MAX_PAX_BYTES)
        .read_to_end(&mut data)
        .map_err(ArchiveError::Damaged)?;
    let mut path = None;
    for record in tar::PaxExtensions::new(&data) {
        let Ok(record) = record else {
            return Ok(Err(MemberRefusal::PaxMalformed));
        };
        match record.key_bytes() {
            b"size" => return Err(ArchiveError::Unsupported(Unsupported::PaxSize)),
            b"path" => path = Some(record.value_bytes().to_vec()),
            _ => {}
        }
    }
    Ok(path.ok_or(MemberRefusal::PaxNoPath))
}

/// An archive name for a message: lossy UTF-8, control and format characters escaped, bounded.
pub fn quote(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(name.get(..MAX_QUOTED * 4).unwrap_or(name));
    let mut out = String::from("\"");
    for c in text.chars().take(MAX_QUOTED) {
        if crate::text::is_safe_char(c) && c != '"' && c != '\\' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    if text.chars().count() > MAX_QUOTED || name.len() > MAX_QUOTED * 4 {
        out.push_str("...");
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A raw member: header with `name` (first 100 bytes), type and data.
    pub(crate) fn member(name: &[u8], kind: EntryType, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(kind);
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn collect(bytes: &[u8]) -> (Vec<String>, Result<(), ArchiveError>) {
        let mut seen = Vec::new();
        let r = for_each_member(bytes, &mut |m| {
            seen.push(match m {
                Member::File {
                    path, size, data, ..
                } => {
                    let mut v = Vec::new();
                    data.read_to_end(&mut v).unwrap();
                    format!("file {path} {size} {}", String::from_utf8_lossy(&v))
                }
                Member::Dir { path } => format!("dir {path}"),
                Member::Refused { name, reason } => format!("refused {name}: {reason}"),
            });
            true
        });
        (seen, r)
    }

    #[test]
    fn long_names_within_bounds_are_used_and_over_bounds_refused() {
        let long = "d/".repeat(100) + "f";
        let mut tar = member(b"././@LongLink", EntryType::GNULongName, long.as_bytes());
        tar.extend(member(b"ignored", EntryType::Regular, b"x"));
        let huge = vec![b'a'; 1 << 20];
        tar.extend(member(b"././@LongLink", EntryType::GNULongName, &huge));
        tar.extend(member(b"victim", EntryType::Regular, b"y"));
        tar.extend(member(b"after", EntryType::Regular, b"z"));
        let (seen, r) = collect(&tar);
        r.unwrap();
        assert_eq!(seen[0], format!("file {long} 1 x"));
        assert!(seen[1].starts_with("refused \"victim\": its long name is 1048576 bytes"));
        assert_eq!(seen[2], "file after 1 z");
    }

    #[test]
    fn pax_size_records_refuse_the_archive_and_paths_are_used() {
        let record = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            if (len + len.to_string().len() - 1).to_string().len() != len.to_string().len() {
                len += 1;
            }
            format!("{}{body}", len + len.to_string().len() - 1)
        };
        let mut tar = member(b"pax", EntryType::XHeader, record("path", "p/q").as_bytes());
        tar.extend(member(b"x", EntryType::Regular, b"1"));
        let (seen, r) = collect(&tar);
        r.unwrap();
        assert_eq!(seen, vec!["file p/q 1 1"]);
        let mut tar = member(b"pax", EntryType::XHeader, record("size", "9").as_bytes());
        tar.extend(member(b"x", EntryType::Regular, b"1"));
        assert!(matches!(collect(&tar).1, Err(ArchiveError::Unsupported(_))));
    }

    #[test]
    fn links_devices_and_bad_names_are_refused_by_name() {
        let mut tar = member(b"l", EntryType::Symlink, b"");
        tar.extend(member(b"f", EntryType::Fifo, b""));
        tar.extend(member(b"../up", EntryType::Regular, b"u"));
        tar.extend(member(b"./", EntryType::Directory, b""));
        tar.extend(member(b"ok/", EntryType::Directory, b""));
        let (seen, r) = collect(&tar);
        r.unwrap();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen[0].contains("symbolic link"));
        assert!(seen[1].contains("FIFO"));
        assert!(seen[2].contains("'..'"));
        assert_eq!(seen[3], "dir ok");
    }

    #[test]
    fn refusals_read_as_they_always_have() {
        let cases = [
            (
                MemberRefusal::LongNameTooLong { size: 9999 }.to_string(),
                "its long name is 9999 bytes, over the 4096-byte path limit",
            ),
            (
                MemberRefusal::LongNameUnreadable(io::Error::other("gone")).to_string(),
                "its long name cannot be read: gone",
            ),
            (
                MemberRefusal::PaxTooLarge { size: 70000 }.to_string(),
                "its PAX header is 70000 bytes, over the 65536-byte limit",
            ),
            (
                MemberRefusal::PaxMalformed.to_string(),
                "its PAX header is malformed",
            ),
            (
                MemberRefusal::PaxNoPath.to_string(),
                "its PAX header has no path",
            ),
            (
                MemberRefusal::BadName(PathError::Absolute).to_string(),
                "the path is absolute; it must be relative to the work dir",
            ),
            (
                MemberRefusal::Special(SpecialKind::of(EntryType::Char)).to_string(),
                "it is a character device, not a regular file or directory",
            ),
            (
                ArchiveError::Unsupported(Unsupported::TwoNameHeaders).to_string(),
                "output.tar is refused: two long-name or PAX members describe the same entry",
            ),
            (
                ArchiveError::Unsupported(Unsupported::PaxSize).to_string(),
                "output.tar is refused: a PAX size record (the guest agent never writes one)",
            ),
            (
                ArchiveError::Unsupported(Unsupported::DanglingNameHeader).to_string(),
                "output.tar is refused: a long-name or PAX member describes no entry",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn quoting_escapes_bidi_and_line_separators() {
        assert_eq!(
            quote("a\u{202e}b\u{2028}c\n".as_bytes()),
            "\"a\\u{202e}b\\u{2028}c\\n\""
        );
        assert!(quote(&[b'x'; 1000]).ends_with("...\""));
    }
}
