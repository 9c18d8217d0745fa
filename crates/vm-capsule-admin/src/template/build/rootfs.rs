//! The root file system of a built template: `mmdebstrap` from Debian's own packages into a
//! tarball, configured for a capsule guest, cached by the sha256 of its recipe.
//!
//! Everything that shapes the tarball is in [`Recipe`] and goes into its key, so a changed
//! package list or hook rebuilds it and an unchanged one is reused (a cold build downloads
//! about 100 MiB of packages and takes one to three minutes; the `.deb` files are kept too).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run_tool, AgentStart, BuildError, Progress};
use vm_capsule_core::digest::sha256_hex;

/// Kernel modules the initramfs loads to reach an ext4 root on virtio, SCSI, IDE or SATA
/// (`MODULES=list`: the image is for VMs, not for the build host `MODULES=dep` would inspect).
const INITRAMFS_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ata_piix",
    "ahci",
    "ext4",
];

/// Units a capsule never needs, masked: login prompts (the serial console is for the log), the
/// periodic jobs of a long-lived machine (package updates, trims, scrubs), and early-boot work
/// nothing in a capsule uses (kernel debug file systems, modules loaded in advance in case,
/// saving a random seed and utmp records on a disk that is thrown away). Under TCG every unit
/// started before the agent delays it: one virtual CPU runs them all.
const MASKED_UNITS: &[&str] = &[
    "getty.target",
    "serial-getty@ttyS0.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-binfmt.service",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "systemd-pstore.service",
    "systemd-random-seed.service",
    "systemd-update-utmp.service",
    "systemd-journal-flush.service",
    // The image's system accounts exist already (the packages made them at build time).
    "systemd-sysusers.service",
];

/// systemd generators a capsule never needs (each is a program run before any unit starts):
/// GPT auto-mounts, encrypted and verity volumes, hibernation, boot counting, SysV scripts,
/// rc.local, consoles.
const MASKED_GENERATORS: &[&str] = &[
    "systemd-bless-boot-generator",
    "systemd-cryptsetup-generator",
    "systemd-debug-generator",
    "systemd-getty-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-veritysetup-generator",
];

/// udev's part of the initramfs: it spends seconds under TCG settling every device of the VM
/// before the root disk is even looked for; without it, initramfs-tools loads the listed
/// modules and finds `root=UUID=` with blkid (which the hook below brings in).
const INITRAMFS_WITHOUT_UDEV: &[&str] = &[
    "/usr/share/initramfs-tools/hooks/udev",
    "/usr/share/initramfs-tools/scripts/init-top/udev",
    "/usr/share/initramfs-tools/scripts/init-bottom/udev",
];

/// What the root file system is made of.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Debian suite (`bookworm`).
    pub suite: String,
    /// Debian mirror (`None`: mmdebstrap's default, deb.debian.org).
    pub mirror: Option<String>,
    /// How the agent starts: a unit in the image, or cloud-init.
    pub start: AgentStart,
    /// Root file system UUID (in `/etc/fstab`).
    pub root_uuid: String,
    /// `SOURCE_DATE_EPOCH`: every timestamp mmdebstrap and the initramfs write.
    pub epoch: u64,
}

impl Recipe {
    /// Packages beyond `minbase`.
    pub fn packages(&self) -> Vec<&'static str> {
        let mut p = vec![
            "systemd-sysv",
            "udev",
            "linux-image-amd64",
            "lz4",
            "busybox-static",
        ];
        if self.start == AgentStart::CloudInit {
            p.push("cloud-init");
        }
        p
    }

    /// Shell commands run before any package is installed (`$1` is the root).
    fn setup_hooks(&self) -> Vec<String> {
        let modules: String = INITRAMFS_MODULES
            .iter()
            .map(|m| format!("{m}\\n"))
            .collect();
        vec![
            r#"mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks" "$1/usr/share/initramfs-tools/modules.d" "$1/var/cache/apt/archives""#.to_owned(),
            r#"printf 'MODULES=list\nCOMPRESS=lz4\nFSTYPE=ext4\nRESUME=none\n' > "$1/etc/initramfs-tools/conf.d/vm-capsule.conf""#.to_owned(),
            format!(r#"printf '{modules}' > "$1/usr/share/initramfs-tools/modules.d/vm-capsule""#),
            r#"printf '#!/bin/sh\n# vm-capsule: no udev in the initramfs; blkid finds root=UUID=\n[ "$1" = prereqs ] && exit 0\n. /usr/share/initramfs-tools/hook-functions\ncopy_exec /sbin/blkid /sbin\n' > "$1/etc/initramfs-tools/hooks/vm-capsule" && chmod 0755 "$1/etc/initramfs-tools/hooks/vm-capsule""#.to_owned(),
        ]
    }

    /// Shell commands run after the packages are installed (`$1` is the root).
    fn customize_hooks(&self) -> Vec<String> {
        let mut h = vec![
            r#"printf 'capsule\n' > "$1/etc/hostname""#.to_owned(),
            r#"printf '127.0.0.1\tlocalhost\n127.0.1.1\tcapsule\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$1/etc/hosts""#.to_owned(),
            format!(
                r#"printf 'UUID={} / ext4 defaults,noatime 0 0\n' > "$1/etc/fstab""#,
                self.root_uuid
            ),
        ];
        h.push(super::initramfs::customize_hook(self.epoch));
        if self.start == AgentStart::Image {
            // The log goes to the serial console and the journal in memory: nothing of the
            // guest's bookkeeping needs to reach the (throw-away) disk.
            h.push(r#"mkdir -p "$1/etc/systemd/journald.conf.d" && printf '[Journal]\nStorage=volatile\n' > "$1/etc/systemd/journald.conf.d/vm-capsule.conf""#.to_owned());
            // The account jobs run as (VM_CAPSULE_JOB_USER's default); cloud images get it
            // from the user-data instead, as stock ones do not have it.
            h.push(
                r#"chroot "$1" useradd --uid 1000 --user-group --create-home --shell /bin/sh condor"#
                    .to_owned(),
            );
            for unit in MASKED_UNITS {
                h.push(format!(
                    r#"ln -sf /dev/null "$1/etc/systemd/system/{unit}""#
                ));
            }
            h.push(r#"mkdir -p "$1/etc/systemd/system-generators""#.to_owned());
            for generator in MASKED_GENERATORS {
                h.push(format!(
                    r#"ln -sf /dev/null "$1/etc/systemd/system-generators/{generator}""#
                ));
            }
        }
        h
    }

    /// The cache key: everything above, as text.
    pub fn key(&self) -> String {
        let mut text = format!(
            "rootfs v5\nsuite {}\nmirror {:?}\nepoch {}\npackages {:?}\nexcluded {INITRAMFS_WITHOUT_UDEV:?}\n",
            self.suite,
            self.mirror,
            self.epoch,
            self.packages()
        );
        for h in self.setup_hooks().iter().chain(&self.customize_hooks()) {
            let _ = writeln!(text, "hook {h}");
        }
        sha256_hex(text.as_bytes())
    }
}

/// The rootfs tarball for `recipe` in `cache`, built with mmdebstrap when it is not there.
///
/// # Errors
/// [`BuildError`] when mmdebstrap is missing or fails (its log is kept in the cache).
pub fn rootfs_tar(
    recipe: &Recipe,
    cache: &Path,
    progress: Progress,
) -> Result<PathBuf, BuildError> {
    let key = recipe.key();
    let tar = cache.join(format!("rootfs-{}-{}.tar", recipe.suite, &key[..16]));
    // Only a plain file of the (private) cache, never what a link names.
    if fs::symlink_metadata(&tar).is_ok_and(|m| m.is_file()) {
        progress(&format!("root file system: cached {}", tar.display()));
        return Ok(tar);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)
        .map_err(|e| BuildError::io(format!("cannot create {}", debs.display()), e))?;
    let partial = tar.with_extension("tar.partial");
    let log = tar.with_extension("log");
    // What a killed build left: mmdebstrap writes a new file.
    match fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(BuildError::io(
                format!("cannot remove {}", partial.display()),
                e,
            ))
        }
    }
    progress(&format!(
        "root file system: mmdebstrap {} ({} packages beyond minbase), log {}",
        recipe.suite,
        recipe.packages().len(),
        log.display()
    ));
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", recipe.epoch.to_string())
        .arg("--variant=minbase")
        .arg("--format=tar")
        .arg(format!("--include={}", recipe.packages().join(",")))
        // Documentation, manuals and translations: a third of minbase, useless to a job.
        .args([
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
        ]);
    for path in INITRAMFS_WITHOUT_UDEV {
        cmd.arg(format!("--dpkgopt=path-exclude={path}"));
    }
    for h in recipe.setup_hooks() {
        cmd.arg(format!("--setup-hook={h}"));
    }
    // Downloaded packages are kept for the next build (mmdebstrap's documented recipe).
    cmd.arg(format!(
        "--setup-hook=sync-in {} /var/cache/apt/archives/",
        debs.display()
    ));
    for h in recipe.customize_hooks() {
        cmd.arg(format!("--customize-hook={h}"));
    }
    cmd.arg(format!(
        "--customize-hook=sync-out /var/cache/apt/archives {}",
        debs.display()
    ));
    cmd.arg(&recipe.suite).arg(&partial);
    if let Some(m) = &recipe.mirror {
        cmd.arg(m);
    }
    run_tool(&mut cmd, "mmdebstrap", Some(&log))?;
    fs::rename(&partial, &tar)
        .map_err(|e| BuildError::io(format!("cannot rename {}", partial.display()), e))?;
    Ok(tar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(start: AgentStart) -> Recipe {
        Recipe {
            suite: "bookworm".into(),
            mirror: None,
            start,
            root_uuid: "u".into(),
            epoch: 1,
        }
    }

    #[test]
    fn key_follows_every_input() {
        let unit = recipe(AgentStart::Image);
        let cloud = recipe(AgentStart::CloudInit);
        assert_ne!(unit.key(), cloud.key());
        assert!(cloud.packages().contains(&"cloud-init"));
        assert!(!unit.packages().contains(&"cloud-init"));
        let mut other = recipe(AgentStart::Image);
        other.root_uuid = "v".into();
        assert_ne!(unit.key(), other.key());
        assert_eq!(unit.key(), recipe(AgentStart::Image).key());
        // Stock cloud images have no condor account and mask nothing.
        assert!(cloud
            .customize_hooks()
            .iter()
            .all(|h| !h.contains("useradd") && !h.contains("ln -sf /dev/null")));
    }
}
