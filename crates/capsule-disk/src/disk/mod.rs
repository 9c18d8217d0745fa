//! [`DataDisk`]: container -> partition -> FAT volume, with a small file API.

mod entry;
mod options;
mod tar;
mod write;

pub use options::{CreateOptions, DirEntryInfo, DiskInfo, OpenOptions};
pub use tar::{TarStats, MAX_WALK_ENTRIES};

use entry::{components, first_cluster, info_of, names_equal, volume_id};

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::cache::{lock, Cache, SharedCache, VolumeIo};
use crate::container::{Access, Image};
use crate::fat::{self, FatKind};
use crate::partition::{self, Partition, TableKind};
use crate::Error;

type Fs = fatfs::FileSystem<VolumeIo>;
type FatDir<'a> = fatfs::Dir<'a, VolumeIo>;
type FatEntry<'a> = fatfs::DirEntry<'a, VolumeIo>;

/// A FAT directory holds at most 65536 32-byte entries (2 MiB); more means a cluster loop.
pub(crate) const MAX_DIR_ENTRIES: usize = 65_536;
/// Bytes of volume metadata one directory step may read before we call it a loop.
const METADATA_BUDGET: u64 = 8 * 1024 * 1024;
/// Files up to this size are written through fatfs; longer ones by `write.rs`.
const SMALL_FILE: usize = 64 * 1024;
/// Deepest directory nesting we walk (guards against directory loops).
pub const MAX_DEPTH: usize = 64;

/// A FAT data disk inside a container: create it, fill it, read it back.
///
/// The layers are container ([`Image`]) -> partition (MBR/GPT) -> FAT volume (`fatfs`). Paths
/// inside the volume use `/` as separator; leading `/` is optional; `..` is rejected. Call
/// [`DataDisk::finish`] after writing.
pub struct DataDisk {
    fs: Fs,
    cache: SharedCache,
    path: PathBuf,
    table: TableKind,
    partition: Partition,
    access: Access,
    boot: fat::BootInfo,
    /// Where the next cluster search starts (see `write.rs`).
    alloc_hint: std::cell::Cell<u64>,
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
        let volume = opts
            .size
            .checked_sub(opts.partition_offset)
            .filter(|v| *v >= fat::MIN_VOLUME);
        let Some(volume) = volume else {
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
        let kind = fat::fat_kind_for(volume);
        let volume_id = volume_id(&label, opts.size, path);
        let mbr =
            partition::build_mbr(opts.size, opts.partition_offset, kind.mbr_type(), volume_id)?;
        let format_opts = fat::format_options(volume, label, volume_id)?;
        let image = Image::create(path, opts.format, opts.size)?;
        let cache: SharedCache = Arc::new(Mutex::new(Cache::new(image.into_backend())));
        let wrap = |e| Error::io("write", path, e);
        lock(&cache)
            .and_then(|mut c| c.write_at(0, &mbr))
            .map_err(wrap)?;
        let io = VolumeIo::new(Arc::clone(&cache), opts.partition_offset, volume);
        fatfs::format_volume(io, format_opts)
            .map_err(|e| Error::io("format a FAT volume in", path, e))?;
        set_hidden_sectors(&cache, opts.partition_offset).map_err(wrap)?;
        let partition = Partition {
            index: 1,
            start: opts.partition_offset,
            size: volume,
            kind: partition::PartitionType::Mbr(kind.mbr_type()),
        };
        let mut boot = [0u8; 512];
        lock(&cache)
            .and_then(|mut c| c.read_at(opts.partition_offset, &mut boot))
            .map_err(|e| Error::io("read", path, e))?;
        let info = fat::check_boot_sector(&boot, volume, path, opts.partition_offset)?;
        if &label != b"NO NAME    " {
            write_label_entry(&cache, &info, opts.partition_offset, &label).map_err(wrap)?;
        }
        Self::mount(
            path,
            cache,
            TableKind::Mbr,
            partition,
            Access::ReadWrite,
            info,
        )
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
        let mut read_at = |off: u64, buf: &mut [u8]| lock(&cache)?.read_at(off, buf);
        let table = partition::read_table(&mut read_at, size, path)?;
        let mut is_fat = |p: &Partition| {
            let mut s = [0u8; 512];
            read_at(p.start, &mut s).is_ok() && partition::looks_like_fat_boot(&s)
        };
        let part = table.find_fat(opts.partition, size, path, &mut is_fat)?;
        let mut boot = [0u8; 512];
        read_at(part.start, &mut boot)
            .map_err(|e| Error::io("read the FAT boot sector of", path, e))?;
        let info = fat::check_boot_sector(&boot, part.size, path, part.start)?;
        let part = Partition {
            size: info.volume_bytes.min(part.size),
            ..part
        };
        Self::mount(path, cache, table.kind, part, opts.access, info)
    }

    fn mount(
        path: &Path,
        cache: SharedCache,
        table: TableKind,
        partition: Partition,
        access: Access,
        boot: fat::BootInfo,
    ) -> Result<DataDisk, Error> {
        let io = VolumeIo::new(Arc::clone(&cache), partition.start, partition.size);
        if let Some(root) = boot.root_cluster {
            let mut c = lock(&cache).map_err(|e| Error::io("read", path, e))?;
            let start = partition.start;
            boot.check_dir_chain(root, boot.cluster_size, &mut |off, buf| {
                c.read_at(start + off, buf)
            })
            .map_err(|detail| Error::Corrupt {
                path: path.to_owned(),
                what: "FAT directory",
                offset: start + boot.fat_offset,
                detail: format!("root directory: {detail}"),
            })?;
        }
        let fs = fatfs::FileSystem::new(io, fatfs::FsOptions::new())
            .map_err(|e| Error::io("mount the FAT volume of", path, e))?;
        Ok(DataDisk {
            fs,
            cache,
            path: path.to_owned(),
            table,
            partition,
            access,
            boot,
            alloc_hint: std::cell::Cell::new(2),
        })
    }

    /// The image file this disk lives in.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run a metadata operation with a read budget, so a looping directory chain fails instead
    /// of hanging inside `fatfs`.
    fn budgeted<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        set_budget(&self.cache, Some(METADATA_BUDGET))?;
        let r = f();
        set_budget(&self.cache, None)?;
        r
    }

    fn fat_err(&self, path: &str) -> impl Fn(io::Error) -> Error + '_ {
        let path = path.to_owned();
        move |e| {
            Error::from_io(e, |source| Error::Fat {
                path: path.clone(),
                source,
            })
        }
    }

    /// Find `name` in `dir` (case-insensitive, as FAT does), reading at most
    /// [`MAX_DIR_ENTRIES`] entries.
    fn find_in<'a>(
        &'a self,
        dir: &FatDir<'a>,
        name: &str,
        full: &str,
    ) -> Result<Option<FatEntry<'a>>, Error> {
        let mut found = None;
        self.for_each_entry(dir, full, |e| {
            if names_equal(&e.file_name(), name) || names_equal(&e.short_file_name(), name) {
                found = Some(e);
                return false;
            }
            true
        })?;
        Ok(found)
    }

    /// Visit the entries of `dir` (without `.`/`..`) until `f` returns false; bounded.
    fn for_each_entry<'a>(
        &'a self,
        dir: &FatDir<'a>,
        full: &str,
        mut f: impl FnMut(FatEntry<'a>) -> bool,
    ) -> Result<(), Error> {
        let mut iter = dir.iter();
        for _ in 0..=MAX_DIR_ENTRIES {
            let next = self
                .budgeted(|| iter.next().transpose())
                .map_err(self.fat_err(full))?;
            let Some(entry) = next else { return Ok(()) };
            let name = entry.short_file_name();
            if name == "." || name == ".." {
                continue;
            }
            if !f(entry) {
                return Ok(());
            }
        }
        Err(Error::LimitExceeded {
            path: full.to_owned(),
            what: "directory entry count",
            limit: MAX_DIR_ENTRIES as u64,
        })
    }

    /// Resolve the directory at `comps` (every component must exist and be a directory).
    fn dir_at<'a>(&'a self, comps: &[&str], full: &str) -> Result<FatDir<'a>, Error> {
        let mut dir = self.fs.root_dir();
        for (depth, c) in comps.iter().enumerate() {
            if depth >= MAX_DEPTH {
                return Err(Error::LimitExceeded {
                    path: full.to_owned(),
                    what: "directory depth",
                    limit: MAX_DEPTH as u64,
                });
            }
            match self.find_in(&dir, c, full)? {
                Some(e) if e.is_dir() => dir = self.enter(&e, full)?,
                Some(_) => {
                    return Err(Error::WrongKind {
                        path: full.to_owned(),
                        found: "a file",
                        expected: "a directory",
                    })
                }
                None => {
                    return Err(Error::NotFound {
                        path: full.to_owned(),
                    })
                }
            }
        }
        Ok(dir)
    }

    /// Create missing directories of `comps`; returns the last one and its first cluster
    /// (None for the root).
    fn create_dirs<'a>(
        &'a self,
        comps: &[&str],
        full: &str,
    ) -> Result<(FatDir<'a>, Option<u32>), Error> {
        self.writable()?;
        let mut dir = self.fs.root_dir();
        let mut cluster = None;
        for (depth, c) in comps.iter().enumerate() {
            if depth >= MAX_DEPTH {
                return Err(Error::LimitExceeded {
                    path: full.to_owned(),
                    what: "directory depth",
                    limit: MAX_DEPTH as u64,
                });
            }
            dir = match self.find_in(&dir, c, full)? {
                Some(e) if e.is_dir() => {
                    cluster = Some(first_cluster(&e));
                    self.enter(&e, full)?
                }
                Some(_) => {
                    return Err(Error::WrongKind {
                        path: full.to_owned(),
                        found: "a file",
                        expected: "a directory",
                    })
                }
                None => {
                    let (d, at) = self
                        .make_dir(&dir, c, depth == 0)
                        .map_err(self.fat_err(full))?;
                    // A directory cluster lies in the data area; anything else is a bug we
                    // report rather than a subtraction that could wrap.
                    let rel = at
                        .checked_sub(self.partition.start + self.boot.data_offset)
                        .ok_or_else(|| {
                            self.fat_err(full)(io::Error::other(
                                "new directory cluster outside the data area",
                            ))
                        })?;
                    cluster = u32::try_from(rel / self.boot.cluster_size + 2).ok();
                    d
                }
            };
        }
        Ok((dir, cluster))
    }

    /// `fatfs` 0.3.6 writes long-name entries in front of a new directory's `.` and `..`, which
    /// `fsck.fat` rejects, and points `..` at the root's cluster on FAT32 where the spec wants
    /// 0. Create the directory, then rewrite its first four entries as plain `.` and `..`.
    fn make_dir<'a>(
        &'a self,
        parent: &FatDir<'a>,
        name: &str,
        parent_is_root: bool,
    ) -> io::Result<(FatDir<'a>, u64)> {
        lock(&self.cache)?.watch_zero_write(true);
        let made = self.budgeted(|| parent.create_dir(name));
        let cluster_at = lock(&self.cache)?.watch_zero_write(false);
        let dir = made?;
        let Some(at) = cluster_at else {
            return Err(io::Error::other(
                "cannot locate the new directory's cluster",
            ));
        };
        let mut cache = lock(&self.cache)?;
        let mut head = [0u8; 128];
        cache.read_at(at, &mut head)?;
        let dot = head.get(32..64).map(<[u8]>::to_vec).unwrap_or_default();
        let dotdot = head.get(96..128).map(<[u8]>::to_vec).unwrap_or_default();
        if head[11] == 0x0f && dot.starts_with(b".          ") && dotdot.starts_with(b"..         ")
        {
            let mut fixed = [0u8; 128];
            fixed[..32].copy_from_slice(&dot);
            fixed[32..64].copy_from_slice(&dotdot);
            if parent_is_root {
                // first cluster high (20..22) and low (26..28) words of '..'
                fixed[32 + 20..32 + 22].fill(0);
                fixed[32 + 26..32 + 28].fill(0);
            }
            cache.write_at(at, &fixed)?;
        }
        Ok((dir, at))
    }

    fn writable(&self) -> Result<(), Error> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Error::ReadOnly {
                path: self.path.clone(),
            }),
        }
    }

    /// Create directory `path` and any missing parents.
    ///
    /// # Errors
    /// [`Error::InvalidPath`], [`Error::WrongKind`] if a component is a file, [`Error::ReadOnly`],
    /// [`Error::Fat`] for volume errors (e.g. full).
    pub fn create_dir_all(&self, path: &str) -> Result<(), Error> {
        let comps = components(path)?;
        self.create_dirs(&comps, path).map(|_| ())
    }

    /// Write a file from `src`, creating it (and missing parent directories) or truncating it.
    /// Returns the number of bytes written. Data is streamed, never held whole in memory.
    ///
    /// # Errors
    /// As [`DataDisk::create_dir_all`]; [`Error::Fat`] when the volume is full or the file
    /// exceeds FAT's 4 GiB - 1 limit; [`Error::Io`] when `src` fails.
    pub fn put_file(&self, path: &str, src: &mut dyn Read) -> Result<u64, Error> {
        let comps = components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            return Err(Error::InvalidPath {
                path: path.to_owned(),
                reason: "names the root directory",
            });
        };
        let (dir, dir_cluster) = self.create_dirs(parents, path)?;
        // fatfs's create_file scans the directory itself (opening or creating the entry); only
        // when it fails do we look again to give a precise error.
        let mut file = match self.budgeted(|| dir.create_file(name)) {
            Ok(f) => f,
            Err(e) => {
                if let Ok(Some(found)) = self.find_in(&dir, name, path) {
                    if found.is_dir() {
                        return Err(Error::WrongKind {
                            path: path.to_owned(),
                            found: "a directory",
                            expected: "a file",
                        });
                    }
                }
                return Err(self.fat_err(path)(e));
            }
        };
        file.truncate().map_err(self.fat_err(path))?;
        // One byte more than SMALL_FILE tells a file of exactly SMALL_FILE from a longer one.
        let mut buf = vec![0u8; SMALL_FILE + 1];
        let n =
            write::fill(src, &mut buf).map_err(|e| Error::io("read the source for", path, e))?;
        if n <= SMALL_FILE {
            // Small files go through fatfs: one or a few clusters, no extra directory lookup.
            file.write_all(buf.get(..n).unwrap_or_default())
                .map_err(self.fat_err(path))?;
            file.flush().map_err(self.fat_err(path))?;
            return Ok(n as u64);
        }
        // Larger files: chain clusters ourselves and write big pieces (see write.rs). The
        // fatfs handle must be gone first, or it would rewrite the entry when dropped.
        file.flush().map_err(self.fat_err(path))?;
        drop(file);
        buf.truncate(n);
        self.write_data(&dir, dir_cluster, name, path, buf, src)
    }

    /// Open a file for streaming reads.
    ///
    /// # Errors
    /// [`Error::InvalidPath`], [`Error::NotFound`], [`Error::WrongKind`], [`Error::Fat`].
    pub fn open_file(&self, path: &str) -> Result<FileReader<'_>, Error> {
        let comps = components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            return Err(Error::WrongKind {
                path: path.to_owned(),
                found: "a directory",
                expected: "a file",
            });
        };
        let dir = self.dir_at(parents, path)?;
        match self.find_in(&dir, name, path)? {
            Some(e) if e.is_file() => {
                self.check_chain(&e, path)?;
                Ok(FileReader {
                    disk: self,
                    len: e.len(),
                    path: path.to_owned(),
                    pos: 0,
                    cluster: u64::from(first_cluster(&e)),
                })
            }
            Some(_) => Err(Error::WrongKind {
                path: path.to_owned(),
                found: "a directory",
                expected: "a file",
            }),
            None => Err(Error::NotFound {
                path: path.to_owned(),
            }),
        }
    }

    /// Open a subdirectory after checking its cluster chain: `fatfs` would otherwise compute
    /// offsets from out-of-range cluster numbers (an arithmetic overflow) or follow a loop.
    fn enter<'a>(&'a self, e: &FatEntry<'a>, path: &str) -> Result<FatDir<'a>, Error> {
        let first = first_cluster(e);
        let start = self.partition.start;
        let cs = u64::from(self.fs.cluster_size());
        let mut cache = lock(&self.cache).map_err(self.fat_err(path))?;
        self.boot
            .check_dir_chain(first, cs, &mut |off, buf| cache.read_at(start + off, buf))
            .map_err(|detail| Error::Corrupt {
                path: self.path.clone(),
                what: "FAT directory",
                offset: start + self.boot.fat_offset,
                detail: format!("directory '{path}': {detail}"),
            })?;
        Ok(e.to_dir())
    }

    /// Refuse a file whose cluster chain leaves the volume or loops (a hostile disk).
    fn check_chain(&self, e: &FatEntry<'_>, path: &str) -> Result<(), Error> {
        let first = first_cluster(e);
        let cs = u64::from(self.fs.cluster_size());
        let start = self.partition.start;
        let mut cache = lock(&self.cache).map_err(self.fat_err(path))?;
        self.boot
            .check_chain(first, e.len(), cs, &mut |off, buf| {
                cache.read_at(start + off, buf)
            })
            .map_err(|detail| Error::Corrupt {
                path: self.path.clone(),
                what: "FAT cluster chain",
                offset: start + self.boot.fat_offset,
                detail: format!("file '{path}': {detail}"),
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
        let dir = match self.dir_at(parents, path) {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(self.find_in(&dir, name, path)?.map(|e| info_of(&e)))
    }

    /// List directory `dir` (`""` or `"/"` for the root), without `.` and `..`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::WrongKind`], [`Error::LimitExceeded`] for a looping
    /// directory, [`Error::Fat`].
    pub fn list(&self, dir: &str) -> Result<Vec<DirEntryInfo>, Error> {
        let comps = components(dir)?;
        let d = self.dir_at(&comps, dir)?;
        let mut out = Vec::new();
        self.for_each_entry(&d, dir, |e| {
            out.push(info_of(&e));
            true
        })?;
        Ok(out)
    }

    /// Describe the disk: container, partition, FAT type, label, capacity and free space.
    ///
    /// # Errors
    /// [`Error::Fat`] if the FAT cannot be read to count free clusters.
    pub fn info(&self) -> Result<DiskInfo, Error> {
        let cs = u64::from(self.fs.cluster_size());
        let start = self.partition.start;
        let free_clusters = match self.boot.kind {
            FatKind::Fat12 => {
                u64::from(self.fs.stats().map_err(self.fat_err("/"))?.free_clusters())
            }
            _ => {
                let mut cache = lock(&self.cache).map_err(self.fat_err("/"))?;
                self.boot
                    .count_free(&mut |off, buf| cache.read_at(start + off, buf))
                    .map_err(self.fat_err("/"))?
            }
        };
        let container = lock(&self.cache)
            .map_err(self.fat_err("/"))?
            .backend()
            .info();
        Ok(DiskInfo {
            container,
            table: self.table,
            partition: self.partition.clone(),
            fat: self.fs.fat_type().into(),
            label: self.fs.volume_label().trim_end().to_owned(),
            volume_id: self.fs.volume_id(),
            cluster_size: self.fs.cluster_size(),
            capacity: self.boot.clusters * cs,
            free: free_clusters * cs,
        })
    }

    /// Flush the FAT and the container metadata and close the disk, reporting any error.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Fat`] when a write fails.
    pub fn finish(self) -> Result<(), Error> {
        let DataDisk {
            fs,
            cache,
            path,
            access,
            boot,
            partition,
            alloc_hint,
            ..
        } = self;
        if access == Access::ReadOnly {
            return Ok(());
        }
        fs.unmount()
            .map_err(|e| Error::io("unmount the FAT volume of", &path, e))?;
        let mut c = lock(&cache).map_err(|e| Error::io("write", &path, e))?;
        update_fs_info(&boot, partition.start, alloc_hint.get(), &mut c)
            .map_err(|e| Error::io("update the FSInfo sector of", &path, e))?;
        c.flush_all().map_err(|e| Error::io("write", &path, e))
    }
}

/// Put the volume label into the root directory too (fatfs 0.3.6 writes it only in the boot
/// sector; Windows and `mlabel -s` read the root-directory entry). The root is empty right
/// after formatting, so the entry takes its first slot.
fn write_label_entry(
    cache: &SharedCache,
    boot: &fat::BootInfo,
    start: u64,
    label: &[u8; 11],
) -> io::Result<()> {
    let root = match boot.root_cluster {
        Some(c) => boot.data_offset + (u64::from(c).saturating_sub(2)) * boot.cluster_size,
        None => boot.root_offset,
    };
    let mut entry = [0u8; 32];
    entry[..11].copy_from_slice(label);
    entry[11] = 0x08; // ATTR_VOLUME_ID
    lock(cache)?.write_at(start + root, &entry)
}

/// Record the partition's start sector in the boot sector's "hidden sectors" field (and in the
/// FAT32 backup boot sector), as `mkfs.vfat --offset` does; fatfs writes 0, which some
/// operating systems (Windows) use to locate the volume.
fn set_hidden_sectors(cache: &SharedCache, start: u64) -> io::Result<()> {
    let hidden = u32::try_from(start / 512)
        .map_err(io::Error::other)?
        .to_le_bytes();
    let mut c = lock(cache)?;
    c.write_at(start + 28, &hidden)?;
    let mut b = [0u8; 90];
    c.read_at(start, &mut b)?;
    let is_fat32 = u16::from_le_bytes([b[22], b[23]]) == 0;
    let backup = u64::from(u16::from_le_bytes([b[50], b[51]]));
    if is_fat32 && backup != 0 && backup != 0xffff {
        c.write_at(start + backup * 512 + 28, &hidden)?;
    }
    Ok(())
}

/// FAT32: write the true free-cluster count and a next-free hint into the FSInfo sector.
/// Clusters allocated by `write.rs` bypass fatfs's bookkeeping, so its count would be stale.
fn update_fs_info(
    boot: &fat::BootInfo,
    start: u64,
    hint: u64,
    cache: &mut Cache,
) -> io::Result<()> {
    let Some(at) = boot.fs_info_offset else {
        return Ok(());
    };
    if hint == 2 {
        return Ok(()); // write.rs allocated nothing: fatfs's own bookkeeping is right
    }
    let mut sig = [0u8; 4];
    cache.read_at(start + at, &mut sig)?;
    let mut sig2 = [0u8; 4];
    cache.read_at(start + at + 484, &mut sig2)?;
    if sig != *b"RRaA" || sig2 != *b"rrAa" {
        return Ok(()); // no valid FSInfo sector: leave it alone
    }
    let free = boot.count_free(&mut |off, buf| cache.read_at(start + off, buf))?;
    let mut fields = [0u8; 8];
    fields[..4].copy_from_slice(&u32::try_from(free).unwrap_or(u32::MAX).to_le_bytes());
    let next = if boot.is_valid_cluster(hint) {
        hint
    } else {
        0xffff_ffff
    };
    fields[4..].copy_from_slice(&u32::try_from(next).unwrap_or(u32::MAX).to_le_bytes());
    cache.write_at(start + at + 488, &fields)
}

fn set_budget(cache: &SharedCache, budget: Option<u64>) -> io::Result<()> {
    lock(cache)?.set_read_budget(budget);
    Ok(())
}

/// A file inside the volume, opened for reading.
///
/// Reads bypass `fatfs`: the cluster chain was checked when the file was opened, and each
/// `read` follows it directly, merging consecutive clusters into one container read. Use
/// [`FileReader::copy_to`] for large files (1 MiB buffer instead of `io::copy`'s 8 KiB).
pub struct FileReader<'a> {
    disk: &'a DataDisk,
    len: u64,
    path: String,
    pos: u64,
    /// Cluster holding byte `pos` (meaningful while `pos < len`).
    cluster: u64,
}

impl std::fmt::Debug for FileReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl FileReader<'_> {
    /// The file's size in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True for an empty file.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        let mut buf = vec![
            0u8;
            usize::try_from(self.len.saturating_sub(self.pos).min(1 << 20))
                .unwrap_or(1 << 20)
        ];
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

    fn bad_link(&self, from: u64, to: u64) -> io::Error {
        Error::Corrupt {
            path: self.disk.path.clone(),
            what: "FAT cluster chain",
            offset: self.disk.partition.start + self.disk.boot.fat_offset,
            detail: format!(
                "file '{}': cluster {from} links to {to:#x}, outside the volume",
                self.path
            ),
        }
        .into_io()
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let boot = self.disk.boot;
        let cs = boot.cluster_size;
        let start = self.disk.partition.start;
        let mut cache = lock(&self.disk.cache)?;
        let fat = |cache: &mut Cache, c: u64| {
            boot.fat_entry(c, &mut |off, b| cache.read_at(start + off, b))
        };
        if !boot.is_valid_cluster(self.cluster) {
            return Err(self.bad_link(self.cluster, self.cluster));
        }
        // Extend the run over physically consecutive clusters, up to `want` bytes.
        let in_cluster = self.pos % cs;
        let mut run = cs - in_cluster;
        let mut last = self.cluster;
        let mut after = None;
        while run < want as u64 {
            let next = fat(&mut cache, last)?;
            if next != last + 1 || !boot.is_valid_cluster(next) {
                after = Some(next);
                break;
            }
            last = next;
            run += cs;
        }
        let n = usize::try_from(run.min(want as u64)).map_err(io::Error::other)?;
        let off = start + boot.data_offset + (self.cluster - 2) * cs + in_cluster;
        let (head, _) = buf.split_at_mut(n);
        cache.read_at(off, head)?;
        self.pos += n as u64;
        // Position on the cluster holding the new `pos`.
        let consumed = in_cluster + n as u64;
        let whole = consumed / cs; // clusters finished, counting from self.cluster
        if whole > 0 && self.pos < self.len {
            // The last finished cluster is `self.cluster + whole - 1` (the run is consecutive).
            let done = self.cluster + whole - 1;
            let next = match after {
                Some(a) if done == last => a,
                _ if done < last => done + 1,
                _ => fat(&mut cache, done)?,
            };
            if !boot.is_valid_cluster(next) {
                drop(cache);
                return Err(self.bad_link(done, next));
            }
            self.cluster = next;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Guards `first_cluster`: the cluster it reports must hold the file's bytes.
    #[test]
    fn first_cluster_is_read_from_debug() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let disk = DataDisk::create(&img, &CreateOptions::new().size(16 << 20)).unwrap();
        disk.put_file("one", &mut &[1u8; 3000][..]).unwrap();
        disk.put_file("two", &mut &[2u8; 3000][..]).unwrap();
        let root = disk.fs.root_dir();
        let e = disk.find_in(&root, "two", "two").unwrap().unwrap();
        let c = first_cluster(&e);
        assert!(c >= 3, "{c}");
        let cs = u64::from(disk.fs.cluster_size());
        let start = disk.partition.start;
        // Data area start = FAT start + FAT sizes + root directory; find it through "one".
        let one = first_cluster(&disk.find_in(&root, "one", "one").unwrap().unwrap());
        let mut found = [0u8; 16];
        let data_start = (0..start + (64 << 20))
            .step_by(512)
            .find(|off| {
                let mut b = [0u8; 16];
                lock(&disk.cache)
                    .unwrap()
                    .read_at(start + off, &mut b)
                    .is_ok()
                    && b == [1u8; 16]
            })
            .unwrap()
            - u64::from(one - 2) * cs;
        lock(&disk.cache)
            .unwrap()
            .read_at(start + data_start + u64::from(c - 2) * cs, &mut found)
            .unwrap();
        assert_eq!(found, [2u8; 16]);
    }
}
