//! The crate's one public error type.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while creating, opening, reading or writing a data disk.
///
/// Messages name the offending value and where it sits (image path, byte offset, path inside
/// the volume) so that an admin can act on them without a debugger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call on an image file failed.
    #[error("cannot {action} '{path}'")]
    Io {
        /// What we tried to do ("open", "read", "write", ...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The image's bytes break its format's rules.
    #[error("'{path}': corrupt {what} at byte {offset}: {detail}")]
    Corrupt {
        /// The image file (or descriptor) being parsed.
        path: PathBuf,
        /// Which structure ("vmdk header", "grain table", "qcow2 L2 table", "MBR", ...).
        what: &'static str,
        /// Byte offset of the structure in `path`.
        offset: u64,
        /// What exactly is wrong.
        detail: String,
    },
    /// The image is valid but uses a feature this crate does not implement.
    #[error("'{path}': unsupported {what}: {detail}")]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// Which feature area.
        what: &'static str,
        /// The value found, and a hint.
        detail: String,
    },
    /// The image names another file (backing file, parent, extent, external data file) that
    /// is not allowed or cannot be used.
    #[error("'{path}' names the {kind} '{name}': {why}")]
    Reference {
        /// The image naming it.
        path: PathBuf,
        /// What it names the file as.
        kind: crate::Reference,
        /// The name, as the image writes it.
        name: Box<str>,
        /// Why it is refused, with a hint.
        why: Box<str>,
    },
    /// No FAT partition (or FAT superfloppy) was found on the disk.
    #[error(
        "'{path}': no FAT partition found ({detail}); hint: choose one with a partition index"
    )]
    NoFatPartition {
        /// The image file.
        path: PathBuf,
        /// The partitions that were seen.
        detail: String,
    },
    /// A partition or volume extends past the end of the disk.
    #[error(
        "'{path}': partition {index} ends at byte {end} but the disk has only {disk_size} bytes"
    )]
    PartitionOutOfBounds {
        /// The image file.
        path: PathBuf,
        /// 1-based partition index.
        index: u32,
        /// End offset (exclusive) claimed by the partition table.
        end: u64,
        /// Virtual size of the disk.
        disk_size: u64,
    },
    /// A size or offset argument is unusable.
    #[error("invalid {what} {value}: {reason}")]
    InvalidArgument {
        /// Which argument ("size", "partition offset", "label", ...).
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is rejected, with a hint.
        reason: String,
    },
    /// A path inside the FAT volume is malformed.
    #[error("invalid path '{path}' in the data disk: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path inside the FAT volume does not exist.
    #[error("'{path}' not found in the data disk")]
    NotFound {
        /// The path as given.
        path: String,
    },
    /// A file was expected but a directory was found, or the other way round.
    #[error("'{path}' in the data disk is {found}, expected {expected}")]
    WrongKind {
        /// The path as given.
        path: String,
        /// "a file" or "a directory".
        found: &'static str,
        /// "a file" or "a directory".
        expected: &'static str,
    },
    /// A bound that protects against hostile disks was hit.
    #[error("'{path}': {what} exceeds the limit of {limit}; the disk is corrupt or hostile")]
    LimitExceeded {
        /// Where (image path or path inside the volume).
        path: String,
        /// Which quantity.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The image was opened read-only (or is a read-only backing file) and a write was attempted.
    #[error("'{path}' is open read-only; hint: open it with Access::ReadWrite")]
    ReadOnly {
        /// The image file.
        path: PathBuf,
    },
    /// The FAT volume, or the storage holding the image, has no room left for a file being
    /// written. [`Error::is_volume_full`] tells callers this case without matching text.
    #[error("{}", full_message(image, path, *capacity, source.is_some()))]
    VolumeFull {
        /// The image file.
        image: PathBuf,
        /// The file being written, inside the volume.
        path: String,
        /// Bytes the FAT volume's data area holds.
        capacity: u64,
        /// `None` when the FAT volume itself is full; the refused write when the file system
        /// or device holding the image ran out of space (the volume may still have room).
        #[source]
        source: Option<io::Error>,
    },
    /// An operation on the FAT file system failed.
    #[error("FAT operation on '{path}' failed")]
    Fat {
        /// Path inside the volume.
        path: String,
        /// The error reported by the FAT layer.
        #[source]
        source: io::Error,
    },
    /// A tar archive being read or written is malformed or unusable.
    #[error("tar archive: {detail}")]
    Tar {
        /// What went wrong (entry name and reason).
        detail: String,
        /// The underlying error, if any.
        #[source]
        source: Option<io::Error>,
    },
}

/// The message of [`Error::VolumeFull`].
fn full_message(image: &Path, path: &str, capacity: u64, host: bool) -> String {
    let image = image.display();
    if host {
        format!(
            "no room to write '{path}' into data disk '{image}': the storage holding the image \
             is full; hint: free space there"
        )
    } else {
        format!(
            "data disk '{image}' is full: no room left for '{path}' in its FAT volume of {}; \
             hint: make the data disk larger",
            human_size(capacity)
        )
    }
}

/// `123.4 MiB` style sizes for messages (binary units).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {} ({bytes} bytes)", UNITS[unit])
}

/// True for an I/O error saying the storage has no room: a full file system (`ENOSPC`) or an
/// exhausted quota (`EDQUOT`). The one check every crate uses, so none forgets the quota.
#[must_use]
pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl Error {
    /// True if there was no room: the FAT volume is full ([`Error::VolumeFull`]), or the
    /// storage holding the image refused a write for lack of space.
    #[must_use]
    pub fn is_volume_full(&self) -> bool {
        match self {
            Error::VolumeFull { .. } => true,
            Error::Io { source, .. } | Error::Fat { source, .. } => is_storage_full(source),
            _ => false,
        }
    }

    /// This error as [`Error::VolumeFull`] for the file `path` when the storage under the
    /// image ran out of space; any other error unchanged.
    pub(crate) fn naming_full(self, image: &Path, path: &str, capacity: u64) -> Error {
        match self {
            Error::Io { source, .. } | Error::Fat { source, .. } if is_storage_full(&source) => {
                Error::VolumeFull {
                    image: image.to_owned(),
                    path: path.to_owned(),
                    capacity,
                    source: Some(source),
                }
            }
            other => other,
        }
    }

    /// Turn an `io::Error` into ours: container errors travel through `std::io` traits wrapped
    /// in `io::Error::other`, and are unwrapped here so the caller sees the precise variant.
    pub(crate) fn from_io(err: io::Error, wrap: impl FnOnce(io::Error) -> Error) -> Error {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = err.into_inner() {
                return match inner.downcast::<Error>() {
                    Ok(ours) => *ours,
                    Err(other) => wrap(io::Error::other(other)),
                };
            }
            // unreachable in practice: get_ref() was Some
            return wrap(io::Error::other("lost error"));
        }
        wrap(err)
    }

    /// Wrap ours into an `io::Error` so it can cross a `std::io` trait boundary.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::from_io(source, |source| Error::Io {
            action,
            path: path.into(),
            source,
        })
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        what: &'static str,
        offset: u64,
        detail: impl Into<String>,
    ) -> Error {
        Error::Corrupt {
            path: path.into(),
            what,
            offset,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_messages() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(2048), "2.0 KiB (2048 bytes)");
        assert_eq!(human_size(15 << 20), "15.0 MiB (15728640 bytes)");
        assert_eq!(human_size(3 << 30), "3.0 GiB (3221225472 bytes)");
    }

    /// Both ways a write finds no room, as the kernel reports them (Linux errno values).
    #[test]
    fn storage_full_is_enospc_or_edquot() {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        assert!(is_storage_full(&io::Error::from_raw_os_error(ENOSPC)));
        assert!(is_storage_full(&io::Error::from_raw_os_error(EDQUOT)));
        assert!(!is_storage_full(&io::Error::from_raw_os_error(5)));
    }

    /// The storage under the image running out of space (ENOSPC, EDQUOT) is a volume-full
    /// error too, worded for the host; other I/O errors are not.
    #[test]
    fn host_storage_full_is_volume_full() {
        let full = || io::Error::from(io::ErrorKind::StorageFull);
        let err = Error::Fat {
            path: "out.tar".into(),
            source: full(),
        };
        assert!(err.is_volume_full());
        let named = err.naming_full(Path::new("d.img"), "out.tar", 1 << 20);
        assert!(matches!(
            named,
            Error::VolumeFull {
                source: Some(_),
                ..
            }
        ));
        let msg = named.to_string();
        assert!(
            msg.contains("'out.tar'") && msg.contains("storage holding the image is full"),
            "{msg}"
        );
        let quota = Error::io("write", "d.img", io::ErrorKind::QuotaExceeded.into());
        assert!(quota.is_volume_full());
        let other = Error::io("write", "d.img", io::ErrorKind::PermissionDenied.into());
        assert!(!other.is_volume_full());
        let kept = other.naming_full(Path::new("d.img"), "x", 1);
        assert!(matches!(kept, Error::Io { .. }));
    }
}
