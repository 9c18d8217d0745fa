#!/usr/bin/env bash
# Peak RSS of the vanilla flavour's QEMU: a 256 MiB test guest running a 60 s
# CPU-bound job under TCG, with the bounded translation cache (64 MiB, what the launcher uses)
# and with QEMU's default, interleaved. Prints one line per run: tb-size, peak RSS (KiB) of
# `vm-capsule run` and its QEMU child (GNU time), wall seconds.
# Usage: scripts/bench/qemu-rss.sh [rounds]   (needs a release build and the test guest)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
exe=$PWD/target/x86_64-unknown-linux-gnu/release/vm-capsule   # .cargo/config.toml names the target
guest=$(dirname "$(bash scripts/build-test-guest.sh | awk '{print $1}')")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t=$work/template/condor_vm_capsule
mkdir -p "$t" "$work/scratch" "$work/job"
cp "$guest/vmlinuz" "$t/vmlinuz"; cp "$guest/initrd.gz" "$t/initrd.img"
echo "console=ttyS0 quiet panic=-1" > "$t/cmdline"
"$exe" disk create "$t/data.qcow2" --size 64M --format qcow2 >/dev/null
cat > "$work/job/spin.sh" <<'JOB'
#!/bin/sh
end=$(( $(date +%s) + 60 )); n=0
while [ "$(date +%s)" -lt "$end" ]; do n=$((n+1)); done
echo "$n iterations"
JOB
chmod +x "$work/job/spin.sh"
cat > "$work/vm-capsule.conf" <<CONF
VM_CAPSULE_TEMPLATE = $work/template
VM_CAPSULE_SCRATCH_DIR_PREFIX = $work/scratch
VM_CAPSULE_INIT_SCRIPT_PATH = $guest/capsule-init
VM_CAPSULE_VM_MEMORY_MB = 256
VM_CAPSULE_TEST_ANY_USER = true
CONF
ad=$(printf 'ClusterId = 1\nProcId = 0\nOwner = "%s"\nIwd = "%s"\nCmd = "spin.sh"\nOut = "out.txt"\n' "$(id -un)" "$work/job")
for round in $(seq "$rounds"); do
  for tb in 64 0; do
    routed=$(printf '[ Name = "bench"; TargetUniverse = 13 ]\n------\n%s\n' "$ad" | "$exe" translate --config "$work/vm-capsule.conf" 2>/dev/null)
    echo "$routed" > "$work/routed.ad"
    _CONDOR_VM_CAPSULE_TCG_TB_MIB=$tb /usr/bin/time -f "%M %e" -o "$work/time" \
        "$exe" run "$work/routed.ad" --accel tcg --timeout 400 >/dev/null 2>&1
    out=$(tail -n 1 "$work/time")
    echo "round $round tb-size $( [ "$tb" = 0 ] && echo qemu-default || echo "${tb}MiB" ) peak-rss-kib ${out% *} wall-s ${out#* }"
    rm -rf "$work"/scratch/*/*
  done
done
