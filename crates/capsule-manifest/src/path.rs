//! [`RelPath`]: the one rule set for paths relative to a job's work dir, wherever they cross the
//! host/guest boundary (manifest fields, `result.json`, `input.tar` and `output.tar` entries,
//! data-disk archive entries, output placement on the host).
//!
//! # Security
//! A `RelPath` is valid by construction: not empty, not absolute, no `.`/`..`/empty components,
//! no NUL, UTF-8, at most [`MAX_PATH_BYTES`] bytes with components of at most
//! [`MAX_NAME_BYTES`]. Joined onto a directory it therefore names something inside it,
//! component by component (links along the way are the caller's to refuse).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Longest relative path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single component accepted, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a path is not a clean relative path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PathError {
    /// Nothing at all.
    #[error("the path is empty")]
    Empty,
    /// Over [`MAX_PATH_BYTES`].
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// A component over [`MAX_NAME_BYTES`].
    #[error("a component is longer than {MAX_NAME_BYTES} bytes")]
    ComponentTooLong,
    /// A NUL byte.
    #[error("the path contains a NUL byte")]
    Nul,
    /// Not UTF-8.
    #[error("the path is not UTF-8")]
    NotUtf8,
    /// Starts with `/`.
    #[error("the path is absolute; it must be relative to the work dir")]
    Absolute,
    /// A `.` or `..` component.
    #[error("the path has a '{0}' component; it must stay inside the work dir")]
    DotComponent(&'static str),
    /// `//`, or a trailing `/` where none is allowed.
    #[error("the path has an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    /// More than one component where a plain name is required.
    #[error("a plain file name may not contain '/'")]
    NotAName,
}

/// A clean path relative to a work dir (see the module docs for the rules). In JSON it is a
/// plain string, refused when read if it breaks a rule.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Parse a strict relative path: `a/b/c`, nothing else.
    ///
    /// # Errors
    /// [`PathError`] naming the broken rule.
    pub fn parse(path: &str) -> Result<RelPath, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if path.contains('\0') {
            return Err(PathError::Nul);
        }
        if path.starts_with('/') {
            return Err(PathError::Absolute);
        }
        for comp in path.split('/') {
            match comp {
                "" => return Err(PathError::EmptyComponent),
                "." => return Err(PathError::DotComponent(".")),
                ".." => return Err(PathError::DotComponent("..")),
                c if c.len() > MAX_NAME_BYTES => return Err(PathError::ComponentTooLong),
                _ => {}
            }
        }
        Ok(RelPath(path.to_owned()))
    }

    /// Parse an archive entry name as tar writers spell it: leading `./` prefixes and one
    /// trailing `/` (directory entries) are dropped; everything else follows [`RelPath::parse`].
    /// `Ok(None)` is the archive's own root (`./`). Bytes are checked before any allocation
    /// beyond the input's own length.
    ///
    /// # Errors
    /// [`PathError`] naming the broken rule; a name that is not UTF-8 is refused.
    pub fn from_archive_name(name: &[u8]) -> Result<Option<RelPath>, PathError> {
        if name.len() > MAX_PATH_BYTES + 2 {
            return Err(PathError::TooLong);
        }
        let text = std::str::from_utf8(name).map_err(|_| PathError::NotUtf8)?;
        let mut rel = text;
        while let Some(rest) = rel.strip_prefix("./") {
            rel = rest;
        }
        let rel = rel.strip_suffix('/').unwrap_or(rel);
        if rel.is_empty() || rel == "." {
            return if text.is_empty() {
                Err(PathError::Empty)
            } else {
                Ok(None)
            };
        }
        RelPath::parse(rel).map(Some)
    }

    /// Parse a plain file name: a valid path of exactly one component.
    ///
    /// # Errors
    /// [`PathError`], [`PathError::NotAName`] when it has a `/`.
    pub fn file_name_only(name: &str) -> Result<RelPath, PathError> {
        let path = RelPath::parse(name)?;
        if path.0.contains('/') {
            return Err(PathError::NotAName);
        }
        Ok(path)
    }

    /// A name this crate knows to be clean (the data disk's own file names).
    pub(crate) fn known(name: &'static str) -> RelPath {
        debug_assert!(RelPath::parse(name).is_ok(), "{name}");
        RelPath(name.to_owned())
    }

    /// The path as text, components joined with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, first to last (none is empty, `.` or `..`).
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        self.0.split('/')
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Everything but the last component, if there is more than one.
    pub fn parent(&self) -> Option<RelPath> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| RelPath(parent.to_owned()))
    }

    /// Whether `prefix` is this path or a directory above it (component-wise).
    pub fn starts_with(&self, prefix: &RelPath) -> bool {
        self.strip_prefix(prefix).is_some()
    }

    /// What follows `prefix` (`None` if `prefix` is not above this path; `Some(None)` when the
    /// two are equal).
    pub fn strip_prefix(&self, prefix: &RelPath) -> Option<Option<RelPath>> {
        if self.0 == prefix.0 {
            return Some(None);
        }
        let rest = self.0.strip_prefix(&prefix.0)?.strip_prefix('/')?;
        Some(Some(RelPath(rest.to_owned())))
    }

    /// `self/other`.
    ///
    /// # Errors
    /// [`PathError::TooLong`] when the result is over [`MAX_PATH_BYTES`].
    pub fn join(&self, other: &RelPath) -> Result<RelPath, PathError> {
        let len = self.0.len() + 1 + other.0.len();
        if len > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        Ok(RelPath(format!("{}/{}", self.0, other.0)))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// As the string it is: messages quote paths with `{:?}`.
impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for RelPath {
    type Err = PathError;

    fn from_str(path: &str) -> Result<RelPath, PathError> {
        RelPath::parse(path)
    }
}

impl TryFrom<&str> for RelPath {
    type Error = PathError;

    fn try_from(path: &str) -> Result<RelPath, PathError> {
        RelPath::parse(path)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RelPath, D::Error> {
        let text = String::deserialize(deserializer)?;
        RelPath::parse(&text).map_err(|e| invalid_path(&text, &e))
    }
}

/// The serde error for a path that breaks a rule, naming it (shortened) and the rule.
fn invalid_path<E: serde::de::Error>(text: &str, why: &PathError) -> E {
    let shown: String = text.chars().take(200).collect();
    E::custom(format!("invalid path {shown:?}: {why}"))
}

/// A `TransferOutput` entry: a clean relative path, and whether it ended in `/` (HTCondor's
/// "the directory's contents"). In JSON it is the string as given, trailing `/` included.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutputPath {
    path: RelPath,
    contents_only: bool,
}

impl OutputPath {
    /// Parse an entry: a [`RelPath`], optionally followed by one `/`.
    ///
    /// # Errors
    /// [`PathError`] naming the broken rule.
    pub fn parse(entry: &str) -> Result<OutputPath, PathError> {
        match entry.strip_suffix('/') {
            Some(body) if !body.is_empty() => Ok(OutputPath {
                path: RelPath::parse(body)?,
                contents_only: true,
            }),
            _ => Ok(OutputPath {
                path: RelPath::parse(entry)?,
                contents_only: false,
            }),
        }
    }

    /// The path, without the trailing `/`.
    pub fn path(&self) -> &RelPath {
        &self.path
    }

    /// Whether the entry ended in `/`.
    pub fn contents_only(&self) -> bool {
        self.contents_only
    }
}

impl fmt::Display for OutputPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path.as_str())?;
        if self.contents_only {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// As the string it is, trailing `/` included.
impl fmt::Debug for OutputPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl FromStr for OutputPath {
    type Err = PathError;

    fn from_str(entry: &str) -> Result<OutputPath, PathError> {
        OutputPath::parse(entry)
    }
}

impl Serialize for OutputPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OutputPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OutputPath, D::Error> {
        let text = String::deserialize(deserializer)?;
        OutputPath::parse(&text).map_err(|e| invalid_path(&text, &e))
    }
}

/// The program a manifest runs: a file shipped in `input.tar` (relative to the work dir), or
/// an absolute path inside the guest image. In JSON it is a plain string; absolute when it
/// starts with `/`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Executable {
    /// Shipped in `input.tar`.
    WorkDir(RelPath),
    /// In the guest image (no NUL byte).
    Image(String),
}

impl Executable {
    /// Parse an executable: absolute (no NUL), or a [`RelPath`].
    ///
    /// # Errors
    /// [`PathError`] naming the broken rule.
    pub fn parse(text: &str) -> Result<Executable, PathError> {
        if text.starts_with('/') {
            if text.contains('\0') {
                return Err(PathError::Nul);
            }
            return Ok(Executable::Image(text.to_owned()));
        }
        RelPath::parse(text).map(Executable::WorkDir)
    }

    /// The executable as written.
    pub fn as_str(&self) -> &str {
        match self {
            Executable::WorkDir(rel) => rel.as_str(),
            Executable::Image(abs) => abs,
        }
    }
}

impl fmt::Display for Executable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As the string it is.
impl fmt::Debug for Executable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl FromStr for Executable {
    type Err = PathError;

    fn from_str(text: &str) -> Result<Executable, PathError> {
        Executable::parse(text)
    }
}

impl Serialize for Executable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Executable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Executable, D::Error> {
        let text = String::deserialize(deserializer)?;
        Executable::parse(&text).map_err(|e| invalid_path(&text, &e))
    }
}

impl AsRef<std::path::Path> for RelPath {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

/// Hostile names for tests, in one table: every guard that takes a relative path from the
/// guest or an archive must refuse each of them (as a strict path and as an archive name).
pub const HOSTILE_NAMES: &[&[u8]] = &[
    b"",
    b"/etc/passwd",
    b"/tmp/abs-escape",
    b"..",
    b"../escape",
    b"a/../../escape",
    b"./../escape",
    b"a//b",
    b"a/./b",
    b"a/.",
    b"a\0b",
    b"/////////..",
    b"//",
    b"\xff\xfe",
    b"dir/../../../etc/shadow",
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hostile_names_are_refused_both_ways() {
        let long = "a".repeat(256);
        let too_long = "a/".repeat(2049);
        let mut names: Vec<&[u8]> = HOSTILE_NAMES.to_vec();
        names.push(long.as_bytes());
        names.push(too_long.as_bytes());
        for bad in names {
            if let Ok(text) = std::str::from_utf8(bad) {
                assert!(RelPath::parse(text).is_err(), "{bad:?} parsed");
            }
            assert!(
                !matches!(RelPath::from_archive_name(bad), Ok(Some(_))),
                "{bad:?} accepted as an archive name"
            );
        }
        assert!(RelPath::parse("dir/").is_err());
        assert!(OutputPath::parse("dir//").is_err());
        assert!(OutputPath::parse("/").is_err());
    }

    #[test]
    fn clean_paths_are_accepted() {
        for good in ["a", "a/b/c", "with space", "..hidden", "a.b"] {
            assert_eq!(RelPath::parse(good).unwrap().as_str(), good);
        }
        assert!(OutputPath::parse("dir/").unwrap().contents_only());
        assert!(RelPath::file_name_only("stdout").is_ok());
        assert_eq!(RelPath::file_name_only("a/b"), Err(PathError::NotAName));
    }

    #[test]
    fn archive_names_drop_dot_slash_and_one_trailing_slash() {
        let p = |s: &[u8]| RelPath::from_archive_name(s).unwrap().map(|p| p.0);
        assert_eq!(p(b"./a/b/"), Some("a/b".to_owned()));
        assert_eq!(p(b"././x"), Some("x".to_owned()));
        assert_eq!(p(b"./"), None);
        assert!(RelPath::from_archive_name(b"a//").is_err());
    }

    /// Every hostile name is refused when JSON is read, naming the value; clean ones travel
    /// as the plain strings they were (the wire format of older agents and hooks).
    #[test]
    fn json_refuses_hostile_paths_and_keeps_the_wire_format() {
        for bad in HOSTILE_NAMES
            .iter()
            .filter_map(|b| std::str::from_utf8(b).ok())
        {
            let json = serde_json::to_string(bad).unwrap();
            let e = serde_json::from_str::<RelPath>(&json)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("invalid path"), "{bad:?}: {e}");
            assert!(
                serde_json::from_str::<OutputPath>(&json).is_err(),
                "{bad:?}"
            );
            if !bad.starts_with('/') || bad.contains('\0') {
                assert!(
                    serde_json::from_str::<Executable>(&json).is_err(),
                    "{bad:?}"
                );
            }
        }
        let long = serde_json::to_string(&"a".repeat(256)).unwrap();
        assert!(serde_json::from_str::<RelPath>(&long).is_err());
        for good in ["a", "a/b/c"] {
            let json = serde_json::to_string(good).unwrap();
            let p: RelPath = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&p).unwrap(), json);
            assert_eq!(format!("{p:?}"), format!("{good:?}"));
        }
        let dir: OutputPath = serde_json::from_str("\"d/e/\"").unwrap();
        assert!(dir.contents_only());
        assert_eq!(dir.path().as_str(), "d/e");
        assert_eq!(serde_json::to_string(&dir).unwrap(), "\"d/e/\"");
        assert!(serde_json::from_str::<OutputPath>("\"d//\"").is_err());
        let abs: Executable = serde_json::from_str("\"/bin/sh\"").unwrap();
        assert_eq!(abs, Executable::Image("/bin/sh".into()));
        assert_eq!(serde_json::to_string(&abs).unwrap(), "\"/bin/sh\"");
    }

    #[test]
    fn prefix_parent_and_join_work_by_component() {
        let ab = RelPath::parse("a/b").unwrap();
        let abc = RelPath::parse("a/b/c").unwrap();
        let abx = RelPath::parse("a/bx").unwrap();
        assert!(abc.starts_with(&ab));
        assert!(!abx.starts_with(&ab));
        assert_eq!(abc.strip_prefix(&ab).unwrap().unwrap().as_str(), "c");
        assert_eq!(ab.strip_prefix(&ab), Some(None));
        assert_eq!(abc.parent().unwrap(), ab);
        assert_eq!(abc.file_name(), "c");
        assert_eq!(abc.depth(), 3);
        assert_eq!(ab.join(&RelPath::parse("c").unwrap()).unwrap(), abc);
        let big = RelPath::parse(&"a".repeat(255)).unwrap();
        let mut p = big.clone();
        // 16 components of 255 bytes and 15 slashes: 4095 bytes, the last that fits.
        for _ in 0..15 {
            p = p.join(&big).unwrap();
        }
        assert_eq!(p.join(&big), Err(PathError::TooLong));
    }
}
