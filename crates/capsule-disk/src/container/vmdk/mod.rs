//! VMDK: text descriptors (monolithicFlat, twoGbMaxExtentFlat/Sparse, vmfs), hosted sparse
//! extents (monolithicSparse: read, create, write), streamOptimized (read), and delta chains
//! (`parentFileNameHint`: reads fall through to the parent, writes land in the top image).

mod descriptor;
mod sparse;

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{Access, Backend, ContainerInfo, FillFn, ImageFormat, Reference, Resolver};
use crate::Error;
use descriptor::{Descriptor, ExtentKind};
use sparse::SparseExtent;

const SECTOR: u64 = 512;
/// Longest parent chain we follow.
const MAX_CHAIN: usize = 16;

#[derive(Debug)]
enum ExtentData {
    Flat { file: File, base: u64 },
    Sparse(Box<SparseExtent>),
    Zero,
}

#[derive(Debug)]
struct Extent {
    /// Byte offset of the extent in the virtual disk.
    start: u64,
    len: u64,
    writable: bool,
    path: PathBuf,
    data: ExtentData,
}

/// A VMDK disk, possibly the top of a chain.
#[derive(Debug)]
pub(crate) struct VmdkBackend {
    path: PathBuf,
    create_type: String,
    extents: Vec<Extent>,
    size: u64,
    parent: Option<Box<VmdkBackend>>,
    writable: bool,
    /// The descriptor's CID, which a child's `parentCID` must match.
    cid: u32,
}

impl VmdkBackend {
    /// Create a new monolithicSparse disk of `bytes`.
    pub(crate) fn create(path: &Path, bytes: u64) -> Result<Self, Error> {
        let sp = SparseExtent::create(path, bytes, new_cid())?;
        Ok(VmdkBackend {
            path: path.to_owned(),
            create_type: "monolithicSparse".to_owned(),
            extents: vec![Extent {
                start: 0,
                len: bytes,
                writable: true,
                path: path.to_owned(),
                data: ExtentData::Sparse(Box::new(sp)),
            }],
            size: bytes,
            parent: None,
            writable: true,
            cid: 0xffff_ffff,
        })
    }

    /// Open a VMDK (descriptor file or sparse extent with embedded descriptor); the extents
    /// and parents it names are opened by `resolver`.
    pub(crate) fn open(
        path: &Path,
        file: File,
        access: Access,
        resolver: &mut dyn Resolver,
    ) -> Result<Self, Error> {
        let mut seen = HashSet::new();
        let mut chain = Chain {
            resolver,
            seen: &mut seen,
        };
        Self::open_chain(path, file, access == Access::ReadWrite, 0, &mut chain)
    }

    fn open_chain(
        path: &Path,
        file: File,
        writable: bool,
        depth: usize,
        chain: &mut Chain<'_>,
    ) -> Result<Self, Error> {
        if depth > MAX_CHAIN {
            return Err(Error::LimitExceeded {
                path: path.display().to_string(),
                what: "vmdk parent chain length",
                limit: MAX_CHAIN as u64,
            });
        }
        // The file itself, not its name: a loop through links is a loop too.
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        if !chain.seen.insert((meta.dev(), meta.ino())) {
            return Err(Error::corrupt(
                path,
                "vmdk parent chain",
                0,
                "the chain loops back to this file",
            ));
        }
        let (desc, mut embedded) = read_descriptor(path, file, writable)?;
        let mut extents = Vec::new();
        let mut start = 0u64;
        for line in &desc.extents {
            let len = line
                .sectors
                .checked_mul(SECTOR)
                .filter(|_| line.sectors <= sparse::MAX_SECTORS)
                .ok_or_else(|| {
                    Error::corrupt(
                        path,
                        "vmdk extent line",
                        0,
                        format!("{} sectors is too large", line.sectors),
                    )
                })?;
            let ext_writable = writable && line.writable;
            // monolithicSparse: the extent is this very file, whatever name it records. With
            // a capacity of 0 QEMU reads the embedded descriptor as a descriptor file and
            // opens the extents it names: so do we.
            let this_file = embedded
                .take()
                .filter(|sp| desc.extents.len() == 1 && sp.capacity_sectors > 0);
            let (epath, data) = open_extent(path, line, ext_writable, this_file, chain.resolver)?;
            extents.push(Extent {
                start,
                len,
                writable: ext_writable,
                path: epath,
                data,
            });
            start = start
                .checked_add(len)
                .filter(|s| *s <= sparse::MAX_SECTORS * SECTOR)
                .ok_or_else(|| {
                    Error::corrupt(
                        path,
                        "vmdk descriptor",
                        0,
                        "extents add up to more than 64 TiB",
                    )
                })?;
        }
        let parent = Self::open_parent(path, &desc, depth, chain)?;
        Ok(VmdkBackend {
            path: path.to_owned(),
            create_type: desc.create_type,
            extents,
            size: start,
            parent,
            writable,
            cid: desc.cid,
        })
    }

    /// The parent named by `desc` (of the image at `path`), checked against the descriptor's
    /// parentCID.
    fn open_parent(
        path: &Path,
        desc: &Descriptor,
        depth: usize,
        chain: &mut Chain<'_>,
    ) -> Result<Option<Box<Self>>, Error> {
        let Some(hint) = desc
            .parent_hint
            .as_ref()
            .filter(|_| desc.parent_cid != 0xffff_ffff)
        else {
            return Ok(None);
        };
        let (ppath, pf) = chain
            .resolver
            .open(path, Reference::Parent, hint, Access::ReadOnly)?;
        let p = Self::open_chain(&ppath, pf, false, depth + 1, chain)?;
        let pcid = p.cid;
        if pcid != desc.parent_cid {
            return Err(Error::corrupt(path, "vmdk descriptor", 0, format!(
                "parentCID {:08x} does not match CID {pcid:08x} of parent '{}' (the parent changed after the delta was made)",
                desc.parent_cid,
                ppath.display()
            )));
        }
        Ok(Some(Box::new(p)))
    }

    /// Read from the parent (or zeros past its end / without one).
    fn read_parent(
        parent: &mut Option<Box<VmdkBackend>>,
        off: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        match parent {
            Some(p) => {
                let psize = p.size;
                let avail = usize::try_from(psize.saturating_sub(off))
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let (head, tail) = buf.split_at_mut(avail);
                if !head.is_empty() {
                    p.read_at(off, head)?;
                }
                tail.fill(0);
                Ok(())
            }
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}

fn new_cid() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ u32::try_from(d.as_secs() & 0xffff_ffff).unwrap_or(0))
        .unwrap_or(0x1234_5678);
    // 0xffffffff means "no parent" and must not be used as a CID.
    (nanos ^ std::process::id().rotate_left(16)) & 0x7fff_ffff
}

/// What opening a chain carries along: who opens named files, and the files seen so far.
struct Chain<'a> {
    resolver: &'a mut dyn Resolver,
    seen: &'a mut HashSet<(u64, u64)>,
}

impl VmdkBackend {
    /// Visit the extents overlapping `[off, off + len)` as (extent index, offset in extent,
    /// offset in buffer, length).
    fn pieces(&self, off: u64, len: usize) -> Vec<(usize, u64, usize, usize)> {
        let end = off + len as u64;
        let first = self.extents.partition_point(|e| e.start + e.len <= off);
        let mut out = Vec::new();
        for (i, e) in self.extents.iter().enumerate().skip(first) {
            if e.start >= end {
                break;
            }
            let s = off.max(e.start);
            let t = end.min(e.start + e.len);
            if s < t {
                out.push((
                    i,
                    s - e.start,
                    usize::try_from(s - off).unwrap_or(0),
                    usize::try_from(t - s).unwrap_or(0),
                ));
            }
        }
        out
    }
}

impl Backend for VmdkBackend {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, eoff, boff, n) in self.pieces(offset, buf.len()) {
            let dst = &mut buf[boff..boff + n];
            let parent = &mut self.parent;
            let Some(ext) = self.extents.get_mut(i) else {
                continue;
            };
            let estart = ext.start;
            match &mut ext.data {
                ExtentData::Zero => dst.fill(0),
                ExtentData::Flat { file, base } => {
                    let mut got = 0;
                    while got < n {
                        match file.read_at(&mut dst[got..], *base + eoff + got as u64) {
                            Ok(0) => break,
                            Ok(k) => got += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    dst[got..].fill(0);
                }
                ExtentData::Sparse(sp) => {
                    sp.read_at(eoff, dst, &mut |o, b| {
                        Self::read_parent(parent, estart + o, b)
                    })?;
                }
            }
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            }
            .into_io());
        }
        for (i, eoff, boff, n) in self.pieces(offset, buf.len()) {
            let src = &buf[boff..boff + n];
            let parent = &mut self.parent;
            let has_parent = parent.is_some();
            let Some(ext) = self.extents.get_mut(i) else {
                continue;
            };
            if !ext.writable {
                return Err(Error::ReadOnly {
                    path: ext.path.clone(),
                }
                .into_io());
            }
            let estart = ext.start;
            match &mut ext.data {
                ExtentData::Zero => {
                    if !super::is_zero(src) {
                        return Err(Error::Unsupported {
                            path: ext.path.clone(),
                            what: "vmdk write",
                            detail: "cannot store data in a ZERO extent".into(),
                        }
                        .into_io());
                    }
                }
                ExtentData::Flat { file, base } => file.write_all_at(src, *base + eoff)?,
                ExtentData::Sparse(sp) => {
                    let mut fill = |o: u64, b: &mut [u8]| Self::read_parent(parent, estart + o, b);
                    let p: Option<&mut FillFn<'_>> =
                        if has_parent { Some(&mut fill) } else { None };
                    sp.write_at(eoff, src, p)?;
                }
            }
        }
        Ok(())
    }

    fn flush_meta(&mut self) -> io::Result<()> {
        for e in &mut self.extents {
            if let ExtentData::Sparse(sp) = &mut e.data {
                sp.flush()?;
            }
        }
        Ok(())
    }

    fn reads_as_zero(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        if self.parent.is_some() {
            return Ok(false);
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        for (i, eoff, _, n) in self.pieces(offset, len) {
            let Some(ext) = self.extents.get_mut(i) else {
                return Ok(false);
            };
            let zero = match &mut ext.data {
                ExtentData::Zero => true,
                ExtentData::Flat { .. } => false,
                ExtentData::Sparse(sp) => sp.is_unallocated(eoff, n as u64)?,
            };
            if !zero {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn every_file(&self) -> Vec<PathBuf> {
        let mut files = self.info().files;
        if let Some(parent) = &self.parent {
            files.extend(parent.every_file());
        }
        files
    }

    fn info(&self) -> ContainerInfo {
        let mut files = vec![self.path.clone()];
        for e in &self.extents {
            if !files.contains(&e.path) {
                files.push(e.path.clone());
            }
        }
        let mut chain = Vec::new();
        let mut p = self.parent.as_deref();
        while let Some(b) = p {
            chain.push(b.path.clone());
            p = b.parent.as_deref();
        }
        let compressed = self
            .extents
            .iter()
            .any(|e| matches!(&e.data, ExtentData::Sparse(s) if s.is_compressed()));
        let subformat = if compressed && self.create_type.is_empty() {
            "streamOptimized".to_owned()
        } else {
            self.create_type.clone()
        };
        ContainerInfo {
            format: ImageFormat::Vmdk,
            subformat,
            virtual_size: self.size,
            files,
            backing_chain: chain,
        }
    }
}

/// The descriptor of the VMDK `file` at `path`: embedded in a sparse extent (returned too,
/// opened), or the whole file.
fn read_descriptor(
    path: &Path,
    file: File,
    writable: bool,
) -> Result<(Descriptor, Option<SparseExtent>), Error> {
    let mut magic = [0u8; 4];
    let got = file
        .read_at(&mut magic, 0)
        .map_err(|e| Error::io("read", path, e))?;
    if got == 4 && &magic == b"KDMV" {
        let sp = SparseExtent::open(path, file, writable)?;
        let desc = match &sp.descriptor {
            Some((text, off)) => Descriptor::parse(text, path, *off)?,
            None => Descriptor {
                cid: 0xffff_ffff,
                parent_cid: 0xffff_ffff,
                create_type: "monolithicSparse".to_owned(),
                parent_hint: None,
                extents: vec![descriptor::ExtentLine {
                    writable: true,
                    sectors: sp.capacity_sectors,
                    kind: ExtentKind::Sparse,
                    file: String::new(),
                    offset: 0,
                }],
            },
        };
        return Ok((desc, Some(sp)));
    }
    let mut text = String::new();
    (&file)
        .take(descriptor::MAX_DESCRIPTOR + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io("read the descriptor", path, e))?;
    if text.len() as u64 > descriptor::MAX_DESCRIPTOR {
        return Err(Error::LimitExceeded {
            path: path.display().to_string(),
            what: "vmdk descriptor size",
            limit: descriptor::MAX_DESCRIPTOR,
        });
    }
    Ok((Descriptor::parse(&text, path, 0)?, None))
}

/// Open the extent of descriptor line `line` (of the image at `path`) through `resolver`;
/// `this_file` is the image's own sparse extent when it is the only one.
fn open_extent(
    path: &Path,
    line: &descriptor::ExtentLine,
    writable: bool,
    this_file: Option<SparseExtent>,
    resolver: &mut dyn Resolver,
) -> Result<(PathBuf, ExtentData), Error> {
    let access = if writable {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    match line.kind {
        ExtentKind::Zero => Ok((path.to_owned(), ExtentData::Zero)),
        ExtentKind::Sparse => {
            if let Some(sp) = this_file {
                return Ok((path.to_owned(), ExtentData::Sparse(Box::new(sp))));
            }
            let (ep, f) = resolver.open(path, Reference::Extent, &line.file, access)?;
            let sp = SparseExtent::open(&ep, f, writable)?;
            if sp.capacity_sectors < line.sectors {
                return Err(Error::corrupt(
                    &ep,
                    "vmdk sparse header",
                    12,
                    format!(
                        "capacity {} sectors is smaller than the descriptor's {}",
                        sp.capacity_sectors, line.sectors
                    ),
                ));
            }
            Ok((ep, ExtentData::Sparse(Box::new(sp))))
        }
        ExtentKind::Flat => {
            let (ep, f) = resolver.open(path, Reference::Extent, &line.file, access)?;
            let base = line.offset.checked_mul(SECTOR).ok_or_else(|| {
                Error::corrupt(
                    path,
                    "vmdk extent line",
                    0,
                    format!("offset {} overflows", line.offset),
                )
            })?;
            Ok((ep, ExtentData::Flat { file: f, base }))
        }
    }
}
