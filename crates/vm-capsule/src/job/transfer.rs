//! File transfer lists as the ad carries them: `TransferInput`, `TransferOutput`,
//! `TransferOutputRemaps` (HTCondor's `file_transfer.cpp` rules, as a user sees them).

use std::path::{Path, PathBuf};

/// One `TransferInput` entry, resolved against the job's `Iwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputItem {
    /// Absolute path on the submit side.
    pub source: PathBuf,
    /// `dir/` (trailing slash): transfer the directory's contents, not the directory.
    pub contents_only: bool,
}

/// Split a comma-separated transfer list, trimming spaces and skipping empty entries.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Resolve `TransferInput` entries against `iwd` (absolute entries stay as they are).
pub fn input_items(text: &str, iwd: &Path) -> Vec<InputItem> {
    split_list(text)
        .into_iter()
        .map(|entry| {
            let contents_only = entry.len() > 1 && entry.ends_with('/');
            let trimmed = if contents_only {
                entry.trim_end_matches('/')
            } else {
                entry.as_str()
            };
            InputItem {
                source: iwd.join(trimmed),
                contents_only,
            }
        })
        .collect()
}

/// Parse `TransferOutputRemaps`: `name = target; name2 = target2`, where `\;` and `\=` are
/// literal (HTCondor escapes those two in remap lists).
pub fn parse_remaps(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in split_unescaped(text, ';') {
        let parts = split_unescaped(&entry, '=');
        let Some((src, rest)) = parts.split_first() else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        let src = unescape(src.trim());
        let dst = unescape(rest.join("=").trim());
        if !src.is_empty() && !dst.is_empty() {
            out.push((src, dst));
        }
    }
    out
}

/// Split on `sep` where it is not preceded by a backslash (the backslash is kept).
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if c == sep && !escaped {
            out.push(String::new());
            continue;
        }
        escaped = c == '\\' && !escaped;
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("\\;", ";").replace("\\=", "=")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inputs_resolve_against_iwd() {
        let items = input_items(
            "a.txt, dir1,dir2/,/abs/path/data.bin",
            Path::new("/home/u/run"),
        );
        assert_eq!(items[0].source, PathBuf::from("/home/u/run/a.txt"));
        assert!(!items[1].contents_only);
        assert!(items[2].contents_only);
        assert_eq!(items[2].source, PathBuf::from("/home/u/run/dir2"));
        assert_eq!(items[3].source, PathBuf::from("/abs/path/data.bin"));
    }

    #[test]
    fn remaps() {
        assert_eq!(
            parse_remaps("a.out = results/a.txt; b.out = /tmp/abs/b.txt"),
            vec![
                ("a.out".to_owned(), "results/a.txt".to_owned()),
                ("b.out".to_owned(), "/tmp/abs/b.txt".to_owned())
            ]
        );
        assert_eq!(
            parse_remaps("we\\;ird = x\\=y"),
            vec![("we;ird".to_owned(), "x=y".to_owned())]
        );
    }
}
