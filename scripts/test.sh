#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration + differential tests, and a
# short fuzz run of every fuzz target. This is the README's "Test" command.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONDOR_CONFIG=${CONDOR_CONFIG:-/dev/null}

# Elapsed time per phase, so the CI budget (about 20 minutes) stays visible.
phase() { echo "==> [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

phase "cargo fmt --check"
cargo fmt --all --check

phase "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

phase "cargo test"
cargo test --workspace

phase "fuzz smoke runs"
bash scripts/fuzz-smoke.sh "${FUZZ_SECONDS:-10}"
phase "done"
