//! HorizontalPodAutoscalers (autoscaling/v2) on the control plane, which serves no metrics API:
//! `kubectl autoscale` bounds the Deployment's replicas to `--min`/`--max` through its scale
//! subresource, and the conditions and events say what upstream's controller says without
//! metrics (`kubectl describe hpa`).

use serde_json::Value;
use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);
/// No node runs the pods here, so the metrics API has nothing for them (upstream's words).
const NO_METRICS: &str = "failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API";

fn get_json(c: &ControlPlane, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let o = c.kubectl(&a);
    if !o.ok {
        return Value::Null;
    }
    serde_json::from_str(&o.stdout).unwrap_or(Value::Null)
}

fn condition(hpa: &Value, type_: &str) -> Value {
    hpa["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

fn replicas(c: &ControlPlane, deploy: &str) -> i64 {
    get_json(c, &["deployment", deploy])["spec"]["replicas"]
        .as_i64()
        .unwrap_or(-1)
}

#[test]
fn autoscale_bounds_replicas_and_reports_missing_metrics() {
    let c = ControlPlane::start();
    c.ok(&[
        "create",
        "deployment",
        "sk-app",
        "--image=sk-none:latest",
        "--replicas=1",
    ]);
    c.ok(&["autoscale", "deployment", "sk-app", "--min=2", "--max=4"]);
    let hpa = get_json(&c, &["hpa.v2.autoscaling", "sk-app"]);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["name"], "cpu",
        "the default metric: {hpa}"
    );

    // Below --min: scaled up to 2.
    c.wait_for("sk-app to be scaled to 2", WAIT, || {
        replicas(&c, "sk-app") == 2
    });
    // Within the bounds the metrics decide, and there are none.
    let mut last = Value::Null;
    let start = std::time::Instant::now();
    loop {
        let hpa = get_json(&c, &["hpa.v2.autoscaling", "sk-app"]);
        let able = condition(&hpa, "AbleToScale");
        let active = condition(&hpa, "ScalingActive");
        if able["status"] == "True"
            && able["reason"] == "SucceededGetScale"
            && able["message"] == "the HPA controller was able to get the target's current scale"
            && active["status"] == "False"
            && active["reason"] == "FailedGetResourceMetric"
            && active["message"]
                == format!("the HPA was unable to compute the replica count: {NO_METRICS}").as_str()
            && hpa["status"]["currentReplicas"] == 2
            && hpa["status"]["desiredReplicas"] == 2
        {
            break;
        }
        last = hpa;
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for the HPA's conditions; last: {}\n{}",
            last["status"],
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = last;
    let d = c.ok(&["describe", "hpa", "sk-app"]);
    for want in [
        "Deployment/sk-app",
        "AbleToScale",
        "SucceededGetScale",
        "ScalingActive",
        "FailedGetResourceMetric",
        "SuccessfulRescale",
        "New size: 2; reason: Current number of replicas below Spec.MinReplicas",
        "FailedComputeMetricsReplicas",
        "invalid metrics (1 invalid out of 1), first error is: failed to get cpu resource metric value:",
        "horizontal-pod-autoscaler",
    ] {
        assert!(d.contains(want), "kubectl describe hpa lacks {want:?}:\n{d}");
    }
    let listed = c.ok(&["get", "hpa", "sk-app"]);
    assert!(
        listed.contains("cpu: <unknown>/80%") && listed.contains("Deployment/sk-app"),
        "{listed}"
    );

    // Above --max: scaled back down to 4.
    c.ok(&["scale", "deployment", "sk-app", "--replicas=7"]);
    c.wait_for("sk-app to be scaled back to 4", WAIT, || {
        replicas(&c, "sk-app") == 4
    });
    c.wait_for("the rescale event", WAIT, || {
        c.ok(&["describe", "hpa", "sk-app"])
            .contains("New size: 4; reason: Current number of replicas above Spec.MaxReplicas")
    });

    // A target that does not exist: AbleToScale False.
    let o = c.with_stdin(
        &["apply", "-f", "-"],
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: sk-missing
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: sk-missing
  minReplicas: 1
  maxReplicas: 3
"#,
    );
    assert!(o.ok, "{}", o.stderr);
    c.wait_for("sk-missing to report FailedGetScale", WAIT, || {
        let able = condition(&get_json(&c, &["hpa.v2.autoscaling", "sk-missing"]), "AbleToScale");
        able["status"] == "False"
            && able["reason"] == "FailedGetScale"
            && able["message"]
                == "the HPA controller was unable to get the target's current scale: deployments.apps \"sk-missing\" not found"
    });

    c.ok(&["delete", "hpa", "sk-app", "sk-missing"]);
    c.ok(&["delete", "deployment", "sk-app"]);
}

#[test]
fn autoscaler_scales_up_on_cpu_utilization() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    let o = c.with_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: sk-hot}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: sk-hot}}}}
  template:
    metadata: {{labels: {{app: sk-hot}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: spin
        image: {img}
        command: ["sh", "-c", "while :; do :; done"]
        resources: {{requests: {{cpu: 100m}}}}
"#
        ),
    );
    assert!(o.ok, "{}", o.stderr);
    c.ok(&["rollout", "status", "deploy/sk-hot", "--timeout=90s"]);
    c.ok(&[
        "autoscale",
        "deployment",
        "sk-hot",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    // One spinning pod uses far more than 50% of its 100m request: up to the maximum.
    let mut hpa = Value::Null;
    c.wait_for(
        "the autoscaler to scale up",
        Duration::from_secs(120),
        || {
            hpa = get_json(&c, &["hpa.v2.autoscaling", "sk-hot"]);
            hpa["status"]["desiredReplicas"] == 3
        },
    );
    let active = condition(&hpa, "ScalingActive");
    assert_eq!(active["reason"], "ValidMetricFound", "{hpa}");
    assert_eq!(
        active["message"],
        "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"
    );
    assert_eq!(
        condition(&hpa, "ScalingLimited")["reason"],
        "TooManyReplicas"
    );
    let util = hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
        .as_i64()
        .unwrap_or(0);
    assert!(util > 50, "{hpa}");
    c.wait_for("3 replicas", Duration::from_secs(60), || {
        c.ok(&["get", "deploy", "sk-hot", "-o", "jsonpath={.spec.replicas}"]) == "3"
    });
    let d = c.ok(&["describe", "hpa", "sk-hot"]);
    assert!(
        d.contains(
            "New size: 3; reason: cpu resource utilization (percentage of request) above target"
        ),
        "{d}"
    );
    c.ok(&["delete", "deploy", "sk-hot", "--wait=false"]);
}
