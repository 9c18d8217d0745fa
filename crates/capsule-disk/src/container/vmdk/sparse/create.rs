//! Creating a new monolithicSparse extent (qemu-img's layout).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::DEFAULT_GRAIN_SECTORS;
use super::{
    dir_bytes, SparseExtent, DEFAULT_GTES, DESCRIPTOR_SECTORS, FLAG_RGD, MAX_SECTORS, SECTOR,
};
use crate::Error;

impl SparseExtent {
    /// Create a new monolithicSparse file laid out as qemu-img does: header, embedded
    /// descriptor, redundant and primary grain directories with preallocated (all-zero, so
    /// sparse) grain tables, then grains. Nothing proportional to the capacity is written.
    pub(crate) fn create(path: &Path, bytes: u64, cid: u32) -> Result<SparseExtent, Error> {
        let invalid = |reason: String| Error::InvalidArgument {
            what: "size",
            value: bytes.to_string(),
            reason,
        };
        if !bytes.is_multiple_of(SECTOR) {
            return Err(invalid(
                "a vmdk size must be a multiple of 512 bytes".into(),
            ));
        }
        let sectors = bytes / SECTOR;
        if sectors > MAX_SECTORS {
            return Err(invalid("larger than the 64 TiB limit".into()));
        }
        let grain = DEFAULT_GRAIN_SECTORS;
        let gtes = DEFAULT_GTES;
        let gd_entries = sectors.div_ceil(grain * u64::from(gtes));
        let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
        let gt_sectors = (u64::from(gtes) * 4).div_ceil(SECTOR);
        let rgd_offset = 1 + DESCRIPTOR_SECTORS;
        let gd_offset = rgd_offset + gd_sectors + gd_entries * gt_sectors;
        let end = gd_offset + gd_sectors + gd_entries * gt_sectors;
        let overhead = end.div_ceil(grain) * grain;
        let to_u32 = |v: u64| {
            u32::try_from(v)
                .map_err(|_| invalid("too large for a sparse vmdk (2 TiB of tables)".into()))
        };
        let mut gd = Vec::new();
        let mut rgd = Vec::new();
        for i in 0..gd_entries {
            rgd.push(to_u32(rgd_offset + gd_sectors + i * gt_sectors)?);
            gd.push(to_u32(gd_offset + gd_sectors + i * gt_sectors)?);
        }
        let mut h = [0u8; 512];
        h[0..4].copy_from_slice(b"KDMV");
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..12].copy_from_slice(&(1 | FLAG_RGD).to_le_bytes());
        h[12..20].copy_from_slice(&sectors.to_le_bytes());
        h[20..28].copy_from_slice(&grain.to_le_bytes());
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
        h[44..48].copy_from_slice(&gtes.to_le_bytes());
        h[48..56].copy_from_slice(&rgd_offset.to_le_bytes());
        h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
        h[64..72].copy_from_slice(&overhead.to_le_bytes());
        h[73..77].copy_from_slice(b"\n \r\n");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let desc = super::super::descriptor::Descriptor::render_sparse(cid, sectors, &name);
        let file = crate::container::create_file(path)?;
        let io = |e| Error::io("write", path, e);
        file.write_all_at(&h, 0).map_err(io)?;
        file.write_all_at(desc.as_bytes(), SECTOR).map_err(io)?;
        file.write_all_at(&dir_bytes(&rgd), rgd_offset * SECTOR)
            .map_err(io)?;
        file.write_all_at(&dir_bytes(&gd), gd_offset * SECTOR)
            .map_err(io)?;
        file.set_len(overhead * SECTOR).map_err(io)?;
        Ok(SparseExtent {
            path: path.to_owned(),
            file,
            file_len: overhead * SECTOR,
            writable: true,
            capacity_sectors: sectors,
            grain_bytes: grain * SECTOR,
            gtes,
            flags: 1 | FLAG_RGD,
            gd,
            rgd: Some(rgd),
            gd_offset,
            rgd_offset,
            gd_dirty: false,
            gts: HashMap::new(),
            next_free: overhead * SECTOR,
            inflated: None,
            descriptor: Some((desc, SECTOR)),
        })
    }
}
