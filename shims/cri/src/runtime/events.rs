//! GetContainerEvents: lifecycle events (CREATED, STARTED, STOPPED, DELETED) of containers and
//! sandboxes (a sandbox's events carry its own id, as containerd's do), each with the pod's
//! sandbox status and container statuses, broadcast to every subscriber.
//!
//! Exits happen in the monitors, so a watcher polls the running containers' exit records every
//! 200 ms to send STOPPED. It also settles a container whose monitor died with it (no exit
//! record, neither process alive): exit code 255, as at a server restart.

use std::time::Duration;

use skiff_proto::cri;

use crate::server::State;
use crate::store::container::Container;

const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Publishes one event (a no-op without subscribers).
pub(crate) fn emit(st: &State, id: &str, sandbox_id: &str, kind: cri::ContainerEventType) {
    if st.events.receiver_count() == 0 {
        return;
    }
    let pod_sandbox_status = st
        .sandboxes
        .get(sandbox_id)
        .ok()
        .map(|sb| super::sandbox_status::to_status(&sb));
    let containers_statuses = st
        .containers
        .list()
        .into_iter()
        .filter(|c| c.sandbox_id == sandbox_id)
        .map(|c| super::container_status::to_status(st, &c))
        .collect();
    let _ = st.events.send(cri::ContainerEventResponse {
        container_id: id.to_string(),
        container_event_type: kind as i32,
        created_at: crate::util::now_nanos(),
        pod_sandbox_status,
        containers_statuses,
    });
}

/// Sends STOPPED for `ct` once, when it has exited.
pub(crate) fn note_stopped(st: &State, ct: &Container) {
    if ct.exit_info().is_none() && ct.start_error.is_none() {
        return;
    }
    let first = st
        .stopped_reported
        .lock()
        .expect("stopped set poisoned")
        .insert(ct.id.clone());
    if first {
        emit(
            st,
            &ct.id,
            &ct.sandbox_id,
            cri::ContainerEventType::ContainerStoppedEvent,
        );
    }
}

fn monitor_alive(ct: &Container) -> bool {
    std::fs::read_to_string(ct.monitor_dir.join("monitor.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(crate::sys::proc_stat)
        .is_some_and(|(_, state)| state != 'Z' && state != 'X')
}

/// Watches for container exits until the task is aborted.
pub(crate) async fn watch(st: std::sync::Arc<State>) {
    {
        let mut seen = st.stopped_reported.lock().expect("stopped set poisoned");
        seen.extend(
            st.containers
                .list()
                .into_iter()
                .filter(|c| c.exit_info().is_some() || c.start_error.is_some())
                .map(|c| c.id),
        );
    }
    let mut ticks: u32 = 0;
    let mut idle_trim = crate::sys::IdleTrim::default();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        ticks = ticks.wrapping_add(1);
        if st.cfg.trim_when_idle && ticks.is_multiple_of(5) {
            // Every second: once 2 s passed without a call, give back heap and code pages.
            idle_trim.tick(std::time::Duration::from_secs(2));
        } else if ticks.is_multiple_of(50) {
            // Every 10 s: give back what pulls and pod churn freed.
            skiff_memtrim::trim_heap();
        }
        let all = st.containers.list();
        st.stopped_reported
            .lock()
            .expect("stopped set poisoned")
            .retain(|id| all.iter().any(|c| &c.id == id));
        for ct in all {
            let reported = st
                .stopped_reported
                .lock()
                .expect("stopped set poisoned")
                .contains(&ct.id);
            if reported || ct.pid <= 0 || ct.start_error.is_some() {
                continue;
            }
            if ct.exit_info().is_none() {
                let gone = if ct.pid_start_time == 0 {
                    crate::sys::proc_stat(ct.pid).is_none()
                } else {
                    !crate::sys::alive(ct.pid, ct.pid_start_time)
                };
                if !gone || monitor_alive(&ct) {
                    continue;
                }
                // Both gone, nothing recorded: re-check once the monitor had its chance.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if ct.exit_info().is_none() {
                    tracing::warn!(container = %ct.id, "container and its monitor died without an exit record");
                    let exit = crate::store::container::ExitInfo {
                        oom_killed: false,
                        exit_code: 255,
                        signal: None,
                        finished_at: chrono::Utc::now()
                            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                    };
                    let _ = crate::util::write_json_atomic(&ct.monitor_dir.join("exit"), &exit);
                }
            }
            note_stopped(&st, &ct);
        }
    }
}
