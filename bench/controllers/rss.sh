#!/usr/bin/env bash
# Controllers + scheduler memory benchmark (issue 13: "controllers + scheduler RSS < 20 MiB
# with 1,000 pods"): `skiff server --disable-agent --disable-scheduler
# --disable-controller-manager`, `skiff scheduler` and `skiff controller-manager` each as its own
# process; 100 fake Ready nodes; 10 Deployments x 100 replicas (plain, zone spread, zone
# affinity + host anti-affinity); prints pods/s, VmRSS/VmHWM of both processes and their sum,
# beside upstream kube-controller-manager + kube-scheduler from ../shared/upstream/README.md
# (upstream_ref). Env: SK_BENCH_DEPLOYMENTS (10), SK_BENCH_REPLICAS (100), SK_BENCH_NODES (100).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin skiff
cargo build --release -p skiff-bench --bin controllers-bench
target="${CARGO_TARGET_DIR:-target}"
SKIFF_BIN="$target/release/skiff" exec "$target/release/controllers-bench"
