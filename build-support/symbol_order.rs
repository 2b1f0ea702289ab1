// Shared by the build scripts of the short-lived binaries (skiff-runtime, skiff-cni), which pull
// it in with `include!`: hands lld a symbol ordering file listing the functions a typical run
// executes, so they are packed first in `.text`. The kernel maps file-backed code in 64 KiB
// fault-around windows; hot functions scattered over a multi-megabyte binary keep most of its
// text resident, packed together they fill a few windows. Names that no longer exist (after a
// code or compiler change) are skipped: the list only steers layout, never correctness.

/// Adds the ordering file `list` (relative to the crate) to the link of this crate's binaries.
fn link_symbol_order(list: &str) {
    let list = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(list);
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=SKIFF_NO_SYMBOL_ORDER");
    let target = std::env::var("TARGET").unwrap_or_default();
    // rust-lld is the default linker of this target (Rust >= 1.90); other linkers may not know
    // the flag, and `SKIFF_NO_SYMBOL_ORDER=1` turns it off.
    if target == "x86_64-unknown-linux-gnu"
        && list.exists()
        && std::env::var_os("SKIFF_NO_SYMBOL_ORDER").is_none()
    {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
