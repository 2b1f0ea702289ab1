#!/usr/bin/env bash
# Builds skiff-runtime the way Skiff ships it and prints the binary's path (build output: stderr).
# Used by scripts/dist.sh and bench/runtime/run.sh.
#
#   - static and non-PIE, profile release-small (opt-level z, fat LTO), no forced unwind tables;
#   - hot functions packed first: shims/runtime/hot-symbols.txt (shims/runtime/build.rs);
#   - libseccomp linked statically (Debian's libseccomp.a);
#   - linked against musl's libc.a (Debian musl-tools) instead of glibc, as skiff-cni is
#     (scripts/build-cni.sh): every runtime call is a fresh exec, and static glibc spends ~0.75 ms
#     of CPU before main on cpuid-based cache sizing (VM exits on virtual machines), a tenth of a
#     whole foreground `run`. Rust's gnu-target std is used with musl-gcc as the linker driver and
#     rust-lld as the linker; shims/runtime/src/sys/musl_link.rs supplies the few glibc-only
#     symbols. Without musl-gcc (or with SKIFF_RUNTIME_LIBC=glibc) the same build is linked
#     against glibc.
# Output goes to ${CARGO_TARGET_DIR:-target}/runtime-musl (or runtime-glibc): the musl link's
# RUSTFLAGS would otherwise rebuild the glibc static builds' dependencies on every switch.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
triple="$(rustc -vV | awk '/^host:/ { print $2 }')"
flags="-C target-feature=+crt-static -C relocation-model=static -C force-unwind-tables=no"
base="${CARGO_TARGET_DIR:-target}"
# The musl link is made and tested for x86_64 (musl_link.rs mirrors glibc's x86_64 structures).
if [[ "${SKIFF_RUNTIME_LIBC:-musl}" == musl && $triple == x86_64-unknown-linux-gnu ]] &&
  command -v musl-gcc > /dev/null; then
  gcc_ld="$(rustc --print sysroot)/lib/rustlib/$triple/bin/gcc-ld"
  libgcc_dir="$(dirname "$(gcc -print-libgcc-file-name)")"
  flags+=" -C linker=musl-gcc -C link-arg=-static -C link-arg=-Wl,--no-dynamic-linker"
  flags+=" -C link-arg=-B$gcc_ld -C link-arg=-fuse-ld=lld -C link-arg=-L$libgcc_dir"
  features=(--features musl-link)
  dir="$base/runtime-musl"
else
  if [[ "${SKIFF_RUNTIME_LIBC:-musl}" == musl ]]; then
    echo "note: no musl link here (needs x86_64 and musl-gcc from musl-tools): linking skiff-runtime against glibc" >&2
  fi
  features=()
  dir="$base/runtime-glibc"
fi
# libseccomp.a from its own folder: a -L of the whole multiarch folder would hand the musl link
# glibc's libc.a.
seccomp_dir="$dir/libseccomp"
mkdir -p "$seccomp_dir"
ln -sf "/usr/lib/$(gcc -print-multiarch)/libseccomp.a" "$seccomp_dir/libseccomp.a"
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$(cd "$seccomp_dir" && pwd)" \
  RUSTFLAGS="$flags" cargo build --profile release-small -p skiff-runtime "${features[@]}" \
  --target "$triple" --target-dir "$dir" >&2
echo "$(cd "$dir" && pwd)/$triple/release-small/skiff-runtime"
