//! Netlink sockets and message framing, shared by the rtnetlink client ([`crate::netlink`]) and
//! the nf_tables client ([`crate::nft`]): a raw `AF_NETLINK` socket, a message builder with
//! (nested) attributes and the loops that read answers. Kept small on purpose: a plugin runs for
//! a few milliseconds, so it builds and parses exactly the fields it uses instead of decoding
//! whole kernel messages.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ECHO: u16 = 0x8;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLM_F_DUMP: u16 = 0x300;
/// Set on dump answers when the dumped set changed during the dump.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 0x8000;

/// Size of `struct nlmsghdr`.
pub const HDR: usize = 16;

/// A netlink attribute writer (also used for a whole message: header bytes, then attributes).
#[derive(Default, Clone)]
pub struct Attrs {
    pub buf: Vec<u8>,
}

impl Attrs {
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Raw bytes (a fixed header such as `ifinfomsg`), padded to 4.
    pub fn raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, ty: u16, s: &str) {
        let start = self.begin(ty);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.end(start);
    }

    pub fn u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }
    pub fn u16(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_ne_bytes());
    }
    pub fn u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }
    pub fn i32(&mut self, ty: u16, v: i32) {
        self.put(ty, &v.to_ne_bytes());
    }
    pub fn be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }
    pub fn be64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    /// A nested attribute whose payload `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) {
        let start = self.begin(ty | NLA_F_NESTED);
        f(self);
        self.end(start);
    }

    fn begin(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        start
    }

    fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.pad();
    }
}

/// Appends one netlink message (`nlmsghdr` + `body`) to `buf`.
pub fn message(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, body: &[u8]) {
    let len = HDR + body.len();
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(body);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Iterates the attributes of a buffer as (type without flags, payload).
pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let v = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, v))
    })
}

pub fn ne_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

pub fn ne_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

/// A NUL-terminated (or not) string attribute.
pub fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// One message of a received datagram.
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the `nlmsghdr`.
    pub payload: &'a [u8],
}

impl Msg<'_> {
    /// For `NLMSG_ERROR`: the (positive) errno, 0 for an ack.
    pub fn error_code(&self) -> i32 {
        ne_i32(self.payload).map_or(libc::EIO, |c| -c)
    }
}

fn bad_message() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed netlink message")
}

/// A netlink socket in the network namespace the calling thread was in when it was opened.
pub struct NlSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl NlSocket {
    pub fn open(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid (nl_pid 0: the kernel picks our port id).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sa is a valid sockaddr_nl of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NlSocket {
            fd,
            buf: Vec::new(),
        })
    }

    /// Sets the send and receive buffers to `bytes`, above the system limits (SO_*BUFFORCE,
    /// CAP_NET_ADMIN).
    pub fn force_buffers(&self, bytes: libc::c_int) -> io::Result<()> {
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // SAFETY: setsockopt with a c_int option value of the size given.
            let r = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&bytes as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        // SAFETY: sends from a valid slice; the kernel is the destination (sockaddr_nl pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: data and sa are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one datagram (whatever its size) and hands each message in it to `f`, which
    /// returns `Some` to stop. Returns what `f` returned, `None` when the datagram ran out first.
    pub fn recv_with<T>(
        &mut self,
        mut f: impl FnMut(Msg<'_>) -> Option<io::Result<T>>,
    ) -> io::Result<Option<T>> {
        let fd = self.fd.as_raw_fd();
        // Learn the size first (MSG_PEEK|MSG_TRUNC answers the real length), then read it all.
        let size = loop {
            // SAFETY: a zero-length peek writes nothing.
            let n = unsafe {
                libc::recv(
                    fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        if self.buf.len() < size {
            self.buf.resize(size, 0);
        }
        let n = loop {
            // SAFETY: buf holds at least `size` writable bytes.
            let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), size, 0) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let data = &self.buf[..n.min(size)];
        let mut off = 0;
        while off + HDR <= data.len() {
            let len = ne_u32(&data[off..]).unwrap_or(0) as usize;
            if len < HDR || off + len > data.len() {
                return Err(bad_message());
            }
            let m = Msg {
                ty: u16::from_ne_bytes([data[off + 4], data[off + 5]]),
                flags: u16::from_ne_bytes([data[off + 6], data[off + 7]]),
                seq: ne_u32(&data[off + 8..]).unwrap_or(0),
                payload: &data[off + HDR..off + len],
            };
            off += (len + 3) & !3;
            if let Some(r) = f(m) {
                return r.map(Some);
            }
        }
        Ok(None)
    }

    /// Reads answers to request `seq` until its ack, error or end of dump; `on_msg` sees every
    /// other message of that request (the dump or the `NLM_F_ACK`ed reply).
    /// A dump the kernel marked interrupted (`NLM_F_DUMP_INTR`: what it lists changed while it
    /// was being read, so something may be missing) ends with `EINTR` after its last message.
    pub fn answers(&mut self, seq: u32, mut on_msg: impl FnMut(&Msg<'_>)) -> io::Result<()> {
        let mut interrupted = false;
        loop {
            let done = self.recv_with(|m| {
                if m.seq != seq {
                    return None;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.ty {
                    NLMSG_DONE if interrupted => {
                        Some(Err(io::Error::from_raw_os_error(libc::EINTR)))
                    }
                    NLMSG_DONE => Some(Ok(())),
                    NLMSG_ERROR => Some(match m.error_code() {
                        0 => Ok(()),
                        e => Err(io::Error::from_raw_os_error(e)),
                    }),
                    _ => {
                        on_msg(&m);
                        None
                    }
                }
            })?;
            if done.is_some() {
                return Ok(());
            }
        }
    }

    /// Sends request `msg` (sequence number `seq`) and returns its answers (type, payload);
    /// an interrupted dump is asked again, up to 10 times, so the answer is consistent.
    pub fn transact(&mut self, msg: &[u8], seq: u32) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let mut tries = 0;
        loop {
            self.send(msg)?;
            let mut out = Vec::new();
            match self.answers(seq, |m| out.push((m.ty, m.payload.to_vec()))) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) && tries < 10 => tries += 1,
                r => return r.map(|()| out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_roundtrip_with_nesting_and_padding() {
        let mut a = Attrs::default();
        a.str(3, "eth0");
        a.nest(18, |a| {
            a.str(1, "veth");
            a.u8(7, 1);
        });
        a.u32(4, 1500);
        let b = a.into_bytes();
        assert_eq!(b.len() % 4, 0);
        let v: Vec<_> = attrs(&b).collect();
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].0, c_str(v[0].1).as_str()), (3, "eth0"));
        assert_eq!(v[1].0, 18, "the nested flag is masked off");
        let inner: Vec<_> = attrs(v[1].1).collect();
        assert_eq!(c_str(inner[0].1), "veth");
        assert_eq!(inner[1], (7, &[1u8][..]));
        assert_eq!(ne_u32(v[2].1), Some(1500));
    }

    #[test]
    fn message_header_and_length() {
        let mut buf = Vec::new();
        message(&mut buf, 18, NLM_F_REQUEST | NLM_F_ACK, 7, &[1, 2, 3]);
        assert_eq!(buf.len(), 20);
        assert_eq!(ne_u32(&buf), Some(19));
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), 18);
        assert_eq!(ne_u32(&buf[8..]), Some(7));
    }

    #[test]
    fn a_truncated_attribute_ends_iteration() {
        let b = [8u8, 0, 1, 0, 1, 2];
        assert_eq!(attrs(&b).count(), 0);
    }

    #[test]
    fn kernel_answers_a_request() {
        // RTM_GETLINK for "lo" in this namespace: a reply, then the ack.
        let mut s = NlSocket::open(libc::NETLINK_ROUTE).unwrap();
        let mut body = Attrs::default();
        body.raw(&[0u8; 16]);
        body.str(3, "lo");
        let mut req = Vec::new();
        message(&mut req, 18, NLM_F_REQUEST | NLM_F_ACK, 42, &body.buf);
        s.send(&req).unwrap();
        let mut names = Vec::new();
        s.answers(42, |m| {
            if let Some(rest) = m.payload.get(16..) {
                names.extend(attrs(rest).filter(|a| a.0 == 3).map(|a| c_str(a.1)));
            }
        })
        .unwrap();
        assert_eq!(names, ["lo"]);
    }
}
