#!/usr/bin/env bash
# Builds the binaries Skiff ships into target/dist/ (what scripts/server.sh runs):
#   skiff          release build (dynamic, non-PIE: build.rs): API server, scheduler, kubelet, CRI
#   skiff-runtime  static (musl), non-PIE, size-optimised (profile release-small) with its hot
#                  code packed first (shims/runtime/hot-symbols.txt): the short-lived runtime's
#                  start time and peak RSS are what count (scripts/build-runtime.sh, bench/runtime)
#   skiff-monitor  static, non-PIE (one per container: no ld.so/libc mappings)
#   skiff-cni      static (musl), non-PIE, release-small with its hot code packed first:
#                  a plugin lives for ~2 ms per call (scripts/build-cni.sh, bench/cni)
# The static builds use an explicit --target, so their RUSTFLAGS leave the host cache alone.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
TRIPLE="$(rustc -vV | awk '/^host:/ { print $2 }')"
STATIC_FLAGS="-C target-feature=+crt-static -C relocation-model=static"
echo "building skiff (release)..."
cargo build --release -p skiff
echo "building skiff-monitor (static)..."
# Stripped below, not by cargo: the profile's strip changes symbol hashes, and the monitor's
# steady loop is packed first by name (shims/monitor/hot-symbols.txt, bench/cri/monitor-hot-symbols.sh).
CARGO_PROFILE_RELEASE_STRIP=false RUSTFLAGS="$STATIC_FLAGS" \
  cargo build --release -p skiff-monitor --target "$TRIPLE"
echo "building skiff-cni (static, release-small)..."
CNI_BIN="$(bash scripts/build-cni.sh)"
echo "building skiff-runtime (static (musl), release-small)..."
RUNTIME_BIN="$(bash scripts/build-runtime.sh)"
mkdir -p target/dist
cp target/release/skiff "target/$TRIPLE/release/skiff-monitor" "$CNI_BIN" \
  "$RUNTIME_BIN" target/dist/
strip target/dist/skiff-runtime target/dist/skiff-cni target/dist/skiff-monitor
echo "binaries in target/dist:"
ls -l target/dist
