#!/usr/bin/env bash
# bench/kubelet/run.sh - `skiff kubelet` as a process of its own beside a
# `skiff server --disable-agent`, on `skiff cri` and on Debian's containerd 1.6 + runc in the same
# run (tests/tests/kubelet_bench.rs): pod bound -> Running p50 (spec.nodeName set at create, to
# the watch event), 50 pods at once -> all Running, their deletion (grace 1 s), the kubelet's RSS
# and CPU idle and with 50 pods; one line per figure with the ratio, then issue 14's targets.
# Usage: sudo bench/kubelet/run.sh     Env: SK_BENCH_ROUNDS (9), SK_BENCH_PODS (50),
#        SK_BENCH_IDLE_SECS (20), SK_PROFILE (release; `debug` reuses the debug binaries).
# Needs: root, docker-registry, busybox-static, kubectl, containerd (Debian).
set -euo pipefail
ROOT="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)"
cd "$ROOT"
export SK_PROFILE="${SK_PROFILE:-release}"
if [ "$SK_PROFILE" = release ]; then
    cargo build --release --bin skiff
    cargo build --release -p skiff-monitor -p skiff-runtime -p skiff-cni
else
    cargo build --bin skiff
    cargo build -p skiff-monitor -p skiff-runtime -p skiff-cni
fi
cargo test -p skiff-tests --test kubelet_bench -- --ignored --nocapture 2>&1 |
    grep -E '^(kubelet_|# )'
