#!/usr/bin/env bash
# Read-only host paths (VM_CAPSULE_HOST_PATHS) in the vanilla flavour, 9p against virtiofs,
# interleaved in one run. A share directory holds a 100 MiB file and a directory of 10,000
# small files; a routed test-guest job (translate run as the router runs it) reads the file
# (`cat > /dev/null`) and lists the directory (`ls -l`) in the guest, timed from the guest's
# /proc/uptime (10 ms steps), and the same is done with `cat` and `ls -l` on the host, in
# between, for the ratio (the host's page cache is warm for both: QEMU reads through it).
# The launcher runs as the starter runs it (`vm-capsule run vm-capsule.ad --vanilla` in the
# sandbox, a bare environment); its wall time for a job that only runs `true` gives the
# added start time: no host path, one over 9p, one over virtiofs.
#
# 9p is what the launcher does. virtiofs is measured through a QEMU wrapper that swaps each
# 9p device for a vhost-user-fs device served by Debian's C virtiofsd (QEMU 7.2's
# /usr/lib/qemu/virtiofsd), with the guest memory on a shared memfd as vhost-user needs; that
# virtiofsd runs only as root (it sandboxes itself with namespaces), so this script must run
# as root, and it has no read-only mode (the guest's ro mount is the only guard).
#
# Usage: sudo scripts/bench/host-paths.sh [ROUNDS]   (default 3; needs the test guest)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
rounds=${1:-3}
[ "$(id -u)" = 0 ] || { echo "host-paths.sh: run as root (Debian's virtiofsd needs it)" >&2; exit 1; }
cargo build -q --release -p vm-capsule -p capsule-guest
bin=$PWD/target/x86_64-unknown-linux-gnu/release   # .cargo/config.toml names the target
guest=$(dirname "$(bash scripts/build-test-guest.sh | awk '{print $1}')")
real_qemu=$(command -v qemu-system-x86_64)
virtiofsd=/usr/lib/qemu/virtiofsd
work=$(mktemp -d)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

t=$work/template/condor_vm_capsule
mkdir -p "$t" "$work/job" "$work/bin-9p" "$work/bin-virtiofs"
cp "$guest/vmlinuz" "$t/vmlinuz"
cp "$guest/initrd.gz" "$t/initrd.img"
echo "console=ttyS0 quiet panic=-1" > "$t/cmdline"
"$bin/vm-capsule" disk create "$t/data.qcow2" --size 64M --format qcow2 >/dev/null

share=$work/share
mkdir -p "$share/many"
head -c $((100 << 20)) /dev/urandom > "$share/big"
(cd "$share/many" && seq -w 1 10000 | xargs touch)
chmod -R a+rX "$share"

cat > "$work/job/bench.sh" <<EOF
#!/bin/sh
up() { read -r u _ < /proc/uptime; echo "\$u"; }
s=\$(up); cat $share/big > /dev/null; e=\$(up); echo "read \$s \$e"
s=\$(up); n=\$(ls -l $share/many | wc -l); e=\$(up); echo "list \$s \$e \$n"
EOF
printf '#!/bin/sh\ntrue\n' > "$work/job/true.sh"
chmod +x "$work/job/"*.sh

# QEMU as the launcher runs it, noting when the VM runs (not the -version probe).
cat > "$work/bin-9p/qemu-system-x86_64" <<EOF
#!/bin/sh
case " \$* " in *" -version "*) exec $real_qemu "\$@" ;; esac
exec $real_qemu "\$@"
EOF
# The same VM with each 9p share served by virtiofsd instead.
cat > "$work/bin-virtiofs/qemu-system-x86_64" <<EOF
#!/bin/bash
case " \$* " in *" -version "*) exec $real_qemu "\$@" ;; esac
args=() pids=() mem=256
while [ \$# -gt 0 ]; do
    case \$1 in
    -m) mem=\$2; args+=("\$1" "\$2"); shift 2 ;;
    -fsdev)
        id=\$(sed 's/.*id=\([^,]*\).*/\1/' <<< "\$2"); src=\$(sed 's/.*path=\([^,]*\).*/\1/' <<< "\$2")
        sock=$work/\$id.sock; rm -f "\$sock"
        $virtiofsd --socket-path="\$sock" -o source="\$src" -o cache=auto 2> $work/virtiofsd.log &
        pids+=(\$!)
        for _ in \$(seq 100); do [ -S "\$sock" ] && break; sleep 0.05; done
        args+=(-chardev "socket,id=c\$id,path=\$sock"); shift 2 ;;
    -device)
        case \$2 in
        virtio-9p-pci,*) id=\$(sed 's/.*fsdev=\([^,]*\).*/\1/' <<< "\$2")
            args+=(-device "vhost-user-fs-pci,chardev=c\$id,tag=\$id") ;;
        *) args+=("\$1" "\$2") ;;
        esac
        shift 2 ;;
    -fw_cfg) args+=("\$1" "\${2//host-path 9p /host-path virtiofs }"); shift 2 ;;
    *) args+=("\$1"); shift ;;
    esac
done
args+=(-object "memory-backend-memfd,id=mem,size=\${mem}M,share=on" -numa node,memdev=mem)
$real_qemu "\${args[@]}"
rc=\$?
kill "\${pids[@]}" 2> /dev/null
exit \$rc
EOF
chmod +x "$work/bin-9p/qemu-system-x86_64" "$work/bin-virtiofs/qemu-system-x86_64"

# launch NAME SCRIPT TRANSPORT: translate a job running SCRIPT, run its launcher with the
# share (TRANSPORT 9p or virtiofs) or without (none); prints "<name> launcher <s>" and the
# job's stdout.
launch() {
    local name=$1 script=$2 transport=$3 scratch=$work/scratch sb=$work/sandbox routed
    rm -rf "$scratch" "$sb"
    mkdir -p "$scratch" "$sb"
    chmod 1777 "$scratch"
    local ad="ClusterId = 1
ProcId = 0
Owner = \"$(id -un)\"
Iwd = \"$work/job\"
Cmd = \"$work/job/$script\"
JobUniverse = 5
RequestDisk = 20
TransferExecutable = true
ShouldTransferFiles = \"YES\"
WhenToTransferOutput = \"ON_EXIT\"
Out = \"out.txt\""
    routed=$(printf '[ Name = "bench"; TargetUniverse = 5 ]\n------\n%s\n' "$ad" |
        env -i PATH=/usr/bin:/bin CONDOR_CONFIG=/dev/null \
            _CONDOR_VM_CAPSULE_TEMPLATE="$work/template" \
            _CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX="$scratch" \
            _CONDOR_VM_CAPSULE_INIT_SCRIPT_PATH="$bin/capsule-init" \
            _CONDOR_VM_CAPSULE_LAUNCHER_PATH="$bin/vm-capsule" \
            _CONDOR_VM_CAPSULE_TRANSLATE_LOG="$work/translate.log" \
            _CONDOR_VM_CAPSULE_TEST_ANY_USER=true \
            "$bin/vm-capsule" translate)
    local cmd args transfer
    cmd=$(routed_string Cmd)
    args=$(routed_string Arguments)
    transfer=$(routed_string TransferInput)
    # shellcheck disable=SC2086 # the list's names, split as HTCondor splits them
    stage_inputs "$sb" "$work/job" $cmd ${transfer//,/ }
    local path=$work/bin-9p knob=$share start end
    case $transport in
    none) knob= ;;
    virtiofs) path=$work/bin-virtiofs ;;
    esac
    start=$(date +%s.%N)
    # shellcheck disable=SC2086 # the routed job's arguments, split as the starter splits them
    (cd "$sb" && env -i PATH="$path:/usr/bin:/bin" CONDOR_CONFIG=/dev/null \
        ${knob:+_CONDOR_VM_CAPSULE_HOST_PATHS="$knob"} \
        "./$(basename "$cmd")" $args > _condor_stdout 2> _condor_stderr) ||
        echo "bench: $name launcher failed: $(cat "$sb/_condor_stderr")" >&2
    end=$(date +%s.%N)
    awk -v n="$name" -v s="$start" -v e="$end" 'BEGIN { printf "%s launcher %.2f\n", n, e - s }'
    sed "s/^/$name /" "$sb/_condor_stdout"
}

# host: the same read and listing on the host.
host() {
    local s e
    s=$(date +%s.%N); cat "$share/big" > /dev/null; e=$(date +%s.%N)
    awk -v s="$s" -v e="$e" 'BEGIN { printf "host read %.3f\n", e - s }'
    s=$(date +%s.%N); ls -l "$share/many" | wc -l > /dev/null; e=$(date +%s.%N)
    awk -v s="$s" -v e="$e" 'BEGIN { printf "host list %.3f\n", e - s }'
}

cat "$share/big" > /dev/null   # warm the host's cache once
for round in $(seq "$rounds"); do
    echo "round $round"
    launch start-none true.sh none
    launch start-9p true.sh 9p
    launch start-virtiofs true.sh virtiofs
    host
    launch io-9p bench.sh 9p
    host
    launch io-virtiofs bench.sh virtiofs
done | tee "$work/runs"

echo
guest_secs() { awk -v n="$1" -v w="$2" '$1 == n && $2 == w { printf "%.2f\n", $4 - $3 }' "$work/runs" | median; }
host_secs() { awk -v w="$1" '$1 == "host" && $2 == w { print $3 }' "$work/runs" | median; }
start_secs() { awk -v n="$1" '$1 == n && $2 == "launcher" { print $3 }' "$work/runs" | median; }
for what in read list; do
    h=$(host_secs "$what") p=$(guest_secs io-9p "$what") v=$(guest_secs io-virtiofs "$what")
    awk -v w="$what" -v h="$h" -v p="$p" -v v="$v" 'BEGIN { printf "median %-4s host %.3f s  9p %.2f s (x%.0f)  virtiofs %.2f s (x%.0f)\n", w, h, p, p / h, v, v / h }'
done
n=$(start_secs start-none) p=$(start_secs start-9p) v=$(start_secs start-virtiofs)
awk -v n="$n" -v p="$p" -v v="$v" 'BEGIN { printf "median job start (launcher, true.sh): none %.2f s  9p %.2f s (+%.2f)  virtiofs %.2f s (+%.2f)\n", n, p, p - n, v, v - n }'
