//! Linking against musl's `libc.a` (feature `musl-link`, the shipped build made by
//! `scripts/build-runtime.sh`), as skiff-cni does (`cni-plugins/src/musl_link.rs`, whose two
//! glibc-only symbols for `std` and gcc's unwinder are used here as they are).
//!
//! Why: every runtime invocation is a fresh exec, and static glibc spends ~0.75 ms of CPU before
//! `main` on this 2-core VM sizing caches and probing CPU features with dozens of `cpuid`
//! instructions, each a VM exit (a static `int main(){return 0;}`: 0.78-0.81 ms CPU with glibc,
//! 0.07 ms with musl). That is a tenth of a whole foreground `run` of `/bin/true`.
//!
//! Besides those two, Debian's `libseccomp.a` (built against glibc with `_FORTIFY_SOURCE`) asks
//! for `__fprintf_chk`, only from `gen_pfc.o` (`seccomp_export_pfc`, the human-readable filter
//! dump), which skiff-runtime never calls; it gets the stub below.

use std::ffi::{c_char, c_int, c_void};

#[path = "../../../../cni-plugins/src/musl_link.rs"]
mod shared;

/// Rust's allocations come from skiff-cni's bump arena in `.bss` (`cni-plugins/src/arena.rs`):
/// musl's allocator maps and unmaps memory groups as they fill and empty, ~200 `mmap`,
/// `munmap`, `mremap` and `madvise` calls per foreground `run` (each `munmap` a TLB
/// shoot-down, an IPI on this VM), which gave back what musl's start-up saves. A runtime call
/// allocates well under the arena's 8 MiB; untouched arena pages cost nothing, and a
/// long-lived `events --stats` or terminal `run` that fills it goes on with musl's allocator.
#[path = "../../../../cni-plugins/src/arena.rs"]
mod arena;

#[global_allocator]
static ALLOC: arena::Arena = arena::Arena::new();

/// glibc's fortified `fprintf`. Only libseccomp's PFC export (never called here) references
/// it; answer "error" without writing, should that ever change.
#[no_mangle]
pub extern "C" fn __fprintf_chk(_stream: *mut c_void, _flag: c_int, _fmt: *const c_char) -> c_int {
    -1
}
