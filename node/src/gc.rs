//! Garbage collection of images and dead containers, as upstream's kubelet
//! (`pkg/kubelet/images/image_gc_manager.go`, `pkg/kubelet/kuberuntime/kuberuntime_gc.go`).
//!
//! Images: every `image_gc_period` (upstream: 5 min) the image filesystem's usage (the CRI's
//! ImageFsInfo mountpoint, statvfs) is compared with `image_gc_high_threshold` (85%); above it,
//! unused images (no container, running or exited, refers to them; not pinned) that were first
//! seen at least `minimum_image_ttl` (2 min) ago are removed least recently used first until
//! usage is at `image_gc_low_threshold` (80%). A high threshold of 100 turns image GC off.
//!
//! Dead containers: every `container_gc_period` (upstream: 1 min) exited containers older than
//! `minimum_container_ttl` (0) are grouped per pod and container name; each group keeps its
//! `max_per_pod_container` (1) newest (the one `kubectl logs --previous` reads), and with
//! `max_containers` >= 0 (default -1: no limit) the node keeps at most that many, oldest removed
//! first. A negative per-container limit means no limit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_proto::cri;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cri::{labels, CriRuntime};
use crate::error::CriError;

/// Image and container GC settings (upstream's flag defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcConfig {
    /// `--image-gc-high-threshold` / `imageGCHighThresholdPercent` (85).
    pub image_gc_high_threshold: u32,
    /// `--image-gc-low-threshold` / `imageGCLowThresholdPercent` (80).
    pub image_gc_low_threshold: u32,
    /// `--minimum-image-ttl-duration` / `imageMinimumGCAge` (2 min).
    pub minimum_image_ttl: Duration,
    /// `--maximum-dead-containers-per-container` (1).
    pub max_per_pod_container: i32,
    /// `--maximum-dead-containers` (-1: no limit).
    pub max_containers: i32,
    /// `--minimum-container-ttl-duration` (0).
    pub minimum_container_ttl: Duration,
    /// How often images are checked (upstream's fixed 5 min; Skiff's `--image-gc-period`).
    pub image_gc_period: Duration,
    /// How often dead containers are collected (upstream's fixed 1 min; `--container-gc-period`).
    pub container_gc_period: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            image_gc_high_threshold: 85,
            image_gc_low_threshold: 80,
            minimum_image_ttl: Duration::from_secs(120),
            max_per_pod_container: 1,
            max_containers: -1,
            minimum_container_ttl: Duration::ZERO,
            image_gc_period: Duration::from_secs(300),
            container_gc_period: Duration::from_secs(60),
        }
    }
}

impl GcConfig {
    /// Upstream's validation of the thresholds.
    pub fn validate(&self) -> Result<(), String> {
        if self.image_gc_high_threshold > 100 {
            return Err(format!(
                "invalid configuration: imageGCHighThresholdPercent ({}) must be between 0 and 100",
                self.image_gc_high_threshold
            ));
        }
        if self.image_gc_low_threshold > 100 {
            return Err(format!(
                "invalid configuration: imageGCLowThresholdPercent ({}) must be between 0 and 100",
                self.image_gc_low_threshold
            ));
        }
        if self.image_gc_low_threshold >= self.image_gc_high_threshold
            && self.image_gc_high_threshold != 100
        {
            return Err(format!(
                "invalid configuration: imageGCLowThresholdPercent ({}) must be less than imageGCHighThresholdPercent ({})",
                self.image_gc_low_threshold, self.image_gc_high_threshold
            ));
        }
        Ok(())
    }
}

/// What the image GC remembers of an image.
#[derive(Debug, Clone, Copy)]
struct ImageRecord {
    first_detected: Instant,
    last_used: Instant,
    size: u64,
}

/// The image manager's GC state.
#[derive(Debug, Default)]
pub struct ImageGc {
    images: HashMap<String, ImageRecord>,
}

/// The images containers refer to (ids, tags and digests: runtimes fill in different fields).
fn images_in_use(containers: &[cri::Container]) -> std::collections::HashSet<String> {
    let mut s = std::collections::HashSet::new();
    for c in containers {
        if !c.image_ref.is_empty() {
            s.insert(c.image_ref.clone());
        }
        if let Some(i) = &c.image {
            if !i.image.is_empty() {
                s.insert(i.image.clone());
            }
        }
    }
    s
}

fn used_by(img: &cri::Image, in_use: &std::collections::HashSet<String>) -> bool {
    in_use.contains(&img.id)
        || img.repo_tags.iter().any(|t| in_use.contains(t))
        || img.repo_digests.iter().any(|d| in_use.contains(d))
}

/// (capacity, available) bytes of the filesystem holding `path`.
fn fs_stats(path: PathBuf) -> std::io::Result<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(&path).map_err(std::io::Error::from)?;
    let frag = s.fragment_size() as u64;
    Ok((s.blocks() as u64 * frag, s.blocks_available() as u64 * frag))
}

impl ImageGc {
    /// Refreshes what is known of the runtime's images: new ones are first detected now, those
    /// in use were last used now, gone ones are forgotten. Returns the images and their use.
    async fn detect<R: CriRuntime>(
        &mut self,
        cri: &R,
        now: Instant,
    ) -> Result<Vec<(cri::Image, bool)>, CriError> {
        let images = cri.list_images().await?;
        let containers = cri.list_containers("", HashMap::new()).await?;
        let in_use = images_in_use(&containers);
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for img in images {
            let used = used_by(&img, &in_use);
            let r = self.images.entry(img.id.clone()).or_insert(ImageRecord {
                first_detected: now,
                last_used: now,
                size: img.size,
            });
            r.size = img.size;
            if used {
                r.last_used = now;
            }
            seen.insert(img.id.clone());
            out.push((img, used));
        }
        self.images.retain(|id, _| seen.contains(id));
        Ok(out)
    }

    /// One image GC pass. Returns the number of bytes freed.
    pub async fn collect<R: CriRuntime>(
        &mut self,
        cri: &R,
        cfg: &GcConfig,
        now: Instant,
    ) -> Result<u64, String> {
        let images = self.detect(cri, now).await.map_err(|e| e.to_string())?;
        if cfg.image_gc_high_threshold >= 100 {
            return Ok(0);
        }
        let fs = cri.image_fs_info().await.map_err(|e| e.to_string())?;
        let Some(mount) = fs
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|i| PathBuf::from(&i.mountpoint))
            .filter(|p| !p.as_os_str().is_empty())
        else {
            return Err("the runtime reports no image filesystem".into());
        };
        let (capacity, available) = tokio::task::spawn_blocking(move || fs_stats(mount))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("statfs of the image filesystem: {e}"))?;
        if capacity == 0 {
            return Err("invalid capacity 0 on image filesystem".into());
        }
        let usage = 100 - (available * 100 / capacity);
        if usage < u64::from(cfg.image_gc_high_threshold) {
            debug!(usage, "image filesystem below the GC high threshold");
            return Ok(0);
        }
        let to_free = (capacity * (100 - u64::from(cfg.image_gc_low_threshold)) / 100)
            .saturating_sub(available);
        info!(
            usage,
            high = cfg.image_gc_high_threshold,
            to_free,
            "image filesystem usage over the high threshold; removing unused images"
        );
        let freed = self
            .remove_unused(cri, images, Some(to_free), cfg, now, "")
            .await;
        if freed < to_free {
            return Err(format!(
                "Failed to garbage collect required amount of images. Attempted to free {to_free} bytes, but only found {freed} bytes eligible to free."
            ));
        }
        Ok(freed)
    }
}

impl ImageGc {
    /// Removes every unused, unpinned image first seen at least `minimum_image_ttl` ago,
    /// whatever the thresholds (upstream's `DeleteUnusedImages`, the eviction manager's
    /// reclaim of the image filesystem). Returns the bytes freed.
    pub async fn delete_unused<R: CriRuntime>(
        &mut self,
        cri: &R,
        cfg: &GcConfig,
        now: Instant,
    ) -> Result<u64, String> {
        let images = self.detect(cri, now).await.map_err(|e| e.to_string())?;
        Ok(self
            .remove_unused(cri, images, None, cfg, now, "reclaim: ")
            .await)
    }

    /// Removes unused, unpinned images first seen at least `minimum_image_ttl` ago, least
    /// recently used first, until `to_free` bytes are freed (`None`: all of them). Each removal
    /// is logged as `<log_prefix>removing unused image`. Returns the bytes freed.
    async fn remove_unused<R: CriRuntime>(
        &mut self,
        cri: &R,
        images: Vec<(cri::Image, bool)>,
        to_free: Option<u64>,
        cfg: &GcConfig,
        now: Instant,
        log_prefix: &str,
    ) -> u64 {
        let mut candidates: Vec<(cri::Image, ImageRecord)> = images
            .into_iter()
            .filter(|(img, used)| !used && !img.pinned)
            .filter_map(|(img, _)| self.images.get(&img.id).map(|r| (img, *r)))
            .collect();
        // Least recently used first, then first detected.
        candidates.sort_by_key(|(_, r)| (r.last_used, r.first_detected));
        let mut freed = 0u64;
        for (img, r) in candidates {
            if to_free.is_some_and(|t| freed >= t) {
                break;
            }
            if now.duration_since(r.first_detected) < cfg.minimum_image_ttl {
                debug!(image = %img.id, "image younger than the minimum GC age; kept");
                continue;
            }
            info!(image = %img.id, tags = ?img.repo_tags, size = r.size, "{log_prefix}removing unused image");
            match cri.remove_image(&img.id).await {
                Ok(()) => {
                    freed += r.size;
                    self.images.remove(&img.id);
                }
                Err(e) => warn!(image = %img.id, error = %e, "cannot remove image"),
            }
        }
        freed
    }
}

/// The image GC state shared by the periodic collector and the eviction manager.
pub type SharedImageGc = Arc<tokio::sync::Mutex<ImageGc>>;

type Units<'a> = HashMap<(String, String), Vec<&'a cri::Container>>;

/// Keeps the `n` newest containers of each unit; the others go to `remove`.
fn keep_newest(units: &mut Units<'_>, n: usize, remove: &mut Vec<String>) {
    for v in units.values_mut() {
        if v.len() > n {
            remove.extend(v.drain(n..).map(|c| c.id.clone()));
        }
    }
}

/// The dead containers to remove under `cfg`'s limits (`now_ns`: the CRI's clock, unix ns).
pub fn dead_to_remove(containers: &[cri::Container], cfg: &GcConfig, now_ns: i64) -> Vec<String> {
    let exited = cri::ContainerState::ContainerExited as i32;
    let min_age = cfg.minimum_container_ttl.as_nanos() as i64;
    // Evict units: (pod uid, container name), newest first.
    let mut units: Units<'_> = HashMap::new();
    for c in containers {
        if c.state != exited || now_ns - c.created_at < min_age {
            continue;
        }
        let uid = c.labels.get(labels::POD_UID).cloned().unwrap_or_default();
        let name = c
            .labels
            .get(labels::CONTAINER_NAME)
            .cloned()
            .or_else(|| c.metadata.as_ref().map(|m| m.name.clone()))
            .unwrap_or_default();
        units.entry((uid, name)).or_default().push(c);
    }
    for v in units.values_mut() {
        v.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    }
    let mut remove = Vec::new();
    if cfg.max_per_pod_container >= 0 {
        keep_newest(&mut units, cfg.max_per_pod_container as usize, &mut remove);
    }
    if cfg.max_containers >= 0 {
        let total: usize = units.values().map(Vec::len).sum();
        let max = cfg.max_containers as usize;
        if total > max && !units.is_empty() {
            let per = (max / units.len()).max(1);
            keep_newest(&mut units, per, &mut remove);
            let mut rest: Vec<&cri::Container> = units.values().flatten().copied().collect();
            if rest.len() > max {
                rest.sort_by_key(|c| std::cmp::Reverse(c.created_at));
                remove.extend(rest.drain(max..).map(|c| c.id.clone()));
            }
        }
    }
    remove
}

/// One dead-container GC pass. Returns how many containers were removed.
pub async fn collect_containers<R: CriRuntime>(cri: &R, cfg: &GcConfig) -> Result<usize, CriError> {
    let all = cri.list_containers("", HashMap::new()).await?;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let mut n = 0;
    for id in dead_to_remove(&all, cfg, now_ns) {
        match cri.remove_container(&id).await {
            Ok(()) => {
                debug!(container = %id, "removed dead container");
                n += 1;
            }
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => warn!(container = %id, error = %e, "cannot remove dead container"),
        }
    }
    if n > 0 {
        info!(removed = n, "dead containers garbage collected");
    }
    Ok(n)
}

/// Runs both collectors until shutdown.
pub async fn run<R: CriRuntime>(cri: Arc<R>, cfg: GcConfig, stop: watch::Receiver<bool>) {
    run_shared(cri, cfg, SharedImageGc::default(), stop).await
}

/// [`run`] with image GC state shared with the eviction manager.
pub async fn run_shared<R: CriRuntime>(
    cri: Arc<R>,
    cfg: GcConfig,
    images: SharedImageGc,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_image =
        tokio::time::Instant::now() + cfg.image_gc_period.min(Duration::from_secs(5));
    let mut next_container = tokio::time::Instant::now() + cfg.container_gc_period;
    loop {
        let next = next_image.min(next_container);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= next_container {
            if let Err(e) = collect_containers(&*cri, &cfg).await {
                warn!(error = %e, "container garbage collection failed");
            }
            next_container = now + cfg.container_gc_period;
        }
        if now >= next_image {
            let res = images
                .lock()
                .await
                .collect(&*cri, &cfg, Instant::now())
                .await;
            if let Err(e) = res {
                warn!(error = %e, "image garbage collection failed");
            }
            next_image = now + cfg.image_gc_period;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(id: &str, uid: &str, name: &str, created: i64, exited: bool) -> cri::Container {
        let mut labels = HashMap::new();
        labels.insert(labels::POD_UID.to_string(), uid.to_string());
        labels.insert(labels::CONTAINER_NAME.to_string(), name.to_string());
        cri::Container {
            id: id.into(),
            created_at: created,
            state: if exited {
                cri::ContainerState::ContainerExited as i32
            } else {
                cri::ContainerState::ContainerRunning as i32
            },
            labels,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_newest_dead_per_container() {
        let cs = vec![
            ctr("a1", "p", "a", 1, true),
            ctr("a2", "p", "a", 2, true),
            ctr("a3", "p", "a", 3, true),
            ctr("a4", "p", "a", 4, false),
            ctr("b1", "p", "b", 1, true),
        ];
        let mut r = dead_to_remove(&cs, &GcConfig::default(), 10);
        r.sort();
        assert_eq!(r, vec!["a1", "a2"]);
        let cfg = GcConfig {
            max_per_pod_container: -1,
            max_containers: 1,
            ..Default::default()
        };
        let mut r = dead_to_remove(&cs, &cfg, 10);
        r.sort();
        assert_eq!(r, vec!["a1", "a2", "b1"]);
        let young = GcConfig {
            minimum_container_ttl: Duration::from_nanos(100),
            ..Default::default()
        };
        assert!(dead_to_remove(&cs, &young, 10).is_empty());
    }

    #[test]
    fn thresholds_validated_as_upstream() {
        assert!(GcConfig::default().validate().is_ok());
        let bad = GcConfig {
            image_gc_low_threshold: 90,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
