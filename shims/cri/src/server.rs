//! Wiring: shared state, the gRPC server on the unix socket, graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use skiff_proto::cri::image_service_server::ImageServiceServer;
use skiff_proto::cri::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::CriConfig;
use crate::error::{CriError, Result};
use crate::store::container::Container;
use crate::store::image::ImageRecord;
use crate::store::sandbox::Sandbox;
use crate::store::Store;

/// Everything the services share.
pub(crate) struct State {
    pub cfg: CriConfig,
    pub sandboxes: Store<Sandbox>,
    pub containers: Store<Container>,
    pub images: Store<ImageRecord>,
    /// Pause processes started by this server instance, so they can be waited for (reaped).
    pub pause_children: Mutex<HashMap<String, tokio::process::Child>>,
    /// CNI ADDs hold it shared, CNI GC exclusively: GC must not free what an ADD under way
    /// allocates for a sandbox it did not list.
    pub cni_gc_lock: tokio::sync::RwLock<()>,
    /// Serialises image store updates (tags move between images).
    pub image_lock: tokio::sync::Mutex<()>,
    /// Per sandbox/container id locks so that verbs on one object do not interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Last (timestamp, cumulative CPU ns) per container/sandbox for `usage_nano_cores`.
    pub cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    /// Container and sandbox lifecycle events for GetContainerEvents subscribers.
    pub events: tokio::sync::broadcast::Sender<skiff_proto::cri::ContainerEventResponse>,
    /// Containers whose STOPPED event was sent (or that had exited before this server started).
    pub stopped_reported: Mutex<std::collections::HashSet<String>>,
}

impl State {
    pub(crate) fn load(cfg: CriConfig) -> Result<State> {
        let (sandboxes, orphan_sb) = Store::<Sandbox>::load(&cfg.sandboxes_dir())?;
        let (containers, orphan_ct) = Store::<Container>::load(&cfg.containers_dir())?;
        let (images, orphan_img) = Store::<ImageRecord>::load(&cfg.images_dir().join("meta"))?;
        for dir in orphan_sb.iter().chain(&orphan_img) {
            tracing::info!(dir = %dir.display(), "removing leftover of an interrupted operation");
            let _ = crate::util::remove_dir_all_quiet(dir);
        }
        // Temp blobs and snapshot dirs of pulls cut short (kill -9): never referenced.
        for dir in [
            cfg.images_dir().join("blobs").join("sha256"),
            cfg.images_dir().join("snapshots"),
        ] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    tracing::info!(path = %e.path().display(), "removing leftover of an interrupted pull");
                    let p = e.path();
                    let _ = if p.is_dir() {
                        crate::util::remove_dir_all_quiet(&p)
                    } else {
                        std::fs::remove_file(&p).map_err(CriError::io("removing", &p))
                    };
                }
            }
        }
        for dir in &orphan_ct {
            // A container dir may still have its rootfs mounted.
            let _ = crate::sys::unmount(&dir.join("bundle").join("rootfs"));
            let _ = crate::util::remove_dir_all_quiet(dir);
        }
        tracing::info!(
            sandboxes = sandboxes.list().len(),
            containers = containers.list().len(),
            images = images.list().len(),
            "CRI state loaded"
        );
        Ok(State {
            cfg,
            sandboxes,
            containers,
            images,
            pause_children: Mutex::new(HashMap::new()),
            cni_gc_lock: tokio::sync::RwLock::new(()),
            image_lock: tokio::sync::Mutex::new(()),
            locks: Mutex::new(HashMap::new()),
            cpu_samples: Mutex::new(HashMap::new()),
            events: tokio::sync::broadcast::channel(1024).0,
            stopped_reported: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// Takes the operation lock of a sandbox or container id.
    pub(crate) async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .expect("lock map poisoned")
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Forgets the lock of a removed object.
    pub(crate) fn forget_lock(&self, id: &str) {
        self.locks.lock().expect("lock map poisoned").remove(id);
    }
}

/// Serves the CRI RuntimeService and ImageService on `cfg.socket` until `shutdown` resolves.
/// State under `cfg.state_dir` is reloaded first, so sandboxes and containers survive a restart.
pub async fn serve(
    cfg: CriConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CriError> {
    crate::ensure_tls_provider();
    crate::sys::limit_malloc_arenas();
    for dir in [&cfg.state_dir, &cfg.netns_dir, &cfg.runtime_root] {
        std::fs::create_dir_all(dir).map_err(CriError::io("creating dir", dir.as_path()))?;
    }
    let socket = cfg.socket.clone();
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(CriError::io("creating socket dir", parent))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CriError::io("removing stale socket", socket.as_path())(e)),
    }
    let mut cfg = cfg;
    // Unmounted when the server ends, however it ends.
    let _sealed = if cfg.seal_runtime {
        seal_runtime(&mut cfg).await
    } else {
        None
    };
    let state = Arc::new(State::load(cfg)?);
    crate::runtime::recover(&state).await;
    let watcher = tokio::spawn(crate::runtime::watch_exits(state.clone()));
    let gc = tokio::spawn(crate::runtime::cni_gc_loop(
        state.clone(),
        std::time::Duration::from_secs(600),
    ));
    let listener = UnixListener::bind(&socket)
        .map_err(CriError::io("binding CRI socket", socket.as_path()))?;
    tracing::info!(socket = %socket.display(), "CRI server listening");

    let stream =
        crate::stream::StreamServer::start(state.clone(), &state.cfg.stream_address).await?;
    let runtime = crate::runtime::RuntimeSvc::new(state.clone(), stream.clone());
    let images = crate::images::ImageSvc::new(state.clone());
    let result = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(runtime).max_decoding_message_size(16 << 20))
        .add_service(ImageServiceServer::new(images).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    stream.shutdown();
    watcher.abort();
    gc.abort();
    let _ = std::fs::remove_file(&socket);
    result.map_err(|e| CriError::Serve(e.to_string()))
}

/// Mounts a sealed memfd copy of the default runtime (`seal.rs`) and makes it the default
/// handler's binary; the returned guard keeps the mount alive (dropped when the server ends).
/// On failure the runtime keeps its own per-call protection: logged only.
async fn seal_runtime(cfg: &mut CriConfig) -> Option<crate::seal::SealedCopy> {
    let bin = cfg.runtime_bin.clone();
    if !bin.is_absolute() {
        tracing::info!(runtime = %bin.display(), "not sealing a runtime given by name");
        return None;
    }
    let dst = crate::seal::sealed_path(&cfg.state_dir, &bin);
    let at = dst.clone();
    let r = tokio::task::spawn_blocking(move || crate::seal::bind_sealed_copy(&bin, &at)).await;
    match r {
        Ok(Ok(copy)) if crate::seal::is_sealed(copy.path()) => {
            tracing::info!(runtime = %cfg.runtime_bin.display(), at = %dst.display(), "runtime sealed in memory");
            cfg.runtime_bin = dst;
            Some(copy)
        }
        Ok(r) => {
            let e = r
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no seals".into());
            tracing::warn!(error = %e, "cannot seal the runtime binary; it seals itself per call");
            crate::seal::unbind(&dst);
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "sealing the runtime binary");
            None
        }
    }
}
