//! Options and result types of the [`DataDisk`](super::DataDisk) API.

use crate::container::{Access, ContainerInfo, ImageFormat};
use crate::fat::FatKind;
use crate::partition::{Partition, TableKind};

/// Options for [`DataDisk::create`](super::DataDisk::create).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    pub(crate) size: u64,
    pub(crate) format: ImageFormat,
    pub(crate) partition_offset: u64,
    pub(crate) label: String,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 64 * 1024 * 1024,
            format: ImageFormat::Raw,
            partition_offset: 1024 * 1024,
            label: "CONDORDATA".to_owned(),
        }
    }
}

impl CreateOptions {
    /// Defaults: 64 MiB, raw, partition at 1 MiB, label `CONDORDATA`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
    /// Virtual disk size in bytes (the partition runs to the end of it).
    #[must_use]
    pub fn size(mut self, size: u64) -> Self {
        self.size = size;
        self
    }
    /// Container format.
    #[must_use]
    pub fn format(mut self, format: ImageFormat) -> Self {
        self.format = format;
        self
    }
    /// Byte offset of the FAT partition (a multiple of 512; the 2009 plugin used 32256).
    #[must_use]
    pub fn partition_offset(mut self, offset: u64) -> Self {
        self.partition_offset = offset;
        self
    }
    /// Volume label (up to 11 characters, stored upper case in the boot sector).
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
}

/// Options for [`DataDisk::open_with`](super::DataDisk::open_with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    pub(crate) access: Access,
    pub(crate) format: Option<ImageFormat>,
    pub(crate) partition: Option<u32>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            access: Access::ReadOnly,
            format: None,
            partition: None,
        }
    }
}

impl OpenOptions {
    /// Defaults: read-only, format from content, first FAT partition.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
    /// Read-only or read-write.
    #[must_use]
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }
    /// Force the container format instead of detecting it.
    #[must_use]
    pub fn format(mut self, format: Option<ImageFormat>) -> Self {
        self.format = format;
        self
    }
    /// Use partition `index` (1-based) instead of the first FAT partition.
    #[must_use]
    pub fn partition(mut self, index: Option<u32>) -> Self {
        self.partition = index;
        self
    }
}

/// One directory entry, as returned by [`DataDisk::list`](super::DataDisk::list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntryInfo {
    /// Long name if present, else the 8.3 name.
    pub name: String,
    /// True for a directory.
    pub is_dir: bool,
    /// File size in bytes (0 for directories).
    pub size: u64,
    /// Last modification, seconds since the Unix epoch (FAT stores local time; read as UTC).
    pub modified: u64,
}

/// Summary of a data disk, for `vm-capsule disk info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Container format, files and backing chain.
    pub container: ContainerInfo,
    /// Partition table kind.
    pub table: TableKind,
    /// The FAT partition in use.
    pub partition: Partition,
    /// FAT12/16/32.
    pub fat: FatKind,
    /// Boot-sector volume label, trimmed.
    pub label: String,
    /// Volume serial number.
    pub volume_id: u32,
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// Data area capacity in bytes.
    pub capacity: u64,
    /// Free bytes.
    pub free: u64,
}
