//! Just enough ELF to tell whether an agent binary is static: it runs in guests whose C
//! library (or lack of one) nobody checked.

/// The program interpreter an x86_64 ELF executable asks for (`None`: statically linked).
///
/// # Errors
/// A message when `bytes` is not a 64-bit little-endian x86_64 ELF file or its program
/// headers lie outside it.
pub fn interpreter(bytes: &[u8]) -> Result<Option<String>, String> {
    let u16_at = |off: usize| -> Option<u16> {
        Some(u16::from_le_bytes(
            bytes.get(off..off + 2)?.try_into().ok()?,
        ))
    };
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            bytes.get(off..off + 4)?.try_into().ok()?,
        ))
    };
    let u64_at = |off: usize| -> Option<usize> {
        let v = u64::from_le_bytes(bytes.get(off..off + 8)?.try_into().ok()?);
        usize::try_from(v).ok()
    };
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".to_owned());
    }
    if u16_at(18) != Some(62) {
        return Err("not built for x86_64".to_owned());
    }
    let bad = || "program headers out of bounds".to_owned();
    let phoff = u64_at(32).ok_or_else(bad)?;
    let phentsize = usize::from(u16_at(54).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(56).ok_or_else(bad)?);
    for i in 0..phnum {
        let ph = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(bad)?;
        // PT_INTERP
        if u32_at(ph).ok_or_else(bad)? == 3 {
            let off = u64_at(ph + 8).ok_or_else(bad)?;
            let len = u64_at(ph + 32).ok_or_else(bad)?;
            let end = off.checked_add(len).ok_or_else(bad)?;
            let text = bytes.get(off..end).ok_or_else(bad)?;
            let text = String::from_utf8_lossy(text);
            return Ok(Some(text.trim_end_matches('\0').to_owned()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A minimal x86_64 ELF header with one program header of type `ptype` whose data is
    /// `data` (at offset 120).
    fn elf(ptype: u32, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 120];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little-endian
        b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        b[64..68].copy_from_slice(&ptype.to_le_bytes());
        b[72..80].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        b[96..104].copy_from_slice(&(data.len() as u64).to_le_bytes()); // p_filesz
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn static_dynamic_and_not_elf() {
        assert_eq!(interpreter(&elf(1, b"")).unwrap(), None);
        assert_eq!(
            interpreter(&elf(3, b"/lib64/ld-linux-x86-64.so.2\0")).unwrap(),
            Some("/lib64/ld-linux-x86-64.so.2".to_owned())
        );
        assert!(interpreter(b"#!/bin/sh\n").is_err());
        // A program header table past the end of the file.
        let mut cut = elf(3, b"/x\0");
        cut.truncate(100);
        assert!(interpreter(&cut).is_err());
        // The shell on this machine is a real program: it parses either way.
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(interpreter(&sh).is_ok());
    }
}
