#!/usr/bin/env bash
# bench/kubelet/run.sh - the kubelet through a whole `skiff server` (tests/tests/kubelet_bench.rs):
# one pod create->Ready p50, 50 pods applied at once -> all Ready, their deletion (grace 1 s),
# server RSS and CPU idle and with 50 pods. Prints one line per figure.
# Usage: sudo bench/kubelet/run.sh        Env: SK_BENCH_ROUNDS (7), SK_BENCH_PODS (50),
#        SK_BENCH_IDLE_SECS (20). Debug binaries (the harness runs target/debug).
# Needs: root, docker-registry, busybox-static, kubectl.
# The containerd side (issue 14's "same with containerd") is not measured yet.
set -euo pipefail
ROOT="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)"
cd "$ROOT"
cargo build --workspace --bins
cargo test -p skiff-tests --test kubelet_bench -- --ignored --nocapture 2>&1 | grep -E '^(kubelet|server)_'
