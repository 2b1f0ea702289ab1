//! Calls to the runc-compatible OCI runtime binary (`start`, `kill`, `delete`).

use std::process::Stdio;
use std::time::Duration;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::container::Container;

async fn run(st: &State, ct: &Container, verb: &'static str, args: &[&str]) -> Result<()> {
    let id = ct.id.as_str();
    let rt = st.cfg.handler(&ct.runtime_handler)?;
    let mut cmd = tokio::process::Command::new(&rt.binary);
    cmd.arg("--root").arg(rt.root()).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| CriError::Runtime {
        verb,
        id: id.to_string(),
        message: format!("cannot run {}: {e}", rt.binary.display()),
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

pub(crate) async fn start(st: &State, ct: &Container) -> Result<()> {
    run(st, ct, "start", &["start", &ct.id]).await
}

pub(crate) async fn kill(st: &State, ct: &Container, signal: &str) -> Result<()> {
    run(st, ct, "kill", &["kill", &ct.id, signal]).await
}

pub(crate) async fn delete(st: &State, ct: &Container) -> Result<()> {
    run(st, ct, "delete", &["delete", "--force", &ct.id]).await
}
