//! The few sysctls the plugins touch, written through /proc/sys of the caller's namespaces.

use std::path::Path;

/// Writes `value` to `/proc/sys/<key>` (key with slashes) unless it already holds it.
pub fn set(key: &str, value: &str) -> std::io::Result<()> {
    let cur = std::fs::read_to_string(Path::new("/proc/sys").join(key));
    if cur.is_ok_and(|cur| cur.trim() == value) {
        return Ok(());
    }
    write(key, value)
}

/// Writes `value` to `/proc/sys/<key>` (for a fresh interface, whose values are known).
pub fn write(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

/// Fills `buf` from the kernel's random pool (interface names, MACs, netlink sequence numbers);
/// should that fail, from the clock and pid (uniqueness, not secrecy, is what these need).
pub fn random_fill(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    if n != buf.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = (t ^ std::process::id().rotate_left(16)).to_ne_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = seed[i % 4].wrapping_add(i as u8);
        }
    }
}

/// 4 random bytes (see [`random_fill`]).
pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    random_fill(&mut b);
    u32::from_ne_bytes(b)
}
