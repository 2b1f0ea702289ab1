//! A counting allocator for size tests: how many bytes a value keeps allocated. A test binary
//! installs it with `#[global_allocator] static A: skiff_memtrim::counting::Counting =
//! skiff_memtrim::counting::Counting;` and measures with [`live_bytes`]. Counts are per thread,
//! so tests running in parallel do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards to the system allocator and counts the bytes live on each thread.
pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator with its own arguments; the
// thread-local counter is a `const` `Cell`, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as isize));
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get() - l.size() as isize));
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

/// What `f`'s result keeps allocated on this thread, its inline size included (as a cache
/// holds it behind an `Arc` or in a map). Meaningful only where [`Counting`] is the global
/// allocator.
pub fn live_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.with(|c| c.get());
    let v = f();
    let after = LIVE.with(|c| c.get());
    (v, (after - before) as usize + std::mem::size_of::<T>())
}
