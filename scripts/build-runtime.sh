#!/usr/bin/env bash
# Builds skiff-runtime the way Skiff ships it and prints the binary's path (build output: stderr).
# Used by scripts/dist.sh, bench/runtime/run.sh and bench/runtime/hot-symbols.sh.
#
#   - static and non-PIE: no ld.so, no relocations;
#   - profile release-small (opt-level z, fat LTO), no forced unwind tables;
#   - hot functions packed first: shims/runtime/hot-symbols.txt (shims/runtime/build.rs);
#   - libseccomp linked statically (Debian's libseccomp.a);
#   - linked against musl's libc.a (Debian musl-tools) instead of glibc, as skiff-cni is
#     (scripts/build-cni.sh): static glibc spends ~0.8 ms before main on cpuid-based cache
#     sizing (VM exits on virtual machines), and a `run` pays it twice (the sealed re-exec).
#     Rust's gnu-target std is linked by musl-gcc driving rust-lld; shims/runtime/src/musl_link.rs
#     supplies the glibc-only symbols std, libgcc's unwinder and libseccomp.a ask for. Without
#     musl-gcc (or with SKIFF_RUNTIME_LIBC=glibc) the same build is linked against glibc.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
triple="$(rustc -vV | awk '/^host:/ { print $2 }')"
multiarch="$(gcc -print-multiarch)"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
flags="-C target-feature=+crt-static -C relocation-model=static -C force-unwind-tables=no"
if [[ "${SKIFF_RUNTIME_LIBC:-musl}" == musl && $triple == x86_64-unknown-linux-gnu ]] &&
  command -v musl-gcc > /dev/null; then
  gcc_ld="$(rustc --print sysroot)/lib/rustlib/$triple/bin/gcc-ld"
  libgcc_dir="$(dirname "$(gcc -print-libgcc-file-name)")"
  # libseccomp.a alone in a folder of its own: pointing the link at /usr/lib/<multiarch> would
  # let glibc's libc.a shadow musl's.
  seccomp_dir="$target_dir/runtime-musl/libseccomp"
  mkdir -p "$seccomp_dir"
  cp -u "/usr/lib/$multiarch/libseccomp.a" "$seccomp_dir/"
  flags+=" -C linker=musl-gcc -C link-arg=-static -C link-arg=-Wl,--no-dynamic-linker"
  flags+=" -C link-arg=-B$gcc_ld -C link-arg=-fuse-ld=lld -C link-arg=-L$libgcc_dir"
  features=(--features musl-link)
  dir="$target_dir/runtime-musl"
else
  if [[ "${SKIFF_RUNTIME_LIBC:-musl}" == musl ]]; then
    echo "note: no musl link here (needs x86_64 and musl-gcc from musl-tools): linking skiff-runtime against glibc" >&2
  fi
  seccomp_dir="/usr/lib/$multiarch"
  features=()
  dir="$target_dir/runtime-glibc"
fi
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$seccomp_dir" RUSTFLAGS="$flags" \
  cargo build --profile release-small -p skiff-runtime "${features[@]}" \
  --target "$triple" --target-dir "$dir" >&2
echo "$dir/$triple/release-small/skiff-runtime"
