//! Integers read from on-disk structures, bounded: a field that lies past the end of the
//! buffer reads as 0 (never a panic), and the parsers' range checks then refuse it.

/// The `N` bytes at `at`, or zeros when they are not all inside `b`.
fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = at.checked_add(N).and_then(|end| b.get(at..end)) {
        a.copy_from_slice(s);
    }
    a
}

/// Little-endian `u16` at `at`.
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(field(b, at))
}

/// Little-endian `u32` at `at`.
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(field(b, at))
}

/// Little-endian `u64` at `at`.
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(field(b, at))
}

/// Big-endian `u32` at `at`.
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(field(b, at))
}

/// Big-endian `u64` at `at`.
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(field(b, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_in_order_and_out_of_range_is_zero() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le16(&b, 0), 0x0201);
        assert_eq!(le32(&b, 1), 0x0504_0302);
        assert_eq!(le64(&b, 1), 0x0908_0706_0504_0302);
        assert_eq!(be32(&b, 0), 0x0102_0304);
        assert_eq!(be64(&b, 0), 0x0102_0304_0506_0708);
        // Partly or wholly past the end, and an offset that would overflow.
        assert_eq!(le32(&b, 6), 0);
        assert_eq!(le64(&b, 2), 0);
        assert_eq!(be32(&b, usize::MAX - 1), 0);
        assert_eq!(le16(&[], 0), 0);
    }
}
