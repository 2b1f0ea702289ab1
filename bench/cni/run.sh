#!/usr/bin/env bash
# bench/cni/run.sh - Skiff's CNI plugins against the reference Go plugins, in one run.
#
# Builds `skiff-cni` in release mode, links it as bridge/host-local/... into a temp dir, then runs
# ../shared/bench/cni-bench.sh on that dir and on /usr/lib/cni, alternating rounds (ours, theirs,
# ours, theirs...) so machine noise hits both alike, once with ipMasq=true and once with false.
# Prints one line per figure with the ratio skiff/reference, e.g.
#   cni_bridge_add_p50_ms skiff=4.10 reference=24.30 ratio=0.17
# Targets (issue 4): ADD and DEL median <= 0.25x, peak RSS <= 0.2x.
#
# Usage: sudo bench/cni/run.sh [ITERATIONS] [ROUNDS]     (defaults 30 and 2)
# Env:   REF_DIR (default /usr/lib/cni); SKIP_BUILD=1 (with BUILD=dev) to use the existing build;
#        OUT (default: a temp dir, printed at the end);
#        BUILD=dev to measure a plain `cargo build --release` instead of the shipped build.
# What is measured is the binary Skiff ships (scripts/build-cni.sh, used by scripts/dist.sh):
# static and non-PIE like the reference Go plugins, linked against musl, profile release-small,
# hot functions packed first by the symbol ordering file cni-plugins/hot-symbols.txt
# (regenerate with bench/cni/hot-symbols.sh).
# SKIFF_CNI_SMAPS_DIR=<dir> makes every plugin run leave a copy of its /proc/self/smaps there.
# Needs: root, jq, GNU time, iproute2; everything runs in scratch netns named rcni* (see the
# shared script's header), nothing on the host changes.
set -euo pipefail

ITERS="${1:-30}"
ROUNDS="${2:-2}"
ROOT="$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)"
BENCH=""
for c in "$ROOT/../shared/bench/cni-bench.sh" /work/shared/bench/cni-bench.sh; do
  [[ -x "$c" || -f "$c" ]] && { BENCH="$(readlink -f "$c")"; break; }
done
[[ -n "$BENCH" ]] || { echo "cannot find shared/bench/cni-bench.sh next to the repository" >&2; exit 1; }
REF_DIR="${REF_DIR:-/usr/lib/cni}"
[[ -x "$REF_DIR/bridge" ]] || { echo "no reference plugins in $REF_DIR (apt-get install containernetworking-plugins)" >&2; exit 1; }
[[ $EUID -eq 0 ]] || { echo "must run as root" >&2; exit 1; }

if [[ "${BUILD:-dist}" == dev ]]; then
  [[ "${SKIP_BUILD:-0}" == 1 ]] || (cd "$ROOT" && cargo build --release -p skiff-cni >&2)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/skiff-cni"
else
  BIN="$(bash "$ROOT/scripts/build-cni.sh")"
fi
[[ -x "$BIN" ]] || { echo "missing $BIN (cargo build --release -p skiff-cni)" >&2; exit 1; }

# How much of the hot-symbol list this binary still has (names carry hashes: a toolchain or
# dependency change makes the list stale, which costs memory but nothing else).
HOT="$ROOT/cni-plugins/hot-symbols.txt"
HOT_FOUND=$(nm "$BIN" 2> /dev/null | awk '{ print $NF }' | sort -u | comm -12 - <(sort -u "$HOT") | wc -l)

OUT="${OUT:-$(mktemp -d /tmp/skiff-cni-bench.XXXXXX)}"
mkdir -p "$OUT"
PLUG="$OUT/skiff-bin"
"$BIN" install "$PLUG" > /dev/null

# One cni-bench.sh run; results land in $OUT/<label>-<masq>-<round>/summary.txt.
run_one() { # label dir masq round
  local out="$OUT/$1-$3-$4"
  LABEL="$1" IPMASQ="$3" HOSTNS="rcnihost" OUTDIR="$out" bash "$BENCH" "$2" "$ITERS" > "$out.log" 2>&1 ||
    { echo "cni-bench.sh failed for $1 (ipMasq=$3), see $out.log:" >&2; tail -20 "$out.log" >&2; exit 1; }
}

for masq in true false; do
  for ((r = 1; r <= ROUNDS; r++)); do
    run_one skiff "$PLUG" "$masq" "$r"
    run_one reference "$REF_DIR" "$masq" "$r"
  done
done

# Median over rounds of a per-round figure. field: ADD|CHECK|DEL|IPAM-ADD|IPAM-DEL (median column)
# or rss:<key> from the "peak RSS KiB:" line.
figure() { # label masq field
  local vals=() r f
  for ((r = 1; r <= ROUNDS; r++)); do
    f="$OUT/$1-$2-$r/summary.txt"
    case "$3" in
      rss:*) vals+=("$(grep -o "${3#rss:}=[0-9]*" "$f" | head -1 | cut -d= -f2)") ;;
      *) vals+=("$(awk -v k="$3" '$1 == k { print $2; exit }' "$f")") ;;
    esac
  done
  printf '%s\n' "${vals[@]}" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2] + v[NR/2+1]) / 2 }'
}

line() { # name masq field
  local s r
  s=$(figure skiff "$2" "$3"); r=$(figure reference "$2" "$3")
  awk -v n="$1" -v s="$s" -v r="$r" 'BEGIN { printf "%s skiff=%s reference=%s ratio=%.2f\n", n, s, r, (r > 0 ? s / r : 0) }'
}

{
  echo "# $ITERS iterations x $ROUNDS alternating rounds per side; medians of per-round medians; kernel $(uname -r), $(nproc) cpus; skiff binary: $(file -b "$BIN" | cut -d, -f1-2 | tr -d '\n') ($(stat -c %s "$BIN") bytes); hot symbols found: $HOT_FOUND/$(wc -l < "$HOT")"
  for masq in true false; do
    sfx=""; [[ $masq == false ]] && sfx="_nomasq"
    line "cni_bridge_add_p50_ms$sfx" "$masq" ADD
    line "cni_bridge_check_p50_ms$sfx" "$masq" CHECK
    line "cni_bridge_del_p50_ms$sfx" "$masq" DEL
    line "cni_bridge_add_peak_rss_kib$sfx" "$masq" "rss:bridge ADD(incl. host-local child)"
    line "cni_bridge_del_peak_rss_kib$sfx" "$masq" "rss:bridge DEL"
  done
  line cni_hostlocal_add_p50_ms true IPAM-ADD
  line cni_hostlocal_del_p50_ms true IPAM-DEL
  line cni_hostlocal_add_peak_rss_kib true "rss:host-local ADD"
} | tee "$OUT/ratios.txt"
echo "# details: $OUT" >&2
