//! The kubelet's view of a CRI runtime: a small trait over the runtime.v1 calls the kubelet makes,
//! with the real implementation ([`GrpcCri`]: tonic over a unix socket).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use skiff_proto::cri;
use skiff_proto::cri::image_service_client::ImageServiceClient;
use skiff_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::CriError;

/// Label keys the kubelet puts on sandboxes and containers (the ones upstream's kubelet uses).
pub mod labels {
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
}

/// The CRI calls the kubelet needs. Every method is one runtime.v1 RPC.
pub trait CriRuntime: Send + Sync + 'static {
    fn version(&self) -> impl Future<Output = Result<cri::VersionResponse, CriError>> + Send;
    /// The runtime's cgroup driver (`RuntimeConfig`); None when the runtime does not say
    /// (an older CRI without the call).
    fn cgroup_driver(
        &self,
    ) -> impl Future<Output = Result<Option<cri::CgroupDriver>, CriError>> + Send {
        async { Ok(None) }
    }
    fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    fn stop_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    fn remove_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<cri::PodSandboxStatus, CriError>> + Send;
    fn list_pod_sandbox(
        &self,
        label_selector: HashMap<String, String>,
    ) -> impl Future<Output = Result<Vec<cri::PodSandbox>, CriError>> + Send;
    fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    fn stop_container(
        &self,
        id: &str,
        timeout_secs: i64,
    ) -> impl Future<Output = Result<(), CriError>> + Send;
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    /// Containers matching the sandbox id (if not empty) and the labels.
    fn list_containers(
        &self,
        sandbox_id: &str,
        label_selector: HashMap<String, String>,
    ) -> impl Future<Output = Result<Vec<cri::Container>, CriError>> + Send;
    fn container_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<cri::ContainerStatus, CriError>> + Send;
    /// Whether the image is present (its id), `None` if not.
    fn image_status(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<cri::Image>, CriError>> + Send;
    /// Pulls an image, returns its image ref.
    fn pull_image(
        &self,
        image: &str,
        sandbox_config: cri::PodSandboxConfig,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    /// Pulls an image with registry credentials (imagePullSecrets). Runtimes without
    /// credential support (the fake) pull as [`CriRuntime::pull_image`].
    fn pull_image_auth(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        sandbox_config: cri::PodSandboxConfig,
    ) -> impl Future<Output = Result<String, CriError>> + Send {
        let _ = auth;
        self.pull_image(image, sandbox_config)
    }
    /// Every image the runtime has (ListImages); empty for runtimes that do not say.
    fn list_images(&self) -> impl Future<Output = Result<Vec<cri::Image>, CriError>> + Send {
        async { Ok(vec![]) }
    }
    /// Removes an image by id (RemoveImage).
    fn remove_image(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send {
        let _ = id;
        async { Ok(()) }
    }
    /// The image filesystems (ImageFsInfo); empty for runtimes that do not say.
    fn image_fs_info(
        &self,
    ) -> impl Future<Output = Result<Vec<cri::FilesystemUsage>, CriError>> + Send {
        async { Ok(vec![]) }
    }
    /// Runs `cmd` in the container and waits up to `timeout_secs`: (exit code, stdout+stderr).
    fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> impl Future<Output = Result<(i32, Vec<u8>), CriError>> + Send;
    /// The runtime's container event stream (GetContainerEvents).
    fn container_events(&self) -> impl Future<Output = Result<EventStream, CriError>> + Send;
    /// A streaming-server URL for an exec session.
    fn exec(&self, req: cri::ExecRequest) -> impl Future<Output = Result<String, CriError>> + Send;
    /// A streaming-server URL for an attach session.
    fn attach(
        &self,
        req: cri::AttachRequest,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    /// A streaming-server URL for a port-forward session.
    fn port_forward(
        &self,
        req: cri::PortForwardRequest,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    /// ListContainerStats of every container (the monitoring endpoints); runtimes without
    /// stats answer empty.
    fn list_container_stats(
        &self,
    ) -> impl Future<Output = Result<Vec<cri::ContainerStats>, CriError>> + Send {
        async { Ok(Vec::new()) }
    }
    /// ListPodSandboxStats of every sandbox.
    fn list_pod_sandbox_stats(
        &self,
    ) -> impl Future<Output = Result<Vec<cri::PodSandboxStats>, CriError>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// Stops every running container of the pod `uid` at once, each with `grace` seconds, and
/// returns when every stop has returned. Failures are logged; `why` says what the pod is
/// stopped for (node shutdown, eviction, deletion).
pub async fn stop_running_containers<R: CriRuntime>(cri: &R, uid: &str, grace: i64, why: &str) {
    let sel = HashMap::from([(labels::POD_UID.to_string(), uid.to_string())]);
    let running = cri::ContainerState::ContainerRunning as i32;
    match cri.list_containers("", sel).await {
        Ok(list) => {
            let stops = list
                .iter()
                .filter(|c| c.state == running)
                .map(|c| cri.stop_container(&c.id, grace));
            for r in futures::future::join_all(stops).await {
                if let Err(e) = r {
                    tracing::warn!(error = %e, why, "StopContainer failed");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, why, "cannot list the containers of a pod to stop"),
    }
}

/// A stream of CRI container events.
pub type EventStream =
    futures::stream::BoxStream<'static, Result<cri::ContainerEventResponse, CriError>>;

/// CRI over gRPC on a unix socket. Cheap to clone; the channel reconnects by itself.
#[derive(Clone, Debug)]
pub struct GrpcCri {
    endpoint: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

impl GrpcCri {
    /// Makes a lazily connecting client for the socket `path` (connects on the first call).
    pub fn new(path: &Path) -> Result<Self, CriError> {
        let socket = path.to_path_buf();
        // The URI is ignored by the connector; tonic needs a syntactically valid one.
        let endpoint = Endpoint::try_from("http://[::]:50051")
            .map_err(|e| CriError::Connect {
                endpoint: socket.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300));
        let sock = socket.clone();
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&sock).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }));
        Ok(Self {
            endpoint: socket,
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        })
    }

    /// The socket path.
    pub fn endpoint(&self) -> &Path {
        &self.endpoint
    }

    fn err(&self, op: &'static str, status: tonic::Status) -> CriError {
        // Transport failures (no socket, refused, reset) surface as Unavailable.
        if status.code() == tonic::Code::Unavailable {
            return CriError::Connect {
                endpoint: self.endpoint.clone(),
                message: status.message().to_string(),
            };
        }
        CriError::call(op, status)
    }
}

impl CriRuntime for GrpcCri {
    async fn cgroup_driver(&self) -> Result<Option<cri::CgroupDriver>, CriError> {
        match self
            .runtime
            .clone()
            .runtime_config(cri::RuntimeConfigRequest {})
            .await
        {
            Ok(r) => Ok(r
                .into_inner()
                .linux
                .and_then(|l| cri::CgroupDriver::try_from(l.cgroup_driver).ok())),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
            Err(s) => Err(self.err("RuntimeConfig", s)),
        }
    }

    async fn version(&self) -> Result<cri::VersionResponse, CriError> {
        let r = self
            .runtime
            .clone()
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(|s| self.err("Version", s))?;
        Ok(r.into_inner())
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String, CriError> {
        let r = self
            .runtime
            .clone()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|s| self.err("RunPodSandbox", s))?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.runtime
            .clone()
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(|s| self.err("StopPodSandbox", s))?;
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.runtime
            .clone()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(|s| self.err("RemovePodSandbox", s))?;
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, CriError> {
        let r = self
            .runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(|s| self.err("PodSandboxStatus", s))?;
        r.into_inner()
            .status
            .ok_or_else(|| CriError::not_found("PodSandboxStatus", format!("sandbox {id}")))
    }

    async fn list_pod_sandbox(
        &self,
        label_selector: HashMap<String, String>,
    ) -> Result<Vec<cri::PodSandbox>, CriError> {
        let r = self
            .runtime
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector,
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| self.err("ListPodSandbox", s))?;
        Ok(r.into_inner().items)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let r = self
            .runtime
            .clone()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .map_err(|s| self.err("CreateContainer", s))?;
        Ok(r.into_inner().container_id)
    }

    async fn start_container(&self, id: &str) -> Result<(), CriError> {
        self.runtime
            .clone()
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(|s| self.err("StartContainer", s))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), CriError> {
        self.runtime
            .clone()
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout: timeout_secs,
            })
            .await
            .map_err(|s| self.err("StopContainer", s))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        self.runtime
            .clone()
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(|s| self.err("RemoveContainer", s))?;
        Ok(())
    }

    async fn list_containers(
        &self,
        sandbox_id: &str,
        label_selector: HashMap<String, String>,
    ) -> Result<Vec<cri::Container>, CriError> {
        let r = self
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: sandbox_id.into(),
                    label_selector,
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| self.err("ListContainers", s))?;
        Ok(r.into_inner().containers)
    }

    async fn list_container_stats(&self) -> Result<Vec<cri::ContainerStats>, CriError> {
        let r = self
            .runtime
            .clone()
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await
            .map_err(|s| self.err("ListContainerStats", s))?;
        Ok(r.into_inner().stats)
    }

    async fn list_pod_sandbox_stats(&self) -> Result<Vec<cri::PodSandboxStats>, CriError> {
        let r = self
            .runtime
            .clone()
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
            .await
            .map_err(|s| self.err("ListPodSandboxStats", s))?;
        Ok(r.into_inner().stats)
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, CriError> {
        let r = self
            .runtime
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(|s| self.err("ContainerStatus", s))?;
        r.into_inner()
            .status
            .ok_or_else(|| CriError::not_found("ContainerStatus", format!("container {id}")))
    }

    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, CriError> {
        let r = self
            .image
            .clone()
            .image_status(cri::ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            })
            .await
            .map_err(|s| self.err("ImageStatus", s))?;
        Ok(r.into_inner().image)
    }

    async fn pull_image(
        &self,
        image: &str,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        self.pull_image_auth(image, None, sandbox_config).await
    }

    async fn pull_image_auth(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let r = self
            .image
            .clone()
            .pull_image(cri::PullImageRequest {
                image: Some(image_spec(image)),
                auth,
                sandbox_config: Some(sandbox_config),
            })
            .await
            .map_err(|s| self.err("PullImage", s))?;
        Ok(r.into_inner().image_ref)
    }

    async fn list_images(&self) -> Result<Vec<cri::Image>, CriError> {
        let r = self
            .image
            .clone()
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .map_err(|s| self.err("ListImages", s))?;
        Ok(r.into_inner().images)
    }

    async fn remove_image(&self, id: &str) -> Result<(), CriError> {
        self.image
            .clone()
            .remove_image(cri::RemoveImageRequest {
                image: Some(image_spec(id)),
            })
            .await
            .map_err(|s| self.err("RemoveImage", s))?;
        Ok(())
    }

    async fn image_fs_info(&self) -> Result<Vec<cri::FilesystemUsage>, CriError> {
        let r = self
            .image
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .map_err(|s| self.err("ImageFsInfo", s))?;
        Ok(r.into_inner().image_filesystems)
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> Result<(i32, Vec<u8>), CriError> {
        let r = self
            .runtime
            .clone()
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd,
                timeout: timeout_secs,
            })
            .await
            .map_err(|s| self.err("ExecSync", s))?
            .into_inner();
        let mut out = r.stdout;
        out.extend_from_slice(&r.stderr);
        Ok((r.exit_code, out))
    }

    async fn container_events(&self) -> Result<EventStream, CriError> {
        use futures::StreamExt;
        let r = self
            .runtime
            .clone()
            .get_container_events(cri::GetEventsRequest {})
            .await
            .map_err(|s| self.err("GetContainerEvents", s))?;
        let stream = r
            .into_inner()
            .map(|item| item.map_err(|s| CriError::call("GetContainerEvents", s)));
        Ok(stream.boxed())
    }

    async fn exec(&self, req: cri::ExecRequest) -> Result<String, CriError> {
        let r = self
            .runtime
            .clone()
            .exec(req)
            .await
            .map_err(|s| self.err("Exec", s))?;
        Ok(r.into_inner().url)
    }

    async fn attach(&self, req: cri::AttachRequest) -> Result<String, CriError> {
        let r = self
            .runtime
            .clone()
            .attach(req)
            .await
            .map_err(|s| self.err("Attach", s))?;
        Ok(r.into_inner().url)
    }

    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String, CriError> {
        let r = self
            .runtime
            .clone()
            .port_forward(req)
            .await
            .map_err(|s| self.err("PortForward", s))?;
        Ok(r.into_inner().url)
    }
}

/// An `ImageSpec` naming `image` as the user wrote it.
pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        user_specified_image: image.into(),
        ..Default::default()
    }
}
