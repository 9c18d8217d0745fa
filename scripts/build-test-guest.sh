#!/usr/bin/env bash
# Build the bootable test guest for capsule-init from Debian packages only:
#   kernel  = the image behind `linux-image-amd64` (apt-get download, never installed)
#   initrd  = busybox-static + the .ko modules needed to see a virtio/IDE/AHCI disk and vfat
#             + /init + a static capsule-init (built here with -C target-feature=+crt-static)
#
# Usage: scripts/build-test-guest.sh        prints the three paths it produced:
#          $OUT/vmlinuz  $OUT/initrd.gz  $OUT/capsule-init (the static agent, also in the initrd)
#        (OUT = ${CAPSULE_TEST_GUEST_DIR:-.cache/test-guest})
# Boot:  qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot -nodefaults -serial stdio \
#          -kernel $OUT/vmlinuz -initrd $OUT/initrd.gz -append 'console=ttyS0 quiet panic=-1' \
#          -drive file=data.vmdk,format=vmdk,if=virtio
#        kernel options: capsule.mode=device (default: capsule-init reads the whole disk in user
#        space with --device) or capsule.mode=mount (mount the first partition as vfat at
#        /condor-data and use --data-dir, the seed's way; a capsule-init on the data disk is
#        preferred over the initrd's, as the hooks ship one there).
#
# Cache (all under OUT, gitignored via /.cache): the kernel and its modules per kernel version
# (kernel-<version>/), cargo's target dir for the static build (incremental), and the initrd,
# rebuilt only when the sha256 of its inputs changes. A warm rebuild takes about a second.
# Needs: apt access (apt-get update done), busybox-static, cargo, gzip, dpkg-deb, flock.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${CAPSULE_TEST_GUEST_DIR:-$ROOT/.cache/test-guest}
mkdir -p "$OUT"
# Tests may run this concurrently: one builder at a time.
exec 9>"$OUT/.lock"
flock 9

say() { echo "build-test-guest: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ------------------------------------------------------------------ kernel + modules
KPKG=${KPKG:-$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')}
[ -n "$KPKG" ] || die "no kernel package behind linux-image-amd64; hint: run apt-get update"
KVER=${KPKG#linux-image-}
KDIR=$OUT/kernel-$KVER
# virtio/IDE/AHCI disks, plus vfat and its default code pages for capsule.mode=mount, and
# virtio_console for the vanilla launcher's control channel (a virtio-serial port), virtio_net
# for a network on request, and 9p/virtiofs for read-only host paths (qemu_fw_cfg: the node
# settings that say which share goes where).
WANT="virtio_pci virtio_blk ata_piix ahci sd_mod vfat nls_cp437 nls_ascii nls_iso8859_1 virtio_console virtio_net 9pnet_virtio 9p virtiofs qemu_fw_cfg"
# The marker holds the module list: a changed list fetches the modules again.
if [ "$(cat "$KDIR/complete" 2>/dev/null)" != "$WANT" ]; then
    say "fetching $KPKG"
    tmp=$(mktemp -d "$OUT/tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -q "$KPKG" >&2) || die "apt-get download $KPKG failed"
    dpkg-deb -x "$tmp"/"$KPKG"_*.deb "$tmp/x"
    moddir=$tmp/x/lib/modules/$KVER
    # The .deb has no modules.dep and busybox modinfo needs one: resolve the load order from
    # each module's .modinfo "depends=" string. File names mix '-' and '_'.
    declare -A KOPATH SEEN
    while IFS= read -r f; do b=$(basename "$f" .ko); KOPATH[${b//-/_}]=$f; done \
        < <(find "$moddir/kernel" -name '*.ko')
    ORDER=()
    resolve() {
        local m=${1//-/_} d
        [ -n "${SEEN[$m]:-}" ] && return 0
        SEEN[$m]=1
        if [ -z "${KOPATH[$m]:-}" ]; then
            grep -q "/${1}.ko\$\|/${m}.ko\$" "$moddir/modules.builtin" && return 0
            die "module $m not found in $KPKG"
        fi
        for d in $(tr '\0' '\n' < "${KOPATH[$m]}" | sed -n 's/^depends=//p' | tr ',' ' '); do
            resolve "$d"
        done
        ORDER+=("$m")
    }
    for m in $WANT; do resolve "$m"; done
    rm -rf "$KDIR" && mkdir -p "$KDIR/modules"
    cp "$tmp/x/boot/vmlinuz-$KVER" "$KDIR/vmlinuz"
    for m in "${ORDER[@]}"; do
        cp "${KOPATH[$m]}" "$KDIR/modules/$m.ko"
        echo "$m" >> "$KDIR/modules/load-order"
    done
    echo "$WANT" > "$KDIR/complete"
    rm -rf "$tmp"
    trap - EXIT
fi

# ------------------------------------------------------------------ static capsule-init
# Its own target dir: other RUSTFLAGS, and no lock fights with a `cargo test` that calls us.
unset CARGO_ENCODED_RUSTFLAGS
export CARGO_TARGET_DIR=$OUT/cargo-target
say "building static capsule-init"
(cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
    -p capsule-guest --target x86_64-unknown-linux-gnu \
    --config 'profile.release.strip="symbols"' --config 'profile.release.debug=false') >&2
INIT_BIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/capsule-init
# ldd exits 1 for a static binary, so look at what it says rather than its status.
is_static() { { LC_ALL=C ldd "$1" 2>&1 || true; } | grep -q 'statically linked\|not a dynamic executable'; }
is_static "$INIT_BIN" || die "$INIT_BIN is not statically linked"

BUSYBOX=$(command -v busybox) || die "busybox not found; hint: apt-get install busybox-static"
is_static "$BUSYBOX" || die "$BUSYBOX is dynamic; hint: apt-get install busybox-static"

# ------------------------------------------------------------------ initramfs
INIT_SCRIPT=$(cat <<'EOF'
#!/bin/busybox sh
# test guest /init: devices up, data disk found, capsule-init runs the job and powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo 0 > /proc/sys/kernel/printk
log() { read -r up _ < /proc/uptime; echo "test-guest [$up]: $*"; }
log "init started"
for m in $(cat /lib/modules/load-order); do
    insmod /lib/modules/$m.ko 2>/dev/null || log "insmod $m failed"
done
mode=device
for a in $(cat /proc/cmdline); do
    case $a in capsule.mode=*) mode=${a#capsule.mode=} ;; esac
done
# wait up to 20 s for the first partition of the first disk
disk=""
i=0
while [ $i -lt 400 ]; do
    for d in vda sda hda; do
        if [ -b /dev/${d}1 ]; then disk=$d; break 2; fi
    done
    sleep 0.05
    i=$((i + 1))
done
if [ -z "$disk" ]; then
    log "no data disk found"; ls /sys/class/block; poweroff -f
fi
log "data disk /dev/$disk, mode $mode"
if [ "$mode" = mount ]; then
    mount -t vfat -o rw,shortname=mixed /dev/${disk}1 /condor-data \
        || { log "mount /dev/${disk}1 failed"; poweroff -f; }
    # The agent the host shipped on the data disk wins over the one in the image.
    agent=/sbin/capsule-init
    [ -f /condor-data/capsule-init ] && agent=/condor-data/capsule-init
    log "agent $agent"
    # capsule-init unmounts /condor-data and powers off itself; the rest is a fallback.
    $agent --data-dir /condor-data
    sync
    umount /condor-data || mount -o remount,ro /condor-data
    sync
    poweroff -f
fi
exec /sbin/capsule-init --device /dev/$disk
EOF
)
PASSWD='root:x:0:0:root:/root:/bin/sh
condor:x:1000:1000:condor:/home/condor:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false'
GROUP='root:x:0:
condor:x:1000:
nogroup:x:65534:'

KEY=$( { echo "$KVER"; echo "$INIT_SCRIPT"; echo "$PASSWD$GROUP";
         sha256sum "$0" "$INIT_BIN" "$BUSYBOX" "$KDIR"/modules/*; } | sha256sum | cut -d' ' -f1)
if [ ! -f "$OUT/initrd.gz" ] || [ "$(cat "$OUT/initrd.key" 2>/dev/null)" != "$KEY" ]; then
    say "packing initrd"
    root=$(mktemp -d "$OUT/initramfs.XXXXXX")
    chmod 755 "$root" # mktemp's 0700 would become the guest's "/" and lock the job user out
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,etc,condor-data,var/lib,tmp,lib/modules}
    chmod 1777 "$root/tmp"
    cp "$BUSYBOX" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    cp "$INIT_BIN" "$root/sbin/capsule-init"
    cp "$KDIR"/modules/* "$root/lib/modules/"
    printf '%s\n' "$INIT_SCRIPT" > "$root/init"
    chmod 755 "$root/init"
    printf '%s\n' "$PASSWD" > "$root/etc/passwd"
    printf '%s\n' "$GROUP" > "$root/etc/group"
    # busybox's cpio writes newc; -R 0:0 makes every file root's without needing root here.
    (cd "$root" && find . | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0 2>/dev/null) \
        | gzip -6 > "$OUT/initrd.gz.tmp"
    mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
    echo "$KEY" > "$OUT/initrd.key"
    rm -rf "$root"
fi
cp "$KDIR/vmlinuz" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
cp "$INIT_BIN" "$OUT/capsule-init.tmp" && mv "$OUT/capsule-init.tmp" "$OUT/capsule-init"
echo "$OUT/vmlinuz $OUT/initrd.gz $OUT/capsule-init"
