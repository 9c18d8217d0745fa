//! VMDK: what we write qemu-img accepts, what qemu-img writes we read.

use capsule_disk::{Access, CreateOptions, DataDisk, ImageFormat};
use std::io::Read;
use std::path::Path;

use crate::tools::{assert_reference, data, fsck, mspec, mtool, qemu_img, reference_disk};

const MIB: u64 = 1024 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn created_sparse_vmdk_passes_qemu_img_and_mtools() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("data.vmdk");
    let big = data(3 * MIB as usize + 123, 3);
    let opts = CreateOptions::new()
        .size(1024 * MIB)
        .format(ImageFormat::Vmdk);
    let disk = DataDisk::create(&img, &opts).unwrap();
    disk.put_file("job/input.bin", &mut &big[..]).unwrap();
    disk.put_file("Readme Mixed.TXT", &mut &b"x"[..]).unwrap();
    disk.finish().unwrap();

    let len = std::fs::metadata(&img).unwrap().len();
    assert!(len < big.len() as u64 + 2 * MIB, "file is {len} bytes");
    let check = qemu_img(&["check", s(&img)]);
    assert!(check.contains("No errors were found"), "{check}");
    let info = qemu_img(&["info", s(&img)]);
    assert!(info.contains("virtual size: 1 GiB"), "{info}");

    let raw = dir.path().join("data.raw");
    qemu_img(&["convert", "-O", "raw", s(&img), s(&raw)]);
    let cmp = qemu_img(&["compare", s(&img), s(&raw)]);
    assert!(cmp.contains("identical"), "{cmp}");
    fsck(&raw, MIB);
    let out = dir.path().join("out.bin");
    mtool(
        "mcopy",
        &["-n", "-i", &mspec(&raw, MIB), "::job/input.bin", s(&out)],
    );
    assert_eq!(std::fs::read(&out).unwrap(), big);

    // Reopen read-write, add a file, and check again.
    let disk = DataDisk::open(&img, Access::ReadWrite).unwrap();
    disk.put_file("second.txt", &mut &b"again"[..]).unwrap();
    disk.finish().unwrap();
    assert!(qemu_img(&["check", s(&img)]).contains("No errors were found"));
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    let mut got = Vec::new();
    disk.open_file("job/input.bin")
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, big);
}

#[test]
fn reads_what_qemu_img_convert_writes() {
    let dir = tempfile::tempdir().unwrap();
    for (fat, start) in [(16, 63), (32, 2048)] {
        let size = if fat == 32 { 600 } else { 64 };
        let raw = reference_disk(dir.path(), size, fat, start);
        // The raw disk itself, as mkfs.vfat and mcopy left it.
        assert_reference(&DataDisk::open(&raw, Access::ReadOnly).unwrap());
        for sub in [
            "monolithicSparse",
            "streamOptimized",
            "monolithicFlat",
            "twoGbMaxExtentSparse",
            "twoGbMaxExtentFlat",
        ] {
            let out = dir.path().join(format!("{sub}-{fat}.vmdk"));
            qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                s(&raw),
                s(&out),
            ]);
            let disk =
                DataDisk::open(&out, Access::ReadOnly).unwrap_or_else(|e| panic!("{sub}: {e}"));
            assert_reference(&disk);
            let info = disk.info().unwrap();
            assert_eq!(info.partition.start, start * 512, "{sub}");
            assert_eq!(info.label, "REFDISK");
        }
    }
}

#[test]
fn delta_over_base_reads_through_and_writes_top() {
    let dir = tempfile::tempdir().unwrap();
    let raw = reference_disk(dir.path(), 64, 16, 2048);
    let base = dir.path().join("base.vmdk");
    let top = dir.path().join("top.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", s(&raw), s(&base)]);
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        s(&top),
    ]);
    let base_before = std::fs::read(&base).unwrap();

    let disk = DataDisk::open(&top, Access::ReadWrite).unwrap();
    assert_reference(&disk);
    assert_eq!(
        disk.info().unwrap().container.backing_chain,
        std::slice::from_ref(&base)
    );
    let out = data(300 * 1024, 11);
    disk.put_file("results/out.bin", &mut &out[..]).unwrap();
    disk.finish().unwrap();

    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_before,
        "the base must not change"
    );
    let check = qemu_img(&["check", s(&top)]);
    assert!(check.contains("No errors were found"), "{check}");
    let flat = dir.path().join("flat.raw");
    qemu_img(&["convert", "-O", "raw", s(&top), s(&flat)]);
    let got = dir.path().join("got.bin");
    mtool(
        "mcopy",
        &["-n", "-i", &mspec(&flat, MIB), "::results/out.bin", s(&got)],
    );
    assert_eq!(std::fs::read(&got).unwrap(), out);
    fsck(&flat, MIB);
    let disk = DataDisk::open(&top, Access::ReadOnly).unwrap();
    assert_reference(&disk);
}

/// Issue 3: a 4 GiB data disk holding 1 MiB of files is at most 1 MiB + 2 MiB on disk.
#[test]
fn four_gib_capacity_costs_only_the_data() {
    let dir = tempfile::tempdir().unwrap();
    for format in [ImageFormat::Vmdk, ImageFormat::Qcow2, ImageFormat::Raw] {
        let img = dir.path().join(format!("big.{format}"));
        let disk =
            DataDisk::create(&img, &CreateOptions::new().size(4096 * MIB).format(format)).unwrap();
        for i in 0..16 {
            disk.put_file(&format!("f{i}.bin"), &mut &data(64 * 1024, i)[..])
                .unwrap();
        }
        disk.finish().unwrap();
        let meta = std::fs::metadata(&img).unwrap();
        let used = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
        assert!(used <= 3 * MIB, "{format}: {used} bytes allocated");
        if format != ImageFormat::Raw {
            assert!(meta.len() <= 3 * MIB, "file length {}", meta.len());
            assert!(qemu_img(&["check", s(&img)]).contains("No errors were found"));
        }
        let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
        let mut got = Vec::new();
        disk.open_file("f15.bin")
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, data(64 * 1024, 15));
        let info = disk.info().unwrap();
        assert_eq!(info.fat, capsule_disk::FatKind::Fat32);
    }
}
