//! Links skiff-runtime's hot code together: `hot-symbols.txt` lists the functions a
//! create/start/delete runs (recorded with perf by `bench/runtime/hot-symbols.sh`), and lld
//! places them first in `.text`. The kernel maps code in 64 KiB fault-around windows, so a
//! runtime whose hot functions are scattered over the binary keeps nearly all of its text
//! resident; packed together, `create`'s peak RSS drops by about a third. Names that no longer
//! exist (after a code or compiler change) are skipped silently: the list only steers layout.
fn main() {
    let list = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    let target = std::env::var("TARGET").unwrap_or_default();
    // rust-lld is the default linker of this target (Rust >= 1.90); other linkers may not know
    // the flag, and `SKIFF_NO_SYMBOL_ORDER=1` turns it off.
    println!("cargo:rerun-if-env-changed=SKIFF_NO_SYMBOL_ORDER");
    if target == "x86_64-unknown-linux-gnu" && std::env::var_os("SKIFF_NO_SYMBOL_ORDER").is_none() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
