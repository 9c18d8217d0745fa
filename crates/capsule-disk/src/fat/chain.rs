//! File data along a cluster chain, read and written without `fatfs`: `fatfs` moves one
//! cluster per call with FAT lookups in between, while these move up to a megabyte per
//! container access over runs of consecutive clusters.

use super::{BootInfo, FatError, VolumeRw};

/// Largest file FAT can hold: 4 GiB - 1.
pub(crate) const MAX_FILE_SIZE: u64 = u32::MAX as u64;

fn outside(boot: &BootInfo, from: u64, to: u64) -> FatError {
    FatError::Corrupt {
        what: "FAT cluster chain",
        offset: boot.fat_offset,
        detail: format!("cluster {from} links to {to:#x}, outside the volume"),
    }
}

/// Appends data to a new cluster chain: allocates runs of free clusters, links them and
/// writes the data, then hands the first cluster and size to the directory entry.
#[derive(Debug)]
pub(crate) struct ChainWriter {
    /// Where the next free-cluster search starts.
    hint: u64,
    first: Option<u64>,
    last: Option<u64>,
    allocated: u64,
    written: u64,
}

impl ChainWriter {
    /// A new, empty chain; the search for free clusters starts at `hint`.
    pub(crate) fn new(hint: u64) -> Self {
        ChainWriter {
            hint,
            first: None,
            last: None,
            allocated: 0,
            written: 0,
        }
    }

    /// Append `data`. Every piece but the last must be a whole number of clusters.
    ///
    /// [`FatError::Full`] when no free cluster is left, [`FatError::FileTooLarge`] past
    /// [`MAX_FILE_SIZE`].
    pub(crate) fn append(
        &mut self,
        boot: &BootInfo,
        v: &mut dyn VolumeRw,
        data: &[u8],
    ) -> Result<(), FatError> {
        let n = data.len() as u64;
        if self.written.saturating_add(n) > MAX_FILE_SIZE {
            return Err(FatError::FileTooLarge);
        }
        let mut done = 0u64;
        while done < n {
            let need = n - done;
            let (c, len) = boot.alloc_run(v, self.hint, need.div_ceil(boot.cluster_size))?;
            self.hint = c + len;
            self.allocated += len;
            boot.link_run(v, c, len, boot.eoc())?;
            match self.last {
                Some(l) => boot.set_entry(v, l, c)?,
                None => self.first = Some(c),
            }
            self.last = Some(c + len - 1);
            let bytes = (len * boot.cluster_size).min(need);
            let at = boot.cluster_offset(c).ok_or_else(|| outside(boot, c, c))?;
            let piece = usize::try_from(done)
                .ok()
                .zip(usize::try_from(done + bytes).ok())
                .and_then(|(a, b)| data.get(a..b))
                .unwrap_or_default();
            v.write_at(at, piece)?;
            done += bytes;
        }
        self.written += n;
        Ok(())
    }

    /// Give every allocated cluster back, so a failed write leaves no lost chain behind.
    pub(crate) fn abort(&self, boot: &BootInfo, v: &mut dyn VolumeRw) -> std::io::Result<()> {
        match self.first {
            Some(first) => boot.free_chain(v, first, self.allocated),
            None => Ok(()),
        }
    }

    /// The chain's first cluster (0 for an empty chain, as FAT stores it).
    pub(crate) fn first_cluster(&self) -> u64 {
        self.first.unwrap_or(0)
    }

    /// Bytes appended so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Where the next free-cluster search should start.
    pub(crate) fn hint(&self) -> u64 {
        self.hint
    }
}

/// Reads a file of known length along its (checked) cluster chain, merging physically
/// consecutive clusters into one volume read.
#[derive(Debug)]
pub(crate) struct ChainReader {
    len: u64,
    pos: u64,
    /// Cluster holding byte `pos` (meaningful while `pos < len`).
    cluster: u64,
}

impl ChainReader {
    /// A reader of `len` bytes starting at cluster `first`.
    pub(crate) fn new(first: u32, len: u64) -> Self {
        ChainReader {
            len,
            pos: 0,
            cluster: u64::from(first),
        }
    }

    /// The file's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Read from the current position into `buf`; 0 at the end of the file.
    pub(crate) fn read(
        &mut self,
        boot: &BootInfo,
        v: &mut dyn VolumeRw,
        buf: &mut [u8],
    ) -> Result<usize, FatError> {
        let want = usize::try_from(self.remaining())
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let cs = boot.cluster_size;
        let Some(base) = boot.cluster_offset(self.cluster) else {
            return Err(outside(boot, self.cluster, self.cluster));
        };
        // Extend the run over physically consecutive clusters, up to `want` bytes.
        let in_cluster = self.pos % cs;
        let mut run = cs - in_cluster;
        let mut last = self.cluster;
        let mut after = None;
        while run < want as u64 {
            let next = boot.entry(v, last)?;
            if next != last + 1 || !boot.is_valid_cluster(next) {
                after = Some(next);
                break;
            }
            last = next;
            run += cs;
        }
        let n = usize::try_from(run.min(want as u64)).unwrap_or(want);
        let (head, _) = buf.split_at_mut(n);
        v.read_at(base + in_cluster, head)?;
        self.pos += n as u64;
        // Position on the cluster holding the new `pos`.
        let whole = (in_cluster + n as u64) / cs; // clusters finished, counting from self.cluster
        if whole > 0 && self.pos < self.len {
            // The last finished cluster is `self.cluster + whole - 1` (the run is consecutive).
            let done = self.cluster + whole - 1;
            let next = match after {
                Some(a) if done == last => a,
                _ if done < last => done + 1,
                _ => boot.entry(v, done)?,
            };
            if !boot.is_valid_cluster(next) {
                return Err(outside(boot, done, next));
            }
            self.cluster = next;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]
    use super::super::testutil::fake_volume;
    use super::*;

    /// Written in uneven pieces and read back in odd sizes, on every FAT type; a fragmented
    /// free space forces several runs.
    #[test]
    fn write_then_read_back() {
        for size in [2u64 << 20, 16 << 20] {
            let (boot, mut v) = fake_volume(size);
            for c in [4u64, 9, 10, 30] {
                boot.set_entry(&mut v, c, boot.eoc()).unwrap();
            }
            let cs = boot.cluster_size as usize;
            let data: Vec<u8> = (0..cs * 40 + 123).map(|i| (i * 7 % 251) as u8).collect();
            let mut w = ChainWriter::new(2);
            let (a, b) = data.split_at(cs * 8);
            w.append(&boot, &mut v, a).unwrap();
            w.append(&boot, &mut v, b).unwrap();
            assert_eq!(w.written(), data.len() as u64);
            assert_eq!(w.first_cluster(), 2);
            let first = u32::try_from(w.first_cluster()).unwrap();
            boot.check_chain(&mut v, first, w.written()).unwrap();
            for piece in [1usize, 700, cs, 3 * cs + 5, 1 << 20] {
                let mut r = ChainReader::new(first, w.written());
                let mut got = Vec::new();
                let mut buf = vec![0u8; piece];
                loop {
                    let n = r.read(&boot, &mut v, &mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(got == data, "piece {piece}");
            }
            // Abort gives every cluster back.
            let before = boot.count_free(&mut v).unwrap();
            w.abort(&boot, &mut v).unwrap();
            assert_eq!(boot.count_free(&mut v).unwrap(), before + 41);
        }
    }

    #[test]
    fn full_volume_and_huge_files_are_refused() {
        let (boot, mut v) = fake_volume(2 << 20);
        let mut w = ChainWriter::new(2);
        let too_much = vec![1u8; usize::try_from(boot.capacity()).unwrap() + 1];
        assert!(matches!(
            w.append(&boot, &mut v, &too_much),
            Err(FatError::Full)
        ));
        let mut w = ChainWriter::new(2);
        w.written = MAX_FILE_SIZE;
        assert!(matches!(
            w.append(&boot, &mut v, &[1]),
            Err(FatError::FileTooLarge)
        ));
    }
}
