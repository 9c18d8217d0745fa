//! Streaming tar in and out, cross-checked with GNU tar and mtools.

use capsule_disk::{Access, CreateOptions, DataDisk, ImageFormat};
use std::path::Path;

use crate::tools::{data, fsck, mspec, mtool, run};

const MIB: u64 = 1024 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A host tree with long and mixed-case names, an empty file and nesting.
fn host_tree(root: &Path) {
    std::fs::create_dir_all(root.join("Sub Dir/deeper/deepest")).unwrap();
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    std::fs::write(root.join("README.md"), b"# readme\n").unwrap();
    std::fs::write(
        root.join("a file with a rather long name, more than 64 characters in all.dat"),
        data(3000, 1),
    )
    .unwrap();
    std::fs::write(root.join("Sub Dir/MiXeD.CaSe"), data(100_000, 2)).unwrap();
    std::fs::write(root.join("Sub Dir/deeper/deepest/empty"), b"").unwrap();
}

#[test]
fn tar_in_and_out_round_trip_with_gnu_tar() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    host_tree(&src);
    let archive = dir.path().join("in.tar");
    run("tar", &["-cf", s(&archive), "-C", s(&src), "."]);

    let img = dir.path().join("d.vmdk");
    let disk = DataDisk::create(
        &img,
        &CreateOptions::new()
            .size(64 * MIB)
            .format(ImageFormat::Vmdk),
    )
    .unwrap();
    let stats = disk
        .tar_in("job", &mut std::fs::File::open(&archive).unwrap())
        .unwrap();
    assert_eq!(stats.files, 4);
    assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
    // The same archive as one file, as the data disk carries it.
    disk.put_file("input.tar", &mut std::fs::File::open(&archive).unwrap())
        .unwrap();
    disk.finish().unwrap();

    // mtools sees the same tree.
    let raw = dir.path().join("d.raw");
    run("qemu-img", &["convert", "-O", "raw", s(&img), s(&raw)]);
    fsck(&raw, MIB);
    let mout = dir.path().join("mtools-out");
    std::fs::create_dir(&mout).unwrap();
    mtool(
        "mcopy",
        &["-s", "-n", "-i", &mspec(&raw, MIB), "::job", s(&mout)],
    );
    run("diff", &["-r", s(&src), s(&mout.join("job"))]);

    // tar out, unpack with GNU tar, compare.
    let disk = DataDisk::open(&img, Access::ReadOnly).unwrap();
    let out_tar = dir.path().join("out.tar");
    let stats = disk
        .tar_out("job", &mut std::fs::File::create(&out_tar).unwrap())
        .unwrap();
    assert_eq!((stats.files, stats.dirs), (4, 4));
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    run("tar", &["-xf", s(&out_tar), "-C", s(&unpacked)]);
    run("diff", &["-r", s(&src), s(&unpacked)]);
    let mut copy = Vec::new();
    std::io::Read::read_to_end(&mut disk.open_file("input.tar").unwrap(), &mut copy).unwrap();
    assert_eq!(copy, std::fs::read(&archive).unwrap());
}

#[test]
fn hostile_archive_entries_are_skipped() {
    let mut raw = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw);
        for (name, kind) in [
            ("../escape.txt", tar::EntryType::Regular),
            ("/abs/rooted.txt", tar::EntryType::Regular),
            ("ok/../../up.txt", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
            ("dev", tar::EntryType::Char),
            ("fine.txt", tar::EntryType::Regular),
        ] {
            let mut h = tar::Header::new_old();
            // Write the name bytes directly: tar's set_path refuses '..' (as it should).
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_size(if kind == tar::EntryType::Regular {
                2
            } else {
                0
            });
            h.set_mode(0o644);
            h.set_cksum();
            let body: &[u8] = if kind == tar::EntryType::Regular {
                b"hi"
            } else {
                b""
            };
            b.append(&h, body).unwrap();
        }
        b.finish().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let disk = DataDisk::create(&img, &CreateOptions::new().size(8 * MIB)).unwrap();
    let stats = disk.tar_in("/", &mut &raw[..]).unwrap();
    // An absolute name is refused, not re-rooted (one RelPath rule set for every reader).
    assert_eq!(stats.files, 1, "{stats:?}");
    assert_eq!(stats.skipped.len(), 5, "{stats:?}");
    let names: Vec<String> = disk.walk("").unwrap().into_iter().map(|(p, _)| p).collect();
    assert_eq!(names, ["fine.txt"]);
    disk.finish().unwrap();
}

/// The shared table of hostile names: none of them lands on the volume.
#[test]
fn the_shared_hostile_names_are_skipped() {
    let mut raw = Vec::new();
    for name in capsule_manifest::HOSTILE_NAMES
        .iter()
        .filter(|n| !n.is_empty())
    {
        let mut h = tar::Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(&[b'x'; 512]);
    }
    raw.extend([0u8; 1024]);
    let dir = tempfile::tempdir().unwrap();
    let disk = DataDisk::create(
        &dir.path().join("h.img"),
        &CreateOptions::new().size(8 * MIB),
    )
    .unwrap();
    let stats = disk.tar_in("/", &mut &raw[..]).unwrap();
    let names: Vec<String> = disk.walk("").unwrap().into_iter().map(|(p, _)| p).collect();
    // "a\0b" ends at its NUL in a header field: it is the plain name "a".
    assert_eq!(names, ["a"], "{stats:?}");
    disk.finish().unwrap();
}
