//! Links `skiff` as a non-PIE executable, as the static runtime, monitor and CNI builds already
//! are (scripts/dist.sh) and as `go build` links upstream's components by default on amd64.
//!
//! A position-independent executable has its pointer tables (`.data.rel.ro`: vtables, string
//! and static references; ~2.1 MB in this binary, ~94,000 relocations) written by the dynamic
//! loader at start, so every `skiff` process holds all of them as private dirty memory for its
//! whole life, touched or not (~2.1 MiB of each process's RSS). Linked at a fixed address they
//! are clean pages of the file: only the ones read are resident, and the idle trim
//! (`skiff_memtrim::trim_code_pages`) can drop them. The cost: the executable's own image is not
//! randomized (libraries, heap, stacks and other mappings still are). The object code is
//! unchanged (compiled position-independent as before), only the link differs.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-link-arg-bin=skiff=-no-pie");
    }
}
