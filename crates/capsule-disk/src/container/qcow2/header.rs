//! The qcow2 header (v2 and v3) and its extensions: parsed and checked before any field is
//! trusted; written for new images.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::bytes::{be32, be64};
use crate::Error;

/// Largest virtual disk we accept: 64 TiB.
pub(crate) const MAX_SIZE: u64 = 1 << 46;
/// Largest L1 table we load: 4 MiB covers 64 TiB at 64 KiB clusters (smaller clusters need
/// more; such images are refused rather than allowed to size a big allocation).
const MAX_L1_BYTES: u64 = 4 * 1024 * 1024;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// The header extension naming the external data file.
const EXT_DATA_FILE: u32 = 0x4441_5441;
const MAX_EXTENSIONS: usize = 64;

/// Incompatible feature bits.
pub(crate) const INCOMPAT_DIRTY: u64 = 1;
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) cluster_bits: u32,
    pub(crate) size: u64,
    pub(crate) l1_size: u32,
    pub(crate) l1_offset: u64,
    pub(crate) refcount_table_offset: u64,
    pub(crate) refcount_table_clusters: u32,
    pub(crate) nb_snapshots: u32,
    pub(crate) incompatible: u64,
    pub(crate) refcount_order: u32,
    pub(crate) backing_file: Option<String>,
    pub(crate) backing_format: Option<String>,
    /// zstd instead of zlib for compressed clusters.
    pub(crate) zstd: bool,
}

impl Header {
    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries per L2 table.
    pub(crate) fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Parse and check the header of `file` (`file_len` bytes).
    pub(crate) fn read(path: &Path, file: &File, file_len: u64) -> Result<Header, Error> {
        let bad = |off: u64, d: String| Error::corrupt(path, "qcow2 header", off, d);
        let h = read_head(path, file)?;
        let version = be32(&h, 4);
        let backing_offset = be64(&h, 8);
        let backing_size = be32(&h, 16);
        let cluster_bits = be32(&h, 20);
        let size = be64(&h, 24);
        let crypt = be32(&h, 32);
        let l1_size = be32(&h, 36);
        let l1_offset = be64(&h, 40);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(20, format!("cluster_bits {cluster_bits} is not 9..21")));
        }
        let cs = 1u64 << cluster_bits;
        if size > MAX_SIZE {
            return Err(bad(
                24,
                format!("virtual size {size} exceeds the 64 TiB limit"),
            ));
        }
        if crypt != 0 {
            return Err(Error::Unsupported {
                path: path.to_owned(),
                what: "qcow2 encryption",
                detail: format!("method {crypt}"),
            });
        }
        let need_l1 = size.div_ceil(cs * (cs / 8));
        if u64::from(l1_size) < need_l1 || u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(bad(
                36,
                format!("L1 size {l1_size} does not fit a {size}-byte disk (needs {need_l1})"),
            ));
        }
        let in_file = |off: u64, len: u64| {
            off.is_multiple_of(cs) && off.checked_add(len).is_some_and(|e| e <= file_len.max(cs))
        };
        if !in_file(l1_offset, u64::from(l1_size) * 8) && l1_size != 0 {
            return Err(bad(40, format!("L1 table at {l1_offset} is unaligned or past the end of the {file_len}-byte file")));
        }
        let v3 = V3Fields::read(&h, version, cs, &bad)?;
        let ext = extensions(&h, v3.header_len, &bad)?;
        check_incompatible(path, v3.incompatible, ext.data_file.as_deref())?;
        Ok(Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            refcount_table_offset: be64(&h, 48),
            refcount_table_clusters: be32(&h, 56),
            nb_snapshots: be32(&h, 60),
            incompatible: v3.incompatible,
            refcount_order: v3.refcount_order,
            backing_file: backing_name(file, backing_offset, backing_size, &bad)?,
            backing_format: ext.backing_format,
            zstd: v3.compression == 1,
        })
    }

    /// The 104-byte v3 header for a new image with no backing file.
    pub(crate) fn encode_v3(&self) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[0..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        h[24..32].copy_from_slice(&self.size.to_be_bytes());
        h[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        h[40..48].copy_from_slice(&self.l1_offset.to_be_bytes());
        h[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        h[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        h[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        // bytes 104..112: end-of-extensions marker (type 0, length 0)
        h
    }
}

/// The first 4 KiB of the file (a header with its extensions), its magic and version checked.
fn read_head(path: &Path, file: &File) -> Result<Vec<u8>, Error> {
    let bad = |off: u64, d: String| Error::corrupt(path, "qcow2 header", off, d);
    let mut h = vec![0u8; 4096];
    let got = file
        .read_at(&mut h, 0)
        .map_err(|e| Error::io("read", path, e))?;
    if got < 72 {
        return Err(bad(
            0,
            format!("file is only {got} bytes, a header needs 72"),
        ));
    }
    h.truncate(got);
    if h.get(0..4) != Some(b"QFI\xfb".as_slice()) {
        return Err(bad(0, "missing QFI\\xfb magic".into()));
    }
    let version = be32(&h, 4);
    if !(2..=3).contains(&version) {
        return Err(Error::Unsupported {
            path: path.to_owned(),
            what: "qcow2 version",
            detail: format!("{version} (2 and 3 are supported)"),
        });
    }
    Ok(h)
}

/// The fields version 3 added (with the values version 2 implies).
struct V3Fields {
    incompatible: u64,
    refcount_order: u32,
    header_len: u64,
    compression: u8,
}

impl V3Fields {
    fn read(
        h: &[u8],
        version: u32,
        cs: u64,
        bad: &dyn Fn(u64, String) -> Error,
    ) -> Result<V3Fields, Error> {
        let v3 = if version == 3 {
            if h.len() < 104 {
                return Err(bad(0, "v3 header shorter than 104 bytes".into()));
            }
            let hl = be32(h, 100);
            let ct = if hl > 104 {
                h.get(104).copied().unwrap_or(0)
            } else {
                0
            };
            V3Fields {
                incompatible: be64(h, 72),
                refcount_order: be32(h, 96),
                header_len: u64::from(hl),
                compression: ct,
            }
        } else {
            V3Fields {
                incompatible: 0,
                refcount_order: 4,
                header_len: 72,
                compression: 0,
            }
        };
        if v3.header_len < 72 || v3.header_len > cs.min(4096) {
            return Err(bad(
                100,
                format!("header length {} is out of range", v3.header_len),
            ));
        }
        if v3.refcount_order > 6 {
            return Err(bad(
                96,
                format!("refcount order {} is above 6", v3.refcount_order),
            ));
        }
        Ok(v3)
    }
}

/// Refuse incompatible features we do not implement, naming them. An external data file
/// (its name from the header extension, `data_file`) is named: QEMU would open it.
fn check_incompatible(
    path: &Path,
    incompatible: u64,
    data_file: Option<&str>,
) -> Result<(), Error> {
    let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION_TYPE;
    if incompatible & !known == 0 {
        return Ok(());
    }
    if incompatible & INCOMPAT_EXTERNAL_DATA != 0 {
        return Err(Error::Reference {
            path: path.to_owned(),
            kind: crate::Reference::ExternalDataFile,
            name: data_file.unwrap_or("(none named)").into(),
            why: "the image's data lives in another file, which is not read; hint: qemu-img convert it to a plain qcow2".into(),
        });
    }
    let what = if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
        "extended L2 entries (subclusters)"
    } else {
        "unknown"
    };
    Err(Error::Unsupported {
        path: path.to_owned(),
        what: "qcow2 incompatible feature",
        detail: format!(
            "{what} (bits 0x{incompatible:x}); hint: qemu-img convert to a plain qcow2"
        ),
    })
}

/// What the header extensions say about other files.
struct Extensions {
    backing_format: Option<String>,
    data_file: Option<String>,
}

/// The backing format and external data file named by the header extensions that follow the
/// `header_len`-byte header.
fn extensions(
    h: &[u8],
    header_len: u64,
    bad: &dyn Fn(u64, String) -> Error,
) -> Result<Extensions, Error> {
    let mut backing_format = None;
    let mut data_file = None;
    let mut at = usize::try_from(header_len).unwrap_or(72);
    for _ in 0..MAX_EXTENSIONS {
        let (Some(kind), Some(len)) = (
            h.get(at..at + 4).map(|_| be32(h, at)),
            h.get(at + 4..at + 8).map(|_| be32(h, at + 4)),
        ) else {
            break;
        };
        if kind == 0 {
            break;
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let Some(data) = h.get(at + 8..(at + 8).saturating_add(len)) else {
            return Err(bad(
                at as u64,
                format!("header extension 0x{kind:08x} of {len} bytes runs past the header"),
            ));
        };
        if kind == EXT_BACKING_FORMAT {
            backing_format = Some(String::from_utf8_lossy(data).into_owned());
        } else if kind == EXT_DATA_FILE {
            data_file = Some(String::from_utf8_lossy(data).into_owned());
        }
        at = at + 8 + len.div_ceil(8) * 8;
    }
    Ok(Extensions {
        backing_format,
        data_file,
    })
}

/// The backing file name (`size` bytes at `offset`; offset 0: none).
fn backing_name(
    file: &File,
    offset: u64,
    size: u32,
    bad: &dyn Fn(u64, String) -> Error,
) -> Result<Option<String>, Error> {
    if offset == 0 {
        return Ok(None);
    }
    if size == 0 || size > 1023 {
        return Err(bad(
            16,
            format!("backing file name length {size} is not 1..1023"),
        ));
    }
    let mut name = vec![0u8; usize::try_from(size).unwrap_or(0)];
    file.read_exact_at(&mut name, offset).map_err(|_| {
        bad(
            8,
            format!("backing file name at {offset} lies past the end"),
        )
    })?;
    String::from_utf8(name)
        .map(Some)
        .map_err(|_| bad(offset, "backing file name is not UTF-8".into()))
}
