//! The HorizontalPodAutoscaler controller (upstream's `pkg/controller/podautoscaler`, role
//! `horizontal-pod-autoscaler`), for autoscaling/v2, every 15 s per autoscaler (upstream's sync
//! period) and at once when its spec changes:
//!
//! - reads the target's `/scale` (any kind that serves it, found by discovery): on failure
//!   `AbleToScale=False/FailedGetScale`, else `AbleToScale=True/SucceededGetScale`;
//! - a target scaled to 0 (with `minReplicas` > 0) is left alone: `ScalingActive=False/ScalingDisabled`;
//! - outside `[minReplicas, maxReplicas]` it is scaled to the bound through `/scale`
//!   (`SuccessfulRescale` "New size: N; reason: Current number of replicas below
//!   Spec.MinReplicas", `AbleToScale=True/SucceededRescale`, `lastScaleTime`);
//! - otherwise the metrics decide. `Resource` metrics are read from `metrics.k8s.io` (which the
//!   API server serves from the kubelets' summaries) and turned into a replica count as
//!   upstream does (`hpa_metrics.rs`: utilization of requests or average value, 10% tolerance),
//!   the highest recommendation of all metrics wins (none, if a metric is invalid and the
//!   others recommend a scale-down), then `hpa_behavior.rs` stabilizes and rate-limits it as
//!   upstream: `spec.behavior` (policies, `selectPolicy`, stabilization windows, with upstream's
//!   defaults) or, without it, the 5-minute scale-down window and `max(2 x current, 4)`;
//!   `AbleToScale` says `ReadyForNewScale`/`ScaleUpStabilized`/`ScaleDownStabilized`,
//!   `ScalingLimited` `DesiredWithinRange`/`TooManyReplicas`/`TooFewReplicas`/`ScaleUpLimit`/
//!   `ScaleDownLimit`;
//!   `ScalingActive=True/ValidMetricFound`, `status.currentMetrics`, and `SuccessfulRescale`
//!   "New size: N; reason: cpu resource utilization (percentage of request) above target".
//!   Metrics that cannot be read (other metric types: no custom or external metrics API) are
//!   reported in upstream's words: `ScalingActive=False` with `FailedGetResourceMetric` (or
//!   `FailedGet<Type>Metric`), "the HPA was unable to compute the replica count: ...", the
//!   matching warning event and `FailedComputeMetricsReplicas` ("invalid metrics (1 invalid out
//!   of 1), first error is: ..."). Warning events are recorded when their message changes.
//!
//! Not applied: the `--horizontal-pod-autoscaler-*` flags (upstream's defaults are fixed);
//! `behavior` defaults are applied by the controller, not written into the stored object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricSpec,
};
use kube::api::{DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Recorder, NORMAL, WARNING};
use crate::hpa_behavior::{
    self, normalize_with_behavior, scale_down_rules, scale_up_rules, History, Normalized,
};
use crate::informer::{Change, Informer};
use crate::queue::WorkQueue;
use crate::replicaset::api_message;
use crate::util::{key_of, split_key};
use crate::{Context, ControllerError};

pub const COMPONENT: &str = "horizontal-pod-autoscaler";
const SYNC_PERIOD: Duration = Duration::from_secs(15);
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

struct Ctl {
    client: Client,
    hpas: Arc<Informer<HorizontalPodAutoscaler>>,
    queue: Arc<WorkQueue>,
    rec: Recorder,
    /// The last warning message recorded per (autoscaler uid, reason).
    warned: Mutex<HashMap<(String, String), String>>,
    /// Recent recommendations and scale changes per autoscaler uid (stabilization and rates).
    history: Mutex<HashMap<String, History>>,
}

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(run_inner(ctx, stop))
}

async fn run_inner(ctx: Context, stop: BoxFuture<'static, ()>) -> Result<(), ControllerError> {
    let (_own_tx, own_rx) = tokio::sync::watch::channel(false);
    let c = Arc::new(Ctl {
        client: ctx.client.clone(),
        hpas: Informer::start(Api::all(ctx.reader.clone()), own_rx),
        queue: WorkQueue::new(),
        rec: Recorder::new(ctx.client.clone(), COMPONENT),
        warned: Mutex::default(),
        history: Mutex::default(),
    });
    let mut rx = c.hpas.subscribe();
    c.hpas.ready().await;
    tracing::info!(controller = COMPONENT, "caches synced");
    for h in c.hpas.store().state() {
        c.queue.add(key_of(h.as_ref()));
    }
    let handlers = {
        let c = c.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(Change::Added(h)) => c.queue.add(key_of(h.as_ref())),
                    // Our own status writes come back as updates: only spec changes count.
                    Ok(Change::Updated { old, new }) => {
                        if old.metadata.generation != new.metadata.generation {
                            c.queue.add(key_of(new.as_ref()));
                        }
                    }
                    Ok(Change::Deleted(h)) => {
                        let uid = h.uid().unwrap_or_default();
                        c.warned
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|(u, _), _| *u != uid);
                        c.history
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&uid);
                    }
                    Ok(Change::Resynced) => {}
                    Err(RecvError::Lagged(_)) => {
                        for h in c.hpas.store().state() {
                            c.queue.add(key_of(h.as_ref()));
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
    };
    let workers = c.queue.clone().run(2, COMPONENT, {
        let c = c.clone();
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        }
    });
    crate::util::until_stopped(COMPONENT, stop, handlers, workers).await
}

/// Sets a condition (its transition time moves only when the status does).
fn set_condition(
    st: &mut HorizontalPodAutoscalerStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) {
    let conds = st.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(crate::workload::now());
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message);
        }
        None => conds.push(HorizontalPodAutoscalerCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(crate::workload::now()),
        }),
    }
}

/// What a metric of each type is called in upstream's reasons and errors.
fn metric_words(m: &MetricSpec) -> (&'static str, String) {
    match m.type_.as_str() {
        "Resource" => {
            let name = m
                .resource
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default();
            ("FailedGetResourceMetric", name)
        }
        "ContainerResource" => {
            let name = m
                .container_resource
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default();
            ("FailedGetContainerResourceMetric", name)
        }
        "Pods" => (
            "FailedGetPodsMetric",
            m.pods
                .as_ref()
                .map(|p| p.metric.name.clone())
                .unwrap_or_default(),
        ),
        "Object" => (
            "FailedGetObjectMetric",
            m.object
                .as_ref()
                .map(|p| p.metric.name.clone())
                .unwrap_or_default(),
        ),
        "External" => (
            "FailedGetExternalMetric",
            m.external
                .as_ref()
                .map(|p| p.metric.name.clone())
                .unwrap_or_default(),
        ),
        _ => ("InvalidMetricSourceType", String::new()),
    }
}

impl Ctl {
    /// Records a warning when its message differs from the last one of that reason.
    fn warn_once(&self, hpa: &HorizontalPodAutoscaler, reason: &str, message: String) {
        let key = (hpa.uid().unwrap_or_default(), reason.to_string());
        let mut w = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if w.get(&key) == Some(&message) {
            return;
        }
        w.insert(key, message.clone());
        drop(w);
        self.rec.event(hpa, WARNING, reason, message);
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (ns, name) = split_key(key);
        let Some(hpa) = self.hpas.store().get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        // A request stuck on a dead connection must not hold a worker until the client's
        // read timeout: the sync is retried instead.
        match tokio::time::timeout(SYNC_TIMEOUT, self.reconcile(&hpa)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ControllerError::Stopped {
                    name: COMPONENT,
                    reason: format!("sync of {key} took longer than {SYNC_TIMEOUT:?}"),
                })
            }
        }
        Ok(Some(SYNC_PERIOD))
    }

    /// The target's scale API and its current scale.
    async fn get_scale(
        &self,
        hpa: &HorizontalPodAutoscaler,
    ) -> Result<(Api<DynamicObject>, k8s_openapi::api::autoscaling::v1::Scale), String> {
        let spec = hpa.spec.clone().unwrap_or_default();
        let r = &spec.scale_target_ref;
        let (group, version) = match r.api_version.as_deref().unwrap_or("").split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), r.api_version.clone().unwrap_or_default()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, &r.kind);
        let (ar, _) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| match e {
                kube::Error::Discovery(_) => {
                    format!("no matches for kind \"{}\" in group \"{}\"", r.kind, group)
                }
                other => api_message(&other),
            })?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &hpa.namespace().unwrap_or_default(),
            &ar,
        );
        let scale = api.get_scale(&r.name).await.map_err(|e| api_message(&e))?;
        Ok((api, scale))
    }

    /// Why the metrics cannot be had: the metrics APIs' answer, in upstream's words.
    async fn metrics_error(&self, hpa: &HorizontalPodAutoscaler, m: &MetricSpec) -> String {
        let ns = hpa.namespace().unwrap_or_default();
        let (_, name) = metric_words(m);
        let (path, what, api_name) = match m.type_.as_str() {
            "Resource" | "ContainerResource" => (
                format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"),
                "pods.metrics.k8s.io".to_string(),
                "resource metrics API",
            ),
            "External" => (
                format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{name}"),
                format!("{name}.external.metrics.k8s.io"),
                "external metrics API",
            ),
            _ => (
                format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/{name}"),
                "pods.custom.metrics.k8s.io".to_string(),
                "custom metrics API",
            ),
        };
        let req = http::Request::get(&path)
            .body(Vec::new())
            .expect("a GET request");
        let cause = match self.client.request_text(req).await {
            Err(kube::Error::Api(s)) if s.code == 404 => {
                format!("the server could not find the requested resource (get {what})")
            }
            Err(e) => api_message(&e),
            Ok(_) => "computing replicas from metrics is not supported by this version of Skiff"
                .to_string(),
        };
        let fetch = format!("unable to fetch metrics from {api_name}: {cause}");
        match m.type_.as_str() {
            "Resource" => format!(
                "failed to get {name} utilization: unable to get metrics for resource {name}: {fetch}"
            ),
            "ContainerResource" => format!(
                "failed to get {name} utilization: unable to get metrics for resource {name}: {fetch}"
            ),
            "Pods" => format!("unable to get metric {name}: {fetch}"),
            "Object" => format!("unable to get metric {name}: {fetch}"),
            "External" => format!("unable to get external metric {ns}/{name}: {fetch}"),
            other => format!("invalid metric source type {other:?}"),
        }
    }

    /// Reports metrics that could not be read, in upstream's words: `ScalingActive` False,
    /// the metric's warning event and `FailedComputeMetricsReplicas`.
    fn report_metric_errors(
        &self,
        hpa: &HorizontalPodAutoscaler,
        st: &mut HorizontalPodAutoscalerStatus,
        errors: &[(&MetricSpec, String)],
        total: usize,
    ) {
        let invalid = errors.len();
        let mut first: Option<String> = None;
        for (m, err) in errors {
            let (why, _) = metric_words(m);
            self.warn_once(hpa, why, err.clone());
            set_condition(
                st,
                "ScalingActive",
                "False",
                why,
                format!("the HPA was unable to compute the replica count: {err}"),
            );
            if first.is_none() {
                let prefix = match m.type_.as_str() {
                    "Resource" => format!(
                        "failed to get {} resource metric value: ",
                        metric_words(m).1
                    ),
                    "ContainerResource" => format!(
                        "failed to get {} container metric value: ",
                        metric_words(m).1
                    ),
                    "Pods" => "failed to get pods metric value: ".to_string(),
                    "Object" => "failed to get object metric value: ".to_string(),
                    "External" => "failed to get external metric value: ".to_string(),
                    _ => String::new(),
                };
                first = Some(format!("{prefix}{err}"));
            }
        }
        if let Some(first) = first {
            self.warn_once(
                hpa,
                "FailedComputeMetricsReplicas",
                format!(
                    "invalid metrics ({invalid} invalid out of {total}), first error is: {first}"
                ),
            );
        }
    }

    /// Stabilizes and rate-limits a recommendation (`hpa_behavior`), with the autoscaler's
    /// `behavior` if it has one.
    fn normalize(
        &self,
        hpa: &HorizontalPodAutoscaler,
        current: i32,
        recommended: i32,
        min: i32,
        max: i32,
    ) -> Normalized {
        let now = std::time::Instant::now();
        let mut all = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let h = all.entry(hpa.uid().unwrap_or_default()).or_default();
        match hpa.spec.as_ref().and_then(|s| s.behavior.as_ref()) {
            Some(b) => {
                let (up, down) = (scale_up_rules(b), scale_down_rules(b));
                normalize_with_behavior(h, now, &up, &down, current, recommended, min, max)
            }
            None => hpa_behavior::normalize(h, now, current, recommended, min, max),
        }
    }

    /// Remembers a scale change for the `behavior` policies' periods.
    fn record_scale(&self, hpa: &HorizontalPodAutoscaler, from: i32, to: i32) {
        let Some(b) = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref()) else {
            return;
        };
        let mut all = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let h = all.entry(hpa.uid().unwrap_or_default()).or_default();
        hpa_behavior::record_scale(
            h,
            &scale_up_rules(b),
            &scale_down_rules(b),
            std::time::Instant::now(),
            from,
            to,
        );
    }

    async fn reconcile(&self, hpa: &HorizontalPodAutoscaler) -> Result<(), ControllerError> {
        let old = hpa.status.clone().unwrap_or_default();
        let mut st = old.clone();
        st.observed_generation = hpa.metadata.generation;
        let spec = hpa.spec.clone().unwrap_or_default();
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let (api, scale) = match self.get_scale(hpa).await {
            Ok(v) => v,
            Err(e) => {
                let msg =
                    format!("the HPA controller was unable to get the target's current scale: {e}");
                self.warn_once(hpa, "FailedGetScale", e.clone());
                set_condition(&mut st, "AbleToScale", "False", "FailedGetScale", msg);
                return self.write_status(hpa, &old, st).await;
            }
        };
        set_condition(
            &mut st,
            "AbleToScale",
            "True",
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
        );
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let mut desired = current;
        let mut reason = None;
        if current == 0 && min != 0 {
            set_condition(
                &mut st,
                "ScalingActive",
                "False",
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            );
        } else if current > max {
            desired = max;
            reason = Some("Current number of replicas above Spec.MaxReplicas".to_string());
        } else if current < min {
            desired = min;
            reason = Some("Current number of replicas below Spec.MinReplicas".to_string());
        } else {
            let metrics = spec.metrics.clone().unwrap_or_default();
            let selector = scale
                .status
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            let ns = hpa.namespace().unwrap_or_default();
            let mut best: Option<(i32, String)> = None;
            let mut statuses = vec![];
            let mut errors: Vec<(&MetricSpec, String)> = vec![];
            for m in &metrics {
                if m.type_ == "Resource" {
                    match crate::hpa_metrics::resource_replicas(
                        &self.client,
                        &ns,
                        m,
                        current,
                        &selector,
                    )
                    .await
                    {
                        Ok(r) => {
                            statuses.push(r.status);
                            if best.as_ref().is_none_or(|(b, _)| r.replicas > *b) {
                                best = Some((r.replicas, r.description));
                            }
                        }
                        Err(e) => errors.push((m, e)),
                    }
                    continue;
                }
                errors.push((m, self.metrics_error(hpa, m).await));
            }
            // As upstream: with an invalid metric, the valid ones may scale up but not down.
            let partial_down =
                !errors.is_empty() && best.as_ref().is_some_and(|(r, _)| *r < current);
            let Some((recommended, description)) = best.filter(|_| !partial_down) else {
                self.report_metric_errors(hpa, &mut st, &errors, metrics.len());
                st.current_replicas = Some(current);
                st.desired_replicas = current;
                return self.write_status(hpa, &old, st).await;
            };
            st.current_metrics = Some(statuses);
            set_condition(
                &mut st,
                "ScalingActive",
                "True",
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {description}"
                ),
            );
            if recommended > current {
                reason = Some(format!("{description} above target"));
            } else if recommended < current {
                reason = Some("All metrics below target".to_string());
            }
            let n = self.normalize(hpa, current, recommended, min, max);
            set_condition(&mut st, "AbleToScale", "True", n.able.0, n.able.1.into());
            let (limited, why, message) = n.limited;
            let limited = if limited { "True" } else { "False" };
            set_condition(&mut st, "ScalingLimited", limited, why, message.into());
            desired = n.replicas;
            if desired == current {
                reason = None;
            }
        }
        if let Some(reason) = reason {
            let mut s = scale.clone();
            if let Some(spec) = s.spec.as_mut() {
                spec.replicas = Some(desired);
            }
            match api
                .replace_scale(&spec.scale_target_ref.name, &PostParams::default(), &s)
                .await
            {
                Ok(_) => {
                    set_condition(
                        &mut st,
                        "AbleToScale",
                        "True",
                        "SucceededRescale",
                        format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    );
                    self.rec.event(
                        hpa,
                        NORMAL,
                        "SuccessfulRescale",
                        format!("New size: {desired}; reason: {reason}"),
                    );
                    st.last_scale_time = Some(crate::workload::now());
                    self.record_scale(hpa, current, desired);
                }
                Err(e) => {
                    let e = api_message(&e);
                    self.warn_once(
                        hpa,
                        "FailedRescale",
                        format!("New size: {desired}; reason: {reason}; error: {e}"),
                    );
                    set_condition(
                        &mut st,
                        "AbleToScale",
                        "False",
                        "FailedUpdateScale",
                        format!("the HPA controller was unable to update the target scale: {e}"),
                    );
                    st.current_replicas = Some(current);
                    self.write_status(hpa, &old, st).await?;
                    return Err(ControllerError::Stopped {
                        name: COMPONENT,
                        reason: e,
                    });
                }
            }
        }
        st.current_replicas = Some(current);
        st.desired_replicas = desired;
        self.write_status(hpa, &old, st).await
    }

    async fn write_status(
        &self,
        hpa: &HorizontalPodAutoscaler,
        old: &HorizontalPodAutoscalerStatus,
        st: HorizontalPodAutoscalerStatus,
    ) -> Result<(), ControllerError> {
        if *old == st {
            return Ok(());
        }
        let api: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.client.clone(), &hpa.namespace().unwrap_or_default());
        let mut n = hpa.clone();
        n.metadata.managed_fields = None;
        n.status = Some(st);
        let name = hpa.name_any();
        let st = n.status.clone();
        let mut r = api.replace_status(&name, &PostParams::default(), &n).await;
        if matches!(&r, Err(kube::Error::Api(s)) if s.code == 409) {
            // The cache lags our own last write: this sync's status goes on the current
            // object (its spec is what the sync read, or the next sync corrects it).
            let mut fresh = api.get(&name).await?;
            fresh.metadata.managed_fields = None;
            fresh.status = st;
            r = api
                .replace_status(&name, &PostParams::default(), &fresh)
                .await;
        }
        match r {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
