//! FAT directory walking: a valid data disk (MBR + FAT12 with nested directories, long names
//! and files) whose first 64 KiB are overwritten by the fuzzer at chosen offsets, then walked,
//! read and tarred out.
#![no_main]

use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use capsule_disk::{CreateOptions, DataDisk};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Region the fuzzer may modify: MBR, boot sector, FATs, root directory, first clusters.
const HEAD: usize = 64 * 1024;
const SIZE: u64 = 2 * 1024 * 1024;

fn base() -> &'static Vec<u8> {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let path = common::scratch("base");
        let opts = CreateOptions::new().size(SIZE).partition_offset(32256);
        let disk = DataDisk::create(&path, &opts).expect("base image");
        disk.create_dir_all("job/in/deeper").expect("dirs");
        disk.put_file("job/in/A Long Mixed Name.txt", &mut &b"hello"[..])
            .expect("file");
        disk.put_file("job/in/deeper/x.bin", &mut &[7u8; 3000][..])
            .expect("file");
        disk.put_file("result.json", &mut &b"{}"[..]).expect("file");
        disk.finish().expect("finish");
        let mut head = vec![0u8; HEAD];
        let f = std::fs::File::open(&path).expect("open base");
        f.read_exact_at(&mut head, 0).expect("read base");
        let _ = std::fs::remove_file(&path);
        head
    })
}

fuzz_target!(|data: &[u8]| {
    // Input: repeated [offset u16 LE][len u8][bytes...] patches onto the base image's head.
    let mut head = base().clone();
    common::patch(&mut head, data);
    let path = common::scratch("fat");
    let Ok(f) = std::fs::File::create(&path) else {
        return;
    };
    if f.write_all_at(&head, 0).is_ok() && f.set_len(SIZE).is_ok() {
        drop(f);
        common::exercise(&path);
    }
    let _ = std::fs::remove_file(&path);
});
