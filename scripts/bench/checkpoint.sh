#!/usr/bin/env bash
# Whole-VM checkpoints in the vanilla flavour: what a checkpoint weighs and costs, under TCG.
# A routed test-guest job (translate run as the router runs it, `+VMCapsuleCheckpoint = true`)
# runs through the launcher as the starter runs it (the sandbox as cwd, `_CONDOR_JOB_AD`, a
# bare environment); each restart is in a fresh sandbox given the routed job's inputs and
# the checkpoint, as after an eviction.
#
#   size MEM   a guest of MEM MiB whose job fills FILL MiB (env FILL, default 100) of its memory (tmpfs) with
#              incompressible data, then waits; saved after 20 s, restored, saved again:
#              the file's size, its memory section's raw size, the save time (stop to file in
#              place, from the file's trailer) and the restore time (start of the load to the
#              guest running again, from the second file's trailer)
#   wall       a job that computes for about JOB_MIN minutes (a shell loop, so guest CPU):
#              run uninterrupted, and with a checkpoint every INTERVAL s, each restored in a
#              fresh sandbox; the launchers' total wall time, interleaved per round
#
# Usage: scripts/bench/checkpoint.sh [sizes|wall|all] [ROUNDS] [JOB_MIN] [INTERVAL]
#        (defaults: all, 1 round, 11 minutes, 300 s; needs the test guest)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
what=${1:-all}
rounds=${2:-1}
job_min=${3:-11}
interval=${4:-300}
fill=${FILL:-100}
cargo build -q --release -p vm-capsule -p capsule-guest
bin=$PWD/target/x86_64-unknown-linux-gnu/release
guest=$(dirname "$(bash scripts/build-test-guest.sh | awk '{print $1}')")
work=$(mktemp -d)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

t=$work/template/condor_vm_capsule
mkdir -p "$t" "$work/job"
cp "$guest/vmlinuz" "$t/vmlinuz"
cp "$guest/initrd.gz" "$t/initrd.img"
echo "console=ttyS0 quiet panic=-1" > "$t/cmdline"
"$bin/vm-capsule" disk create "$t/data.qcow2" --size 64M --format qcow2 >/dev/null
cat > "$work/job/fill.sh" <<EOF
#!/bin/sh
mkdir -p /dev/shm/fill 2>/dev/null || true
dd if=/dev/urandom of=/dev/shm/fill/x bs=1M count=$fill 2>/dev/null || dd if=/dev/urandom of=x bs=1M count=$fill 2>/dev/null
echo filled
sleep 3600
EOF
# About JOB_MIN minutes of guest CPU under TCG, calibrated below.
cat > "$work/job/compute.sh" <<'EOF'
#!/bin/sh
n=$1; i=0; s=0
while [ $i -lt $n ]; do i=$((i+1)); s=$(((s*31+i)%1000003)); done
echo "sum $s"
EOF
chmod +x "$work/job/"*.sh

# route MEM SCRIPT ARGS: the routed ad of a checkpointed job, in $work/routed.ad.
route() {
    local mem=$1 script=$2 args=${3:-} scratch=$work/scratch
    rm -rf "$scratch"; mkdir -p "$scratch"; chmod 1777 "$scratch"
    local ad="ClusterId = 1
ProcId = 0
Owner = \"$(id -un)\"
Iwd = \"$work/job\"
Cmd = \"$work/job/$script\"
Arguments = \"$args\"
JobUniverse = 5
RequestDisk = 20
RequestMemory = $mem
TransferExecutable = true
ShouldTransferFiles = \"YES\"
WhenToTransferOutput = \"ON_EXIT\"
Out = \"out.txt\"
VMCapsuleCheckpoint = true"
    printf '[ Name = "bench"; TargetUniverse = 5 ]\n------\n%s\n' "$ad" |
        env -i PATH=/usr/bin:/bin CONDOR_CONFIG=/dev/null \
            _CONDOR_VM_CAPSULE_TEMPLATE="$work/template" \
            _CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX="$scratch" \
            _CONDOR_VM_CAPSULE_TRANSLATE_LOG="$work/translate.log" \
            _CONDOR_VM_CAPSULE_TEST_ANY_USER=true "$bin/vm-capsule" translate > "$work/routed.ad"
}

# start SANDBOX INTERVAL [FROM]: a fresh sandbox with the routed job's inputs (and FROM's
# checkpoint and streams), the launcher run in it with checkpoints every INTERVAL s; prints
# its exit code and wall seconds.
start() {
    local sb=$1 every=$2 from=${3:-} routed cmd args transfer
    routed=$(cat "$work/routed.ad")
    cmd=$(routed_string Cmd); args=$(routed_string Arguments); transfer=$(routed_string TransferInput)
    rm -rf "$sb"; mkdir -p "$sb"
    # shellcheck disable=SC2086 # the list's names, split as HTCondor splits them
    stage_inputs "$sb" "$work/job" $cmd ${transfer//,/ }
    cp "$work/routed.ad" "$sb/.job.ad"
    if [ -n "$from" ]; then cp "$from/vm-capsule.checkpoint" "$from/_condor_stdout" "$from/_condor_stderr" "$sb/"; fi
    local s e code=0
    s=$(date +%s.%N)
    # shellcheck disable=SC2086 # the routed job's arguments, split as the starter splits them
    (cd "$sb" && env -i PATH=/usr/bin:/bin _CONDOR_JOB_AD="$sb/.job.ad" \
        _CONDOR_VM_CAPSULE_CHECKPOINT_INTERVAL="$every" "./$(basename "$cmd")" $args \
        >> _condor_stdout 2>> _condor_stderr) || code=$?
    e=$(date +%s.%N)
    awk -v c="$code" -v s="$s" -v e="$e" 'BEGIN { printf "%d %.2f\n", c, e - s }'
}

# trailer FILE: the checkpoint's trailer (JSON).
trailer() { python3 -c 'import sys,struct; b=open(sys.argv[1],"rb").read(); n=struct.unpack("<Q",b[-16:-8])[0]; print(b[-16-n:-16].decode())' "$1"; }
field() { python3 -c 'import sys,json; t=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, t))' "$1" "$2"; }

sizes() {
    for mem in 256 1024; do
        route "$mem" fill.sh
        read -r c1 _ < <(start "$work/a" 20)
        [ "$c1" = 85 ] || { echo "bench: size $mem: the first run exited $c1: $(cat "$work/a/_condor_stderr")" >&2; return 1; }
        local t1 bytes
        t1=$(trailer "$work/a/vm-capsule.checkpoint")
        bytes=$(stat -c %s "$work/a/vm-capsule.checkpoint")
        read -r c2 _ < <(start "$work/b" 20 "$work/a")
        [ "$c2" = 85 ] || { echo "bench: size $mem: the restored run exited $c2: $(cat "$work/b/_condor_stderr")" >&2; return 1; }
        local t2
        t2=$(trailer "$work/b/vm-capsule.checkpoint")
        printf 'size%-5s file_MiB %7.1f  memory_raw_MiB %7.1f  memory_stored_MiB %7.1f  file_MiB_per_GiB %7.1f  save_s %6.2f  restore_s %6.2f\n' \
            "$mem" "$(echo "$bytes / 1048576" | bc -l)" \
            "$(field "$t1" '[s["size"] for s in sections if s["name"]=="memory"][0]/1048576')" \
            "$(field "$t1" '[s["stored"] for s in sections if s["name"]=="memory"][0]/1048576')" \
            "$(echo "$bytes / 1048576 / ($mem / 1024)" | bc -l)" \
            "$(field "$t1" 'save_ms/1000')" "$(field "$t2" 'restored_ms/1000')"
    done
}

wall() {
    # Calibrate: loop turns per second of guest time, from a short run.
    route 256 compute.sh 200000
    local c w per
    read -r c w < <(start "$work/cal" 0)
    [ "$c" = 0 ] || { echo "bench: calibration exited $c: $(cat "$work/cal/_condor_stderr")" >&2; return 1; }
    read -r c base < <(route 256 compute.sh 1 && start "$work/cal" 0)
    per=$(echo "200000 / ($w - $base)" | bc -l)
    local turns
    turns=$(printf '%.0f' "$(echo "$per * 60 * $job_min" | bc -l)")
    route 256 compute.sh "$turns"
    for round in $(seq "$rounds"); do
        read -r c plain < <(start "$work/plain" 0)
        [ "$c" = 0 ] || { echo "bench: uninterrupted run exited $c" >&2; return 1; }
        local total=0 hops=0 from="" sb
        while :; do
            sb=$work/hop$hops
            read -r c w < <(start "$sb" "$interval" "$from")
            total=$(echo "$total + $w" | bc -l); hops=$((hops + 1))
            [ "$c" = 85 ] || break
            from=$sb
        done
        [ "$c" = 0 ] || { echo "bench: checkpointed run exited $c: $(cat "$sb/_condor_stderr")" >&2; return 1; }
        # The job's stdout, written by the launchers of every start.
        cmp -s "$work/plain/_condor_stdout" "$sb/_condor_stdout" || echo "bench: the job's stdout differs" >&2
        printf 'wall round %d  uninterrupted_s %8.1f  checkpointed_s %8.1f  starts %d  ratio %6.3f\n' \
            "$round" "$plain" "$total" "$hops" "$(echo "$total / $plain" | bc -l)"
        rm -rf "$work"/hop*
    done
}

case $what in
    sizes) sizes ;;
    wall) wall ;;
    all) sizes; wall ;;
    *) echo "usage: $0 [sizes|wall|all] [ROUNDS] [JOB_MIN] [INTERVAL]" >&2; exit 2 ;;
esac | tee "$work/runs"
