#!/usr/bin/env bash
# API server benchmark (issue 11): `skiff server --disable-agent` vs raw etcd puts (Debian's
# etcd-server 3.4) in the same run, and upstream kube-apiserver as a third column when
# ../shared/upstream/start.sh runs it (else its README's figures, labelled upstream_ref).
# The bench starts and stops (by PID) its own skiff server and etcd, on free loopback ports with
# data in temp dirs under $BENCH_DIR (default /var/tmp: a real disk, not tmpfs).
# Env: SK_BENCH_IDLE_SECS (idle window for the disk-write figure, default 60; 10 for a quick run).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin skiff
cargo build --release -p skiff-bench --bin apiserver-bench
target="${CARGO_TARGET_DIR:-target}"
SKIFF_BIN="$target/release/skiff" exec "$target/release/apiserver-bench"
