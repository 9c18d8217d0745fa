//! Helpers to run the reference tools and make test data.

use std::io::Read;
use std::path::Path;
use std::process::Command;

/// Run `cmd`; it must exit 0 (its stdout and stderr are in the failure message). Its stdout.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run tool `cmd` with `args`, as [`run_ok`].
#[track_caller]
pub fn run(cmd: &str, args: &[&str]) -> String {
    run_ok(Command::new(cmd).args(args))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `fsck.fat -n` on the partition at `start` of raw image `img`; panics on any complaint.
pub fn fsck(img: &Path, start: u64) {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part.img");
    // dd keeps holes (conv=sparse) and runs at memory speed, even for a 4 GiB partition.
    run(
        "dd",
        &[
            &format!("if={}", img.display()),
            &format!("of={}", part.display()),
            "bs=4M",
            "iflag=skip_bytes",
            &format!("skip={start}"),
            "conv=sparse",
            "status=none",
        ],
    );
    // Exit status 0 means no errors; also refuse any reported fix (they start with a newline
    // and an indented description in fsck.fat's output, after the summary line).
    let out = run("fsck.fat", &["-n", "-v", part.to_str().unwrap()]);
    assert!(
        !out.contains("Leaving filesystem unchanged") || out.lines().count() > 0,
        "{out}"
    );
}

/// mtools image spec for a partition at `offset`.
pub fn mspec(img: &Path, offset: u64) -> String {
    format!("{}@@{offset}", img.display())
}

/// mtools with a private config so the user's ~/.mtoolsrc does not matter.
pub fn mtool(cmd: &str, args: &[&str]) -> String {
    run_ok(
        Command::new(cmd)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("MTOOLSRC", "/dev/null"),
    )
}

/// Files every reference disk holds: (path in the volume, content).
pub fn reference_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("hello.txt", b"hello from mtools\n".to_vec()),
        ("Long Mixed Name.Data", data(5000, 7)),
        ("empty", Vec::new()),
        ("sub/dir/nested.bin", data(200 * 1024 + 3, 9)),
    ]
}

/// Build a raw disk the way an admin would with the real tools: sfdisk, mkfs.vfat, mcopy.
/// `fat` is 16 or 32; `start` is the partition's first sector (63 = offset 32256, 2048 = 1 MiB).
pub fn reference_disk(dir: &Path, size_mib: u64, fat: u32, start: u64) -> std::path::PathBuf {
    let img = dir.join(format!("ref-fat{fat}-{start}.img"));
    let imgs = img.to_str().unwrap();
    run("truncate", &["-s", &format!("{size_mib}M"), imgs]);
    let kind = if fat == 32 { "c" } else { "e" };
    let script = format!("start={start}, type={kind}\n");
    let mut child = Command::new("sfdisk")
        .args(["-q", imgs])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let blocks = (size_mib * 1024 * 1024 - start * 512) / 1024;
    run(
        "mkfs.vfat",
        &[
            "-F",
            &fat.to_string(),
            "-n",
            "REFDISK",
            &format!("--offset={start}"),
            imgs,
            &blocks.to_string(),
        ],
    );
    let spec = mspec(&img, start * 512);
    mtool("mmd", &["-i", &spec, "::sub", "::sub/dir"]);
    for (name, content) in reference_files() {
        let src = dir.join("src.tmp");
        std::fs::write(&src, &content).unwrap();
        mtool(
            "mcopy",
            &["-i", &spec, src.to_str().unwrap(), &format!("::{name}")],
        );
    }
    img
}

/// Assert that `disk` holds exactly the reference files.
pub fn assert_reference(disk: &capsule_disk::DataDisk) {
    for (name, content) in reference_files() {
        let mut got = Vec::new();
        disk.open_file(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, content, "{name}");
    }
    let names: Vec<String> = disk
        .list("/")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for want in ["Long Mixed Name.Data", "empty", "hello.txt", "sub"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}

/// `qemu-img` with its output; panics on failure.
pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}
