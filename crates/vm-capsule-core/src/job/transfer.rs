//! File transfer lists as the ad carries them: `TransferInput`, `TransferOutput`,
//! `TransferOutputRemaps` (HTCondor's `file_transfer.cpp` rules, as a user sees them).

use std::path::{Path, PathBuf};

/// One `TransferInput` entry, resolved against the job's `Iwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputItem {
    /// The entry as the user wrote it (what a routed job hands to HTCondor's transfer).
    pub entry: String,
    /// Absolute path on the submit side (for a URL, the URL).
    pub source: PathBuf,
    /// `dir/` (trailing slash): transfer the directory's contents, not the directory.
    pub contents_only: bool,
    /// A URL (`scheme://...`), fetched on the execute node by HTCondor's file-transfer
    /// plugins; the file's name in the sandbox is the URL's last path component.
    pub url: Option<String>,
}

impl InputItem {
    /// The name the entry takes in the sandbox, when it is one entry (not `dir/`).
    pub fn sandbox_name(&self) -> Option<String> {
        match &self.url {
            Some(url) => {
                let path = url.split(['?', '#']).next().unwrap_or(url);
                path.rsplit('/')
                    .next()
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
            }
            None => self
                .source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
        }
    }
}

/// Whether `entry` is a URL as HTCondor's file transfer sees one: `scheme://`, the scheme a
/// letter followed by letters, digits, `+`, `-` or `.`.
pub fn is_url(entry: &str) -> bool {
    entry.split_once("://").is_some_and(|(scheme, _)| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
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
            if is_url(&entry) {
                return InputItem {
                    source: PathBuf::from(&entry),
                    contents_only: false,
                    url: Some(entry.clone()),
                    entry,
                };
            }
            let contents_only = entry.len() > 1 && entry.ends_with('/');
            let trimmed = if contents_only {
                entry.trim_end_matches('/')
            } else {
                entry.as_str()
            };
            InputItem {
                source: iwd.join(trimmed),
                contents_only,
                url: None,
                entry,
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
    fn urls_keep_their_entry_and_name() {
        let items = input_items(
            "https://example.org/d/data.tar.gz?x=1, osdf:///ospool/x/y.dat, plain:name, C://x",
            Path::new("/home/u/run"),
        );
        assert_eq!(
            items[0].url.as_deref(),
            Some("https://example.org/d/data.tar.gz?x=1")
        );
        assert_eq!(items[0].sandbox_name().as_deref(), Some("data.tar.gz"));
        assert_eq!(items[1].sandbox_name().as_deref(), Some("y.dat"));
        assert_eq!(items[2].url, None);
        assert_eq!(items[2].entry, "plain:name");
        assert!(items[3].url.is_some());
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
