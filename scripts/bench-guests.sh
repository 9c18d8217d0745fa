#!/usr/bin/env bash
# Boot figures of the guests for docs/PERFORMANCE.md: QEMU start -> agent start ->
# job start, and job end -> poweroff, under TCG, medians of RUNS runs interleaved across the
# guests (one boot of each, then the next round), measured by `vm-capsule template check`
# (the capsule translate makes and the QEMU command line `vm-capsule run` uses; the console is
# followed with host time stamps). Prints a markdown table and the QEMU command lines.
#
# Usage: scripts/bench-guests.sh [RUNS]     (default 3)
# Needs: the templates the tests build (.cache/templates/{systemd,cloud}-*; run
# `cargo test -p vm-capsule --test it guests` once), the test guest, a release build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-3}
cd "$ROOT"
cargo build -q --release -p vm-capsule
VMC=$ROOT/target/x86_64-unknown-linux-gnu/release/vm-capsule
GUEST=$(bash scripts/build-test-guest.sh | awk '{print $3}' | xargs dirname)
AGENT=$GUEST/capsule-init
SYSTEMD=$(ls -d .cache/templates/systemd-* | grep -v lock | head -n 1)
CLOUD=$(ls -d .cache/templates/cloud-* | grep -v lock | head -n 1)
[ -d "$SYSTEMD" ] && [ -d "$CLOUD" ] || { echo "bench-guests: build the templates first (cargo test -p vm-capsule --test it guests)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/bench-guests.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# The busybox test guest as a template (direct kernel boot).
mkdir -p "$WORK/busybox/condor_vm_capsule"
cp "$GUEST/vmlinuz" "$WORK/busybox/condor_vm_capsule/vmlinuz"
cp "$GUEST/initrd.gz" "$WORK/busybox/condor_vm_capsule/initrd.img"
echo "console=ttyS0 quiet panic=-1" > "$WORK/busybox/condor_vm_capsule/cmdline"
cp "$SYSTEMD/condor_vm_capsule/data.qcow2" "$WORK/busybox/condor_vm_capsule/"
# The systemd template booting its own kernel directly (what `template build --direct-boot`
# adds), from the same OS disk.
mkdir -p "$WORK/direct/condor_vm_capsule"
ln "$SYSTEMD/condor_vm_capsule/"{os.qcow2,data.qcow2} "$WORK/direct/condor_vm_capsule/" 2>/dev/null \
    || cp "$SYSTEMD/condor_vm_capsule/"{os.qcow2,data.qcow2} "$WORK/direct/condor_vm_capsule/"
qemu-img convert -O raw "$SYSTEMD/condor_vm_capsule/os.qcow2" "$WORK/os.raw"
KVER=$(debugfs -R "ls -l /boot" "$WORK/os.raw?offset=1048576" 2>/dev/null | awk '/vmlinuz-/{sub("vmlinuz-","",$NF); print $NF}')
debugfs -R "dump /boot/vmlinuz-$KVER $WORK/direct/condor_vm_capsule/vmlinuz" "$WORK/os.raw?offset=1048576" 2>/dev/null
debugfs -R "dump /boot/initrd.img-$KVER $WORK/direct/condor_vm_capsule/initrd.img" "$WORK/os.raw?offset=1048576" 2>/dev/null
UUID=$(blkid -p -o value -s UUID -O 1048576 "$WORK/os.raw")
echo "root=UUID=$UUID ro console=ttyS0 quiet panic=-1" > "$WORK/direct/condor_vm_capsule/cmdline"
rm -f "$WORK/os.raw"

# Log every QEMU command line.
mkdir -p "$WORK/bin"
cat > "$WORK/bin/qemu-system-x86_64" <<EOF
#!/bin/sh
echo "\$@" >> "$WORK/qemu-cmdlines"
exec $(command -v qemu-system-x86_64) "\$@"
EOF
chmod +x "$WORK/bin/qemu-system-x86_64"

GUESTS="busybox systemd direct cloud"
dir_of() { case $1 in busybox) echo "$WORK/busybox" ;; systemd) echo "$SYSTEMD" ;; direct) echo "$WORK/direct" ;; cloud) echo "$CLOUD" ;; esac; }
for r in $(seq "$RUNS"); do
    for g in $GUESTS; do
        extra=()
        [ "$g" = cloud ] && extra=(--cloud-init)
        [ "$g" = systemd ] || [ "$g" = cloud ] && extra+=(--classad-template "$(dir_of "$g")/classad-template.ad")
        out=$(PATH="$WORK/bin:$PATH" "$VMC" template check "$(dir_of "$g")" --agent "$AGENT" \
                  --accel tcg --timeout 400 "${extra[@]}" 2>/dev/null) || { echo "$out" >&2; exit 1; }
        secs() { echo "$out" | awk -v k="$1" 'index($0, k) {print $(NF-1)}'; }
        echo "$g $(secs 'QEMU start -> agent start') $(secs 'agent start -> job start') $(secs 'QEMU start -> job start') $(secs 'job end -> poweroff')" >> "$WORK/times"
        tail -n 1 "$WORK/qemu-cmdlines" > "$WORK/cmd-$g"
        echo "bench-guests: round $r $g: $(tail -n 1 "$WORK/times")" >&2
    done
done

echo "| guest | QEMU start -> agent start | agent start -> job start | QEMU start -> job start | job end -> poweroff | runs (job start) |"
echo "|---|---|---|---|---|---|"
for g in $GUESTS; do
    awk -v g="$g" '
        $1 == g { n++; a[n] = $2; b[n] = $3; c[n] = $4; d[n] = $5; all = all (all ? ", " : "") $4 }
        function med(x,   i, j, t) {
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
            return x[int((n + 1) / 2)]
        }
        END { printf "| %s | %.2f s | %.2f s | %.2f s | %.2f s | %s |\n", g, med(a), med(b), med(c), med(d), all }
    ' "$WORK/times"
done
echo
echo "QEMU command lines (the last run of each guest; temporary paths as they were):"
for g in $GUESTS; do echo "$g: qemu-system-x86_64 $(cat "$WORK/cmd-$g")"; done
