//! Raw images: the file (or block device) is the disk. Holes stay holes: a new image is a
//! sparse file, and writes of zeros to never-written areas of a new image are skipped.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{is_zero, Access, Backend, ContainerInfo, ImageFormat};
use crate::Error;

/// Granularity of the "never written" tracking for new images.
const CHUNK: u64 = 64 * 1024;

#[derive(Debug)]
pub(crate) struct RawBackend {
    path: PathBuf,
    file: File,
    size: u64,
    writable: bool,
    /// For images we created in this session: chunks that were written with non-zero data.
    /// Everything else is known to read as zero, so zero writes there are skipped (no allocation).
    written: Option<HashSet<u64>>,
}

impl RawBackend {
    pub(crate) fn create(path: &Path, size: u64) -> Result<Self, Error> {
        let file = crate::container::create_file(path)?;
        file.set_len(size)
            .map_err(|e| Error::io("set the size of", path, e))?;
        Ok(RawBackend {
            path: path.to_owned(),
            file,
            size,
            writable: true,
            written: Some(HashSet::new()),
        })
    }

    pub(crate) fn open(path: &Path, mut file: File, access: Access) -> Result<Self, Error> {
        // Seek to the end works for regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("measure", path, e))?;
        Ok(RawBackend {
            path: path.to_owned(),
            file,
            size,
            writable: access == Access::ReadWrite,
            written: None,
        })
    }
}

impl Backend for RawBackend {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            }
            .into_io());
        }
        if let Some(written) = &mut self.written {
            let len = u64::try_from(buf.len()).map_err(io::Error::other)?;
            let first = offset / CHUNK;
            let last = (offset + len.max(1) - 1) / CHUNK;
            if is_zero(buf) {
                if (first..=last).all(|c| !written.contains(&c)) {
                    return Ok(());
                }
            } else {
                written.extend(first..=last);
            }
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush_meta(&mut self) -> io::Result<()> {
        // Nothing is buffered here; durability (fsync) is the caller's choice, as with cp.
        Ok(())
    }

    fn reads_as_zero(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let Some(written) = &self.written else {
            return Ok(false);
        };
        let last = (offset + len.max(1) - 1) / CHUNK;
        Ok((offset / CHUNK..=last).all(|c| !written.contains(&c)))
    }

    fn info(&self) -> ContainerInfo {
        ContainerInfo {
            format: ImageFormat::Raw,
            subformat: "raw".to_owned(),
            virtual_size: self.size,
            files: vec![self.path.clone()],
            backing_chain: Vec::new(),
        }
    }
}
