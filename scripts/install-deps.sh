#!/usr/bin/env bash
# Install the Debian packages vm-capsule needs on this machine: `demo` (the test guest and QEMU)
# or `test` (demo + the cross-check tools the test suite runs). Idempotent; safe to re-run.
#
# QEMU: one consistent version. A machine may ship qemu-utils from bookworm-backports (10.x)
# while bookworm's qemu-system-x86 is 7.2 and depends on qemu-system-common (= 7.2): asking for
# both by name then fails ("held broken packages"), and asking for qemu-system-x86 alone removes
# qemu-utils 10 and leaves no qemu-img. We pin every QEMU package to the version apt would pick
# for qemu-system-x86 (bookworm's own, what a Debian 12 execute node runs), allowing the
# downgrade of a newer qemu-utils.
set -euo pipefail
what=${1:-test}
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-deps: not root and no sudo: install as root: apt-get install qemu-system-x86 qemu-utils busybox-static cpio" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
command -v apt-get >/dev/null 2>&1 || {
    echo "install-deps: no apt-get here: install QEMU (qemu-system-x86_64, qemu-img), busybox (static) and cpio with your package manager" >&2
    exit 1
}
# Skip the index refresh when it is recent (a re-run, or the demo right after CI).
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -360 2>/dev/null | head -n 1)" ]; then
    $SUDO apt-get update -q
fi

qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
if [ -z "$qemu_version" ] || [ "$qemu_version" = "(none)" ]; then
    echo "install-deps: apt knows no qemu-system-x86; hint: apt-get update, or enable Debian main" >&2
    exit 1
fi
qemu_pkgs=(qemu-system-x86="$qemu_version" qemu-system-common="$qemu_version" qemu-utils="$qemu_version")
# qemu-block-extra, if present, must follow qemu-utils or it blocks the downgrade.
if dpkg-query -W -f='${Status}' qemu-block-extra 2>/dev/null | grep -q 'ok installed'; then
    qemu_pkgs+=(qemu-block-extra="$qemu_version")
fi

# busybox-static, cpio, kmod, zstd, xz-utils: the bootable test guest (kernel modules come
# zstd/xz-compressed from Debian's kernel package).
pkgs=(busybox-static cpio kmod zstd xz-utils ca-certificates gzip)
# passt: the user-mode NAT the launcher gives jobs that ask for a network.
pkgs+=(passt)
if [ "$what" = test ]; then
    # Cross-check tools for the disk code; GNU time measures the hooks' peak memory.
    pkgs+=(dosfstools mtools fdisk time)
    # curl: the stand-in execute node fetches URL inputs as HTCondor's curl plugin would.
    pkgs+=(curl)
    # ip: the network tests make their own namespaces and veth pairs.
    pkgs+=(iproute2)
    # libvirt checks and boots the LIBVIRT_XML_SCRIPT's domains (virt-xml-validate needs
    # xmllint); the packages are built with dpkg-deb and rpmbuild and checked with file/ldd.
    pkgs+=(libvirt-clients libvirt-daemon-system libvirt-daemon-driver-qemu libxml2-utils)
    pkgs+=(dpkg-dev rpm file)
    # Real guests: `vm-capsule template build` (mmdebstrap, mke2fs/debugfs, GRUB's
    # BIOS images), `template install-agent` (virt-customize; libguestfs boots the host's
    # kernel from /boot in its appliance, so one must be there).
    pkgs+=(mmdebstrap e2fsprogs grub-pc-bin libguestfs-tools linux-image-amd64)
fi
$SUDO apt-get install -y -q --no-install-recommends --allow-downgrades "${qemu_pkgs[@]}" "${pkgs[@]}"
