//! Raw image + MBR + FAT: what we write, fsck.fat and mtools read.

use capsule_disk::{Access, CreateOptions, DataDisk, Error, ImageFormat};
use std::io::Read;

use crate::tools::{data, fsck, mspec, mtool};

const MIB: u64 = 1024 * 1024;

fn read_all(disk: &DataDisk, path: &str) -> Vec<u8> {
    let mut v = Vec::new();
    disk.open_file(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn raw_fat32_round_trip_with_mtools_and_fsck() {
    for (size, offset) in [(600 * MIB, MIB), (64 * MIB, 32256), (3 * MIB, 32256)] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let opts = CreateOptions::new()
            .size(size)
            .format(ImageFormat::Raw)
            .partition_offset(offset);
        let disk = DataDisk::create(&img, &opts).unwrap();
        let big = data(300 * 1024 + 17, 1);
        disk.put_file("hello.txt", &mut &b"hello\n"[..]).unwrap();
        disk.put_file("Mixed Case Long Name.Txt", &mut &b"mixed"[..])
            .unwrap();
        disk.put_file("empty", &mut &b""[..]).unwrap();
        disk.create_dir_all("a/b/c").unwrap();
        disk.put_file("a/b/c/deep.bin", &mut &big[..]).unwrap();
        disk.put_file("hello.txt", &mut &b"replaced"[..]).unwrap();
        disk.finish().unwrap();

        // Sparse: a file this small must not allocate the whole capacity.
        let allocated =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&img).unwrap()) * 512;
        assert!(
            allocated < 4 * MIB,
            "allocated {allocated} bytes for {size}"
        );

        fsck(&img, offset);
        let spec = mspec(&img, offset);
        // The fixes behind fatfs: the label in the root directory too (mlabel reads it there)
        // and the partition's start in "hidden sectors" (and the FAT32 backup boot sector).
        let label = mtool("mlabel", &["-i", &spec, "-s", "::"]);
        assert!(label.contains("Volume label is CONDORDATA"), "{label}");
        let hidden_at = |sector: u64| {
            let mut field = [0u8; 4];
            let f = std::fs::File::open(&img).unwrap();
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut field, offset + sector * 512 + 28)
                .unwrap();
            u32::from_le_bytes(field)
        };
        let hidden = (offset / 512) as u32;
        assert_eq!(hidden_at(0), hidden, "{offset}");
        if size >= 512 * MIB {
            assert_eq!(hidden_at(6), hidden, "FAT32 backup boot sector");
        }
        let listing = mtool("mdir", &["-b", "-/", "-i", &spec, "::"]);
        for name in [
            "::/hello.txt",
            "::/Mixed Case Long Name.Txt",
            "::/empty",
            "::/a/b/c/deep.bin",
        ] {
            assert!(
                listing.lines().any(|l| l == name),
                "{name} missing from mdir:\n{listing}"
            );
        }
        let out = dir.path().join("deep.out");
        mtool(
            "mcopy",
            &["-n", "-i", &spec, "::a/b/c/deep.bin", out.to_str().unwrap()],
        );
        assert_eq!(std::fs::read(&out).unwrap(), big);
        let hello = mtool("mtype", &["-i", &spec, "::hello.txt"]);
        assert_eq!(hello, "replaced");

        let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
        assert_eq!(read_all(&disk, "/a/b/c/deep.bin"), big);
        assert_eq!(read_all(&disk, "HELLO.TXT"), b"replaced");
        let names: Vec<String> = disk.list("").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            ["hello.txt", "Mixed Case Long Name.Txt", "empty", "a"]
        );
        let info = disk.info().unwrap();
        assert_eq!(info.label, "CONDORDATA");
        assert_eq!(info.partition.start, offset);
    }
}

#[test]
fn reads_gpt_disks_made_by_sfdisk_and_mkfs() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    crate::tools::run("truncate", &["-s", "64M", img.to_str().unwrap()]);
    // A Linux swap partition first, then a Microsoft basic data partition holding FAT16.
    let script = "label: gpt\nstart=2048, size=4096, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n\
                  start=8192, size=100000, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n";
    let mut c = Command::new("sfdisk")
        .args(["-q", img.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
    crate::tools::run(
        "mkfs.vfat",
        &[
            "-F",
            "16",
            "-n",
            "GPTDATA",
            "--offset=8192",
            img.to_str().unwrap(),
            &(100_000 / 2).to_string(),
        ],
    );
    let host = dir.path().join("host.txt");
    std::fs::write(&host, b"written by mcopy\n").unwrap();
    let hs = host.to_str().unwrap();
    mtool("mcopy", &["-i", &mspec(&img, 8192 * 512), hs, "::host.txt"]);
    let disk = DataDisk::open(&img, Access::ReadWrite).unwrap();
    let info = disk.info().unwrap();
    assert_eq!(info.table, capsule_disk::partition::TableKind::Gpt);
    assert_eq!(
        (info.partition.index, info.partition.start),
        (2, 8192 * 512)
    );
    assert_eq!(info.label, "GPTDATA");
    assert_eq!(read_all(&disk, "host.txt"), b"written by mcopy\n");
    disk.put_file("back.txt", &mut &b"from capsule-disk"[..])
        .unwrap();
    disk.finish().unwrap();
    assert_eq!(
        mtool("mtype", &["-i", &mspec(&img, 8192 * 512), "::back.txt"]),
        "from capsule-disk"
    );
    fsck(&img, 8192 * 512);
}

/// A file that does not fit fails with the typed volume-full error, naming the file and the
/// volume's size, and leaves no lost clusters behind.
#[test]
fn full_disk_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("small.img");
    let disk = DataDisk::create(&img, &CreateOptions::new().size(8 * MIB)).unwrap();
    disk.put_file("keep.bin", &mut &data(100_000, 3)[..])
        .unwrap();
    let capacity = disk.info().unwrap().capacity;
    let err = disk
        .put_file("out/huge.bin", &mut &data(9 * MIB as usize, 4)[..])
        .unwrap_err();
    assert!(err.is_volume_full(), "{err:?}");
    match &err {
        Error::VolumeFull {
            path,
            capacity: c,
            source: None,
            ..
        } => assert_eq!((path.as_str(), *c), ("out/huge.bin", capacity)),
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("is full")
            && msg.contains("'out/huge.bin'")
            && msg.contains(&format!("({capacity} bytes)")),
        "{msg}"
    );
    disk.put_file("after.bin", &mut &data(200_000, 5)[..])
        .unwrap();
    disk.finish().unwrap();
    fsck(&img, MIB);
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    assert_eq!(read_all(&disk, "after.bin"), data(200_000, 5));
    assert_eq!(read_all(&disk, "keep.bin"), data(100_000, 3));
}

/// Sizes around every internal boundary (cluster, small-file limit, 1 MiB chunk); fsck.fat
/// checks each chain length against its size.
#[test]
fn sizes_around_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sizes.img");
    let disk = DataDisk::create(&img, &CreateOptions::new().size(64 * MIB)).unwrap();
    let sizes = [
        0,
        1,
        2047,
        2048,
        2049,
        65535,
        65536,
        65537,
        1 << 20,
        (1 << 20) + 1,
        (2 << 20) + 4097,
    ];
    for (i, len) in sizes.iter().enumerate() {
        disk.put_file(&format!("s/{i}.bin"), &mut &data(*len, i as u64)[..])
            .unwrap();
    }
    disk.finish().unwrap();
    fsck(&img, MIB);
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    for (i, len) in sizes.iter().enumerate() {
        assert!(
            read_all(&disk, &format!("s/{i}.bin")) == data(*len, i as u64),
            "size {len}"
        );
    }
}
