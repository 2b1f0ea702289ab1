//! UpdateContainerResources: new cgroup limits for a created or running container, through the
//! runtime's runc-compatible `update -r <resources.json> ID`; when the runtime cannot (no
//! `update` verb, or it fails), the cgroup v1 files are written directly. Swap, hugepage and
//! unified resources are mapped as at CreateContainer (`cgroups::effective_resources`). The bundle's
//! config.json and the container record keep the new values.

use std::process::Stdio;
use std::time::Duration;

use oci_spec::runtime::Spec;
use serde_json::{json, Map, Value};
use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;

/// OCI `LinuxResources` JSON (what `runc update -r` reads) for the CRI resources.
pub(crate) fn oci_resources(r: &cri::LinuxContainerResources) -> Value {
    let mut out = Map::new();
    let mut mem = Map::new();
    if r.memory_limit_in_bytes > 0 {
        mem.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
        mem.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    if !mem.is_empty() {
        out.insert("memory".into(), Value::Object(mem));
    }
    let mut cpu = Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if !r.hugepage_limits.is_empty() {
        let h: Vec<Value> = r
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect();
        out.insert("hugepageLimits".into(), Value::Array(h));
    }
    if !r.unified.is_empty() {
        out.insert("unified".into(), json!(r.unified));
    }
    Value::Object(out)
}

/// Merges `update` into the spec's `linux.resources` (both as JSON objects).
fn merge(target: &mut Value, update: &Value) {
    match (target, update) {
        (Value::Object(t), Value::Object(u)) => {
            for (k, v) in u {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, u) => *t = u.clone(),
    }
}

pub(crate) async fn update(
    st: &State,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse> {
    let ct = st.containers.get(&req.container_id)?;
    let _guard = st.lock(&ct.id).await;
    let state = ct.cri_state();
    if state != cri::ContainerState::ContainerRunning
        && state != cri::ContainerState::ContainerCreated
    {
        return Err(CriError::FailedPrecondition(format!(
            "container {} is not created or running: its resources cannot change",
            ct.id
        )));
    }
    let Some(r) = req.linux else {
        return Ok(cri::UpdateContainerResourcesResponse {});
    };
    // Swap, hugepages and unified as containerd maps them on this host (`cgroups.rs`); the
    // container's record keeps what the kubelet asked.
    let applied = crate::cgroups::effective_resources(&r, crate::cgroups::features());
    let resources = oci_resources(&applied);

    // Keep the bundle's spec in step (it is what `runtime update` compares against, too).
    let spec_path = ct.bundle.join("config.json");
    let spec = Spec::load(&spec_path).map_err(|e| CriError::Spec(e.to_string()))?;
    let mut spec_json = serde_json::to_value(&spec).map_err(|e| CriError::Spec(e.to_string()))?;
    let cgroups_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let Some(linux) = spec_json.get_mut("linux") {
        merge(
            linux
                .as_object_mut()
                .map(|l| l.entry("resources").or_insert(json!({})))
                .unwrap_or(&mut Value::Null),
            &resources,
        );
    }
    crate::util::write_json_atomic(&spec_path, &spec_json)?;

    let file = ct
        .bundle
        .join(format!("update-{}.json", &crate::util::new_id()[..12]));
    crate::util::write_json_fast(&file, &resources)?;
    let runtime = st.cfg.handler(&ct.runtime_handler)?;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&runtime.binary)
            .arg("--root")
            .arg(runtime.root())
            .arg("update")
            .arg("-r")
            .arg(&file)
            .arg(&ct.id)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let _ = std::fs::remove_file(&file);
    let runtime_ok = match out {
        Ok(Ok(o)) if o.status.success() => true,
        Ok(Ok(o)) => {
            tracing::info!(container = %ct.id, error = %String::from_utf8_lossy(&o.stderr).trim(), "runtime update failed; writing cgroup files directly");
            false
        }
        Ok(Err(e)) => {
            tracing::info!(container = %ct.id, error = %e, "runtime update not runnable; writing cgroup files directly");
            false
        }
        Err(_) => {
            tracing::info!(container = %ct.id, "runtime update timed out; writing cgroup files directly");
            false
        }
    };
    if !runtime_ok {
        crate::cgroups::apply_limits(&cgroups_path, &applied).map_err(|e| CriError::Runtime {
            verb: "update",
            id: ct.id.clone(),
            message: e.to_string(),
        })?;
    }
    st.containers.update(&ct.id, |c| {
        let linux = c.config.linux.get_or_insert_with(Default::default);
        let mut merged = linux.resources.clone().unwrap_or_default();
        if r.memory_limit_in_bytes > 0 {
            merged.memory_limit_in_bytes = r.memory_limit_in_bytes;
        }
        if r.memory_swap_limit_in_bytes > 0 {
            merged.memory_swap_limit_in_bytes = r.memory_swap_limit_in_bytes;
        }
        if r.cpu_shares > 0 {
            merged.cpu_shares = r.cpu_shares;
        }
        if r.cpu_quota != 0 {
            merged.cpu_quota = r.cpu_quota;
        }
        if r.cpu_period > 0 {
            merged.cpu_period = r.cpu_period;
        }
        if !r.cpuset_cpus.is_empty() {
            merged.cpuset_cpus = r.cpuset_cpus.clone();
        }
        if !r.cpuset_mems.is_empty() {
            merged.cpuset_mems = r.cpuset_mems.clone();
        }
        if !r.hugepage_limits.is_empty() {
            merged.hugepage_limits = r.hugepage_limits.clone();
        }
        if !r.unified.is_empty() {
            merged.unified = r.unified.clone();
        }
        linux.resources = Some(merged);
    })?;
    tracing::info!(container = %ct.id, via_runtime = runtime_ok, "container resources updated");
    Ok(cri::UpdateContainerResourcesResponse {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_json_has_only_what_is_set() {
        let r = cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 50000,
            cpu_period: 100000,
            ..Default::default()
        };
        let v = oci_resources(&r);
        assert_eq!(v["memory"]["limit"], 64 << 20);
        assert_eq!(v["cpu"]["quota"], 50000);
        assert!(v["cpu"].get("shares").is_none());
        let mut spec = json!({"memory": {"limit": 1, "reservation": 2}, "devices": []});
        merge(&mut spec, &v);
        assert_eq!(spec["memory"]["reservation"], 2);
        assert_eq!(spec["memory"]["limit"], 64 << 20);
    }
}
