//! Packs the plugins' hot code together: `hot-symbols.txt` lists every function an ADD, CHECK
//! and DEL execute (recorded with callgrind by `bench/cni/hot-symbols.sh`), placed first in
//! `.text` so a plugin run maps a few fault-around windows of code instead of most of the binary
//! (see build-support/symbol_order.rs).
include!("../build-support/symbol_order.rs");

fn main() {
    link_symbol_order("hot-symbols.txt");
}
