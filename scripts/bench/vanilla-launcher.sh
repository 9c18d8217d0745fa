#!/usr/bin/env bash
# The vanilla flavour on the execute node, before and after a change, interleaved: a routed
# test-guest job (translate run as the router runs it), its sandbox filled the way HTCondor's
# input transfer fills it (Cmd and TransferInput copied), and the launcher run as the starter
# runs it (`vm-capsule run vm-capsule.ad --vanilla --accel auto` in the sandbox, a bare
# environment, stdout and stderr to files). For each run:
#   request   RequestDisk of the routed job (KiB)
#   shipped   bytes HTCondor would transfer to the node (Cmd + TransferInput)
#   launcher  seconds from the launcher's start to its exit (what the starter waits for)
#   qemu      seconds QEMU ran (a wrapper on PATH records its start and end)
#   outside   launcher - qemu: the launcher's own work (data disk, kernel, results)
#   peak      largest sandbox during the run, apparent size (HTCondor's DiskUsage counts
#             apparent sizes) and allocated, KiB, sampled every 0.1 s
#   after     the sandbox after the launcher exited, apparent KiB
#   rss       peak RSS of the launcher and its children (GNU time), KiB
# Variants: `before` (BEFORE_DIR's programs), `after` (this tree's), `node` (this tree's, with
# VM_CAPSULE_NODE_LAUNCHER: the launcher and agent installed on the node, not shipped); then
# the medians of each variant and their ratios to `before`.
#
# Usage: scripts/bench/vanilla-launcher.sh BEFORE_DIR [ROUNDS]
#   BEFORE_DIR holds vm-capsule and capsule-init built (release) from the commit to compare
#   with; this tree is built here. Needs the test guest (scripts/build-test-guest.sh).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
before=$(cd "$1" && pwd)
rounds=${2:-5}
cargo build -q --release -p vm-capsule -p capsule-guest
after=$PWD/target/x86_64-unknown-linux-gnu/release   # .cargo/config.toml names the target
guest=$(dirname "$(bash scripts/build-test-guest.sh | awk '{print $1}')")
real_qemu=$(command -v qemu-system-x86_64)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

t=$work/template/condor_vm_capsule
mkdir -p "$t" "$work/job" "$work/bin"
cp "$guest/vmlinuz" "$t/vmlinuz"
cp "$guest/initrd.gz" "$t/initrd.img"
echo "console=ttyS0 quiet panic=-1" > "$t/cmdline"
"$after/vm-capsule" disk create "$t/data.qcow2" --size 64M --format qcow2 >/dev/null
printf '#!/bin/sh\necho hello; echo made > made.txt\n' > "$work/job/job.sh"
chmod +x "$work/job/job.sh"
# QEMU through a wrapper that notes when the VM runs (not the -version probe).
cat > "$work/bin/qemu-system-x86_64" <<EOF
#!/bin/sh
case " \$* " in *" -version "*) exec $real_qemu "\$@" ;; esac
date +%s.%N >> "\$QEMU_TIMES"
$real_qemu "\$@"
rc=\$?
date +%s.%N >> "\$QEMU_TIMES"
exit \$rc
EOF
chmod +x "$work/bin/qemu-system-x86_64"

ad="ClusterId = 1
ProcId = 0
Owner = \"$(id -un)\"
Iwd = \"$work/job\"
Cmd = \"$work/job/job.sh\"
JobUniverse = 5
RequestDisk = 20
TransferExecutable = true
ShouldTransferFiles = \"YES\"
WhenToTransferOutput = \"ON_EXIT\"
Out = \"out.txt\""

# run VARIANT DIR [node]: one routed job through the launcher of DIR (installed on the node
# with `node`); prints one result line.
run() {
    local name=$1 dir=$2 node=${3:-} scratch=$work/scratch-$1 sb=$work/sandbox-$1 routed f
    rm -rf "$scratch" "$sb"
    mkdir -p "$scratch" "$sb"
    chmod 1777 "$scratch"
    routed=$(printf '[ Name = "bench"; TargetUniverse = 5 ]\n------\n%s\n' "$ad" |
        env -i PATH=/usr/bin:/bin CONDOR_CONFIG=/dev/null \
            _CONDOR_VM_CAPSULE_TEMPLATE="$work/template" \
            _CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX="$scratch" \
            _CONDOR_VM_CAPSULE_INIT_SCRIPT_PATH="$dir/capsule-init" \
            _CONDOR_VM_CAPSULE_LAUNCHER_PATH="$dir/vm-capsule" \
            _CONDOR_VM_CAPSULE_TRANSLATE_LOG="$work/translate.log" \
            _CONDOR_VM_CAPSULE_TEST_ANY_USER=true \
            ${node:+_CONDOR_VM_CAPSULE_NODE_LAUNCHER="$dir/vm-capsule"} \
            "$dir/vm-capsule" translate)
    local request cmd args transfer shipped=0
    request=$(echo "$routed" | sed -n 's/^RequestDisk = //p')
    cmd=$(routed_string Cmd)
    args=$(routed_string Arguments)
    transfer=$(routed_string TransferInput)
    # HTCondor's input transfer: Cmd (unless it is the node's) and TransferInput.
    local exe=./$(basename "$cmd") ship=$cmd
    if grep -qx 'TransferExecutable = false' <<< "$routed"; then
        exe=$cmd ship=
    fi
    for f in $ship ${transfer//,/ }; do
        case $f in /*) ;; *) f=$work/job/$f ;; esac
        cp "$f" "$sb/"
        shipped=$((shipped + $(stat -c %s "$f")))
    done
    : > "$work/qemu-times"
    rm -f "$work/stop"
    # Sample the sandbox while the launcher runs.
    (
        peak_a=0 peak_k=0
        while [ ! -e "$work/stop" ]; do
            a=$(du -sk --apparent-size "$sb" 2>/dev/null | cut -f1) || a=0
            k=$(du -sk "$sb" 2>/dev/null | cut -f1) || k=0
            [ "${a:-0}" -gt "$peak_a" ] && peak_a=$a
            [ "${k:-0}" -gt "$peak_k" ] && peak_k=$k
            sleep 0.1
        done
        echo "$peak_a $peak_k" > "$work/peak"
    ) &
    local sampler=$! start end
    start=$(date +%s.%N)
    # shellcheck disable=SC2086 # the routed job's arguments, split as the starter splits them
    (cd "$sb" && env -i PATH="$work/bin:/usr/bin:/bin" QEMU_TIMES="$work/qemu-times" \
        /usr/bin/time -f %M -o "$work/rss" "$exe" $args \
        > _condor_stdout 2> _condor_stderr) || echo "bench: $name launcher failed: $(cat "$sb/_condor_stderr")" >&2
    end=$(date +%s.%N)
    touch "$work/stop"
    wait "$sampler"
    grep -qx hello "$sb/_condor_stdout" || echo "bench: $name: the job's stdout is missing" >&2
    local q0 q1 after_k
    q0=$(sed -n 1p "$work/qemu-times")
    q1=$(sed -n 2p "$work/qemu-times")
    after_k=$(du -sk --apparent-size "$sb" | cut -f1)
    awk -v n="$name" -v r="$request" -v s="$shipped" -v s0="$start" -v e="$end" -v q0="$q0" \
        -v q1="$q1" -v p="$(cat "$work/peak")" -v a="$after_k" -v m="$(tail -n 1 "$work/rss")" \
        'BEGIN { split(p, pk, " "); printf "%-6s request %7d KiB  shipped %9d B  launcher %6.2f s  qemu %6.2f s  outside %5.2f s  peak %6d/%6d KiB  after %4d KiB  rss %6d KiB\n", n, r, s, e - s0, q1 - q0, (e - s0) - (q1 - q0), pk[1], pk[2], a, m }'
}

for round in $(seq "$rounds"); do
    echo "round $round"
    run before "$before"
    run after "$after"
    run node "$after" node
done | tee "$work/runs"

echo
for field in request shipped launcher qemu outside peak; do
    b=$(of before "$field") a=$(of after "$field") n=$(of node "$field")
    awk -v f="$field" -v b="$b" -v a="$a" -v n="$n" 'BEGIN { printf "median %-8s before %11.2f  after %11.2f (%.2f)  node %11.2f (%.2f)\n", f, b, a, (b > 0) ? a / b : 0, n, (b > 0) ? n / b : 0 }'
done
