//! Where the data-disk files live: a mounted directory or a FAT image read in user space.
//!
//! The agent only needs to read a few named files and write a few named files, so a data source
//! is a small trait; the job runner never sees which kind it is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The data disk's top-level files, whatever carries them.
pub trait DataSource {
    /// A short description for logs (`directory /condor-data`).
    fn describe(&self) -> String;

    /// Open a top-level file for reading; `Ok(None)` when it does not exist.
    fn open(&mut self, name: &str) -> Result<Option<Box<dyn Read + '_>>>;

    /// Create or replace a top-level file with everything `data` yields; returns the bytes
    /// written. Not necessarily durable before [`DataSource::sync`] or [`DataSource::finish`].
    fn put(&mut self, name: &str, data: &mut dyn Read) -> Result<u64>;

    /// Make everything put so far durable, so that what is put next cannot reach the disk
    /// before it (result.json must never exist without the files it describes).
    fn sync(&mut self) -> Result<()>;

    /// Free bytes on the data disk, for the message when the outputs do not fit (`None`:
    /// unknown). May be slow (it can read the whole FAT): only for failure paths.
    fn free_bytes(&mut self) -> Option<u64>;

    /// Make everything written durable (fsync, flush the file system); called once at the end.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A mounted data disk (the seed's `/condor-data`) or any plain directory (host tests).
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    /// Use `dir`, which must exist.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = fs::metadata(dir).with_context(|| format!("data dir {}", dir.display()))?;
        anyhow::ensure!(
            meta.is_dir(),
            "data dir {} is not a directory",
            dir.display()
        );
        Ok(DirSource {
            dir: dir.to_owned(),
        })
    }
}

impl DataSource for DirSource {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn open(&mut self, name: &str) -> Result<Option<Box<dyn Read + '_>>> {
        let path = self.dir.join(name);
        match File::open(&path) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
        }
    }

    fn put(&mut self, name: &str, data: &mut dyn Read) -> Result<u64> {
        let path = self.dir.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        io::copy(data, &mut file).with_context(|| format!("cannot write {}", path.display()))
    }

    fn sync(&mut self) -> Result<()> {
        // One syncfs instead of an fsync per file: on a vfat mount every fsync rewrites the FAT
        // and the directory, which made the seed's mounted mode ten times slower to finish.
        let dir = File::open(&self.dir)
            .with_context(|| format!("cannot open data dir {}", self.dir.display()))?;
        nix::unistd::syncfs(&dir)
            .with_context(|| format!("cannot sync the file system of {}", self.dir.display()))
    }

    fn free_bytes(&mut self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        // Both are u64 on the x86_64 guest and host.
        st.blocks_available().checked_mul(st.fragment_size())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.sync()
    }
}
