//! The hosted sparse extent (`KDMV`): header, grain directory, grain tables, grains; plain or
//! compressed (streamOptimized). Reads, writes (appending new grains) and creation.
//!
//! Every number in the header is checked before it sizes an allocation or an offset: capacity,
//! grain size, table sizes, and each table and grain offset against the file length.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::bytes::le32;
use crate::container::{is_zero, FillFn};
use crate::Error;

mod create;
mod header;

use header::Header;

const SECTOR: u64 = 512;
/// The header field value meaning "grain directory is in the footer" (streamOptimized).
const GD_AT_END: u64 = u64::MAX;
/// Largest virtual disk we accept: 64 TiB.
pub(crate) const MAX_SECTORS: u64 = 1 << 37;
/// Largest grain directory we load (1M entries: 32 TiB at the default 32 MiB per table).
const MAX_GD_BYTES: u64 = 4 * 1024 * 1024;
/// Grain tables kept in memory before clean ones are dropped.
const MAX_CACHED_GTS: usize = 4096;
const FLAG_RGD: u32 = 1 << 1;
const FLAG_ZEROED_GTE: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;

/// Default layout for new extents (what qemu-img and VMware use).
pub(crate) const DEFAULT_GRAIN_SECTORS: u64 = 128;
const DEFAULT_GTES: u32 = 512;
const DESCRIPTOR_SECTORS: u64 = 20;

/// Where a grain lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grain {
    /// Not in this extent: read the parent (or zeros).
    Unallocated,
    /// Explicitly zero (GTE 1 with the zeroed-grain flag).
    Zero,
    /// Uncompressed at this byte offset.
    At(u64),
    /// Compressed, with a grain marker at this byte offset.
    Compressed(u64),
}

#[derive(Debug)]
struct Gt {
    entries: Vec<u32>,
    dirty: bool,
}

/// One sparse extent file.
#[derive(Debug)]
pub(crate) struct SparseExtent {
    path: PathBuf,
    file: File,
    file_len: u64,
    writable: bool,
    pub(crate) capacity_sectors: u64,
    grain_bytes: u64,
    gtes: u32,
    flags: u32,
    gd: Vec<u32>,
    rgd: Option<Vec<u32>>,
    gd_offset: u64,
    rgd_offset: u64,
    gd_dirty: bool,
    gts: HashMap<usize, Gt>,
    /// Byte offset where the next grain or table is appended.
    next_free: u64,
    /// Last decompressed grain (streamOptimized reads are sequential).
    inflated: Option<(u64, Vec<u8>)>,
    /// The embedded descriptor (text, byte offset), if any.
    pub(crate) descriptor: Option<(String, u64)>,
}

/// Read exactly `buf.len()` bytes at `off`, zero-filling past the end of the file.
fn read_padded(file: &File, off: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match file.read_at(rest, off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(rest) = buf.get_mut(got..) {
        rest.fill(0);
    }
    Ok(())
}

impl SparseExtent {
    /// Parse the header of an open sparse extent file.
    pub(crate) fn open(path: &Path, file: File, writable: bool) -> Result<SparseExtent, Error> {
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let h = Header::read(path, &file, file_len)?;
        let gd = h.grain_dir(path, &file, file_len, h.gd_offset, 56)?;
        let rgd = if h.flags & FLAG_RGD != 0 && h.rgd_offset != 0 && !h.compressed() {
            Some(h.grain_dir(path, &file, file_len, h.rgd_offset, 48)?)
        } else {
            None
        };
        let descriptor = h.descriptor(path, &file, file_len)?;
        Ok(SparseExtent {
            path: path.to_owned(),
            file,
            file_len,
            writable: writable && !h.compressed(),
            capacity_sectors: h.capacity,
            grain_bytes: h.grain * SECTOR,
            gtes: h.gtes,
            flags: h.flags,
            gd,
            rgd,
            gd_offset: h.gd_offset,
            rgd_offset: h.rgd_offset,
            gd_dirty: false,
            gts: HashMap::new(),
            next_free: file_len.div_ceil(SECTOR) * SECTOR,
            inflated: None,
            descriptor,
        })
    }

    pub(crate) fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    fn gt_bytes(&self) -> u64 {
        u64::from(self.gtes) * 4
    }

    fn corrupt(&self, what: &'static str, offset: u64, detail: String) -> io::Error {
        Error::corrupt(&self.path, what, offset, detail).into_io()
    }

    /// Load grain table `gd_idx` (None when the directory entry is 0: no table yet).
    fn gt(&mut self, gd_idx: usize) -> io::Result<Option<&mut Gt>> {
        let Some(&sector) = self.gd.get(gd_idx) else {
            return Err(self.corrupt(
                "grain directory",
                self.gd_offset * SECTOR,
                format!("no entry {gd_idx}"),
            ));
        };
        if sector == 0 {
            return Ok(None);
        }
        if !self.gts.contains_key(&gd_idx) {
            if self.gts.len() >= MAX_CACHED_GTS {
                self.gts.retain(|_, gt| gt.dirty);
            }
            let off = u64::from(sector) * SECTOR;
            let len = self.gt_bytes();
            if off
                .checked_add(len)
                .is_none_or(|e| e > self.file_len.max(self.next_free))
            {
                return Err(self.corrupt(
                    "grain directory entry",
                    self.gd_offset * SECTOR + gd_idx as u64 * 4,
                    format!(
                        "grain table at sector {sector} lies past the end of the {}-byte file",
                        self.file_len
                    ),
                ));
            }
            let mut raw = vec![0u8; usize::try_from(len).unwrap_or(0)];
            read_padded(&self.file, off, &mut raw)?;
            let entries = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
            self.gts.insert(
                gd_idx,
                Gt {
                    entries,
                    dirty: false,
                },
            );
        }
        Ok(self.gts.get_mut(&gd_idx))
    }

    fn lookup(&mut self, grain: u64) -> io::Result<Grain> {
        let gtes = u64::from(self.gtes);
        let (gd_idx, gt_idx) = (
            usize::try_from(grain / gtes).map_err(io::Error::other)?,
            usize::try_from(grain % gtes).map_err(io::Error::other)?,
        );
        let zeroed_ok = self.flags & FLAG_ZEROED_GTE != 0;
        let compressed = self.is_compressed();
        let file_end = self.file_len.max(self.next_free);
        let gd_sector = self.gd.get(gd_idx).copied().unwrap_or(0);
        let Some(gt) = self.gt(gd_idx)? else {
            return Ok(Grain::Unallocated);
        };
        let entry = gt.entries.get(gt_idx).copied().unwrap_or(0);
        match entry {
            0 => Ok(Grain::Unallocated),
            1 if zeroed_ok => Ok(Grain::Zero),
            s => {
                let off = u64::from(s) * SECTOR;
                if off >= file_end {
                    return Err(self.corrupt(
                        "grain table entry",
                        u64::from(gd_sector) * SECTOR + gt_idx as u64 * 4,
                        format!("grain {grain} at sector {s} lies past the end of the {file_end}-byte file"),
                    ));
                }
                Ok(if compressed {
                    Grain::Compressed(off)
                } else {
                    Grain::At(off)
                })
            }
        }
    }

    /// Decompress the grain whose marker is at `off` into the one-grain cache.
    fn inflate(&mut self, grain: u64, off: u64) -> io::Result<&[u8]> {
        if self.inflated.as_ref().is_none_or(|(g, _)| *g != grain) {
            let mut marker = [0u8; 12];
            read_padded(&self.file, off, &mut marker)?;
            let size = u64::from(le32(&marker, 8));
            let limit = self.grain_bytes * 2 + 4096;
            if size == 0 || size > limit || off + 12 + size > self.file_len {
                return Err(self.corrupt(
                    "vmdk grain marker",
                    off,
                    format!(
                        "compressed size {size} is 0, above {limit}, or past the end of the file"
                    ),
                ));
            }
            let mut packed = vec![0u8; usize::try_from(size).map_err(io::Error::other)?];
            read_padded(&self.file, off + 12, &mut packed)?;
            let mut out =
                Vec::with_capacity(usize::try_from(self.grain_bytes).map_err(io::Error::other)?);
            flate2::read::ZlibDecoder::new(&packed[..])
                .take(self.grain_bytes)
                .read_to_end(&mut out)
                .map_err(|e| {
                    self.corrupt(
                        "vmdk compressed grain",
                        off,
                        format!("deflate stream is bad: {e}"),
                    )
                })?;
            out.resize(
                usize::try_from(self.grain_bytes).map_err(io::Error::other)?,
                0,
            );
            self.inflated = Some((grain, out));
        }
        Ok(self
            .inflated
            .as_ref()
            .map(|(_, d)| d.as_slice())
            .unwrap_or_default())
    }

    /// Read `buf` at byte `off` of this extent; unallocated ranges are filled by `fill`
    /// (the parent disk, or zeros) with extent-relative offsets.
    pub(crate) fn read_at(
        &mut self,
        off: u64,
        buf: &mut [u8],
        fill: &mut FillFn<'_>,
    ) -> io::Result<()> {
        let gb = self.grain_bytes;
        let mut done = 0usize;
        // A run of contiguous allocated grains is read with one call.
        let mut run: Option<(u64, usize, usize)> = None; // (file offset, buf start, len)
        while done < buf.len() {
            let pos = off + done as u64;
            let grain = pos / gb;
            let in_grain = pos % gb;
            let n = usize::try_from((gb - in_grain).min((buf.len() - done) as u64))
                .map_err(io::Error::other)?;
            let loc = self.lookup(grain)?;
            if let Grain::At(g) = loc {
                let foff = g + in_grain;
                match &mut run {
                    Some((ro, _, rl)) if *ro + *rl as u64 == foff => *rl += n,
                    _ => {
                        if let Some((ro, rs, rl)) = run.take() {
                            read_padded(&self.file, ro, &mut buf[rs..rs + rl])?;
                        }
                        run = Some((foff, done, n));
                    }
                }
            } else {
                if let Some((ro, rs, rl)) = run.take() {
                    read_padded(&self.file, ro, &mut buf[rs..rs + rl])?;
                }
                let dst = &mut buf[done..done + n];
                match loc {
                    Grain::Unallocated => fill(pos, dst)?,
                    Grain::Zero => dst.fill(0),
                    Grain::Compressed(g) => {
                        let data = self.inflate(grain, g)?;
                        let s = usize::try_from(in_grain).map_err(io::Error::other)?;
                        dst.copy_from_slice(data.get(s..s + n).unwrap_or_default());
                    }
                    Grain::At(_) => {}
                }
            }
            done += n;
        }
        if let Some((ro, rs, rl)) = run {
            read_padded(&self.file, ro, &mut buf[rs..rs + rl])?;
        }
        Ok(())
    }

    /// True if every grain touching `[off, off + len)` of this extent is unallocated or zero.
    pub(crate) fn is_unallocated(&mut self, off: u64, len: u64) -> io::Result<bool> {
        let gb = self.grain_bytes;
        for g in off / gb..=(off + len.max(1) - 1) / gb {
            if !matches!(self.lookup(g)?, Grain::Unallocated | Grain::Zero) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Append a new grain (and its grain table if the directory has none) for `grain`.
    fn alloc_grain(&mut self, grain: u64) -> io::Result<u64> {
        let gtes = u64::from(self.gtes);
        let gd_idx = usize::try_from(grain / gtes).map_err(io::Error::other)?;
        let gt_idx = usize::try_from(grain % gtes).map_err(io::Error::other)?;
        if self.gd.get(gd_idx).copied() == Some(0) {
            let gt_len = self.gt_bytes().div_ceil(SECTOR) * SECTOR;
            let at = self.take_space(gt_len)?;
            if let Some(slot) = self.gd.get_mut(gd_idx) {
                *slot = at;
            }
            if self.rgd.is_some() {
                let rat = self.take_space(gt_len)?;
                if let Some(slot) = self.rgd.as_mut().and_then(|r| r.get_mut(gd_idx)) {
                    *slot = rat;
                }
            }
            self.gd_dirty = true;
            let entries = vec![0u32; usize::try_from(self.gtes).map_err(io::Error::other)?];
            self.gts.insert(
                gd_idx,
                Gt {
                    entries,
                    dirty: true,
                },
            );
        }
        let sector = self.take_space(self.grain_bytes)?;
        let gt = self
            .gt(gd_idx)?
            .ok_or_else(|| io::Error::other("grain table vanished"))?;
        if let Some(e) = gt.entries.get_mut(gt_idx) {
            *e = sector;
        }
        gt.dirty = true;
        Ok(u64::from(sector) * SECTOR)
    }

    /// Reserve `len` bytes at the end of the file; returns the start sector.
    fn take_space(&mut self, len: u64) -> io::Result<u32> {
        let sector = u32::try_from(self.next_free / SECTOR).map_err(|_| {
            self.corrupt(
                "vmdk extent",
                self.next_free,
                "file would exceed the 2 TiB sparse limit".into(),
            )
        })?;
        self.next_free += len;
        Ok(sector)
    }

    /// Write `buf` at byte `off` of this extent. `parent` supplies the old content of a grain
    /// that is only partly overwritten (None: the extent has no parent, old content is zeros).
    pub(crate) fn write_at(
        &mut self,
        off: u64,
        buf: &[u8],
        parent: Option<&mut FillFn<'_>>,
    ) -> io::Result<()> {
        if !self.writable {
            let why = if self.is_compressed() {
                "a streamOptimized extent is read-only"
            } else {
                "opened read-only"
            };
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            }
            .into_io())
            .map_err(|e| io::Error::new(e.kind(), format!("{e}: {why}")));
        }
        let mut parent = parent;
        let gb = self.grain_bytes;
        let mut done = 0usize;
        let mut run: Option<(u64, usize, usize)> = None;
        while done < buf.len() {
            let pos = off + done as u64;
            let grain = pos / gb;
            let in_grain = pos % gb;
            let n = usize::try_from((gb - in_grain).min((buf.len() - done) as u64))
                .map_err(io::Error::other)?;
            let src = &buf[done..done + n];
            let loc = self.lookup(grain)?;
            let target = match loc {
                Grain::At(g) => Some(g + in_grain),
                Grain::Compressed(_) => {
                    return Err(io::Error::other("cannot write a compressed grain"))
                }
                Grain::Unallocated if parent.is_none() && is_zero(src) => None,
                Grain::Zero if is_zero(src) => None,
                Grain::Unallocated | Grain::Zero => {
                    let g = self.alloc_grain(grain)?;
                    let whole = n as u64 == gb;
                    match (&mut parent, loc, whole) {
                        (Some(p), Grain::Unallocated, false) => {
                            // Copy-on-write: old content from the parent, new bytes on top.
                            let mut full =
                                vec![0u8; usize::try_from(gb).map_err(io::Error::other)?];
                            p(grain * gb, &mut full)?;
                            let s = usize::try_from(in_grain).map_err(io::Error::other)?;
                            full[s..s + n].copy_from_slice(src);
                            self.flush_run(&mut run, buf)?;
                            self.file.write_all_at(&full, g)?;
                            done += n;
                            continue;
                        }
                        _ => Some(g + in_grain),
                    }
                }
            };
            match (target, &mut run) {
                (Some(t), Some((ro, _, rl))) if *ro + *rl as u64 == t => *rl += n,
                (Some(t), _) => {
                    self.flush_run(&mut run, buf)?;
                    run = Some((t, done, n));
                }
                (None, _) => self.flush_run(&mut run, buf)?,
            }
            done += n;
        }
        self.flush_run(&mut run, buf)
    }

    fn flush_run(&mut self, run: &mut Option<(u64, usize, usize)>, buf: &[u8]) -> io::Result<()> {
        if let Some((ro, rs, rl)) = run.take() {
            self.file.write_all_at(&buf[rs..rs + rl], ro)?;
            self.file_len = self.file_len.max(ro + rl as u64);
        }
        Ok(())
    }

    /// Write dirty grain tables (both copies) and directories; extend the file over the last
    /// grain so its unwritten tail reads as zeros.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        let mut dirty: Vec<usize> = self
            .gts
            .iter()
            .filter(|(_, g)| g.dirty)
            .map(|(&i, _)| i)
            .collect();
        dirty.sort_unstable();
        for idx in dirty {
            let Some(gt) = self.gts.get_mut(&idx) else {
                continue;
            };
            let bytes = dir_bytes(&gt.entries);
            gt.dirty = false;
            if let Some(&s) = self.gd.get(idx) {
                self.file.write_all_at(&bytes, u64::from(s) * SECTOR)?;
            }
            if let Some(&s) = self.rgd.as_ref().and_then(|r| r.get(idx)) {
                self.file.write_all_at(&bytes, u64::from(s) * SECTOR)?;
            }
        }
        if self.gd_dirty {
            self.file
                .write_all_at(&dir_bytes(&self.gd), self.gd_offset * SECTOR)?;
            if let Some(rgd) = &self.rgd {
                self.file
                    .write_all_at(&dir_bytes(rgd), self.rgd_offset * SECTOR)?;
            }
            self.gd_dirty = false;
        }
        if self.next_free > self.file_len {
            self.file.set_len(self.next_free)?;
            self.file_len = self.next_free;
        }
        Ok(())
    }
}

fn dir_bytes(entries: &[u32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}
