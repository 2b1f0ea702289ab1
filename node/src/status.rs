//! Pod status computation: a pure function from the pod, what the CRI reports, and the kubelet's
//! own waiting reasons (image pull errors, back-offs) to the `PodStatus` written to the API.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use skiff_proto::cri;

/// The runtime's name in container ids (`<runtime>://<id>`, as upstream's `kubecontainer.ContainerID`):
/// the CRI Version's `runtime_name` (`skiff`, `containerd`), set once the runtime answered.
static RUNTIME_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records the CRI's runtime name for container ids (the first call wins).
pub fn set_runtime_name(name: &str) {
    if !name.is_empty() {
        let _ = RUNTIME_NAME.set(name.to_string());
    }
}

/// A container id as the API shows it: `<runtime name>://<id>` (`skiff://` until set).
pub fn api_container_id(id: &str) -> String {
    let name = RUNTIME_NAME.get().map(String::as_str).unwrap_or("skiff");
    format!("{name}://{id}")
}

/// A waiting reason the kubelet decided itself (not visible in the CRI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

impl Waiting {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Everything besides the pod that the status depends on.
#[derive(Debug, Clone)]
pub struct StatusInput {
    pub host_ip: String,
    /// `status.hostIPs`: the node's addresses, one per family, `host_ip` first (empty: just
    /// `host_ip`).
    pub host_ips: Vec<String>,
    /// From `PodSandboxStatus.network` (primary first); kept after the sandbox stops.
    pub pod_ips: Vec<String>,
    /// Whether the pod's sandbox exists and is ready.
    pub sandbox_ready: bool,
    /// When the kubelet first acknowledged the pod.
    pub start_time: Option<Time>,
    /// CRI statuses of each container name, newest attempt first.
    pub containers: HashMap<String, Vec<cri::ContainerStatus>>,
    /// Waiting reasons decided by the kubelet, by container name; they override the CRI state.
    pub waiting: HashMap<String, Waiting>,
    /// "Now", for condition transition times.
    pub now: Time,
    /// (started, ready) of containers with probes, from the probe manager.
    pub probes: HashMap<String, (bool, bool)>,
}

impl Default for StatusInput {
    fn default() -> Self {
        Self {
            host_ip: String::new(),
            host_ips: Vec::new(),
            pod_ips: Vec::new(),
            sandbox_ready: false,
            start_time: None,
            containers: HashMap::new(),
            waiting: HashMap::new(),
            now: now_time(),
            probes: HashMap::new(),
        }
    }
}

/// A CRI nanosecond timestamp as an API `Time` (second precision, as the API stores it).
pub fn cri_time(ns: i64) -> Option<Time> {
    if ns <= 0 {
        return None;
    }
    Timestamp::from_second(ns / 1_000_000_000).ok().map(Time)
}

/// Now, at second precision.
pub fn now_time() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn terminated(s: &cri::ContainerStatus) -> ContainerStateTerminated {
    let reason = if !s.reason.is_empty() {
        s.reason.clone()
    } else if s.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        container_id: Some(api_container_id(&s.id)),
        exit_code: s.exit_code,
        finished_at: cri_time(s.finished_at),
        message: (!s.message.is_empty()).then(|| s.message.clone()),
        reason: Some(reason),
        signal: None,
        started_at: cri_time(s.started_at),
    }
}

fn attempt(s: &cri::ContainerStatus) -> u32 {
    s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)
}

fn state_of(s: &cri::ContainerStatus) -> cri::ContainerState {
    cri::ContainerState::try_from(s.state).unwrap_or(cri::ContainerState::ContainerUnknown)
}

/// The API status of one container.
pub fn container_status(
    spec: &Container,
    history: &[cri::ContainerStatus],
    waiting: Option<&Waiting>,
) -> ContainerStatus {
    let latest = history.first();
    let previous = history.get(1);
    let mut st = ContainerStatus {
        name: spec.name.clone(),
        image: spec.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: latest.map(|l| attempt(l) as i32).unwrap_or(0),
        started: Some(false),
        ..Default::default()
    };
    if let Some(l) = latest {
        st.container_id = Some(api_container_id(&l.id));
        st.image_id = l.image_ref.clone();
    }
    let waiting_state = |w: &Waiting| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(w.reason.clone()),
            message: (!w.message.is_empty()).then(|| w.message.clone()),
        }),
        ..Default::default()
    };
    let term_state = |s: &cri::ContainerStatus| ContainerState {
        terminated: Some(terminated(s)),
        ..Default::default()
    };
    match (waiting, latest) {
        (Some(w), latest) => {
            st.state = Some(waiting_state(w));
            // The container that ran last (the one being restarted) is the last state.
            if let Some(l) = latest.filter(|l| state_of(l) == cri::ContainerState::ContainerExited)
            {
                st.last_state = Some(term_state(l));
            } else if let Some(p) = previous {
                st.last_state = Some(term_state(p));
            }
        }
        (None, Some(l)) => {
            match state_of(l) {
                cri::ContainerState::ContainerRunning => {
                    st.state = Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: cri_time(l.started_at),
                        }),
                        ..Default::default()
                    });
                    // No probes yet: a running container is ready.
                    st.ready = true;
                    st.started = Some(true);
                }
                cri::ContainerState::ContainerExited => st.state = Some(term_state(l)),
                cri::ContainerState::ContainerCreated => {
                    st.state = Some(waiting_state(&Waiting::new("ContainerCreating", "")))
                }
                cri::ContainerState::ContainerUnknown => {
                    st.state = Some(waiting_state(&Waiting::new(
                        "ContainerStatusUnknown",
                        "The container could not be located when the pod was checked",
                    )))
                }
            }
            if let Some(p) = previous {
                st.last_state = Some(term_state(p));
            }
        }
        (None, None) => st.state = Some(waiting_state(&Waiting::new("ContainerCreating", ""))),
    }
    if st.last_state.is_none() {
        st.last_state = Some(ContainerState::default());
    }
    st
}

/// The pod phase from the container statuses (upstream's `getPhase` without init containers).
pub fn pod_phase(pod: &Pod, statuses: &[ContainerStatus]) -> &'static str {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        let state = s.state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some()
        {
            // Waiting to restart after having run: counts as stopped.
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

fn condition(
    old: &[PodCondition],
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let ltt = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: Some(ltt),
        reason: reason.map(str::to_string),
        message,
        ..Default::default()
    }
}

/// The QoS class of a pod (Guaranteed, Burstable, BestEffort).
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in &spec.containers {
        let res = c.resources.clone().unwrap_or_default();
        let req = res.requests.unwrap_or_default();
        let lim = res.limits.unwrap_or_default();
        if !req.is_empty() || !lim.is_empty() {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.get(r);
            let q = req.get(r).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Computes the pod's status. Pure: the same inputs give the same status.
pub fn compute_pod_status(pod: &Pod, input: &StatusInput) -> PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let old_conditions = old.conditions.clone().unwrap_or_default();
    let empty = Vec::new();
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");

    // Init containers: each must have exited 0, in order.
    let mut init_statuses = Vec::new();
    let mut pending_init: Vec<String> = Vec::new();
    let mut init_failed = false;
    let app_started = spec
        .containers
        .iter()
        .any(|c| input.containers.get(&c.name).is_some_and(|h| !h.is_empty()));
    let mut unready_sidecars: Vec<String> = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let history = input.containers.get(&c.name).unwrap_or(&empty);
        let mut st = container_status(c, history, input.waiting.get(&c.name));
        if c.restart_policy.as_deref() == Some("Always") {
            // A sidecar: started once running (and its startup probe passed), ready per its
            // readiness probe; it never completes.
            let running = st.state.as_ref().is_some_and(|s| s.running.is_some());
            let (started, ready) = match (running, input.probes.get(&c.name)) {
                (false, _) => (false, false),
                (true, Some((s, r))) => (*s, *r),
                (true, None) => (
                    c.startup_probe.is_none(),
                    c.startup_probe.is_none() && c.readiness_probe.is_none(),
                ),
            };
            st.started = Some(started);
            st.ready = ready;
            if !started && !app_started {
                pending_init.push(c.name.clone());
            }
            if !ready {
                unready_sidecars.push(c.name.clone());
            }
            init_statuses.push(st);
            continue;
        }
        let done = app_started && history.is_empty()
            || matches!(history.first(), Some(l)
            if state_of(l) == cri::ContainerState::ContainerExited && l.exit_code == 0);
        if let Some(l) = history.first() {
            if state_of(l) == cri::ContainerState::ContainerExited && l.exit_code != 0 {
                init_failed = true;
            }
        }
        // An init container is ready once it completed.
        st.ready = done;
        if !done {
            pending_init.push(c.name.clone());
        }
        init_statuses.push(st);
    }
    let initialized = pending_init.is_empty();

    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| {
            let history = input.containers.get(&c.name).unwrap_or(&empty);
            let w = input.waiting.get(&c.name).cloned().or_else(|| {
                (!initialized && history.is_empty()).then(|| Waiting::new("PodInitializing", ""))
            });
            let mut st = container_status(c, history, w.as_ref());
            let running = st.state.as_ref().is_some_and(|s| s.running.is_some());
            if running {
                if let Some((started, ready)) = input.probes.get(&c.name) {
                    st.started = Some(*started);
                    st.ready = *ready;
                } else if c.readiness_probe.is_some() || c.startup_probe.is_some() {
                    // Probes not running yet: not ready until the first success.
                    st.ready = false;
                    st.started = Some(c.startup_probe.is_none());
                }
            }
            st
        })
        .collect();

    // A terminal phase never changes back.
    let phase = match old.phase.as_deref() {
        Some(p @ ("Succeeded" | "Failed")) => p.to_string(),
        _ if !initialized && init_failed && policy == "Never" => "Failed".to_string(),
        _ if !initialized => "Pending".to_string(),
        _ => pod_phase(pod, &statuses).to_string(),
    };
    let terminal = phase == "Succeeded" || phase == "Failed";

    let unready: Vec<&str> = unready_sidecars
        .iter()
        .map(String::as_str)
        .chain(
            statuses
                .iter()
                .filter(|s| !s.ready)
                .map(|s| s.name.as_str()),
        )
        .collect();
    let all_ready = unready.is_empty() && !terminal;
    let (reason, message) = if terminal {
        (Some("PodCompleted"), None)
    } else if !all_ready {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    } else {
        (None, None)
    };
    let now = &input.now;
    let scheduled = old_conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .cloned()
        .unwrap_or_else(|| condition(&[], "PodScheduled", true, None, None, now));
    let conditions = vec![
        condition(
            &old_conditions,
            "PodReadyToStartContainers",
            input.sandbox_ready,
            None,
            None,
            now,
        ),
        if initialized {
            condition(
                &old_conditions,
                "Initialized",
                true,
                terminal.then_some("PodCompleted"),
                None,
                now,
            )
        } else {
            condition(
                &old_conditions,
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    pending_init.join(" ")
                )),
                now,
            )
        },
        condition(
            &old_conditions,
            "Ready",
            all_ready,
            reason,
            message.clone(),
            now,
        ),
        condition(
            &old_conditions,
            "ContainersReady",
            all_ready,
            reason,
            message,
            now,
        ),
        scheduled,
    ];

    let ips: Vec<String> = if input.pod_ips.is_empty() {
        // Keep what was reported once the sandbox is gone.
        old.pod_ips
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.ip)
            .collect()
    } else {
        input.pod_ips.clone()
    };
    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        host_ip: (!input.host_ip.is_empty()).then(|| input.host_ip.clone()),
        host_ips: (!input.host_ip.is_empty()).then(|| {
            if input.host_ips.is_empty() {
                vec![HostIP {
                    ip: input.host_ip.clone(),
                }]
            } else {
                input
                    .host_ips
                    .iter()
                    .map(|ip| HostIP { ip: ip.clone() })
                    .collect()
            }
        }),
        pod_ip: ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: old.start_time.clone().or_else(|| input.start_time.clone()),
        // Set by the kubelet when it ends a pod itself (DeadlineExceeded, Evicted): kept.
        reason: old.reason.clone(),
        message: old.message.clone(),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        ephemeral_container_statuses: {
            let eph: Vec<ContainerStatus> = spec
                .ephemeral_containers
                .iter()
                .flatten()
                .map(|e| {
                    let c = crate::reconcile::ephemeral_as_container(e);
                    let history = input.containers.get(&c.name).unwrap_or(&empty);
                    let w = input.waiting.get(&c.name).cloned().or_else(|| {
                        history
                            .is_empty()
                            .then(|| Waiting::new("ContainerCreating", ""))
                    });
                    let mut st = container_status(&c, history, w.as_ref());
                    st.started = None;
                    st
                })
                .collect();
            (!eph.is_empty()).then_some(eph)
        },
        qos_class: Some(
            old.qos_class
                .clone()
                .unwrap_or_else(|| qos_class(pod).into()),
        ),
        ..Default::default()
    }
}

/// Labels of a sandbox: the pod's own labels plus the kubelet's identity labels.
pub fn sandbox_labels(pod: &Pod) -> BTreeMap<String, String> {
    let mut l = pod.metadata.labels.clone().unwrap_or_default();
    l.insert(
        crate::cri::labels::POD_NAME.into(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    l.insert(
        crate::cri::labels::POD_NAMESPACE.into(),
        pod.metadata.namespace.clone().unwrap_or_default(),
    );
    l.insert(
        crate::cri::labels::POD_UID.into(),
        pod.metadata.uid.clone().unwrap_or_default(),
    );
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str, names: &[&str]) -> Pod {
        let containers: Vec<_> = names
            .iter()
            .map(|n| serde_json::json!({"name": n, "image": "busybox:1.36"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "sk-u"},
            "spec": {"restartPolicy": policy, "containers": containers}
        }))
        .unwrap()
    }

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn cri_status(
        id: &str,
        name: &str,
        attempt: u32,
        state: cri::ContainerState,
        exit: i32,
    ) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: id.into(),
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            state: state as i32,
            created_at: 1_000_000_000,
            started_at: 2_000_000_000,
            finished_at: if state == cri::ContainerState::ContainerExited {
                3_000_000_000
            } else {
                0
            },
            exit_code: exit,
            image_ref: "sha256:abc".into(),
            ..Default::default()
        }
    }

    fn input(containers: Vec<(&str, Vec<cri::ContainerStatus>)>, now: i64) -> StatusInput {
        StatusInput {
            host_ip: "10.0.0.5".into(),
            host_ips: vec![],
            pod_ips: vec!["10.42.0.7".into()],
            sandbox_ready: true,
            start_time: Some(t(10)),
            containers: containers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            waiting: HashMap::new(),
            now: t(now),
            probes: HashMap::new(),
        }
    }

    #[test]
    fn nothing_started_is_pending_container_creating() {
        let p = pod("Always", &["a"]);
        let st = compute_pod_status(&p, &input(vec![], 100));
        assert_eq!(st.phase.as_deref(), Some("Pending"));
        let w = st.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
        assert_eq!(st.qos_class.as_deref(), Some("BestEffort"));
        assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.7"));
        assert_eq!(st.start_time, Some(t(10)));
    }

    #[test]
    fn host_ips_list_both_families_primary_first() {
        let p = pod("Always", &["a"]);
        let ips = |st: &PodStatus| -> Vec<String> {
            st.host_ips.iter().flatten().map(|h| h.ip.clone()).collect()
        };
        let st = compute_pod_status(&p, &input(vec![], 100));
        assert_eq!(ips(&st), vec!["10.0.0.5"]);
        let mut i = input(vec![], 100);
        i.host_ips = vec!["10.0.0.5".into(), "fd00::5".into()];
        let st = compute_pod_status(&p, &i);
        assert_eq!(ips(&st), vec!["10.0.0.5", "fd00::5"]);
        assert_eq!(st.host_ip.as_deref(), Some("10.0.0.5"));
    }

    #[test]
    fn mixed_running_and_waiting_is_pending_and_not_ready() {
        let p = pod("Always", &["a", "b"]);
        let mut i = input(
            vec![(
                "a",
                vec![cri_status(
                    "x1",
                    "a",
                    0,
                    cri::ContainerState::ContainerRunning,
                    0,
                )],
            )],
            100,
        );
        i.waiting
            .insert("b".into(), Waiting::new("ErrImagePull", "no such image"));
        let st = compute_pod_status(&p, &i);
        assert_eq!(st.phase.as_deref(), Some("Pending"));
        let ready = st
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [b]")
        );
        let a = &st.container_statuses.as_ref().unwrap()[0];
        assert_eq!(a.container_id.as_deref(), Some("skiff://x1"));
        assert_eq!(
            a.state.clone().unwrap().running.unwrap().started_at,
            Some(t(2))
        );
    }

    #[test]
    fn phases_follow_restart_policy() {
        let exited = |code| {
            vec![(
                "a",
                vec![cri_status(
                    "x",
                    "a",
                    0,
                    cri::ContainerState::ContainerExited,
                    code,
                )],
            )]
        };
        let phase = |policy: &str, code| {
            compute_pod_status(&pod(policy, &["a"]), &input(exited(code), 100))
                .phase
                .unwrap()
        };
        assert_eq!(phase("Never", 0), "Succeeded");
        assert_eq!(phase("Never", 1), "Failed");
        assert_eq!(phase("OnFailure", 0), "Succeeded");
        assert_eq!(phase("OnFailure", 1), "Running");
        assert_eq!(phase("Always", 0), "Running");

        // Terminated details.
        let st = compute_pod_status(&pod("Never", &["a"]), &input(exited(7), 100));
        let term = st.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(term.exit_code, 7);
        assert_eq!(term.reason.as_deref(), Some("Error"));
        assert_eq!(term.started_at, Some(t(2)));
        assert_eq!(term.finished_at, Some(t(3)));
    }

    #[test]
    fn transition_times_are_kept_until_the_status_flips() {
        let p = pod("Always", &["a"]);
        let running = || {
            vec![(
                "a",
                vec![cri_status(
                    "x",
                    "a",
                    0,
                    cri::ContainerState::ContainerRunning,
                    0,
                )],
            )]
        };
        let st1 = compute_pod_status(&p, &input(running(), 100));
        let mut p1 = p.clone();
        p1.status = Some(st1.clone());
        let st2 = compute_pod_status(&p1, &input(running(), 200));
        assert_eq!(st1, st2, "same observations, same status");

        let mut crashed = input(
            vec![(
                "a",
                vec![cri_status(
                    "x",
                    "a",
                    0,
                    cri::ContainerState::ContainerExited,
                    1,
                )],
            )],
            300,
        );
        crashed
            .waiting
            .insert("a".into(), Waiting::new("CrashLoopBackOff", "back-off 10s"));
        let st3 = compute_pod_status(&p1, &crashed);
        let ready = st3
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.last_transition_time, Some(t(300)));
        let sched = st3
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .unwrap()
            .clone();
        assert_eq!(sched.last_transition_time, Some(t(100)));
        let a = &st3.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            a.last_state.clone().unwrap().terminated.unwrap().exit_code,
            1
        );
        assert_eq!(st3.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn terminal_phase_is_sticky_and_ips_are_kept() {
        let p = pod("Never", &["a"]);
        let mut done = p.clone();
        done.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            pod_ips: Some(vec![PodIP {
                ip: "10.42.0.9".into(),
            }]),
            ..Default::default()
        });
        let mut i = input(vec![], 100);
        i.pod_ips.clear();
        let st = compute_pod_status(&done, &i);
        assert_eq!(st.phase.as_deref(), Some("Succeeded"));
        assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.9"));
    }

    #[test]
    fn qos_classes() {
        let with_res = |res: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "a", "resources": res}]}
            }))
            .unwrap()
        };
        assert_eq!(qos_class(&with_res(serde_json::json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&with_res(serde_json::json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&with_res(
                serde_json::json!({"limits": {"cpu": "1", "memory": "64Mi"}})
            )),
            "Guaranteed"
        );
    }
}
