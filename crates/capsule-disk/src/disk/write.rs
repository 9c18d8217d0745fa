//! Writing file data around `fatfs`: clusters are allocated and chained here and the data goes
//! to the container in pieces of up to 1 MiB, instead of one `fatfs` call (with its FAT
//! lookups and a buffer copy) per cluster. `fatfs` still creates the directory entry; its
//! first cluster and size are patched in afterwards.

use std::io::{self, Read};

use super::entry::raw_short_name;
use super::{DataDisk, FatDir};
use crate::cache::{lock, Cache};
use crate::Error;

/// Bytes read from the source and written per step (a multiple of every cluster size).
const CHUNK: usize = 1024 * 1024;

/// Fill `buf` from `src` until it is full or the source ends.
pub(super) fn fill(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl DataDisk {
    /// Store `head` (already read from the source) plus the rest of `src` as the content of
    /// the empty file `name` in `dir` (whose first cluster is `dir_cluster`, None for the root).
    pub(super) fn write_data(
        &self,
        dir: &FatDir<'_>,
        dir_cluster: Option<u32>,
        name: &str,
        path: &str,
        head: Vec<u8>,
        src: &mut dyn Read,
    ) -> Result<u64, Error> {
        let mut n = head.len();
        let mut buf = head;
        // Every chunk but the last must be whole clusters: top the head up to a full chunk.
        buf.resize(CHUNK.max(n), 0);
        n += fill(src, &mut buf[n..]).map_err(|e| Error::io("read the source for", path, e))?;
        let boot = self.boot;
        let cs = boot.cluster_size;
        let start = self.partition.start;
        let mut first: Option<u64> = None;
        let mut last: Option<u64> = None;
        let mut total = 0u64;
        let mut allocated = 0u64;
        let result = (|| -> Result<(), Error> {
            let mut cache = lock(&self.cache).map_err(self.fat_err(path))?;
            while n > 0 {
                if total + n as u64 > u64::from(u32::MAX) {
                    return Err(Error::LimitExceeded {
                        path: path.to_owned(),
                        what: "FAT file size",
                        limit: u64::from(u32::MAX),
                    });
                }
                let mut done = 0usize;
                while done < n {
                    let need = (n - done) as u64;
                    let (c, len) = self.alloc_run(&mut cache, need.div_ceil(cs), path)?;
                    allocated += len;
                    let link = |cache: &mut Cache, from: u64, to: u64| {
                        boot.set_fat_entry(from, to, cache, start)
                    };
                    let io = self.fat_err(path);
                    match last {
                        Some(l) => link(&mut cache, l, c).map_err(&io)?,
                        None => first = Some(c),
                    }
                    for i in c..c + len - 1 {
                        link(&mut cache, i, i + 1).map_err(&io)?;
                    }
                    link(&mut cache, c + len - 1, boot.eoc()).map_err(&io)?;
                    last = Some(c + len - 1);
                    let bytes = usize::try_from((len * cs).min(need))
                        .map_err(|e| io(io::Error::other(e)))?;
                    let at = start + boot.data_offset + (c - 2) * cs;
                    cache.write_at(at, &buf[done..done + bytes]).map_err(&io)?;
                    done += bytes;
                }
                total += n as u64;
                drop(cache);
                n = fill(src, &mut buf).map_err(|e| Error::io("read the source for", path, e))?;
                cache = lock(&self.cache).map_err(self.fat_err(path))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Give the clusters back so a failed put leaves no lost chain behind.
            if let Some(f) = first {
                let _ = self.free_chain(f, allocated);
            }
            return Err(e);
        }
        let entry = self
            .find_in(dir, name, path)?
            .ok_or_else(|| Error::NotFound {
                path: path.to_owned(),
            })?;
        let raw = raw_short_name(&entry).ok_or_else(|| Error::Corrupt {
            path: self.path.clone(),
            what: "FAT directory entry",
            offset: 0,
            detail: format!("cannot read the short name of '{path}'"),
        })?;
        self.patch_entry(dir_cluster, raw, first.unwrap_or(0), total, path)?;
        Ok(total)
    }

    /// Find up to `want` free clusters, consecutive, starting from the allocation hint.
    fn alloc_run(&self, cache: &mut Cache, want: u64, path: &str) -> Result<(u64, u64), Error> {
        let boot = self.boot;
        let start = self.partition.start;
        let end = boot.clusters + 2;
        let mut c = self.alloc_hint.get().clamp(2, end);
        let mut scanned = 0u64;
        let io = self.fat_err(path);
        let entry =
            |cache: &mut Cache, c: u64| boot.fat_entry(c, &mut |o, b| cache.read_at(start + o, b));
        loop {
            if c >= end {
                c = 2;
            }
            if scanned > boot.clusters {
                return Err(Error::Fat {
                    path: path.to_owned(),
                    source: io::Error::new(io::ErrorKind::StorageFull, "the data disk is full"),
                });
            }
            if entry(cache, c).map_err(&io)? == 0 {
                break;
            }
            c += 1;
            scanned += 1;
        }
        let mut len = 1;
        while len < want && c + len < end && entry(cache, c + len).map_err(&io)? == 0 {
            len += 1;
        }
        self.alloc_hint.set(c + len);
        Ok((c, len))
    }

    /// Mark `count` clusters of the chain starting at `first` free again.
    fn free_chain(&self, first: u64, count: u64) -> io::Result<()> {
        let boot = self.boot;
        let start = self.partition.start;
        let mut cache = lock(&self.cache)?;
        let mut c = first;
        for _ in 0..count {
            if !boot.is_valid_cluster(c) {
                break;
            }
            let next = boot.fat_entry(c, &mut |o, b| cache.read_at(start + o, b))?;
            boot.set_fat_entry(c, 0, &mut cache, start)?;
            c = next;
        }
        Ok(())
    }

    /// Set the first cluster and size of the short-name entry `raw` in a directory.
    fn patch_entry(
        &self,
        dir_cluster: Option<u32>,
        raw: [u8; 11],
        first: u64,
        size: u64,
        path: &str,
    ) -> Result<(), Error> {
        let boot = self.boot;
        let start = self.partition.start;
        let cs = boot.cluster_size;
        let io = self.fat_err(path);
        let mut cache = lock(&self.cache).map_err(&io)?;
        // The directory's regions: the fixed FAT12/16 root, or a cluster chain.
        let mut regions: Vec<(u64, u64)> = Vec::new();
        match dir_cluster
            .map(u64::from)
            .or(boot.root_cluster.map(u64::from))
        {
            None => regions.push((boot.root_offset, boot.root_bytes)),
            Some(mut c) => {
                for _ in 0..(2 * 1024 * 1024 / cs).max(1) {
                    if !boot.is_valid_cluster(c) {
                        break;
                    }
                    regions.push((boot.data_offset + (c - 2) * cs, cs));
                    c = boot
                        .fat_entry(c, &mut |o, b| cache.read_at(start + o, b))
                        .map_err(&io)?;
                }
            }
        }
        let mut block = Vec::new();
        for (off, len) in regions {
            block.resize(
                usize::try_from(len).map_err(|e| io(io::Error::other(e)))?,
                0,
            );
            cache.read_at(start + off, &mut block).map_err(&io)?;
            for (i, e) in block.chunks_exact(32).enumerate() {
                if e[0] == 0 {
                    break;
                }
                if e[0] == 0xe5 || e[11] & 0x3f == 0x0f || e[..11] != raw {
                    continue;
                }
                let mut fields = [0u8; 12];
                fields[0..2]
                    .copy_from_slice(&u16::try_from(first >> 16).unwrap_or(0).to_le_bytes());
                fields[6..8]
                    .copy_from_slice(&u16::try_from(first & 0xffff).unwrap_or(0).to_le_bytes());
                fields[8..12]
                    .copy_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
                let at = start + off + i as u64 * 32;
                let mut cur = [0u8; 12];
                cache.read_at(at + 20, &mut cur).map_err(&io)?;
                // Keep the modification time and date (bytes 22..26), replace the rest.
                fields[2..6].copy_from_slice(&cur[2..6]);
                cache.write_at(at + 20, &fields).map_err(&io)?;
                return Ok(());
            }
        }
        Err(Error::Corrupt {
            path: self.path.clone(),
            what: "FAT directory entry",
            offset: start,
            detail: format!("the entry of '{path}' vanished while writing it"),
        })
    }
}
