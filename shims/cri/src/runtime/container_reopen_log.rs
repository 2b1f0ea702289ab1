//! ReopenContainerLog: the kubelet renamed the container's log file (rotation); SIGUSR1 makes
//! the container's monitor open the path again, creating a fresh file. Returns once the new file
//! exists.

use std::time::Duration;

use nix::sys::signal::Signal;
use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;

pub(crate) async fn reopen(st: &State, id: &str) -> Result<cri::ReopenContainerLogResponse> {
    let ct = st.containers.get(id)?;
    if ct.cri_state() != cri::ContainerState::ContainerRunning {
        return Err(CriError::FailedPrecondition(format!(
            "container {id} is not running: only a running container's log can be reopened"
        )));
    }
    let pid_file = ct.monitor_dir.join("monitor.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            CriError::Monitor(format!(
                "container {id} has no monitor pid in {}",
                pid_file.display()
            ))
        })?;
    let is_monitor = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("skiff-monitor"))
        .unwrap_or(false);
    if !is_monitor {
        return Err(CriError::Monitor(format!(
            "the monitor of container {id} (pid {pid}) is gone: its log cannot be reopened"
        )));
    }
    crate::sys::signal(pid, Signal::SIGUSR1)?;
    for _ in 0..250 {
        if ct.log_path.exists() {
            return Ok(cri::ReopenContainerLogResponse {});
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(CriError::Monitor(format!(
        "the monitor of container {id} did not reopen {} within 5s",
        ct.log_path.display()
    )))
}
