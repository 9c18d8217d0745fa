//! The sparse extent header (or, for streamOptimized extents, the footer that replaces it):
//! every field checked before it sizes an allocation or an offset.

use std::fs::File;
use std::path::Path;

use super::{read_padded, FLAG_COMPRESSED, GD_AT_END, MAX_GD_BYTES, MAX_SECTORS, SECTOR};
use crate::bytes::{le16, le32, le64};
use crate::Error;

/// The checked header fields.
#[derive(Debug)]
pub(super) struct Header {
    pub(super) flags: u32,
    /// Capacity in sectors.
    pub(super) capacity: u64,
    /// Grain size in sectors.
    pub(super) grain: u64,
    desc_off: u64,
    desc_size: u64,
    /// Entries per grain table.
    pub(super) gtes: u32,
    /// Sector of the grain directory and of its redundant copy.
    pub(super) gd_offset: u64,
    pub(super) rgd_offset: u64,
}

fn bad(path: &Path, off: u64, detail: String) -> Error {
    Error::corrupt(path, "vmdk sparse header", off, detail)
}

impl Header {
    /// Read and check the header of `file` (`file_len` bytes) at `path`.
    pub(super) fn read(path: &Path, file: &File, file_len: u64) -> Result<Header, Error> {
        let mut h = [0u8; 512];
        if file_len < SECTOR {
            return Err(bad(
                path,
                0,
                format!("file is only {file_len} bytes, a header needs 512"),
            ));
        }
        read_padded(file, 0, &mut h).map_err(|e| Error::io("read", path, e))?;
        if &h[0..4] != b"KDMV" {
            return Err(bad(path, 0, "missing KDMV magic".into()));
        }
        let mut gd_offset = le64(&h, 56);
        let mut hdr = h;
        if gd_offset == GD_AT_END {
            // streamOptimized: the real header is the footer, 1024 bytes before the end.
            let at = file_len.checked_sub(1024).ok_or_else(|| {
                bad(
                    path,
                    0,
                    "grain directory at end but file has no footer".into(),
                )
            })?;
            read_padded(file, at, &mut hdr).map_err(|e| Error::io("read", path, e))?;
            if &hdr[0..4] != b"KDMV" {
                return Err(bad(path, at, "footer has no KDMV magic".into()));
            }
            gd_offset = le64(&hdr, 56);
            if gd_offset == GD_AT_END {
                return Err(bad(
                    path,
                    at + 56,
                    "footer does not say where the grain directory is".into(),
                ));
            }
        }
        let version = le32(&hdr, 4);
        if !(1..=3).contains(&version) {
            return Err(bad(path, 4, format!("version {version} is not 1, 2 or 3")));
        }
        let header = Header {
            flags: le32(&hdr, 8),
            capacity: le64(&hdr, 12),
            grain: le64(&hdr, 20),
            desc_off: le64(&hdr, 28),
            desc_size: le64(&hdr, 36),
            gtes: le32(&hdr, 44),
            gd_offset,
            rgd_offset: le64(&hdr, 48),
        };
        header.check(path, le16(&hdr, 77))?;
        Ok(header)
    }

    /// Check the sizes (and the compression algorithm `compress`).
    fn check(&self, path: &Path, compress: u16) -> Result<(), Error> {
        let (capacity, grain, gtes) = (self.capacity, self.grain, self.gtes);
        if capacity > MAX_SECTORS {
            return Err(bad(
                path,
                12,
                format!("capacity of {capacity} sectors exceeds the 64 TiB limit"),
            ));
        }
        if !grain.is_power_of_two() || grain > 4096 {
            return Err(bad(
                path,
                20,
                format!("grain size of {grain} sectors is not a power of two up to 4096"),
            ));
        }
        if gtes == 0 || gtes > 4096 {
            return Err(bad(
                path,
                44,
                format!("{gtes} entries per grain table is not 1..4096"),
            ));
        }
        if self.compressed() && compress != 1 {
            return Err(Error::Unsupported {
                path: path.to_owned(),
                what: "vmdk compression",
                detail: format!("algorithm {compress} (only 1, deflate, exists)"),
            });
        }
        let gd_bytes = self.gd_bytes();
        if gd_bytes > MAX_GD_BYTES {
            return Err(bad(
                path,
                12,
                format!("grain directory of {gd_bytes} bytes is too large"),
            ));
        }
        Ok(())
    }

    /// True for a compressed (streamOptimized) extent.
    pub(super) fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Bytes of the grain directory (checked against [`MAX_GD_BYTES`] by `read`).
    fn gd_bytes(&self) -> u64 {
        self.capacity.div_ceil(self.grain * u64::from(self.gtes)) * 4
    }

    /// The grain directory at `sector` (named by header field `field` in errors).
    pub(super) fn grain_dir(
        &self,
        path: &Path,
        file: &File,
        file_len: u64,
        sector: u64,
        field: u64,
    ) -> Result<Vec<u32>, Error> {
        let gd_bytes = self.gd_bytes();
        let off = sector
            .checked_mul(SECTOR)
            .filter(|o| o.checked_add(gd_bytes).is_some_and(|e| e <= file_len))
            .ok_or_else(|| {
                bad(path, field, format!("grain directory at sector {sector} lies past the end of the {file_len}-byte file"))
            })?;
        let mut raw = vec![0u8; usize::try_from(gd_bytes).unwrap_or(0)];
        read_padded(file, off, &mut raw).map_err(|e| Error::io("read", path, e))?;
        Ok(raw.chunks_exact(4).map(|c| le32(c, 0)).collect())
    }

    /// The embedded descriptor text and its byte offset, if there is one.
    pub(super) fn descriptor(
        &self,
        path: &Path,
        file: &File,
        file_len: u64,
    ) -> Result<Option<(String, u64)>, Error> {
        let (desc_off, desc_size) = (self.desc_off, self.desc_size);
        if desc_off == 0 || desc_size == 0 {
            return Ok(None);
        }
        let bytes = desc_size
            .checked_mul(SECTOR)
            .filter(|b| *b <= super::super::descriptor::MAX_DESCRIPTOR)
            .ok_or_else(|| {
                bad(
                    path,
                    36,
                    format!("embedded descriptor of {desc_size} sectors is too large"),
                )
            })?;
        let off = desc_off
            .checked_mul(SECTOR)
            .filter(|o| o.checked_add(bytes).is_some_and(|e| e <= file_len))
            .ok_or_else(|| {
                bad(
                    path,
                    28,
                    format!("embedded descriptor at sector {desc_off} lies past the end"),
                )
            })?;
        let mut raw = vec![0u8; usize::try_from(bytes).unwrap_or(0)];
        read_padded(file, off, &mut raw).map_err(|e| Error::io("read", path, e))?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        raw.truncate(end);
        Ok(Some((String::from_utf8_lossy(&raw).into_owned(), off)))
    }
}
