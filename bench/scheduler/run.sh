#!/usr/bin/env bash
# Scheduler benchmark (issue 13): 1,000 pods with a mix of resource requests, zone spread
# constraints, node affinity and pod anti-affinity scheduled onto 100 fake nodes (API objects
# only), by `skiff scheduler` running as its own process against `skiff server
# --disable-agent --disable-scheduler`; prints pods/s and the scheduler's RSS, beside
# upstream kube-scheduler's RSS from ../shared/upstream/README.md (upstream_ref).
# Env: SK_BENCH_PODS (default 1000), SK_BENCH_NODES (default 100).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin skiff
cargo build --release -p skiff-bench --bin scheduler-bench
target="${CARGO_TARGET_DIR:-target}"
SKIFF_BIN="$target/release/skiff" exec "$target/release/scheduler-bench"
