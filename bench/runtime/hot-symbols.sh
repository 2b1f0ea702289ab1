#!/bin/sh
# Records which functions skiff-runtime runs for create/start/delete and a foreground run (perf,
# cpu-clock samples with call chains) into shims/runtime/hot-symbols.txt, which
# shims/runtime/build.rs hands to lld as a symbol ordering file. Run as root after changing the runtime or the toolchain, then
# rebuild (scripts/dist.sh). Needs: perf (Debian linux-perf), runc (for `runc spec`), busybox.
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
# The shipped build (scripts/build-runtime.sh): its libc's functions are the ones to pack.
bin=$(bash scripts/build-runtime.sh)
work=$(mktemp -d /tmp/sk-hot.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/b/rootfs/bin"
cp /bin/busybox "$work/b/rootfs/bin/busybox"
ln -s busybox "$work/b/rootfs/bin/true"
(cd "$work/b" && runc spec && sed -i 's/"sh"/"\/bin\/true"/; s/"terminal": true/"terminal": false/' config.json)
cat > "$work/loop.sh" <<LOOP
#!/bin/sh
for i in \$(seq 1 200); do
  $bin --root $work/root create --bundle $work/b skhot\$i >/dev/null 2>&1
  $bin --root $work/root start skhot\$i >/dev/null 2>&1
  $bin --root $work/root delete --force skhot\$i >/dev/null 2>&1
  $bin --root $work/root run --bundle $work/b skhotrun\$i >/dev/null 2>&1
done
LOOP
chmod +x "$work/loop.sh"
perf record -q -e cpu-clock -c 20000 -g -o "$work/perf.data" -- "$work/loop.sh" >&2
perf script -i "$work/perf.data" -F ip,sym,dso --no-demangle 2>/dev/null \
  | awk '/skiff-runtime/ && $2 != "[unknown]" { print $2 }' | sort | uniq -c | sort -rn \
  | awk '{ print $2 }' > shims/runtime/hot-symbols.txt
echo "$(wc -l < shims/runtime/hot-symbols.txt) hot symbols in shims/runtime/hot-symbols.txt" >&2
