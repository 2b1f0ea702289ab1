#!/usr/bin/env bash
# bench/cri/run.sh - Skiff's CRI server against containerd + runc, in one run.
#
# Builds release binaries (skiff, skiff-runtime, skiff-cni; skiff-monitor statically linked into
# target/x86_64-unknown-linux-gnu/release so the host build cache is left alone), then runs the
# ignored test tests/tests/cri_bench.rs, which drives both daemons with the same CRI client and
# prints one line per figure:
#   cri_sandbox_container_start_p50_ms skiff=.. containerd=.. ratio=..
# Targets (issue 6): sandbox+container start p50 <= 0.5x containerd's; daemon idle RSS <= 0.3x;
# per-pod processes < 1 MiB; (issue 16) <= 300 KiB RSS per pod whatever its container count
# (cri_per_pod_{1,3,10}c_rss_kib: three pods of 1, 3 and 10 `sleep` containers at a time).
#
# Usage: sudo bench/cri/run.sh [ITERATIONS] [PODS]        (defaults 30 and 20)
# Env:   SKIP_BUILD=1 to reuse the binaries; DYNAMIC_MONITOR=1 to measure the dynamic monitor;
#        DEBUG_DAEMONS=1 to build only the (static, release) monitor and take skiff,
#        skiff-runtime and skiff-cni from the debug build in $CARGO_TARGET_DIR (or target/):
#        the per-pod memory figures hold, the daemon's time and memory figures do not.
# Needs: root, containerd + containerd-shim-runc-v2 + runc (Debian packages), docker-registry.
set -euo pipefail
ITERS="${1:-30}"
PODS="${2:-20}"
ROOT="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)"
cd "$ROOT"
TRIPLE=x86_64-unknown-linux-gnu
TARGET="${CARGO_TARGET_DIR:-target}"
KIND=release
[[ -n "${DEBUG_DAEMONS:-}" ]] && KIND=debug
DAEMONS="$TARGET/$KIND"
if [[ -z "${SKIP_BUILD:-}" && -n "${DEBUG_DAEMONS:-}" ]]; then
  cargo build -p skiff -p skiff-runtime -p skiff-cni
  # Not stripped by cargo (the profile's strip changes symbol hashes; shims/monitor/hot-symbols.txt
  # is recorded from this very build), stripped below.
  CARGO_PROFILE_RELEASE_STRIP=false RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p skiff-monitor --target "$TRIPLE"
elif [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p skiff -p skiff-runtime -p skiff-cni -p skiff-monitor
  # With an explicit --target, RUSTFLAGS reach only that target's crates (not build scripts),
  # and the output lands in target/$TRIPLE: a separate cache.
  # Not stripped by cargo (the profile's strip changes symbol hashes; shims/monitor/hot-symbols.txt
  # is recorded from this very build), stripped below.
  CARGO_PROFILE_RELEASE_STRIP=false RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p skiff-monitor --target "$TRIPLE"
fi
BIN="$(mktemp -d /tmp/sk-bench-bin.XXXXXX)"
CNI="$BIN/cni"
mkdir -p "$CNI"
cp "$DAEMONS/skiff" "$DAEMONS/skiff-runtime" "$BIN/"
if [[ -n "${DYNAMIC_MONITOR:-}" ]]; then
  cp "$TARGET/release/skiff-monitor" "$BIN/"
else
  cp "$TARGET/$TRIPLE/release/skiff-monitor" "$BIN/"
  strip "$BIN/skiff-monitor"
fi
for p in bridge host-local loopback portmap; do ln -s "$(readlink -f "$DAEMONS/skiff-cni")" "$CNI/$p"; done
echo "# daemons: $KIND builds, monitor: release, in $BIN; the CRI client (the test) is a debug build, the same for both"
SKIFF_BENCH_BIN_DIR="$BIN" SKIFF_TEST_CNI_BIN_DIR="$CNI" SKIFF_BENCH_ITERS="$ITERS" SKIFF_BENCH_PODS="$PODS" \
  cargo test -p skiff-tests --test cri_bench -- --ignored --nocapture --test-threads=1 2>&1 \
  | grep -E '^(cri_|#)'
rm -rf "$BIN"
