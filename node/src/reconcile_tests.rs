//! Reconcile tests against the fake CRI.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodStatus};

use super::*;
use crate::fake::FakeCri;

fn ctx() -> Arc<SyncContext> {
    Arc::new(SyncContext {
        node_name: "sk-node".into(),
        node_ip: "10.0.0.5".into(),
        secondary_node_ip: None,
        pod_log_dir: "/var/log/pods".into(),
        cluster_dns: vec!["10.43.0.10".into()],
        cluster_domain: "cluster.local".into(),
        cgroup_root: "/kubepods".into(),
        root_dir: std::env::temp_dir().join("sk-kubelet-test"),
    })
}

fn pod(restart_policy: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "uid": "sk-uid-1",
                     "labels": {"app": "web"}},
        "spec": {
            "nodeName": "sk-node",
            "restartPolicy": restart_policy,
            "containers": [{
                "name": "c", "image": image,
                "command": ["sh", "-c"], "args": ["echo $(GREETING) && sleep 1000"],
                "env": [{"name": "GREETING", "value": "hello"},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "workingDir": "/tmp",
                "ports": [{"containerPort": 80, "hostPort": 8080}]
            }]
        }
    }))
    .unwrap()
}

/// The pod as the API would hold it after the kubelet wrote `st`.
fn with_status(p: &Pod, st: &PodStatus) -> Pod {
    let mut p = p.clone();
    p.status = Some(st.clone());
    p
}

fn cs(st: &PodStatus) -> k8s_openapi::api::core::v1::ContainerStatus {
    st.container_statuses.as_ref().unwrap()[0].clone()
}

fn waiting_reason(st: &PodStatus) -> Option<String> {
    cs(st).state.and_then(|s| s.waiting).and_then(|w| w.reason)
}

fn condition(st: &PodStatus, t: &str) -> String {
    st.conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == t)
        .unwrap()
        .status
        .clone()
}

fn count(calls: &[String], prefix: &str) -> usize {
    calls.iter().filter(|c| c.starts_with(prefix)).count()
}

#[tokio::test]
async fn starts_a_pod_and_reports_running() {
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let p = pod("Always", "busybox:1.36");
    let now = Instant::now();
    let st = sync.sync(&p, now).await;

    let calls = cri.calls();
    assert_eq!(count(&calls, "RunPodSandbox default/web"), 1, "{calls:?}");
    assert_eq!(count(&calls, "ImageStatus busybox:1.36"), 1);
    assert_eq!(count(&calls, "PullImage busybox:1.36"), 1);
    assert_eq!(count(&calls, "CreateContainer c"), 1);
    assert_eq!(count(&calls, "StartContainer"), 1);

    // Sandbox config.
    let sb = cri.sandboxes().into_values().next().unwrap();
    let md = sb.config.metadata.clone().unwrap();
    assert_eq!(
        (
            md.name.as_str(),
            md.namespace.as_str(),
            md.uid.as_str(),
            md.attempt
        ),
        ("web", "default", "sk-uid-1", 0)
    );
    assert_eq!(sb.config.hostname, "web");
    assert_eq!(
        sb.config.log_directory,
        "/var/log/pods/default_web_sk-uid-1"
    );
    assert_eq!(sb.config.labels[labels::POD_UID], "sk-uid-1");
    assert_eq!(sb.config.labels["app"], "web");
    assert_eq!(sb.config.port_mappings.len(), 1);
    assert_eq!(sb.config.port_mappings[0].host_port, 8080);
    let dns = sb.config.dns_config.clone().unwrap();
    assert_eq!(dns.servers, vec!["10.43.0.10"]);
    assert_eq!(dns.searches[0], "default.svc.cluster.local");
    assert_eq!(
        sb.config.linux.clone().unwrap().cgroup_parent,
        "/kubepods/besteffort/podsk-uid-1"
    );

    // Container config.
    let c = cri.containers().into_values().next().unwrap();
    assert_eq!(c.config.log_path, "c/0.log");
    assert_eq!(c.config.args, vec!["echo hello && sleep 1000"]);
    assert_eq!(c.config.working_dir, "/tmp");
    assert_eq!(c.config.labels[labels::CONTAINER_NAME], "c");
    assert_eq!(c.config.labels[labels::POD_NAMESPACE], "default");
    assert!(c
        .config
        .envs
        .iter()
        .any(|e| e.key == "POD" && e.value == "web"));

    // Status.
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.2"));
    assert_eq!(st.host_ip.as_deref(), Some("10.0.0.5"));
    assert!(st.start_time.is_some());
    let c0 = cs(&st);
    assert!(c0.ready);
    assert_eq!(c0.started, Some(true));
    assert_eq!(c0.restart_count, 0);
    assert!(c0.container_id.unwrap().starts_with("skiff://c"));
    assert_eq!(c0.image_id, "sha256:busybox:1.36");
    assert!(c0.state.unwrap().running.is_some());
    assert_eq!(condition(&st, "Ready"), "True");
    assert_eq!(condition(&st, "ContainersReady"), "True");
    assert_eq!(condition(&st, "Initialized"), "True");
    assert_eq!(condition(&st, "PodScheduled"), "True");

    // A second pass changes nothing, in the CRI or in the status.
    cri.clear_calls();
    let p2 = with_status(&p, &st);
    let st2 = sync.sync(&p2, now + Duration::from_secs(1)).await;
    let calls = cri.calls();
    assert_eq!(count(&calls, "RunPodSandbox"), 0);
    assert_eq!(count(&calls, "CreateContainer"), 0);
    assert_eq!(count(&calls, "PullImage"), 0);
    assert_eq!(st2, st, "status must be stable when nothing changed");
}

#[tokio::test]
async fn crash_loop_backs_off_10s_then_doubles() {
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let p = pod("Always", "busybox:1.36");
    let t0 = Instant::now();
    sync.sync(&p, t0).await;
    let first = cri.containers_named("c")[0].clone();

    // First crash: restarted at once.
    cri.exit_container(&first, 1);
    let st = sync.sync(&p, t0).await;
    let ids = cri.containers_named("c");
    assert_eq!(ids.len(), 2);
    let c0 = cs(&st);
    assert_eq!(c0.restart_count, 1);
    assert!(c0.state.unwrap().running.is_some());
    let last = c0.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert_eq!(cri.containers()[&ids[1]].config.log_path, "c/1.log");

    // Second crash: CrashLoopBackOff for 10 s.
    cri.exit_container(&ids[1], 2);
    let st = sync.sync(&p, t0 + Duration::from_secs(1)).await;
    assert_eq!(waiting_reason(&st).as_deref(), Some("CrashLoopBackOff"));
    let c0 = cs(&st);
    assert_eq!(c0.restart_count, 1);
    assert_eq!(c0.last_state.unwrap().terminated.unwrap().exit_code, 2);
    assert!(!c0.ready);
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&st, "Ready"), "False");
    let st = sync.sync(&p, t0 + Duration::from_secs(9)).await;
    assert_eq!(waiting_reason(&st).as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(cri.containers_named("c").len(), 2);
    let st = sync.sync(&p, t0 + Duration::from_secs(12)).await;
    assert!(cs(&st).state.unwrap().running.is_some());
    assert_eq!(cs(&st).restart_count, 2);

    // Third crash: 20 s now. Old instances beyond the previous one are removed.
    let ids = cri.containers_named("c");
    cri.exit_container(ids.last().unwrap(), 1);
    let t1 = t0 + Duration::from_secs(13);
    sync.sync(&p, t1).await;
    let st = sync.sync(&p, t1 + Duration::from_secs(15)).await;
    assert_eq!(waiting_reason(&st).as_deref(), Some("CrashLoopBackOff"));
    assert!(cs(&st)
        .state
        .unwrap()
        .waiting
        .unwrap()
        .message
        .unwrap()
        .contains("back-off 20s"));
    let st = sync.sync(&p, t1 + Duration::from_secs(21)).await;
    assert_eq!(cs(&st).restart_count, 3);
    assert!(cri.containers_named("c").len() <= 3);
}

#[tokio::test]
async fn restart_policies_end_the_pod() {
    // OnFailure + exit 0: Succeeded, sandbox stopped, nothing restarted.
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let p = pod("OnFailure", "busybox:1.36");
    let t0 = Instant::now();
    sync.sync(&p, t0).await;
    cri.exit_container(&cri.containers_named("c")[0], 0);
    let st = sync.sync(&p, t0).await;
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
    let term = cs(&st).state.unwrap().terminated.unwrap();
    assert_eq!(term.reason.as_deref(), Some("Completed"));
    assert_eq!(cri.containers_named("c").len(), 1);
    assert!(cri.calls().iter().any(|c| c.starts_with("StopPodSandbox")));
    assert_eq!(condition(&st, "Ready"), "False");
    assert!(st.pod_ip.is_some(), "podIP stays after the sandbox stops");
    // A terminal pod stays terminal.
    let p2 = with_status(&p, &st);
    let st2 = sync.sync(&p2, t0 + Duration::from_secs(30)).await;
    assert_eq!(st2.phase.as_deref(), Some("Succeeded"));
    assert_eq!(count(&cri.calls(), "RunPodSandbox"), 1);

    // Never + exit 1: Failed.
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let p = pod("Never", "busybox:1.36");
    sync.sync(&p, t0).await;
    cri.exit_container(&cri.containers_named("c")[0], 1);
    let st = sync.sync(&p, t0 + Duration::from_secs(100)).await;
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    assert_eq!(cs(&st).state.unwrap().terminated.unwrap().exit_code, 1);
    assert_eq!(cri.containers_named("c").len(), 1);

    // OnFailure + exit 1: restarted, still Running.
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let p = pod("OnFailure", "busybox:1.36");
    sync.sync(&p, t0).await;
    cri.exit_container(&cri.containers_named("c")[0], 3);
    let st = sync.sync(&p, t0).await;
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(cs(&st).restart_count, 1);
}

#[tokio::test]
async fn image_pull_errors_then_back_off_then_retry() {
    let cri = Arc::new(FakeCri::new());
    cri.fail_pull("sk-missing:1", "pulling sk-missing:1: manifest unknown");
    let mut sync = PodSync::new(cri.clone(), ctx());
    let p = pod("Always", "sk-missing:1");
    let t0 = Instant::now();

    let st = sync.sync(&p, t0).await;
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    let w = cs(&st).state.unwrap().waiting.unwrap();
    assert_eq!(w.reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(
        w.message.as_deref(),
        Some("pulling sk-missing:1: manifest unknown")
    );
    assert_eq!(condition(&st, "Ready"), "False");
    assert_eq!(condition(&st, "PodReadyToStartContainers"), "True");

    cri.clear_calls();
    let st = sync.sync(&p, t0 + Duration::from_secs(5)).await;
    let w = cs(&st).state.unwrap().waiting.unwrap();
    assert_eq!(w.reason.as_deref(), Some("ImagePullBackOff"));
    assert!(w
        .message
        .unwrap()
        .contains("Back-off pulling image \"sk-missing:1\""));
    assert_eq!(
        count(&cri.calls(), "PullImage"),
        0,
        "no pull during back-off"
    );

    // Retried after the back-off; fails again and the back-off doubles.
    let st = sync.sync(&p, t0 + Duration::from_secs(11)).await;
    assert_eq!(waiting_reason(&st).as_deref(), Some("ErrImagePull"));
    let st = sync.sync(&p, t0 + Duration::from_secs(25)).await;
    assert_eq!(waiting_reason(&st).as_deref(), Some("ImagePullBackOff"));

    cri.allow_pull("sk-missing:1");
    let st = sync.sync(&p, t0 + Duration::from_secs(32)).await;
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert!(cs(&st).ready);
    assert_eq!(cs(&st).restart_count, 0);
}

#[tokio::test]
async fn create_error_is_retried_after_the_back_off() {
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let p = pod("Always", "busybox:1.36");
    cri.fail_create("c", "failed to prepare rootfs");
    let t0 = Instant::now();
    let st = sync.sync(&p, t0).await;
    let w = cs(&st).state.unwrap().waiting.unwrap();
    assert_eq!(w.reason.as_deref(), Some("CreateContainerError"));
    assert!(w.message.unwrap().contains("failed to prepare rootfs"));
    assert_eq!(count(&cri.calls(), "CreateContainer"), 1);

    // Woken again within the back-off (an event, a status write): no new attempt, same reason.
    cri.clear_calls();
    let st = sync.sync(&p, t0 + Duration::from_secs(3)).await;
    assert_eq!(waiting_reason(&st).as_deref(), Some("CreateContainerError"));
    assert_eq!(
        count(&cri.calls(), "CreateContainer"),
        0,
        "{:?}",
        cri.calls()
    );
    assert!(sync.next_wake(&p, &st, t0 + Duration::from_secs(3)) <= Duration::from_secs(8));

    // After it: tried again, and runs once the runtime can create it.
    cri.allow_create("c");
    let st = sync.sync(&p, t0 + Duration::from_secs(11)).await;
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(count(&cri.calls(), "CreateContainer"), 1);
}

#[tokio::test]
async fn never_policy_does_not_pull() {
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let mut p = pod("Always", "sk-local:1");
    p.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("Never".into());
    let st = sync.sync(&p, Instant::now()).await;
    assert_eq!(waiting_reason(&st).as_deref(), Some("ErrImageNeverPull"));
    assert_eq!(count(&cri.calls(), "PullImage"), 0);
    cri.add_image("sk-local:1");
    let st = sync.sync(&p, Instant::now()).await;
    assert!(cs(&st).ready);
}

#[tokio::test]
async fn terminate_stops_and_removes_everything() {
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let p = pod("Always", "busybox:1.36");
    sync.sync(&p, Instant::now()).await;
    let cid = cri.containers_named("c")[0].clone();
    let sid = cri.sandboxes().into_keys().next().unwrap();
    cri.clear_calls();
    sync.terminate("sk-uid-1", 5).await.unwrap();
    let calls = cri.calls();
    assert_eq!(
        calls,
        vec![
            format!("StopContainer {cid} 5"),
            format!("StopPodSandbox {sid}"),
            format!("RemovePodSandbox {sid}"),
        ]
    );
    assert!(cri.sandboxes().is_empty());
    assert!(cri.containers().is_empty());
    // Idempotent.
    sync.terminate("sk-uid-1", 5).await.unwrap();
}

#[tokio::test]
async fn a_new_worker_adopts_the_running_sandbox() {
    let cri = Arc::new(FakeCri::new());
    let p = pod("Always", "busybox:1.36");
    let mut first = PodSync::new(cri.clone(), ctx());
    first.sync(&p, Instant::now()).await;
    // The kubelet restarts: a fresh worker must not create a second sandbox or container.
    let mut second = PodSync::new(cri.clone(), ctx());
    cri.clear_calls();
    let st = second.sync(&p, Instant::now()).await;
    assert_eq!(count(&cri.calls(), "RunPodSandbox"), 0);
    assert_eq!(count(&cri.calls(), "CreateContainer"), 0);
    assert!(cs(&st).ready);
    assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.2"));

    // If the sandbox dies, a new one (attempt 1) is made and containers restart in it.
    let sid = cri.sandboxes().into_keys().next().unwrap();
    cri.stop_pod_sandbox(&sid).await.unwrap();
    second.sync(&p, Instant::now()).await;
    let sbs = cri.sandboxes();
    assert_eq!(sbs.len(), 2);
    assert!(sbs
        .values()
        .any(|s| s.ready && s.config.metadata.as_ref().unwrap().attempt == 1));
}

#[test]
fn var_expansion_and_pull_policy() {
    let mut env = HashMap::new();
    env.insert("A".to_string(), "1".to_string());
    assert_eq!(expand_vars("x$(A)y", &env), "x1y");
    assert_eq!(expand_vars("$(B)", &env), "$(B)");
    assert_eq!(expand_vars("$$(A)", &env), "$(A)");
    assert_eq!(expand_vars("$A ünï", &env), "$A ünï");
    assert_eq!(expand_vars("$(A", &env), "$(A");

    let c = |image: &str| k8s_openapi::api::core::v1::Container {
        name: "c".into(),
        image: Some(image.into()),
        ..Default::default()
    };
    assert_eq!(pull_policy(&c("busybox")), "Always");
    assert_eq!(pull_policy(&c("busybox:latest")), "Always");
    assert_eq!(pull_policy(&c("busybox:1.36")), "IfNotPresent");
    assert_eq!(pull_policy(&c("localhost:5000/busybox")), "Always");
    assert_eq!(pull_policy(&c("localhost:5000/busybox:1")), "IfNotPresent");
    assert_eq!(pull_policy(&c("busybox@sha256:abc")), "IfNotPresent");
}

#[tokio::test]
async fn init_containers_run_first_in_order() {
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let mut p = pod("Always", "busybox:1.36");
    let init: Vec<k8s_openapi::api::core::v1::Container> =
        serde_json::from_value(serde_json::json!([
            {"name": "i1", "image": "busybox:1.36"},
            {"name": "i2", "image": "busybox:1.36"}
        ]))
        .unwrap();
    p.spec.as_mut().unwrap().init_containers = Some(init);
    let t0 = Instant::now();

    let st = sync.sync(&p, t0).await;
    assert_eq!(cri.containers_named("i1").len(), 1);
    assert!(cri.containers_named("i2").is_empty());
    assert!(cri.containers_named("c").is_empty());
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&st, "Initialized"), "False");
    assert_eq!(waiting_reason(&st).as_deref(), Some("PodInitializing"));
    assert_eq!(st.init_container_statuses.as_ref().unwrap().len(), 2);

    cri.exit_container(&cri.containers_named("i1")[0], 0);
    sync.sync(&p, t0).await;
    assert_eq!(cri.containers_named("i2").len(), 1);
    assert!(cri.containers_named("c").is_empty());

    // A failed init container is retried with back-off (restartPolicy Always).
    cri.exit_container(&cri.containers_named("i2")[0], 1);
    sync.sync(&p, t0).await;
    assert_eq!(cri.containers_named("i2").len(), 2);
    cri.exit_container(&cri.containers_named("i2")[1], 0);
    let st = sync.sync(&p, t0).await;
    assert_eq!(cri.containers_named("c").len(), 1);
    let st = sync.sync(&with_status(&p, &st), t0).await;
    assert_eq!(condition(&st, "Initialized"), "True");
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert!(st.init_container_statuses.unwrap().iter().all(|s| s.ready));

    // restartPolicy Never: a failed init container fails the pod.
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let mut p = pod("Never", "busybox:1.36");
    p.spec.as_mut().unwrap().init_containers = Some(
        serde_json::from_value(serde_json::json!([{"name": "i1", "image": "busybox:1.36"}]))
            .unwrap(),
    );
    sync.sync(&p, t0).await;
    cri.exit_container(&cri.containers_named("i1")[0], 1);
    let st = sync.sync(&p, t0).await;
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    assert!(cri.containers_named("c").is_empty());
    assert_eq!(cri.containers_named("i1").len(), 1);
}

#[tokio::test]
async fn empty_dir_and_host_path_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = (*ctx()).clone();
    c.root_dir = dir.path().to_path_buf();
    let cri = Arc::new(FakeCri::new());
    let objects = Arc::new(crate::objects::StaticObjects::default());
    objects.put_config_map("default", "x", &[("k", "v")]);
    let mut sync = PodSync::new(cri.clone(), Arc::new(c)).with_objects(objects);
    let host = dir.path().join("sk-host");
    let mut p = pod("Always", "busybox:1.36");
    let spec = p.spec.as_mut().unwrap();
    spec.volumes = Some(
        serde_json::from_value(serde_json::json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "h", "hostPath": {"path": host.to_str().unwrap(), "type": "DirectoryOrCreate"}},
            {"name": "cm", "configMap": {"name": "x"}}
        ]))
        .unwrap(),
    );
    spec.containers[0].volume_mounts = Some(
        serde_json::from_value(serde_json::json!([
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "h", "mountPath": "/host", "readOnly": true},
            {"name": "cm", "mountPath": "/cm"}
        ]))
        .unwrap(),
    );
    sync.sync(&p, Instant::now()).await;
    let created = cri.containers().into_values().next().unwrap();
    let m = &created.config.mounts;
    assert_eq!(m.len(), 3);
    let cm = dir
        .path()
        .join("pods/sk-uid-1/volumes/kubernetes.io~configmap/cm");
    assert_eq!(m[2].host_path, cm.to_str().unwrap());
    assert!(m[2].readonly, "API data volumes are read-only");
    assert_eq!(std::fs::read_to_string(cm.join("k")).unwrap(), "v");
    let empty = dir
        .path()
        .join("pods/sk-uid-1/volumes/kubernetes.io~empty-dir/scratch");
    assert_eq!(m[0].container_path, "/scratch");
    assert_eq!(m[0].host_path, empty.to_str().unwrap());
    assert!(empty.is_dir());
    assert_eq!(m[1].host_path, host.to_str().unwrap());
    assert!(m[1].readonly);
    assert!(host.is_dir());

    sync.terminate("sk-uid-1", 0).await.unwrap();
    assert!(!dir.path().join("pods/sk-uid-1").exists());
}

#[tokio::test]
async fn missing_config_is_failed_mount_and_create_container_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = (*ctx()).clone();
    c.root_dir = dir.path().to_path_buf();
    let cri = Arc::new(FakeCri::new());
    let objects = Arc::new(crate::objects::StaticObjects::default());
    let mut sync = PodSync::new(cri.clone(), Arc::new(c)).with_objects(objects.clone());
    let mut p = pod("Always", "busybox:1.36");
    let spec = p.spec.as_mut().unwrap();
    spec.volumes = Some(
        serde_json::from_value(
            serde_json::json!([{"name": "cm", "configMap": {"name": "sk-missing"}}]),
        )
        .unwrap(),
    );
    let st = sync.sync(&p, Instant::now()).await;
    let events = sync.take_events();
    assert!(events.iter().any(|e| e.reason == "FailedMount"
        && e.message == "MountVolume.SetUp failed for volume \"cm\" : configmap \"sk-missing\" not found"), "{events:?}");
    let cs = &st.container_statuses.unwrap()[0];
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("ContainerCreating")
    );
    assert!(cri.containers().is_empty());

    // env from a ConfigMap key that does not exist.
    let mut p = pod("Always", "busybox:1.36");
    p.spec.as_mut().unwrap().containers[0].env = Some(
        serde_json::from_value(serde_json::json!([
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "sk-cm", "key": "nope"}}}
        ]))
        .unwrap(),
    );
    objects.put_config_map("default", "sk-cm", &[("k", "v")]);
    let mut sync = PodSync::new(cri.clone(), ctx()).with_objects(objects.clone());
    let st = sync.sync(&p, Instant::now()).await;
    let w = st.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(w.reason.as_deref(), Some("CreateContainerConfigError"));
    assert_eq!(
        w.message.as_deref(),
        Some("couldn't find key nope in ConfigMap default/sk-cm")
    );
    // Once the key exists the container is created with it (envFrom with a prefix too).
    objects.put_config_map("default", "sk-cm", &[("k", "v"), ("nope", "yes")]);
    p.spec.as_mut().unwrap().containers[0].env_from = Some(
        serde_json::from_value(
            serde_json::json!([{"configMapRef": {"name": "sk-cm"}, "prefix": "P_"}]),
        )
        .unwrap(),
    );
    sync.sync(&p, Instant::now()).await;
    let created = cri.containers().into_values().next().unwrap();
    let env: Vec<(String, String)> = created
        .config
        .envs
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert!(env.contains(&("A".into(), "yes".into())), "{env:?}");
    assert!(env.contains(&("P_k".into(), "v".into())), "{env:?}");
}

#[tokio::test]
async fn sidecars_start_before_the_next_init_and_restart_beside_the_app() {
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let mut p = pod("Never", "busybox:1.36");
    p.spec.as_mut().unwrap().init_containers = Some(
        serde_json::from_value(serde_json::json!([
            {"name": "side", "image": "busybox:1.36", "restartPolicy": "Always"},
            {"name": "i1", "image": "busybox:1.36"}
        ]))
        .unwrap(),
    );
    let t0 = Instant::now();
    let st = sync.sync(&p, t0).await;
    assert_eq!(cri.containers_named("side").len(), 1);
    assert!(cri.containers_named("i1").is_empty());
    let st = sync.sync(&with_status(&p, &st), t0).await;
    assert_eq!(
        cri.containers_named("i1").len(),
        1,
        "the sidecar started: next init"
    );
    assert!(cri.containers_named("c").is_empty());
    cri.exit_container(&cri.containers_named("i1")[0], 0);
    let st = sync.sync(&with_status(&p, &st), t0).await;
    assert_eq!(cri.containers_named("c").len(), 1);
    let st = sync.sync(&with_status(&p, &st), t0).await;
    assert_eq!(condition(&st, "Initialized"), "True");
    let side = st
        .init_container_statuses
        .as_ref()
        .unwrap()
        .iter()
        .find(|s| s.name == "side")
        .unwrap()
        .clone();
    assert!(side.ready && side.started == Some(true));
    assert!(side.state.unwrap().running.is_some());
    // The sidecar exits: restarted (restartPolicy Never is the pod's, not the sidecar's), the
    // app keeps running and the pod stays initialized.
    cri.exit_container(&cri.containers_named("side")[0], 1);
    let st = sync.sync(&with_status(&p, &st), t0).await;
    assert_eq!(cri.containers_named("side").len(), 2);
    assert_eq!(condition(&st, "Initialized"), "True");
    assert_eq!(st.phase.as_deref(), Some("Running"));
    // The app completes: the pod succeeds although the sidecar runs.
    cri.exit_container(&cri.containers_named("c")[0], 0);
    let st = sync.sync(&with_status(&p, &st), t0).await;
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
}

#[tokio::test]
async fn active_deadline_fails_the_pod() {
    let cri = Arc::new(FakeCri::new());
    let mut sync = PodSync::new(cri.clone(), ctx());
    let mut p = pod("Always", "busybox:1.36");
    p.spec.as_mut().unwrap().active_deadline_seconds = Some(5);
    let t0 = Instant::now();
    let st = sync.sync(&p, t0).await;
    assert!(sync.active_deadline_left(&with_status(&p, &st)).unwrap() > Duration::ZERO);
    let mut running = with_status(&p, &st);
    let long_ago = k8s_openapi::jiff::Timestamp::now().as_second() - 60;
    running.status.as_mut().unwrap().start_time =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(long_ago).unwrap(),
        ));
    let st = sync.sync(&running, t0).await;
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    assert_eq!(st.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        st.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    assert!(sync
        .take_events()
        .iter()
        .any(|e| e.reason == "DeadlineExceeded"));
    let c = cri.containers_named("c");
    assert_eq!(c.len(), 1);
    assert_eq!(
        cri.containers()[&c[0]].state,
        skiff_proto::cri::ContainerState::ContainerExited
    );
    // Sticky: the next sync keeps Failed and the reason.
    let st = sync.sync(&with_status(&running, &st), t0).await;
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    assert_eq!(st.reason.as_deref(), Some("DeadlineExceeded"));
}
