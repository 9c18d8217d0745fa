//! Bulk cases: a 100 MiB file and 1000 small files, read back by mtools.

use capsule_disk::{Access, CreateOptions, DataDisk, ImageFormat};
use std::io::Read;
use std::path::Path;

use crate::tools::{data, mspec, mtool, run};

const MIB: u64 = 1024 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn name(i: u64) -> String {
    format!("many/Dir {}/File {i:04} Mixed.txt", i % 10)
}

#[test]
fn hundred_mib_file_and_thousand_small_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 1000 files in 10 directories: fatfs's directory scans are quadratic in directory size,
    // and this test runs unoptimised in CI.
    for d in 0..10 {
        std::fs::create_dir_all(src.join(format!("many/Dir {d}"))).unwrap();
    }
    let big = data(100 * MIB as usize, 42);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    for i in 0..1000u64 {
        std::fs::write(src.join(name(i)), data((i * 37 % 3000) as usize, i)).unwrap();
    }
    let img = dir.path().join("d.img");
    let disk = DataDisk::create(
        &img,
        &CreateOptions::new()
            .size(1024 * MIB)
            .format(ImageFormat::Raw),
    )
    .unwrap();
    disk.put_file(
        "big.bin",
        &mut std::fs::File::open(src.join("big.bin")).unwrap(),
    )
    .unwrap();
    for i in 0..1000u64 {
        disk.put_file(
            &name(i),
            &mut std::fs::File::open(src.join(name(i))).unwrap(),
        )
        .unwrap();
    }
    disk.finish().unwrap();

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    mtool(
        "mcopy",
        &[
            "-s",
            "-n",
            "-i",
            &mspec(&img, MIB),
            "::big.bin",
            "::many",
            s(&out),
        ],
    );
    run("diff", &["-r", s(&src), s(&out)]);

    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    assert_eq!(disk.list("many/Dir 3").unwrap().len(), 100);
    assert_eq!(disk.walk("many").unwrap().len(), 1010);
    let mut back = Vec::new();
    disk.open_file("big.bin")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == big, "100 MiB file differs");
}
