//! qcow2: what we write qemu-img accepts, what qemu-img writes we read.

use capsule_disk::{Access, CreateOptions, DataDisk, ImageFormat};
use std::io::Read;
use std::path::Path;

use crate::tools::{assert_reference, data, fsck, mspec, mtool, qemu_img, reference_disk};

const MIB: u64 = 1024 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn check_clean(img: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", s(img)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No errors were found") && !text.contains("leaked"),
        "{text}"
    );
}

#[test]
fn created_qcow2_passes_qemu_img_and_mtools() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("data.qcow2");
    let big = data(3 * MIB as usize + 5, 4);
    let opts = CreateOptions::new()
        .size(1024 * MIB)
        .format(ImageFormat::Qcow2)
        .partition_offset(32256);
    let disk = DataDisk::create(&img, &opts).unwrap();
    disk.put_file("in/big.bin", &mut &big[..]).unwrap();
    disk.put_file("A Long File Name.txt", &mut &b"long"[..])
        .unwrap();
    disk.finish().unwrap();
    check_clean(&img);

    let raw = dir.path().join("data.raw");
    qemu_img(&["convert", "-O", "raw", s(&img), s(&raw)]);
    assert!(qemu_img(&["compare", s(&img), s(&raw)]).contains("identical"));
    fsck(&raw, 32256);
    let out = dir.path().join("out.bin");
    mtool(
        "mcopy",
        &["-n", "-i", &mspec(&raw, 32256), "::in/big.bin", s(&out)],
    );
    assert_eq!(std::fs::read(&out).unwrap(), big);

    let disk = DataDisk::open(&img, Access::ReadWrite).unwrap();
    disk.put_file("in/big.bin", &mut &b"shrunk"[..]).unwrap();
    disk.put_file("more/x.bin", &mut &data(70_000, 5)[..])
        .unwrap();
    disk.finish().unwrap();
    check_clean(&img);
    let cmp_raw = dir.path().join("data2.raw");
    qemu_img(&["convert", "-O", "raw", s(&img), s(&cmp_raw)]);
    fsck(&cmp_raw, 32256);
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    let mut got = Vec::new();
    disk.open_file("more/x.bin")
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, data(70_000, 5));
}

#[test]
fn reads_what_qemu_img_writes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = reference_disk(dir.path(), 64, 16, 63);
    for (name, opts) in [
        ("v3", vec!["-o", "compat=1.1"]),
        ("v2", vec!["-o", "compat=0.10"]),
        ("compressed", vec!["-c"]),
    ] {
        let out = dir.path().join(format!("{name}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend(opts);
        args.extend([s(&raw), s(&out)]);
        qemu_img(&args);
        let disk = DataDisk::open(&out, Access::ReadOnly).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_reference(&disk);
        assert_eq!(disk.info().unwrap().partition.start, 32256);
    }
}

#[test]
fn overlay_over_base_reads_through_and_writes_top() {
    let dir = tempfile::tempdir().unwrap();
    let raw = reference_disk(dir.path(), 64, 32, 2048);
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&base)]);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    let before = std::fs::read(&base).unwrap();

    let disk = DataDisk::open(&top, Access::ReadWrite).unwrap();
    assert_reference(&disk);
    let out = data(200 * 1024 + 1, 12);
    disk.put_file("results/out.bin", &mut &out[..]).unwrap();
    disk.put_file("hello.txt", &mut &b"overwritten in the top"[..])
        .unwrap();
    disk.finish().unwrap();

    assert_eq!(
        std::fs::read(&base).unwrap(),
        before,
        "the base must not change"
    );
    check_clean(&top);
    let flat = dir.path().join("flat.raw");
    qemu_img(&["convert", "-O", "raw", s(&top), s(&flat)]);
    fsck(&flat, MIB);
    let got = dir.path().join("got.bin");
    mtool(
        "mcopy",
        &["-n", "-i", &mspec(&flat, MIB), "::results/out.bin", s(&got)],
    );
    assert_eq!(std::fs::read(&got).unwrap(), out);
    assert_eq!(
        mtool("mtype", &["-i", &mspec(&flat, MIB), "::hello.txt"]),
        "overwritten in the top"
    );
}
