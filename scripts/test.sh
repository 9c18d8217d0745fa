#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration + differential tests, and a
# short fuzz run of every fuzz target. This is the README's "Test" command.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONDOR_CONFIG=${CONDOR_CONFIG:-/dev/null}

echo "==> cargo fmt --check"
cargo fmt --all --check

echo "==> cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> cargo test"
cargo test --workspace

echo "==> fuzz smoke runs"
bash scripts/fuzz-smoke.sh "${FUZZ_SECONDS:-10}"
