//! The plugin binary's allocator: a bump arena in `.bss`.
//!
//! A plugin process allocates a few hundred kilobytes at most and exits within milliseconds, so
//! nothing needs to be given back; musl's allocator, built for long-lived programs, maps and
//! unmaps memory groups as they fill and empty, and every `munmap` is a TLB shoot-down across
//! CPUs (an inter-processor interrupt, a VM exit on virtual machines). Here an allocation is a
//! pointer bump; freeing or growing the most recent block happens in place, everything else is
//! simply left behind. Untouched arena pages cost nothing (zero pages of `.bss`); past the arena
//! the system allocator takes over.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

const SIZE: usize = 8 << 20;

#[repr(C, align(4096))]
struct Space(UnsafeCell<[u8; SIZE]>);

// SAFETY: disjoint ranges of the space are handed out through the atomic `top`; no byte is
// given to two live allocations.
unsafe impl Sync for Space {}

static SPACE: Space = Space(UnsafeCell::new([0; SIZE]));

/// Bump allocator over [`SPACE`], falling back to [`System`] when it is full.
pub struct Arena {
    top: AtomicUsize,
}

impl Arena {
    pub const fn new() -> Self {
        Arena {
            top: AtomicUsize::new(0),
        }
    }

    fn base() -> usize {
        SPACE.0.get() as usize
    }

    fn owns(ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= Self::base() && p < Self::base() + SIZE
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block handed out lies inside SPACE (or comes from System), is aligned as asked,
// and is never handed out again while live: `top` only moves back over the most recent block
// when that block is freed.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = Self::base();
        let mut top = self.top.load(Ordering::Relaxed);
        loop {
            let start = (base + top).next_multiple_of(layout.align()) - base;
            let end = match start.checked_add(layout.size()) {
                Some(e) if e <= SIZE => e,
                // SAFETY: forwarded to the system allocator with the same layout.
                _ => return unsafe { System.alloc(layout) },
            };
            match self
                .top
                .compare_exchange_weak(top, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => top = now,
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !Self::owns(ptr) {
            // SAFETY: not ours, so it came from System with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let start = ptr as usize - Self::base();
        // The most recent block: take its space back.
        let _ = self.top.compare_exchange(
            start + layout.size(),
            start,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Self::owns(ptr) {
            let start = ptr as usize - Self::base();
            // The most recent block grows (or shrinks) where it is.
            if start + new_size <= SIZE
                && self
                    .top
                    .compare_exchange(
                        start + layout.size(),
                        start + new_size,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return ptr;
            }
            if new_size <= layout.size() {
                return ptr;
            }
        }
        // SAFETY: a valid layout of the new size (same alignment, size checked by the caller).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for alloc.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two sizes and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_free_last_and_grow_in_place() {
        let a = Arena::new();
        let l8 = Layout::from_size_align(8, 8).unwrap();
        // SAFETY: layouts are valid; blocks are used within their sizes.
        unsafe {
            let p = a.alloc(l8);
            let q = a.alloc(Layout::from_size_align(16, 16).unwrap());
            assert!(Arena::owns(p) && Arena::owns(q));
            assert_eq!(q as usize % 16, 0);
            q.write_bytes(7, 16);
            let q2 = a.realloc(q, Layout::from_size_align(16, 16).unwrap(), 64);
            assert_eq!(q, q2, "the last block grows in place");
            assert_eq!(*q2.add(15), 7);
            // p is not the last block: growing it moves it and keeps its bytes.
            p.write_bytes(3, 8);
            let p2 = a.realloc(p, l8, 32);
            assert_ne!(p, p2);
            assert_eq!(*p2.add(7), 3);
            let top = a.top.load(Ordering::Relaxed);
            a.dealloc(p2, Layout::from_size_align(32, 8).unwrap());
            assert!(
                a.top.load(Ordering::Relaxed) < top,
                "freeing the last block gives it back"
            );
            // Too big for the arena: the system allocator's.
            let big = Layout::from_size_align(SIZE + 1, 8).unwrap();
            let b = a.alloc(big);
            assert!(!b.is_null() && !Arena::owns(b));
            a.dealloc(b, big);
        }
    }
}
