//! Network on request, vanilla flavour: user-mode NAT through `passt`, one per job, in the
//! slot, as the slot's user.
//!
//! `passt` rather than QEMU's built-in slirp (`-netdev user`): slirp maps `10.0.2.2` to the
//! node's own `127.0.0.1` and QEMU 7.2 has no option to turn that off, so a guest would reach
//! the startd, the starter and every other slot's loopback servers; `passt --no-map-gw` maps
//! nothing to the node's loopback. Neither forwards anything inbound (`passt`'s default is no
//! port forwarding). docs/PERFORMANCE.md has both measured side by side.
//!
//! QEMU and `passt` talk over a socketpair (QEMU 7.2's `-netdev stream` with an fd, `passt
//! --fd`): no socket path to squat, race for or leave behind. `passt --one-off` quits when
//! QEMU's end closes, so a hard kill of the launcher and QEMU leaves no `passt` either; the
//! launcher also ends it with the VM.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use classad::{ClassAd, Expr};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Machine attribute: what network this node gives jobs that ask (`nat` or `none`).
pub const NODE_NETWORK: &str = vm_capsule_core::routed::NODE_NETWORK_ATTR;
/// Machine attribute: why `none` although the admin asked for `nat`.
pub const NODE_NETWORK_REASON: &str = "VMCapsuleNetworkReason";
/// The NAT helper's name on `PATH`.
pub const PASST: &str = "passt";
/// Where `PATH` is empty.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
/// QEMU's ids for the network devices.
const NETDEV_ID: &str = "vmcapsule-net";

/// The NAT helper, as `VM_CAPSULE_PASST` names it or found on `path`.
///
/// # Errors
/// Why it is not usable, naming the knob.
pub fn find_passt(knob: Option<&str>, path: Option<&OsStr>) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(value) = knob.map(str::trim).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(value);
        return if p.is_absolute() && executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "VM_CAPSULE_PASST = {value} is not an executable file given by its absolute path"
            ))
        };
    }
    let path: OsString = path
        .filter(|p| !p.is_empty())
        .map_or_else(|| DEFAULT_PATH.into(), OsStr::to_os_string);
    std::env::split_paths(&path)
        .map(|d| d.join(PASST))
        .find(|p| executable(p))
        .ok_or_else(|| {
            format!(
                "VM_CAPSULE_NETWORK = nat needs passt, not found on {}; install it (Debian: apt-get install passt) or set VM_CAPSULE_PASST",
                path.to_string_lossy()
            )
        })
}

/// The machine attributes about the network: `VMCapsuleNetwork = "nat"` when the admin allows
/// it (`allowed`) and `passt` is there, else `"none"` (with the reason when it was allowed).
pub fn probe_attributes(allowed: bool, passt: Option<&str>, path: Option<&OsStr>) -> ClassAd {
    let mut ad = ClassAd::new();
    let offered = if allowed {
        find_passt(passt, path).map(|_| ()).map_err(Some)
    } else {
        Err(None)
    };
    match offered {
        Ok(()) => ad.insert(NODE_NETWORK, Expr::string("nat")),
        Err(why) => {
            ad.insert(NODE_NETWORK, Expr::string("none"));
            if let Some(why) = why {
                ad.insert(NODE_NETWORK_REASON, Expr::string(why));
            }
        }
    }
    ad
}

/// What network the job of capsule ad `ad` gets on this node: `None` when it asks for none
/// (`JobVMNetworking`), else the `passt` to run; `allowed` is `VM_CAPSULE_NETWORK = nat`.
///
/// # Errors
/// The job asks and this node does not give one (the knob named): the job fails rather than
/// run without the network it needs.
pub fn for_job(
    ad: &ClassAd,
    allowed: bool,
    passt: Option<&str>,
    path: Option<&OsStr>,
) -> Result<Option<PathBuf>, String> {
    use vm_capsule_core::routed::ATTR_VM_NETWORKING;
    match classad::eval::evaluate_attr(ad, ATTR_VM_NETWORKING) {
        classad::Value::Bool(true) => {}
        classad::Value::Bool(false) | classad::Value::Undefined => return Ok(None),
        other => {
            return Err(format!(
                "the capsule ad's {ATTR_VM_NETWORKING} is {other:?}, not true or false"
            ))
        }
    }
    if !allowed {
        return Err(format!(
            "the job asks for a network (+VMCapsuleNetwork = true) and this execute node gives none \
             (VM_CAPSULE_NETWORK = none); the job should not have matched here: \
             set VM_CAPSULE_NETWORK = nat on this node, or check that the probe's {NODE_NETWORK} is advertised"
        ));
    }
    find_passt(passt, path).map(Some)
}

/// A running `passt` serving one VM; ended (and reaped) when dropped.
#[derive(Debug)]
pub struct Passt {
    child: Child,
    /// QEMU's end of the socketpair until QEMU has it.
    qemu_end: Option<OwnedFd>,
}

impl Passt {
    /// Start `passt` for one VM. Nothing listens inbound, nothing is mapped to the node's
    /// loopback, and it quits when QEMU's end closes.
    ///
    /// # Errors
    /// The socketpair or the spawn failing, or `passt` quitting at once.
    pub fn start(passt: &Path) -> io::Result<Passt> {
        let (ours, qemu_end) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        // passt's end is inherited by passt alone: it loses close-on-exec right before the
        // spawn and is closed here right after (no other process is started meanwhile).
        rustix::io::fcntl_setfd(&ours, rustix::io::FdFlags::empty())?;
        let spawned = Command::new(passt)
            .args(["--foreground", "--one-off", "--quiet", "--no-map-gw"])
            .arg("--fd")
            .arg(ours.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Not a pipe: a pipe nobody reads would block or kill (SIGPIPE) a passt that logs
            // later. passt logs to the system log.
            .stderr(Stdio::null())
            .spawn();
        drop(ours);
        let mut child = spawned.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", passt.display()))
        })?;
        // A passt that refuses its options or the fd quits at once.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{} quit at once ({status}); the node's system log has its reason",
                    passt.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Passt {
            child,
            qemu_end: Some(qemu_end),
        })
    }

    /// Make QEMU's end inheritable for the QEMU spawned next and say its number; called
    /// right before that spawn (as the control channel's end), closed by [`Self::started`].
    ///
    /// # Errors
    /// `fcntl` failing, or QEMU's end already handed over.
    pub fn inherit(&self) -> io::Result<RawFd> {
        let end = self
            .qemu_end
            .as_ref()
            .ok_or_else(|| io::Error::other("the network was already handed to QEMU"))?;
        rustix::io::fcntl_setfd(end, rustix::io::FdFlags::empty())?;
        Ok(end.as_raw_fd())
    }

    /// QEMU has its end: close ours, so that QEMU's exit ends `passt`.
    pub fn started(&mut self) {
        self.qemu_end = None;
    }

    /// The QEMU arguments attaching a virtio NIC to `passt` through `fd`.
    pub fn qemu_args(fd: RawFd) -> Vec<String> {
        vec![
            "-netdev".into(),
            format!("stream,id={NETDEV_ID},server=off,addr.type=fd,addr.str={fd}"),
            "-device".into(),
            format!("virtio-net-pci,netdev={NETDEV_ID}"),
        ]
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use classad::eval::evaluate_attr;
    use classad::Value;

    #[test]
    fn a_node_that_does_not_allow_it_offers_none() {
        let ad = probe_attributes(false, None, None);
        assert_eq!(
            evaluate_attr(&ad, NODE_NETWORK),
            Value::String("none".into())
        );
        assert!(!ad.contains(NODE_NETWORK_REASON));
    }

    #[test]
    fn nat_without_passt_offers_none_and_says_why() {
        let d = tempfile::tempdir().unwrap();
        let ad = probe_attributes(true, None, Some(d.path().as_os_str()));
        assert_eq!(
            evaluate_attr(&ad, NODE_NETWORK),
            Value::String("none".into())
        );
        let Value::String(why) = evaluate_attr(&ad, NODE_NETWORK_REASON) else {
            panic!("no reason")
        };
        assert!(
            why.contains("passt") && why.contains("VM_CAPSULE_PASST"),
            "{why}"
        );
        let bad = find_passt(Some("passt"), None).unwrap_err();
        assert!(bad.contains("absolute path"), "{bad}");
    }

    #[test]
    fn nat_with_passt_is_offered_and_passt_ends_with_its_peer() {
        let Ok(passt) = find_passt(None, std::env::var_os("PATH").as_deref()) else {
            panic!("passt is not installed: scripts/install-deps.sh installs it")
        };
        let ad = probe_attributes(true, None, std::env::var_os("PATH").as_deref());
        assert_eq!(
            evaluate_attr(&ad, NODE_NETWORK),
            Value::String("nat".into())
        );
        let mut p = Passt::start(&passt).unwrap();
        assert!(p.child.try_wait().unwrap().is_none());
        // QEMU's end closing (as when QEMU dies) ends passt by itself.
        p.started();
        let start = Instant::now();
        while p.child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "passt outlived its peer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn qemu_is_given_a_stream_netdev_on_the_fd() {
        let a = Passt::qemu_args(7).join(" ");
        assert_eq!(
            a,
            "-netdev stream,id=vmcapsule-net,server=off,addr.type=fd,addr.str=7 -device virtio-net-pci,netdev=vmcapsule-net"
        );
    }
}
