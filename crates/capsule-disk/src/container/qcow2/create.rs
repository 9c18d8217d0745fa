//! Creating a new, empty qcow2 v3 image.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{self, Header};
use super::Qcow2Backend;
use crate::Error;

impl Qcow2Backend {
    /// Create a new, empty qcow2 v3 image of `size` bytes with 64 KiB clusters.
    pub(crate) fn create(path: &Path, size: u64) -> Result<Self, Error> {
        if size > header::MAX_SIZE {
            return Err(Error::InvalidArgument {
                what: "size",
                value: size.to_string(),
                reason: "larger than the 64 TiB limit".to_owned(),
            });
        }
        let cluster_bits = 16u32;
        let cs = 1u64 << cluster_bits;
        let l1_size = size.div_ceil(cs * (cs / 8)).max(1);
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let h = Header {
            version: 3,
            cluster_bits,
            size,
            l1_size: u32::try_from(l1_size).map_err(|_| Error::InvalidArgument {
                what: "size",
                value: size.to_string(),
                reason: "too large".to_owned(),
            })?,
            l1_offset: 3 * cs,
            refcount_table_offset: cs,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            incompatible: 0,
            refcount_order: 4,
            backing_file: None,
            backing_format: None,
            zstd: false,
        };
        let file = crate::container::create_file(path)?;
        let io = |e| Error::io("write", path, e);
        let end = 3 + l1_clusters;
        file.write_all_at(&h.encode_v3(), 0).map_err(io)?;
        file.write_all_at(&(2 * cs).to_be_bytes(), cs).map_err(io)?;
        let block: Vec<u8> = (0..end).flat_map(|_| 1u16.to_be_bytes()).collect();
        file.write_all_at(&block, 2 * cs).map_err(io)?;
        file.set_len(end * cs).map_err(io)?;
        Ok(Qcow2Backend {
            path: path.to_owned(),
            file,
            file_len: end * cs,
            read_only: None,
            l1: vec![0; usize::try_from(l1_size).unwrap_or(0)],
            l1_dirty: false,
            h,
            l2: HashMap::new(),
            l2_order: VecDeque::new(),
            next_free: end * cs,
            new_clusters: Vec::new(),
            backing: None,
            inflated: None,
        })
    }
}
