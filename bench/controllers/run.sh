#!/usr/bin/env bash
# Controllers benchmark (issue 13): a Deployment of 100 busybox `sleep` replicas from
# `kubectl apply` to all 100 Ready on a whole single-node `skiff server` (release build; the
# harness's start_cluster: real kubelet, CRI server, CNI), timed from the client; also the time to
# 100 pods created and to 100 bound, and the server's RSS (API server + controllers + scheduler +
# kubelet + CRI server: one process) before and after. The peer is upstream v1.20.2 from
# ../shared/upstream/README.md (50 busybox pods applied at once -> Ready 35-44 s there,
# kube-controller-manager RSS ~97 MiB idle): reference figures, not this run.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --workspace --bins
# The client side (kubectl driver) needs no optimizing: a debug test binary drives the release
# server (SK_PROFILE picks the harness's binaries).
SK_PROFILE=release exec cargo test -p skiff-tests --test bench_controllers -- --ignored --nocapture --test-threads=1
