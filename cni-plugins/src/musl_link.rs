//! The two glibc-only symbols needed when the plugins are linked against musl's `libc.a` (the
//! shipped build, feature `musl-link`; see scripts/dist.sh and docs/cni-plugins.md).
//!
//! Why musl: a plugin is a process that lives about two milliseconds. Static glibc spends half a
//! millisecond of that before `main`, sizing caches with dozens of `cpuid` instructions, each a
//! VM exit on virtual machines; musl's start-up does none of it. No Rust musl target is
//! installable on our build hosts, so the gnu target's `std` is linked with Debian's musl
//! (`musl-gcc`); the two symbols below are all that `std` and gcc's unwinder ask glibc for that
//! musl does not have. Everything else is the same kernel ABI on x86_64 (structure layouts of
//! `stat`, `dirent64`, `sigaction` and friends match).

use std::ffi::{c_char, c_int, c_void};

/// `std` asks for the glibc version to decide whether `posix_spawn` can be trusted; musl is not
/// glibc, so it gets a string that parses as no version and `std` forks and execs itself.
#[no_mangle]
pub extern "C" fn gnu_get_libc_version() -> *const c_char {
    c"musl".as_ptr()
}

/// glibc's `struct dl_find_object` (x86_64: no `dlfo_eh_dbase`).
#[repr(C)]
pub struct DlFindObject {
    flags: u64,
    map_start: *mut c_void,
    map_end: *mut c_void,
    link_map: *mut c_void,
    eh_frame: *mut c_void,
    reserved: [u64; 7],
}

struct Search {
    pc: usize,
    found: Option<(usize, usize, usize)>,
}

unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: musl passes a valid dl_phdr_info; `data` is the Search we handed in.
    let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
    // SAFETY: dlpi_phdr points to dlpi_phnum program headers of that object.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr as usize;
    let mut hit = None;
    let mut eh = None;
    for p in phdrs {
        let start = base + p.p_vaddr as usize;
        match p.p_type {
            libc::PT_LOAD if (start..start + p.p_memsz as usize).contains(&search.pc) => {
                hit = Some((start, start + p.p_memsz as usize));
            }
            libc::PT_GNU_EH_FRAME => eh = Some(start),
            _ => {}
        }
    }
    match (hit, eh) {
        (Some((s, e)), Some(eh)) => {
            search.found = Some((s, e, eh));
            1
        }
        _ => 0,
    }
}

/// gcc's unwinder (libgcc_eh, built against glibc >= 2.35) finds unwind tables through this;
/// answered from the program headers, like glibc does for a static program.
///
/// # Safety
/// `result` must point to writable memory for a `struct dl_find_object`.
#[no_mangle]
pub unsafe extern "C" fn _dl_find_object(pc: *mut c_void, result: *mut DlFindObject) -> c_int {
    let mut search = Search {
        pc: pc as usize,
        found: None,
    };
    // SAFETY: visit only reads what musl hands it and writes into `search`.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast()) };
    let Some((start, end, eh)) = search.found else {
        return -1;
    };
    // SAFETY: the caller provides the result buffer.
    unsafe {
        result.write(DlFindObject {
            flags: 0,
            map_start: start as *mut c_void,
            map_end: end as *mut c_void,
            link_map: std::ptr::null_mut(),
            eh_frame: eh as *mut c_void,
            reserved: [0; 7],
        })
    };
    0
}

/// gcc's unwinder calls these through weak references, and a weak reference does not pull a
/// member out of `libc.a`: without a strong one somewhere, the first backtrace or panic would
/// call address 0. This table is that strong reference.
struct Strong(#[allow(dead_code)] [*const (); 3]);
// SAFETY: the table is never read; it only exists for the linker.
unsafe impl Sync for Strong {}

#[used]
static UNWINDER_NEEDS: Strong = Strong([
    libc::pthread_once as *const (),
    libc::pthread_mutex_lock as *const (),
    libc::pthread_mutex_unlock as *const (),
]);
