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
        info.insert("info".to_string(), verbose_info(st, &sb).to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(to_status(&sb)),
        info,
        containers_statuses: Vec::new(),
        timestamp: crate::util::now_nanos(),
    })
}

pub(crate) fn to_status(sb: &Sandbox) -> cri::PodSandboxStatus {
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

/// containerd-style verbose info: the pause process, namespaces, cgroups, the sandbox config and
/// the cached CNI result.
fn verbose_info(st: &State, sb: &Sandbox) -> serde_json::Value {
    let dir = st.sandboxes.record_dir(&sb.id);
    let cni: Option<serde_json::Value> = std::fs::read(dir.join("cni-cache.json"))
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| v.get("result").cloned());
    let alive = crate::sys::alive(sb.pause_pid, sb.pause_start_time);
    serde_json::json!({
        "pid": sb.pause_pid,
        "processStatus": if alive { "running" } else { "stopped" },
        "netNamespaceClosed": sb.netns_path.as_ref().map(|p| !p.exists()).unwrap_or(!sb.host_network),
        "netns": sb.netns_path,
        "image": "(built-in skiff-monitor pause)",
        "runtimeHandler": sb.runtime_handler,
        "runtimeType": "skiff",
        "cgroupParent": sb.cgroup_parent,
        "sandboxCgroup": crate::cgroups::sandbox_path(sb),
        "hostNetwork": sb.host_network,
        "config": sb.config,
        "cniResult": cni,
    })
}
