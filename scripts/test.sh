#!/usr/bin/env bash
# The whole test suite: formatting, lints, the release artifacts (static programs, .deb,
# .rpm), unit + integration + differential tests (the vm-capsule suite runs the packaged
# programs and hook links), and a short fuzz run of every fuzz target. This is the README's
# "Test" command.
#
# VM_CAPSULE_DPKG_INSTALL=1 (CI, a throw-away machine) installs the .deb with `dpkg -i` and
# tests the installed files; otherwise the .deb is unpacked under target/dist/installed, so a
# shared machine's /usr is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONDOR_CONFIG=${CONDOR_CONFIG:-/dev/null}

# Elapsed time per phase, so the CI budget (about 40 minutes) stays visible.
phase() { echo "==> [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

phase "cargo fmt --check"
cargo fmt --all --check

phase "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

phase "release artifacts: scripts/dist.sh (static programs checked with ldd, .deb, .rpm)"
bash scripts/dist.sh

if [ "${VM_CAPSULE_DPKG_INSTALL:-}" = 1 ]; then
    phase "dpkg -i the .deb"
    dpkg -i target/dist/*.deb
    installed=/
else
    phase "unpack the .deb in target/dist/installed"
    rm -rf target/dist/installed
    dpkg-deb -x target/dist/*.deb target/dist/installed
    installed=$PWD/target/dist/installed
fi

# The LIBVIRT_XML_SCRIPT tests boot through libvirt's embedded QEMU driver: no daemon needed.

phase "cargo test (vm-capsule's suite against the packaged files in $installed)"
VM_CAPSULE_INSTALLED=$installed cargo test --workspace

phase "fuzz smoke runs"
bash scripts/fuzz-smoke.sh "${FUZZ_SECONDS:-10}"
phase "done"
