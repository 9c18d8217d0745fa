//! A qcow2 overlay (copy-on-write) over a read-only base image, written directly: four
//! clusters (header, refcount table, refcount block, L1 table), O(1) in the base's size.
//!
//! Layout follows QEMU's `docs/interop/qcow2.txt` (version 3, 64 KiB clusters, 16-bit
//! refcounts). `qemu-img check` accepts the result and QEMU reads unallocated clusters from the
//! backing file, which is named relative to the overlay so both can travel together.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Header extension type: backing file format name.
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;

/// Create `path` as a qcow2 v3 overlay of `virtual_size` bytes whose unwritten clusters read
/// from `backing` (a path as QEMU should resolve it: relative names are relative to the
/// overlay's directory) in `backing_format` (`raw`, `qcow2`, `vmdk`).
///
/// # Errors
/// I/O errors creating or writing the file (which must not exist), or a backing name or size
/// too large for the format.
pub fn create_overlay(
    path: &Path,
    backing: &str,
    backing_format: &str,
    virtual_size: u64,
) -> io::Result<()> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_owned());
    // Each L2 table maps CLUSTER/8 clusters; the L1 table must fit its one cluster.
    let per_l2 = CLUSTER * (CLUSTER / 8);
    let l1_entries = virtual_size.div_ceil(per_l2);
    if l1_entries > CLUSTER / 8 || backing.len() > 1023 || backing_format.len() > 16 {
        return Err(invalid("overlay too large or backing name too long"));
    }
    let l1_size = u32::try_from(l1_entries).map_err(|_| invalid("virtual size too large"))?;

    let mut header = Vec::with_capacity(usize::try_from(CLUSTER).unwrap_or(65536));
    let put32 = |h: &mut Vec<u8>, v: u32| h.extend_from_slice(&v.to_be_bytes());
    let put64 = |h: &mut Vec<u8>, v: u64| h.extend_from_slice(&v.to_be_bytes());
    let header_len: u32 = 112;
    // Extensions start right after the header; the backing name follows them.
    let fmt_len = u32::try_from(backing_format.len()).map_err(|_| invalid("format"))?;
    let ext_len = 8 + u64::from(fmt_len.div_ceil(8) * 8) + 8;
    let backing_offset = u64::from(header_len) + ext_len;
    let backing_len = u32::try_from(backing.len()).map_err(|_| invalid("backing"))?;

    header.extend_from_slice(b"QFI\xfb");
    put32(&mut header, 3); // version
    put64(&mut header, backing_offset);
    put32(&mut header, backing_len);
    put32(&mut header, CLUSTER_BITS);
    put64(&mut header, virtual_size);
    put32(&mut header, 0); // no encryption
    put32(&mut header, l1_size);
    put64(&mut header, 3 * CLUSTER); // L1 table
    put64(&mut header, CLUSTER); // refcount table
    put32(&mut header, 1); // refcount table clusters
    put32(&mut header, 0); // snapshots
    put64(&mut header, 0);
    put64(&mut header, 0); // incompatible features
    put64(&mut header, 0); // compatible features
    put64(&mut header, 0); // autoclear features
    put32(&mut header, 4); // refcount order: 16-bit refcounts
    put32(&mut header, header_len);
    header.push(0); // compression type: zlib
    header.resize(usize::try_from(header_len).unwrap_or(112), 0);
    put32(&mut header, EXT_BACKING_FORMAT);
    put32(&mut header, fmt_len);
    header.extend_from_slice(backing_format.as_bytes());
    while header.len() % 8 != 0 {
        header.push(0);
    }
    put64(&mut header, 0); // end of extensions
    header.extend_from_slice(backing.as_bytes());

    // Refcount table: one entry pointing at the refcount block in cluster 2.
    let mut refcount_table = vec![0u8; 8];
    refcount_table.copy_from_slice(&(2 * CLUSTER).to_be_bytes());
    // Refcount block: clusters 0-3 are in use once each.
    let refcount_block: Vec<u8> = [1u16, 1, 1, 1]
        .iter()
        .flat_map(|r| r.to_be_bytes())
        .collect();

    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    let cluster = |data: &[u8], file: &mut std::fs::File| -> io::Result<()> {
        let mut buf = data.to_vec();
        buf.resize(usize::try_from(CLUSTER).unwrap_or(65536), 0);
        file.write_all(&buf)
    };
    cluster(&header, &mut file)?;
    cluster(&refcount_table, &mut file)?;
    cluster(&refcount_block, &mut file)?;
    // L1 table: all zero (nothing allocated), left as a hole.
    file.set_len(4 * CLUSTER)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::process::Command;

    /// Cross-check with the real tool: qemu-img must accept the overlay and see the backing.
    #[test]
    fn qemu_img_accepts_the_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        let f = std::fs::File::create(&base).unwrap();
        f.set_len(64 << 20).unwrap();
        std::fs::write(dir.path().join("x"), b"").unwrap();
        let overlay = dir.path().join("os.qcow2");
        create_overlay(&overlay, "base.img", "raw", 64 << 20).unwrap();
        let check = Command::new("qemu-img")
            .arg("check")
            .arg(&overlay)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&overlay)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(
            text.contains("\"backing-filename\": \"base.img\""),
            "{text}"
        );
        assert!(
            text.contains("\"backing-filename-format\": \"raw\""),
            "{text}"
        );
        assert!(text.contains("\"virtual-size\": 67108864"), "{text}");
        // Reads through to the base.
        let cmp = Command::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(&overlay)
            .arg(&base)
            .output()
            .unwrap();
        assert!(
            cmp.status.success(),
            "{}",
            String::from_utf8_lossy(&cmp.stdout)
        );
        assert_eq!(std::fs::metadata(&overlay).unwrap().len(), 4 * 65536);
    }
}
