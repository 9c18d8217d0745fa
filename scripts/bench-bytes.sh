#!/usr/bin/env bash
# Bytes per job for a 2 GiB OS image, for docs/PERFORMANCE.md:
#   transferred: what HTCondor sends to the execute node (the apparent sizes of the routed
#                job's TransferInput: its file transfer does not keep holes);
#   written:     what `vm-capsule run` itself writes to stage and return the disks, measured
#                as the block output (ru_oublock x 512, `/usr/bin/time %O`) of the run with a
#                stand-in QEMU that powers off at once, so that the guest's own writes (which
#                depend on the job) are not counted.
# Variants, side by side in one run: BASE_BIN (vm-capsule built from an older commit: the OS
# disk travels and is copied into a sandbox per run), this tree with the OS disk travelling,
# and this tree with VM_CAPSULE_NODE_IMAGE_DIR (VM universe and vanilla flavour).
#
# Usage: scripts/bench-bytes.sh [BASE_BIN]
# Needs: the systemd template the tests build (.cache/templates/systemd-*), the test guest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_BIN=${1:-}
cd "$ROOT"
cargo build -q --release -p vm-capsule
NEW_BIN=$ROOT/target/x86_64-unknown-linux-gnu/release/vm-capsule
AGENT=$(bash scripts/build-test-guest.sh | awk '{print $3}')
SYSTEMD=$(ls -d .cache/templates/systemd-* | grep -v lock | head -n 1)
WORK=$(mktemp -d "$ROOT/.cache/bench-bytes.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A 2 GiB OS image with every block allocated (what an image copied around without care for
# holes looks like), its checksum, a data disk.
T=$WORK/template/condor_vm_capsule
mkdir -p "$T" "$WORK/node"
qemu-img convert -S 0 -O raw "$SYSTEMD/condor_vm_capsule/os.qcow2" "$T/os.img"
(cd "$T" && sha256sum os.img > os.img.sha256)
cp "$SYSTEMD/condor_vm_capsule/data.qcow2" "$T/"
ln "$T/os.img" "$T/os.img.sha256" "$WORK/node/"
echo "bench-bytes: OS image $(du -B1 --apparent-size "$T/os.img" | cut -f1) bytes, $(du -B1 "$T/os.img" | cut -f1) allocated" >&2

# A QEMU that "boots" and powers off at once.
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexit 0\n' > "$WORK/bin/qemu-system-x86_64"
chmod +x "$WORK/bin/qemu-system-x86_64"

mkdir -p "$WORK/job"
printf '#!/bin/sh\necho hello\n' > "$WORK/job/job.sh"
chmod +x "$WORK/job/job.sh"
AD="ClusterId = 1
ProcId = 0
Owner = \"$(id -un)\"
Iwd = \"$WORK/job\"
Cmd = \"$WORK/job/job.sh\"
JobUniverse = 5
TransferExecutable = true
ShouldTransferFiles = \"YES\"
WhenToTransferOutput = \"ON_EXIT\"
Out = \"out.txt\""

# measure ID NAME BIN UNIVERSE [NODE_DIR]
measure() {
    local id=$1 name=$2 bin=$3 universe=$4 node=${5:-} out routed transfer written
    mkdir -p "$WORK/scratch-$id"
    routed=$(printf '[ Name = "b"; TargetUniverse = %s ]\n------\n%s\n' "$universe" "$AD" |
        env CONDOR_CONFIG=/dev/null _CONDOR_VM_CAPSULE_TEMPLATE="$WORK/template" \
            _CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX="$WORK/scratch-$id" \
            _CONDOR_VM_CAPSULE_INIT_SCRIPT_PATH="$AGENT" \
            _CONDOR_VM_CAPSULE_OUTPUT_HEADROOM_MB=16 _CONDOR_VM_CAPSULE_TEST_ANY_USER=true \
            ${node:+_CONDOR_VM_CAPSULE_NODE_IMAGE_DIR="$node"} \
            "$bin" translate 2>/dev/null)
    echo "$routed" > "$WORK/$id.ad"
    transfer=$(echo "$routed" | sed -n 's/^TransferInput = "\(.*\)"$/\1/p' | tr ',' '\n' | while read -r f; do
        case $f in /*) p=$f ;; *) p=$(echo "$routed" | sed -n 's/^Iwd = "\(.*\)"$/\1/p')/$f ;; esac
        stat -L -c %s "$p"; done | awk '{s += $1} END {print s + 0}')
    if [ "$universe" = 13 ]; then
        PATH="$WORK/bin:$PATH" TMPDIR="$WORK" /usr/bin/time -o "$WORK/$id.time" -f "%O" \
            "$bin" run "$WORK/$id.ad" --accel tcg --timeout 60 >/dev/null 2>&1 || true
    else
        # The launcher in a stand-in sandbox: the files HTCondor would transfer, then the run.
        local sb=$WORK/sandbox-$id
        mkdir -p "$sb"
        echo "$routed" | sed -n 's/^TransferInput = "\(.*\)"$/\1/p' | tr ',' '\n' | while read -r f; do cp "$f" "$sb/"; done
        (cd "$sb" && PATH="$WORK/bin:$PATH" /usr/bin/time -o "$WORK/$id.time" -f "%O" \
            "$bin" run capsule.ad --vanilla --accel tcg --timeout 60 >/dev/null 2>&1) || true
    fi
    out=$(tail -n 1 "$WORK/$id.time")
    written=$((out * 512))
    local data name
    name=$(echo "$routed" | sed -n 's/^VMCapsuleDataDisk = "\(.*\)"$/\1/p')
    # The vanilla launcher makes the data disk on the node, from the inputs.
    data=$(stat -c %s "$(echo "$routed" | sed -n 's/^VMCapsuleScratch = "\(.*\)"$/\1/p')/$name" 2>/dev/null \
        || echo "(made on the node)")
    printf '| %s | %s | %s | %s |\n' "$name" "$transfer" "$written" "$data"
}

echo "| variant | bytes transferred per job | bytes written by the run | data disk file |"
echo "|---|---|---|---|"
if [ -n "$BASE_BIN" ]; then
    measure base "before: the OS disk travels, run copies it into a sandbox" "$BASE_BIN" 13
fi
measure travel "after: the OS disk travels, run links it" "$NEW_BIN" 13
measure node-vm "after: VM_CAPSULE_NODE_IMAGE_DIR, VM universe" "$NEW_BIN" 13 "$WORK/node"
measure node-vanilla "after: VM_CAPSULE_NODE_IMAGE_DIR, vanilla flavour" "$NEW_BIN" 5 "$WORK/node"
