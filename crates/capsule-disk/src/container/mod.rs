//! Image containers: a std `Read + Write + Seek` view of the virtual disk inside a raw, VMDK or
//! qcow2 file. The format is detected from the content (magic), never from the file name.
//!
//! Every container implements the private [`Backend`] trait (positional reads and writes of the
//! virtual disk); [`Image`] adds a cursor on top so the rest of the crate and callers can use
//! `std::io`.

mod qcow2;
mod raw;
mod reference;
mod vmdk;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::Error;

pub(crate) use qcow2::Qcow2Backend;
pub(crate) use raw::RawBackend;
pub use reference::{FollowReferences, Reference, Resolver};
pub(crate) use vmdk::VmdkBackend;

/// Container formats this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// A plain (sparse) file or block device holding the disk bytes.
    Raw,
    /// VMware VMDK: a sparse extent or a text descriptor naming extents.
    Vmdk,
    /// QEMU qcow2 (version 2 or 3).
    Qcow2,
}

impl ImageFormat {
    /// The lower-case name used on the command line (`raw`, `vmdk`, `qcow2`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ImageFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "img" => Ok(ImageFormat::Raw),
            "vmdk" => Ok(ImageFormat::Vmdk),
            "qcow2" => Ok(ImageFormat::Qcow2),
            _ => Err(Error::InvalidArgument {
                what: "image format",
                value: s.to_owned(),
                reason: "expected raw, vmdk or qcow2".to_owned(),
            }),
        }
    }
}

/// How an image is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only; any write fails with [`Error::ReadOnly`].
    ReadOnly,
    /// Reads and writes (writes go into the top image of a chain).
    ReadWrite,
}

/// What an image is made of, for `info` displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The container format.
    pub format: ImageFormat,
    /// Finer detail: `monolithicSparse`, `streamOptimized`, `qcow2 v3`, `sparse file`, ...
    pub subformat: String,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Every file that makes up the image, top first (descriptor, extents, then backing files).
    pub files: Vec<PathBuf>,
    /// Backing/parent chain below this image, nearest first (empty when standalone).
    pub backing_chain: Vec<PathBuf>,
}

/// Supplies the bytes of a range that a container does not hold itself (from a parent image,
/// or zeros), given an offset relative to the caller's extent.
pub(crate) type FillFn<'a> = dyn FnMut(u64, &mut [u8]) -> io::Result<()> + 'a;

/// Positional access to a virtual disk. Reads past the end fail; reads of unallocated areas
/// return zeros (or the backing image's bytes).
pub(crate) trait Backend: Send + fmt::Debug {
    fn virtual_size(&self) -> u64;
    /// Fill `buf` from virtual offset `offset`; the caller guarantees the range is in bounds.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `buf` at virtual offset `offset`; the caller guarantees the range is in bounds.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Persist all metadata (tables, headers) and flush file buffers.
    fn flush_meta(&mut self) -> io::Result<()>;
    fn info(&self) -> ContainerInfo;
    /// Every file this image reads, its backing images' own files included.
    fn every_file(&self) -> Vec<PathBuf> {
        self.info().files
    }
    /// True if the range is known to read as zeros without holding data (unallocated, no
    /// parent), so writing zeros there can be skipped. `false` is always a safe answer.
    fn reads_as_zero(&mut self, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }
}

/// A virtual disk in any supported container, with a cursor: `Read + Write + Seek`.
///
/// Call [`Image::finish`] after writing: it writes container metadata (grain tables, qcow2
/// tables) and reports errors. Dropping an unfinished image flushes on a best-effort basis.
#[derive(Debug)]
pub struct Image {
    backend: Box<dyn Backend>,
    pos: u64,
}

/// What an [`Image`] holds after its backend moved elsewhere: nothing.
#[derive(Debug)]
struct Closed;

impl Backend for Closed {
    fn virtual_size(&self) -> u64 {
        0
    }
    fn read_at(&mut self, _: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other("image is closed"))
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("image is closed"))
    }
    fn flush_meta(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn info(&self) -> ContainerInfo {
        ContainerInfo {
            format: ImageFormat::Raw,
            subformat: "closed".to_owned(),
            virtual_size: 0,
            files: Vec::new(),
            backing_chain: Vec::new(),
        }
    }
}

/// Bytes read from the start of a file to detect its format.
const MAGIC_LEN: usize = 512;

impl Image {
    /// Open an existing image (file or block device); the format comes from its content.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened or read, [`Error::Corrupt`] or
    /// [`Error::Unsupported`] if its headers are bad or use features we do not implement.
    pub fn open(path: &Path, access: Access) -> Result<Image, Error> {
        Self::open_as(path, access, None)
    }

    /// Open an existing image, forcing the format instead of detecting it.
    ///
    /// # Errors
    /// As [`Image::open`]; also [`Error::Corrupt`] if the content does not match `format`.
    pub fn open_as(
        path: &Path,
        access: Access,
        format: Option<ImageFormat>,
    ) -> Result<Image, Error> {
        let backend = open_backend(path, access, format)?;
        Ok(Image { backend, pos: 0 })
    }

    /// Open an image from a file the caller opened (and checked); every file the image names
    /// (backing file, parents, extents) is opened by `resolver`, which may refuse it.
    ///
    /// # Errors
    /// As [`Image::open_as`]; the resolver's error when it refuses a named file;
    /// [`Error::Reference`] for a qcow2 external data file.
    pub fn open_file(
        path: &Path,
        file: File,
        access: Access,
        format: Option<ImageFormat>,
        resolver: &mut dyn Resolver,
    ) -> Result<Image, Error> {
        let backend = open_backend_from(path, file, access, format, 0, resolver)?;
        Ok(Image { backend, pos: 0 })
    }

    /// Create a new, all-zero image of `size` bytes. Creation is O(metadata), never O(size).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be created, [`Error::InvalidArgument`] for a size the
    /// format cannot hold.
    pub fn create(path: &Path, format: ImageFormat, size: u64) -> Result<Image, Error> {
        let backend: Box<dyn Backend> = match format {
            ImageFormat::Raw => Box::new(RawBackend::create(path, size)?),
            ImageFormat::Vmdk => Box::new(VmdkBackend::create(path, size)?),
            ImageFormat::Qcow2 => Box::new(Qcow2Backend::create(path, size)?),
        };
        Ok(Image { backend, pos: 0 })
    }

    /// The container format.
    #[must_use]
    pub fn format(&self) -> ImageFormat {
        self.backend.info().format
    }

    /// Size of the virtual disk in bytes.
    #[must_use]
    pub fn virtual_size(&self) -> u64 {
        self.backend.virtual_size()
    }

    /// What the image is made of.
    #[must_use]
    pub fn info(&self) -> ContainerInfo {
        self.backend.info()
    }

    /// Every file the image is read from: its own (descriptor, extents) and those of every
    /// image below it (parents, backing files, and their extents), top first.
    pub fn every_file(&self) -> Vec<PathBuf> {
        self.backend.every_file()
    }

    /// Write all metadata and flush.
    ///
    /// # Errors
    /// The container's write or sync error.
    pub fn finish(mut self) -> Result<(), Error> {
        let path = self
            .backend
            .info()
            .files
            .first()
            .cloned()
            .unwrap_or_default();
        self.backend
            .flush_meta()
            .map_err(|e| Error::io("flush", path, e))
    }

    pub(crate) fn into_backend(mut self) -> Box<dyn Backend> {
        std::mem::replace(&mut self.backend, Box::new(Closed))
    }
}

/// Fail with `UnexpectedEof` unless `[offset, offset + len)` lies inside a disk of `size` bytes.
pub(crate) fn check_range(size: u64, offset: u64, len: usize) -> io::Result<()> {
    let end = u64::try_from(len).ok().and_then(|l| offset.checked_add(l));
    match end {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "access of {len} bytes at offset {offset} is past the end of the {size}-byte disk"
            ),
        )),
    }
}

impl Read for Image {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.backend.virtual_size().saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let (head, _) = buf.split_at_mut(n);
        self.backend.read_at(self.pos, head)?;
        self.pos += u64::try_from(n).map_err(io::Error::other)?;
        Ok(n)
    }
}

impl Write for Image {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.backend.virtual_size().saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("write at offset {} is past the end of the disk", self.pos),
            ));
        }
        let (head, _) = buf.split_at(n);
        self.backend.write_at(self.pos, head)?;
        self.pos += u64::try_from(n).map_err(io::Error::other)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.backend.flush_meta()
    }
}

impl Seek for Image {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(self.pos, self.backend.virtual_size(), pos)?;
        Ok(self.pos)
    }
}

/// Resolve a `SeekFrom` against a cursor and a length; negative results are errors.
pub(crate) fn seek_to(cur: u64, len: u64, pos: SeekFrom) -> io::Result<u64> {
    let target = match pos {
        SeekFrom::Start(n) => Some(n),
        SeekFrom::End(d) => len.checked_add_signed(d),
        SeekFrom::Current(d) => cur.checked_add_signed(d),
    };
    target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before byte 0"))
}

impl Drop for Image {
    fn drop(&mut self) {
        // Best effort only: callers that care call finish() and see the error.
        let _ = self.backend.flush_meta();
    }
}

/// Open `path` and read its first bytes to pick a backend; named files are followed.
pub(crate) fn open_backend(
    path: &Path,
    access: Access,
    format: Option<ImageFormat>,
) -> Result<Box<dyn Backend>, Error> {
    let file = open_file(path, access)?;
    open_backend_from(path, file, access, format, 0, &mut FollowReferences)
}

/// The backend of the open `file` (at `path`, `depth` levels below the top image), its named
/// files opened by `resolver`.
pub(crate) fn open_backend_from(
    path: &Path,
    mut file: File,
    access: Access,
    format: Option<ImageFormat>,
    depth: usize,
    resolver: &mut dyn Resolver,
) -> Result<Box<dyn Backend>, Error> {
    // The caller's file may share its offset with another descriptor: start from byte 0.
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("seek", path, e))?;
    let mut head = [0u8; MAGIC_LEN];
    let got = read_up_to(&mut file, &mut head).map_err(|e| Error::io("read", path, e))?;
    let head = head.get(..got).unwrap_or_default();
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("seek", path, e))?;
    let detected = detect(head);
    let format = format.unwrap_or(detected);
    if format != detected && format != ImageFormat::Raw {
        return Err(Error::corrupt(
            path,
            "image header",
            0,
            format!("--format {format} given but the content looks like {detected}"),
        ));
    }
    match format {
        ImageFormat::Raw => Ok(Box::new(RawBackend::open(path, file, access)?)),
        ImageFormat::Vmdk => Ok(Box::new(VmdkBackend::open(path, file, access, resolver)?)),
        ImageFormat::Qcow2 => Ok(Box::new(Qcow2Backend::open(
            path, file, access, depth, resolver,
        )?)),
    }
}

/// Detect the container format from the first bytes of a file.
#[must_use]
pub fn detect(head: &[u8]) -> ImageFormat {
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        ImageFormat::Vmdk
    } else if head.starts_with(b"QFI\xfb") {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    }
}

/// Create `path` as a new, empty file. An existing regular file is unlinked first rather than
/// truncated: ext4 flushes a file rewritten through truncation when it is closed
/// (`auto_da_alloc`), which made re-creating a 100 MiB image twice as slow.
pub(crate) fn create_file(path: &Path) -> Result<File, Error> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        std::fs::remove_file(path).map_err(|e| Error::io("replace", path, e))?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io("create", path, e))
}

/// Open a file that an image names (extent, parent, backing file). Only regular files are
/// accepted: a hostile descriptor naming a FIFO or `/dev/stdin` would otherwise block.
pub(crate) fn open_referenced(path: &Path, access: Access) -> Result<File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    // Open first (non-blocking, so a FIFO swapped in after a check cannot block), then check
    // what was opened: no window between the check and the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(access == Access::ReadWrite)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::Unsupported {
            path: path.to_owned(),
            what: "referenced file",
            detail: "extents, parents and backing files must be regular files".to_owned(),
        });
    }
    Ok(file)
}

pub(crate) fn open_file(path: &Path, access: Access) -> Result<File, Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(access == Access::ReadWrite)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

/// Read until `buf` is full or EOF; returns the count.
pub(crate) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// True if every byte is zero (fast path for sparse writes).
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    // OR-folding fixed-size chunks vectorises well; stop at the first non-zero chunk.
    let chunks = buf.chunks_exact(64);
    let rem = chunks.remainder();
    chunks
        .into_iter()
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
        && rem.iter().all(|&b| b == 0)
}
