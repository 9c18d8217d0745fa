//! The data disk read and written in user space through `capsule-disk`: a block device
//! (`--device /dev/vdb`, no mount and no FAT driver needed in the guest) or an image file
//! (`--image`, raw/VMDK/qcow2 by magic; how the host tests run without a VM).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use capsule_disk::{Access, DataDisk};

use crate::source::DataSource;

/// A FAT data disk opened read-write.
#[derive(Debug)]
pub struct DiskSource {
    disk: DataDisk,
    what: String,
}

/// Open the FAT data disk on `path` (a block device or an image file) read-write.
pub fn open(path: &Path) -> Result<Box<dyn DataSource>> {
    let disk = DataDisk::open(path, Access::ReadWrite)
        .with_context(|| format!("cannot open the data disk {}", path.display()))?;
    // Not `disk.info()`: counting free clusters reads the whole FAT, which costs real time
    // under TCG and tells the log nothing it needs.
    let what = format!("{} (FAT in user space)", path.display());
    Ok(Box::new(DiskSource { disk, what }))
}

impl DataSource for DiskSource {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn open(&mut self, name: &str) -> Result<Option<Box<dyn Read + '_>>> {
        if self.disk.stat(name)?.is_none() {
            return Ok(None);
        }
        let reader = self
            .disk
            .open_file(name)
            .with_context(|| format!("cannot open {name}"))?;
        Ok(Some(Box::new(reader)))
    }

    fn put(&mut self, name: &str, data: &mut dyn Read) -> Result<u64> {
        self.disk
            .put_file(name, data)
            .with_context(|| format!("cannot write {name}"))
    }

    fn sync(&mut self) -> Result<()> {
        // capsule-disk keeps FAT and directory updates in its cache until finish, which writes
        // them in one pass; nothing names result.json on disk before that pass.
        Ok(())
    }

    fn free_bytes(&mut self) -> Option<u64> {
        self.disk.info().ok().map(|i| i.free)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.disk.finish().context("cannot flush the data disk")?;
        // The container may sit in the page cache; make it reach the device before poweroff.
        nix::unistd::sync();
        Ok(())
    }
}
