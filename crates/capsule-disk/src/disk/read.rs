//! The read side of the file API: stat, list and streaming file reads, all from the raw
//! directory entries and checked cluster chains (no `fatfs` involved).

use std::io::{self, Read, Write};

use super::entry::{components, info_of};
use super::{DataDisk, DirEntryInfo};
use crate::fat::ChainReader;
use crate::Error;

/// A file inside the volume, opened for reading.
///
/// Reads follow the cluster chain (checked when the file was opened) straight from the raw
/// FAT, merging consecutive clusters into one container read. Use [`FileReader::copy_to`] for
/// large files (1 MiB buffer instead of `io::copy`'s 8 KiB).
pub struct FileReader<'a> {
    disk: &'a DataDisk,
    path: String,
    chain: ChainReader,
}

impl std::fmt::Debug for FileReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("path", &self.path)
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl FileReader<'_> {
    /// The file's size in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.chain.len()
    }
    /// True for an empty file.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.chain.len() == 0
    }
    /// The path it was opened with.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Copy the rest of the file to `out` in 1 MiB pieces; returns the bytes copied.
    ///
    /// # Errors
    /// Read errors (corrupt chain, container I/O) and `out`'s write errors.
    pub fn copy_to(&mut self, out: &mut dyn Write) -> io::Result<u64> {
        let size = usize::try_from(self.chain.remaining().min(1 << 20)).unwrap_or(1 << 20);
        let mut buf = vec![0u8; size];
        let mut total = 0u64;
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            out.write_all(buf.get(..n).unwrap_or_default())?;
            total += n as u64;
        }
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let disk = self.disk;
        let read = match disk.volume.lock() {
            Ok(mut v) => self.chain.read(&disk.boot, &mut v, buf),
            Err(e) => Err(e.into()),
        };
        read.map_err(|e| {
            let what = format!("file '{}'", self.path);
            disk.fat_error(e, &self.path, &what).into_io()
        })
    }
}

impl DataDisk {
    /// Open a file for streaming reads.
    ///
    /// # Errors
    /// [`Error::InvalidPath`], [`Error::NotFound`], [`Error::WrongKind`], [`Error::Corrupt`]
    /// for a cluster chain that leaves the volume or loops, [`Error::Fat`].
    pub fn open_file(&self, path: &str) -> Result<FileReader<'_>, Error> {
        let comps = components(path)?;
        let is_dir = || Error::WrongKind {
            path: path.to_owned(),
            found: "a directory",
            expected: "a file",
        };
        let Some((name, parents)) = comps.split_last() else {
            return Err(is_dir());
        };
        let loc = self.dir_at(parents, path)?;
        let entry = match self.find(loc, name, path)? {
            Some(e) if e.is_dir() => return Err(is_dir()),
            Some(e) => e,
            None => {
                return Err(Error::NotFound {
                    path: path.to_owned(),
                })
            }
        };
        let len = u64::from(entry.size);
        // Refuse a chain that leaves the volume or loops (a hostile disk) before reading it.
        let checked = match self.volume.lock() {
            Ok(mut v) => self.boot.check_chain(&mut v, entry.first_cluster, len),
            Err(e) => Err(e.into()),
        };
        checked.map_err(|e| self.fat_error(e, path, &format!("file '{path}'")))?;
        Ok(FileReader {
            disk: self,
            path: path.to_owned(),
            chain: ChainReader::new(entry.first_cluster, len),
        })
    }

    /// Kind and size of `path`, or `None` if it does not exist. The root is a directory.
    ///
    /// # Errors
    /// [`Error::InvalidPath`], [`Error::Fat`], or [`Error::WrongKind`] if a parent is a file.
    pub fn stat(&self, path: &str) -> Result<Option<DirEntryInfo>, Error> {
        let comps = components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            return Ok(Some(DirEntryInfo {
                name: String::new(),
                is_dir: true,
                size: 0,
                modified: 0,
            }));
        };
        let loc = match self.dir_at(parents, path) {
            Ok(loc) => loc,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(self.find(loc, name, path)?.map(|e| info_of(&e)))
    }

    /// List directory `dir` (`""` or `"/"` for the root), without `.` and `..`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::WrongKind`], [`Error::Corrupt`] for a looping
    /// directory, [`Error::Fat`].
    pub fn list(&self, dir: &str) -> Result<Vec<DirEntryInfo>, Error> {
        let comps = components(dir)?;
        let loc = self.dir_at(&comps, dir)?;
        let mut out = Vec::new();
        self.visit(loc, dir, &mut |e| {
            out.push(info_of(&e.entry()));
            true
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fat::VolumeRw;
    use crate::CreateOptions;

    /// The first cluster read from a file's raw directory entry holds the file's bytes.
    #[test]
    fn first_cluster_from_the_raw_entry_holds_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let disk = DataDisk::create(&img, &CreateOptions::new().size(16 << 20)).unwrap();
        disk.put_file("one", &mut &[1u8; 3000][..]).unwrap();
        disk.put_file("sub/two", &mut &[2u8; 100_000][..]).unwrap();
        for (path, byte) in [("one", 1u8), ("sub/two", 2)] {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let loc = disk.dir_at(&components(parent).unwrap(), path).unwrap();
            let e = disk.find(loc, name, path).unwrap().unwrap();
            assert!(e.first_cluster >= 2, "{path}: {}", e.first_cluster);
            let at = disk
                .boot
                .cluster_offset(u64::from(e.first_cluster))
                .unwrap();
            let mut head = [0u8; 16];
            disk.volume.lock().unwrap().read_at(at, &mut head).unwrap();
            assert_eq!(head, [byte; 16], "{path}");
        }
    }
}
