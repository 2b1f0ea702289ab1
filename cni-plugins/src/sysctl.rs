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

/// Reads 4 random bytes from the kernel for interface names.
pub fn random_u32() -> u32 {
    use std::io::Read;
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t ^ std::process::id().rotate_left(16);
    }
    u32::from_ne_bytes(b)
}
