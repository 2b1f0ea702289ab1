#!/usr/bin/env bash
# Builds skiff-cni the way Skiff ships it and prints the binary's path (build output: stderr).
# Used by scripts/dist.sh, bench/cni/run.sh, bench/cni/hot-symbols.sh and scripts/test.sh.
#
#   - static and non-PIE, like the reference Go plugins: no ld.so, no relocations;
#   - profile release-small (opt-level z, fat LTO), no forced unwind tables;
#   - hot functions packed first: cni-plugins/hot-symbols.txt (cni-plugins/build.rs);
#   - linked against musl's libc.a (Debian musl-tools) instead of glibc: a plugin runs for ~2 ms
#     and static glibc spends ~0.5 ms of it before main on cpuid-based cache sizing (VM exits
#     on virtual machines). Rust's gnu-target std is used with musl-gcc as the linker driver
#     and rust-lld as the linker; cni-plugins/src/musl_link.rs supplies the two glibc-only
#     symbols std and libgcc's unwinder need. Without musl-gcc (or with SKIFF_CNI_LIBC=glibc)
#     the same build is linked against glibc.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
triple="$(rustc -vV | awk '/^host:/ { print $2 }')"
flags="-C target-feature=+crt-static -C relocation-model=static -C force-unwind-tables=no"
# The musl link is made and tested for x86_64 (musl_link.rs mirrors glibc's x86_64 structures).
if [[ "${SKIFF_CNI_LIBC:-musl}" == musl && $triple == x86_64-unknown-linux-gnu ]] &&
  command -v musl-gcc > /dev/null; then
  gcc_ld="$(rustc --print sysroot)/lib/rustlib/$triple/bin/gcc-ld"
  libgcc_dir="$(dirname "$(gcc -print-libgcc-file-name)")"
  flags+=" -C linker=musl-gcc -C link-arg=-static -C link-arg=-Wl,--no-dynamic-linker"
  flags+=" -C link-arg=-B$gcc_ld -C link-arg=-fuse-ld=lld -C link-arg=-L$libgcc_dir"
  features=(--features musl-link)
  dir=target/cni-musl
else
  if [[ "${SKIFF_CNI_LIBC:-musl}" == musl ]]; then
    echo "note: no musl link here (needs x86_64 and musl-gcc from musl-tools): linking skiff-cni against glibc" >&2
  fi
  features=()
  dir=target/cni-glibc
fi
RUSTFLAGS="$flags" cargo build --profile release-small -p skiff-cni "${features[@]}" \
  --target "$triple" --target-dir "$dir" >&2
echo "$PWD/$dir/$triple/release-small/skiff-cni"
