//! Packs skiff-runtime's hot code together: `hot-symbols.txt` lists the functions a
//! create/start/delete runs (recorded with perf by `bench/runtime/hot-symbols.sh`); packed first
//! in `.text`, `create`'s peak RSS drops by about a third (see build-support/symbol_order.rs).
include!("../../build-support/symbol_order.rs");

fn main() {
    link_symbol_order("hot-symbols.txt");
}
