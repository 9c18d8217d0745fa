//! FAT data disks inside raw, VMDK and qcow2 images, created, filled and read in user space
//! (no `qemu-img`, no `mtools`, no mounting).
//!
//! Layers, each its own module with bounds-checked parsing of untrusted bytes:
//!
//! 1. **container** ([`Image`]): a `Read + Write + Seek` view of the virtual disk in a raw file
//!    or block device, a VMDK, or a qcow2 file; format detected from the magic bytes.
//! 2. **partition** ([`partition`]): MBR or GPT, or none (superfloppy); the first FAT-typed
//!    partition is used unless an index is given.
//! 3. **FAT volume** ([`fat`]): the one owner of FAT's on-disk structures (boot sector, FAT,
//!    raw directory entries, file data along cluster chains, the fixes applied behind the
//!    `fatfs` crate, which formats volumes and creates entries). It works on partition-relative
//!    offsets only; the partition's place on the disk is added in one place (`slice`), over a
//!    small write-back cache.
//! 4. **file API** ([`DataDisk`]): create directories, put/get/list files, tar in and out.
//!
//! Entry points for other crates (all on [`DataDisk`] unless noted):
//!
//! | call | what it does |
//! |---|---|
//! | `DataDisk::create(path, &CreateOptions)` | new sparse image: MBR, one FAT partition at `partition_offset` (default 1 MiB), formatted (FAT type by size as `mkfs.vfat`), label `CONDORDATA` |
//! | `DataDisk::open(path, Access)` / `open_with(path, &OpenOptions)` | image file or block device; format from content; first FAT partition (MBR or GPT) or a given index |
//! | `create_dir_all(path)`, `put_file(path, &mut dyn Read) -> u64` | write side; `put_file` creates parents and truncates an existing file; no room is [`Error::VolumeFull`] ([`Error::is_volume_full`]) |
//! | `open_file(path) -> FileReader` (`Read`, `copy_to`), `stat`, `list`, `walk` | read side, bounded against hostile disks |
//! | `tar_in(dir, &mut dyn Read)`, `tar_out(dir, &mut dyn Write)` | streaming tar in and out |
//! | `info()` | container, chain, partition, FAT type, label, capacity, free |
//! | `finish(self)` | flush FAT and container metadata; report errors (read-only: no-op) |
//! | [`Image`] | the container alone, as `Read + Write + Seek` (`open`, `create`, `info`, `finish`); `open_file` with a [`Resolver`] deciding which files it may name |
//! | [`detect`], [`parse_size`] | format from magic bytes; `512M`/`4G` sizes |
//!
//! ```no_run
//! use capsule_disk::{Access, CreateOptions, DataDisk, ImageFormat};
//! # fn main() -> Result<(), capsule_disk::Error> {
//! let path = std::path::Path::new("data.img");
//! let disk = DataDisk::create(path, &CreateOptions::new().size(64 << 20).format(ImageFormat::Raw))?;
//! disk.create_dir_all("job/in")?;
//! disk.put_file("job/in/hello.txt", &mut &b"hello"[..])?;
//! disk.finish()?;
//!
//! let disk = DataDisk::open(path, Access::ReadOnly)?;
//! for entry in disk.list("job/in")? {
//!     println!("{} {} {}", entry.name, entry.is_dir, entry.size);
//! }
//! let mut text = Vec::new();
//! disk.open_file("job/in/hello.txt")?.copy_to(&mut text).ok();
//! disk.tar_out("job", &mut std::io::sink())?;
//! # Ok(()) }
//! ```
//!
//! # Security
//! A disk returned by a guest is hostile input. Parsers check every offset and size with checked
//! arithmetic, cap table and directory sizes before allocating, bound directory walks (entry
//! count, depth, bytes read per step) so loops end in an error, and never follow symlinks on the
//! host. Nothing is ever mounted.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

mod bytes;
mod cache;
mod container;
mod disk;
mod error;
pub mod fat;
pub mod partition;
mod size;
mod slice;

pub use container::{
    detect, Access, ContainerInfo, FollowReferences, Image, ImageFormat, Reference, Resolver,
};
pub use disk::{
    CreateOptions, DataDisk, DirEntryInfo, DiskInfo, FileReader, OpenOptions, TarStats, MAX_DEPTH,
    MAX_WALK_ENTRIES,
};
pub use error::{is_storage_full, Error};
pub use fat::FatKind;
pub use size::parse_size;
