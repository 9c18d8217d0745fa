//! Helpers to run the reference tools and make test data.

use std::io::Read;
use std::path::Path;
use std::process::Command;

/// Run a command, panic with its output if it fails; return stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Copy bytes `[start, start+len)` of `img` to `out` (to run fsck.fat on one partition).
pub fn extract(img: &Path, start: u64, len: u64, out: &Path) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut o = std::fs::File::create(out).unwrap();
    // Keep holes as holes: a 1 GiB mostly-empty partition copies in milliseconds.
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = (left.min(buf.len() as u64)) as usize;
        f.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().all(|&b| b == 0) {
            o.seek(SeekFrom::Current(n as i64)).unwrap();
        } else {
            std::io::Write::write_all(&mut o, &buf[..n]).unwrap();
        }
        left -= n as u64;
    }
    o.set_len(len).unwrap();
}

/// `fsck.fat -n` on the partition at `start` of raw image `img`; panics on any complaint.
pub fn fsck(img: &Path, start: u64) {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part.img");
    let len = std::fs::metadata(img).unwrap().len() - start;
    extract(img, start, len, &part);
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
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
