#!/usr/bin/env bash
# Builds Skiff (release) and runs a single-node cluster in the foreground: `skiff server` on the
# embedded store. Run as root on Debian 12. Extra arguments go to `skiff server`.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
bash scripts/deps.sh build
echo "building release binaries (first build takes several minutes)..."
bash scripts/dist.sh
exec target/dist/skiff server "$@"
