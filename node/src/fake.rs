//! An in-memory [`CriRuntime`] for tests: sandboxes and containers are records, images are names,
//! and the test drives container exits and pull failures. Every call is logged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use skiff_proto::cri;

use crate::cri::{image_spec, CriRuntime};
use crate::error::CriError;

#[derive(Debug, Clone)]
pub struct FakeSandbox {
    pub config: cri::PodSandboxConfig,
    pub ready: bool,
    pub created_at: i64,
    pub ip: String,
}

#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    pub state: cri::ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub image_ref: String,
}

#[derive(Default, Debug)]
struct State {
    next_id: u64,
    clock: i64,
    sandboxes: BTreeMap<String, FakeSandbox>,
    containers: BTreeMap<String, FakeContainer>,
    images: HashSet<String>,
    pull_errors: HashMap<String, String>,
    create_errors: HashMap<String, String>,
    calls: Vec<String>,
}

/// The fake runtime. `Default` has no images; pulls succeed unless [`FakeCri::fail_pull`] says so.
#[derive(Default, Debug)]
pub struct FakeCri {
    state: Mutex<State>,
}

impl FakeCri {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes pulls of `image` fail with `message` (until [`FakeCri::allow_pull`]).
    pub fn fail_pull(&self, image: &str, message: &str) {
        self.lock().pull_errors.insert(image.into(), message.into());
    }

    pub fn allow_pull(&self, image: &str) {
        self.lock().pull_errors.remove(image);
    }

    /// Makes CreateContainer of containers named `name` fail with `message` (until
    /// [`FakeCri::allow_create`]).
    pub fn fail_create(&self, name: &str, message: &str) {
        self.lock()
            .create_errors
            .insert(name.into(), message.into());
    }

    pub fn allow_create(&self, name: &str) {
        self.lock().create_errors.remove(name);
    }

    /// Marks an image as present.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(image.into());
    }

    /// Simulates the exit of a running container.
    pub fn exit_container(&self, id: &str, code: i32) {
        let mut s = self.lock();
        s.clock += 1_000_000_000;
        let now = s.clock;
        if let Some(c) = s.containers.get_mut(id) {
            c.state = cri::ContainerState::ContainerExited;
            c.exit_code = code;
            c.finished_at = now;
        }
    }

    /// The calls so far, e.g. `"RunPodSandbox default/web"`, `"PullImage busybox"`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    pub fn sandboxes(&self) -> BTreeMap<String, FakeSandbox> {
        self.lock().sandboxes.clone()
    }

    pub fn containers(&self) -> BTreeMap<String, FakeContainer> {
        self.lock().containers.clone()
    }

    /// Ids of the containers named `name`, oldest first.
    pub fn containers_named(&self, name: &str) -> Vec<String> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, c)| c.config.metadata.as_ref().map(|m| m.name.as_str()) == Some(name))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn record(s: &mut State, call: String) {
        s.calls.push(call);
    }
}

fn matches(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl CriRuntime for FakeCri {
    async fn version(&self) -> Result<cri::VersionResponse, CriError> {
        Ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: "0.1.0".into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String, CriError> {
        let mut s = self.lock();
        s.next_id += 1;
        s.clock += 1_000_000_000;
        let id = format!("sb{:04}", s.next_id);
        let md = config.metadata.clone().unwrap_or_default();
        Self::record(
            &mut s,
            format!("RunPodSandbox {}/{}", md.namespace, md.name),
        );
        let n = s.sandboxes.len();
        let created_at = s.clock;
        s.sandboxes.insert(
            id.clone(),
            FakeSandbox {
                config,
                ready: true,
                created_at,
                ip: format!("10.42.0.{}", n + 2),
            },
        );
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("StopPodSandbox {id}"));
        s.clock += 1_000_000_000;
        let now = s.clock;
        if let Some(sb) = s.sandboxes.get_mut(id) {
            sb.ready = false;
        }
        for c in s.containers.values_mut().filter(|c| c.sandbox_id == id) {
            if c.state == cri::ContainerState::ContainerRunning {
                c.state = cri::ContainerState::ContainerExited;
                c.exit_code = 137;
                c.finished_at = now;
            }
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("RemovePodSandbox {id}"));
        s.sandboxes.remove(id);
        s.containers.retain(|_, c| c.sandbox_id != id);
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, CriError> {
        let s = self.lock();
        let sb = s
            .sandboxes
            .get(id)
            .ok_or_else(|| CriError::not_found("PodSandboxStatus", format!("sandbox {id}")))?;
        Ok(cri::PodSandboxStatus {
            id: id.into(),
            metadata: sb.config.metadata.clone(),
            state: if sb.ready {
                cri::PodSandboxState::SandboxReady as i32
            } else {
                cri::PodSandboxState::SandboxNotready as i32
            },
            created_at: sb.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: sb.ip.clone(),
                additional_ips: vec![],
            }),
            labels: sb.config.labels.clone(),
            ..Default::default()
        })
    }

    async fn list_pod_sandbox(
        &self,
        label_selector: HashMap<String, String>,
    ) -> Result<Vec<cri::PodSandbox>, CriError> {
        let s = self.lock();
        Ok(s.sandboxes
            .iter()
            .filter(|(_, sb)| matches(&sb.config.labels, &label_selector))
            .map(|(id, sb)| cri::PodSandbox {
                id: id.clone(),
                metadata: sb.config.metadata.clone(),
                state: if sb.ready {
                    cri::PodSandboxState::SandboxReady as i32
                } else {
                    cri::PodSandboxState::SandboxNotready as i32
                },
                created_at: sb.created_at,
                labels: sb.config.labels.clone(),
                ..Default::default()
            })
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        _sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut s = self.lock();
        let name = config.metadata.clone().unwrap_or_default().name;
        Self::record(&mut s, format!("CreateContainer {name}"));
        if let Some(message) = s.create_errors.get(&name) {
            return Err(CriError::Call {
                op: "CreateContainer",
                code: tonic::Code::Unknown,
                message: message.clone(),
            });
        }
        if !s.sandboxes.contains_key(sandbox_id) {
            return Err(CriError::not_found(
                "CreateContainer",
                format!("sandbox {sandbox_id}"),
            ));
        }
        let image = config.image.clone().unwrap_or_default().image;
        if !s.images.contains(&image) {
            return Err(CriError::Call {
                op: "CreateContainer",
                code: tonic::Code::NotFound,
                message: format!("image {image} is not present"),
            });
        }
        s.next_id += 1;
        s.clock += 1_000_000_000;
        let id = format!("c{:04}", s.next_id);
        let created_at = s.clock;
        s.containers.insert(
            id.clone(),
            FakeContainer {
                sandbox_id: sandbox_id.into(),
                config,
                state: cri::ContainerState::ContainerCreated,
                created_at,
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                image_ref: format!("sha256:{image}"),
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("StartContainer {id}"));
        s.clock += 1_000_000_000;
        let now = s.clock;
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| CriError::not_found("StartContainer", format!("container {id}")))?;
        c.state = cri::ContainerState::ContainerRunning;
        c.started_at = now;
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("StopContainer {id} {timeout_secs}"));
        s.clock += 1_000_000_000;
        let now = s.clock;
        if let Some(c) = s.containers.get_mut(id) {
            if c.state == cri::ContainerState::ContainerRunning {
                c.state = cri::ContainerState::ContainerExited;
                c.exit_code = 143;
                c.finished_at = now;
            }
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("RemoveContainer {id}"));
        s.containers.remove(id);
        Ok(())
    }

    async fn list_containers(
        &self,
        sandbox_id: &str,
        label_selector: HashMap<String, String>,
    ) -> Result<Vec<cri::Container>, CriError> {
        let s = self.lock();
        Ok(s.containers
            .iter()
            .filter(|(_, c)| sandbox_id.is_empty() || c.sandbox_id == sandbox_id)
            .filter(|(_, c)| matches(&c.config.labels, &label_selector))
            .map(|(id, c)| cri::Container {
                id: id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: c.config.image.clone(),
                image_ref: c.image_ref.clone(),
                state: c.state as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                ..Default::default()
            })
            .collect())
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, CriError> {
        let s = self.lock();
        let c = s
            .containers
            .get(id)
            .ok_or_else(|| CriError::not_found("ContainerStatus", format!("container {id}")))?;
        let log_dir = s
            .sandboxes
            .get(&c.sandbox_id)
            .map(|sb| sb.config.log_directory.clone())
            .unwrap_or_default();
        Ok(cri::ContainerStatus {
            id: id.into(),
            metadata: c.config.metadata.clone(),
            state: c.state as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: c.config.image.clone(),
            image_ref: c.image_ref.clone(),
            reason: if c.state == cri::ContainerState::ContainerExited {
                if c.exit_code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                }
            } else {
                String::new()
            },
            labels: c.config.labels.clone(),
            log_path: format!("{log_dir}/{}", c.config.log_path),
            ..Default::default()
        })
    }

    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("ImageStatus {image}"));
        Ok(s.images.contains(image).then(|| cri::Image {
            id: format!("sha256:{image}"),
            repo_tags: vec![image.into()],
            spec: Some(image_spec(image)),
            ..Default::default()
        }))
    }

    async fn pull_image(
        &self,
        image: &str,
        _sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("PullImage {image}"));
        if let Some(msg) = s.pull_errors.get(image) {
            return Err(CriError::Call {
                op: "PullImage",
                code: tonic::Code::Unknown,
                message: msg.clone(),
            });
        }
        s.images.insert(image.into());
        Ok(format!("sha256:{image}"))
    }

    /// Exits 1 with "failed" for a command starting with `false`, else 0 with "ok".
    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        _timeout_secs: i64,
    ) -> Result<(i32, Vec<u8>), CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("ExecSync {id} {cmd:?}"));
        if cmd.first().map(String::as_str) == Some("false") {
            Ok((1, b"failed".to_vec()))
        } else {
            Ok((0, b"ok".to_vec()))
        }
    }

    /// No event stream: the PLEG falls back to relisting.
    async fn container_events(&self) -> Result<crate::cri::EventStream, CriError> {
        Err(CriError::Call {
            op: "GetContainerEvents",
            code: tonic::Code::Unimplemented,
            message: "the fake runtime has no event stream".into(),
        })
    }

    async fn exec(&self, req: cri::ExecRequest) -> Result<String, CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("Exec {} {:?}", req.container_id, req.cmd));
        Ok(format!("http://127.0.0.1:1/exec/{}", req.container_id))
    }

    async fn attach(&self, req: cri::AttachRequest) -> Result<String, CriError> {
        let mut s = self.lock();
        Self::record(&mut s, format!("Attach {}", req.container_id));
        Ok(format!("http://127.0.0.1:1/attach/{}", req.container_id))
    }

    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String, CriError> {
        let mut s = self.lock();
        Self::record(
            &mut s,
            format!("PortForward {} {:?}", req.pod_sandbox_id, req.port),
        );
        Ok(format!(
            "http://127.0.0.1:1/portforward/{}",
            req.pod_sandbox_id
        ))
    }
}
