//! Container lifecycle hooks: postStart (run after StartContainer; a failure kills the container)
//! and preStop (run before the container is stopped, within its grace period), with the exec,
//! httpGet and sleep handlers, and upstream's failure messages.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};

use crate::cri::CriRuntime;

/// `name_namespace(uid)`, upstream's `format.Pod`.
pub fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// Runs `h` for `c` (instance `container_id`) of `pod`. The error is upstream's event message.
pub async fn run<R: CriRuntime>(
    cri: &R,
    h: &LifecycleHandler,
    pod: &Pod,
    c: &Container,
    container_id: &str,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(e) = &h.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let fail = |err: String, output: &str| {
            format!(
                "Exec lifecycle hook ([{}]) for Container {:?} in Pod {:?} failed - error: {err}, message: {output:?}",
                cmd.join(" "),
                c.name,
                pod_ref(pod)
            )
        };
        return match tokio::time::timeout(
            timeout,
            cri.exec_sync(container_id, cmd.clone(), timeout.as_secs() as i64),
        )
        .await
        {
            Ok(Ok((0, _))) => Ok(()),
            Ok(Ok((code, out))) => {
                let out = String::from_utf8_lossy(&out).into_owned();
                Err(fail(
                    format!("command '{}' exited with {code}: {out}", cmd.join(" ")),
                    &out,
                ))
            }
            Ok(Err(e)) => Err(fail(e.message(), "")),
            Err(_) => Err(fail("context deadline exceeded".into(), "")),
        };
    }
    if let Some(g) = &h.http_get {
        let target = crate::probe::Target {
            pod: Default::default(),
            pod_ip: pod_ip.to_string(),
            container_id: container_id.to_string(),
            container: c.clone(),
        };
        let probe = k8s_openapi::api::core::v1::Probe {
            http_get: Some(g.clone()),
            ..Default::default()
        };
        let r = tokio::time::timeout(
            timeout,
            crate::probe::run_probe(cri, &probe, &target, timeout),
        )
        .await
        .unwrap_or((false, "context deadline exceeded".into()));
        return if r.0 {
            Ok(())
        } else {
            Err(format!(
                "HTTP lifecycle hook ({}) for Container {:?} in Pod {:?} failed - error: {}",
                g.path.as_deref().unwrap_or(""),
                c.name,
                pod_ref(pod),
                r.1
            ))
        };
    }
    if let Some(s) = &h.sleep {
        let d = Duration::from_secs(s.seconds.max(0) as u64).min(timeout);
        tokio::time::sleep(d).await;
        return Ok(());
    }
    if h.tcp_socket.is_some() {
        // Deprecated and never run by upstream's kubelet either.
        return Ok(());
    }
    Err(format!(
        "lifecycle hook for Container {:?} in Pod {:?} has no handler",
        c.name,
        pod_ref(pod)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exec_hook_failure_has_upstreams_message() {
        let cri = crate::fake::FakeCri::new();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "c"}]}
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        let h: LifecycleHandler =
            serde_json::from_value(serde_json::json!({"exec": {"command": ["false", "x"]}}))
                .unwrap();
        let err = run(
            &cri,
            &h,
            &pod,
            &c,
            "id1",
            "127.0.0.1",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            "Exec lifecycle hook ([false x]) for Container \"c\" in Pod \"p_default(u1)\" failed - error: command 'false x' exited with 1: failed, message: \"failed\""
        );
        let ok: LifecycleHandler =
            serde_json::from_value(serde_json::json!({"exec": {"command": ["true"]}})).unwrap();
        assert!(run(
            &cri,
            &ok,
            &pod,
            &c,
            "id1",
            "127.0.0.1",
            Duration::from_secs(5)
        )
        .await
        .is_ok());
    }
}
