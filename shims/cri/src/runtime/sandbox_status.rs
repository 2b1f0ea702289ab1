//! PodSandboxStatus.

use skiff_proto::cri;

use crate::error::Result;
use crate::server::State;
use crate::store::sandbox::Sandbox;

pub(crate) fn status(
    st: &State,
    req: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse> {
    let sb = st.sandboxes.get(&req.pod_sandbox_id)?;
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        info.insert(
            "info".to_string(),
            serde_json::json!({"pid": sb.pause_pid, "netns": sb.netns_path, "cgroupParent": sb.cgroup_parent}).to_string(),
        );
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(to_status(&sb)),
        info,
        containers_statuses: Vec::new(),
        timestamp: crate::util::now_nanos(),
    })
}

fn to_status(sb: &Sandbox) -> cri::PodSandboxStatus {
    let ns = super::sandbox_run::namespace_options(&sb.config);
    cri::PodSandboxStatus {
        id: sb.id.clone(),
        metadata: sb.config.metadata.clone(),
        state: sb.cri_state() as i32,
        created_at: sb.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: sb.ip.clone(),
            additional_ips: sb
                .additional_ips
                .iter()
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options: Some(ns) }),
        }),
        labels: sb.config.labels.clone(),
        annotations: sb.config.annotations.clone(),
        runtime_handler: sb.runtime_handler.clone(),
    }
}
