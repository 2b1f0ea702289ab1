//! Netfilter over netlink, shared by the CNI plugins (`skiff-cni`: masquerade and port-mapping
//! rules) and the service proxy (`skiff-proxy`): the netlink socket and message framing
//! ([`nlsock`]), a synchronous nf_tables client with batched transactions, sets and maps
//! ([`nft`]) and conntrack flushes ([`conntrack`]). No `nft`/`iptables` exec, no C libraries:
//! the CNI plugins link it statically and run for a few milliseconds.

pub mod conntrack;
pub mod nft;
pub mod nlsock;

/// 4 random bytes from `getrandom` (a time-based fallback if it is unavailable); seeds netlink
/// sequence numbers.
pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t ^ std::process::id().rotate_left(16);
    }
    u32::from_ne_bytes(b)
}
