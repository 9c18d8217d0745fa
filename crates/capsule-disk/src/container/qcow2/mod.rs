//! qcow2 (v2 and v3): read, create, write, with a read-only backing file.
//!
//! New data clusters, L2 tables and refcount blocks are appended at the end of the file, so
//! creating a disk and filling it costs O(data). Refcounts of new clusters are written on
//! flush; `qemu-img check` must find no errors and no leaks. Images with internal snapshots,
//! compressed clusters to be overwritten, or refcount widths other than 16 bits are read-only.

mod create;
mod header;
mod map;
mod refcount;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{is_zero, Access, Backend, ContainerInfo, ImageFormat, Reference, Resolver};
use crate::Error;
use header::Header;

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
/// Longest backing chain we follow.
const MAX_CHAIN: usize = 16;
/// Bytes of L2 tables kept in memory.
const L2_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Largest refcount table we load.
const MAX_REFTABLE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Unallocated,
    /// Reads as zeros; `Some` if a cluster is preallocated for it.
    Zero(Option<u64>),
    Data(u64),
    Compressed(u64, u64),
}

#[derive(Debug)]
struct L2 {
    entries: Vec<u64>,
    dirty: bool,
}

/// A qcow2 image.
#[derive(Debug)]
pub(crate) struct Qcow2Backend {
    path: PathBuf,
    file: File,
    file_len: u64,
    /// Why writes are refused, if they are.
    read_only: Option<String>,
    h: Header,
    l1: Vec<u64>,
    l1_dirty: bool,
    l2: HashMap<u64, L2>,
    l2_order: VecDeque<u64>,
    next_free: u64,
    new_clusters: Vec<u64>,
    backing: Option<Box<dyn Backend>>,
    inflated: Option<(u64, Vec<u8>)>,
}

fn read_padded(file: &File, off: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[got..].fill(0);
    Ok(())
}

fn be_entries(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn be_bytes(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_be_bytes()).collect()
}

impl Qcow2Backend {
    /// Open an existing image; backing files are opened read-only (format from the header
    /// extension, else detected), up to [`MAX_CHAIN`] deep.
    pub(crate) fn open(
        path: &Path,
        file: File,
        access: Access,
        depth: usize,
        resolver: &mut dyn Resolver,
    ) -> Result<Self, Error> {
        if depth > MAX_CHAIN {
            return Err(Error::LimitExceeded {
                path: path.display().to_string(),
                what: "qcow2 backing chain length",
                limit: MAX_CHAIN as u64,
            });
        }
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let h = Header::read(path, &file, file_len)?;
        let cs = h.cluster_size();
        let mut raw = vec![0u8; usize::try_from(u64::from(h.l1_size) * 8).unwrap_or(0)];
        read_padded(&file, h.l1_offset, &mut raw)
            .map_err(|e| Error::io("read the L1 table of", path, e))?;
        let l1 = be_entries(&raw);
        let read_only = if access == Access::ReadOnly {
            Some("opened read-only".to_owned())
        } else if h.nb_snapshots != 0 {
            Some(format!("it has {} internal snapshots", h.nb_snapshots))
        } else if h.refcount_order != 4 {
            Some(format!(
                "refcount width {} bits is not 16",
                1u32 << h.refcount_order
            ))
        } else if h.incompatible & header::INCOMPAT_CORRUPT != 0 {
            Some("it is marked corrupt; run qemu-img check -r all".to_owned())
        } else {
            None
        };
        let backing = match &h.backing_file {
            Some(name) => {
                let format = match h.backing_format.as_deref() {
                    Some("raw") => Some(ImageFormat::Raw),
                    Some("qcow2") => Some(ImageFormat::Qcow2),
                    Some("vmdk") => Some(ImageFormat::Vmdk),
                    _ => None,
                };
                let (bpath, bfile) =
                    resolver.open(path, Reference::BackingFile, name, Access::ReadOnly)?;
                Some(super::open_backend_from(
                    &bpath,
                    bfile,
                    Access::ReadOnly,
                    format,
                    depth + 1,
                    resolver,
                )?)
            }
            None => None,
        };
        Ok(Qcow2Backend {
            path: path.to_owned(),
            file,
            file_len,
            read_only,
            l1,
            l1_dirty: false,
            l2: HashMap::new(),
            l2_order: VecDeque::new(),
            next_free: file_len.div_ceil(cs) * cs,
            new_clusters: Vec::new(),
            backing,
            inflated: None,
            h,
        })
    }

    fn cs(&self) -> u64 {
        self.h.cluster_size()
    }

    fn corrupt(&self, what: &'static str, off: u64, d: String) -> io::Error {
        Error::corrupt(&self.path, what, off, d).into_io()
    }

    fn file_end(&self) -> u64 {
        self.file_len.max(self.next_free)
    }

    fn refuse(&self, why: &str) -> io::Error {
        Error::Unsupported {
            path: self.path.clone(),
            what: "qcow2 write",
            detail: format!("image is read-only here: {why}"),
        }
        .into_io()
    }
}

impl Backend for Qcow2Backend {
    fn virtual_size(&self) -> u64 {
        self.h.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let cs = self.cs();
        let mut done = 0usize;
        let mut run: Option<(u64, usize, usize)> = None;
        while done < buf.len() {
            let pos = offset + done as u64;
            let vc = pos / cs;
            let inc = pos % cs;
            let n = usize::try_from((cs - inc).min((buf.len() - done) as u64))
                .map_err(io::Error::other)?;
            let loc = self.lookup(vc)?;
            if let Loc::Data(h) = loc {
                match &mut run {
                    Some((ro, _, rl)) if *ro + *rl as u64 == h + inc => *rl += n,
                    _ => {
                        if let Some((ro, rs, rl)) = run.take() {
                            read_padded(&self.file, ro, &mut buf[rs..rs + rl])?;
                        }
                        run = Some((h + inc, done, n));
                    }
                }
                done += n;
                continue;
            }
            if let Some((ro, rs, rl)) = run.take() {
                read_padded(&self.file, ro, &mut buf[rs..rs + rl])?;
            }
            match loc {
                Loc::Unallocated => self.fill_backing(pos, &mut buf[done..done + n])?,
                Loc::Zero(_) => buf[done..done + n].fill(0),
                Loc::Compressed(off, len) => {
                    let data = self.inflate(vc, off, len)?;
                    let s = usize::try_from(inc).map_err(io::Error::other)?;
                    let src = data.get(s..s + n).unwrap_or_default().to_vec();
                    buf[done..done + n].copy_from_slice(&src);
                }
                Loc::Data(_) => {}
            }
            done += n;
        }
        if let Some((ro, rs, rl)) = run {
            read_padded(&self.file, ro, &mut buf[rs..rs + rl])?;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if let Some(why) = &self.read_only {
            if why == "opened read-only" {
                return Err(Error::ReadOnly {
                    path: self.path.clone(),
                }
                .into_io());
            }
            return Err(self.refuse(why));
        }
        let cs = self.cs();
        let has_backing = self.backing.is_some();
        let mut done = 0usize;
        let mut run: Option<(u64, usize, usize)> = None;
        let flush = |run: &mut Option<(u64, usize, usize)>, file: &File| -> io::Result<()> {
            if let Some((ro, rs, rl)) = run.take() {
                file.write_all_at(&buf[rs..rs + rl], ro)?;
            }
            Ok(())
        };
        while done < buf.len() {
            let pos = offset + done as u64;
            let vc = pos / cs;
            let inc = pos % cs;
            let n = usize::try_from((cs - inc).min((buf.len() - done) as u64))
                .map_err(io::Error::other)?;
            let src = &buf[done..done + n];
            let whole = n as u64 == cs;
            let target = match self.lookup(vc)? {
                Loc::Data(h) => {
                    if let Some(why) = &self.read_only {
                        return Err(self.refuse(why));
                    }
                    Some(h + inc)
                }
                Loc::Compressed(..) => {
                    return Err(self.refuse("overwriting compressed clusters is not supported"))
                }
                Loc::Unallocated if !has_backing && is_zero(src) => None,
                Loc::Zero(_) if is_zero(src) => None,
                loc => {
                    let reuse = match loc {
                        Loc::Zero(r) => r,
                        _ => None,
                    };
                    let needs_base =
                        !whole && (has_backing && loc == Loc::Unallocated || reuse.is_some());
                    let h = self.map_new(vc, reuse)?;
                    if needs_base {
                        let mut full = vec![0u8; usize::try_from(cs).map_err(io::Error::other)?];
                        if loc == Loc::Unallocated {
                            self.fill_backing(vc * cs, &mut full)?;
                        }
                        let s = usize::try_from(inc).map_err(io::Error::other)?;
                        full[s..s + n].copy_from_slice(src);
                        flush(&mut run, &self.file)?;
                        self.file.write_all_at(&full, h)?;
                        done += n;
                        continue;
                    }
                    Some(h + inc)
                }
            };
            match (target, &mut run) {
                (Some(t), Some((ro, _, rl))) if *ro + *rl as u64 == t => *rl += n,
                (Some(t), _) => {
                    flush(&mut run, &self.file)?;
                    run = Some((t, done, n));
                }
                (None, _) => flush(&mut run, &self.file)?,
            }
            done += n;
        }
        flush(&mut run, &self.file)
    }

    fn flush_meta(&mut self) -> io::Result<()> {
        if self.read_only.is_some() {
            return Ok(());
        }
        let mut dirty: Vec<u64> = self
            .l2
            .iter()
            .filter(|(_, t)| t.dirty)
            .map(|(&i, _)| i)
            .collect();
        dirty.sort_unstable();
        for i in dirty {
            if let Some(t) = self.l2.get(&i) {
                self.write_l2(i, &t.entries)?;
            }
            if let Some(t) = self.l2.get_mut(&i) {
                t.dirty = false;
            }
        }
        if self.l1_dirty {
            self.file
                .write_all_at(&be_bytes(&self.l1), self.h.l1_offset)?;
            self.l1_dirty = false;
        }
        self.write_refcounts()?;
        if self.next_free > self.file_len {
            self.file.set_len(self.next_free)?;
            self.file_len = self.next_free;
        }
        Ok(())
    }

    fn reads_as_zero(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        if self.backing.is_some() {
            return Ok(false);
        }
        let cs = self.cs();
        for vc in offset / cs..=(offset + len.max(1) - 1) / cs {
            if !matches!(self.lookup(vc)?, Loc::Unallocated | Loc::Zero(_)) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn every_file(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        if let Some(b) = &self.backing {
            files.extend(b.every_file());
        }
        files
    }

    fn info(&self) -> ContainerInfo {
        let mut chain = Vec::new();
        if let Some(b) = &self.backing {
            let bi = b.info();
            chain.extend(bi.files.first().cloned());
            chain.extend(bi.backing_chain);
        }
        ContainerInfo {
            format: ImageFormat::Qcow2,
            subformat: format!("qcow2 v{}", self.h.version),
            virtual_size: self.h.size,
            files: vec![self.path.clone()],
            backing_chain: chain,
        }
    }
}
