#!/usr/bin/env bash
# Runs every Skiff test on a fresh Debian 12 machine, as root: installs what the tests need,
# checks formatting and lints, builds once, runs unit tests and the end-to-end suites.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
start=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - start ))s)"; }
bash scripts/deps.sh test
# The kubelet's disk-pressure signals depend on the host's free space: show it in the log.
df -h . /tmp || true
export CARGO_TERM_COLOR=never
stamp "cargo fmt --check"
cargo fmt --all -- --check
stamp "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p skiff-cni --features musl-link --all-targets -- -D warnings
cargo clippy -p skiff-runtime --features musl-link --all-targets -- -D warnings
stamp "build"
cargo build --workspace --bins
cargo test --workspace --no-run
stamp "tests"
# Test binaries run one after another; tests inside one binary run two at a time and use their
# own bridges, namespaces, ports and temp dirs (the kubectl end-to-end suite is one test).
cargo test --workspace --no-fail-fast -- --test-threads=2
stamp "CNI plugin suites again, on the shipped skiff-cni build"
SKIFF_TEST_CNI_BIN="$(bash scripts/build-cni.sh)" cargo test -p skiff-cni --no-fail-fast -- --test-threads=2
stamp "all tests done"
