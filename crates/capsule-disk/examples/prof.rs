#![allow(missing_docs, clippy::unwrap_used)]
use capsule_disk::*;
fn main() {
    let t = std::time::Instant::now();
    let p = std::path::Path::new("/tmp/dd/bulk.img");
    let disk = DataDisk::create(p, &CreateOptions::new().size(1024 << 20)).unwrap();
    let big = vec![7u8; 100 << 20];
    disk.put_file("big.bin", &mut &big[..]).unwrap();
    eprintln!("big {:?}", t.elapsed());
    for i in 0..1000 {
        disk.put_file(&format!("many/File {i:04} Mixed.txt"), &mut &b"abc"[..])
            .unwrap();
    }
    eprintln!("small {:?}", t.elapsed());
    disk.finish().unwrap();
    eprintln!("finish {:?}", t.elapsed());
}
