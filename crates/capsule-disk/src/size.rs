//! Human sizes on the command line and in config knobs: `512M`, `4G`, `1048576`, `2GiB`.

use crate::Error;

/// Parse a size: a number with an optional binary suffix `K`, `M`, `G`, `T` (also `KiB`,
/// `KB`, ... all meaning powers of 1024, as qemu-img does) or `B`/`S` (bytes / 512-byte sectors).
///
/// # Errors
/// [`Error::InvalidArgument`] for anything else or a value that overflows `u64`.
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let invalid = |reason: &str| Error::InvalidArgument {
        what: "size",
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        return Err(invalid("expected a number such as 512M, 4G or 1048576"));
    }
    let n: u64 = num.parse().map_err(|_| invalid("number too large"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B').filter(|u| !u.is_empty()))
        .unwrap_or(&unit);
    let mult: u64 = match unit {
        "" | "B" => 1,
        "S" => 512,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(invalid("unknown unit; use K, M, G or T (powers of 1024)")),
    };
    n.checked_mul(mult).ok_or_else(|| invalid("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").ok(), Some(512 << 20));
        assert_eq!(parse_size("4G").ok(), Some(4 << 30));
        assert_eq!(parse_size("2GiB").ok(), Some(2 << 30));
        assert_eq!(parse_size("10k").ok(), Some(10240));
        assert_eq!(parse_size("32256").ok(), Some(32256));
        assert_eq!(parse_size("63S").ok(), Some(32256));
        assert_eq!(parse_size("100B").ok(), Some(100));
        for bad in [
            "",
            "G",
            "1.5G",
            "4X",
            "-1",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
