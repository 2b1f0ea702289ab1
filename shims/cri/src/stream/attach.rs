//! Attach: the container's output as it is written, read back from its CRI log (the monitor
//! owns the container's stdio and writes every line there), split into stdout and stderr again
//! (a tty container's output all goes to stdout). Follows log rotation (ReopenContainerLog) and
//! ends when the container has exited and the log is drained. The container's stdin is
//! `/dev/null` (see docs/cri.md), so client input is discarded.

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
    // Input is discarded, but read so the client never blocks on a full channel.
    let drain_stdin = io
        .stdin
        .map(|mut rx| tokio::spawn(async move { while rx.recv().await.is_some() {} }));
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
