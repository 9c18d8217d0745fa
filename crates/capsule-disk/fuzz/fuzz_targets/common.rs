//! Shared by the fuzz targets: a per-process scratch file, and "use the disk like the
//! finalize hook would" (walk, read every file, tar it out), all errors ignored.

use std::io::Read;
use std::path::PathBuf;

use capsule_disk::{Access, DataDisk, Image};

/// A scratch path private to this fuzzing process (in /dev/shm when available).
pub fn scratch(name: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    PathBuf::from(format!(
        "{base}/capsule-disk-fuzz-{}-{name}",
        std::process::id()
    ))
}

/// Exercise an image file; only panics, hangs and huge allocations count as failures.
pub fn exercise(path: &std::path::Path) {
    if let Ok(mut img) = Image::open(path, Access::ReadOnly) {
        let size = img.virtual_size();
        let mut buf = vec![0u8; 65536];
        for off in [0, size / 2, size.saturating_sub(65536)] {
            if std::io::Seek::seek(&mut img, std::io::SeekFrom::Start(off)).is_ok() {
                let _ = img.read(&mut buf);
            }
        }
    }
    let Ok(disk) = DataDisk::open(path, Access::ReadOnly) else {
        return;
    };
    let _ = disk.info();
    if let Ok(tree) = disk.walk("") {
        for (p, e) in tree.iter().take(64) {
            if !e.is_dir {
                if let Ok(mut f) = disk.open_file(p) {
                    let _ = std::io::copy(&mut (&mut f).take(1 << 20), &mut std::io::sink());
                }
            }
        }
    }
    let _ = disk.tar_out("", &mut std::io::sink());
}

/// Apply `[offset u16 LE][len u8][bytes]` records to `img` (offsets wrap around its length).
pub fn patch(img: &mut [u8], data: &[u8]) {
    let mut rest = data;
    while let [lo, hi, len, tail @ ..] = rest {
        if img.is_empty() {
            return;
        }
        let off = usize::from(u16::from_le_bytes([*lo, *hi])) % img.len();
        let n = usize::from(*len).min(tail.len()).min(img.len() - off);
        img[off..off + n].copy_from_slice(&tail[..n]);
        rest = &tail[n..];
    }
}
