//! Hand-written clients of the CRI streaming protocols, to test the server's Exec/Attach/
//! PortForward URLs the way kubectl and client-go use them: WebSocket (`v5`/`v4.channel.k8s.io`,
//! base64, `portforward`) and SPDY/3.1 (`v4.channel.k8s.io`, `portforward.k8s.io`).
//!
//! The SPDY client compresses its header blocks as zlib *stored* blocks that still declare the
//! SPDY dictionary (FDICT), so any zlib decoder primed with it accepts them and no zlib library
//! is needed here; it skips the server's header blocks (SYN_REPLY carries none we need).

use std::collections::HashMap;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{io_err, HarnessError, Result};

/// `http://host:port/path` -> (host:port, /path).
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HarnessError::Other(format!("not an http URL: {url}")))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((host.to_string(), format!("/{path}")))
}

/// Sends an HTTP/1.1 upgrade request and reads the response head. Returns the status code, the
/// headers (lowercased names) and the connection (positioned after the head).
async fn upgrade(
    url: &str,
    extra: &[(&str, String)],
) -> Result<(u16, HashMap<String, String>, BufReader<TcpStream>)> {
    let (host, path) = split_url(url)?;
    let conn = TcpStream::connect(&host)
        .await
        .map_err(io_err(format!("connecting to {host}")))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut conn = BufReader::new(conn);
    conn.get_mut()
        .write_all(req.as_bytes())
        .await
        .map_err(io_err("sending upgrade request"))?;
    let mut status_line = String::new();
    conn.read_line(&mut status_line)
        .await
        .map_err(io_err("reading status line"))?;
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HarnessError::Http(format!("bad status line {status_line:?}")))?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        conn.read_line(&mut line)
            .await
            .map_err(io_err("reading headers"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok((code, headers, conn))
}

/// A WebSocket client connection speaking a channel protocol.
pub struct WsClient {
    conn: BufReader<TcpStream>,
    pub protocol: String,
    base64: bool,
}

/// The outcome of an HTTP request that was not upgraded.
#[derive(Debug)]
pub struct Refused(pub u16);

impl WsClient {
    /// Opens `url` offering `protocols` (first preferred). Err(Refused) when not upgraded.
    pub async fn connect(
        url: &str,
        protocols: &[&str],
    ) -> Result<std::result::Result<WsClient, Refused>> {
        let mut key = [0u8; 16];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (std::process::id() as u8).wrapping_add((i as u8).wrapping_mul(37));
        }
        let mut hdrs = vec![
            ("Upgrade", "websocket".to_string()),
            ("Connection", "Upgrade".to_string()),
            ("Sec-WebSocket-Key", b64(&key)),
            ("Sec-WebSocket-Version", "13".to_string()),
        ];
        if !protocols.is_empty() {
            hdrs.push(("Sec-WebSocket-Protocol", protocols.join(", ")));
        }
        let (code, headers, conn) = upgrade(url, &hdrs).await?;
        if code != 101 {
            return Ok(Err(Refused(code)));
        }
        let protocol = headers
            .get("sec-websocket-protocol")
            .cloned()
            .unwrap_or_default();
        Ok(Ok(WsClient {
            conn,
            base64: protocol.contains("base64"),
            protocol,
        }))
    }

    /// Sends `data` on channel `ch` (a masked binary frame, or text for base64 protocols).
    pub async fn send(&mut self, ch: u8, data: &[u8]) -> Result<()> {
        let (op, payload) = if self.base64 {
            let mut p = vec![b'0' + ch];
            p.extend_from_slice(b64(data).as_bytes());
            (1u8, p)
        } else {
            let mut p = vec![ch];
            p.extend_from_slice(data);
            (2u8, p)
        };
        self.frame(op, &payload).await
    }

    async fn frame(&mut self, op: u8, payload: &[u8]) -> Result<()> {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut f = vec![0x80 | op];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.conn
            .get_mut()
            .write_all(&f)
            .await
            .map_err(io_err("websocket write"))
    }

    /// The next channel message; None at close.
    pub async fn recv(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        loop {
            let mut head = [0u8; 2];
            if self.conn.read_exact(&mut head).await.is_err() {
                return Ok(None);
            }
            let op = head[0] & 0x0f;
            let len = match head[1] & 0x7f {
                126 => self.conn.read_u16().await.map_err(io_err("ws len"))? as usize,
                127 => self.conn.read_u64().await.map_err(io_err("ws len"))? as usize,
                n => n as usize,
            };
            let mut p = vec![0u8; len];
            self.conn
                .read_exact(&mut p)
                .await
                .map_err(io_err("ws payload"))?;
            match op {
                8 => return Ok(None),
                1 | 2 => {
                    let Some((&ch, rest)) = p.split_first() else {
                        continue;
                    };
                    if self.base64 {
                        return Ok(Some((ch - b'0', unb64(rest))));
                    }
                    return Ok(Some((ch, rest.to_vec())));
                }
                _ => continue,
            }
        }
    }

    /// Reads until close; returns everything per channel.
    pub async fn collect(&mut self) -> Result<HashMap<u8, Vec<u8>>> {
        let mut out: HashMap<u8, Vec<u8>> = HashMap::new();
        while let Some((ch, d)) = self.recv().await? {
            out.entry(ch).or_default().extend_from_slice(&d);
        }
        Ok(out)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn unb64(data: &[u8]) -> Vec<u8> {
    let val = |c: u8| B64.iter().position(|b| *b == c).map(|p| p as u32);
    let mut out = Vec::new();
    for c in data.chunks(4) {
        let vals: Vec<u32> = c.iter().filter_map(|b| val(*b)).collect();
        let mut n = 0u32;
        for (i, v) in vals.iter().enumerate() {
            n |= v << (18 - 6 * i);
        }
        for i in 0..vals.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Adler-32 (zlib's checksum), for the dictionary id of the FDICT header.
fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    b << 16 | a
}

/// The SPDY/3 dictionary (same construction as the server's; only its checksum is used).
fn spdy_dictionary() -> Vec<u8> {
    let words = [
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
    let tail = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    );
    let mut d = Vec::new();
    for w in words {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(tail.as_bytes());
    d
}

/// A SPDY/3.1 client connection.
pub struct SpdyClient {
    conn: BufReader<TcpStream>,
    next_id: u32,
    started_zlib: bool,
    pub protocol: String,
}

/// A frame received by the SPDY client.
#[derive(Debug)]
pub enum SpdyFrame {
    Reply(u32),
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    GoAway,
    Other(u16),
}

impl SpdyClient {
    pub async fn connect(
        url: &str,
        protocols: &[&str],
    ) -> Result<std::result::Result<SpdyClient, Refused>> {
        let mut hdrs = vec![
            ("Connection", "Upgrade".to_string()),
            ("Upgrade", "SPDY/3.1".to_string()),
        ];
        for p in protocols {
            hdrs.push(("X-Stream-Protocol-Version", p.to_string()));
        }
        let (code, headers, conn) = upgrade(url, &hdrs).await?;
        if code != 101 {
            return Ok(Err(Refused(code)));
        }
        Ok(Ok(SpdyClient {
            conn,
            next_id: 1,
            started_zlib: false,
            protocol: headers
                .get("x-stream-protocol-version")
                .cloned()
                .unwrap_or_default(),
        }))
    }

    /// A header block as zlib stored blocks (sync-flush style, never final).
    fn header_block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
            plain.extend_from_slice(k.as_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v.as_bytes());
        }
        let mut z = Vec::new();
        if !self.started_zlib {
            self.started_zlib = true;
            // CMF 0x78 (deflate, 32K window); FLG with FDICT, FCHECK making CMF*256+FLG % 31 == 0.
            let mut flg: u8 = 0x20;
            let rem = (0x78u16 * 256 + flg as u16) % 31;
            if rem != 0 {
                flg += (31 - rem) as u8;
            }
            z.push(0x78);
            z.push(flg);
            z.extend_from_slice(&adler32(&spdy_dictionary()).to_be_bytes());
        }
        // One stored, non-final block: BFINAL=0, BTYPE=00, then LEN / NLEN.
        z.push(0);
        z.extend_from_slice(&(plain.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(plain.len() as u16)).to_le_bytes());
        z.extend_from_slice(&plain);
        z
    }

    /// Opens a stream with `headers`; returns its id.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 2;
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&self.header_block(headers));
        self.control(1, 0, &p).await?;
        Ok(id)
    }

    async fn control(&mut self, ty: u16, flags: u8, payload: &[u8]) -> Result<()> {
        let mut f = vec![0x80, 3];
        f.extend_from_slice(&ty.to_be_bytes());
        f.push(flags);
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(payload);
        self.conn
            .get_mut()
            .write_all(&f)
            .await
            .map_err(io_err("spdy write"))
    }

    /// Sends data on a stream (FIN when `fin`).
    pub async fn data(&mut self, stream: u32, data: &[u8], fin: bool) -> Result<()> {
        let mut f = stream.to_be_bytes().to_vec();
        f.push(u8::from(fin));
        f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(data);
        self.conn
            .get_mut()
            .write_all(&f)
            .await
            .map_err(io_err("spdy write"))
    }

    /// Sends a PING with `id`.
    pub async fn ping(&mut self, id: u32) -> Result<()> {
        self.control(6, 0, &id.to_be_bytes()).await
    }

    /// The next frame; None at EOF.
    pub async fn recv(&mut self) -> Result<Option<SpdyFrame>> {
        let mut head = [0u8; 8];
        if self.conn.read_exact(&mut head).await.is_err() {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut p = vec![0u8; len];
        self.conn
            .read_exact(&mut p)
            .await
            .map_err(io_err("spdy payload"))?;
        if head[0] & 0x80 == 0 {
            return Ok(Some(SpdyFrame::Data {
                stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
                fin: head[4] & 1 != 0,
                data: p,
            }));
        }
        let ty = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(match ty {
            2 => SpdyFrame::Reply(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff),
            7 => SpdyFrame::GoAway,
            t => SpdyFrame::Other(t),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [&b""[..], b"a", b"ab", b"abc", b"hello world"] {
            assert_eq!(unb64(b64(s).as_bytes()), s);
        }
        assert_eq!(b64(b"hello"), "aGVsbG8=");
    }
}
