//! Read-only host paths (`VM_CAPSULE_HOST_PATHS`): which of the node's paths can be shared,
//! and how QEMU shares them.
//!
//! A path is shared only when every component of it, from `/`, is a real directory: a link
//! anywhere (the path itself or a directory above it) would make QEMU export whatever the link
//! names at the time it opens it, so it is refused, never followed. Each share is a virtio-9p
//! device of QEMU's own file server with `readonly=on`, which answers every write with
//! `EROFS`, and which never follows a link inside the share on the host (QEMU walks the share
//! with `O_NOFOLLOW` from its root): a link is handed to the guest as a link, and the guest's
//! kernel resolves it in the guest's own tree. The guest learns which tag goes where from the
//! node settings in fw_cfg ([`capsule_manifest::node`]).

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;

use capsule_manifest::node::{HostPath, NodeSettings, Transport, FW_CFG_NAME};
use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags};

/// Why a host path cannot be shared on this node.
#[derive(Debug, thiserror::Error)]
#[error("VM_CAPSULE_HOST_PATHS lists {path}, which {why}; fix: make it a real directory on this node or remove it from the list")]
pub struct RefusedHostPath {
    /// The listed path.
    pub path: String,
    /// What is wrong with it.
    pub why: String,
}

/// Check that `path` (absolute, normalised: the knob's check) is a directory reached through
/// directories only, without following any link.
///
/// # Errors
/// [`RefusedHostPath`] saying which component is missing, a link or not a directory.
pub fn check_on_node(path: &str) -> Result<(), RefusedHostPath> {
    let refuse = |why: String| RefusedHostPath {
        path: path.to_owned(),
        why,
    };
    let mut dir: File = rustix::fs::open("/", OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .map(File::from)
        .map_err(|e| refuse(format!("cannot be reached: / cannot be opened ({e})")))?;
    let mut walked = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        walked.push('/');
        walked.push_str(part);
        let st = statat(dir.as_fd(), part, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
            if e == rustix::io::Errno::NOENT {
                refuse(format!("does not exist ({walked} is missing)"))
            } else {
                refuse(format!("cannot be looked at ({walked}: {e})"))
            }
        })?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {}
            FileType::Symlink if walked == path => {
                return Err(refuse(
                    "is a symbolic link; list the directory it points to".to_owned(),
                ))
            }
            FileType::Symlink => {
                return Err(refuse(format!(
                    "lies below a symbolic link ({walked}); list the real directory"
                )))
            }
            _ if walked == path => return Err(refuse("is not a directory".to_owned())),
            _ => {
                return Err(refuse(format!(
                    "lies below {walked}, which is not a directory"
                )))
            }
        }
        dir = openat(
            dir.as_fd(),
            part,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| refuse(format!("cannot be opened ({walked}: {e})")))?;
    }
    Ok(())
}

/// A path the job needs that this node cannot share.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MissingHostPath {
    /// Listed, but refused on this node.
    #[error(transparent)]
    Refused(#[from] RefusedHostPath),
    /// Not listed at all (the knob changed since the job was matched).
    #[error("the job needs the host path {0} (VMCapsuleHostPaths), which VM_CAPSULE_HOST_PATHS on this node does not list; fix: list it, or keep such jobs off this node")]
    NotListed(String),
}

/// The node's shares: each listed path that passes [`check_on_node`], with its mount tag. A
/// listed path that does not pass is left out (the probe says why, and no job that needs it
/// is matched here), unless the job needs it (`needed`, its `VMCapsuleHostPaths`): a job must
/// not start without a path it relies on.
///
/// # Errors
/// The first path the job needs that cannot be shared.
pub fn shares(listed: &[String], needed: &[String]) -> Result<NodeSettings, MissingHostPath> {
    if let Some(path) = needed.iter().find(|p| !listed.contains(p)) {
        return Err(MissingHostPath::NotListed(path.clone()));
    }
    let mut settings = NodeSettings::default();
    for path in listed {
        match check_on_node(path) {
            Ok(()) => settings.host_paths.push(HostPath {
                transport: Transport::NineP,
                tag: tag(settings.host_paths.len()),
                path: path.clone(),
            }),
            Err(e) if needed.contains(path) => return Err(e.into()),
            Err(_) => {}
        }
    }
    Ok(settings)
}

/// The paths this node can share, and why each other one cannot (for the probe).
pub fn survey(paths: &[String]) -> (Vec<String>, Vec<RefusedHostPath>) {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for path in paths {
        match check_on_node(path) {
            Ok(()) => ok.push(path.clone()),
            Err(e) => refused.push(e),
        }
    }
    (ok, refused)
}

/// The mount tag of the `i`th share: short, so it fits QEMU's 31 bytes whatever the path.
pub fn tag(i: usize) -> String {
    format!("vmcap{i}")
}

/// QEMU's arguments for `settings`: one read-only 9p device per share, and the node settings
/// in fw_cfg. Nothing when there is nothing to share.
pub fn qemu_args(settings: &NodeSettings) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if settings.host_paths.is_empty() {
        return args;
    }
    for h in &settings.host_paths {
        // Paths have no commas (the knob's check), so nothing needs QEMU's ",," escape.
        // security_model=none: QEMU runs as the slot's user and sets no owners; reads are
        // done with the slot user's rights on the host.
        args.push("-fsdev".into());
        args.push(
            format!(
                "local,id={t},path={p},security_model=none,readonly=on",
                t = h.tag,
                p = h.path
            )
            .into(),
        );
        args.push("-device".into());
        args.push(format!("virtio-9p-pci,fsdev={t},mount_tag={t}", t = h.tag).into());
    }
    args.push("-fw_cfg".into());
    args.push(format!("name={FW_CFG_NAME},string={}", settings.to_text()).into());
    args
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn links_missing_paths_and_files_are_refused_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let real = root.join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(&real, root.join("link")).unwrap();
        let p = |rel: &str| format!("{}/{rel}", root.display());
        check_on_node(&p("real")).unwrap();
        check_on_node(&p("real/sub")).unwrap();
        for (rel, why) in [
            ("link", "is a symbolic link"),
            ("link/sub", "lies below a symbolic link"),
            ("missing", "does not exist"),
            ("file", "is not a directory"),
            ("file/x", "which is not a directory"),
        ] {
            let e = check_on_node(&p(rel)).unwrap_err().to_string();
            assert!(e.contains(why), "{rel}: {e}");
            assert!(e.starts_with("VM_CAPSULE_HOST_PATHS lists"), "{e}");
        }
        let (ok, refused) = survey(&[p("real"), p("link")]);
        assert_eq!(ok, [p("real")]);
        assert_eq!(refused.len(), 1);
        // A broken path is left out, unless the job needs it; one the node does not list is
        // an error when the job needs it.
        let listed = [p("link"), p("real")];
        let s = shares(&listed, &[]).unwrap();
        assert_eq!(s.host_paths.len(), 1);
        assert_eq!(
            (s.host_paths[0].tag.as_str(), s.host_paths[0].path.as_str()),
            ("vmcap0", p("real").as_str())
        );
        assert!(shares(&listed, &[p("real")]).is_ok());
        let e = shares(&listed, &[p("link")]).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        let e = shares(&listed, &[p("other")]).unwrap_err().to_string();
        assert!(e.contains("does not list"), "{e}");
    }

    #[test]
    fn qemu_gets_read_only_shares_and_the_node_settings() {
        let none = qemu_args(&NodeSettings::default());
        assert!(none.is_empty());
        let s = shares(&["/usr".to_owned(), "/etc".to_owned()], &[]).unwrap();
        let a: Vec<String> = qemu_args(&s)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = a.join(" ");
        assert!(joined.contains(
            "-fsdev local,id=vmcap0,path=/usr,security_model=none,readonly=on -device virtio-9p-pci,fsdev=vmcap0,mount_tag=vmcap0"
        ), "{joined}");
        assert!(joined.contains("path=/etc,security_model=none,readonly=on"));
        let fw = a.last().unwrap();
        let text = fw
            .strip_prefix("name=opt/org.vm-capsule/node,string=")
            .unwrap();
        assert_eq!(NodeSettings::parse(text.as_bytes()).unwrap(), s);
    }
}
