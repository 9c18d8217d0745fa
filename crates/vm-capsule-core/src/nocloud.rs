//! Stock cloud images as templates, unchanged: the data disk doubles as a cloud-init NoCloud
//! seed (`VM_CAPSULE_AGENT_START = cloud-init`).
//!
//! cloud-init's NoCloud datasource reads `user-data` and `meta-data` from a vfat or iso9660
//! volume labelled `cidata`; since cloud-init 19.1 (April 2019, upstream commit b76714c35)
//! the label may also be upper case, which is how FAT stores labels, so the data disk is
//! labelled `CIDATA`. The `user-data` creates the job's account (stock images do not have
//! it), copies the agent the hooks shipped on this same disk to the root file system (`/run`
//! and `/tmp` may be noexec), runs it on the disk, and asks cloud-init to power the VM off
//! through systemd whatever happened (`power_state`).

/// Who starts the guest agent at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AgentStart {
    /// The guest image starts `capsule-init` itself (the systemd unit, an init script, or an
    /// initramfs); the data disk is labelled `VM_CAPSULE_DATA_DISK_LABEL`.
    #[default]
    Image,
    /// cloud-init does, from a NoCloud seed on the data disk (labelled [`NOCLOUD_LABEL`]).
    CloudInit,
}

/// The vanilla flavour's capsule ad says `cloud-init` here, so the launcher writes the seed.
pub const ATTR_AGENT_START: &str = "VMCapsuleAgentStart";

/// The data disk's FAT label in cloud-init mode.
pub const NOCLOUD_LABEL: &str = "CIDATA";

/// Where the seed is mounted (read-only, briefly) to copy the agent out.
const SEED_MOUNT: &str = "/var/lib/capsule-seed";
/// Where the agent is copied to: on the root file system, which is never noexec.
const AGENT_COPY: &str = "/var/lib/capsule-agent";

impl AgentStart {
    /// Read a word (the capsule ad's [`ATTR_AGENT_START`], the knob's checked value):
    /// `cloud-init` (or `cloudinit`), case-insensitive, is [`AgentStart::CloudInit`], anything
    /// else [`AgentStart::Image`].
    pub fn from_word(value: Option<&str>) -> AgentStart {
        match value.map(str::trim) {
            Some(v)
                if v.eq_ignore_ascii_case("cloud-init") || v.eq_ignore_ascii_case("cloudinit") =>
            {
                AgentStart::CloudInit
            }
            _ => AgentStart::Image,
        }
    }
}

/// The data disk's FAT label: the knob's, or [`NOCLOUD_LABEL`] when it is a NoCloud seed.
pub fn data_disk_label(start: AgentStart, label: &str) -> &str {
    match start {
        AgentStart::Image => label,
        AgentStart::CloudInit => NOCLOUD_LABEL,
    }
}

/// The files that make the data disk a NoCloud seed (none in image mode): `user-data` and
/// `meta-data`, for a job with this id running as `user`.
pub fn seed_files(start: AgentStart, user: &str, job_id: &str) -> Vec<(&'static str, String)> {
    match start {
        AgentStart::Image => Vec::new(),
        AgentStart::CloudInit => vec![
            ("user-data", user_data(user)),
            ("meta-data", meta_data(job_id)),
        ],
    }
}

/// The NoCloud `user-data`: make `user`, run the shipped agent on the seed disk, power off.
pub fn user_data(user: &str) -> String {
    // The device is found by label with blkid, which every cloud image has (cloud-init uses
    // it); the agent then reads and writes the FAT on the unmounted device itself.
    let script = format!(
        "set -e; dev=$(blkid -L {NOCLOUD_LABEL}); mkdir -p {SEED_MOUNT}; \
         mount -o ro \"$dev\" {SEED_MOUNT}; install -m 0700 {SEED_MOUNT}/capsule-init {AGENT_COPY}; \
         umount {SEED_MOUNT}; exec {AGENT_COPY} --device \"$dev\" --scratch /var/lib/capsule --no-poweroff"
    );
    format!(
        "#cloud-config\n\
         # vm-capsule: this disk is both the NoCloud seed and the job's data disk.\n\
         users:\n  - name: {user}\n    lock_passwd: true\n    shell: /bin/sh\n\
         runcmd:\n  - [/bin/sh, -c, {script:?}]\n\
         power_state:\n  mode: poweroff\n  condition: true\n  delay: now\n  message: vm-capsule job done\n"
    )
}

/// The NoCloud `meta-data`: a per-job instance id, so cloud-init runs its per-instance
/// modules (users, runcmd) on every capsule.
pub fn meta_data(instance_id: &str) -> String {
    format!("instance-id: vm-capsule-{instance_id}\nlocal-hostname: capsule\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn user_data_is_yaml_cloud_init_reads() {
        let text = user_data("condor");
        assert!(text.starts_with("#cloud-config\n"));
        assert!(text.contains("  - name: condor\n"));
        assert!(text.contains("power_state:\n  mode: poweroff\n  condition: true\n"));
        // The script is one double-quoted YAML scalar with its inner quotes escaped.
        let line = text
            .lines()
            .find(|l| l.starts_with("  - [/bin/sh, -c, "))
            .unwrap();
        assert!(line.ends_with("--no-poweroff\"]"), "{line}");
        assert!(line.contains("dev=$(blkid -L CIDATA)"));
        assert!(line.contains("--device \\\"$dev\\\""), "{line}");
    }
}
