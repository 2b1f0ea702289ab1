//! StopPodSandbox: stop containers, CNI DEL (reverse order), kill pause, drop the netns mount.

use std::time::Duration;

use nix::sys::signal::Signal;
use skiff_proto::cri;

use crate::cni::{CniCache, PodRef};
use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::sandbox::{Sandbox, SandboxState};
use crate::util::read_json;

use super::sandbox_run::cni_for;

pub(crate) async fn stop(st: &State, id: &str) -> Result<cri::StopPodSandboxResponse> {
    let sb = match st.sandboxes.get(id) {
        Ok(sb) => sb,
        // Stopping what is gone is fine (the kubelet retries after restarts).
        Err(CriError::NotFound { .. }) => return Ok(cri::StopPodSandboxResponse {}),
        Err(e) => return Err(e),
    };
    let _guard = st.lock(&sb.id).await;
    teardown(st, &sb).await?;
    st.sandboxes
        .update(&sb.id, |s| s.state = SandboxState::NotReady)?;
    tracing::info!("sandbox stopped");
    Ok(cri::StopPodSandboxResponse {})
}

/// Undoes whatever part of a sandbox exists; safe to call repeatedly and on half-made sandboxes.
pub(crate) async fn teardown(st: &State, sb: &Sandbox) -> Result<()> {
    for ct in st
        .containers
        .list()
        .into_iter()
        .filter(|c| c.sandbox_id == sb.id)
    {
        super::container_stop::stop(st, &ct, 0).await?;
    }

    let dir = st.sandboxes.record_dir(&sb.id);
    let cache_path = dir.join("cni-cache.json");
    if cache_path.exists() {
        let cache: CniCache = read_json(&cache_path)?;
        let meta = sb.metadata();
        let pod = PodRef {
            namespace: &meta.namespace,
            name: &meta.name,
            uid: &meta.uid,
            sandbox_id: &sb.id,
        };
        let netns = sb.netns_path.as_deref().filter(|p| p.exists());
        cni_for(st).del(&pod, netns, &cache).await?;
        std::fs::remove_file(&cache_path).map_err(CriError::io("removing", &cache_path))?;
    }

    stop_pause(st, sb).await;
    crate::cgroups::remove(&crate::cgroups::sandbox_path(sb));

    crate::sys::unmount(&dir.join("shm"))?;

    if let Some(netns) = &sb.netns_path {
        crate::sys::unmount(netns)?;
        match std::fs::remove_file(netns) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CriError::io("removing netns file", netns.as_path())(e)),
        }
    }
    Ok(())
}

async fn stop_pause(st: &State, sb: &Sandbox) {
    let child = st
        .pause_children
        .lock()
        .expect("pause map poisoned")
        .remove(&sb.id);
    if let Some(mut child) = child {
        // The pod monitor (the pause itself, or with a PID namespace the pause's parent, whose
        // death kills the pause): then make sure the pause is gone too.
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    if sb.pause_pid <= 0 || !crate::sys::alive(sb.pause_pid, sb.pause_start_time) {
        return;
    }
    // Not our child (the server restarted): signal and poll until it is gone.
    let _ = crate::sys::signal(sb.pause_pid, Signal::SIGKILL);
    for _ in 0..250 {
        if !crate::sys::alive(sb.pause_pid, sb.pause_start_time) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(
        pid = sb.pause_pid,
        "pause process did not exit after SIGKILL"
    );
}
