//! What an execute node offers the vanilla flavour, as machine attributes a startd cron job
//! advertises (the way HTCondor advertises `HasDocker` or `HasSingularity`):
//!
//! | attribute | meaning |
//! |---|---|
//! | `HasVMCapsuleQemu` | QEMU was found and runs: the routed vanilla job requires this |
//! | `VMCapsuleQemu` | its path |
//! | `VMCapsuleQemuVersion` | what it says its version is |
//! | `VMCapsuleKvm` | every slot user may use hardware KVM (else jobs run under TCG) |
//! | `VMCapsuleKvmReason` | why not, when `VMCapsuleKvm` is false |
//! | `VMCapsuleVersion` | the vm-capsule version installed here |
//! | `VMCapsuleUnusableReason` | why not, when `HasVMCapsuleQemu` is false |
//! | `VMCapsuleHostPaths` | the read-only host paths every capsule here sees (`VM_CAPSULE_HOST_PATHS` that are real directories), comma-separated; absent when none |
//! | `VMCapsuleHostPathsReason` | why a listed path is not offered |
//! | `VMCapsuleNetwork` | `nat` or `none`: what jobs that ask for a network get ([`crate::network`]) |

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use classad::{ClassAd, Expr};

use crate::qemu::{find_qemu, KvmStatus};

/// Machine attribute: QEMU found and runs.
pub const HAS_QEMU: &str = vm_capsule_core::routed::HAS_QEMU_ATTR;
/// Machine attribute: the read-only host paths offered.
pub const HOST_PATHS_ATTR: &str = vm_capsule_core::routed::HOST_PATHS_ATTR;
/// Longest a `qemu --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// What the probe found.
#[derive(Debug, Clone)]
pub struct Probe {
    /// QEMU and its version, or why it cannot be used.
    pub qemu: Result<(PathBuf, String), String>,
    /// Why hardware KVM is not usable by every slot user, `None` when it is.
    pub kvm_unusable: Option<String>,
    /// The host paths offered, and why the others listed are not.
    pub host_paths: (Vec<String>, Vec<String>),
}

impl Probe {
    /// Look at this node: `qemu_knob` is the value of `VM_CAPSULE_QEMU`, `path` the `PATH`
    /// QEMU is looked for on.
    pub fn run(qemu_knob: Option<&str>, path: Option<&OsStr>) -> Probe {
        let qemu = find_qemu(qemu_knob, path)
            .map_err(|e| e.to_string())
            .and_then(|path| qemu_version(&path).map(|v| (path, v)));
        Probe {
            qemu,
            kvm_unusable: KvmStatus::probe().unusable_for_slot_users(),
            host_paths: (Vec::new(), Vec::new()),
        }
    }

    /// The same probe, with the node's host paths (`VM_CAPSULE_HOST_PATHS`) looked at.
    #[must_use]
    pub fn with_host_paths(mut self, listed: &[String]) -> Probe {
        let (ok, refused) = crate::host_paths::survey(listed);
        self.host_paths = (ok, refused.iter().map(ToString::to_string).collect());
        self
    }

    /// The machine attributes to advertise.
    pub fn attributes(&self) -> ClassAd {
        let mut ad = ClassAd::new();
        ad.insert(HAS_QEMU, Expr::boolean(self.qemu.is_ok()));
        match &self.qemu {
            Ok((path, version)) => {
                ad.insert("VMCapsuleQemu", Expr::string(path.display().to_string()));
                // Checkpointed jobs require it unchanged (`VMCapsuleCheckpointQemu`).
                ad.insert(
                    vm_capsule_core::routed::QEMU_VERSION_ATTR,
                    Expr::string(version.clone()),
                );
            }
            Err(why) => ad.insert("VMCapsuleUnusableReason", Expr::string(why.clone())),
        }
        ad.insert("VMCapsuleKvm", Expr::boolean(self.kvm_unusable.is_none()));
        if let Some(why) = &self.kvm_unusable {
            ad.insert("VMCapsuleKvmReason", Expr::string(why.clone()));
        }
        ad.insert("VMCapsuleVersion", Expr::string(env!("CARGO_PKG_VERSION")));
        let (offered, refused) = &self.host_paths;
        if !offered.is_empty() {
            ad.insert(HOST_PATHS_ATTR, Expr::string(offered.join(",")));
        }
        if !refused.is_empty() {
            ad.insert("VMCapsuleHostPathsReason", Expr::string(refused.join("; ")));
        }
        ad
    }
}

/// `qemu --version`'s version number (`QEMU emulator version 7.2.19 (Debian ...)` -> `7.2.19`),
/// bounded in time.
///
/// # Errors
/// Why QEMU did not run or said nothing useful.
pub fn qemu_version(qemu: &Path) -> Result<String, String> {
    let mut child = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < VERSION_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} --version did not answer within {} s",
                    qemu.display(),
                    VERSION_TIMEOUT.as_secs()
                ));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", qemu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({})",
            qemu.display(),
            out.status
        ));
    }
    text.lines()
        .next()
        .and_then(|l| l.split("version ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "{} --version printed no version: {:?}",
                qemu.display(),
                text.trim()
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use classad::eval::evaluate_attr;
    use classad::Value;

    #[test]
    fn unusable_qemu_gives_a_reason() {
        let p = Probe {
            qemu: Err("QEMU not found: ...".into()),
            kvm_unusable: Some("no module".into()),
            host_paths: (Vec::new(), Vec::new()),
        };
        let ad = p.attributes();
        assert_eq!(evaluate_attr(&ad, HAS_QEMU), Value::Bool(false));
        assert_eq!(evaluate_attr(&ad, "VMCapsuleKvm"), Value::Bool(false));
        assert_eq!(
            evaluate_attr(&ad, "VMCapsuleUnusableReason"),
            Value::String("QEMU not found: ...".into())
        );
        assert!(!ad.contains("VMCapsuleQemu"));
        assert!(!ad.contains(HOST_PATHS_ATTR));
    }

    #[test]
    fn host_paths_that_are_real_directories_are_advertised() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("cvmfs")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("certs")).unwrap();
        let listed = [
            format!("{}/cvmfs", root.display()),
            format!("{}/certs", root.display()),
        ];
        let p = Probe {
            qemu: Err("none".into()),
            kvm_unusable: None,
            host_paths: (Vec::new(), Vec::new()),
        }
        .with_host_paths(&listed);
        let ad = p.attributes();
        assert_eq!(
            evaluate_attr(&ad, HOST_PATHS_ATTR),
            Value::String(listed[0].clone())
        );
        let Value::String(why) = evaluate_attr(&ad, "VMCapsuleHostPathsReason") else {
            panic!("no reason");
        };
        assert!(why.contains("certs, which is a symbolic link"), "{why}");
    }

    #[test]
    fn the_real_qemu_has_a_version() {
        let q = find_qemu(None, std::env::var_os("PATH").as_deref()).unwrap();
        let v = qemu_version(&q).unwrap();
        assert!(
            v.split('.').count() >= 2 && v.chars().next().unwrap().is_ascii_digit(),
            "{v}"
        );
    }

    #[test]
    fn a_failing_qemu_is_named() {
        // A stand-in for a broken QEMU that prints a version but fails.
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("qemu");
        std::fs::write(
            &q,
            "#!/bin/sh\necho 'QEMU emulator version 9.9.9 (x)'\nexit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = qemu_version(&q).unwrap_err();
        assert!(err.contains("--version failed"), "{err}");
    }
}
