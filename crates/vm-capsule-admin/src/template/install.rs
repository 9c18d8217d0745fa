//! `vm-capsule template install-agent`: put the agent and its systemd unit into an existing
//! image with libguestfs's `virt-customize`, the tool admins already use to change images
//! (Debian/Ubuntu: `libguestfs-tools`; Rocky/Alma/Fedora: `guestfs-tools`).
//!
//! Nothing in the image is booted and nothing is mounted on the host: libguestfs runs its own
//! small appliance VM. On a host whose `/dev/kvm` does not work (such as these CI machines)
//! that VM must use TCG (`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`), or it hangs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::template::build::{run_tool, BuildError, AGENT_PATH, UNIT_FILE, UNIT_PATH};
use vm_capsule_execute::runner::Accel;

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The image (any format `virt-customize` opens: qcow2, raw, vmdk...), changed in place.
    pub image: PathBuf,
    /// The static agent.
    pub agent: PathBuf,
    /// The data disk's label the unit looks for (`VM_CAPSULE_DATA_DISK_LABEL`).
    pub label: String,
}

/// The unit text with `label` in place of the default `CONDORDATA`.
pub fn unit_for(label: &str) -> String {
    UNIT_FILE.replace("--label CONDORDATA", &format!("--label {label}"))
}

/// The `virt-customize` arguments that install the agent (`unit` is a file holding the unit).
pub fn customize_args(opts: &InstallOptions, unit: &Path) -> Vec<String> {
    let agent = format!("/{AGENT_PATH}");
    let unit_path = format!("/{UNIT_PATH}");
    vec![
        "-a".to_owned(),
        opts.image.display().to_string(),
        "--mkdir".to_owned(),
        "/usr/local/sbin".to_owned(),
        "--upload".to_owned(),
        format!("{}:{agent}", opts.agent.display()),
        "--chmod".to_owned(),
        format!("0755:{agent}"),
        "--upload".to_owned(),
        format!("{}:{unit_path}", unit.display()),
        "--chmod".to_owned(),
        format!("0644:{unit_path}"),
        "--mkdir".to_owned(),
        "/etc/systemd/system/multi-user.target.wants".to_owned(),
        // What `systemctl enable` does, without running anything in the guest.
        "--link".to_owned(),
        format!("{unit_path}:/etc/systemd/system/multi-user.target.wants/capsule-init.service"),
        // SELinux guests (Rocky, Alma, Fedora): give the new files their labels, or systemd
        // may not execute the agent; a no-op on other guests.
        "--selinux-relabel".to_owned(),
    ]
}

/// Install the agent and its unit into `opts.image`.
///
/// # Errors
/// [`BuildError`] when `virt-customize` is missing or fails.
pub fn install_agent(
    opts: &InstallOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let work = tempfile::Builder::new()
        .prefix("vm-capsule-install.")
        .tempdir()
        .map_err(|e| BuildError::io("cannot create a temporary directory".to_owned(), e))?;
    let unit = work.path().join("capsule-init.service");
    fs::write(&unit, unit_for(&opts.label))
        .map_err(|e| BuildError::io(format!("cannot write {}", unit.display()), e))?;
    let mut cmd = Command::new("virt-customize");
    cmd.args(customize_args(opts, &unit));
    if Accel::Auto.resolve() == Accel::Tcg {
        progress("no usable KVM here: libguestfs's appliance runs under TCG (slower)");
        cmd.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
    }
    progress(&format!("virt-customize -a {}", opts.image.display()));
    run_tool(&mut cmd, "virt-customize", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_install_enable_and_relabel() {
        let opts = InstallOptions {
            image: "/img/rocky.qcow2".into(),
            agent: "/bin/capsule-init".into(),
            label: "JOBDATA".into(),
        };
        let args = customize_args(&opts, Path::new("/tmp/u.service")).join(" ");
        assert!(args.contains("--upload /bin/capsule-init:/usr/local/sbin/capsule-init --chmod 0755:/usr/local/sbin/capsule-init"));
        assert!(args.contains("--link /etc/systemd/system/capsule-init.service:/etc/systemd/system/multi-user.target.wants/capsule-init.service"));
        assert!(args.ends_with("--selinux-relabel"));
        assert!(unit_for("JOBDATA").contains("--label JOBDATA --wait"));
    }
}
