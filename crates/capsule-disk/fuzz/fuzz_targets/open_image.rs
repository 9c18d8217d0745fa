//! Container and partition parsers. The first input byte picks a starting point: the rest of
//! the input as a whole file, or a small valid VMDK / qcow2 / raw data disk made by our own
//! writer and patched by the rest of the input ([offset u16 LE][len u8][bytes] records), so
//! the fuzzer starts from valid headers and tables. Each image is opened and read as the
//! finalize hook would.
#![no_main]

use std::sync::OnceLock;

use capsule_disk::{CreateOptions, DataDisk, ImageFormat};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fn template(format: ImageFormat) -> Vec<u8> {
    let path = common::scratch(&format!("tpl.{format}"));
    let opts = CreateOptions::new()
        .size(4 << 20)
        .format(format)
        .partition_offset(32256);
    let disk = DataDisk::create(&path, &opts).expect("template");
    disk.create_dir_all("out/sub").expect("dirs");
    disk.put_file("out/sub/data.bin", &mut &[9u8; 70_000][..])
        .expect("file");
    disk.put_file("result.json", &mut &b"{\"exit\":0}"[..])
        .expect("file");
    disk.finish().expect("finish");
    let bytes = std::fs::read(&path).expect("read template");
    let _ = std::fs::remove_file(&path);
    bytes
}

fn templates() -> &'static [Vec<u8>; 3] {
    static T: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
    T.get_or_init(|| {
        [template(ImageFormat::Vmdk), template(ImageFormat::Qcow2), {
            // Raw: keep only the first 128 KiB (the rest is zeros); the length is restored below.
            let mut r = template(ImageFormat::Raw);
            r.truncate(128 * 1024);
            r
        }]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let path = common::scratch("image");
    let bytes = match sel % 4 {
        0 => rest.to_vec(),
        n => {
            let mut img = templates()[usize::from(n - 1)].clone();
            common::patch(&mut img, rest);
            img
        }
    };
    let ok = std::fs::write(&path, &bytes).is_ok()
        && (sel % 4 != 3
            || std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(4 << 20))
                .is_ok());
    if ok {
        common::exercise(&path);
    }
    let _ = std::fs::remove_file(&path);
});
