//! Attach: the container's output as it is written, read back from its CRI log (the monitor
//! owns the container's stdio and writes every line there), split into stdout and stderr again
//! (a tty container's output all goes to stdout). Follows log rotation (ReopenContainerLog) and
//! ends when the container has exited and the log is drained. Input and terminal resizes go to
//! the monitor's attach socket (`<monitor-dir>/attach`, frames described in skiff-monitor's
//! `attach` module), which feeds the container's stdin pipe or pty; a container created
//! without stdin has no use for input, which is then discarded.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use skiff_proto::cri;

use super::{Io, Outcome};
use crate::server::State;

const POLL: Duration = Duration::from_millis(100);

pub(crate) async fn run(st: &State, req: &cri::AttachRequest, io: Io) -> Outcome {
    let ct = match st.containers.get(&req.container_id) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if ct.cri_state() != cri::ContainerState::ContainerRunning {
        return Outcome::Failed(format!("container {} is not running", ct.id));
    }
    let tty = req.tty;
    let (stdout, stderr) = (io.stdout, io.stderr);
    let resize = if tty { io.resize } else { None };
    let drain_stdin = (io.stdin.is_some() || resize.is_some()).then(|| {
        tokio::spawn(forward_input(
            ct.monitor_dir.clone(),
            io.stdin,
            resize,
            ct.config.stdin,
        ))
    });
    let mut file: Option<(std::fs::File, u64)> = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        // (Re)open when the log was rotated or truncated; at the first open, start at the end.
        let meta = std::fs::metadata(&ct.log_path).ok();
        let rotated = match (&file, &meta) {
            (None, Some(_)) => true,
            (Some((f, _)), Some(m)) => f.metadata().map(|fm| fm.ino() != m.ino()).unwrap_or(true),
            _ => false,
        };
        if rotated {
            // Drain what the old file still holds, then follow the new one from its start.
            read_some(&mut file, &mut pending);
            if let Ok(mut f) = std::fs::File::open(&ct.log_path) {
                let pos = if first {
                    f.seek(SeekFrom::End(0)).unwrap_or(0)
                } else {
                    0
                };
                first = false;
                file = Some((f, pos));
            }
        }
        let got = read_some(&mut file, &mut pending);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            if let Some((is_err, data)) = parse_cri_line(&line[..line.len() - 1]) {
                let target = if is_err && !tty { &stderr } else { &stdout };
                if let Some(tx) = target {
                    if tx.send(data).await.is_err() {
                        return Outcome::Exited(0);
                    }
                }
            }
        }
        if !got {
            let exited = st
                .containers
                .get(&ct.id)
                .map(|c| c.cri_state() != cri::ContainerState::ContainerRunning)
                .unwrap_or(true);
            if exited {
                break;
            }
            if stdout.as_ref().is_some_and(|t| t.is_closed())
                || stderr.as_ref().is_some_and(|t| t.is_closed())
            {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    if let Some(t) = drain_stdin {
        t.abort();
    }
    Outcome::Exited(0)
}

/// Frame kinds of the monitor's attach socket.
const FRAME_DATA: u8 = 0;
const FRAME_RESIZE: u8 = 1;

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(3 + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Copies the client's input and resizes to the monitor's attach socket until the client's
/// stdin ends (then the connection is closed: for a `stdinOnce` container that closes its
/// stdin). Without the socket (or a stdin) input is read and dropped, so the client never
/// blocks on a full channel.
async fn forward_input(
    monitor_dir: std::path::PathBuf,
    mut stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    mut resize: Option<tokio::sync::mpsc::Receiver<(u16, u16)>>,
    has_stdin: bool,
) {
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncWriteExt;
    // Through /proc/self/fd: the state path may be longer than a socket address allows.
    let mut conn = match std::fs::File::open(&monitor_dir) {
        Ok(dir) => {
            let path = format!("/proc/self/fd/{}/attach", dir.as_raw_fd());
            tokio::net::UnixStream::connect(path).await.ok()
        }
        Err(_) => None,
    };
    if !has_stdin && resize.is_none() {
        conn = None;
    }
    loop {
        tokio::select! {
            data = async { stdin.as_mut()?.recv().await }, if stdin.is_some() => match data {
                Some(d) => {
                    if let Some(c) = conn.as_mut().filter(|_| has_stdin) {
                        for chunk in d.chunks(u16::MAX as usize) {
                            if c.write_all(&frame(FRAME_DATA, chunk)).await.is_err() {
                                conn = None;
                                break;
                            }
                        }
                    }
                }
                None => {
                    stdin = None;
                    if has_stdin {
                        if let Some(mut c) = conn.take() {
                            let _ = c.shutdown().await;
                        }
                        return;
                    }
                }
            },
            size = async { resize.as_mut()?.recv().await }, if resize.is_some() => match size {
                Some((w, h)) => {
                    if let Some(c) = conn.as_mut() {
                        let mut p = w.to_be_bytes().to_vec();
                        p.extend_from_slice(&h.to_be_bytes());
                        if c.write_all(&frame(FRAME_RESIZE, &p)).await.is_err() {
                            conn = None;
                        }
                    }
                }
                None => resize = None,
            },
            else => return,
        }
    }
}

/// Reads what was appended since the last call; true when something was read.
fn read_some(file: &mut Option<(std::fs::File, u64)>, out: &mut Vec<u8>) -> bool {
    let Some((f, pos)) = file.as_mut() else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *pos {
        *pos = 0; // truncated
    }
    if len == *pos || f.seek(SeekFrom::Start(*pos)).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    match f.by_ref().take(1 << 20).read_to_end(&mut buf) {
        Ok(n) if n > 0 => {
            *pos += n as u64;
            out.extend_from_slice(&buf);
            true
        }
        _ => false,
    }
}

/// `<time> <stream> <P|F> <content>` -> (is stderr, content with its newline for `F`).
fn parse_cri_line(line: &[u8]) -> Option<(bool, Vec<u8>)> {
    let mut it = line.splitn(4, |b| *b == b' ');
    let _ts = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    let content = it.next().unwrap_or(&[]);
    let mut data = content.to_vec();
    if tag == b"F" {
        data.push(b'\n');
    }
    Some((stream == b"stderr", data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_log_lines() {
        assert_eq!(
            parse_cri_line(b"2024-01-01T00:00:00.1Z stdout F hello world"),
            Some((false, b"hello world\n".to_vec()))
        );
        assert_eq!(
            parse_cri_line(b"2024-01-01T00:00:00.1Z stderr P part"),
            Some((true, b"part".to_vec()))
        );
        assert_eq!(parse_cri_line(b"garbage"), None);
    }
}
