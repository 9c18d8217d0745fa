#!/usr/bin/env bash
# The README's demo command: install what the demo needs when this machine lets us (root or
# sudo, apt), then run `vm-capsule demo` (a vanilla job into a VM and back, end to end).
# Arguments are passed to `vm-capsule demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
        echo "demo: installing ${need[*]} (and a QEMU consistent with it)" >&2
        bash scripts/install-deps.sh demo >&2
    else
        echo "demo: missing ${need[*]}; install them with: sudo bash scripts/install-deps.sh demo" >&2
    fi
fi
exec cargo run --quiet --release -p vm-capsule -- demo "$@"
