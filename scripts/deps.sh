#!/usr/bin/env bash
# Installs the Debian packages Skiff needs. Usage: scripts/deps.sh build|test
# build: what `skiff server` needs to build and run; test: that plus the peers and tools the tests use.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
want=(build-essential pkg-config libseccomp-dev protobuf-compiler libprotobuf-dev iproute2 ca-certificates curl musl-tools)
if [ "${1:-build}" = test ]; then
  want+=(busybox-static docker-registry apache2-utils containerd runc crun containernetworking-plugins etcd-server jq nftables dnsmasq-base iptables systemd dbus util-linux)
fi
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "${1:-build}" = test ] && ! python3 -c 'import kubernetes' 2>/dev/null; then
  echo "installing the Python kubernetes client (pip)"
  python3 -m pip install -q kubernetes >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "error: no Rust toolchain (cargo) on PATH; install one with rustup, then run this again" >&2
  exit 1
fi
