//! Symbols a link against musl's `libc.a` needs (the shipped build, feature `musl-link`,
//! scripts/build-runtime.sh): the two std and gcc's unwinder ask glibc for are skiff-cni's
//! (shared source), plus `__fprintf_chk`, which Debian's `libseccomp.a` (built with
//! `_FORTIFY_SOURCE` against glibc) references from its PFC text exporter.

#[path = "../../../cni-plugins/src/musl_link.rs"]
mod shared;

/// glibc's fortified `fprintf`, reached only from `seccomp_export_pfc` (printing a filter as
/// text), which this runtime never calls. Defining it without the variadic tail is ABI-safe
/// on x86_64 (the callee just ignores the extra registers); it writes nothing and reports an
/// error.
#[no_mangle]
pub extern "C" fn __fprintf_chk(
    _stream: *mut libc::FILE,
    _flag: libc::c_int,
    _format: *const libc::c_char,
) -> libc::c_int {
    -1
}
