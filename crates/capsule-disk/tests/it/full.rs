//! No room left: every way of writing into a full volume (small files through
//! `fatfs`, large files along our own chains, new directories, tar entries) returns the typed
//! [`Error::VolumeFull`] naming the file being written and the volume's size, and the volume
//! stays consistent for `fsck.fat`.

use capsule_disk::{CreateOptions, DataDisk, Error};

use crate::tools::{data, fsck};

const MIB: u64 = 1024 * 1024;

/// The file named by a volume-full error, after checking the variant and its message.
fn full_path(err: &Error, capacity: u64) -> String {
    assert!(err.is_volume_full(), "{err:?}");
    let Error::VolumeFull {
        path,
        capacity: c,
        source: None,
        ..
    } = err
    else {
        panic!("not the FAT volume's VolumeFull: {err:?}");
    };
    assert_eq!(*c, capacity);
    let msg = err.to_string();
    assert!(
        msg.contains("is full")
            && msg.contains(&format!("'{path}'"))
            && msg.contains(&format!("({capacity} bytes)")),
        "{msg}"
    );
    path.clone()
}

fn tar_of(name: &str, len: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, &data(len, 11)[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn every_write_into_a_full_volume_says_so() {
    // FAT12 (2 MiB volume) and FAT16 (15 MiB volume).
    for size in [3 * MIB, 16 * MIB] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("full.img");
        let disk = DataDisk::create(&img, &CreateOptions::new().size(size)).unwrap();
        disk.create_dir_all("out").unwrap();
        let info = disk.info().unwrap();
        // Exactly what is free: afterwards no cluster is left.
        let free = usize::try_from(info.free).unwrap();
        assert_eq!(
            disk.put_file("out/filler", &mut &data(free, 1)[..])
                .unwrap(),
            info.free
        );
        assert_eq!(disk.info().unwrap().free, 0);

        let small = disk.put_file("out/small.txt", &mut &b"hello"[..]);
        assert_eq!(
            full_path(&small.unwrap_err(), info.capacity),
            "out/small.txt"
        );
        let big = disk.put_file("big.bin", &mut &data(300_000, 2)[..]);
        assert_eq!(full_path(&big.unwrap_err(), info.capacity), "big.bin");
        let made = disk.create_dir_all("out/new/deeper");
        assert_eq!(
            full_path(&made.unwrap_err(), info.capacity),
            "out/new/deeper"
        );
        let tar = tar_of("job/result.bin", 100_000);
        let unpacked = disk.tar_in("out", &mut &tar[..]);
        assert_eq!(
            full_path(&unpacked.unwrap_err(), info.capacity),
            "out/job/result.bin"
        );
        // Nothing above left a lost cluster or a broken entry behind.
        disk.finish().unwrap();
        fsck(&img, MIB);
    }
}
