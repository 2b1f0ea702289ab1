#!/bin/sh
# Lifecycle benchmark: skiff-runtime vs crun vs runc, interleaved (see bench.py).
# Usage (root): bench/runtime/run.sh            RUNS=50 by default
# Builds skiff-runtime as scripts/dist.sh ships it, then runs the driver in a private mount namespace with
# /sys/fs/cgroup/unified unmounted: crun 1.8 refuses this host's hybrid cgroup layout
# otherwise. All three runtimes run in that same namespace.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
# The shipped build (scripts/dist.sh): static, non-PIE, profile release-small, hot code first.
triple=$(rustc -vV | awk '/^host:/ { print $2 }')
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="/usr/lib/$(gcc -print-multiarch)" \
  RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static -C force-unwind-tables=no" \
  cargo build --profile release-small -p skiff-runtime --target "$triple" >&2
bin_dir="${CARGO_TARGET_DIR:-$repo/target}/bench-runtime"
mkdir -p "$bin_dir"
cp "${CARGO_TARGET_DIR:-$repo/target}/$triple/release-small/skiff-runtime" "$bin_dir/"
strip "$bin_dir/skiff-runtime"
export SKIFF_RUNTIME="$bin_dir/skiff-runtime"
export RUNS="${RUNS:-50}"
exec unshare -m --propagation private sh -c '
  if grep -q " /sys/fs/cgroup/unified " /proc/self/mountinfo; then umount /sys/fs/cgroup/unified; fi
  exec python3 "$0"' "$here/bench.py"
