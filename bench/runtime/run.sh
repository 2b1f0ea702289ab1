#!/bin/sh
# Lifecycle benchmark: skiff-runtime vs crun vs runc, interleaved (see bench.py).
# Usage (root): bench/runtime/run.sh            RUNS=50 by default; SK_BENCH_ONLY=run: only `run`
# Builds skiff-runtime as scripts/dist.sh ships it, then runs the driver in a private mount namespace with
# /sys/fs/cgroup/unified unmounted: crun 1.8 refuses this host's hybrid cgroup layout
# otherwise. All three runtimes run in that same namespace.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
# The shipped build (scripts/build-runtime.sh, as scripts/dist.sh makes it): static, non-PIE,
# profile release-small, hot code first, linked against musl where musl-gcc is installed.
built=$(bash scripts/build-runtime.sh)
bin_dir="${CARGO_TARGET_DIR:-$repo/target}/bench-runtime"
mkdir -p "$bin_dir"
cp "$built" "$bin_dir/"
strip "$bin_dir/skiff-runtime"
export SKIFF_RUNTIME="$bin_dir/skiff-runtime"
export RUNS="${RUNS:-50}"
exec unshare -m --propagation private sh -c '
  if grep -q " /sys/fs/cgroup/unified " /proc/self/mountinfo; then umount /sys/fs/cgroup/unified; fi
  exec python3 "$0"' "$here/bench.py"
