//! CreateContainer: overlayfs rootfs, OCI config.json, then `skiff-monitor container` which runs
//! the runtime's `create`; we wait for its `created` / `create-error` file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use skiff_proto::cri;

use crate::config::RuntimeHandler;
use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::container::{Container, CreatedInfo};
use crate::store::sandbox::SandboxState;
use crate::util::new_id;

pub(crate) async fn create(
    st: &State,
    req: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse> {
    let config = req.config.ok_or_else(|| {
        CriError::InvalidArgument("CreateContainer needs a container config".into())
    })?;
    let meta = config.metadata.clone().ok_or_else(|| {
        CriError::InvalidArgument("CreateContainer needs container metadata".into())
    })?;
    let sb = st.sandboxes.get(&req.pod_sandbox_id)?;
    if sb.state != SandboxState::Ready {
        return Err(CriError::FailedPrecondition(format!(
            "sandbox {} is not ready: create containers only in a running sandbox",
            sb.id
        )));
    }
    if let Some(dup) = st.containers.list().into_iter().find(|c| {
        let m = c.metadata();
        c.sandbox_id == sb.id && m.name == meta.name && m.attempt == meta.attempt
    }) {
        return Err(CriError::AlreadyExists(format!(
            "container name {}/{} (attempt {}) is reserved by {}: remove it first",
            sb.metadata().name,
            meta.name,
            meta.attempt,
            dup.id
        )));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    let image = crate::images::resolve(st, &image_name)?
        .ok_or_else(|| CriError::ImageNotFound(image_name.clone()))?;

    validate_security(st, &config, &sb, &image).await?;

    let id = new_id();
    tracing::Span::current().record("container", id.as_str());
    let dir = st.containers.record_dir(&id);
    let log_path = if config.log_path.is_empty() {
        dir.join("container.log")
    } else if sb.config.log_directory.is_empty() {
        PathBuf::from(&config.log_path)
    } else {
        Path::new(&sb.config.log_directory).join(&config.log_path)
    };
    let snapshots: Vec<String> = image
        .chain_ids
        .iter()
        .map(|c| c.strip_prefix("sha256:").unwrap_or(c).to_string())
        .collect();
    st.cfg.handler(&sb.runtime_handler)?; // still configured?
    let mut ct = Container::new(
        id.clone(),
        sb.id.clone(),
        config,
        image.id.clone(),
        image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.clone()),
        snapshots,
        log_path,
        &dir,
    );
    ct.runtime_handler = sb.runtime_handler.clone();
    st.containers.put(ct.clone())?;

    match setup(st, &mut ct, &sb, &image).await {
        Ok(()) => {
            st.containers.put(ct.clone())?;
            tracing::info!(pid = ct.pid, "container created");
            Ok(cri::CreateContainerResponse { container_id: id })
        }
        Err(e) => {
            tracing::warn!(error = %e, "CreateContainer failed; cleaning up");
            if let Err(ce) = super::container_remove::cleanup(st, &ct).await {
                tracing::warn!(error = %ce, "cleanup after failed CreateContainer");
            }
            let _ = st.containers.delete(&id);
            let _ = crate::util::remove_dir_all_quiet(&dir);
            Err(e)
        }
    }
}

/// A bad security context is InvalidArgument before anything is made.
async fn validate_security(
    st: &State,
    config: &cri::ContainerConfig,
    sb: &crate::store::sandbox::Sandbox,
    image: &crate::store::image::ImageRecord,
) -> Result<()> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let passwd = if sc.run_as_username.is_empty() {
        None
    } else {
        let snap_root = crate::images::snapshots_dir(st);
        let mut found = None;
        // Top-most layer first.
        for chain in image.chain_ids.iter().rev() {
            let hex = chain.strip_prefix("sha256:").unwrap_or(chain);
            if let Ok(text) =
                tokio::fs::read_to_string(snap_root.join(hex).join("etc/passwd")).await
            {
                found = Some(text);
                break;
            }
        }
        found
    };
    let pod_ns = super::sandbox_run::namespace_options(&sb.config);
    super::security::validate(&sc, &pod_ns, passwd.as_deref())?;
    let caps = super::security::resolve_caps(
        sc.privileged,
        sc.capabilities.as_ref(),
        super::security::bounding_set(),
    )?;
    // A Localhost profile that is missing or invalid: refused here too, before anything is made.
    let sc2 = sc.clone();
    tokio::task::spawn_blocking(move || super::seccomp::for_container(&sc2, caps))
        .await
        .map_err(|e| CriError::Spec(format!("checking the seccomp profile: {e}")))??;
    for m in config.mounts.iter().filter(|m| m.recursive_read_only) {
        if !m.readonly {
            return Err(CriError::InvalidArgument(format!(
                "mount {}: recursive_read_only needs readonly",
                m.container_path
            )));
        }
        if m.propagation != cri::MountPropagation::PropagationPrivate as i32 {
            return Err(CriError::InvalidArgument(format!(
                "mount {}: recursive_read_only needs propagation PRIVATE",
                m.container_path
            )));
        }
        if !st.cfg.supports_recursive_ro(&sb.runtime_handler) {
            return Err(CriError::InvalidArgument(format!(
                "mount {}: runtime handler {:?} cannot make recursive read-only mounts",
                m.container_path, sb.runtime_handler
            )));
        }
    }
    super::userns::check_container(
        sb.userns.as_ref(),
        &sb.id,
        sc.namespace_options
            .as_ref()
            .and_then(|o| o.userns_options.as_ref()),
    )?;
    for m in &config.mounts {
        if super::userns::mount_is_idmapped(m)?
            && !st.cfg.supports_user_namespaces(&sb.runtime_handler)
        {
            return Err(CriError::InvalidArgument(format!(
                "mount {}: runtime handler {:?} cannot make idmapped mounts",
                m.container_path, sb.runtime_handler
            )));
        }
    }
    let sb_privileged = sb
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if sc.privileged && !sb_privileged {
        return Err(CriError::InvalidArgument(format!(
            "security context: privileged container in sandbox {}, which is not privileged",
            sb.id
        )));
    }
    if let Some(ns) = &sc.namespace_options {
        if ns.pid == cri::NamespaceMode::Pod as i32
            && pod_ns.pid != cri::NamespaceMode::Node as i32
            && !super::sandbox_run::holds_pid_ns(&sb.config)
        {
            return Err(CriError::InvalidArgument(format!(
                "namespace options: container pid mode POD, but sandbox {} does not share a PID namespace (its pid mode is not POD)",
                sb.id
            )));
        }
        if ns.pid == cri::NamespaceMode::Target as i32 {
            super::spec::target_pid_ns(st, sb, &ns.target_id)?;
        }
    }
    Ok(())
}

async fn setup(
    st: &State,
    ct: &mut Container,
    sb: &crate::store::sandbox::Sandbox,
    image: &crate::store::image::ImageRecord,
) -> Result<()> {
    let dir = st.containers.record_dir(&ct.id);
    let upper = dir.join("fs");
    let work = dir.join("work");
    for d in [&upper, &work, &ct.rootfs, &ct.monitor_dir] {
        std::fs::create_dir_all(d).map_err(CriError::io("creating container dir", d.as_path()))?;
    }
    let snap_root = crate::images::snapshots_dir(st);
    let lowers: Vec<PathBuf> = ct
        .snapshots
        .iter()
        .rev()
        .map(|s| snap_root.join(s))
        .collect();
    if lowers.is_empty() {
        return Err(CriError::FailedPrecondition(format!(
            "image {} has no layers",
            image.id
        )));
    }
    for l in &lowers {
        if !l.is_dir() {
            return Err(CriError::FailedPrecondition(format!(
                "snapshot {} of image {} is missing: pull the image again",
                l.display(),
                image.id
            )));
        }
    }
    let sb_dir = super::sandbox_run::sandbox_dir(st, &sb.id);
    if sb.userns.is_some() || ct.config.mounts.iter().any(|m| !m.uid_mappings.is_empty()) {
        let (st2, ct2, sb2) = (st.cfg.state_dir.clone(), ct.clone(), sb.clone());
        let sb_dir2 = sb_dir.clone();
        tokio::task::spawn_blocking(move || {
            idmapped_mounts(&st2, &ct2, &sb2, &sb_dir2, &lowers, &upper, &work)
        })
        .await
        .map_err(|e| CriError::Monitor(format!("idmapped mounts: {e}")))??;
    } else {
        let lower_refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        crate::sys::mount_overlay(&lower_refs, &upper, &work, &ct.rootfs)?;
    }

    let spec = super::spec::generate(st, ct, sb, &sb_dir, image)?;
    if let Some(p) = spec.process() {
        let u = p.user();
        ct.user = Some(crate::store::container::UserRecord {
            uid: u.uid(),
            gid: u.gid(),
            supplemental_groups: u.additional_gids().clone().unwrap_or_default(),
        });
    }
    spec.save(ct.bundle.join("config.json"))
        .map_err(|e| CriError::Spec(format!("writing config.json: {e}")))?;

    if let Some(parent) = ct.log_path.parent() {
        std::fs::create_dir_all(parent).map_err(CriError::io("creating log dir", parent))?;
    }
    let runtime = st.cfg.handler(&ct.runtime_handler)?;
    ct.pid = start_monitor(st, ct, &runtime).await?;
    ct.pid_start_time = crate::sys::proc_stat(ct.pid).map(|(t, _)| t).unwrap_or(0);
    Ok(())
}

async fn start_monitor(st: &State, ct: &Container, rt: &RuntimeHandler) -> Result<i32> {
    let log = ct.monitor_dir.join("monitor.log");
    let stderr = std::fs::File::create(&log).map_err(CriError::io("creating", &log))?;
    let mut child = tokio::process::Command::new(&st.cfg.monitor_bin)
        .arg("container")
        .arg("--runtime")
        .arg(&rt.binary)
        .arg("--runtime-root")
        .arg(rt.root())
        .arg("--bundle")
        .arg(&ct.bundle)
        .arg("--id")
        .arg(&ct.id)
        .arg("--log-path")
        .arg(&ct.log_path)
        .arg("--state-dir")
        .arg(&ct.monitor_dir)
        .arg("--stdin")
        .arg(match (ct.config.stdin, ct.config.stdin_once) {
            (false, _) => "none",
            (true, false) => "open",
            (true, true) => "once",
        })
        .arg("--tty")
        .arg(if ct.config.tty { "yes" } else { "no" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|e| {
            CriError::Monitor(format!(
                "cannot start {} container: {e} (is skiff-monitor installed?)",
                st.cfg.monitor_bin.display()
            ))
        })?;
    let created = ct.monitor_dir.join("created");
    let create_error = ct.monitor_dir.join("create-error");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(st.cfg.create_timeout_secs);
    let mut delay = Duration::from_millis(2);
    loop {
        if let Ok(data) = std::fs::read(&created) {
            if let Ok(info) = serde_json::from_slice::<CreatedInfo>(&data) {
                return Ok(info.pid);
            }
        }
        if create_error.exists() {
            let msg = std::fs::read_to_string(&create_error).unwrap_or_default();
            return Err(CriError::Runtime {
                verb: "create",
                id: ct.id.clone(),
                message: msg.trim().to_string(),
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            if !status.success() && !created.exists() && !create_error.exists() {
                let msg = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(CriError::Monitor(format!(
                    "monitor exited with {status}: {}",
                    msg.trim()
                )));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CriError::Monitor(format!(
                "no created/create-error file in {} after {}s",
                ct.monitor_dir.display(),
                st.cfg.create_timeout_secs
            )));
        }
        tokio::time::sleep(delay).await;
        // A short cap: every millisecond here is pod start latency.
        delay = (delay * 2).min(Duration::from_millis(4));
    }
}

/// The rootfs and mounts of a container in a pod user namespace, or with idmapped CRI mounts.
///
/// overlayfs itself cannot be idmapped on the kernels we run on (mount_setattr gives EINVAL), so
/// as containerd 2.x we idmap its lower layers: the snapshots folder is cloned idmapped to the
/// pod's user namespace at `<container>/idmap/lower`, overlayfs is mounted on that, and the
/// clone is detached again (the overlay keeps it alive). A file of the image owned by uid N
/// then shows as N in the container. The upper dir is the pod root's (the mapped host uid), so
/// what the container writes lands there with the mapped host ids.
/// CRI mounts that give mappings get an idmapped clone `<container>/idmap/vol-<i>` (with their
/// sub-mounts), the bind source of the spec; with the pod's mappings they use its namespace,
/// other mappings a namespace of their own.
fn idmapped_mounts(
    state_dir: &Path,
    ct: &Container,
    sb: &crate::store::sandbox::Sandbox,
    sb_dir: &Path,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<()> {
    use std::os::fd::AsFd;
    let dir = super::spec::idmap_dir(ct);
    std::fs::create_dir_all(&dir).map_err(CriError::io("creating", dir.as_path()))?;
    let pod_ns = match &sb.userns {
        Some(_) => {
            let path = sb.ns_path("user").ok_or_else(|| {
                CriError::FailedPrecondition(format!(
                    "the pause process of sandbox {} is gone: stop and recreate the sandbox",
                    sb.id
                ))
            })?;
            Some(crate::userns::open_userns(&path)?)
        }
        None => None,
    };
    match &pod_ns {
        Some(ns) => {
            // The container's root in the namespace must reach the bundle and the sandbox's
            // files: every folder above them needs search permission for others.
            traversable(state_dir, &ct.bundle)?;
            traversable(state_dir, sb_dir)?;
            let snap_root = lowers[0].parent().unwrap_or(Path::new("/"));
            let lower_at = dir.join("lower");
            std::fs::create_dir_all(&lower_at)
                .map_err(CriError::io("creating", lower_at.as_path()))?;
            crate::userns::idmapped_clone(snap_root, &lower_at, ns.as_fd(), false)?;
            // The upper and work dirs are not idmapped (overlayfs works in them as its mounter,
            // host root, whom the pod's maps do not map: EOVERFLOW, and the overlay goes
            // read-only); the upper dir belongs to the pod's root instead, as containerd's
            // remapped snapshots.
            let made = (|| {
                if let Some(u) = &sb.userns {
                    let root_of = |m: &[cri::IdMapping]| {
                        m.iter().find(|m| m.container_id == 0).map(|m| m.host_id)
                    };
                    if let (Some(uid), Some(gid)) = (root_of(&u.uids), root_of(&u.gids)) {
                        std::os::unix::fs::chown(upper, Some(uid), Some(gid)).map_err(
                            CriError::io("handing the upper dir to the pod's root", upper),
                        )?;
                    }
                }
                let mapped_lowers: Vec<PathBuf> = lowers
                    .iter()
                    .map(|l| lower_at.join(l.file_name().unwrap_or_default()))
                    .collect();
                let refs: Vec<&Path> = mapped_lowers.iter().map(PathBuf::as_path).collect();
                crate::sys::mount_overlay(&refs, upper, work, &ct.rootfs)
            })();
            crate::sys::unmount(&lower_at)?;
            made?;
        }
        None => {
            let refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
            crate::sys::mount_overlay(&refs, upper, work, &ct.rootfs)?;
        }
    }
    for (i, m) in ct.config.mounts.iter().enumerate() {
        if m.host_path.is_empty() || m.container_path.is_empty() {
            continue;
        }
        if !super::userns::mount_is_idmapped(m)? {
            continue;
        }
        let src = Path::new(&m.host_path);
        let meta = std::fs::metadata(src).map_err(CriError::io("mount source", src))?;
        let at = super::spec::idmapped_volume(ct, i);
        if meta.is_dir() {
            std::fs::create_dir_all(&at).map_err(CriError::io("creating", at.as_path()))?;
        } else {
            std::fs::File::create(&at).map_err(CriError::io("creating", at.as_path()))?;
        }
        let same = sb
            .userns
            .as_ref()
            .is_some_and(|u| u.uids == m.uid_mappings && u.gids == m.gid_mappings);
        match (&pod_ns, same) {
            (Some(ns), true) => crate::userns::idmapped_clone(src, &at, ns.as_fd(), true)?,
            _ => {
                let ns = crate::userns::new_userns(&m.uid_mappings, &m.gid_mappings)?;
                crate::userns::idmapped_clone(src, &at, ns.as_fd(), true)?
            }
        }
    }
    Ok(())
}

/// Every folder from `/` down to `path` must let others search it (mode o+x): a container's
/// root in a user namespace is "other" to host-owned folders. Folders inside `state_dir` (ours)
/// get o+x added; one above it is an error naming it.
fn traversable(state_dir: &Path, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dir in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let meta = std::fs::metadata(dir).map_err(CriError::io("reading", dir))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 != 0 {
            continue;
        }
        if dir.starts_with(state_dir) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .map_err(CriError::io("allowing search of", dir))?;
        } else {
            return Err(CriError::FailedPrecondition(format!(
                "user namespace: {} (mode {:o}) does not let others search it; the pod's root \
                 in its user namespace cannot reach its bundle under it (chmod o+x)",
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}
