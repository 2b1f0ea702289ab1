//! Batched UDP I/O for the DNS server: `recvmmsg(2)` and `sendmmsg(2)` on blocking sockets,
//! so a worker thread takes every query that is waiting with one call and sends all the
//! answers with one more (one receive and one send per batch instead of per query, and no
//! readiness polling). The workers of an address share its socket: the kernel wakes one
//! blocked receiver per datagram, so a free worker takes what is waiting. The buffers and
//! message headers are made once per worker: a batch allocates nothing. The only unsafe code
//! of the crate is here.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Queries taken per `recvmmsg` at most.
pub const BATCH: usize = 32;
/// Largest query read (EDNS clients send small queries; longer ones are cut and dropped).
pub const QUERY_MAX: usize = 4096;

/// A peer's address as the kernel gave it (kept raw: an answer goes back to it unconverted).
#[derive(Clone, Copy)]
pub struct Peer {
    name: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Peer {
    #[cfg(test)]
    pub fn from_addr(p: &SocketAddr) -> Peer {
        let (name, len) = to_storage(p);
        Peer { name, len }
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        from_storage(&self.name)
    }
}

/// Buffers and headers for one batch of received datagrams.
pub struct RecvBatch {
    bufs: Vec<[u8; QUERY_MAX]>,
    peers: Vec<Peer>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
    count: usize,
}

// SAFETY: the raw pointers in `iovs`/`msgs` point only into this struct's own heap buffers,
// which move with it; they are rewritten before every call that uses them.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain data; all-zero is valid.
        let zero_peer = Peer {
            name: unsafe { zeroed() },
            len: 0,
        };
        RecvBatch {
            bufs: vec![[0u8; QUERY_MAX]; BATCH],
            peers: vec![zero_peer; BATCH],
            iovs: vec![unsafe { zeroed() }; BATCH],
            msgs: vec![unsafe { zeroed() }; BATCH],
            lens: vec![0; BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// Blocks until at least one datagram is there, then takes every one that is waiting (up to
    /// [`BATCH`]). Once the socket is shut down for reading it returns at once (nothing, or
    /// empty datagrams).
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: QUERY_MAX,
            };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&mut self.peers[i].name as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        // SAFETY: `msgs` holds BATCH headers whose buffers and names (in `self`) stay alive and
        // unaliased for the call; the kernel writes at most their given lengths.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for i in 0..self.count {
            self.lens[i] = (self.msgs[i].msg_len as usize).min(QUERY_MAX);
            self.peers[i].len = self.msgs[i].msg_hdr.msg_namelen;
        }
        Ok(self.count)
    }

    /// The `i`th datagram of the last batch and its sender.
    pub fn get(&self, i: usize) -> Option<(&[u8], &Peer)> {
        if i >= self.count {
            return None;
        }
        Some((&self.bufs[i][..self.lens[i]], &self.peers[i]))
    }
}

/// Answers waiting to go out with one `sendmmsg`; their buffers are kept and reused.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    peers: Vec<Peer>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    count: usize,
}

// SAFETY: as for RecvBatch: the pointers are into the struct's own buffers, rewritten per call.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        // SAFETY: plain data; all-zero is valid.
        let zero_peer = Peer {
            name: unsafe { zeroed() },
            len: 0,
        };
        SendBatch {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            peers: vec![zero_peer; BATCH],
            iovs: vec![unsafe { zeroed() }; BATCH],
            msgs: vec![unsafe { zeroed() }; BATCH],
            count: 0,
        }
    }
}

impl SendBatch {
    /// Queues `bytes` for `peer`, with the first two bytes (a DNS message's ID) replaced by
    /// `id` when given. A full batch is sent first.
    pub fn push(&mut self, sock: &UdpSocket, bytes: &[u8], id: Option<[u8; 2]>, peer: &Peer) {
        if self.count == BATCH {
            self.flush(sock);
        }
        let b = &mut self.bufs[self.count];
        b.clear();
        b.extend_from_slice(bytes);
        if let (Some(id), true) = (id, b.len() >= 2) {
            b[..2].copy_from_slice(&id);
        }
        self.peers[self.count] = *peer;
        self.count += 1;
    }

    /// Sends what is queued (more calls if the kernel takes part of it); answers the kernel
    /// refuses are dropped, as a lost UDP answer is (the client asks again).
    pub fn flush(&mut self, sock: &UdpSocket) {
        for i in 0..self.count {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&mut self.peers[i].name as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.peers[i].len;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut done = 0usize;
        while done < self.count {
            // SAFETY: the headers from `done` on point at live buffers and names in `self`; the
            // kernel only reads them (and writes msg_len).
            let n = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.msgs[done..].as_mut_ptr(),
                    (self.count - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                // Skip the datagram the kernel refused (e.g. an unreachable peer) and go on.
                done += 1;
            } else {
                done += n as usize;
            }
        }
        self.count = 0;
    }
}

/// Sends every `(bytes, peer)` with one `sendmmsg` (more if the kernel takes part of them).
#[cfg(test)]
pub fn send_batch(sock: &UdpSocket, out: &[(Vec<u8>, SocketAddr)]) {
    let mut b = SendBatch::default();
    for (bytes, peer) in out {
        b.push(sock, bytes, None, &Peer::from_addr(peer));
    }
    b.flush(sock);
}

/// One datagram, without blocking (for answers made on the async side).
pub fn send_one(sock: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    let (name, len) = to_storage(&peer);
    // SAFETY: `bytes` and `name` are valid for the call; MSG_DONTWAIT: never blocks.
    unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
            (&name as *const libc::sockaddr_storage).cast(),
            len,
        );
    }
}

/// A UDP socket bound to `addr` with `SO_REUSEPORT` (a restarted server can bind the address
/// while the old one is still closing; sockets of one group must belong to the same user, as
/// the kernel requires).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: the option value is a live c_int of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if addr.is_ipv6() {
        // As std's bind: an IPv6 socket serves IPv6 only (the IPv4 address has its own).
        // SAFETY: as above.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (name, len) = to_storage(&addr);
    // SAFETY: `name` holds a sockaddr of `len` bytes for the call.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&name as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(fd))
}

/// Wakes a worker blocked in [`RecvBatch::recv`] on `sock` for good: further receives return
/// no datagrams (shutdown for reading wakes receivers even on an unconnected UDP socket).
pub fn shut_down_reading(sock: &UdpSocket) {
    // SAFETY: shutdown(2) on a descriptor we hold; an unconnected socket reports ENOTCONN but
    // is marked and its receivers are woken all the same.
    unsafe {
        libc::shutdown(sock.as_raw_fd(), libc::SHUT_RD);
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(p: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain data, all-zero is valid.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    match p {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let a: &mut libc::sockaddr_in =
                unsafe { &mut *(&mut s as *mut _ as *mut libc::sockaddr_in) };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = v4.port().to_be();
            a.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            (s, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let a: &mut libc::sockaddr_in6 =
                unsafe { &mut *(&mut s as *mut _ as *mut libc::sockaddr_in6) };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = v6.port().to_be();
            a.sin6_addr.s6_addr = v6.ip().octets();
            a.sin6_flowinfo = v6.flowinfo();
            a.sin6_scope_id = v6.scope_id();
            (s, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_out_and_comes_back_with_its_senders() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(b"one", server.local_addr().unwrap()).unwrap();
        b.send_to(b"two", server.local_addr().unwrap()).unwrap();
        let mut batch = RecvBatch::default();
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = batch.recv(&server).unwrap();
            for i in 0..n {
                let (d, p) = batch.get(i).unwrap();
                got.push((d.to_vec(), p.addr().unwrap()));
            }
        }
        assert_eq!(got[0], (b"one".to_vec(), a.local_addr().unwrap()));
        assert_eq!(got[1], (b"two".to_vec(), b.local_addr().unwrap()));
        let answers: Vec<(Vec<u8>, SocketAddr)> = got
            .iter()
            .map(|(d, p)| ([d.as_slice(), b"!"].concat(), *p))
            .collect();
        send_batch(&server, &answers);
        let mut buf = [0u8; 16];
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"one!"[..], server.local_addr().unwrap())
        );
        let (n, _) = b.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two!");
        send_one(&server, b"three", a.local_addr().unwrap());
        let (n, _) = a.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"three");
        // An ID patched in on the way out.
        let mut out = SendBatch::default();
        out.push(
            &server,
            b"xxrest",
            Some(*b"ab"),
            &Peer::from_addr(&a.local_addr().unwrap()),
        );
        out.flush(&server);
        let (n, _) = a.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"abrest");
    }

    #[test]
    fn reuseport_sockets_share_an_address_and_shutdown_wakes_the_receiver() {
        let first = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind_reuseport(addr).expect("a second socket on the same address");
        assert_eq!(second.local_addr().unwrap(), addr);
        let second = std::sync::Arc::new(second);
        let s2 = second.clone();
        let t = std::thread::spawn(move || RecvBatch::default().recv(&s2));
        std::thread::sleep(std::time::Duration::from_millis(50));
        shut_down_reading(&second);
        // It returns (with nothing, or empty datagrams, depending on the kernel).
        let n = t.join().unwrap().unwrap();
        assert!(n <= BATCH);
        drop(first);
    }

    /// The workers of an address share its socket: each datagram is taken by exactly one of
    /// the receivers blocked on it, and a shutdown wakes them all.
    #[test]
    fn receivers_of_one_socket_take_each_datagram_once_and_all_wake_on_shutdown() {
        let sock = std::sync::Arc::new(bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap());
        let addr = sock.local_addr().unwrap();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let sock = sock.clone();
                std::thread::spawn(move || {
                    let mut batch = RecvBatch::default();
                    let mut got = Vec::new();
                    // Until the shutdown: then a receive returns nothing or empty datagrams.
                    loop {
                        let n = batch.recv(&sock).unwrap();
                        let mut any = false;
                        for i in 0..n {
                            let (d, _) = batch.get(i).unwrap();
                            if !d.is_empty() {
                                got.push(d.to_vec());
                                any = true;
                            }
                        }
                        if !any {
                            return got;
                        }
                    }
                })
            })
            .collect();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..100u8 {
            client.send_to(&[b's', b'k', i], addr).unwrap();
        }
        // Every datagram queued before the shutdown is taken before the receivers see it.
        while !sock_queue_empty(&sock) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        shut_down_reading(&sock);
        let mut all: Vec<Vec<u8>> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort();
        let want: Vec<Vec<u8>> = (0..100u8).map(|i| vec![b's', b'k', i]).collect();
        assert_eq!(all, want);
    }

    /// Whether nothing waits in the socket's receive queue (FIONREAD: the next datagram's size).
    fn sock_queue_empty(sock: &UdpSocket) -> bool {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int to the given pointer.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
        r == 0 && n == 0
    }
}
