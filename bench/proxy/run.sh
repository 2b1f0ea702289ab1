#!/usr/bin/env bash
# Service proxy and cluster DNS benchmark: skiff-proxy (nftables over netlink) vs upstream
# kube-proxy's iptables-mode rules for the same 1,000 services x 10 endpoints (iptables-restore),
# and skiff-dns vs dnsmasq serving the same 1,000 names (closed-loop clients, then Debian's
# dnsperf). Runs in a network namespace of its
# own (root). SK_BENCH_ROUNDS (default 5) rounds of the sync figures, SK_DNS_ROUNDS (default 5)
# of the DNS ones; then the RSS of `skiff proxy --cluster-dns` (proxy + DNS in the process a
# user runs) against a `skiff server --disable-agent` holding 1,000 Services x 10 endpoints.
# SK_BENCH_ONLY=proxy, =dns or =rss runs one part; SKIFF_BIN picks the skiff binary measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v dnsmasq > /dev/null || { echo "dnsmasq is missing: apt-get install dnsmasq-base" >&2; exit 1; }
command -v dnsperf > /dev/null || { echo "dnsperf is missing: apt-get install dnsperf" >&2; exit 1; }
command -v iptables-restore > /dev/null || { echo "iptables-restore is missing: apt-get install iptables" >&2; exit 1; }
cargo build --release -p skiff-bench --bin proxy-bench -p skiff --bin skiff
exec "${CARGO_TARGET_DIR:-target}/release/proxy-bench"
