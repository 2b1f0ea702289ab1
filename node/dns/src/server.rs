//! The DNS server: UDP and TCP on one address, answers for the cluster domain from the
//! [`Index`], everything else forwarded to the node's resolvers and cached (negative answers
//! for the SOA's minimum TTL, RFC 2308). Unparsable packets and responses are dropped; UDP
//! answers larger than the client's limit (512 bytes, or its EDNS size) are truncated (TC) so
//! that the client retries over TCP.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::index::{Index, Rec};
use crate::DnsError;

/// TTL of cluster records (CoreDNS's `kubernetes` plugin default).
const TTL: u32 = 5;
/// Longest time an upstream answer is cached.
const MAX_CACHE_TTL: u32 = 300;
const CACHE_ENTRIES: usize = 10_000;

pub struct Server {
    domain: String,
    index: RwLock<Arc<Index>>,
    upstream: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, u16), (Instant, Message)>>,
    /// Bumped by every [`Server::set_index`]: each UDP worker keeps its own cache of encoded
    /// answers ([`WireCache`]) and empties it when this changes.
    generation: AtomicU64,
    /// UDP worker threads per address, all on the address's one socket.
    udp_workers: usize,
}

/// Encoded UDP answers to cluster names of one worker, by the query's bytes after its ID
/// (identical questions with identical flags and EDNS get identical answers), valid for one
/// index generation. Private to its thread: a hit takes no lock and allocates nothing.
struct WireCache {
    generation: u64,
    answers: HashMap<Box<[u8]>, Box<[u8]>, BuildHasherDefault<FxHasher>>,
}

impl WireCache {
    fn new() -> Self {
        WireCache {
            generation: u64::MAX,
            answers: HashMap::default(),
        }
    }

    /// Forgets everything when the index changed since the last call.
    fn sync(&mut self, generation: u64) {
        if self.generation != generation {
            self.answers.clear();
            self.generation = generation;
        }
    }

    fn get(&self, raw: &[u8]) -> Option<&[u8]> {
        self.answers.get(raw.get(2..)?).map(|a| &a[..])
    }

    fn insert(&mut self, raw: &[u8], answer: &[u8]) {
        if raw.len() < 12 || answer.len() < 12 {
            return;
        }
        if self.answers.len() >= CACHE_ENTRIES {
            self.answers.clear();
        }
        self.answers.insert(raw[2..].into(), answer.into());
    }
}

/// A small multiplicative hasher for the wire cache's short byte keys (rustc's FxHash
/// scheme); SipHash's flooding resistance buys nothing for a cache emptied when full.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn name(s: &str) -> Option<Name> {
    Name::from_str(&format!("{}.", s.trim_end_matches('.'))).ok()
}

fn soa(domain: &str) -> Option<Record> {
    let d = name(domain)?;
    let rdata = SOA::new(
        name(&format!("ns.dns.{domain}"))?,
        name(&format!("hostmaster.{domain}"))?,
        1,
        7200,
        1800,
        86400,
        TTL,
    );
    Some(Record::from_rdata(d, TTL, RData::SOA(rdata)))
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa`, nibbles `.ip6.arpa`) stands for.
fn reverse_ip(q: &str) -> Option<IpAddr> {
    if let Some(rest) = q.strip_suffix(".in-addr.arpa") {
        let mut parts: Vec<&str> = rest.split('.').collect();
        if parts.len() != 4 {
            return None;
        }
        parts.reverse();
        return parts.join(".").parse::<Ipv4Addr>().ok().map(IpAddr::V4);
    }
    let rest = q.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let hex: String = nibbles.iter().rev().copied().collect();
    let v = u128::from_str_radix(&hex, 16).ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(v)))
}

fn ip_record(n: &Name, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v) => Record::from_rdata(n.clone(), TTL, RData::A(A(v))),
        IpAddr::V6(v) => Record::from_rdata(n.clone(), TTL, RData::AAAA(AAAA(v))),
    }
}

/// The answer for a name under the cluster domain, or the reverse zone of cluster addresses;
/// `None` when the question is not ours (forward it).
pub fn handle_query(idx: &Index, req: &Message) -> Option<Message> {
    let q = req.queries().first()?;
    let qname = q.name().to_ascii().trim_end_matches('.').to_lowercase();
    let qtype = q.query_type();
    let domain = idx.domain.as_str();
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    let n = q.name().clone();
    let reverse = qname.ends_with(".in-addr.arpa") || qname.ends_with(".ip6.arpa");
    if reverse {
        let ip = reverse_ip(&qname)?;
        let target = idx.ptr.get(&ip)?;
        resp.set_authoritative(true);
        if qtype == RecordType::PTR || qtype == RecordType::ANY {
            resp.add_answer(Record::from_rdata(n, TTL, RData::PTR(PTR(name(target)?))));
        }
        return Some(resp);
    }
    if qname != domain && !qname.ends_with(&format!(".{domain}")) {
        return None;
    }
    resp.set_authoritative(true);
    let mut answers: Vec<Record> = Vec::new();
    let mut additional: Vec<Record> = Vec::new();
    let mut found = idx.exists(&qname);
    // <a-b-c-d>.<ns>.pod.<domain>
    if let Some(rest) = qname.strip_suffix(&format!(".pod.{domain}")) {
        if let Some((ipd, _ns)) = rest.split_once('.') {
            let ip = ipd
                .replace('-', ".")
                .parse::<Ipv4Addr>()
                .ok()
                .map(IpAddr::V4)
                .or_else(|| {
                    ipd.replace('-', ":")
                        .parse::<Ipv6Addr>()
                        .ok()
                        .map(IpAddr::V6)
                });
            if let Some(ip) = ip {
                found = true;
                let wanted = match ip {
                    IpAddr::V4(_) => RecordType::A,
                    IpAddr::V6(_) => RecordType::AAAA,
                };
                if qtype == wanted || qtype == RecordType::ANY {
                    answers.push(ip_record(&n, ip));
                }
            }
        } else {
            found = true;
        }
    }
    for r in idx.names.get(qname.as_str()).into_iter().flatten() {
        match r {
            Rec::Ip(ip) => {
                let t = if ip.is_ipv4() {
                    RecordType::A
                } else {
                    RecordType::AAAA
                };
                if qtype == t || qtype == RecordType::ANY {
                    answers.push(ip_record(&n, *ip));
                }
            }
            Rec::Cname(target) => {
                if let Some(t) = name(target) {
                    answers.push(Record::from_rdata(n.clone(), TTL, RData::CNAME(CNAME(t))));
                }
            }
            Rec::Srv { port, target } => {
                if qtype == RecordType::SRV || qtype == RecordType::ANY {
                    let Some(t) = name(target) else { continue };
                    answers.push(Record::from_rdata(
                        n.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, 100, *port, t.clone())),
                    ));
                    for r in idx.names.get(&**target).into_iter().flatten() {
                        if let Rec::Ip(ip) = r {
                            additional.push(ip_record(&t, *ip));
                        }
                    }
                }
            }
        }
    }
    if !found {
        resp.set_response_code(ResponseCode::NXDomain);
    }
    if answers.is_empty() {
        if let Some(s) = soa(domain) {
            resp.add_name_server(s);
        }
    }
    resp.add_answers(answers);
    resp.add_additionals(additional);
    Some(resp)
}

impl Server {
    pub fn new(domain: &str, upstream: Vec<SocketAddr>) -> Self {
        Server {
            domain: domain.trim_end_matches('.').to_lowercase(),
            index: RwLock::new(Arc::new(Index {
                domain: domain.trim_end_matches('.').to_lowercase(),
                ..Default::default()
            })),
            upstream,
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            udp_workers: 1,
        }
    }

    /// Serves UDP with `n` worker threads per address (at least one), sharing its socket.
    pub fn with_udp_workers(mut self, n: usize) -> Self {
        self.udp_workers = n.max(1);
        self
    }

    pub fn set_index(&self, idx: Index) {
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(idx);
        // After the index: a worker that sees the new generation reads the new index.
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn local(&self, req: &Message) -> Option<Message> {
        let idx = self.index.read().unwrap_or_else(|e| e.into_inner()).clone();
        handle_query(&idx, req)
    }

    fn cache_key(q: &Query) -> (String, u16) {
        (
            q.name().to_ascii().to_lowercase(),
            u16::from(q.query_type()),
        )
    }

    fn cached(&self, req: &Message) -> Option<Message> {
        let q = req.queries().first()?;
        let k = Self::cache_key(q);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match c.get(&k) {
            Some((exp, m)) if *exp > Instant::now() => {
                let mut m = m.clone();
                m.set_id(req.id());
                Some(m)
            }
            Some(_) => {
                c.remove(&k);
                None
            }
            None => None,
        }
    }

    fn store(&self, req: &Message, resp: &Message) {
        let Some(q) = req.queries().first() else {
            return;
        };
        let ttl = if resp.answers().is_empty() {
            // Negative: the SOA's minimum (RFC 2308), else a short default.
            resp.name_servers()
                .iter()
                .find_map(|r| match r.data() {
                    RData::SOA(s) => Some(s.minimum().min(r.ttl())),
                    _ => None,
                })
                .unwrap_or(TTL)
        } else {
            resp.answers().iter().map(|r| r.ttl()).min().unwrap_or(TTL)
        };
        let rc = resp.response_code();
        if ttl == 0 || !(rc == ResponseCode::NoError || rc == ResponseCode::NXDomain) {
            return;
        }
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            c.retain(|_, (exp, _)| *exp > now);
            if c.len() >= CACHE_ENTRIES {
                c.clear();
            }
        }
        let ttl = Duration::from_secs(u64::from(ttl.min(MAX_CACHE_TTL)));
        c.insert(Self::cache_key(q), (Instant::now() + ttl, resp.clone()));
    }

    /// Asks the node's resolvers over UDP, each in turn.
    async fn forward(&self, req: &Message, raw: &[u8]) -> Option<Message> {
        for up in &self.upstream {
            let bind: SocketAddr = if up.is_ipv4() {
                "0.0.0.0:0".parse().ok()?
            } else {
                "[::]:0".parse().ok()?
            };
            let Ok(sock) = UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.send_to(raw, up).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            let got = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await.ok()?;
                    if from != *up {
                        continue;
                    }
                    match Message::from_vec(&buf[..n]) {
                        Ok(m) if m.id() == req.id() => return Some(m),
                        _ => continue,
                    }
                }
            })
            .await;
            if let Ok(Some(m)) = got {
                if !m.truncated() {
                    self.store(req, &m);
                }
                return Some(m);
            }
        }
        None
    }

    /// The answer to one raw query (`None`: drop it).
    pub async fn answer(&self, raw: &[u8]) -> Option<Message> {
        let req = Message::from_vec(raw).ok()?;
        if req.message_type() != MessageType::Query {
            return None;
        }
        if req.op_code() != OpCode::Query || req.queries().len() != 1 {
            return Some(Message::error_msg(
                req.id(),
                req.op_code(),
                ResponseCode::NotImp,
            ));
        }
        if let Some(m) = self.local(&req) {
            return Some(m);
        }
        if let Some(m) = self.cached(&req) {
            return Some(m);
        }
        match self.forward(&req, raw).await {
            Some(m) => Some(m),
            None => {
                let mut m = Message::error_msg(req.id(), req.op_code(), ResponseCode::ServFail);
                m.add_queries(req.queries().iter().cloned());
                Some(m)
            }
        }
    }

    /// Encodes an answer for UDP: truncated (TC, no records) when larger than the client's
    /// limit.
    fn udp_bytes(req_max: u16, m: &Message) -> Option<Vec<u8>> {
        let b = m.to_vec().ok()?;
        if b.len() <= usize::from(req_max.max(512)) {
            return Some(b);
        }
        m.truncate().to_vec().ok()
    }

    fn client_max(raw: &[u8]) -> u16 {
        Message::from_vec(raw)
            .ok()
            .and_then(|m| m.extensions().as_ref().map(|e| e.max_payload()))
            .unwrap_or(512)
    }

    /// Serves UDP with [`Server::with_udp_workers`] threads on one socket: each blocks in a
    /// batched receive on it and the kernel wakes one of them per datagram (a socket's
    /// receivers wait exclusively), so whichever worker is free takes the next queries; then
    /// it sends the answers as a batch (see [`crate::udp`]). Cluster names are answered on
    /// those threads; forwarded ones in tasks on the async runtime. The returned task stops
    /// the threads when it is aborted or dropped with the runtime.
    ///
    /// One socket per worker (`SO_REUSEPORT`) was tried and measured (bench/README.md, DNS
    /// 2026-12-07): the kernel then ties each datagram to one worker (by a hash of the client's
    /// address, or by the CPU it arrives on), and when that worker was not running (a busy
    /// machine), its queries waited while the other worker idled.
    fn serve_udp(self: Arc<Self>, sock: std::net::UdpSocket) -> std::io::Result<JoinHandle<()>> {
        let stop = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Handle::current();
        let sock = Arc::new(sock);
        for i in 0..self.udp_workers {
            let (s, sock, stop, rt) = (self.clone(), sock.clone(), stop.clone(), rt.clone());
            std::thread::Builder::new()
                .name(format!("skiff-dns-udp{i}"))
                .spawn(move || s.udp_loop(&sock, &rt, &stop))?;
        }
        /// Stops the UDP workers when dropped: sets the flag and wakes their receives (a
        /// shutdown wakes every receiver of the socket).
        struct StopOnDrop(Arc<AtomicBool>, Arc<std::net::UdpSocket>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
                crate::udp::shut_down_reading(&self.1);
            }
        }
        let guard = StopOnDrop(stop, sock);
        Ok(tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await
        }))
    }

    fn udp_loop(
        self: &Arc<Self>,
        sock: &Arc<std::net::UdpSocket>,
        rt: &tokio::runtime::Handle,
        stop: &AtomicBool,
    ) {
        let mut batch = crate::udp::RecvBatch::default();
        let mut out = crate::udp::SendBatch::default();
        let mut wire = WireCache::new();
        loop {
            let n = match batch.recv(sock) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster DNS: receiving on UDP failed");
                    std::thread::sleep(Duration::from_millis(100));
                    0
                }
            };
            if stop.load(Ordering::SeqCst) {
                return;
            }
            wire.sync(self.generation.load(Ordering::Acquire));
            for i in 0..n {
                let Some((raw, peer)) = batch.get(i) else {
                    continue;
                };
                if raw.len() < 12 {
                    continue;
                }
                if let Some(b) = wire.get(raw) {
                    out.push(sock, b, Some([raw[0], raw[1]]), peer);
                    continue;
                }
                // Garbage is dropped here, without a task or an allocation beyond the parse.
                let Ok(req) = Message::from_vec(raw) else {
                    continue;
                };
                if req.message_type() == MessageType::Query && req.queries().len() == 1 {
                    if let Some(m) = self.local(&req) {
                        let max = req
                            .extensions()
                            .as_ref()
                            .map(|e| e.max_payload())
                            .unwrap_or(512);
                        if let Some(b) = Self::udp_bytes(max, &m) {
                            wire.insert(raw, &b);
                            out.push(sock, &b, None, peer);
                        }
                        continue;
                    }
                }
                let Some(peer) = peer.addr() else {
                    continue;
                };
                let (s, sock, raw) = (self.clone(), sock.clone(), raw.to_vec());
                rt.spawn(async move {
                    if let Some(m) = s.answer(&raw).await {
                        if let Some(b) = Self::udp_bytes(Self::client_max(&raw), &m) {
                            crate::udp::send_one(&sock, &b, peer);
                        }
                    }
                });
            }
            out.flush(sock);
        }
    }

    /// Binds UDP and TCP on `addr` and serves them in two tasks.
    pub async fn listen(
        self: Arc<Self>,
        addr: SocketAddr,
    ) -> Result<(JoinHandle<()>, JoinHandle<()>), DnsError> {
        let listen_err = |source| DnsError::Listen { addr, source };
        let udp = crate::udp::bind_reuseport(addr).map_err(listen_err)?;
        // Port 0: TCP takes the port UDP got.
        let addr = udp.local_addr().map_err(listen_err)?;
        let tcp = TcpListener::bind(addr).await.map_err(listen_err)?;
        let u = self.clone().serve_udp(udp).map_err(listen_err)?;
        let s = self;
        let t = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = tcp.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        let read = tokio::time::timeout(
                            Duration::from_secs(10),
                            conn.read_exact(&mut len),
                        )
                        .await;
                        if !matches!(read, Ok(Ok(_))) {
                            return;
                        }
                        let mut raw = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if conn.read_exact(&mut raw).await.is_err() {
                            return;
                        }
                        let Some(m) = s.answer(&raw).await else {
                            return;
                        };
                        let Ok(b) = m.to_vec() else { return };
                        let mut out = (b.len() as u16).to_be_bytes().to_vec();
                        out.extend(b);
                        if conn.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok((u, t))
    }
}
