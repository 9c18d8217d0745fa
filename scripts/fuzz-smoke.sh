#!/usr/bin/env bash
# Run every cargo-fuzz target of every crate for a few seconds (default 10).
# Longer runs: `scripts/fuzz-smoke.sh 600`.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shopt -s nullglob
# One target dir for all fuzz crates so shared dependencies build once.
export CARGO_TARGET_DIR="$PWD/target/fuzz"
ran=0
for dir in crates/*/fuzz; do
    crate=$(basename "$(dirname "$dir")")
    for target in $(cd "$dir/.." && cargo +nightly fuzz list); do
        echo "--> fuzz $crate/$target for ${secs}s"
        (cd "$dir/.." && cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=1024 2>&1 | tail -n 3)
        ran=$((ran + 1))
    done
done
echo "fuzz: $ran targets ran without a crash"
