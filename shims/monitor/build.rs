//! Packs the pod monitor's steady loop together: `hot-symbols.txt` lists every function the loop
//! of a pod whose containers log runs (poll, reads, CRI log records, writes, trims; recorded with
//! callgrind by `bench/cri/monitor-hot-symbols.sh`). The monitor keeps only the code pages used
//! since its last trim resident (see docs/cri.md, "The monitor's memory"): packed first in
//! `.text`, those functions fill a few pages instead of one or two each across the binary.
include!("../../build-support/symbol_order.rs");

fn main() {
    link_symbol_order("hot-symbols.txt");
}
