//! The alarm stamp of one owner's log: which pool problem was said loudly, and when.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `.<file>.alarm` beside the log file `log`.
pub(super) fn stamp_path(log: &Path) -> Option<PathBuf> {
    let mut name = std::ffi::OsString::from(".");
    name.push(log.file_name()?);
    name.push(".alarm");
    Some(log.with_file_name(name))
}

/// The digest in `stamp` when it is a plain file of ours written less than `period` ago.
pub(super) fn read_stamp(stamp: &Path, period: std::time::Duration) -> Option<String> {
    use std::io::Read;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(i32::try_from(flags.bits()).unwrap_or(0))
        .open(stamp)
        .ok()?;
    let meta = file.metadata().ok()?;
    let fresh = meta
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < period);
    if !meta.is_file() || meta.uid() != rustix::process::geteuid().as_raw() || !fresh {
        return None;
    }
    let mut text = String::new();
    file.take(64).read_to_string(&mut text).ok()?;
    Some(text.trim().to_owned())
}

/// Replace `stamp` with one holding `digest`: a new file of a random name beside it, created
/// `O_EXCL|O_NOFOLLOW`, renamed over it (best effort: without a stamp the alarm is only said
/// again).
pub(super) fn write_stamp(stamp: &Path, digest: &str) {
    let mut random = [0u8; 8];
    if rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty()).is_err() {
        return;
    }
    let mut name = stamp.as_os_str().to_owned();
    name.push(format!(
        ".{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let tmp = PathBuf::from(name);
    let nofollow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    let Ok(mut file) = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nofollow)
        .open(&tmp)
    else {
        return;
    };
    if file.write_all(digest.as_bytes()).is_err() || std::fs::rename(&tmp, stamp).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// A short stable digest of a message (FNV-1a), to recognise a repeat.
pub(super) fn fnv(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}
