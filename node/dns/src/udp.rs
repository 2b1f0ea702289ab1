//! Batched UDP I/O for the DNS server: `recvmmsg(2)` and `sendmmsg(2)` on a blocking socket,
//! so a thread of its own takes every query that is waiting with one call and sends all the
//! answers with one more (one receive and one send per batch instead of per query, and no
//! readiness polling). The only unsafe code of the crate is here.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Queries taken per `recvmmsg` at most.
pub const BATCH: usize = 32;
/// Largest query read (EDNS clients send small queries; longer ones are cut and dropped).
pub const QUERY_MAX: usize = 4096;

/// Buffers for one batch of received datagrams.
pub struct RecvBatch {
    bufs: Vec<[u8; QUERY_MAX]>,
    names: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![[0u8; QUERY_MAX]; BATCH],
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
            names: vec![unsafe { zeroed() }; BATCH],
            lens: vec![0; BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// Blocks until at least one datagram is there, then takes every one that is waiting (up to
    /// [`BATCH`]).
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: QUERY_MAX,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.names.iter_mut())
            .map(|(iov, name)| {
                // SAFETY: mmsghdr is plain data; the pointers set below outlive the call.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: `msgs` holds BATCH headers whose buffers and names stay alive and unaliased
        // for the call; the kernel writes at most their given lengths.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
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
        for (i, m) in msgs.iter().take(self.count).enumerate() {
            self.lens[i] = (m.msg_len as usize).min(QUERY_MAX);
        }
        Ok(self.count)
    }

    /// The `i`th datagram of the last batch and its sender.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        Some((&self.bufs[i][..self.lens[i]], from_storage(&self.names[i])?))
    }
}

/// Sends every `(bytes, peer)` with one `sendmmsg` (more if the kernel takes part of them);
/// answers the kernel refuses are dropped, as a lost UDP answer is (the client asks again).
pub fn send_batch(sock: &UdpSocket, out: &[(Vec<u8>, SocketAddr)]) {
    if out.is_empty() {
        return;
    }
    let mut names: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
        out.iter().map(|(_, p)| to_storage(p)).collect();
    let mut iovs: Vec<libc::iovec> = out
        .iter()
        .map(|(b, _)| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(names.iter_mut())
        .map(|(iov, (name, len))| {
            // SAFETY: plain data; pointers set below outlive the call.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = *len;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut done = 0usize;
    while done < msgs.len() {
        // SAFETY: the headers from `done` on point at live buffers and names; the kernel only
        // reads them (and writes msg_len).
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs[done..].as_mut_ptr(),
                (msgs.len() - done) as libc::c_uint,
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
                got.push((d.to_vec(), p));
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
    }
}
