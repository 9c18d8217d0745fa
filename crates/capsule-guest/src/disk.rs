//! The data disk read and written in user space through `capsule-disk` (block device or image).

use std::path::Path;

use anyhow::Result;

use crate::source::DataSource;

/// Open the FAT data disk on `path` (a block device or an image file) read-write.
pub fn open(path: &Path) -> Result<Box<dyn DataSource>> {
    anyhow::bail!("{}: FAT in user space is not wired up yet", path.display())
}
