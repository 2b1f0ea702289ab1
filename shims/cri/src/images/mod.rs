//! ImageService: pull from OCI/Docker v2 registries into a content store, unpack layers once into
//! snapshot dirs keyed by chain id, and keep image records (config digest = image id).

mod hosts;
mod pull;
pub use pull::serve_fetch;
pub(crate) mod reference;
mod unpack;

use std::path::PathBuf;
use std::sync::Arc;

use skiff_proto::cri::{self, image_service_server::ImageService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::image::ImageRecord;

type SharedPull = futures::future::Shared<
    futures::future::BoxFuture<'static, std::result::Result<String, Status>>,
>;

pub(crate) struct ImageSvc {
    state: Arc<State>,
    /// Pulls in flight, by image name and credentials: a second PullImage of the same image
    /// waits for the first instead of downloading again.
    pulls: Arc<std::sync::Mutex<std::collections::HashMap<String, SharedPull>>>,
}

impl ImageSvc {
    pub(crate) fn new(state: Arc<State>) -> ImageSvc {
        ImageSvc {
            state,
            pulls: Default::default(),
        }
    }

    async fn pull_deduplicated(
        &self,
        name: String,
        auth: Option<cri::AuthConfig>,
    ) -> std::result::Result<String, Status> {
        use futures::FutureExt;
        use sha2::Digest;
        let who = auth
            .as_ref()
            .map(|a| {
                hex::encode(sha2::Sha256::digest(
                    format!(
                        "{}\0{}\0{}\0{}",
                        a.username, a.password, a.auth, a.registry_token
                    )
                    .as_bytes(),
                ))
            })
            .unwrap_or_default();
        let key = format!("{name}\0{who}");
        let (fut, first) = {
            let mut pulls = self.pulls.lock().expect("pull map poisoned");
            match pulls.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let st = self.state.clone();
                    let span = tracing::info_span!("PullImage", image = %name);
                    let n = name.clone();
                    let f = async move {
                        pull::pull(&st, &n, auth).await.map_err(|e| {
                            tracing::warn!(verb = "PullImage", error = %e, "CRI call failed");
                            Status::from(e)
                        })
                    }
                    .instrument(span)
                    .boxed()
                    .shared();
                    pulls.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if !first {
            tracing::info!(image = %name, "joining a pull of the same image already in progress");
        }
        let r = fut.await;
        if first {
            self.pulls.lock().expect("pull map poisoned").remove(&key);
            skiff_memtrim::trim_heap();
        }
        r
    }
}

pub(crate) fn snapshots_dir(st: &State) -> PathBuf {
    st.cfg.images_dir().join("snapshots")
}

pub(crate) fn blobs_dir(st: &State) -> PathBuf {
    st.cfg.images_dir().join("blobs").join("sha256")
}

/// `busybox` -> `docker.io/library/busybox:latest`; digests kept.
pub(crate) fn normalize(name: &str) -> Option<String> {
    reference::parse(name).ok().map(|r| r.whole())
}

/// Finds an image by id (full, `sha256:`-less, or unique prefix), tag or repo digest.
pub(crate) fn resolve(st: &State, name: &str) -> Result<Option<ImageRecord>> {
    if name.is_empty() {
        return Err(CriError::InvalidArgument("no image given".into()));
    }
    let images = st.images.list();
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    if hex.len() >= 12 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut m = images.iter().filter(|i| i.hex().starts_with(hex));
        if let (Some(i), None) = (m.next(), m.next()) {
            return Ok(Some(i.clone()));
        }
    }
    let norm = normalize(name).unwrap_or_else(|| name.to_string());
    Ok(images.into_iter().find(|i| {
        i.repo_tags
            .iter()
            .chain(i.repo_digests.iter())
            .any(|t| *t == norm || t == name)
    }))
}

fn to_cri(i: &ImageRecord) -> cri::Image {
    let (uid, username) = match i.config.user.split(':').next().unwrap_or("") {
        "" => (None, String::new()),
        u => match u.parse::<i64>() {
            Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
            Err(_) => (None, u.to_string()),
        },
    };
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid,
        username,
        spec: None,
        pinned: i.pinned,
    }
}

type Res<T> = std::result::Result<Response<T>, Status>;

fn edge<T>(verb: &'static str, r: Result<T>) -> Res<T> {
    crate::sys::note_call();
    r.map(Response::new).map_err(|e| {
        tracing::warn!(verb, error = %e, "CRI call failed");
        e.into()
    })
}

#[tonic::async_trait]
impl ImageService for ImageSvc {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Res<cri::ListImagesResponse> {
        let filter = r
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(name) => match resolve(&self.state, &name) {
                Ok(i) => i.into_iter().collect(),
                Err(e) => return edge("ListImages", Err(e)),
            },
            None => self.state.images.list(),
        };
        Ok(Response::new(cri::ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        }))
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Res<cri::ImageStatusResponse> {
        let name = r.into_inner().image.map(|i| i.image).unwrap_or_default();
        edge(
            "ImageStatus",
            resolve(&self.state, &name).map(|i| cri::ImageStatusResponse {
                image: i.as_ref().map(to_cri),
                info: Default::default(),
            }),
        )
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> Res<cri::PullImageResponse> {
        let req = r.into_inner();
        let name = req.image.map(|i| i.image).unwrap_or_default();
        self.pull_deduplicated(name, req.auth)
            .await
            .map(|image_ref| Response::new(cri::PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Res<cri::RemoveImageResponse> {
        let name = r.into_inner().image.map(|i| i.image).unwrap_or_default();
        let span = tracing::info_span!("RemoveImage", image = %name);
        edge(
            "RemoveImage",
            remove(&self.state, &name)
                .instrument(span)
                .await
                .map(|_| cri::RemoveImageResponse {}),
        )
    }

    async fn image_fs_info(
        &self,
        _r: Request<cri::ImageFsInfoRequest>,
    ) -> Res<cri::ImageFsInfoResponse> {
        let dir = self.state.cfg.images_dir();
        let (bytes, inodes) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || crate::util::disk_usage(&dir)
        })
        .await
        .unwrap_or((0, 0));
        let usage = cri::FilesystemUsage {
            timestamp: crate::util::now_nanos(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: dir.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![cri::FilesystemUsage {
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.state.cfg.containers_dir().display().to_string(),
                }),
                ..usage
            }],
        }))
    }
}

/// Removes an image record, then the snapshots and blobs no other image or container uses.
async fn remove(st: &State, name: &str) -> Result<()> {
    let _guard = st.image_lock.lock().await;
    let Some(img) = resolve(st, name)? else {
        return Ok(());
    };
    st.images.delete(img.hex())?;
    crate::util::remove_dir_all_quiet(&st.images.record_dir(img.hex()))?;
    let mut keep_snaps: std::collections::HashSet<String> = st
        .images
        .list()
        .iter()
        .flat_map(|i| {
            i.chain_ids
                .iter()
                .map(|c| c.trim_start_matches("sha256:").to_string())
        })
        .collect();
    keep_snaps.extend(st.containers.list().into_iter().flat_map(|c| c.snapshots));
    for chain in &img.chain_ids {
        let hex = chain.trim_start_matches("sha256:");
        if !keep_snaps.contains(hex) {
            let dir = snapshots_dir(st).join(hex);
            tokio::task::spawn_blocking(move || crate::util::remove_dir_all_quiet(&dir))
                .await
                .map_err(|e| CriError::Serve(e.to_string()))??;
        }
    }
    let blob_names = pull::blobs_of(st, &img);
    let keep_blobs: std::collections::HashSet<String> = st
        .images
        .list()
        .iter()
        .flat_map(|i| pull::blobs_of(st, i))
        .collect();
    for b in blob_names.into_iter().filter(|b| !keep_blobs.contains(b)) {
        let _ = std::fs::remove_file(blobs_dir(st).join(b));
    }
    tracing::info!(id = %img.id, "image removed");
    Ok(())
}
