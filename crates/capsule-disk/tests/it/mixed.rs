//! Random (seeded) sequences of writes and overwrites, small files through fatfs and large
//! ones through capsule-disk's own allocator interleaved, on FAT12, FAT16 and FAT32; checked
//! with fsck.fat, mtools and our reader.

use capsule_disk::{Access, CreateOptions, DataDisk};
use std::collections::BTreeMap;
use std::io::Read;

use crate::tools::{data, fsck, mspec, mtool};

const MIB: u64 = 1024 * 1024;

#[test]
fn interleaved_writes_and_overwrites() {
    for (size, seed) in [(3 * MIB, 1u64), (64 * MIB, 2), (600 * MIB, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("m.img");
        let disk = DataDisk::create(&img, &CreateOptions::new().size(size)).unwrap();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut want: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        let budget = (size / 4) as usize;
        for step in 0..60u64 {
            let name = format!("d{}/File {}.bin", next() % 3, next() % 20);
            let len = match next() % 4 {
                0 => (next() % 100) as usize,
                1 => (next() % 70_000) as usize,
                _ => (next() % (budget as u64 / 8).min(2 * MIB)) as usize,
            };
            disk.put_file(&name, &mut &data(len, step)[..]).unwrap();
            want.insert(name, (len, step));
        }
        disk.finish().unwrap();
        fsck(&img, MIB);
        let listing = mtool("mdir", &["-b", "-/", "-i", &mspec(&img, MIB), "::"]);
        let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
        for (name, (len, step)) in &want {
            assert!(
                listing.lines().any(|l| l == format!("::/{name}")),
                "{name} not in mdir"
            );
            let mut got = Vec::new();
            disk.open_file(name).unwrap().read_to_end(&mut got).unwrap();
            assert!(
                got == data(*len, *step),
                "{name} ({len} bytes) differs on a {size}-byte disk"
            );
        }
    }
}
