//! Cross-checks of the raw directory reader against the real tools and `fatfs`:
//! on volumes made by `mkfs.vfat` and filled by `mcopy` (long, lower-case, non-ASCII and
//! nested names, a deleted entry, a fragmented file), every first cluster read from a raw
//! entry equals the one `mshowfat` reports, every listing equals `fatfs`'s, and every file
//! reads back the same through the raw chain and through `fatfs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};

use super::entry::{components, unix_time};
use super::DataDisk;
use crate::Access;

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if let Some(text) = stdin {
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap() ^ seed)
        .collect()
}

/// The files put on each volume, in the order `mcopy` writes them (on FAT12/16 `frag.bin`
/// fills the hole left by the deleted `gap` and continues after `c1`: a fragmented chain).
const FILES: [(&str, usize); 9] = [
    ("a1", 5000),
    ("gap", 9000),
    ("c1", 5000),
    ("frag.bin", 30_000),
    ("empty", 0),
    ("Ünï.bin", 3000),
    ("Sub/deeper/Long Mixed Name.Data", 70_000),
    ("Sub/UPPER.TXT", 1),
    ("Sub/lower.txt", 2048),
];

/// A raw image of `kib` KiB with a FAT volume made by `mkfs_args`, at sector `start` behind an
/// MBR (`start` 0: no partition table), filled by mtools: first a file of `filler` bytes (so
/// that on FAT32 the other files lie past cluster 65535 and need the entry's high word), then
/// [`FILES`]. Returns the mtools image spec.
fn make_volume(img: &Path, kib: u64, start: u64, filler: usize, mkfs_args: &[&str]) -> String {
    let path = img.to_str().unwrap();
    run("truncate", &["-s", &format!("{kib}K"), path], None);
    let mut args = mkfs_args.to_vec();
    let offset = format!("--offset={start}");
    let blocks = (kib - start / 2).to_string();
    if start > 0 {
        run(
            "sfdisk",
            &["-q", path],
            Some(&format!("start={start}, type=c\n")),
        );
        args.push(&offset);
    }
    args.extend([path, blocks.as_str()]);
    run("mkfs.vfat", &args, None);
    let spec = format!("{path}@@{}", start * 512);
    let dir = img.parent().unwrap();
    run("mmd", &["-i", &spec, "::Sub", "::Sub/deeper"], None);
    let src = dir.join("src");
    std::fs::write(&src, bytes(filler, 0xff)).unwrap();
    run(
        "mcopy",
        &["-i", &spec, src.to_str().unwrap(), "::filler"],
        None,
    );
    for (i, (name, len)) in FILES.iter().enumerate() {
        std::fs::write(&src, bytes(*len, u8::try_from(i).unwrap())).unwrap();
        let to = format!("::{name}");
        run("mcopy", &["-i", &spec, src.to_str().unwrap(), &to], None);
        if *name == "c1" {
            run("mdel", &["-i", &spec, "::gap"], None);
        }
    }
    spec
}

/// The first cluster `mshowfat` reports for `name` (0 for an empty file).
fn mshowfat_first(spec: &str, name: &str) -> u32 {
    let out = run("mshowfat", &["-i", spec, &format!("::{name}")], None);
    out.split_once('<').map_or(0, |(_, rest)| {
        rest.split(['-', '>', ',']).next().unwrap().parse().unwrap()
    })
}

fn check_volume(img: &Path, spec: &str, start: u64) {
    let disk = DataDisk::open(img, Access::ReadOnly).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let end = file.metadata().unwrap().len();
    let slice = fscommon::StreamSlice::new(file, start * 512, end).unwrap();
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap();
    for (i, (name, len)) in FILES.iter().enumerate() {
        if *name == "gap" {
            assert!(
                disk.stat(name).unwrap().is_none(),
                "deleted 'gap' is listed"
            );
            continue;
        }
        let (parent, leaf) = name.rsplit_once('/').unwrap_or(("", name));
        let loc = disk.dir_at(&components(parent).unwrap(), name).unwrap();
        let raw = disk.find(loc, leaf, name).unwrap().unwrap();
        assert_eq!(
            raw.first_cluster,
            mshowfat_first(spec, name),
            "{spec} {name}"
        );
        let mut ours = Vec::new();
        disk.open_file(name)
            .unwrap()
            .read_to_end(&mut ours)
            .unwrap();
        let mut theirs = Vec::new();
        let mut f = fs.root_dir().open_file(name).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut theirs).unwrap();
        let want = bytes(*len, u8::try_from(i).unwrap());
        assert!(ours == want && theirs == want, "{spec} {name}");
    }
    for dir in ["", "Sub", "Sub/deeper"] {
        let fat_dir = if dir.is_empty() {
            fs.root_dir()
        } else {
            fs.root_dir().open_dir(dir).unwrap()
        };
        let theirs: Vec<_> = fat_dir
            .iter()
            .map(Result::unwrap)
            .filter(|e| e.short_file_name() != "." && e.short_file_name() != "..")
            .map(|e| {
                let m = e.modified();
                let date = ((m.date.year - 1980) << 9) | (m.date.month << 5) | m.date.day;
                let time = (m.time.hour << 11) | (m.time.min << 5) | (m.time.sec / 2);
                let size = if e.is_dir() { 0 } else { e.len() };
                (e.file_name(), e.is_dir(), size, unix_time((date, time)))
            })
            .collect();
        let ours: Vec<_> = disk
            .list(dir)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.is_dir, e.size, e.modified))
            .collect();
        assert_eq!(ours, theirs, "{spec} '{dir}'");
    }
}

#[test]
fn raw_entries_agree_with_mshowfat_and_fatfs() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, u64, u64, &[&str]); 4] = [
        ("fat12.img", 3072, 0, &["-F", "12"]),
        ("fat16.img", 20 * 1024, 63, &["-F", "16"]),
        ("fat32.img", 40 * 1024, 0, &["-F", "32", "-s", "1"]),
        ("fat32-part.img", 40 * 1024, 2048, &["-F", "32", "-s", "1"]),
    ];
    for (name, kib, start, args) in cases {
        let fat32 = args.contains(&"32");
        let filler = if fat32 { 34 << 20 } else { 1000 };
        let img = dir.path().join(name);
        let spec = make_volume(&img, kib, start, filler, args);
        // The premises: on FAT12/16 a fragmented chain (mtools fills the hole there; on FAT32
        // it follows the FSInfo hint), on FAT32 clusters that need the high word.
        let frag = run("mshowfat", &["-i", &spec, "::frag.bin"], None);
        assert!(
            fat32 || frag.matches('<').count() > 1,
            "not fragmented: {frag}"
        );
        assert_eq!(mshowfat_first(&spec, "a1") > 0xffff, fat32, "{spec}");
        check_volume(&img, &spec, start);
    }
}
