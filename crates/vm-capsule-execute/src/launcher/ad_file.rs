//! Ad files in a job's sandbox: the routed ad HTCondor transferred, the starter's `.job.ad`
//! and `.machine.ad`. The job's owner can replace any of them, so they are read only as
//! regular files, never through a link, never a FIFO (whose `open` would wait forever), and
//! only up to a bound.

use std::io::Read;
use std::path::Path;

/// The largest ad file read (real ones are a few KiB).
pub const MAX_AD_BYTES: u64 = 4 << 20;

/// Open `path`, a file in the sandbox the job's owner could have replaced (an ad file, the
/// capsule's description, a checkpoint and the disks restored from it), for reading: only a
/// regular file, never through a link, and without waiting on a FIFO.
///
/// # Errors
/// The open failing, or [`std::io::ErrorKind::InvalidInput`] when it is not a regular file.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// The text of the ad file `path`, or why it is refused (the message names the file).
pub fn read_ad_text(path: &Path) -> Result<String, String> {
    let file = open_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => e.to_string(),
        _ => format!("cannot open {}: {e}", path.display()),
    })?;
    read_bounded(file, &path.display().to_string())
}

/// At most [`MAX_AD_BYTES`] of `reader` (`what` names it in the error): an ad file, or the ad a
/// hook gets on stdin.
pub fn read_bounded(reader: impl Read, what: &str) -> Result<String, String> {
    let mut text = String::new();
    reader
        .take(MAX_AD_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    if text.len() as u64 > MAX_AD_BYTES {
        return Err(format!(
            "{what} is larger than {MAX_AD_BYTES} bytes: not an ad HTCondor wrote"
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_a_bounded_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.ad");
        std::fs::write(&good, "A = 1\n").unwrap();
        assert_eq!(read_ad_text(&good).unwrap(), "A = 1\n");

        let link = dir.path().join("link.ad");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(read_ad_text(&link).unwrap_err().contains("link.ad"));

        let fifo = dir.path().join("fifo.ad");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert!(read_ad_text(&fifo)
            .unwrap_err()
            .contains("is not a regular file"));

        let huge = dir.path().join("huge.ad");
        let file = std::fs::File::create(&huge).unwrap();
        file.set_len(MAX_AD_BYTES + 1).unwrap();
        assert!(read_ad_text(&huge).unwrap_err().contains("larger than"));
    }
}
