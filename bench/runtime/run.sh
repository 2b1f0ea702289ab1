#!/bin/sh
# Lifecycle benchmark: skiff-runtime vs crun vs runc, interleaved (see bench.py).
# Usage (root): bench/runtime/run.sh            RUNS=50 by default
# Builds the release skiff-runtime, then runs the driver in a private mount namespace with
# /sys/fs/cgroup/unified unmounted: crun 1.8 refuses this host's hybrid cgroup layout
# otherwise. All three runtimes run in that same namespace.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
cargo build --release -p skiff-runtime >&2
export SKIFF_RUNTIME="${CARGO_TARGET_DIR:-$repo/target}/release/skiff-runtime"
export RUNS="${RUNS:-50}"
exec unshare -m --propagation private sh -c '
  if grep -q " /sys/fs/cgroup/unified " /proc/self/mountinfo; then umount /sys/fs/cgroup/unified; fi
  exec python3 "$0"' "$here/bench.py"
