#!/usr/bin/env bash
# Store benchmark: skiff's log store vs the redb store vs etcd (Debian's etcd-server, started on
# 127.0.0.1 in a temp dir when /usr/bin/etcd exists). Temp dirs under $BENCH_DIR (default
# /var/tmp: a real disk, not tmpfs, or the fsync and write_bytes figures mean nothing).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p skiff-bench --bin store-bench
exec "${CARGO_TARGET_DIR:-target}/release/store-bench"
