//! The template's initramfs: busybox and the few kernel modules that reach an ext4 root on
//! virtio, SCSI, IDE or SATA, and an `/init` that loads them, mounts `root=UUID=` read-only and
//! hands over to systemd.
//!
//! Debian's initramfs-tools initramfs (even with `MODULES=list`) is 19 MiB unpacked (kmod pulls
//! in libcrypto, udev its rules) and runs dozens of scripts: 3 to 5 s under TCG before systemd
//! starts, and seconds more for GRUB to read it through the BIOS. This one is about 5 MiB and
//! takes about a second. It only replaces `/boot/initrd.img-<version>`: initramfs-tools is
//! still installed, so `update-initramfs -u` inside the image brings Debian's back.

/// Kernel modules the initramfs loads first, with their dependencies (`modprobe
/// --show-depends`): the virtio disk every KVM template has, and ext4.
pub const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];

/// Loaded only when the root file system is not found after the first ones: SCSI, IDE and
/// SATA disks (VMware, other hypervisors). Each module costs time under TCG (the kernel checks
/// its signature), so a virtio guest does not load them.
pub const MORE_MODULES: &[&str] = &["virtio_scsi", "sd_mod", "ata_piix", "ahci"];

/// `/init`. Applets are called through busybox rather than installed as links: hundreds of
/// links cost time in a TCG guest.
const INIT: &str = r#"#!/bin/busybox sh
# vm-capsule template initramfs: disk and ext4 modules, root=UUID= read-only, then systemd.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
load() { for m in $($bb cat "$1"); do $bb insmod "/lib/modules/$m" 2>/dev/null; done; }
load /modules
root=
for a in $($bb cat /proc/cmdline); do
    case $a in root=*) root=${a#root=} ;; esac
done
dev=
i=0
while [ $i -lt 300 ]; do
    dev=$($bb findfs "$root" 2>/dev/null) && break
    [ $i = 5 ] && load /modules.more
    $bb sleep 0.1
    i=$((i + 1))
done
if [ -z "$dev" ] || ! $bb mount -o ro "$dev" /root; then
    echo "initramfs: cannot mount root $root; block devices: $($bb ls /sys/class/block | $bb tr '\n' ' ')"
    $bb sleep 5
    $bb poweroff -f
fi
$bb mount --move /dev /root/dev
$bb umount /proc /sys
exec $bb switch_root /root /sbin/init
"#;

/// A shell command for mmdebstrap's `--customize-hook` (`$1` is the root) that builds the
/// initramfs for the image's kernel and puts it in place of Debian's. File times are the epoch
/// and the archive is `cpio --reproducible`: the same root gives the same initramfs.
pub fn customize_hook(epoch: u64) -> String {
    let (modules, more) = (MODULES.join(" "), MORE_MODULES.join(" "));
    // The init script travels inside the hook as a here-document.
    format!(
        r#"set -e
r="$1"
kver=$(ls "$r/boot" | sed -n 's/^vmlinuz-//p')
w=$(mktemp -d)
mkdir -p "$w/bin" "$w/lib/modules" "$w/proc" "$w/sys" "$w/dev" "$w/root"
cp "$r/bin/busybox" "$w/bin/busybox"
deps() {{ chroot "$r" modprobe -S "$kver" -a --show-depends "$@" | awk '$1 == "insmod" {{print $2}}'; }}
deps {modules} | awk '!seen[$0]++' > "$w/paths"
deps {more} | awk 'NR == FNR {{seen[$0] = 1; next}} !seen[$0]++' "$w/paths" - > "$w/paths.more"
: > "$w/modules.more"
for p in $(cat "$w/paths"); do cp "$r$p" "$w/lib/modules/"; basename "$p" >> "$w/modules"; done
for p in $(cat "$w/paths.more"); do cp "$r$p" "$w/lib/modules/"; basename "$p" >> "$w/modules.more"; done
cat > "$w/init" <<'VM_CAPSULE_INIT'
{INIT}VM_CAPSULE_INIT
chmod 0755 "$w/init"
rm "$w/paths" "$w/paths.more"
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
        assert!(hook.contains("exec $bb switch_root /root /sbin/init\nVM_CAPSULE_INIT\n"));
        assert!(hook.contains("deps virtio_pci virtio_blk ext4 |"));
        assert!(hook.contains("deps virtio_scsi sd_mod ata_piix ahci |"));
        assert!(hook.contains("touch -h --date=@7"));
    }
}
