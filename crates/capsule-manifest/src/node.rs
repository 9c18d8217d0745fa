//! What the execute node tells the guest about itself, outside the data disk (which is made on
//! the submit side and cannot know the node): today its read-only host paths.
//!
//! The host hands the text below to the guest through QEMU's firmware configuration device
//! (`-fw_cfg name=opt/org.vm-capsule/node,string=...`; libvirt: `<sysinfo type='fwcfg'>`),
//! which the guest reads at `/sys/firmware/qemu_fw_cfg/by_name/opt/org.vm-capsule/node/raw`.
//! It works the same in both flavours, needs no device of its own, and a mount tag (at most
//! 31 bytes for 9p) only has to name the share, not carry its path.
//!
//! ```text
//! vm-capsule-node 1
//! host-path 9p vmcap0 /cvmfs
//! host-path 9p vmcap1 /etc/grid-security/certificates
//! ```
//!
//! The first line names the format and its version; each other line is a key and its fields.
//! Unknown keys are skipped, so a newer host can tell an older agent more. The text is at most
//! [`MAX_NODE_BYTES`], at most [`MAX_HOST_PATHS`] paths, each checked by [`check_host_path`]; a
//! tag is a short name of letters, digits and `-`. Anything else is refused whole.

use thiserror::Error;

/// The fw_cfg entry's name (QEMU wants user entries under `opt/`).
pub const FW_CFG_NAME: &str = "opt/org.vm-capsule/node";
/// The first line of the text: the format and its version.
pub const NODE_MAGIC: &str = "vm-capsule-node 1";
/// Largest text accepted, in bytes.
pub const MAX_NODE_BYTES: usize = 8192;
/// Most host paths a node may share.
pub const MAX_HOST_PATHS: usize = 16;
/// Longest mount tag (QEMU's 9p limit is 31 bytes, virtiofs's 36).
pub const MAX_TAG_BYTES: usize = 31;
/// Longest host path, in bytes.
pub const MAX_HOST_PATH_BYTES: usize = 1024;

/// How a host path reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// virtio-9p (QEMU's own file server).
    NineP,
    /// virtiofs (a `virtiofsd` beside QEMU).
    Virtiofs,
}

impl Transport {
    /// The word in the text, which is also the guest's file system type.
    pub fn word(self) -> &'static str {
        match self {
            Transport::NineP => "9p",
            Transport::Virtiofs => "virtiofs",
        }
    }
}

/// One read-only host path: shared under `tag`, mounted at `path` in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPath {
    /// How it travels.
    pub transport: Transport,
    /// The device's mount tag.
    pub tag: String,
    /// Where it is on the node, and where the guest mounts it.
    pub path: String,
}

/// What the node tells the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSettings {
    /// The read-only host paths, in the node's order.
    pub host_paths: Vec<HostPath>,
}

/// Why the node's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Over [`MAX_NODE_BYTES`].
    #[error("the node settings are {0} bytes, over {MAX_NODE_BYTES}")]
    TooLarge(usize),
    /// Not UTF-8, or the first line is not [`NODE_MAGIC`].
    #[error("the node settings do not start with {NODE_MAGIC:?}")]
    NotNodeSettings,
    /// A line of a known key that does not fit it.
    #[error("line {line} of the node settings: {why}")]
    BadLine {
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// Over [`MAX_HOST_PATHS`].
    #[error("more than {MAX_HOST_PATHS} host paths")]
    TooManyHostPaths,
}

/// Why `path` cannot be a host path: it must be absolute and normalised (no `.`, `..` or empty
/// component, no trailing `/`), not `/` itself, at most [`MAX_HOST_PATH_BYTES`], and without
/// whitespace, commas or control characters (it travels in lists and on QEMU's command line).
///
/// # Errors
/// What is wrong, in words for an admin.
pub fn check_host_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("it is not an absolute path".to_owned());
    }
    if path == "/" {
        return Err("it is the whole root file system".to_owned());
    }
    if path.len() > MAX_HOST_PATH_BYTES {
        return Err(format!("it is longer than {MAX_HOST_PATH_BYTES} bytes"));
    }
    if let Some(c) = path
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == ',')
    {
        return Err(format!(
            "it contains {c:?}; whitespace, commas and control characters are not allowed"
        ));
    }
    for part in path.split('/').skip(1) {
        match part {
            "" => {
                return Err(
                    "it is not normalised (an empty component: '//' or a trailing '/')".to_owned(),
                )
            }
            "." | ".." => return Err(format!("it is not normalised (a '{part}' component)")),
            p if p.len() > crate::MAX_NAME_BYTES => {
                return Err(format!(
                    "a component is longer than {} bytes",
                    crate::MAX_NAME_BYTES
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `tag` is a mount tag we make: 1 to [`MAX_TAG_BYTES`] ASCII letters, digits or `-`.
fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
        return Err(format!(
            "mount tag {tag:?} is not 1 to {MAX_TAG_BYTES} bytes"
        ));
    }
    if !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!(
            "mount tag {tag:?} has a character other than letters, digits and '-'"
        ));
    }
    Ok(())
}

impl NodeSettings {
    /// The text handed to the guest.
    pub fn to_text(&self) -> String {
        let mut text = format!("{NODE_MAGIC}\n");
        for h in &self.host_paths {
            text.push_str(&format!(
                "host-path {} {} {}\n",
                h.transport.word(),
                h.tag,
                h.path
            ));
        }
        text
    }

    /// Read the node's text, refusing anything out of bounds or malformed.
    ///
    /// # Errors
    /// [`NodeError`] saying what and where.
    pub fn parse(bytes: &[u8]) -> Result<NodeSettings, NodeError> {
        if bytes.len() > MAX_NODE_BYTES {
            return Err(NodeError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| NodeError::NotNodeSettings)?;
        let mut lines = text.lines();
        if lines.next() != Some(NODE_MAGIC) {
            return Err(NodeError::NotNodeSettings);
        }
        let mut settings = NodeSettings::default();
        for (i, line) in lines.enumerate() {
            let bad = |why: String| NodeError::BadLine { line: i + 2, why };
            let mut fields = line.split(' ');
            if fields.next() != Some("host-path") {
                continue;
            }
            let (Some(transport), Some(tag), Some(path), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad(
                    "host-path takes a transport, a tag and a path".to_owned()
                ));
            };
            let transport = match transport {
                "9p" => Transport::NineP,
                "virtiofs" => Transport::Virtiofs,
                other => return Err(bad(format!("unknown transport {other:?}"))),
            };
            check_tag(tag).map_err(bad)?;
            check_host_path(path).map_err(|why| bad(format!("host path {path:?}: {why}")))?;
            if settings
                .host_paths
                .iter()
                .any(|h| h.tag == tag || h.path == path)
            {
                return Err(bad(format!("{tag} {path} repeats a tag or a path")));
            }
            if settings.host_paths.len() == MAX_HOST_PATHS {
                return Err(NodeError::TooManyHostPaths);
            }
            settings.host_paths.push(HostPath {
                transport,
                tag: tag.to_owned(),
                path: path.to_owned(),
            });
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hp(tag: &str, path: &str) -> HostPath {
        HostPath {
            transport: Transport::NineP,
            tag: tag.into(),
            path: path.into(),
        }
    }

    #[test]
    fn round_trip() {
        let s = NodeSettings {
            host_paths: vec![
                hp("vmcap0", "/cvmfs"),
                hp("vmcap1", "/etc/grid-security/certificates"),
            ],
        };
        let text = s.to_text();
        assert_eq!(
            text,
            "vm-capsule-node 1\nhost-path 9p vmcap0 /cvmfs\nhost-path 9p vmcap1 /etc/grid-security/certificates\n"
        );
        assert_eq!(NodeSettings::parse(text.as_bytes()).unwrap(), s);
    }

    #[test]
    fn unknown_keys_are_skipped() {
        let s = NodeSettings::parse(b"vm-capsule-node 1\nnetwork nat\nhost-path virtiofs t /a\n")
            .unwrap();
        assert_eq!(s.host_paths.len(), 1);
        assert_eq!(s.host_paths[0].transport, Transport::Virtiofs);
    }

    #[test]
    fn hostile_texts_are_refused() {
        let long = format!("vm-capsule-node 1\n{}", "x".repeat(MAX_NODE_BYTES));
        let many: String = (0..=MAX_HOST_PATHS)
            .map(|i| format!("host-path 9p t{i} /p{i}\n"))
            .collect();
        let many = format!("vm-capsule-node 1\n{many}");
        let cases: Vec<&[u8]> = vec![
            b"",
            b"vm-capsule-node 2\n",
            b"\xff\xfe",
            long.as_bytes(),
            many.as_bytes(),
            b"vm-capsule-node 1\nhost-path 9p t relative\n",
            b"vm-capsule-node 1\nhost-path 9p t /a/../etc\n",
            b"vm-capsule-node 1\nhost-path 9p t /\n",
            b"vm-capsule-node 1\nhost-path 9p t /a b\n",
            b"vm-capsule-node 1\nhost-path 9p t\n",
            b"vm-capsule-node 1\nhost-path nfs t /a\n",
            b"vm-capsule-node 1\nhost-path 9p a/b /a\n",
            b"vm-capsule-node 1\nhost-path 9p tag-that-is-far-too-long-for-qemu-9p /a\n",
            b"vm-capsule-node 1\nhost-path 9p t /a\nhost-path 9p t /b\n",
            b"vm-capsule-node 1\nhost-path 9p t /a\nhost-path 9p u /a\n",
            b"vm-capsule-node 1\nhost-path 9p t /a\x1b[2J\n",
        ];
        for c in cases {
            assert!(
                NodeSettings::parse(c).is_err(),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
    }

    #[test]
    fn host_path_rules() {
        for ok in ["/cvmfs", "/etc/grid-security/certificates", "/a.b/c-d_e"] {
            assert_eq!(check_host_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "cvmfs", "/", "//cvmfs", "/cvmfs/", "/a/./b", "/a/..", "/a,b", "/a\tb", "/a\nb",
        ] {
            assert!(check_host_path(bad).is_err(), "{bad:?}");
        }
    }
}
