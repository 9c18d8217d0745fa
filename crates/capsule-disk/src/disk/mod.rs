//! [`DataDisk`]: container -> partition -> FAT volume, with a small file API.
//!
//! This layer knows paths, files and errors for the user; FAT's on-disk structures belong to
//! [`crate::fat`], and where the volume lies on the disk to [`crate::slice`].

#[cfg(test)]
mod crosscheck;
mod entry;
mod lookup;
mod options;
mod read;
mod tar;
mod write;

pub use options::{CreateOptions, DirEntryInfo, DiskInfo, OpenOptions};
pub use read::FileReader;
pub use tar::{TarStats, MAX_WALK_ENTRIES};

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::cache::{lock, Cache, SharedCache};
use crate::container::{Access, Image};
use crate::fat::{self, BootInfo, FatError, VolumeRw};
use crate::partition::{self, Partition, TableKind};
use crate::slice::{Bounds, PartitionSlice, Volume};
use crate::Error;

type Fs = fatfs::FileSystem<PartitionSlice>;
type FatDir<'a> = fatfs::Dir<'a, PartitionSlice>;

/// Deepest directory nesting we walk (guards against directory loops).
pub const MAX_DEPTH: usize = 64;

/// A FAT data disk inside a container: create it, fill it, read it back.
///
/// The layers are container ([`Image`]) -> partition (MBR/GPT) -> FAT volume. Paths inside
/// the volume use `/` as separator; leading `/` is optional; `..` is rejected. Call
/// [`DataDisk::finish`] after writing.
pub struct DataDisk {
    /// `fatfs` formats the volume and creates directory entries and small files.
    fs: Fs,
    /// The volume's bytes, for everything read and for large files.
    volume: Volume,
    path: PathBuf,
    table: TableKind,
    partition: Partition,
    access: Access,
    boot: BootInfo,
    /// Where the next free-cluster search for a large file starts.
    alloc_hint: Cell<u64>,
}

impl std::fmt::Debug for DataDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDisk")
            .field("path", &self.path)
            .field("table", &self.table)
            .field("partition", &self.partition)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl DataDisk {
    /// Create a new image at `path` holding an MBR with one FAT partition, formatted.
    ///
    /// Work and file size are O(metadata): the image stays sparse.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad size, offset or label; [`Error::Io`] when the file
    /// cannot be created or written.
    pub fn create(path: &Path, opts: &CreateOptions) -> Result<DataDisk, Error> {
        let label = fat::label_bytes(&opts.label)?;
        let volume_bytes = opts
            .size
            .checked_sub(opts.partition_offset)
            .filter(|v| *v >= fat::MIN_VOLUME);
        let Some(volume_bytes) = volume_bytes else {
            return Err(Error::InvalidArgument {
                what: "size",
                value: opts.size.to_string(),
                reason: format!(
                    "must exceed the partition offset {} by at least {} bytes",
                    opts.partition_offset,
                    fat::MIN_VOLUME
                ),
            });
        };
        let kind = fat::fat_kind_for(volume_bytes);
        let volume_id = entry::volume_id(&label, opts.size, path);
        let mbr =
            partition::build_mbr(opts.size, opts.partition_offset, kind.mbr_type(), volume_id)?;
        let format_opts = fat::format_options(volume_bytes, label, volume_id)?;
        // build_mbr checked that the start sector fits the MBR's 32-bit field.
        let hidden = u32::try_from(opts.partition_offset / partition::SECTOR).unwrap_or(u32::MAX);
        let image = Image::create(path, opts.format, opts.size)?;
        let cache: SharedCache = Arc::new(Mutex::new(Cache::new(image.into_backend())));
        let wrap = |e| Error::io("write", path, e);
        lock(&cache)
            .and_then(|mut c| c.write_at(0, &mbr))
            .map_err(wrap)?;
        let volume = Volume::new(cache, Bounds::new(opts.partition_offset, volume_bytes));
        fatfs::format_volume(volume.slice(), format_opts)
            .map_err(|e| Error::io("format a FAT volume in", path, e))?;
        let boot = read_boot(&volume, path)?;
        {
            let mut v = volume.lock().map_err(wrap)?;
            fat::hidden_sectors(&boot, &mut v, hidden).map_err(wrap)?;
            if &label != b"NO NAME    " {
                fat::label_entry(&boot, &mut v, &label).map_err(wrap)?;
            }
        }
        let partition = Partition {
            index: 1,
            start: opts.partition_offset,
            size: volume_bytes,
            kind: partition::PartitionType::Mbr(kind.mbr_type()),
        };
        let table = TableKind::Mbr;
        Self::mount(path, volume, table, partition, Access::ReadWrite, boot)
    }

    /// Open an existing data disk (image file or block device); the format comes from content.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Corrupt`], [`Error::Unsupported`], [`Error::NoFatPartition`],
    /// [`Error::PartitionOutOfBounds`].
    pub fn open(path: &Path, access: Access) -> Result<DataDisk, Error> {
        Self::open_with(path, &OpenOptions::new().access(access))
    }

    /// Open with explicit options (forced format, partition index).
    ///
    /// # Errors
    /// As [`DataDisk::open`].
    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<DataDisk, Error> {
        let image = Image::open_as(path, opts.access, opts.format)?;
        let size = image.virtual_size();
        let cache: SharedCache = Arc::new(Mutex::new(Cache::new(image.into_backend())));
        let volume_of =
            |p: &Partition| Volume::new(Arc::clone(&cache), Bounds::new(p.start, p.size));
        let mut read_at = |off: u64, buf: &mut [u8]| lock(&cache)?.read_at(off, buf);
        let table = partition::read_table(&mut read_at, size, path)?;
        let mut is_fat = |p: &Partition| {
            let mut s = [0u8; 512];
            let volume = volume_of(p);
            let read = volume.lock().and_then(|mut v| v.read_at(0, &mut s));
            read.is_ok() && partition::looks_like_fat_boot(&s)
        };
        let part = table.find_fat(opts.partition, size, path, &mut is_fat)?;
        let boot = read_boot(&volume_of(&part), path)?;
        let part = Partition {
            size: boot.volume_bytes.min(part.size),
            ..part
        };
        let volume = volume_of(&part);
        Self::mount(path, volume, table.kind, part, opts.access, boot)
    }

    fn mount(
        path: &Path,
        volume: Volume,
        table: TableKind,
        partition: Partition,
        access: Access,
        boot: BootInfo,
    ) -> Result<DataDisk, Error> {
        if let Some(root) = boot.root_cluster {
            let checked = match volume.lock() {
                Ok(mut v) => boot.check_dir_chain(&mut v, root),
                Err(e) => Err(FatError::Io(e)),
            };
            let site = Site::new(path, &volume, &boot);
            checked.map_err(|e| site.error(e, "/", "root directory"))?;
        }
        let fs = fatfs::FileSystem::new(volume.slice(), fatfs::FsOptions::new())
            .map_err(|e| Error::io("mount the FAT volume of", path, e))?;
        Ok(DataDisk {
            fs,
            volume,
            path: path.to_owned(),
            table,
            partition,
            access,
            boot,
            alloc_hint: Cell::new(2),
        })
    }

    /// The image file this disk lives in.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Describe the disk: container, partition, FAT type, label, capacity and free space.
    ///
    /// # Errors
    /// [`Error::Fat`] if the FAT cannot be read to count free clusters.
    pub fn info(&self) -> Result<DiskInfo, Error> {
        let free_clusters = {
            let mut v = self.volume.lock().map_err(self.fat_err("/"))?;
            self.boot.count_free(&mut v).map_err(self.fat_err("/"))?
        };
        let container = lock(self.volume.cache())
            .map_err(self.fat_err("/"))?
            .backend()
            .info();
        Ok(DiskInfo {
            container,
            table: self.table,
            partition: self.partition.clone(),
            fat: self.boot.kind,
            label: self.fs.volume_label().trim_end().to_owned(),
            volume_id: self.fs.volume_id(),
            cluster_size: self.fs.cluster_size(),
            capacity: self.boot.capacity(),
            free: free_clusters * self.boot.cluster_size,
        })
    }

    /// Flush the FAT and the container metadata and close the disk, reporting any error.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Fat`] when a write fails.
    pub fn finish(self) -> Result<(), Error> {
        let DataDisk {
            fs,
            volume,
            path,
            access,
            boot,
            alloc_hint,
            ..
        } = self;
        if access == Access::ReadOnly {
            return Ok(());
        }
        fs.unmount()
            .map_err(|e| Error::io("unmount the FAT volume of", &path, e))?;
        volume
            .lock()
            .and_then(|mut v| fat::fs_info(&boot, &mut v, alloc_hint.get()))
            .map_err(|e| Error::io("update the FSInfo sector of", &path, e))?;
        lock(volume.cache())
            .and_then(|mut c| c.flush_all())
            .map_err(|e| Error::io("write", &path, e))
    }

    fn writable(&self) -> Result<(), Error> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Error::ReadOnly {
                path: self.path.clone(),
            }),
        }
    }

    /// An I/O failure while working on `path` inside the volume.
    fn fat_err(&self, path: &str) -> impl Fn(io::Error) -> Error + '_ {
        let path = path.to_owned();
        move |e| {
            Error::from_io(e, |source| Error::Fat {
                path: path.clone(),
                source,
            })
        }
    }

    /// A FAT-layer error while working on `path`; `what` ("file 'x'") prefixes corruption.
    fn fat_error(&self, e: FatError, path: &str, what: &str) -> Error {
        Site::new(&self.path, &self.volume, &self.boot).error(e, path, what)
    }

    /// A no-room error (from the volume, or from the storage under it) as
    /// [`Error::VolumeFull`] naming `path`; anything else unchanged.
    fn naming_full(&self, e: Error, path: &str) -> Error {
        e.naming_full(&self.path, path, self.boot.capacity())
    }
}

/// Where a FAT-layer error happened: enough to turn it into an [`Error`] for the user.
struct Site<'a> {
    image: &'a Path,
    bounds: Bounds,
    capacity: u64,
}

impl<'a> Site<'a> {
    fn new(image: &'a Path, volume: &Volume, boot: &BootInfo) -> Self {
        Site {
            image,
            bounds: volume.bounds(),
            capacity: boot.capacity(),
        }
    }

    /// `e`, met while working on `path` inside the volume; `what` ("file 'x'", "root
    /// directory") prefixes the detail of a corruption.
    fn error(&self, e: FatError, path: &str, what: &str) -> Error {
        match e {
            FatError::Io(e) => Error::from_io(e, |source| Error::Fat {
                path: path.to_owned(),
                source,
            }),
            FatError::Corrupt {
                what: structure,
                offset,
                detail,
            } => Error::Corrupt {
                path: self.image.to_owned(),
                what: structure,
                offset: self.bounds.position(offset),
                detail: if what.is_empty() {
                    detail
                } else {
                    format!("{what}: {detail}")
                },
            },
            FatError::Full => Error::VolumeFull {
                image: self.image.to_owned(),
                path: path.to_owned(),
                capacity: self.capacity,
                source: None,
            },
            FatError::FileTooLarge => Error::LimitExceeded {
                path: path.to_owned(),
                what: "FAT file size",
                limit: fat::MAX_FILE_SIZE,
            },
        }
    }
}

/// Read and check the boot sector of `volume`.
fn read_boot(volume: &Volume, image: &Path) -> Result<BootInfo, Error> {
    let mut sector = [0u8; 512];
    volume
        .lock()
        .and_then(|mut v| v.read_at(0, &mut sector))
        .map_err(|e| Error::io("read the FAT boot sector of", image, e))?;
    BootInfo::parse(&sector, volume.bounds().len()).map_err(|e| {
        let site = Site {
            image,
            bounds: volume.bounds(),
            capacity: 0,
        };
        site.error(e, "/", "")
    })
}
