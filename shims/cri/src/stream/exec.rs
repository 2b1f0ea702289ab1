//! Exec over a stream: the runtime's runc-compatible `exec`.
//!
//! Without a tty, `RUNTIME exec --process F ID` runs with pipes; its exit status is the
//! process's. With a tty the runtime must detach and hand the pty master to a console socket,
//! so `skiff-monitor exec` runs it: it is a child subreaper, waits for the detached process and
//! exits with its status, while we receive the pty master on the console socket, copy it to the
//! client and apply resize events with TIOCSWINSZ.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use skiff_proto::cri;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Io, Outcome};
use crate::config::RuntimeHandler;
use crate::server::State;
use crate::store::container::Container;

/// How long output may keep flowing after the process exited (a background child could hold
/// the pipes forever).
const DRAIN: Duration = Duration::from_secs(2);

pub(crate) async fn run(st: &State, req: &cri::ExecRequest, io: Io) -> Outcome {
    let ct = match st.containers.get(&req.container_id) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if ct.cri_state() != cri::ContainerState::ContainerRunning {
        return Outcome::Failed(format!("container {} is not running", ct.id));
    }
    let file = match crate::runtime::write_process_file(&ct, &req.cmd, req.tty) {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let out = if req.tty {
        run_tty(st, &ct, &file, io).await
    } else {
        run_pipes(st, &ct, &file, io).await
    };
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(file.with_extension("pid"));
    out
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Copies `r` to `tx` until EOF; keeps draining when the client is gone.
async fn pump<R: AsyncRead + Unpin>(mut r: R, tx: Option<mpsc::Sender<Vec<u8>>>) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => match &tx {
                Some(tx) => {
                    let _ = tx.send(buf[..n].to_vec()).await;
                }
                None => {
                    tail.extend_from_slice(&buf[..n]);
                    let cut = tail.len().saturating_sub(4096);
                    tail.drain(..cut);
                }
            },
        }
    }
}

async fn run_pipes(st: &State, ct: &Container, file: &Path, io: Io) -> Outcome {
    let id = ct.id.as_str();
    let runtime = match st.cfg.handler(&ct.runtime_handler) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let mut child = match tokio::process::Command::new(&runtime.binary)
        .arg("--root")
        .arg(runtime.root())
        .arg("exec")
        .arg("--process")
        .arg(file)
        .arg(id)
        .stdin(if io.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if io.stdout.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot run {}: {e}", runtime.binary.display())),
    };
    let stdin_task = match (io.stdin, child.stdin.take()) {
        (Some(mut rx), Some(mut w)) => Some(tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                if w.write_all(&d).await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        })),
        _ => None,
    };
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(pump(s, io.stdout)));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(pump(s, io.stderr)));
    let status = child.wait().await;
    let drain = async {
        if let Some(o) = out {
            let _ = o.await;
        }
        match err {
            Some(e) => e.await.unwrap_or_default(),
            None => Vec::new(),
        }
    };
    let err_tail = tokio::time::timeout(DRAIN, drain).await.unwrap_or_default();
    if let Some(t) = stdin_task {
        t.abort();
    }
    match status {
        Ok(s) => {
            let code = exit_code(s);
            let text = String::from_utf8_lossy(&err_tail);
            if code != 0 && text.contains("unrecognized subcommand 'exec'") {
                return Outcome::Failed(format!("{} has no `exec` verb", runtime.binary.display()));
            }
            Outcome::Exited(code)
        }
        Err(e) => Outcome::Failed(format!("waiting for exec: {e}")),
    }
}

async fn run_tty(st: &State, ct: &Container, file: &Path, io: Io) -> Outcome {
    let runtime = match st.cfg.handler(&ct.runtime_handler) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    // Unix socket paths are short (108 bytes): keep the console socket in the temp dir.
    let sock = std::env::temp_dir().join(format!(
        "skiff-console-{}.sock",
        &crate::util::new_id()[..16]
    ));
    let listener = match tokio::net::UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => return Outcome::Failed(format!("console socket {}: {e}", sock.display())),
    };
    let result = run_tty_with(st, &runtime, &ct.id, file, &sock, listener, io).await;
    let _ = std::fs::remove_file(&sock);
    result
}

async fn run_tty_with(
    st: &State,
    runtime: &RuntimeHandler,
    id: &str,
    file: &Path,
    sock: &Path,
    listener: tokio::net::UnixListener,
    io: Io,
) -> Outcome {
    let mut child = match tokio::process::Command::new(&st.cfg.monitor_bin)
        .arg("exec")
        .arg("--runtime")
        .arg(&runtime.binary)
        .arg("--runtime-root")
        .arg(runtime.root())
        .arg("--id")
        .arg(id)
        .arg("--process")
        .arg(file)
        .arg("--console-socket")
        .arg(sock)
        .arg("--pid-file")
        .arg(file.with_extension("pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(format!("cannot run {}: {e}", st.cfg.monitor_bin.display()))
        }
    };
    let mut stderr = child.stderr.take();
    let conn = tokio::select! {
        r = listener.accept() => r,
        _ = child.wait() => {
            let mut msg = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut msg).await;
            }
            return Outcome::Failed(format!("exec with a tty failed: {}", msg.trim()));
        }
        _ = tokio::time::sleep(Duration::from_secs(60)) => {
            return Outcome::Failed("the runtime sent no terminal within 60s".into());
        }
    };
    let master = match conn {
        Ok((c, _)) => {
            let std = match c
                .into_std()
                .and_then(|s| s.set_nonblocking(false).map(|()| s))
            {
                Ok(s) => s,
                Err(e) => return Outcome::Failed(format!("console socket: {e}")),
            };
            match tokio::task::spawn_blocking(move || crate::sys::recv_fd(&std)).await {
                Ok(Ok(fd)) => fd,
                Ok(Err(e)) => return Outcome::Failed(format!("receiving the terminal: {e}")),
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
        Err(e) => return Outcome::Failed(format!("console socket: {e}")),
    };
    let file_m = std::fs::File::from(master);
    if let Err(e) = crate::sys::set_nonblocking(file_m.as_fd()) {
        return Outcome::Failed(format!("terminal: {e}"));
    }
    // SAFETY: `file_m` owns the pty master fd, which stays open (and the same) until the
    // AsyncFd, its only owner, is dropped.
    let afd = match unsafe { AsyncFd::register(file_m) } {
        Ok(a) => Arc::new(a),
        Err(e) => return Outcome::Failed(format!("terminal: {e}")),
    };
    let reader = {
        let afd = afd.clone();
        let tx = io.stdout;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let Ok(mut guard) = afd.readable().await else {
                    return;
                };
                match guard.try_io(|f| f.get_ref().read(&mut buf)) {
                    Ok(Ok(0)) | Ok(Err(_)) => return, // EIO: the last slave closed
                    Ok(Ok(n)) => {
                        if let Some(tx) = &tx {
                            let _ = tx.send(buf[..n].to_vec()).await;
                        }
                    }
                    Err(_would_block) => continue,
                }
            }
        })
    };
    let writer = {
        let afd = afd.clone();
        let stdin = io.stdin;
        let resize = io.resize;
        tokio::spawn(async move {
            let (mut stdin, mut resize) = (stdin, resize);
            loop {
                tokio::select! {
                    d = async { match stdin.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                        let Some(d) = d else {
                            // EOF on stdin: send ^D so a shell reading the terminal ends.
                            stdin = None;
                            let _ = write_all(&afd, &[4]).await;
                            continue;
                        };
                        if write_all(&afd, &d).await.is_err() {
                            return;
                        }
                    }
                    sz = async { match resize.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                        match sz {
                            Some((w, h)) => {
                                if let Err(e) = crate::sys::set_winsize(afd.get_ref().as_fd(), w, h) {
                                    tracing::debug!(error = %e, "terminal resize");
                                }
                            }
                            None => resize = None,
                        }
                    }
                }
            }
        })
    };
    let status = child.wait().await;
    let _ = tokio::time::timeout(DRAIN, reader).await;
    writer.abort();
    match status {
        Ok(s) => Outcome::Exited(exit_code(s)),
        Err(e) => Outcome::Failed(format!("waiting for exec: {e}")),
    }
}

async fn write_all(afd: &AsyncFd<std::fs::File>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = afd.writable().await?;
        match guard.try_io(|f| f.get_ref().write(data)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}
