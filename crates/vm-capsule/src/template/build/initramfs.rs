//! The template's initramfs: busybox and the few kernel modules that reach an ext4 root on
//! virtio, SCSI, IDE or SATA, and an `/init` that loads them, mounts `root=UUID=` read-only and
//! hands over to systemd.
//!
//! Debian's initramfs-tools initramfs (even with `MODULES=list`) is 19 MiB unpacked (kmod pulls
//! in libcrypto, udev its rules) and runs dozens of scripts: 3 to 5 s under TCG before systemd
//! starts, and seconds more for GRUB to read it through the BIOS. This one is about 5 MiB and
//! takes well under a second. It only replaces `/boot/initrd.img-<version>`: initramfs-tools is
//! still installed, so `update-initramfs -u` inside the image brings Debian's back.

/// Kernel modules the initramfs loads, with their dependencies (`modprobe --show-depends`).
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ata_piix",
    "ahci",
    "ext4",
];

/// `/init`.
const INIT: &str = r#"#!/bin/busybox sh
# vm-capsule template initramfs: disk and ext4 modules, root=UUID= read-only, then systemd.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in $(cat /modules); do insmod "/lib/modules/$m" 2>/dev/null; done
root=
for a in $(cat /proc/cmdline); do
    case $a in root=*) root=${a#root=} ;; esac
done
dev=
i=0
while [ $i -lt 300 ]; do
    dev=$(findfs "$root" 2>/dev/null) && break
    sleep 0.1
    i=$((i + 1))
done
if [ -z "$dev" ] || ! mount -o ro "$dev" /root; then
    echo "initramfs: cannot mount root $root; block devices: $(ls /sys/class/block | tr '\n' ' ')"
    echo o > /proc/sysrq-trigger
    sleep 5
    poweroff -f
fi
mount --move /dev /root/dev
umount /proc /sys
exec switch_root /root /sbin/init
"#;

/// A shell command for mmdebstrap's `--customize-hook` (`$1` is the root) that builds the
/// initramfs for the image's kernel and puts it in place of Debian's. File times are the epoch
/// and the archive is `cpio --reproducible`: the same root gives the same initramfs.
pub fn customize_hook(epoch: u64) -> String {
    let modules = MODULES.join(" ");
    // The init script travels inside the hook as a here-document.
    format!(
        r#"set -e
r="$1"
kver=$(ls "$r/boot" | sed -n 's/^vmlinuz-//p')
w=$(mktemp -d)
mkdir -p "$w/bin" "$w/lib/modules" "$w/proc" "$w/sys" "$w/dev" "$w/root"
cp "$r/bin/busybox" "$w/bin/busybox"
chroot "$r" modprobe -S "$kver" -a --show-depends {modules} | awk '$1 == "insmod" && !seen[$2]++ {{print $2}}' > "$w/paths"
for p in $(cat "$w/paths"); do cp "$r$p" "$w/lib/modules/"; basename "$p" >> "$w/modules"; done
cat > "$w/init" <<'VM_CAPSULE_INIT'
{INIT}VM_CAPSULE_INIT
chmod 0755 "$w/init"
rm "$w/paths"
find "$w" -exec touch -h --date=@{epoch} {{}} +
(cd "$w" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) | lz4 -l -9 -q > "$r/boot/initrd.img-$kver"
rm -rf "$w""#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_carries_the_init_script_whole() {
        let hook = customize_hook(7);
        assert!(hook.contains("cat > \"$w/init\" <<'VM_CAPSULE_INIT'\n#!/bin/busybox sh\n"));
        assert!(hook.contains("exec switch_root /root /sbin/init\nVM_CAPSULE_INIT\n"));
        assert!(hook.contains(
            "--show-depends virtio_pci virtio_blk virtio_scsi sd_mod ata_piix ahci ext4 |"
        ));
        assert!(hook.contains("touch -h --date=@7"));
    }
}
