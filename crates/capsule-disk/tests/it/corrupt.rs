//! Hostile and damaged images: every case ends in an error that names the problem, never a
//! panic or a hang.

use capsule_disk::{Access, CreateOptions, DataDisk, Error, ImageFormat};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MIB: u64 = 1024 * 1024;

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn read(path: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut v, at)
        .unwrap();
    v
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn open_err(path: &Path) -> String {
    match DataDisk::open(path, Access::ReadOnly) {
        Ok(_) => panic!("{} opened although it is corrupt", path.display()),
        Err(e) => e.to_string(),
    }
}

fn new_disk(dir: &Path, name: &str, format: ImageFormat, size: u64) -> PathBuf {
    let img = dir.join(name);
    let disk = DataDisk::create(&img, &CreateOptions::new().size(size).format(format)).unwrap();
    disk.put_file("file.bin", &mut &vec![0xabu8; 5000][..])
        .unwrap();
    disk.create_dir_all("a/b").unwrap();
    disk.finish().unwrap();
    img
}

/// FAT16 geometry of the volume at 1 MiB: (FAT offset, FAT size, number of FATs, data start,
/// cluster size), all in bytes from the start of the image.
fn geometry(img: &Path) -> (u64, u64, u64, u64, u64) {
    let bpb = read(img, MIB, 64);
    let bps = le16(&bpb, 11);
    let spc = u64::from(bpb[13]);
    let reserved = le16(&bpb, 14);
    let fats = u64::from(bpb[16]);
    let root = le16(&bpb, 17);
    let fat_sectors = le16(&bpb, 22);
    let fat = MIB + reserved * bps;
    let data = fat + fats * fat_sectors * bps + root * 32;
    (fat, fat_sectors * bps, fats, data, spc * bps)
}

#[test]
fn truncated_container_headers() {
    let dir = tempfile::tempdir().unwrap();
    for (format, keep) in [(ImageFormat::Vmdk, 300), (ImageFormat::Qcow2, 50)] {
        let img = new_disk(dir.path(), &format!("t.{format}"), format, 64 * MIB);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let msg = open_err(&img);
        assert!(
            msg.contains("header") && msg.contains("bytes"),
            "{format}: {msg}"
        );
    }
}

#[test]
fn vmdk_grain_table_past_eof() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_disk(dir.path(), "g.vmdk", ImageFormat::Vmdk, 64 * MIB);
    let h = read(&img, 0, 512);
    let gd = u64::from_le_bytes(h[56..64].try_into().unwrap());
    let gt = u64::from(u32::from_le_bytes(
        read(&img, gd * 512, 4).try_into().unwrap(),
    ));
    // Point every allocated grain of the first table far past the end of the file.
    let table = read(&img, gt * 512, 2048);
    for (i, e) in table.chunks_exact(4).enumerate() {
        if e != [0, 0, 0, 0] {
            patch(&img, gt * 512 + i as u64 * 4, &0x7fff_0000u32.to_le_bytes());
        }
    }
    let msg = open_err(&img);
    assert!(
        msg.contains("grain table entry") && msg.contains("past the end"),
        "{msg}"
    );
}

#[test]
fn qcow2_l1_entry_past_eof() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_disk(dir.path(), "l.qcow2", ImageFormat::Qcow2, 64 * MIB);
    let h = read(&img, 0, 64);
    let l1 = u64::from_be_bytes(h[40..48].try_into().unwrap());
    patch(&img, l1, &((1u64 << 40) | (1 << 63)).to_be_bytes());
    let msg = open_err(&img);
    assert!(
        msg.contains("L1 entry") && msg.contains("past the end"),
        "{msg}"
    );
}

#[test]
fn absurd_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = new_disk(dir.path(), "a.vmdk", ImageFormat::Vmdk, 64 * MIB);
    patch(&v, 12, &(1u64 << 60).to_le_bytes());
    assert!(open_err(&v).contains("capacity"));
    let q = new_disk(dir.path(), "a.qcow2", ImageFormat::Qcow2, 64 * MIB);
    patch(&q, 24, &(1u64 << 62).to_be_bytes());
    assert!(open_err(&q).contains("virtual size"));
    let q2 = new_disk(dir.path(), "b.qcow2", ImageFormat::Qcow2, 64 * MIB);
    patch(&q2, 20, &40u32.to_be_bytes());
    assert!(open_err(&q2).contains("cluster_bits"));
    // A FAT volume claiming more sectors than its partition holds.
    let r = new_disk(dir.path(), "a.img", ImageFormat::Raw, 64 * MIB);
    patch(&r, MIB + 19, &[0, 0]);
    patch(&r, MIB + 32, &u32::MAX.to_le_bytes());
    let msg = open_err(&r);
    assert!(
        msg.contains("does not fit") || msg.contains("cannot map"),
        "{msg}"
    );
    // A GPT with four billion entries.
    let g = dir.path().join("g.img");
    std::fs::File::create(&g).unwrap().set_len(8 * MIB).unwrap();
    let mut mbr = [0u8; 512];
    mbr[446 + 4] = 0xee;
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&16383u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    patch(&g, 0, &mbr);
    let mut hdr = [0u8; 92];
    hdr[..8].copy_from_slice(b"EFI PART");
    hdr[72..80].copy_from_slice(&2u64.to_le_bytes());
    hdr[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
    hdr[84..88].copy_from_slice(&128u32.to_le_bytes());
    patch(&g, 512, &hdr);
    let msg = open_err(&g);
    assert!(
        msg.contains("GPT header") && msg.contains("too many"),
        "{msg}"
    );
}

#[test]
fn partition_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_disk(dir.path(), "p.img", ImageFormat::Raw, 64 * MIB);
    patch(&img, 446 + 12, &1_000_000u32.to_le_bytes());
    match DataDisk::open(&img, Access::ReadOnly) {
        Err(e @ Error::PartitionOutOfBounds { .. }) => {
            assert!(e.to_string().contains("partition 1 ends at byte"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cyclic_file_chain() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_disk(dir.path(), "c.img", ImageFormat::Raw, 64 * MIB);
    let (fat, fat_size, fats, _, cs) = geometry(&img);
    assert_eq!(cs, 2048);
    // file.bin is the first allocation: clusters 2 -> 3 -> 4; make 3 point back to 2.
    for i in 0..fats {
        patch(&img, fat + i * fat_size + 3 * 2, &2u16.to_le_bytes());
    }
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    let msg = match disk.open_file("file.bin") {
        Ok(_) => panic!("cyclic chain not detected"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("cyclic cluster chain") && msg.contains("file.bin"),
        "{msg}"
    );
    // A chain that leaves the volume.
    for i in 0..fats {
        patch(&img, fat + i * fat_size + 3 * 2, &0xfff0u16.to_le_bytes());
    }
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    let msg = disk
        .open_file("file.bin")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("outside the volume"), "{msg}");
    // A chain that loops only after the file's last cluster is harmless and reads fine.
    for i in 0..fats {
        patch(&img, fat + i * fat_size + 3 * 2, &4u16.to_le_bytes());
        patch(&img, fat + i * fat_size + 4 * 2, &2u16.to_le_bytes());
    }
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    let mut v = Vec::new();
    disk.open_file("file.bin")
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    assert_eq!(v, vec![0xabu8; 5000]);
}

#[test]
fn directory_loops() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_disk(dir.path(), "d.img", ImageFormat::Raw, 64 * MIB);
    let (fat, fat_size, fats, data, cs) = geometry(&img);
    // Directory "a" is cluster 5 (after file.bin's 2..4); its entry for "b" points to b's
    // cluster. Make b point back at a: a/b/b/b/... forever.
    let a = data + (5 - 2) * cs;
    let entries = read(&img, a, cs as usize);
    let slot = entries
        .chunks_exact(32)
        .position(|e| &e[..11] == b"B          ")
        .unwrap();
    patch(&img, a + slot as u64 * 32 + 26, &5u16.to_le_bytes());
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    let msg = disk.walk("").unwrap_err().to_string();
    assert!(msg.contains("directory depth"), "{msg}");

    // A directory whose own cluster chain loops onto itself, full of deleted entries.
    let mut deleted = vec![0u8; cs as usize];
    for e in deleted.chunks_exact_mut(32) {
        e[0] = 0xe5;
    }
    patch(&img, a, &deleted);
    for i in 0..fats {
        patch(&img, fat + i * fat_size + 5 * 2, &5u16.to_le_bytes());
    }
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    let msg = disk.list("a").unwrap_err().to_string();
    assert!(
        msg.contains("directory 'a'") && msg.contains("a loop?"),
        "{msg}"
    );
}

#[test]
fn garbage_is_not_a_disk() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("junk");
    std::fs::write(&img, crate::tools::data(100_000, 5)).unwrap();
    let msg = open_err(&img);
    assert!(
        msg.contains("no FAT partition") || msg.contains("corrupt"),
        "{msg}"
    );
    let mut f = std::fs::File::open(&img).unwrap();
    let mut head = [0u8; 4];
    f.read_exact(&mut head).unwrap();
}

/// Not corrupt, but hand-made: a fragmented chain (2 -> 10 -> 4) must read back in order,
/// through both `read` with small buffers and `copy_to`.
#[test]
fn fragmented_chain_reads_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("f.img");
    let disk = DataDisk::create(&img, &CreateOptions::new().size(64 * MIB)).unwrap();
    let content = crate::tools::data(5000, 77);
    disk.put_file("frag.bin", &mut &content[..]).unwrap();
    disk.finish().unwrap();
    let (fat, fat_size, fats, data, cs) = geometry(&img);
    let middle = read(&img, data + cs, cs as usize);
    patch(&img, data + 8 * cs, &middle);
    patch(&img, data + cs, &vec![0xeeu8; cs as usize]);
    for i in 0..fats {
        let base = fat + i * fat_size;
        patch(&img, base + 2 * 2, &10u16.to_le_bytes());
        patch(&img, base + 10 * 2, &4u16.to_le_bytes());
        patch(&img, base + 3 * 2, &0u16.to_le_bytes());
    }
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    let mut small = Vec::new();
    let mut r = disk.open_file("frag.bin").unwrap();
    let mut buf = [0u8; 700];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        small.extend_from_slice(&buf[..n]);
    }
    assert!(small == content);
    let mut all = Vec::new();
    disk.open_file("frag.bin")
        .unwrap()
        .copy_to(&mut all)
        .unwrap();
    assert!(all == content);
    crate::tools::fsck(&img, MIB);
}

/// A descriptor naming a FIFO as its parent (or an extent outside its directory) must fail
/// at once, not block the finalize hook.
#[test]
fn hostile_descriptor_references() {
    let dir = tempfile::tempdir().unwrap();
    crate::tools::run("mkfifo", &[dir.path().join("fifo").to_str().unwrap()]);
    std::fs::File::create(dir.path().join("flat.raw"))
        .unwrap()
        .set_len(MIB)
        .unwrap();
    let desc = dir.path().join("d.vmdk");
    let text = |parent: &str, extent: &str| {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=87654321\n\
             createType=\"monolithicFlat\"\nparentFileNameHint=\"{parent}\"\n\
             RW 2048 FLAT \"{extent}\" 0\n"
        )
    };
    std::fs::write(&desc, text("fifo", "flat.raw")).unwrap();
    let msg = open_err(&desc);
    assert!(msg.contains("must be regular files"), "{msg}");
    for extent in ["../flat.raw", "/etc/passwd"] {
        std::fs::write(
            &desc,
            text("", extent).replace("parentCID=87654321", "parentCID=ffffffff"),
        )
        .unwrap();
        let msg = open_err(&desc);
        assert!(
            msg.contains("relative path without '..'"),
            "{extent}: {msg}"
        );
    }
}
