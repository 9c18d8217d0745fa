#![allow(missing_docs, clippy::unwrap_used)]
use capsule_disk::*;
fn main() {
    let p = std::path::Path::new("/tmp/dd/p.vmdk");
    let big = vec![7u8; 100 << 20];
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let disk = DataDisk::create(
            p,
            &CreateOptions::new()
                .size(1024 << 20)
                .format(ImageFormat::Vmdk),
        )
        .unwrap();
        disk.put_file("big.bin", &mut &big[..]).unwrap();
        disk.finish().unwrap();
        eprintln!("put {:?}", t.elapsed());
    }
}
