#!/usr/bin/env bash
# Builds Skiff (release) and runs a single-node cluster: `skiff server` on the embedded store.
# Where systemd runs, installs the binaries in /usr/local/bin and packaging/systemd/skiff.service
# and starts it (Type=notify, restart on failure, KillMode=process so pods survive a restart);
# elsewhere runs it in the foreground. Run as root on Debian 12. Extra arguments go to
# `skiff server` (foreground only).
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
bash scripts/deps.sh build
echo "building release binaries (first build takes several minutes)..."
bash scripts/dist.sh
if [[ -d /run/systemd/system && $# -eq 0 ]]; then
  install -m 0755 target/dist/* /usr/local/bin/
  install -m 0644 packaging/systemd/skiff.service /etc/systemd/system/skiff.service
  systemctl daemon-reload
  systemctl enable --now skiff.service
  echo "skiff.service started (journalctl -u skiff -f); export KUBECONFIG=/etc/skiff/skiff.yaml"
  exit 0
fi
exec target/dist/skiff server "$@"
