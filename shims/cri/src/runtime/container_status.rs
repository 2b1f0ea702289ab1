//! ContainerStatus.

use skiff_proto::cri;

use crate::error::Result;
use crate::server::State;
use crate::store::container::Container;

pub(crate) fn status(
    st: &State,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse> {
    let ct = st.containers.get(&req.container_id)?;
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        info.insert(
            "info".to_string(),
            serde_json::json!({"pid": ct.pid, "sandboxID": ct.sandbox_id, "bundle": ct.bundle})
                .to_string(),
        );
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(to_status(st, &ct)),
        info,
    })
}

pub(crate) fn to_status(st: &State, ct: &Container) -> cri::ContainerStatus {
    let state = ct.cri_state();
    let mut s = cri::ContainerStatus {
        id: ct.id.clone(),
        metadata: ct.config.metadata.clone(),
        state: state as i32,
        created_at: ct.created_at,
        started_at: ct.started_at,
        image: Some(image_spec(st, ct)),
        image_ref: ct.image_ref.clone(),
        image_id: ct.image_id.clone(),
        labels: ct.config.labels.clone(),
        annotations: ct.config.annotations.clone(),
        mounts: ct.config.mounts.clone(),
        log_path: ct.log_path.display().to_string(),
        resources: ct
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
        // As containerd 2.x: the identity the process was given (uid, gid, and every group,
        // the primary one included), from its spec.
        user: ct.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: u.uid.into(),
                gid: u.gid.into(),
                supplemental_groups: u.supplemental_groups.iter().map(|g| (*g).into()).collect(),
            }),
        }),
        ..Default::default()
    };
    if let Some(msg) = &ct.start_error {
        s.exit_code = 128;
        s.reason = "StartError".into();
        s.message = msg.clone();
        s.finished_at = ct.started_at.max(ct.created_at);
    } else if let Some(exit) = ct.exit_info() {
        s.exit_code = exit.exit_code;
        s.finished_at = crate::util::rfc3339_nanos(&exit.finished_at);
        s.reason = if exit.exit_code == 0 {
            "Completed"
        } else if exit.oom_killed {
            // The monitor saw the container's memory cgroup count an OOM kill.
            "OOMKilled"
        } else {
            "Error"
        }
        .into();
    }
    s
}

/// The container's image as the kubelet shows it: the first repo tag of the image it was created
/// from (the kubelet creates containers by image id), else what the kubelet asked for.
pub(crate) fn image_spec(st: &State, ct: &Container) -> cri::ImageSpec {
    let mut spec = ct.config.image.clone().unwrap_or_default();
    if let Ok(img) = st
        .images
        .get(ct.image_id.strip_prefix("sha256:").unwrap_or(&ct.image_id))
    {
        if let Some(tag) = img.repo_tags.first() {
            spec.image = tag.clone();
        }
    }
    spec
}
