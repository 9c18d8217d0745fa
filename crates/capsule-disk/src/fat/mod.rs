//! The FAT volume layer: the one owner of FAT's on-disk structures.
//!
//! Everything here works on partition-relative offsets through [`VolumeRw`]; where the
//! partition lies on the disk is the business of [`crate::slice`] alone.
//!
//! - `format`: what formatting chooses, as `mkfs.vfat` would (FAT type by size, label).
//! - `boot`: the boot sector, parsed and checked once into the volume's layout.
//! - `table`: the FAT: entries in every copy, free-cluster search and allocation, and the
//!   checks that make chains from a hostile volume safe to follow.
//! - `dir`: raw 32-byte directory entries with their long names, read from the fixed root or a
//!   cluster chain; a file's first cluster comes from its raw entry.
//! - `chain`: file data along a cluster chain, read and written in large pieces.
//! - `fixup`: what we correct behind `fatfs` 0.3.6 (hidden sectors, the label entry, `.` and
//!   `..` of new directories, the FSInfo free count).
//!
//! `fatfs` still formats volumes and creates directory entries (long names, short-name tails,
//! growing a directory) and writes small files; everything read from a volume is parsed here.

mod boot;
mod chain;
mod dir;
mod fixup;
mod format;
mod table;
#[cfg(test)]
pub(crate) mod testutil;

use std::io;

pub(crate) use boot::BootInfo;
pub(crate) use chain::{ChainReader, ChainWriter, MAX_FILE_SIZE};
pub(crate) use dir::{DirLoc, RawEntry, Slot};
pub(crate) use fixup::{dot_entries, fs_info, hidden_sectors, label_entry};
pub(crate) use format::format_options;
pub use format::{fat_kind_for, label_bytes, FatKind, MIN_VOLUME};

/// Positional reads and writes at offsets relative to the start of the FAT volume.
pub(crate) trait VolumeRw {
    /// Fill `buf` from volume offset `off`.
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `buf` at volume offset `off`.
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()>;
}

/// What the FAT layer reports; the file API adds the image, the file and the disk offset.
#[derive(Debug)]
pub(crate) enum FatError {
    /// Reading or writing the volume failed.
    Io(io::Error),
    /// A structure breaks FAT's rules.
    Corrupt {
        /// Which structure ("FAT boot sector", "FAT cluster chain", "FAT directory").
        what: &'static str,
        /// Its volume offset.
        offset: u64,
        /// What exactly is wrong.
        detail: String,
    },
    /// No free cluster is left.
    Full,
    /// The file would pass FAT's 4 GiB - 1 limit.
    FileTooLarge,
}

impl From<io::Error> for FatError {
    fn from(e: io::Error) -> Self {
        FatError::Io(e)
    }
}
