//! ImageService: pull from OCI/Docker v2 registries into a content store, unpack layers once into
//! snapshot dirs keyed by chain id, and keep image records (config digest = image id).

mod pull;
mod unpack;

use std::path::PathBuf;
use std::sync::Arc;

use skiff_proto::cri::{self, image_service_server::ImageService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::image::ImageRecord;

pub(crate) struct ImageSvc {
    state: Arc<State>,
}

impl ImageSvc {
    pub(crate) fn new(state: Arc<State>) -> ImageSvc {
        ImageSvc { state }
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
    name.parse::<oci_client::Reference>()
        .ok()
        .map(|r| r.whole())
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
        let span = tracing::info_span!("PullImage", image = %name);
        edge(
            "PullImage",
            pull::pull(&self.state, &name, req.auth)
                .instrument(span)
                .await
                .map(|image_ref| cri::PullImageResponse { image_ref }),
        )
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
