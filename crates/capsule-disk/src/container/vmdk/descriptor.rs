//! The VMDK text descriptor: `createType`, CIDs, the parent hint and the extent lines.
//!
//! Parsed from at most [`MAX_DESCRIPTOR`] bytes; unknown keys are ignored as VMware does.

use std::path::Path;

use crate::Error;

/// Descriptors larger than this are rejected (real ones are well under 2 KiB).
pub(crate) const MAX_DESCRIPTOR: u64 = 1024 * 1024;
/// More extents than this are rejected (a 64 TiB twoGbMaxExtent disk has 32768).
const MAX_EXTENTS: usize = 65_536;

/// How an extent stores its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExtentKind {
    /// Plain bytes in a file, from a sector offset.
    Flat,
    /// A hosted sparse extent (`KDMV` header, grain tables).
    Sparse,
    /// Reads as zeros, holds nothing.
    Zero,
}

/// One extent line: `RW 8388608 SPARSE "disk.vmdk"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtentLine {
    pub(crate) writable: bool,
    pub(crate) sectors: u64,
    pub(crate) kind: ExtentKind,
    pub(crate) file: String,
    /// Start sector inside the file (FLAT only).
    pub(crate) offset: u64,
}

/// The fields of a descriptor we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub(crate) cid: u32,
    pub(crate) parent_cid: u32,
    pub(crate) create_type: String,
    pub(crate) parent_hint: Option<String>,
    pub(crate) extents: Vec<ExtentLine>,
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(s)
}

impl Descriptor {
    /// Parse descriptor text found in `path` at byte `offset` (for error messages).
    pub(crate) fn parse(text: &str, path: &Path, offset: u64) -> Result<Descriptor, Error> {
        let bad = |line: usize, d: String| {
            Error::corrupt(
                path,
                "vmdk descriptor",
                offset,
                format!("line {}: {d}", line + 1),
            )
        };
        let mut d = Descriptor {
            cid: 0xffff_ffff,
            parent_cid: 0xffff_ffff,
            create_type: String::new(),
            parent_hint: None,
            extents: Vec::new(),
        };
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(bad(n, format!("more than {MAX_EXTENTS} extents")));
                }
                d.extents.push(parse_extent(line).map_err(|e| bad(n, e))?);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = unquote(value);
            match key.trim() {
                "CID" => d.cid = parse_hex(value).map_err(|e| bad(n, e))?,
                "parentCID" => d.parent_cid = parse_hex(value).map_err(|e| bad(n, e))?,
                "createType" => d.create_type = value.to_owned(),
                "parentFileNameHint" => d.parent_hint = Some(value.to_owned()),
                _ => {}
            }
        }
        if d.extents.is_empty() {
            return Err(Error::corrupt(
                path,
                "vmdk descriptor",
                offset,
                "no extent lines",
            ));
        }
        Ok(d)
    }

    /// Render a descriptor for a one-extent sparse disk (qemu's layout).
    pub(crate) fn render_sparse(cid: u32, sectors: u64, file: &str) -> String {
        let cylinders = (sectors / (16 * 63)).min(16383);
        format!(
            "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\n\
             createType=\"monolithicSparse\"\n\n# Extent description\n\
             RW {sectors} SPARSE \"{file}\"\n\n# The Disk Data Base\n#DDB\n\n\
             ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{cylinders}\"\n\
             ddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n"
        )
    }
}

fn parse_hex(v: &str) -> Result<u32, String> {
    u32::from_str_radix(v.trim(), 16).map_err(|_| format!("'{v}' is not a hexadecimal CID"))
}

fn parse_extent(line: &str) -> Result<ExtentLine, String> {
    // ACCESS SIZE TYPE "FILE" [OFFSET]; the file name may contain spaces, so split on quotes.
    let (head, rest) = line.split_once('"').unwrap_or((line, ""));
    let mut words = head.split_whitespace();
    let access = words.next().unwrap_or("");
    let size = words.next().ok_or("extent line without a size")?;
    let kind = words.next().ok_or("extent line without a type")?;
    let sectors = size
        .parse::<u64>()
        .map_err(|_| format!("extent size '{size}' is not a number"))?;
    let kind = match kind {
        "FLAT" | "VMFS" => ExtentKind::Flat,
        "SPARSE" => ExtentKind::Sparse,
        "ZERO" => ExtentKind::Zero,
        other => {
            return Err(format!(
                "extent type {other} is not supported (FLAT, SPARSE, ZERO are)"
            ))
        }
    };
    let (file, tail) = match rest.split_once('"') {
        Some((f, t)) => (f.to_owned(), t),
        None if kind == ExtentKind::Zero => (String::new(), ""),
        None => return Err("extent line without a quoted file name".to_owned()),
    };
    let offset = match tail.split_whitespace().next() {
        Some(o) => o
            .parse::<u64>()
            .map_err(|_| format!("extent offset '{o}' is not a number"))?,
        None => 0,
    };
    Ok(ExtentLine {
        writable: access == "RW",
        sectors,
        kind,
        file,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_delta() {
        let text = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=abcdef01\n\
                    createType=\"monolithicSparse\"\nparentFileNameHint=\"base dir/base.vmdk\"\n\n\
                    RW 8192 SPARSE \"top.vmdk\"\nRW 100 FLAT \"f.raw\" 7\nRDONLY 5 ZERO\n";
        let d = Descriptor::parse(text, Path::new("t"), 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.cid, 0x1234_5678);
        assert_eq!(d.parent_cid, 0xabcd_ef01);
        assert_eq!(d.parent_hint.as_deref(), Some("base dir/base.vmdk"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[1].offset, 7);
        assert_eq!(d.extents[2].kind, ExtentKind::Zero);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Descriptor::parse("RW x SPARSE \"a\"", Path::new("t"), 0).is_err());
        assert!(Descriptor::parse("createType=\"x\"", Path::new("t"), 0).is_err());
        assert!(Descriptor::parse("RW 5 VMFSSPARSE \"a\"", Path::new("t"), 0).is_err());
    }
}
