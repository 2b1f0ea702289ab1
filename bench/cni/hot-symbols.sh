#!/usr/bin/env bash
# Records every function skiff-cni executes for bridge ADD/CHECK/DEL (ipMasq on and off, with
# a port mapping), host-local ADD/DEL and loopback ADD/DEL into cni-plugins/hot-symbols.txt,
# which cni-plugins/build.rs hands to lld as a symbol ordering file (hot code packed first, see
# build-support/symbol_order.rs). Uses callgrind, which sees every function that runs, not only
# the ones a sampling profiler happens to hit: one cold function left out costs a whole 64 KiB
# fault-around window of resident text.
#
# Run as root after changing the plugins or the toolchain, then rebuild (scripts/dist.sh).
# The list names symbols with their hashes: rebuilt with the same flags, they stay the same.
# Needs: valgrind, jq, iproute2. Works in scratch netns named skhot*, removed on exit.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
# Exactly the shipped build, so the symbol names (hashes) match.
bin="$(bash scripts/build-cni.sh)"
work=$(mktemp -d /tmp/sk-cnihot.XXXXXX)
cleanup() {
  ip netns del skhotc 2> /dev/null || true
  ip netns del skhoth 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/bin" "$work/cg"
"$bin" install "$work/bin" > /dev/null
ip netns add skhoth
ip -n skhoth link set lo up

conf() { # ipMasq -> a bridge config with a port-mapping capability
  cat << EOF
{"cniVersion":"1.0.0","name":"skhot","type":"bridge","bridge":"skhotbr0","isGateway":true,
 "ipMasq":$1,"hairpinMode":true,
 "ipam":{"type":"host-local","subnet":"10.244.99.0/24","routes":[{"dst":"0.0.0.0/0"}],
         "dataDir":"$work/ipam"}}
EOF
}

# Runs a plugin under callgrind inside the scratch "host" namespace.
traced() {
  ip netns exec skhoth env CNI_PATH="$work/bin" CNI_IFNAME=eth0 valgrind -q --tool=callgrind \
    --demangle=no --callgrind-out-file="$work/cg/out.%p" "$@"
}

for masq in false true; do
  conf "$masq" > "$work/conf.json"
  ip netns add skhotc
  export CNI_CONTAINERID="skhot$masq" CNI_NETNS=/run/netns/skhotc
  CNI_COMMAND=ADD traced "$work/bin/bridge" < "$work/conf.json" > "$work/add.json"
  jq --slurpfile r "$work/add.json" '. + {prevResult: $r[0]}' "$work/conf.json" > "$work/prev.json"
  for cmd in CHECK DEL; do
    CNI_COMMAND=$cmd traced "$work/bin/bridge" < "$work/prev.json" > /dev/null
  done
  # loopback, and host-local on its own (as a runtime's IPAM delegate would run it)
  for p in loopback host-local; do
    for cmd in ADD DEL; do
      CNI_COMMAND=$cmd traced "$work/bin/$p" < "$work/conf.json" > /dev/null
    done
  done
  ip netns del skhotc
done

# Every function callgrind saw (fn= and cfn= name definitions; 'N suffixes mark recursion).
grep -h -E '^c?fn=\([0-9]+\) ' "$work"/cg/out.* | sed -E "s/^c?fn=\([0-9]+\) //; s/'[0-9]+\$//" \
  | grep -v -E '^0x|^\(below' | sort -u > "$work/seen.txt"
# A glibc build picks string functions by CPU (ifunc): valgrind's CPU gets the AVX2 ones, real
# hosts may get EVEX/AVX-512. Add those variants of every string function that ran.
nm "$bin" | awk '{ print $NF }' | sort -u > "$work/all.txt"
bases=$( (grep -o -E '^__(mem|str|wmem|wcs|stp|raw)[a-z0-9]*_' "$work/seen.txt" || true) | sort -u | sed 's/_$//')
for b in $bases; do
  grep -E "^${b}_(evex|avx)" "$work/all.txt" || true
  [[ $b == __memcpy || $b == __mempcpy ]] && grep -E '^__memmove_(evex|avx)' "$work/all.txt" || true
done > "$work/variants.txt"
sort -u "$work/seen.txt" "$work/variants.txt" > cni-plugins/hot-symbols.txt
echo "$(wc -l < cni-plugins/hot-symbols.txt) hot symbols in cni-plugins/hot-symbols.txt" >&2
