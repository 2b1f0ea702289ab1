//! PortForward: TCP connections to `localhost:<port>` inside the pod's network namespace,
//! opened by a short-lived thread that enters the namespace (`sys::connect_in_netns`).
//! Over WebSocket each port gets a data channel (2i) and an error channel (2i+1), each opened
//! with the port as a little-endian u16, like the kubelet's.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::ws::{WsReceiver, WsSender};
use crate::server::State;

/// Connects to `port` on the loopback of sandbox `sandbox_id`.
pub(crate) async fn connect(st: &State, sandbox_id: &str, port: u16) -> Result<TcpStream, String> {
    let sb = st.sandboxes.get(sandbox_id).map_err(|e| e.to_string())?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if sb.host_network {
        return TcpStream::connect(addr).await.map_err(|e| e.to_string());
    }
    let Some(ns) = sb.ns_path("net").or_else(|| sb.netns_path.clone()) else {
        return Err(format!(
            "sandbox {} has no network namespace (is it stopped?)",
            sb.id
        ));
    };
    let s = tokio::task::spawn_blocking(move || crate::sys::connect_in_netns(&ns, addr))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connecting to port {port} in the pod: {e}"))?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    TcpStream::from_std(s).map_err(|e| e.to_string())
}

pub(crate) async fn serve_ws<R: AsyncRead + Unpin>(
    st: &State,
    sandbox_id: &str,
    ports: &[u16],
    tx: WsSender,
    mut rx: WsReceiver<R>,
) {
    let mut writers: HashMap<u8, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut readers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        tx.send(data_ch, &port.to_le_bytes()).await;
        tx.send(err_ch, &port.to_le_bytes()).await;
        let conn = match connect(st, sandbox_id, *port).await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("error forwarding port {port} to pod {sandbox_id}: {e}");
                tracing::warn!("{msg}");
                tx.send(err_ch, msg.as_bytes()).await;
                continue;
            }
        };
        let (mut rd, mut wr) = conn.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(16);
        writers.insert(data_ch, wtx);
        tokio::spawn(async move {
            while let Some(d) = wrx.recv().await {
                if wr.write_all(&d).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let t = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if !t.send(data_ch, &buf[..n]).await {
                            break;
                        }
                    }
                }
            }
        }));
    }
    let all_done = async {
        for r in readers {
            let _ = r.await;
        }
    };
    let demux = async {
        while let Some((ch, data)) = rx.next().await {
            if let Some(w) = writers.get(&ch) {
                let _ = w.send(data).await;
            }
        }
    };
    tokio::select! {
        _ = all_done => {}
        _ = demux => {}
    }
    tx.close().await;
}
