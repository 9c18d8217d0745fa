//! Test fakes for the FAT layer: a volume held in memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;

use super::{format_options, BootInfo, VolumeRw};

/// A fake volume: the bytes of a FAT volume in memory (stands in for the cached container).
#[derive(Debug, Clone)]
pub(crate) struct MemVolume(pub(crate) Vec<u8>);

impl VolumeRw for MemVolume {
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = usize::try_from(off).map_err(io::Error::other)?;
        let src = self
            .0
            .get(at..at + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        let at = usize::try_from(off).map_err(io::Error::other)?;
        self.0
            .get_mut(at..at + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?
            .copy_from_slice(buf);
        Ok(())
    }
}

/// A volume of `bytes` formatted by `fatfs` as `DataDisk::create` would, with its layout.
/// Sizes of 32 MiB and more are formatted as FAT32 with 512-byte clusters (to stay small).
pub(crate) fn fake_volume(bytes: u64) -> (BootInfo, MemVolume) {
    let mut opts = format_options(bytes, *b"TEST       ", 7).unwrap();
    if bytes >= 32 << 20 {
        opts = opts.fat_type(fatfs::FatType::Fat32).bytes_per_cluster(512);
    }
    let mut disk = io::Cursor::new(vec![0u8; usize::try_from(bytes).unwrap()]);
    fatfs::format_volume(&mut disk, opts).expect("format");
    let v = MemVolume(disk.into_inner());
    let mut boot = [0u8; 512];
    boot.copy_from_slice(&v.0[..512]);
    let info = BootInfo::parse(&boot, bytes).expect("parse the boot sector");
    (info, v)
}
