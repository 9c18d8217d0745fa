//! Booting a compressed kernel without its own decompressor.
//!
//! A distribution kernel (`vmlinuz`, a bzImage) carries the real kernel compressed and
//! decompresses itself before it starts. Under TCG that step is emulated: for Debian's
//! xz-compressed 8 MiB kernel it is about half of the test guest's boot (docs/PERFORMANCE.md).
//! The host does the same work natively in a fraction of the time, and QEMU can start the
//! uncompressed kernel (an ELF) directly through the PVH entry point most x86_64 kernels
//! carry (`XEN_ELFNOTE_PHYS32_ENTRY`, `CONFIG_PVH`); the guest then runs the same kernel
//! with the same command line and initrd.
//!
//! The uncompressed kernel goes into an anonymous memory file (no disk in the slot), written
//! sparsely (its zero pages are holes), and QEMU opens it through `/proc/<pid>/fd/<n>` of
//! this process, so it is not inherited and is freed once dropped.
//!
//! # Security
//! The kernel file comes from the job's sandbox, so it is parsed defensively: the setup
//! header's fields are bounds-checked, the output is capped at [`MAX_KERNEL_BYTES`], and the
//! ELF headers and notes are read with bounds. Anything unexpected means "boot the file as
//! it is", never an error.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Largest compressed kernel read.
const MAX_BZIMAGE_BYTES: u64 = 64 << 20;
/// Largest uncompressed kernel written (Debian's is 63 MiB).
pub const MAX_KERNEL_BYTES: u64 = 256 << 20;
/// The ELF note QEMU starts a PVH kernel at (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`).
const PHYS32_ENTRY_NOTE: u32 = 18;
/// Most program headers looked at.
const MAX_PROGRAM_HEADERS: u16 = 128;
/// Most bytes of notes looked at.
const MAX_NOTE_BYTES: u64 = 1 << 20;

/// An uncompressed kernel, ready for QEMU's `-kernel`.
#[derive(Debug)]
pub struct PvhKernel {
    file: OwnedFd,
    /// Bytes of the ELF.
    pub bytes: u64,
}

impl PvhKernel {
    /// The path QEMU opens it by (this process's descriptor).
    pub fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }
}

/// The payload compression of a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Xz,
    Gzip,
}

/// Where the compressed kernel is in a bzImage, and how it is compressed (`None`: not a
/// bzImage this can decompress).
fn payload(image: &[u8]) -> Option<(&[u8], Compression)> {
    let le16 = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
    let le32 = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
    // The boot protocol's setup header: "HdrS", version 2.08 or later has the payload fields.
    if image.get(0x202..0x206)? != b"HdrS" || le16(0x206)? < 0x0208 {
        return None;
    }
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = setup_sects
        .checked_add(1)?
        .checked_mul(512)?
        .checked_add(usize::try_from(le32(0x248)?).ok()?)?;
    let end = start.checked_add(usize::try_from(le32(0x24c)?).ok()?)?;
    let data = image.get(start..end)?;
    let kind = if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if data.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else {
        return None;
    };
    Some((data, kind))
}

/// Copy `reader` into `file` sparsely (zero pages left as holes), at most `max` bytes;
/// returns the length, or `None` when there was more.
fn copy_sparse(reader: &mut dyn Read, file: &File, max: u64) -> io::Result<Option<u64>> {
    const PAGE: usize = 4096;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        // Fill the buffer (short reads from the decoder) so pages line up.
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(buf.get_mut(filled..).unwrap_or_default())? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        let chunk = buf.get(..filled).unwrap_or_default();
        let end = offset.saturating_add(u64::try_from(filled).unwrap_or(u64::MAX));
        if end > max {
            return Ok(None);
        }
        for (i, page) in chunk.chunks(PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                let at = offset + u64::try_from(i * PAGE).unwrap_or(u64::MAX);
                file.write_all_at(page, at)?;
            }
        }
        offset = end;
        if filled < buf.len() {
            break;
        }
    }
    file.set_len(offset)?;
    Ok(Some(offset))
}

/// Whether `file` (of `len` bytes) is a little-endian x86_64 ELF with a PVH entry note.
fn has_pvh_entry(file: &File, len: u64) -> bool {
    let read = |at: u64, n: usize| -> Option<Vec<u8>> {
        if at.checked_add(u64::try_from(n).ok()?)? > len {
            return None;
        }
        let mut b = vec![0u8; n];
        file.read_exact_at(&mut b, at).ok()?;
        Some(b)
    };
    let check = || -> Option<bool> {
        let header = read(0, 64)?;
        let le16 =
            |b: &[u8], at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
        let le32 =
            |b: &[u8], at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
        let le64 =
            |b: &[u8], at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
        // ELF, 64-bit, little-endian, x86_64.
        if header.get(..6)? != b"\x7fELF\x02\x01" || le16(&header, 18)? != 62 {
            return Some(false);
        }
        let phoff = le64(&header, 32)?;
        let phentsize = le16(&header, 54)?;
        let phnum = le16(&header, 56)?;
        if phentsize < 56 || phnum > MAX_PROGRAM_HEADERS {
            return Some(false);
        }
        for i in 0..u64::from(phnum) {
            let ph = read(phoff.checked_add(i * u64::from(phentsize))?, 56)?;
            const PT_NOTE: u32 = 4;
            if le32(&ph, 0)? != PT_NOTE {
                continue;
            }
            let size = le64(&ph, 32)?.min(MAX_NOTE_BYTES);
            let notes = read(le64(&ph, 8)?, usize::try_from(size).ok()?)?;
            let mut at = 0usize;
            while at + 12 <= notes.len() {
                let namesz = usize::try_from(le32(&notes, at)?).ok()?;
                let descsz = usize::try_from(le32(&notes, at + 4)?).ok()?;
                let kind = le32(&notes, at + 8)?;
                let name = notes.get(at + 12..at.checked_add(12)?.checked_add(namesz)?)?;
                if name == b"Xen\0" && kind == PHYS32_ENTRY_NOTE {
                    return Some(true);
                }
                at = at
                    .checked_add(12)?
                    .checked_add(namesz.checked_add(3)? & !3)?
                    .checked_add(descsz.checked_add(3)? & !3)?;
            }
        }
        Some(false)
    };
    check().unwrap_or(false)
}

/// The kernel at `path` uncompressed, when it is a bzImage compressed with xz or gzip whose
/// kernel has a PVH entry point; `None` otherwise (boot the file as it is).
pub fn uncompressed_kernel(path: &Path) -> Option<PvhKernel> {
    // QEMU opens the memory file through this process's /proc entry, which the kernel lets
    // only a dumpable process's user do: not after `run --as-owner` dropped root, say.
    if rustix::process::dumpable_behavior().ok()? != rustix::process::DumpableBehavior::Dumpable {
        return None;
    }
    let mut image = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_BZIMAGE_BYTES + 1)
        .read_to_end(&mut image)
        .ok()?;
    if u64::try_from(image.len()).ok()? > MAX_BZIMAGE_BYTES {
        return None;
    }
    let (data, kind) = payload(&image)?;
    let fd = rustix::fs::memfd_create("vm-capsule-kernel", rustix::fs::MemfdFlags::CLOEXEC).ok()?;
    let file = File::from(fd);
    let mut decoder: Box<dyn Read + '_> = match kind {
        // The kernel's xz stream is followed by its size: one stream is read, the rest left.
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(data)),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
    };
    let bytes = copy_sparse(&mut decoder, &file, MAX_KERNEL_BYTES).ok()??;
    if !has_pvh_entry(&file, bytes) {
        return None;
    }
    Some(PvhKernel {
        file: file.into(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 x86_64 with one PT_NOTE segment holding `note` (name, type).
    fn elf(note: (&[u8], u32)) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[18..20].copy_from_slice(&62u16.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let mut notes = Vec::new();
        notes.extend_from_slice(&u32::try_from(note.0.len()).unwrap().to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&note.1.to_le_bytes());
        notes.extend_from_slice(note.0);
        while notes.len() % 4 != 0 {
            notes.push(0);
        }
        notes.extend_from_slice(&0x0100_0000u32.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&4u32.to_le_bytes());
        ph[8..16].copy_from_slice(&(64u64 + 56).to_le_bytes());
        ph[32..40].copy_from_slice(&u64::try_from(notes.len()).unwrap().to_le_bytes());
        e.extend_from_slice(&ph);
        e.extend_from_slice(&notes);
        // A page of zeros and a page of data, as a kernel has.
        e.resize(16384, 0);
        e.extend_from_slice(&[0x90; 4096]);
        e
    }

    /// A bzImage setup header around `payload`.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512];
        b[0x1f1] = 4;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = liblzma::write::XzEncoder::new(&mut out, 6);
        enc.write_all(data).unwrap();
        enc.finish().unwrap();
        // The kernel build appends the uncompressed size.
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
        let p = dir.join("vmlinuz");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn xz_and_gzip_kernels_with_a_pvh_note_come_out_whole() {
        let d = tempfile::tempdir().unwrap();
        let kernel = elf((b"Xen\0", PHYS32_ENTRY_NOTE));
        for payload in [xz(&kernel), gzip(&kernel)] {
            let k = uncompressed_kernel(&write(d.path(), &bzimage(&payload))).unwrap();
            assert_eq!(k.bytes, u64::try_from(kernel.len()).unwrap());
            // Read back through the path QEMU is given.
            assert_eq!(std::fs::read(k.path()).unwrap(), kernel);
        }
    }

    #[test]
    fn anything_else_boots_as_it_is() {
        let d = tempfile::tempdir().unwrap();
        let no_note = elf((b"GNU\0", 3));
        let wrong_type = elf((b"Xen\0", 17));
        for image in [
            bzimage(&xz(&no_note)),
            bzimage(&xz(&wrong_type)),
            bzimage(b"BZh91AY&SY not handled"),
            bzimage(&xz(b"not an elf at all")),
            elf((b"Xen\0", PHYS32_ENTRY_NOTE)),
            b"short".to_vec(),
        ] {
            assert!(uncompressed_kernel(&write(d.path(), &image)).is_none());
        }
        // Fields pointing outside the file.
        let mut broken = bzimage(&xz(&elf((b"Xen\0", PHYS32_ENTRY_NOTE))));
        broken[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(uncompressed_kernel(&write(d.path(), &broken)).is_none());
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_bound() {
        let zeros = std::io::repeat(0).take(MAX_KERNEL_BYTES + 1);
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let file = File::from(fd);
        let mut reader: Box<dyn Read> = Box::new(zeros);
        assert_eq!(
            copy_sparse(&mut reader, &file, MAX_KERNEL_BYTES).unwrap(),
            None
        );
    }
}
