#!/usr/bin/env bash
# Records every function the pod monitor's steady loop runs (three busybox containers under
# runc, each printing a line every 100 ms: poll, pipe reads, CRI log records, log writes, the
# periodic trims) into shims/monitor/hot-symbols.txt, which shims/monitor/build.rs hands to lld
# as a symbol ordering file (see build-support/symbol_order.rs). Start-up and container creation
# are left out on purpose: they run once and are trimmed away; only the loop stays resident.
#
# Run as root after changing the monitor or the toolchain, then rebuild. The names carry hashes:
# the build here is the one bench/cri/run.sh ships (static, release), with symbols kept.
# Needs: valgrind, runc, /bin/busybox.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
TRIPLE=x86_64-unknown-linux-gnu
TARGET="${CARGO_TARGET_DIR:-target}"
CARGO_PROFILE_RELEASE_STRIP=false RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -p skiff-monitor --target "$TRIPLE"
work=$(mktemp -d /tmp/sk-monhot.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp "$TARGET/$TRIPLE/release/skiff-monitor" "$work/"
python3 bench/cri/monitor-mem.py "$work/skiff-monitor" 3 --wait 6 --callgrind "$work/seen.txt"
# glibc picks string functions by CPU (ifunc): valgrind's CPU gets the AVX2 ones, real hosts
# may get EVEX/AVX-512. Add those variants of every string function that ran.
nm "$work/skiff-monitor" | awk '{ print $NF }' | sort -u > "$work/all.txt"
bases=$( (grep -o -E '^__(mem|str|wmem|wcs|stp|raw)[a-z0-9]*_' "$work/seen.txt" || true) | sort -u | sed 's/_$//')
for b in $bases; do
  grep -E "^${b}_(evex|avx)" "$work/all.txt" || true
  [[ $b == __memcpy || $b == __mempcpy ]] && grep -E '^__memmove_(evex|avx)' "$work/all.txt" || true
done > "$work/variants.txt"
sort -u "$work/seen.txt" "$work/variants.txt" > shims/monitor/hot-symbols.txt
echo "$(wc -l < shims/monitor/hot-symbols.txt) hot symbols in shims/monitor/hot-symbols.txt" >&2
