//! RuntimeService: one module per verb; this file only dispatches and maps errors at the edge.

mod container_create;
mod container_exec_sync;
mod container_list;
mod container_remove;
mod container_reopen_log;
mod container_start;
mod container_status;
mod container_stop;
mod container_update;
mod events;
mod metrics;
mod oci;
mod sandbox_list;
mod sandbox_remove;
mod sandbox_run;
mod sandbox_status;
mod sandbox_stop;
mod seccomp;
mod security;
mod spec;
mod stats;
mod status;
mod streaming;
mod userns;
mod version;

use std::pin::Pin;
use std::sync::Arc;

use skiff_proto::cri::{self, runtime_service_server::RuntimeService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::CriError;
use crate::server::State;
use crate::stream::StreamServer;

pub(crate) use container_exec_sync::write_process_file;
use cri::ContainerEventType as Ev;
pub(crate) use events::watch as watch_exits;
pub(crate) use userns::PodUserns;

pub(crate) struct RuntimeSvc {
    state: Arc<State>,
    stream: Arc<StreamServer>,
}

impl RuntimeSvc {
    pub(crate) fn new(state: Arc<State>, stream: Arc<StreamServer>) -> RuntimeSvc {
        RuntimeSvc { state, stream }
    }
}

/// Settles what a crash or reboot left behind, once at start: sandboxes caught half-made are torn
/// down and forgotten; containers whose process and monitor are gone without an exit record get
/// one (exit code 255, like containerd's "unknown" exit).
/// Sandboxes whose network attachment is still owned: a CNI cache (ADD done or under way) or
/// still being made.
fn live_attachments(st: &State) -> Vec<String> {
    st.sandboxes
        .list()
        .into_iter()
        .filter(|sb| {
            sb.state == crate::store::sandbox::SandboxState::Creating
                || st
                    .sandboxes
                    .record_dir(&sb.id)
                    .join("cni-cache.json")
                    .exists()
        })
        .map(|sb| sb.id)
        .collect()
}

/// CNI GC (spec 1.1) with every live sandbox as a valid attachment: frees addresses and rules
/// that plugins hold for pods nothing owns any more (a crash between ADD and its record).
pub(crate) async fn cni_gc(st: &State) {
    let _exclusive = st.cni_gc_lock.write().await;
    let valid = live_attachments(st);
    match sandbox_run::cni_for(st).gc(&valid).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(plugins = n, valid = valid.len(), "CNI GC done"),
        Err(e) => tracing::warn!(error = %e, "CNI GC"),
    }
}

/// Runs [`cni_gc`] every `period` (the first run is at start, from `recover`).
pub(crate) async fn cni_gc_loop(st: std::sync::Arc<State>, period: std::time::Duration) {
    loop {
        tokio::time::sleep(period).await;
        cni_gc(&st).await;
    }
}

/// Netns files nothing owns (a crash between creating the file and recording it): unmounted
/// and removed.
fn remove_orphan_netns(st: &State) {
    let owned: std::collections::HashSet<std::path::PathBuf> = st
        .sandboxes
        .list()
        .into_iter()
        .filter_map(|sb| sb.netns_path)
        .collect();
    let Ok(dir) = std::fs::read_dir(&st.cfg.netns_dir) else {
        return;
    };
    for e in dir.flatten() {
        let path = e.path();
        if owned.contains(&path) {
            continue;
        }
        tracing::info!(path = %path.display(), "removing a netns mount no sandbox owns");
        if let Err(err) = crate::sys::unmount(&path) {
            tracing::warn!(error = %err, "unmounting orphan netns");
            continue;
        }
        let _ = std::fs::remove_file(&path);
    }
}

pub(crate) async fn recover(st: &State) {
    for sb in st.sandboxes.list() {
        if sb.state == crate::store::sandbox::SandboxState::Creating {
            tracing::info!(sandbox = %sb.id, "removing sandbox left half-made by a crash");
            if let Err(e) = sandbox_stop::teardown(st, &sb).await {
                tracing::warn!(sandbox = %sb.id, error = %e, "teardown of half-made sandbox");
                continue;
            }
            // A pause started just before the crash may not be in the record yet.
            for pid in crate::sys::pause_pids_of(&st.cfg.monitor_bin, &sb.id) {
                tracing::info!(sandbox = %sb.id, pid, "killing an unrecorded pause process");
                let _ = crate::sys::signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = st.sandboxes.delete(&sb.id);
            let _ = crate::util::remove_dir_all_quiet(&st.sandboxes.record_dir(&sb.id));
        }
    }
    for ct in st.containers.list() {
        let gone = if ct.pid_start_time == 0 {
            crate::sys::proc_stat(ct.pid).is_none()
        } else {
            !crate::sys::alive(ct.pid, ct.pid_start_time)
        };
        if ct.pid <= 0 || ct.exit_info().is_some() || !gone {
            continue;
        }
        // The monitor writes the exit file right after the process ends: give it a moment.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if ct.exit_info().is_some() {
            continue;
        }
        tracing::warn!(container = %ct.id, "container process gone without an exit record");
        let exit = crate::store::container::ExitInfo {
            oom_killed: false,
            exit_code: 255,
            signal: None,
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        };
        let _ = crate::util::write_json_atomic(&ct.monitor_dir.join("exit"), &exit);
    }
    remove_orphan_netns(st);
    cni_gc(st).await;
}

type Res<T> = Result<Response<T>, Status>;

fn edge<T>(verb: &'static str, r: Result<T, CriError>) -> Res<T> {
    crate::sys::note_call();
    match r {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            tracing::warn!(verb, error = %e, "CRI call failed");
            Err(e.into())
        }
    }
}

fn unimplemented<T>(verb: &'static str) -> Res<T> {
    Err(CriError::Unimplemented(verb).into())
}

#[tonic::async_trait]
impl RuntimeService for RuntimeSvc {
    async fn version(&self, _r: Request<cri::VersionRequest>) -> Res<cri::VersionResponse> {
        Ok(Response::new(version::version()))
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Res<cri::StatusResponse> {
        edge("Status", status::status(&self.state, r.into_inner()))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Res<cri::RunPodSandboxResponse> {
        let req = r.into_inner();
        let m = req
            .config
            .as_ref()
            .and_then(|c| c.metadata.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("RunPodSandbox", pod = %m.name, namespace = %m.namespace, sandbox = tracing::field::Empty);
        let r = sandbox_run::run(&self.state, req).instrument(span).await;
        if let Ok(resp) = &r {
            let id = &resp.pod_sandbox_id;
            events::emit(&self.state, id, id, Ev::ContainerCreatedEvent);
            events::emit(&self.state, id, id, Ev::ContainerStartedEvent);
        }
        edge("RunPodSandbox", r)
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Res<cri::StopPodSandboxResponse> {
        let req = r.into_inner();
        let span = tracing::info_span!("StopPodSandbox", sandbox = %req.pod_sandbox_id);
        let known = self.state.sandboxes.get(&req.pod_sandbox_id).is_ok();
        let r = sandbox_stop::stop(&self.state, &req.pod_sandbox_id)
            .instrument(span)
            .await;
        if r.is_ok() && known {
            let id = &req.pod_sandbox_id;
            events::emit(&self.state, id, id, Ev::ContainerStoppedEvent);
        }
        edge("StopPodSandbox", r)
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Res<cri::RemovePodSandboxResponse> {
        let req = r.into_inner();
        let span = tracing::info_span!("RemovePodSandbox", sandbox = %req.pod_sandbox_id);
        let known = self.state.sandboxes.get(&req.pod_sandbox_id).is_ok();
        let r = sandbox_remove::remove(&self.state, &req.pod_sandbox_id)
            .instrument(span)
            .await;
        if r.is_ok() && known {
            let id = &req.pod_sandbox_id;
            events::emit(&self.state, id, id, Ev::ContainerDeletedEvent);
        }
        edge("RemovePodSandbox", r)
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Res<cri::PodSandboxStatusResponse> {
        edge(
            "PodSandboxStatus",
            sandbox_status::status(&self.state, r.into_inner()),
        )
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Res<cri::ListPodSandboxResponse> {
        edge(
            "ListPodSandbox",
            Ok(sandbox_list::list(&self.state, r.into_inner())),
        )
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Res<cri::CreateContainerResponse> {
        let req = r.into_inner();
        let name = req
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("CreateContainer", sandbox = %req.pod_sandbox_id, name = %name, container = tracing::field::Empty);
        let sandbox_id = req.pod_sandbox_id.clone();
        let r = container_create::create(&self.state, req)
            .instrument(span)
            .await;
        if let Ok(resp) = &r {
            events::emit(
                &self.state,
                &resp.container_id,
                &sandbox_id,
                Ev::ContainerCreatedEvent,
            );
        }
        edge("CreateContainer", r)
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Res<cri::StartContainerResponse> {
        let req = r.into_inner();
        let span = tracing::info_span!("StartContainer", container = %req.container_id);
        let r = container_start::start(&self.state, &req.container_id)
            .instrument(span)
            .await;
        if r.is_ok() {
            if let Ok(ct) = self.state.containers.get(&req.container_id) {
                events::emit(
                    &self.state,
                    &ct.id,
                    &ct.sandbox_id,
                    Ev::ContainerStartedEvent,
                );
            }
        }
        edge("StartContainer", r)
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Res<cri::StopContainerResponse> {
        let req = r.into_inner();
        let span = tracing::info_span!("StopContainer", container = %req.container_id);
        edge(
            "StopContainer",
            container_stop::stop_by_id(&self.state, &req.container_id, req.timeout)
                .instrument(span)
                .await,
        )
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Res<cri::RemoveContainerResponse> {
        let req = r.into_inner();
        let span = tracing::info_span!("RemoveContainer", container = %req.container_id);
        let sandbox_id = self
            .state
            .containers
            .get(&req.container_id)
            .ok()
            .map(|c| c.sandbox_id);
        let r = container_remove::remove_by_id(&self.state, &req.container_id)
            .instrument(span)
            .await;
        if let (Ok(_), Some(sb)) = (&r, sandbox_id) {
            events::emit(
                &self.state,
                &req.container_id,
                &sb,
                Ev::ContainerDeletedEvent,
            );
        }
        edge("RemoveContainer", r)
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Res<cri::ListContainersResponse> {
        edge(
            "ListContainers",
            Ok(container_list::list(&self.state, r.into_inner())),
        )
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Res<cri::ContainerStatusResponse> {
        edge(
            "ContainerStatus",
            container_status::status(&self.state, r.into_inner()),
        )
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Res<cri::UpdateContainerResourcesResponse> {
        let req = r.into_inner();
        let span = tracing::info_span!("UpdateContainerResources", container = %req.container_id);
        edge(
            "UpdateContainerResources",
            container_update::update(&self.state, req)
                .instrument(span)
                .await,
        )
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Res<cri::ReopenContainerLogResponse> {
        let req = r.into_inner();
        edge(
            "ReopenContainerLog",
            container_reopen_log::reopen(&self.state, &req.container_id).await,
        )
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Res<cri::ExecSyncResponse> {
        let req = r.into_inner();
        let span = tracing::info_span!("ExecSync", container = %req.container_id);
        edge(
            "ExecSync",
            container_exec_sync::exec_sync(&self.state, req)
                .instrument(span)
                .await,
        )
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Res<cri::ExecResponse> {
        edge(
            "Exec",
            streaming::exec(&self.state, &self.stream, r.into_inner()),
        )
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Res<cri::AttachResponse> {
        edge(
            "Attach",
            streaming::attach(&self.state, &self.stream, r.into_inner()),
        )
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Res<cri::PortForwardResponse> {
        edge(
            "PortForward",
            streaming::port_forward(&self.state, &self.stream, r.into_inner()),
        )
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Res<cri::ContainerStatsResponse> {
        edge(
            "ContainerStats",
            stats::container(&self.state, r.into_inner()),
        )
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Res<cri::ListContainerStatsResponse> {
        Ok(Response::new(stats::list_containers(
            &self.state,
            r.into_inner(),
        )))
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Res<cri::PodSandboxStatsResponse> {
        edge(
            "PodSandboxStats",
            stats::sandbox(&self.state, r.into_inner()),
        )
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Res<cri::ListPodSandboxStatsResponse> {
        Ok(Response::new(stats::list_sandboxes(
            &self.state,
            r.into_inner(),
        )))
    }

    async fn update_runtime_config(
        &self,
        _r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Res<cri::UpdateRuntimeConfigResponse> {
        // The pod CIDR arrives here; our CNI config is written by `skiff server`, so nothing to do.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse::default()))
    }

    async fn checkpoint_container(
        &self,
        _r: Request<cri::CheckpointContainerRequest>,
    ) -> Res<cri::CheckpointContainerResponse> {
        unimplemented("CheckpointContainer")
    }

    type GetContainerEventsStream = Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> Res<Self::GetContainerEventsStream> {
        use tokio_stream::StreamExt;
        let rx = self.state.events.subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| match e {
            Ok(ev) => Some(Ok(ev)),
            Err(lagged) => {
                tracing::warn!(error = %lagged, "a container event subscriber fell behind");
                None
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Res<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(metrics::descriptors()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Res<cri::ListPodSandboxMetricsResponse> {
        Ok(Response::new(metrics::list(&self.state)))
    }

    async fn runtime_config(
        &self,
        _r: Request<cri::RuntimeConfigRequest>,
    ) -> Res<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: if self.state.cfg.systemd_cgroup {
                    cri::CgroupDriver::Systemd as i32
                } else {
                    cri::CgroupDriver::Cgroupfs as i32
                },
            }),
        }))
    }
}
