#!/usr/bin/env bash
# Runs every Skiff test on a fresh Debian 12 machine, as root: installs what the tests need,
# checks formatting and lints, builds once, runs unit tests and the end-to-end suites.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/deps.sh test
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
cargo build --workspace --bins
cargo test --workspace --no-run
echo "== tests"
# Suites that share host resources (cni0, :6443, :5000) serialize on their own locks.
cargo test --workspace -- --test-threads=2
echo "== all tests done in $(( $(date +%s) - start ))s"
