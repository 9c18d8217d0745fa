//! The checkpoint file: the guest's migration stream and its written disks, each a zstd
//! section, then a JSON trailer saying what the sections are, then the trailer's length and
//! a magic. The trailer comes last so the sections stream straight to the file as they are
//! made; the file is written under a temporary name and renamed into place whole.
//!
//! The file is the job owner's (it travels through the schedd's spool), so it is read as any
//! file a job controls: a regular file opened without following links, the trailer bounded,
//! the sections tiling the file exactly, every section decompressed to at most the size its
//! caller allows and checked against its SHA-256 before it is used.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// First bytes of the file.
const MAGIC: &[u8; 24] = b"vm-capsule checkpoint 1\n";
/// Last bytes of the file, after the trailer's length.
const END: &[u8; 8] = b"VMCKPT1\n";
/// Longest trailer accepted.
const MAX_TRAILER: u64 = 64 * 1024;
/// Most sections accepted.
const MAX_SECTIONS: usize = 64;
/// zstd level: fast (a guest is saved within its vacate time) and still a good ratio on
/// memory pages.
const LEVEL: i32 = 1;

/// What a checkpoint holds and where it can be restored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Trailer {
    /// QEMU's version where it was made (as the probe advertises it).
    pub qemu: String,
    /// The machine it was made on: QEMU's command line and the files it boots (hex SHA-256).
    pub machine: String,
    /// The job's stdout bytes written to the sandbox before it was made.
    pub stdout: u64,
    /// The job's stderr bytes likewise.
    pub stderr: u64,
    /// Milliseconds from stopping the guest to the file in place.
    #[serde(default)]
    pub save_ms: u64,
    /// Milliseconds the run that made it took to load the checkpoint it started from (none:
    /// it booted).
    #[serde(default)]
    pub restored_ms: Option<u64>,
    /// The sections, in file order.
    pub sections: Vec<Section>,
}

/// One section: a named stream, compressed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Section {
    /// `memory`, or the sandbox file name of a disk.
    pub name: String,
    /// Its bytes in the file.
    pub stored: u64,
    /// Its bytes decompressed.
    pub size: u64,
    /// SHA-256 of the decompressed bytes, hex.
    pub sha256: String,
}

/// The name of the memory section.
pub const MEMORY: &str = "memory";

/// Why a checkpoint file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointFileError {
    /// Reading or writing it failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It is not a checkpoint this launcher can read.
    #[error("{path} is not a usable checkpoint: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A checkpoint being written: sections are appended, then [`Writer::finish`] writes the
/// trailer and renames the file into place.
#[derive(Debug)]
pub struct Writer {
    file: File,
    temp: PathBuf,
    path: PathBuf,
    sections: Vec<Section>,
}

impl Writer {
    /// Start `path`'s checkpoint under the name `temp` in the same directory (created new,
    /// 0600; renamed to `path` by [`Writer::finish`]).
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &Path, temp: &Path) -> Result<Writer, CheckpointFileError> {
        use std::os::unix::fs::OpenOptionsExt;
        let temp = temp.to_owned();
        let io_err = |source| CheckpointFileError::Io {
            path: temp.clone(),
            source,
        };
        // A leftover of an interrupted save, ours: replaced.
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(io_err)?;
        file.write_all(MAGIC).map_err(io_err)?;
        Ok(Writer {
            file,
            temp: temp.clone(),
            path: path.to_owned(),
            sections: Vec::new(),
        })
    }

    /// Append section `name`, compressing what `source` gives until its end.
    ///
    /// # Errors
    /// Reading `source` or writing the file failed.
    pub fn section(
        &mut self,
        name: &str,
        source: &mut dyn Read,
    ) -> Result<(), CheckpointFileError> {
        let io_err = |source| CheckpointFileError::Io {
            path: self.temp.clone(),
            source,
        };
        let start = self.file.stream_position().map_err(io_err)?;
        let mut hashing = Hashing {
            inner: source,
            hash: Sha256::new(),
            bytes: 0,
        };
        let mut encoder = zstd::stream::Encoder::new(&mut self.file, LEVEL).map_err(io_err)?;
        io::copy(&mut hashing, &mut encoder).map_err(io_err)?;
        encoder.finish().map_err(io_err)?;
        let end = self.file.stream_position().map_err(io_err)?;
        self.sections.push(Section {
            name: name.to_owned(),
            stored: end - start,
            size: hashing.bytes,
            sha256: hex(&hashing.hash.finalize()),
        });
        Ok(())
    }

    /// Write the trailer (`trailer`'s sections are this writer's), sync, and rename the file
    /// into place.
    ///
    /// # Errors
    /// Writing, syncing or renaming failed.
    pub fn finish(mut self, mut trailer: Trailer) -> Result<u64, CheckpointFileError> {
        let io_err = |source| CheckpointFileError::Io {
            path: self.temp.clone(),
            source,
        };
        trailer.sections = std::mem::take(&mut self.sections);
        let json = serde_json::to_vec(&trailer).map_err(|e| io_err(io::Error::other(e)))?;
        self.file.write_all(&json).map_err(io_err)?;
        let len = u64::try_from(json.len()).unwrap_or(u64::MAX);
        self.file.write_all(&len.to_le_bytes()).map_err(io_err)?;
        self.file.write_all(END).map_err(io_err)?;
        self.file.sync_all().map_err(io_err)?;
        let size = self.file.metadata().map_err(io_err)?.len();
        std::fs::rename(&self.temp, &self.path).map_err(io_err)?;
        Ok(size)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Unfinished: never left for a later start to mistake for a checkpoint.
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Counts and hashes what passes through.
struct Hashing<'a> {
    inner: &'a mut dyn Read,
    hash: Sha256,
    bytes: u64,
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = buf.get(..n).unwrap_or_default();
        self.hash.update(got);
        self.bytes += u64::try_from(n).unwrap_or(0);
        Ok(n)
    }
}

/// A checkpoint file opened for restoring: its trailer read and checked.
#[derive(Debug)]
pub struct Checkpoint {
    file: File,
    path: PathBuf,
    /// What it holds.
    pub trailer: Trailer,
    /// Each section's offset in the file.
    offsets: Vec<u64>,
}

impl Checkpoint {
    /// Open `path` (a regular file, not followed if it is a link, no larger than `max_bytes`)
    /// and read its trailer.
    ///
    /// # Errors
    /// [`CheckpointFileError`]: unreadable, a link or special file, too large, malformed.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Checkpoint, CheckpointFileError> {
        let invalid = |why: String| CheckpointFileError::Invalid {
            path: path.to_owned(),
            why,
        };
        let io_err = |source| CheckpointFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file =
            crate::launcher::ad_file::open_regular(path).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidInput => invalid("not a regular file".into()),
                _ => io_err(e),
            })?;
        let len = file.metadata().map_err(io_err)?.len();
        if len > max_bytes {
            return Err(invalid(format!(
                "{len} bytes, more than the {max_bytes} this job's guest can need"
            )));
        }
        let head_len = u64::try_from(MAGIC.len()).unwrap_or(0);
        let tail_len = 8 + u64::try_from(END.len()).unwrap_or(0);
        if len < head_len + tail_len {
            return Err(invalid("too short".into()));
        }
        let mut magic = [0u8; MAGIC.len()];
        file.read_exact(&mut magic).map_err(io_err)?;
        if &magic != MAGIC {
            return Err(invalid("no checkpoint magic at its start".into()));
        }
        file.seek(SeekFrom::Start(len - tail_len)).map_err(io_err)?;
        let mut tail = [0u8; 16];
        file.read_exact(&mut tail).map_err(io_err)?;
        let (count, end) = tail.split_at(8);
        if end != END {
            return Err(invalid("no end marker: the file was cut short".into()));
        }
        let mut count_bytes = [0u8; 8];
        count_bytes.copy_from_slice(count);
        let trailer_len = u64::from_le_bytes(count_bytes);
        if trailer_len > MAX_TRAILER || trailer_len > len - head_len - tail_len {
            return Err(invalid(format!("a trailer of {trailer_len} bytes")));
        }
        let trailer_start = len - tail_len - trailer_len;
        file.seek(SeekFrom::Start(trailer_start)).map_err(io_err)?;
        let mut json = vec![0u8; usize::try_from(trailer_len).unwrap_or(0)];
        file.read_exact(&mut json).map_err(io_err)?;
        let trailer: Trailer = serde_json::from_slice(&json)
            .map_err(|e| invalid(format!("its trailer is not valid: {e}")))?;
        if trailer.sections.len() > MAX_SECTIONS {
            return Err(invalid(format!("{} sections", trailer.sections.len())));
        }
        // The sections tile the file between the magic and the trailer, exactly.
        let mut offsets = Vec::new();
        let mut at = head_len;
        for s in &trailer.sections {
            offsets.push(at);
            at = at
                .checked_add(s.stored)
                .filter(|end| *end <= trailer_start)
                .ok_or_else(|| invalid(format!("section {} lies past its end", s.name)))?;
        }
        if at != trailer_start {
            return Err(invalid("its sections do not fill it".into()));
        }
        Ok(Checkpoint {
            file,
            path: path.to_owned(),
            trailer,
            offsets,
        })
    }

    /// The section called `name`, if any.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.trailer.sections.iter().find(|s| s.name == name)
    }

    /// Decompress section `name` into `out`: at most its recorded size, which must not pass
    /// `max_bytes`, and checked against its digest once it is all out. Sparse-aware when
    /// `out` is a file: runs of zeros are skipped, not written.
    ///
    /// # Errors
    /// [`CheckpointFileError::Invalid`] when the section is missing, too large, corrupt or
    /// not what its digest says; I/O errors.
    pub fn extract(
        &self,
        name: &str,
        max_bytes: u64,
        out: &mut dyn Write,
    ) -> Result<(), CheckpointFileError> {
        let invalid = |why: String| CheckpointFileError::Invalid {
            path: self.path.clone(),
            why,
        };
        let (index, section) = self
            .trailer
            .sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| invalid(format!("no {name} section")))?;
        if section.size > max_bytes {
            return Err(invalid(format!(
                "section {name} is {} bytes, more than {max_bytes}",
                section.size
            )));
        }
        let offset = self.offsets.get(index).copied().unwrap_or(0);
        let mut file = self
            .file
            .try_clone()
            .map_err(|source| CheckpointFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|source| CheckpointFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        let stored = file.take(section.stored);
        let decoder = zstd::stream::Decoder::new(stored).map_err(|e| invalid(e.to_string()))?;
        // One byte more than recorded: a stream longer than its record is caught.
        let mut bounded = decoder.take(section.size + 1);
        let mut hash = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match bounded.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(invalid(format!("section {name}: {e}"))),
            };
            let chunk = buf.get(..n).unwrap_or_default();
            hash.update(chunk);
            total += u64::try_from(n).unwrap_or(0);
            if total > section.size {
                return Err(invalid(format!("section {name} is longer than recorded")));
            }
            out.write_all(chunk)
                .map_err(|source| CheckpointFileError::Io {
                    path: self.path.clone(),
                    source,
                })?;
        }
        if total != section.size || hex(&hash.finalize()) != section.sha256 {
            return Err(invalid(format!(
                "section {name} does not match its digest (corrupt or altered)"
            )));
        }
        Ok(())
    }
}

/// Writes a file, seeking over blocks of zeros so a restored disk stays sparse.
#[derive(Debug)]
pub struct SparseFile {
    file: File,
    len: u64,
}

impl SparseFile {
    /// A new file at `path` (replacing ours of that name; never through a link).
    ///
    /// # Errors
    /// It cannot be created.
    pub fn create(path: &Path) -> io::Result<SparseFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?;
        Ok(SparseFile { file, len: 0 })
    }

    /// Set the length (the trailing zeros) and sync.
    ///
    /// # Errors
    /// `ftruncate` or `fsync` failing.
    pub fn finish(self) -> io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.sync_all()
    }
}

impl Write for SparseFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        const BLOCK: usize = 4096;
        for chunk in buf.chunks(BLOCK) {
            if chunk.iter().all(|b| *b == 0) {
                self.file
                    .seek(SeekFrom::Current(i64::try_from(chunk.len()).unwrap_or(0)))?;
            } else {
                self.file.write_all(chunk)?;
            }
            self.len += u64::try_from(chunk.len()).unwrap_or(0);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn trailer() -> Trailer {
        Trailer {
            qemu: "7.2.22".into(),
            machine: "m".into(),
            stdout: 3,
            stderr: 0,
            save_ms: 0,
            restored_ms: None,
            sections: Vec::new(),
        }
    }

    fn write(dir: &Path) -> PathBuf {
        let path = dir.join("ckpt");
        let mut w = Writer::create(&path, &dir.join("ckpt.partial")).unwrap();
        let memory: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        w.section(MEMORY, &mut memory.as_slice()).unwrap();
        let mut disk = vec![0u8; 1 << 20];
        disk[5000] = 7;
        w.section("data.img", &mut disk.as_slice()).unwrap();
        w.finish(trailer()).unwrap();
        assert!(!dir.join("ckpt.partial").exists());
        path
    }

    #[test]
    fn sections_come_back_as_written() {
        let d = tempfile::tempdir().unwrap();
        let path = write(d.path());
        let c = Checkpoint::open(&path, 1 << 30).unwrap();
        assert_eq!(c.trailer.qemu, "7.2.22");
        let mut memory = Vec::new();
        c.extract(MEMORY, 1 << 20, &mut memory).unwrap();
        assert_eq!(memory.len(), 300_000);
        assert_eq!(memory[1000], (1000 % 251) as u8);
        let disk_path = d.path().join("disk");
        let mut disk = SparseFile::create(&disk_path).unwrap();
        c.extract("data.img", 1 << 20, &mut disk).unwrap();
        disk.finish().unwrap();
        let back = std::fs::read(&disk_path).unwrap();
        assert_eq!(back.len(), 1 << 20);
        assert_eq!(back[5000], 7);
        // Sparse: far fewer blocks than its length.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&disk_path).unwrap().blocks() * 512 < 64 * 1024);
        // More than the caller allows is refused before anything is written.
        assert!(c.extract(MEMORY, 1000, &mut Vec::new()).is_err());
    }

    /// A job owner's hostile checkpoint: every alteration is refused with a reason, in
    /// bounded time and memory.
    #[test]
    fn altered_checkpoints_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = write(d.path());
        let good = std::fs::read(&path).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("cut short", good[..good.len() - 5].to_vec()),
            ("no magic", {
                let mut b = good.clone();
                b[0] = b'X';
                b
            }),
            ("flipped section byte", {
                let mut b = good.clone();
                b[MAGIC.len() + 40] ^= 0xff;
                b
            }),
            ("huge trailer length", {
                let mut b = good.clone();
                let at = b.len() - 16;
                b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            }),
        ];
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let opened = Checkpoint::open(&path, 1 << 30);
            let refused = match opened {
                Err(_) => true,
                Ok(c) => c.extract(MEMORY, 1 << 20, &mut Vec::new()).is_err(),
            };
            assert!(refused, "{what} was accepted");
        }
        // A trailer whose sections claim more than the file holds.
        let mut t = trailer();
        t.sections.push(Section {
            name: MEMORY.into(),
            stored: 1 << 40,
            size: 1,
            sha256: String::new(),
        });
        let json = serde_json::to_vec(&t).unwrap();
        let mut b = MAGIC.to_vec();
        b.extend(&json);
        b.extend((json.len() as u64).to_le_bytes());
        b.extend(END);
        std::fs::write(&path, &b).unwrap();
        let e = Checkpoint::open(&path, 1 << 30).unwrap_err();
        assert!(e.to_string().contains("past its end"), "{e}");
        // Too large for the job, a link, a FIFO.
        std::fs::write(&path, &good).unwrap();
        assert!(Checkpoint::open(&path, 100).is_err());
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Checkpoint::open(&link, 1 << 30).is_err());
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(Checkpoint::open(&fifo, 1 << 30).is_err());
    }
}
