//! The containers alone (`Image`), against a plain byte model: random writes of every size and
//! alignment (zeros included), reopen, compare; qemu-img check and compare; then a delta
//! (qemu-img create -b) over the result, written through us.

use capsule_disk::{Access, Image, ImageFormat};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::tools::qemu_img;

const SIZE: u64 = 16 * 1024 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn random_writes(img: &mut Image, model: &mut [u8], seed: u64, count: usize) {
    let mut x = seed | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    for i in 0..count {
        let len = (1 + rnd(200 * 1024)) as usize;
        let off = rnd(SIZE - len as u64 + 1) as usize;
        let byte = if rnd(5) == 0 { 0 } else { (i % 250) as u8 + 1 };
        let data = vec![byte; len];
        img.seek(SeekFrom::Start(off as u64)).unwrap();
        img.write_all(&data).unwrap();
        model[off..off + len].copy_from_slice(&data);
    }
}

fn assert_same(path: &Path, model: &[u8]) {
    let mut img = Image::open(path, Access::ReadOnly).unwrap();
    assert_eq!(img.virtual_size(), SIZE);
    let mut all = Vec::new();
    img.read_to_end(&mut all).unwrap();
    assert!(all == model, "{} differs from the model", path.display());
}

#[test]
fn random_writes_match_a_model_and_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    for format in [ImageFormat::Vmdk, ImageFormat::Qcow2] {
        let base = dir.path().join(format!("base.{format}"));
        let mut model = vec![0u8; SIZE as usize];
        let mut img = Image::create(&base, format, SIZE).unwrap();
        random_writes(&mut img, &mut model, 7, 150);
        img.finish().unwrap();
        assert_same(&base, &model);
        let check = qemu_img(&["check", s(&base)]);
        assert!(
            check.contains("No errors were found") && !check.contains("leaked"),
            "{check}"
        );
        let raw = dir.path().join(format!("model-{format}.raw"));
        std::fs::write(&raw, &model).unwrap();
        assert!(qemu_img(&[
            "compare",
            "-f",
            format.name(),
            "-F",
            "raw",
            s(&base),
            s(&raw)
        ])
        .contains("identical"));

        // Reopen read-write and write more.
        let mut img = Image::open(&base, Access::ReadWrite).unwrap();
        random_writes(&mut img, &mut model, 8, 50);
        img.finish().unwrap();
        assert_same(&base, &model);

        // A delta made by qemu-img, written by us; the base must not change.
        let top = dir.path().join(format!("top.{format}"));
        let name = base.file_name().unwrap().to_str().unwrap();
        qemu_img(&[
            "create",
            "-f",
            format.name(),
            "-b",
            name,
            "-F",
            format.name(),
            s(&top),
        ]);
        let before = std::fs::read(&base).unwrap();
        let mut img = Image::open(&top, Access::ReadWrite).unwrap();
        assert_eq!(img.info().backing_chain.len(), 1);
        random_writes(&mut img, &mut model, 9, 100);
        img.finish().unwrap();
        assert_eq!(std::fs::read(&base).unwrap(), before);
        assert_same(&top, &model);
        let check = qemu_img(&["check", s(&top)]);
        assert!(
            check.contains("No errors were found") && !check.contains("leaked"),
            "{check}"
        );
        std::fs::write(&raw, &model).unwrap();
        assert!(qemu_img(&["compare", "-F", "raw", s(&top), s(&raw)]).contains("identical"));
    }
}

/// Images created by qemu-img in other layouts, written by us.
#[test]
fn writes_into_qemu_img_layouts() {
    let dir = tempfile::tempdir().unwrap();
    for (format, opts) in [
        ("qcow2", "cluster_size=4096"),
        ("qcow2", "cluster_size=512"),
        ("qcow2", "compat=0.10"),
        ("qcow2", "cluster_size=2097152"),
        ("vmdk", "subformat=twoGbMaxExtentSparse"),
        ("vmdk", "subformat=monolithicFlat"),
        ("vmdk", "subformat=monolithicSparse"),
    ] {
        let img = dir
            .path()
            .join(format!("{}.{format}", opts.replace(['=', ','], "-")));
        qemu_img(&[
            "create",
            "-f",
            format,
            "-o",
            opts,
            s(&img),
            &SIZE.to_string(),
        ]);
        let mut model = vec![0u8; SIZE as usize];
        let mut io = Image::open(&img, Access::ReadWrite).unwrap();
        random_writes(&mut io, &mut model, 11, 120);
        io.finish().unwrap();
        assert_same(&img, &model);
        let out = std::process::Command::new("qemu-img")
            .args(["check", s(&img)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let flat = opts.contains("Flat");
        assert!(
            flat || (text.contains("No errors were found") && !text.contains("leaked")),
            "{opts}: {text}"
        );
        let raw = dir.path().join("model.raw");
        std::fs::write(&raw, &model).unwrap();
        assert!(
            qemu_img(&["compare", "-F", "raw", s(&img), s(&raw)]).contains("identical"),
            "{format} {opts}"
        );
    }
}
