//! SPDY/3.1 server side as kubectl and client-go speak it after an `Upgrade: SPDY/3.1`:
//! the client opens one stream per channel (SYN_STREAM with a `streamtype` header), we answer
//! each with an empty SYN_REPLY, then data flows in DATA frames (FIN = end of that direction).
//! Header blocks are one zlib stream per direction, primed with the SPDY/3 dictionary and
//! sync-flushed per block. Like the Go implementation (spdystream) no flow-control windows are
//! enforced; PINGs are echoed.
//!
//! Exec/attach (`v4.channel.k8s.io`): streams `error`, `stdin`, `stdout`, `stderr`, `resize`
//! (newline-separated JSON sizes); the exit status goes to `error` as a metav1.Status.
//! Port-forward (`portforward.k8s.io`): pairs of `error` + `data` streams per connection, tied by
//! their `requestid` header and naming the `port`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Io, Outcome, Pending};
use crate::server::State;

/// Exec/attach protocols offered over SPDY.
pub(crate) const IO_PROTOCOLS: [&str; 1] = ["v4.channel.k8s.io"];

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;
/// Largest frame we accept (SPDY allows 16 MiB - 1).
const MAX_FRAME: usize = (1 << 24) - 1;
/// How long the client has to open every stream the session needs.
const STREAM_WAIT: Duration = Duration::from_secs(30);

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1):
/// length-prefixed header names and values, then a run of common strings.
fn dictionary() -> Vec<u8> {
    const WORDS: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    );
    let mut d = Vec::with_capacity(1424);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// One frame off the wire.
#[derive(Debug)]
enum Frame {
    Control {
        ty: u16,
        flags: u8,
        data: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("SPDY frame too large"));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(Some(if word & 0x8000_0000 != 0 {
        Frame::Control {
            ty: (word & 0xffff) as u16,
            flags,
            data,
        }
    } else {
        Frame::Data {
            stream: word & 0x7fff_ffff,
            flags,
            data,
        }
    }))
}

fn control(ty: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8003u16).to_be_bytes());
    f.extend_from_slice(&ty.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn data_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// The two header-block zlib contexts of a connection.
struct Headers {
    inflate: Decompress,
    deflate: Compress,
    dict: Vec<u8>,
}

impl Headers {
    fn new() -> Headers {
        let dict = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dict)
            .expect("setting the SPDY dictionary on a fresh compressor");
        Headers {
            inflate: Decompress::new(true),
            deflate,
            dict,
        }
    }

    fn decode(&mut self, block: &[u8]) -> std::io::Result<HashMap<String, Vec<String>>> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            out.reserve(4096);
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let r = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - in0) as usize;
            let made = self.inflate.total_out() - out0;
            input = &input[used.min(input.len())..];
            match r {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dict)
                        .map_err(std::io::Error::other)?;
                    continue;
                }
                Err(e) => return Err(std::io::Error::other(format!("SPDY headers: {e}"))),
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if used == 0 && made == 0 {
                return Err(std::io::Error::other("SPDY headers: truncated block"));
            }
        }
        parse_block(&out)
    }

    fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
            plain.extend_from_slice(k.to_ascii_lowercase().as_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            let _ = self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            // A sync flush is complete when the output buffer was not filled.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

fn parse_block(b: &[u8]) -> std::io::Result<HashMap<String, Vec<String>>> {
    let bad = || std::io::Error::other("malformed SPDY header block");
    let u32_at = |i: usize| -> Option<usize> {
        b.get(i..i + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    let n = u32_at(0).ok_or_else(bad)?;
    let mut i = 4;
    let mut h: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..n {
        let kl = u32_at(i).ok_or_else(bad)?;
        let k = b.get(i + 4..i + 4 + kl).ok_or_else(bad)?;
        i += 4 + kl;
        let vl = u32_at(i).ok_or_else(bad)?;
        let v = b.get(i + 4..i + 4 + vl).ok_or_else(bad)?;
        i += 4 + vl;
        let key = String::from_utf8_lossy(k).to_ascii_lowercase();
        for part in v.split(|c| *c == 0) {
            h.entry(key.clone())
                .or_default()
                .push(String::from_utf8_lossy(part).into_owned());
        }
    }
    Ok(h)
}

/// A stream the client opened.
struct NewStream {
    id: u32,
    headers: HashMap<String, Vec<String>>,
    /// Data the client sends on it; closed at its FIN.
    rx: mpsc::Receiver<Vec<u8>>,
}

impl NewStream {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default()
    }
}

/// Sends frames through the connection's writer task.
#[derive(Clone)]
struct Out(mpsc::Sender<Vec<u8>>);

impl Out {
    async fn data(&self, stream: u32, data: &[u8]) -> bool {
        for chunk in data.chunks(32 * 1024) {
            if self.0.send(data_frame(stream, 0, chunk)).await.is_err() {
                return false;
            }
        }
        true
    }
    async fn fin(&self, stream: u32) {
        let _ = self.0.send(data_frame(stream, FLAG_FIN, &[])).await;
    }
    async fn goaway(&self) {
        let mut p = Vec::with_capacity(8);
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes());
        let _ = self.0.send(control(TYPE_GOAWAY, 0, &p)).await;
    }
}

/// Serves one upgraded SPDY connection.
pub(crate) async fn serve<S>(st: Arc<State>, pending: Pending, io: S, proto: &str)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
            if out_rx.is_empty() && wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let out = Out(out_tx.clone());
    let (new_tx, new_rx) = mpsc::channel::<NewStream>(16);
    let reader = tokio::spawn(async move {
        let mut headers = Headers::new();
        let mut inbound: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
        loop {
            let frame = match read_frame(&mut rd).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY read");
                    break;
                }
            };
            match frame {
                Frame::Control {
                    ty: TYPE_SYN_STREAM,
                    flags,
                    data,
                } if data.len() >= 10 => {
                    let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) & 0x7fff_ffff;
                    let h = match headers.decode(&data[10..]) {
                        Ok(h) => h,
                        Err(e) => {
                            tracing::warn!(error = %e, "SPDY SYN_STREAM");
                            break;
                        }
                    };
                    let mut reply = id.to_be_bytes().to_vec();
                    reply.extend_from_slice(&headers.encode(&[]));
                    if out_tx
                        .send(control(TYPE_SYN_REPLY, 0, &reply))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    let (tx, rx) = mpsc::channel(16);
                    if flags & FLAG_FIN == 0 {
                        inbound.insert(id, tx);
                    }
                    if new_tx.send(NewStream { id, headers: h, rx }).await.is_err() {
                        break;
                    }
                }
                Frame::Control {
                    ty: TYPE_PING,
                    data,
                    ..
                } => {
                    let _ = out_tx.send(control(TYPE_PING, 0, &data)).await;
                }
                Frame::Control {
                    ty: TYPE_RST_STREAM,
                    data,
                    ..
                } if data.len() >= 4 => {
                    let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) & 0x7fff_ffff;
                    inbound.remove(&id);
                }
                Frame::Control {
                    ty: TYPE_GOAWAY, ..
                } => break,
                Frame::Control { .. } => {} // SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => {
                    if !data.is_empty() {
                        if let Some(tx) = inbound.get(&stream) {
                            let _ = tx.send(data).await;
                        }
                    }
                    if flags & FLAG_FIN != 0 {
                        inbound.remove(&stream);
                    }
                }
            }
        }
    });
    match &pending {
        Pending::PortForward(pf) => {
            serve_portforward(&st, &pf.pod_sandbox_id, new_rx, out.clone()).await;
        }
        _ => serve_io(&st, &pending, new_rx, out.clone(), proto).await,
    }
    out.goaway().await;
    drop(out);
    finish(reader, writer).await;
}

/// Waits (briefly) for the client to hang up, then stops the reader and writer.
async fn finish(reader: tokio::task::JoinHandle<()>, writer: tokio::task::JoinHandle<()>) {
    let abort = reader.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .is_err()
    {
        abort.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

async fn serve_io(
    st: &State,
    pending: &Pending,
    mut new_rx: mpsc::Receiver<NewStream>,
    out: Out,
    _proto: &str,
) {
    let opts = pending.opts();
    let mut streams: HashMap<String, NewStream> = HashMap::new();
    let want = |s: &HashMap<String, NewStream>| {
        s.contains_key("error")
            && (!opts.stdin || s.contains_key("stdin"))
            && (!opts.stdout || s.contains_key("stdout"))
            && (!opts.stderr || s.contains_key("stderr"))
            && (!opts.tty || s.contains_key("resize"))
    };
    let deadline = tokio::time::Instant::now() + STREAM_WAIT;
    while !want(&streams) {
        match tokio::time::timeout_at(deadline, new_rx.recv()).await {
            Ok(Some(s)) => {
                let kind = s.header("streamtype");
                streams.insert(kind, s);
            }
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(have = ?streams.keys().collect::<Vec<_>>(), "SPDY client did not open every stream in time");
                if let Some(e) = streams.get("error") {
                    out.data(
                        e.id,
                        Outcome::Failed("timed out waiting for the client's streams".into())
                            .status_json(&opts.cmd)
                            .as_bytes(),
                    )
                    .await;
                    out.fin(e.id).await;
                }
                return;
            }
        }
    }
    let error_id = streams["error"].id;
    let stdin = streams.remove("stdin").map(|s| s.rx);
    let resize = streams.remove("resize").map(|s| {
        let mut rx = s.rx;
        let (tx, sz_rx) = mpsc::channel::<(u16, u16)>(4);
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            while let Some(d) = rx.recv().await {
                buf.extend_from_slice(&d);
                // One JSON object per line (Go's json.Encoder); also accept back-to-back objects.
                let mut de =
                    serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>();
                let mut used = 0;
                while let Some(Ok(v)) = de.next() {
                    used = de.byte_offset();
                    if let Some(sz) = super::parse_resize(v.to_string().as_bytes()) {
                        let _ = tx.send(sz).await;
                    }
                }
                buf.drain(..used);
            }
        });
        sz_rx
    });
    let mut fwd = Vec::new();
    let mut sink = |name: &str| {
        let id = streams.get(name).map(|s| s.id)?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let out = out.clone();
        fwd.push((
            id,
            tokio::spawn(async move {
                while let Some(d) = rx.recv().await {
                    if !out.data(id, &d).await {
                        break;
                    }
                }
            }),
        ));
        Some(tx)
    };
    let stdout = if opts.stdout { sink("stdout") } else { None };
    let stderr = if opts.stderr { sink("stderr") } else { None };
    let outcome = super::run_io(
        st,
        pending,
        Io {
            stdin,
            stdout,
            stderr,
            resize,
        },
    )
    .await;
    for (id, task) in fwd {
        let _ = task.await;
        out.fin(id).await;
    }
    tracing::info!(?outcome, "SPDY streaming session ended");
    out.data(error_id, outcome.status_json(&opts.cmd).as_bytes())
        .await;
    out.fin(error_id).await;
}

async fn serve_portforward(
    st: &State,
    sandbox_id: &str,
    mut new_rx: mpsc::Receiver<NewStream>,
    out: Out,
) {
    // requestid -> the error stream waiting for its data stream
    let mut errors: HashMap<String, NewStream> = HashMap::new();
    let mut tasks = Vec::new();
    while let Some(s) = new_rx.recv().await {
        let req = s.header("requestid");
        match s.header("streamtype").as_str() {
            "error" => {
                errors.insert(req, s);
            }
            "data" => {
                let err_id = errors.remove(&req).map(|e| e.id);
                let port: u16 = s.header("port").parse().unwrap_or(0);
                let out = out.clone();
                let conn = super::portforward::connect(st, sandbox_id, port).await;
                let sandbox = sandbox_id.to_string();
                tasks.push(tokio::spawn(async move {
                    forward_pair(s, err_id, port, conn, out, &sandbox).await;
                }));
            }
            other => tracing::debug!(streamtype = other, "ignoring SPDY port-forward stream"),
        }
    }
    for t in tasks {
        t.abort();
    }
}

async fn forward_pair(
    data: NewStream,
    err_id: Option<u32>,
    port: u16,
    conn: Result<tokio::net::TcpStream, String>,
    out: Out,
    sandbox: &str,
) {
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {sandbox}: {e}");
            tracing::warn!("{msg}");
            if let Some(id) = err_id {
                out.data(id, msg.as_bytes()).await;
                out.fin(id).await;
            }
            out.fin(data.id).await;
            return;
        }
    };
    let (mut rd, mut wr) = conn.into_split();
    let mut rx = data.rx;
    let up = tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            if wr.write_all(&d).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !out.data(data.id, &buf[..n]).await {
                    break;
                }
            }
        }
    }
    out.fin(data.id).await;
    if let Some(id) = err_id {
        out.fin(id).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), up).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\0\0\0\x07options"));
        assert!(d.ends_with(b"enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_through_two_contexts() {
        let mut client = Headers::new();
        let mut server = Headers::new();
        for i in 0..3 {
            let port = format!("80{i}");
            let block = client.encode(&[("streamType", "data"), ("port", &port)]);
            let h = server.decode(&block).unwrap();
            assert_eq!(h["streamtype"], ["data"]);
            assert_eq!(h["port"], [port]);
        }
    }

    #[test]
    fn frames_encode_lengths_and_flags() {
        let f = data_frame(3, FLAG_FIN, b"ab");
        assert_eq!(f, [0, 0, 0, 3, 1, 0, 0, 2, b'a', b'b']);
        let c = control(TYPE_PING, 0, &[0, 0, 0, 1]);
        assert_eq!(&c[..8], &[0x80, 3, 0, 6, 0, 0, 0, 4]);
    }
}
