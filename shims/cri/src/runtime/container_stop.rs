//! StopContainer: the stop signal, wait up to `timeout` seconds, then SIGKILL.

use std::time::Duration;

use nix::sys::signal::Signal;
use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::container::Container;

pub(crate) async fn stop_by_id(
    st: &State,
    id: &str,
    timeout: i64,
) -> Result<cri::StopContainerResponse> {
    let ct = match st.containers.get(id) {
        Ok(c) => c,
        Err(CriError::NotFound { .. }) => return Ok(cri::StopContainerResponse {}),
        Err(e) => return Err(e),
    };
    let _guard = st.lock(&ct.id).await;
    stop(st, &ct, timeout).await?;
    Ok(cri::StopContainerResponse {})
}

/// Stops a container if it still runs; returns once the monitor has recorded its exit.
pub(crate) async fn stop(st: &State, ct: &Container, timeout: i64) -> Result<()> {
    let r = stop_inner(st, ct, timeout).await;
    super::events::note_stopped(st, ct);
    r
}

async fn stop_inner(st: &State, ct: &Container, timeout: i64) -> Result<()> {
    if ct.exit_info().is_some() || ct.pid <= 0 {
        return Ok(());
    }
    if timeout > 0 {
        let sig = stop_signal(st, ct);
        tracing::debug!(container = %ct.id, signal = %sig, "stopping container");
        send(st, ct, &sig).await;
        if wait_exit(ct, Duration::from_secs(timeout as u64)).await {
            return Ok(());
        }
    }
    send(st, ct, "SIGKILL").await;
    if wait_exit(ct, Duration::from_secs(10)).await {
        return Ok(());
    }
    Err(CriError::Runtime {
        verb: "kill",
        id: ct.id.clone(),
        message: "the container did not exit within 10s of SIGKILL".into(),
    })
}

fn stop_signal(st: &State, ct: &Container) -> String {
    st.images
        .get(ct.image_id.strip_prefix("sha256:").unwrap_or(&ct.image_id))
        .ok()
        .map(|i| i.config.stop_signal)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "SIGTERM".to_string())
}

async fn send(st: &State, ct: &Container, sig: &str) {
    if let Err(e) = super::oci::kill(st, ct, sig).await {
        // The runtime may already consider it stopped; signal the process directly as a fallback.
        tracing::debug!(error = %e, "runtime kill failed; signalling the pid");
        let s = sig.parse::<Signal>().unwrap_or(Signal::SIGKILL);
        let _ = crate::sys::signal(ct.pid, s);
    }
}

/// Polls for the monitor's exit file.
pub(crate) async fn wait_exit(ct: &Container, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if ct.exit_info().is_some() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
