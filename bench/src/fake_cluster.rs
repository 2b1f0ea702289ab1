//! What the control-plane benches (scheduler, controllers) share: a `skiff server` without a
//! node agent started in a temp dir, and fake Ready nodes spread over zones (API objects only).

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process of the bench's own, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `name` from the environment as a whole number, or `default`.
pub fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(s) => s.parse().with_context(|| format!("{name}: a whole number")),
        Err(_) => Ok(default),
    }
}

/// The `skiff` binary: `SKIFF_BIN`, else the one beside this bench.
pub fn skiff_bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("SKIFF_BIN") {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()?.with_file_name("skiff"),
    };
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin skiff` (or set SKIFF_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(Client::try_from(cfg)?)
}

/// A running `skiff server --disable-agent` and an admin client of it.
pub struct Server {
    pub proc: Proc,
    /// The temp dir (in `BENCH_DIR`, default /var/tmp) holding its data and the logs.
    pub dir: tempfile::TempDir,
    /// `<dir>/data`: the server's data dir (component kubeconfigs under `server/`).
    pub data: PathBuf,
    pub client: Client,
}

/// Starts `skiff server --disable-agent <extra>` and waits until it answers (60 s at most),
/// then makes the `sk-bench` namespace.
pub async fn start_server(bin: &Path, prefix: &str, extra: &[&str]) -> Result<Server> {
    let parent = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()));
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .with_context(|| format!("temp dir in {}", parent.display()))?;
    let data = dir.path().join("data");
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let port = crate::free_port()?;
    let proc = Proc(
        Command::new(bin)
            .args(["server", "--disable-agent", "--node-name", "sk-bench"])
            .args(extra)
            .args(["--bind-address", "127.0.0.1", "--node-ip", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(&data)
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let start = Instant::now();
    let client = loop {
        if kubeconfig.exists() && data.join("server/controller.kubeconfig").exists() {
            if let Ok(c) = client(&kubeconfig).await {
                if c.apiserver_version().await.is_ok() {
                    break c;
                }
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "skiff server did not answer in 60 s; see {}",
                dir.path().join("server.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "sk-bench"}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(Server {
        proc,
        dir,
        data,
        client,
    })
}

/// `count` Ready nodes (32 CPUs, 128 GiB, 110 pods each), `sk-bench-node-NNN`, in `zones`
/// zones `z0..` (`topology.kubernetes.io/zone`).
pub async fn create_ready_nodes(c: &Client, count: usize, zones: usize) -> Result<()> {
    let api: Api<Node> = Api::all(c.clone());
    for i in 0..count {
        let name = format!("sk-bench-node-{i:03}");
        let n: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": format!("z{}", i % zones.max(1)),
            }},
        }))?;
        api.create(&PostParams::default(), &n).await?;
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = serde_json::json!({"status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "fake", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(())
}
