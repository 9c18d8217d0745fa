//! The write side of the file API: directories and files.
//!
//! `fatfs` creates every directory entry (long names, short-name tails, growing the
//! directory) and writes files up to [`SMALL_FILE`] bytes. Longer files go along a chain of
//! our own ([`ChainWriter`]) in pieces of up to 1 MiB, and their entry gets the first
//! cluster and size afterwards: `fatfs` would write one cluster per call with FAT lookups in
//! between.

use std::io::{self, Read, Write};

use super::entry::components;
use super::DataDisk;
use crate::fat::{ChainWriter, DirLoc};
use crate::Error;

/// Files up to this size are written through `fatfs`.
const SMALL_FILE: usize = 64 * 1024;
/// Bytes read from the source and written per step (a multiple of every cluster size).
const CHUNK: usize = 1024 * 1024;

/// Fill `buf` from `src` until it is full or the source ends.
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        match src.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl DataDisk {
    /// Create directory `path` and any missing parents.
    ///
    /// # Errors
    /// [`Error::InvalidPath`], [`Error::WrongKind`] if a component is a file, [`Error::ReadOnly`],
    /// [`Error::VolumeFull`] when there is no room, [`Error::Fat`] for other volume errors.
    pub fn create_dir_all(&self, path: &str) -> Result<(), Error> {
        let comps = components(path)?;
        self.create_dirs(&comps, path)
            .map(|_| ())
            .map_err(|e| self.naming_full(e, path))
    }

    /// Write a file from `src`, creating it (and missing parent directories) or truncating it.
    /// Returns the number of bytes written. Data is streamed, never held whole in memory.
    ///
    /// # Errors
    /// As [`DataDisk::create_dir_all`]; [`Error::VolumeFull`] (naming `path` and the volume's
    /// size) when the volume or the storage under the image has no room left;
    /// [`Error::LimitExceeded`] past FAT's 4 GiB - 1 file size; [`Error::Io`] when `src` fails.
    pub fn put_file(&self, path: &str, src: &mut dyn Read) -> Result<u64, Error> {
        self.put(path, src).map_err(|e| self.naming_full(e, path))
    }

    fn put(&self, path: &str, src: &mut dyn Read) -> Result<u64, Error> {
        let comps = components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            return Err(Error::InvalidPath {
                path: path.to_owned(),
                reason: "names the root directory",
            });
        };
        let (dir, loc) = self.create_dirs(parents, path)?;
        // fatfs's create_file scans the directory itself (opening or creating the entry); only
        // when it fails do we look again to give a precise error.
        let mut file = match self.fatfs(path, || dir.create_file(name)) {
            Ok(f) => f,
            Err(e) => {
                if let Ok(Some(found)) = self.find(loc, name, path) {
                    if found.is_dir() {
                        return Err(Error::WrongKind {
                            path: path.to_owned(),
                            found: "a directory",
                            expected: "a file",
                        });
                    }
                }
                return Err(e);
            }
        };
        let failed = |e| self.fatfs_failed(path, e);
        file.truncate().map_err(failed)?;
        // One byte more than SMALL_FILE tells a file of exactly SMALL_FILE from a longer one.
        let mut buf = vec![0u8; SMALL_FILE + 1];
        let n = fill(src, &mut buf).map_err(|e| Error::io("read the source for", path, e))?;
        buf.truncate(n);
        if n <= SMALL_FILE {
            file.write_all(&buf).map_err(failed)?;
            file.flush().map_err(failed)?;
            return Ok(n as u64);
        }
        // The fatfs handle must be gone first, or it would rewrite the entry when dropped.
        file.flush().map_err(failed)?;
        drop(file);
        self.write_chain(loc, name, path, buf, src)
    }

    /// Store `head` (already read from the source) plus the rest of `src` as the content of
    /// the empty file `name` in directory `loc`.
    fn write_chain(
        &self,
        loc: DirLoc,
        name: &str,
        path: &str,
        head: Vec<u8>,
        src: &mut dyn Read,
    ) -> Result<u64, Error> {
        let entry = self.find(loc, name, path)?.ok_or_else(|| Error::NotFound {
            path: path.to_owned(),
        })?;
        let mut chain = ChainWriter::new(self.alloc_hint.get());
        let appended = self.append_all(&mut chain, head, src, path);
        self.alloc_hint.set(chain.hint());
        let mut v = self.volume.lock().map_err(self.fat_err(path))?;
        if let Err(e) = appended {
            // Give the clusters back so a failed put leaves no lost chain behind.
            let _ = chain.abort(&self.boot, &mut v);
            return Err(e);
        }
        self.boot
            .set_entry_data(&mut v, entry.pos, chain.first_cluster(), chain.written())
            .map_err(self.fat_err(path))?;
        Ok(chain.written())
    }

    /// Append `head` and then all of `src` to `chain`, in pieces of [`CHUNK`] bytes.
    fn append_all(
        &self,
        chain: &mut ChainWriter,
        head: Vec<u8>,
        src: &mut dyn Read,
        path: &str,
    ) -> Result<(), Error> {
        let read_err = |e| Error::io("read the source for", path, e);
        let mut n = head.len();
        let mut buf = head;
        // Every piece but the last must be whole clusters: top the head up to a full chunk.
        buf.resize(CHUNK.max(n), 0);
        n += fill(src, buf.get_mut(n..).unwrap_or_default()).map_err(read_err)?;
        while n > 0 {
            let piece = buf.get(..n).unwrap_or_default();
            let appended = match self.volume.lock() {
                Ok(mut v) => chain.append(&self.boot, &mut v, piece),
                Err(e) => Err(e.into()),
            };
            appended.map_err(|e| self.fat_error(e, path, &format!("file '{path}'")))?;
            n = fill(src, &mut buf).map_err(read_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A reader that hands out at most 3 bytes per call and is interrupted now and then.
    struct Trickle<'a>(&'a [u8], u32);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1.is_multiple_of(5) {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let n = self.0.len().min(buf.len()).min(3);
            let (head, rest) = self.0.split_at(n);
            buf[..n].copy_from_slice(head);
            self.0 = rest;
            Ok(n)
        }
    }

    #[test]
    fn fill_collects_short_reads() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut buf = [0u8; 64];
        assert_eq!(fill(&mut Trickle(&data, 0), &mut buf).unwrap(), 64);
        assert_eq!(buf[..], data[..64]);
        let mut big = [0u8; 200];
        assert_eq!(fill(&mut Trickle(&data, 0), &mut big).unwrap(), 100);
    }
}
