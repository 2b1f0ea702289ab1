//! WebSocket (RFC 6455) server side, as much as the Kubernetes channel protocols need:
//! the handshake answer, masked client frames in, unmasked frames out, fragmentation, ping/pong
//! and close. Channel protocols (`v5.channel.k8s.io`, `v4.channel.k8s.io`, their `base64.`
//! variants, `portforward` channels) put the channel number in the first byte of each message
//! (an ASCII digit in the base64 variants, whose payload is base64 text).

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest message accepted from a client (stdin chunks and resize events are small).
const MAX_MESSAGE: usize = 16 << 20;

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One server frame (never masked).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Sends channel messages; cheap to clone. Messages are queued to one writer task.
#[derive(Clone)]
pub(crate) struct WsSender {
    tx: mpsc::Sender<Vec<u8>>,
    base64: bool,
}

impl WsSender {
    /// Sends `data` on channel `ch`; false once the connection is gone.
    pub(crate) async fn send(&self, ch: u8, data: &[u8]) -> bool {
        let msg = if self.base64 {
            let mut m = vec![b'0' + ch];
            m.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .as_bytes(),
            );
            frame(OP_TEXT, &m)
        } else {
            let mut m = Vec::with_capacity(data.len() + 1);
            m.push(ch);
            m.extend_from_slice(data);
            frame(OP_BINARY, &m)
        };
        self.tx.send(msg).await.is_ok()
    }

    /// Sends a normal close frame; the writer stops after it.
    pub(crate) async fn close(&self) {
        let _ = self.tx.send(frame(OP_CLOSE, &1000u16.to_be_bytes())).await;
    }
}

/// Receives channel messages.
pub(crate) struct WsReceiver<R> {
    rd: R,
    pong: mpsc::Sender<Vec<u8>>,
    base64: bool,
}

impl<R: AsyncRead + Unpin> WsReceiver<R> {
    /// The next `(channel, payload)`; None at close or EOF (or a protocol error).
    pub(crate) async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let (op, data) = match self.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return None,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket read");
                    return None;
                }
            };
            match op {
                OP_BINARY if !self.base64 => {
                    let (&ch, rest) = data.split_first()?;
                    return Some((ch, rest.to_vec()));
                }
                OP_TEXT | OP_BINARY => {
                    let (&ch, rest) = data.split_first()?;
                    if !ch.is_ascii_digit() {
                        continue;
                    }
                    let payload = base64::engine::general_purpose::STANDARD
                        .decode(rest)
                        .ok()?;
                    return Some((ch - b'0', payload));
                }
                _ => continue,
            }
        }
    }

    /// One whole data message (fragments joined), answering pings on the way.
    async fn message(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let mut msg: Option<(u8, Vec<u8>)> = None;
        loop {
            let mut head = [0u8; 2];
            if let Err(e) = self.rd.read_exact(&mut head).await {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    return Ok(None);
                }
                return Err(e);
            }
            let fin = head[0] & 0x80 != 0;
            let op = head[0] & 0x0f;
            let masked = head[1] & 0x80 != 0;
            let len = match head[1] & 0x7f {
                126 => self.rd.read_u16().await? as usize,
                127 => self.rd.read_u64().await? as usize,
                n => n as usize,
            };
            if len > MAX_MESSAGE {
                return Err(std::io::Error::other("websocket frame too large"));
            }
            let mut mask = [0u8; 4];
            if masked {
                self.rd.read_exact(&mut mask).await?;
            }
            let mut payload = vec![0u8; len];
            self.rd.read_exact(&mut payload).await?;
            if masked {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            match op {
                OP_CLOSE => {
                    let _ = self
                        .pong
                        .send(frame(OP_CLOSE, &payload[..payload.len().min(2)]))
                        .await;
                    return Ok(None);
                }
                OP_PING => {
                    let _ = self.pong.send(frame(OP_PONG, &payload)).await;
                    continue;
                }
                OP_PONG => continue,
                OP_CONT => match msg.as_mut() {
                    Some((_, buf)) => {
                        if buf.len() + payload.len() > MAX_MESSAGE {
                            return Err(std::io::Error::other("websocket message too large"));
                        }
                        buf.extend_from_slice(&payload);
                    }
                    None => return Err(std::io::Error::other("continuation without a start")),
                },
                _ => msg = Some((op, payload)),
            }
            if fin {
                if let Some(m) = msg.take() {
                    return Ok(Some(m));
                }
            }
        }
    }
}

/// Splits an upgraded connection into a sender (backed by a writer task) and a receiver.
pub(crate) fn split<S>(io: S, base64: bool) -> (WsSender, WsReceiver<tokio::io::ReadHalf<S>>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            let close = f.first() == Some(&(0x80 | OP_CLOSE));
            if wr.write_all(&f).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            if close {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    (
        WsSender {
            tx: tx.clone(),
            base64,
        },
        WsReceiver {
            rd,
            pong: tx,
            base64,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_use_extended_lengths() {
        assert_eq!(frame(OP_BINARY, &[1, 2])[..2], [0x82, 2]);
        let f = frame(OP_BINARY, &[0u8; 300]);
        assert_eq!(f[..4], [0x82, 126, 1, 44]);
        let f = frame(OP_BINARY, &vec![0u8; 70000]);
        assert_eq!(f[1], 127);
    }

    #[tokio::test]
    async fn reads_masked_fragmented_messages_and_answers_pings() {
        let (client, server) = tokio::io::duplex(4096);
        let (_tx, mut rx) = split(server, false);
        let (mut crd, mut cwr) = tokio::io::split(client);
        let masked = |fin_op: u8, data: &[u8]| {
            let mask = [1u8, 2, 3, 4];
            let mut f = vec![fin_op, 0x80 | data.len() as u8];
            f.extend_from_slice(&mask);
            f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        cwr.write_all(&masked(OP_BINARY, &[0, b'a'])).await.unwrap();
        cwr.write_all(&masked(0x80 | OP_PING, b"hi")).await.unwrap();
        cwr.write_all(&masked(0x80 | OP_CONT, b"bc")).await.unwrap();
        assert_eq!(rx.next().await, Some((0, b"abc".to_vec())));
        let mut pong = [0u8; 4];
        crd.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x80 | OP_PONG, 2, b'h', b'i']);
        cwr.write_all(&masked(0x80 | OP_CLOSE, &[3, 232]))
            .await
            .unwrap();
        assert_eq!(rx.next().await, None);
    }
}
