//! The few sysctls the plugins touch, written through /proc/sys of the caller's namespaces.

use std::path::Path;

/// Writes `value` to `/proc/sys/<key>` (key with slashes) unless it already holds it.
pub fn set(key: &str, value: &str) -> std::io::Result<()> {
    let p = Path::new("/proc/sys").join(key);
    if std::fs::read_to_string(&p).is_ok_and(|cur| cur.trim() == value) {
        return Ok(());
    }
    std::fs::write(&p, value)
}

/// Writes `value` to `/proc/sys/<key>` (for a fresh interface, whose values are known).
pub fn write(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

/// 4 random bytes from the kernel (interface names, MACs, netlink sequence numbers).
pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into the 4-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, libc::GRND_NONBLOCK) };
    if n != 4 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t ^ std::process::id().rotate_left(16);
    }
    u32::from_ne_bytes(b)
}
