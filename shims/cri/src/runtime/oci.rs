//! Calls to the runc-compatible OCI runtime binary (`start`, `kill`, `delete`).

use std::process::Stdio;
use std::time::Duration;

use crate::error::{CriError, Result};
use crate::server::State;

async fn run(st: &State, verb: &'static str, id: &str, args: &[&str]) -> Result<()> {
    let mut cmd = tokio::process::Command::new(&st.cfg.runtime_bin);
    cmd.arg("--root").arg(&st.cfg.runtime_root).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| CriError::Runtime {
        verb,
        id: id.to_string(),
        message: format!("cannot run {}: {e}", st.cfg.runtime_bin.display()),
    })?;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| CriError::Runtime {
            verb,
            id: id.to_string(),
            message: "timed out after 60s".into(),
        })?
        .map_err(|e| CriError::Runtime {
            verb,
            id: id.to_string(),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        Err(CriError::Runtime {
            verb,
            id: id.to_string(),
            message: format!("{} ({})", msg, out.status),
        })
    }
}

pub(crate) async fn start(st: &State, id: &str) -> Result<()> {
    run(st, "start", id, &["start", id]).await
}

pub(crate) async fn kill(st: &State, id: &str, signal: &str) -> Result<()> {
    run(st, "kill", id, &["kill", id, signal]).await
}

pub(crate) async fn delete(st: &State, id: &str) -> Result<()> {
    run(st, "delete", id, &["delete", "--force", id]).await
}
