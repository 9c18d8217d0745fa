#!/usr/bin/env bash
# Network on request, vanilla flavour: passt against QEMU's slirp, and the start time it
# adds, interleaved in one run. Needs root: it makes two network namespaces joined by a veth
# pair (a "node" 10.232.0.2 and a "test host" 10.232.0.1 serving files over HTTP; nothing
# else is addressed) and runs the launcher inside the node's, as the starter runs it.
# Per round, one routed test-guest job each:
#   off     a job that does not ask (no NIC)             launcher seconds
#   on      the same job asking for a network (passt)    launcher seconds
#   passt   asks; fetches a 1-byte file 10 times, then a SIZE_MIB file; tries the node's loopback
#   slirp   the same with `-netdev user` put in place of passt's netdev by a QEMU wrapper
#   p1500   passt offering MTU 1500 (a wrapper adds --mtu) instead of its 65520
#   host    curl in the node's namespace: the same fetches (time_total), no VM
# fetch = seconds per small fetch (whole wget/curl run; the guest's clock is /proc/uptime,
# 10 ms steps, so 10 fetches are timed together), MiB/s = the big file's throughput,
# loopback = whether the guest reached a server on the node's 127.0.0.1 (through 10.0.2.2 for
# slirp, the gateway's address for passt).
#
# Usage: sudo scripts/bench/network.sh [ROUNDS] [SIZE_MIB]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
rounds=${1:-3}
size=${2:-32}
[ "$(id -u)" = 0 ] || { echo "network.sh: needs root (network namespaces)" >&2; exit 1; }
command -v passt >/dev/null || { echo "network.sh: needs passt (scripts/install-deps.sh)" >&2; exit 1; }
cargo build -q --release -p vm-capsule -p capsule-guest
bin=$PWD/target/x86_64-unknown-linux-gnu/release
guest=$(dirname "$(bash scripts/build-test-guest.sh | awk '{print $1}')")
real_qemu=$(command -v qemu-system-x86_64)
node=vmcap-bench-node-$$ host=vmcap-bench-host-$$
H=10.232.0.1 N=10.232.0.2 port=8941 lport=8942
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del "$node" 2>/dev/null || true
    ip netns del "$host" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$node"; ip netns add "$host"
ip link add "vbn$$" netns "$node" type veth peer name "vbh$$" netns "$host"
ip -n "$node" link set lo up; ip -n "$host" link set lo up
ip -n "$node" addr add "$N/24" dev "vbn$$"; ip -n "$host" addr add "$H/24" dev "vbh$$"
ip -n "$node" link set "vbn$$" up; ip -n "$host" link set "vbh$$" up
ip -n "$node" route add default via "$H"
mkdir -p "$work/www" "$work/secret"
printf x > "$work/www/small"
head -c "$((size << 20))" /dev/urandom > "$work/www/big"
echo NODE-LOOPBACK > "$work/secret/index.html"
ip netns exec "$host" python3 -m http.server --bind "$H" --directory "$work/www" "$port" >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$node" python3 -m http.server --bind 127.0.0.1 --directory "$work/secret" "$lport" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    ip netns exec "$node" curl -fso /dev/null "http://$H:$port/small" &&
        ip netns exec "$node" curl -fso /dev/null "http://127.0.0.1:$lport/" && break
    sleep 0.1
done

t=$work/template/condor_vm_capsule
mkdir -p "$t" "$work/job" "$work/bin"
cp "$guest/vmlinuz" "$t/vmlinuz"
cp "$guest/initrd.gz" "$t/initrd.img"
echo "console=ttyS0 quiet panic=-1" > "$t/cmdline"
"$bin/vm-capsule" disk create "$t/data.qcow2" --size 64M --format qcow2 >/dev/null
printf '#!/bin/sh\necho hello\n' > "$work/job/idle.sh"
cat > "$work/job/fetch.sh" <<EOF
#!/bin/sh
u() { cut -d' ' -f1 /proc/uptime; }
a=\$(u); i=0 bad=0
while [ \$i -lt 10 ]; do wget -q -O /dev/null http://$H:$port/small || bad=\$((bad + 1)); i=\$((i + 1)); done
b=\$(u); wget -q -O got http://$H:$port/big || bad=\$((bad + 1)); c=\$(u)
[ \$(wc -c < got) -eq $((size << 20)) ] || bad=\$((bad + 1)); rm -f got
gw=\$(route -n | awk '\$1 == "0.0.0.0" { print \$2 }')
# busybox's wget -T crashes: timeout bounds it instead.
if timeout 10 wget -q -O - http://10.0.2.2:$lport/ 2>/dev/null | grep -q NODE-LOOPBACK ||
   timeout 10 wget -q -O - "http://\$gw:$lport/" 2>/dev/null | grep -q NODE-LOOPBACK; then l=REACHED; else l=no; fi
echo "times \$a \$b \$c \$l \$bad"
EOF
chmod +x "$work/job/"*.sh
# QEMU through a wrapper: with SLIRP set, slirp replaces passt's netdev (passt then quits
# with QEMU, its peer).
cat > "$work/bin/qemu-system-x86_64" <<EOF
#!/bin/bash
args=()
for a in "\$@"; do
    case \$a in stream,id=vmcapsule-net,*) [ -n "\${SLIRP:-}" ] && a="user,id=vmcapsule-net" ;; esac
    args+=("\$a")
done
exec $real_qemu "\${args[@]}"
EOF
chmod +x "$work/bin/qemu-system-x86_64"

# passt through a wrapper: with PASST_MTU set, it offers that MTU by DHCP (its default is 65520).
real_passt=$(command -v passt)
printf '#!/bin/sh\nexec %s ${PASST_MTU:+--mtu $PASST_MTU} "$@"\n' "$real_passt" > "$work/bin/passt"
chmod +x "$work/bin/passt"

# run NAME SCRIPT ASK [SLIRP [MTU]]: one routed job through the launcher in the node's namespace.
run() {
    local name=$1 script=$2 ask=$3 slirp=${4:-} mtu=${5:-} scratch=$work/scratch sb=$work/sandbox routed
    rm -rf "$scratch" "$sb"; mkdir -p "$scratch" "$sb"; chmod 1777 "$scratch"
    local ad="ClusterId = 1
ProcId = 0
Owner = \"root\"
Iwd = \"$work/job\"
Cmd = \"$work/job/$script\"
JobUniverse = 5
RequestDisk = 20
TransferExecutable = true
ShouldTransferFiles = \"YES\"
WhenToTransferOutput = \"ON_EXIT\"
Out = \"out.txt\"
VMCapsuleNetwork = $ask"
    routed=$(printf '[ Name = "bench"; TargetUniverse = 5 ]\n------\n%s\n' "$ad" |
        env -i PATH=/usr/bin:/bin CONDOR_CONFIG=/dev/null \
            _CONDOR_VM_CAPSULE_TEMPLATE="$work/template" \
            _CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX="$scratch" \
            _CONDOR_VM_CAPSULE_TRANSLATE_LOG="$work/translate.log" \
            _CONDOR_VM_CAPSULE_TEST_ANY_USER=true "$bin/vm-capsule" translate)
    local cmd args transfer
    cmd=$(routed_string Cmd)
    args=$(routed_string Arguments)
    transfer=$(routed_string TransferInput)
    # shellcheck disable=SC2086 # the list's names, split as HTCondor splits them
    stage_inputs "$sb" "$work/job" $cmd ${transfer//,/ }
    local start end
    start=$(date +%s.%N)
    # shellcheck disable=SC2086 # the routed job's arguments, split as the starter splits them
    (cd "$sb" && ip netns exec "$node" env -i PATH="$work/bin:/usr/bin:/bin" SLIRP="$slirp" PASST_MTU="$mtu" \
        _CONDOR_VM_CAPSULE_NETWORK=nat "./$(basename "$cmd")" $args \
        > _condor_stdout 2> _condor_stderr) || echo "bench: $name failed: $(cat "$sb/_condor_stderr")" >&2
    end=$(date +%s.%N)
    local line
    line=$(grep '^times' "$sb/_condor_stdout" || true)
    [ -n "$line" ] || [ "$script" = idle.sh ] || { echo "bench: $name: no result; the job said:"; cat "$sb/_condor_stdout" "$sb/_condor_stderr"; } >&2
    awk -v n="$name" -v s="$start" -v e="$end" -v l="$line" -v size="$size" 'BEGIN {
        split(l, t, " ")
        if (l == "") { printf "%-6s launcher %6.2f s\n", n, e - s; exit }
        printf "%-6s launcher %6.2f s  fetch %7.4f s  MiB/s %8.1f  loopback %s  failed %d\n", n, e - s,
            (t[3] - t[2]) / 10, (t[4] > t[3]) ? size / (t[4] - t[3]) : 0, t[5], t[6] }'
}

host_run() {
    local a b c r
    a=$(date +%s.%N)
    for _ in $(seq 10); do ip netns exec "$node" curl -fso /dev/null "http://$H:$port/small"; done
    b=$(date +%s.%N)
    r=$(ip netns exec "$node" curl -fso /dev/null -w '%{time_total}' "http://$H:$port/big")
    c=$(date +%s.%N)
    awk -v a="$a" -v b="$b" -v r="$r" -v size="$size" \
        'BEGIN { printf "host   fetch %7.4f s  MiB/s %8.1f\n", (b - a) / 10, size / r }'
}

for round in $(seq "$rounds"); do
    echo "round $round"
    run off idle.sh false
    run on idle.sh true
    run passt fetch.sh true
    run slirp fetch.sh true 1
    run p1500 fetch.sh true "" 1500
    host_run
done | tee "$work/runs"

echo
for v in off on passt p1500 slirp host; do
    printf 'median %-6s launcher %6s s  fetch %7s s  MiB/s %8s\n' "$v" "$(of "$v" launcher)" "$(of "$v" fetch)" "$(of "$v" MiB/s)"
done
