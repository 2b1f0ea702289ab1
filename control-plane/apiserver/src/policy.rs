//! The default ClusterRoles and ClusterRoleBindings every cluster starts with, as data: the
//! rules follow upstream's bootstrap policy (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`,
//! `policy.go` and `controller_policy.go`), written here in our own table. Reconciled at every
//! start ([`reconcile`]): missing objects are created; existing ones whose
//! `rbac.authorization.kubernetes.io/autoupdate` annotation is not `"false"` get missing rules
//! and subjects added (nothing is removed), as upstream's reconciliation does.
//!
//! The controllers run as upstream's do with `--use-service-account-credentials`: each one with a
//! token of its service account `kube-system/<name>`, bound to `system:controller:<name>`.
//! Earlier Skiff versions also bound every controller role to `system:kube-controller-manager`
//! (`skiff:controller:<name>` bindings); [`reconcile`] deletes those.

use crate::handlers::{self, Ctx};
use crate::rbac::{Rule, GROUP};
use serde_json::{json, Value};

pub struct DefaultRole {
    pub name: String,
    pub rules: Vec<Rule>,
    /// Labels beyond `kubernetes.io/bootstrapping`.
    pub labels: Vec<(&'static str, &'static str)>,
    /// `aggregate-to-*` label values this role collects.
    pub aggregate: Option<&'static str>,
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const RW: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const CORE: &str = "";

fn r(verbs: &[&str], groups: &[&str], res: &[&str]) -> Rule {
    Rule::new(verbs, groups, res)
}

fn events() -> Rule {
    r(
        &["create", "patch", "update"],
        &[CORE, "events.k8s.io"],
        &["events"],
    )
}

fn role(name: &str, rules: Vec<Rule>) -> DefaultRole {
    DefaultRole {
        name: name.into(),
        rules,
        labels: vec![],
        aggregate: None,
    }
}

/// Upstream's ClusterRoles (the first is cluster-admin, the second admin's aggregated view).
pub fn cluster_roles() -> Vec<DefaultRole> {
    let mut v = vec![
        role(
            "cluster-admin",
            vec![r(&["*"], &["*"], &["*"]), Rule::urls(&["*"], &["*"])],
        ),
        role(
            "system:aggregate-to-admin",
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                r(RW, &[GROUP], &["rolebindings", "roles"]),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            vec![
                r(
                    READ,
                    &[CORE],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                r(&["impersonate"], &[CORE], &["serviceaccounts"]),
                r(
                    WRITE,
                    &[CORE],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                r(&["create"], &[CORE], &["pods/eviction"]),
                r(
                    WRITE,
                    &[CORE],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                r(&["create"], &[CORE], &["serviceaccounts/token"]),
                r(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                r(WRITE, &["batch"], &["cronjobs", "jobs"]),
                r(
                    WRITE,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "ingresses",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(WRITE, &["policy"], &["poddisruptionbudgets"]),
                r(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                r(RW, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        role(
            "system:aggregate-to-view",
            vec![
                r(
                    READ,
                    &[CORE],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                r(
                    READ,
                    &[CORE],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                r(READ, &[CORE], &["namespaces"]),
                r(READ, &["discovery.k8s.io"], &["endpointslices"]),
                r(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                r(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                r(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                r(
                    READ,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                r(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
        ),
        role(
            "system:discovery",
            vec![Rule::urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:basic-user",
            vec![
                r(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
            ],
        ),
        role(
            "system:public-info-viewer",
            vec![Rule::urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:monitoring",
            vec![Rule::urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            vec![Rule::urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        role(
            "system:auth-delegator",
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        role(
            "system:heapster",
            vec![
                r(
                    &["get", "list", "watch"],
                    &[CORE],
                    &["events", "namespaces", "nodes", "pods"],
                ),
                r(&["get", "list", "watch"], &["extensions"], &["deployments"]),
            ],
        ),
        role("system:node", node_rules()),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![r(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![r(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        role(
            "system:node-bootstrapper",
            vec![r(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        role(
            "system:node-problem-detector",
            vec![
                r(&["get"], &[CORE], &["nodes"]),
                r(&["patch"], &[CORE], &["nodes/status"]),
                events(),
            ],
        ),
        role(
            "system:kubelet-api-admin",
            vec![
                r(&["get", "list", "watch", "proxy"], &[CORE], &["nodes"]),
                r(
                    &["*"],
                    &[CORE],
                    &["nodes/log", "nodes/metrics", "nodes/proxy", "nodes/stats"],
                ),
            ],
        ),
        role(
            "system:node-proxier",
            vec![
                r(&["list", "watch"], &[CORE], &["endpoints", "services"]),
                r(&["get", "list", "watch"], &[CORE], &["nodes"]),
                events(),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        role(
            "system:kube-dns",
            vec![r(&["list", "watch"], &[CORE], &["endpoints", "services"])],
        ),
        // Skiff's own components beyond upstream's: the built-in cluster DNS (what CoreDNS
        // reads, plus keeping its kube-dns Service and Endpoints) and the built-in service
        // load balancer in the proxy (k3s's servicelb writes LoadBalancer statuses).
        role(
            "skiff:dns",
            vec![
                r(&["list", "watch"], &[CORE], &["endpoints", "services"]),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                r(&["create"], &[CORE], &["endpoints", "services"]),
                r(
                    &["get", "patch", "update"],
                    &[CORE],
                    &["endpoints", "services"],
                )
                .names(&["kube-dns"]),
            ],
        ),
        role(
            "skiff:service-lb",
            vec![r(
                &["get", "patch", "update"],
                &[CORE],
                &["services/status"],
            )],
        ),
        role(
            "system:persistent-volume-provisioner",
            vec![
                r(
                    &["create", "delete", "get", "list", "watch"],
                    &[CORE],
                    &["persistentvolumes"],
                ),
                r(
                    &["get", "list", "update", "watch"],
                    &[CORE],
                    &["persistentvolumeclaims"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses"]),
                r(&["list", "watch"], &[CORE], &["events"]),
                events(),
            ],
        ),
        role(
            "system:volume-scheduler",
            vec![
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[CORE],
                    &["persistentvolumes"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses"]),
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[CORE],
                    &["persistentvolumeclaims"],
                ),
            ],
        ),
        role(
            "system:kube-scheduler",
            vec![
                events(),
                r(&["create"], &["coordination.k8s.io"], &["leases"]),
                r(&["get", "update"], &["coordination.k8s.io"], &["leases"])
                    .names(&["kube-scheduler"]),
                r(&["create"], &[CORE], &["endpoints"]),
                r(&["get", "update"], &[CORE], &["endpoints"]).names(&["kube-scheduler"]),
                r(READ, &[CORE], &["nodes"]),
                r(&["delete", "get", "list", "watch"], &[CORE], &["pods"]),
                r(&["create"], &[CORE], &["bindings", "pods/binding"]),
                r(&["patch", "update"], &[CORE], &["pods/status"]),
                r(READ, &[CORE], &["replicationcontrollers", "services"]),
                r(READ, &["apps", "extensions"], &["replicasets"]),
                r(READ, &["apps"], &["statefulsets"]),
                r(READ, &["policy"], &["poddisruptionbudgets"]),
                r(
                    READ,
                    &[CORE],
                    &["persistentvolumeclaims", "persistentvolumes"],
                ),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                r(READ, &["storage.k8s.io"], &["csinodes"]),
                r(READ, &[CORE], &["namespaces"]),
                r(READ, &["storage.k8s.io"], &["csidrivers"]),
                r(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
            ],
        ),
        role(
            "system:kube-controller-manager",
            vec![
                events(),
                r(&["create"], &["coordination.k8s.io"], &["leases"]),
                r(&["get", "update"], &["coordination.k8s.io"], &["leases"])
                    .names(&["kube-controller-manager"]),
                r(&["create"], &[CORE], &["endpoints"]),
                r(&["get", "update"], &[CORE], &["endpoints"]).names(&["kube-controller-manager"]),
                r(&["create"], &[CORE], &["secrets", "serviceaccounts"]),
                r(&["delete"], &[CORE], &["secrets"]),
                r(
                    &["get"],
                    &[CORE],
                    &["configmaps", "namespaces", "secrets", "serviceaccounts"],
                ),
                r(&["update"], &[CORE], &["secrets", "serviceaccounts"]),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                r(&["list", "watch"], &["*"], &["*"]),
                r(&["create"], &[CORE], &["serviceaccounts/token"]),
            ],
        ),
    ];
    for d in &mut v {
        match d.name.as_str() {
            "system:aggregate-to-admin" => {
                d.labels = vec![("rbac.authorization.k8s.io/aggregate-to-admin", "true")]
            }
            "system:aggregate-to-edit" => {
                d.labels = vec![("rbac.authorization.k8s.io/aggregate-to-edit", "true")]
            }
            "system:aggregate-to-view" => {
                d.labels = vec![("rbac.authorization.k8s.io/aggregate-to-view", "true")]
            }
            _ => {}
        }
    }
    for (name, agg, label) in [
        ("admin", "admin", None),
        (
            "edit",
            "edit",
            Some("rbac.authorization.k8s.io/aggregate-to-admin"),
        ),
        (
            "view",
            "view",
            Some("rbac.authorization.k8s.io/aggregate-to-edit"),
        ),
    ] {
        v.push(DefaultRole {
            name: name.into(),
            rules: vec![],
            labels: label.map(|l| vec![(l, "true")]).unwrap_or_default(),
            aggregate: Some(agg),
        });
    }
    for (name, rules) in controller_roles() {
        v.push(role(&format!("system:controller:{name}"), rules));
    }
    v
}

/// The kubelet's rules (upstream's NodeRules): the node authorizer answers kubelets from these
/// plus its own graph checks; the `system:node` ClusterRoleBinding has no subjects.
pub fn node_rules() -> Vec<Rule> {
    vec![
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews", "subjectaccessreviews"],
        ),
        r(READ, &[CORE], &["services"]),
        r(&["create", "get", "list", "watch"], &[CORE], &["nodes"]),
        r(&["patch", "update"], &[CORE], &["nodes/status"]),
        r(&["patch", "update"], &[CORE], &["nodes"]),
        r(&["create", "patch", "update"], &[CORE], &["events"]),
        r(READ, &[CORE], &["pods"]),
        r(&["create", "delete"], &[CORE], &["pods"]),
        r(&["patch", "update"], &[CORE], &["pods/status"]),
        r(&["create"], &[CORE], &["pods/eviction"]),
        r(READ, &[CORE], &["configmaps", "secrets"]),
        r(
            &["get"],
            &[CORE],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        r(&["get"], &[CORE], &["endpoints"]),
        r(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        r(
            &["create", "delete", "get", "patch", "update"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        r(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        r(
            &["get", "patch", "update"],
            &[CORE],
            &["persistentvolumeclaims/status"],
        ),
        r(&["create"], &[CORE], &["serviceaccounts/token"]),
        r(READ, &["storage.k8s.io"], &["csidrivers"]),
        r(READ, &["node.k8s.io"], &["runtimeclasses"]),
        r(
            &["create", "delete", "get", "patch", "update"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
    ]
}

/// Upstream's per-controller roles (`system:controller:<name>`), bound to the service account
/// `kube-system/<name>`.
pub fn controller_roles() -> Vec<(&'static str, Vec<Rule>)> {
    vec![
        (
            "certificate-controller",
            vec![
                r(
                    &["delete", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                r(
                    &["update"],
                    &["certificates.k8s.io"],
                    &[
                        "certificatesigningrequests/approval",
                        "certificatesigningrequests/status",
                    ],
                ),
                r(&["approve"], &["certificates.k8s.io"], &["signers"])
                    .names(&["kubernetes.io/kube-apiserver-client-kubelet"]),
                r(&["sign"], &["certificates.k8s.io"], &["signers"]).names(&[
                    "kubernetes.io/kube-apiserver-client",
                    "kubernetes.io/kube-apiserver-client-kubelet",
                    "kubernetes.io/kubelet-serving",
                    "kubernetes.io/legacy-unknown",
                ]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                events(),
            ],
        ),
        (
            "clusterrole-aggregation-controller",
            vec![r(
                &["escalate", "get", "list", "patch", "update", "watch"],
                &[GROUP],
                &["clusterroles"],
            )],
        ),
        (
            "cronjob-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &["batch"],
                    &["cronjobs"],
                ),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["batch"],
                    &["jobs"],
                ),
                r(&["update"], &["batch"], &["cronjobs/status"]),
                r(&["update"], &["batch"], &["cronjobs/finalizers"]),
                r(&["delete", "list"], &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                r(READ, &["apps", "extensions"], &["daemonsets"]),
                r(&["update"], &["apps", "extensions"], &["daemonsets/status"]),
                r(
                    &["update"],
                    &["apps", "extensions"],
                    &["daemonsets/finalizers"],
                ),
                r(&["list", "watch"], &[CORE], &["nodes"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[CORE],
                    &["pods"],
                ),
                r(&["create"], &[CORE], &["pods/binding"]),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                events(),
            ],
        ),
        (
            "deployment-controller",
            vec![
                // Upstream's role has update only; Skiff's controller writes the revision
                // annotation and the status by merge patch (the same rights).
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &["apps", "extensions"],
                    &["deployments"],
                ),
                r(
                    &["patch", "update"],
                    &["apps", "extensions"],
                    &["deployments/status"],
                ),
                r(
                    &["update"],
                    &["apps", "extensions"],
                    &["deployments/finalizers"],
                ),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps", "extensions"],
                    &["replicasets"],
                ),
                r(&["get", "list", "update", "watch"], &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "disruption-controller",
            vec![
                r(READ, &["apps", "extensions"], &["deployments"]),
                r(READ, &["apps", "extensions"], &["replicasets"]),
                r(READ, &[CORE], &["replicationcontrollers"]),
                r(READ, &["policy"], &["poddisruptionbudgets"]),
                r(READ, &["apps"], &["statefulsets"]),
                r(&["update"], &["policy"], &["poddisruptionbudgets/status"]),
                r(&["get"], &["*"], &["*/scale"]),
                r(&["patch", "update"], &[CORE], &["pods/status"]),
                events(),
            ],
        ),
        (
            "endpoint-controller",
            vec![
                r(READ, &[CORE], &["pods", "services"]),
                r(
                    &["create", "delete", "get", "list", "update"],
                    &[CORE],
                    &["endpoints"],
                ),
                r(&["create"], &[CORE], &["endpoints/restricted"]),
                events(),
            ],
        ),
        (
            "endpointslice-controller",
            vec![
                r(READ, &[CORE], &["pods", "services"]),
                r(READ, &[CORE], &["nodes"]),
                r(&["update"], &[CORE], &["services/finalizers"]),
                r(
                    &["create", "delete", "get", "list", "update", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        (
            "endpointslicemirroring-controller",
            vec![
                r(READ, &[CORE], &["endpoints", "services"]),
                r(&["update"], &[CORE], &["services/finalizers"]),
                r(&["update"], &[CORE], &["endpoints/finalizers"]),
                r(
                    &["create", "delete", "get", "list", "update", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        (
            "generic-garbage-collector",
            vec![r(
                &["delete", "get", "list", "patch", "update", "watch"],
                &["*"],
                &["*"],
            )],
        ),
        (
            "horizontal-pod-autoscaler",
            vec![
                r(READ, &["autoscaling"], &["horizontalpodautoscalers"]),
                r(
                    &["update"],
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                ),
                r(&["get", "update"], &["*"], &["*/scale"]),
                r(&["list"], &[CORE], &["pods"]),
                r(&["get"], &[CORE], &["services"]).names(&["http:heapster:", "https:heapster:"]),
                r(&["list"], &["metrics.k8s.io"], &["pods"]),
                r(&["get", "list"], &["custom.metrics.k8s.io"], &["*"]),
                r(&["get", "list"], &["external.metrics.k8s.io"], &["*"]),
                events(),
            ],
        ),
        (
            "job-controller",
            vec![
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &["batch"],
                    &["jobs"],
                ),
                r(&["update"], &["batch"], &["jobs/status"]),
                r(&["update"], &["batch"], &["jobs/finalizers"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[CORE],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "namespace-controller",
            vec![
                r(
                    &["delete", "get", "list", "watch"],
                    &[CORE],
                    &["namespaces"],
                ),
                r(
                    &["update"],
                    &[CORE],
                    &["namespaces/finalize", "namespaces/status"],
                ),
                r(
                    &["delete", "deletecollection", "get", "list"],
                    &["*"],
                    &["*"],
                ),
            ],
        ),
        (
            "node-controller",
            vec![
                r(
                    &["delete", "get", "list", "patch", "update"],
                    &[CORE],
                    &["nodes"],
                ),
                r(&["patch", "update"], &[CORE], &["nodes/status"]),
                r(&["patch", "update"], &[CORE], &["pods/status"]),
                r(&["delete", "list"], &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "pod-garbage-collector",
            vec![
                r(&["delete", "list", "watch"], &[CORE], &["pods"]),
                r(&["get", "list"], &[CORE], &["nodes"]),
                r(&["patch"], &[CORE], &["pods/status"]),
            ],
        ),
        (
            "replicaset-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &["apps", "extensions"],
                    &["replicasets"],
                ),
                // Upstream: update only; Skiff's controller writes status by merge patch.
                r(
                    &["patch", "update"],
                    &["apps", "extensions"],
                    &["replicasets/status"],
                ),
                r(
                    &["update"],
                    &["apps", "extensions"],
                    &["replicasets/finalizers"],
                ),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[CORE],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "replication-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &[CORE],
                    &["replicationcontrollers"],
                ),
                r(
                    &["patch", "update"],
                    &[CORE],
                    &["replicationcontrollers/status"],
                ),
                r(&["update"], &[CORE], &["replicationcontrollers/finalizers"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[CORE],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "resourcequota-controller",
            vec![
                r(&["list", "watch"], &["*"], &["*"]),
                r(&["update"], &[CORE], &["resourcequotas/status"]),
                events(),
            ],
        ),
        (
            "root-ca-cert-publisher",
            vec![r(&["create", "update"], &[CORE], &["configmaps"]), events()],
        ),
        (
            "service-account-controller",
            vec![r(&["create"], &[CORE], &["serviceaccounts"]), events()],
        ),
        (
            "service-controller",
            vec![
                r(READ, &[CORE], &["services"]),
                r(&["patch", "update"], &[CORE], &["services/status"]),
                r(&["list", "watch"], &[CORE], &["nodes"]),
                events(),
            ],
        ),
        (
            "statefulset-controller",
            vec![
                r(&["list", "watch"], &[CORE], &["pods"]),
                r(&["list", "watch"], &["apps"], &["statefulsets"]),
                r(&["update"], &["apps"], &["statefulsets/status"]),
                r(&["update"], &["apps"], &["statefulsets/finalizers"]),
                r(
                    &["create", "delete", "get", "patch", "update"],
                    &[CORE],
                    &["pods"],
                ),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                r(&["create", "get"], &[CORE], &["persistentvolumeclaims"]),
                // Upstream: delete and update (retention policy owner references); Skiff's
                // controller sets them by merge patch.
                r(
                    &["delete", "patch", "update"],
                    &[CORE],
                    &["persistentvolumeclaims"],
                ),
                events(),
            ],
        ),
        (
            "ttl-after-finished-controller",
            vec![
                r(&["delete", "get", "list", "watch"], &["batch"], &["jobs"]),
                events(),
            ],
        ),
        (
            "ttl-controller",
            vec![
                r(&["list", "patch", "update", "watch"], &[CORE], &["nodes"]),
                events(),
            ],
        ),
        (
            "pvc-protection-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &[CORE],
                    &["persistentvolumeclaims"],
                ),
                r(&["get", "list", "watch"], &[CORE], &["pods"]),
                events(),
            ],
        ),
        (
            "pv-protection-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &[CORE],
                    &["persistentvolumes"],
                ),
                events(),
            ],
        ),
        (
            // Upstream's binder rules, plus creating Skiff's default `local-path` StorageClass
            // (k3s ships its class as a manifest applied by the admin).
            "persistent-volume-binder",
            vec![
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &[CORE],
                    &["persistentvolumes"],
                ),
                r(&["patch", "update"], &[CORE], &["persistentvolumes/status"]),
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[CORE],
                    &["persistentvolumeclaims"],
                ),
                r(
                    &["patch", "update"],
                    &[CORE],
                    &["persistentvolumeclaims/status"],
                ),
                r(&["get", "list", "watch"], &[CORE], &["pods", "nodes"]),
                r(
                    &["create", "get", "list", "watch"],
                    &["storage.k8s.io"],
                    &["storageclasses"],
                ),
                events(),
            ],
        ),
    ]
}

/// (binding name, role, subjects): upstream's default ClusterRoleBindings plus Skiff's.
pub fn cluster_role_bindings() -> Vec<(String, String, Vec<Value>)> {
    let group = |n: &str| json!({"apiGroup": GROUP, "kind": "Group", "name": n});
    let user = |n: &str| json!({"apiGroup": GROUP, "kind": "User", "name": n});
    let sa = |n: &str| json!({"kind": "ServiceAccount", "name": n, "namespace": "kube-system"});
    let mut v: Vec<(String, String, Vec<Value>)> = vec![
        (
            "cluster-admin".into(),
            "cluster-admin".into(),
            vec![group("system:masters")],
        ),
        (
            "system:discovery".into(),
            "system:discovery".into(),
            vec![group("system:authenticated")],
        ),
        (
            "system:basic-user".into(),
            "system:basic-user".into(),
            vec![group("system:authenticated")],
        ),
        (
            "system:public-info-viewer".into(),
            "system:public-info-viewer".into(),
            vec![
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        ),
        (
            "system:monitoring".into(),
            "system:monitoring".into(),
            vec![group("system:monitoring")],
        ),
        (
            "system:service-account-issuer-discovery".into(),
            "system:service-account-issuer-discovery".into(),
            vec![group("system:serviceaccounts")],
        ),
        ("system:node".into(), "system:node".into(), vec![]),
        // kubeadm's (and k3s's) bindings for the kubelet client CSR auto-approver.
        (
            "skiff:node-autoapprove-bootstrap".into(),
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient".into(),
            vec![group("system:bootstrappers")],
        ),
        (
            "skiff:node-autoapprove-certificate-rotation".into(),
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient".into(),
            vec![group("system:nodes")],
        ),
        // The API server's kubelet-client identity (pods/log, exec, attach, port-forward and
        // nodes/proxy go to kubelets with it), as kubeadm binds `kube-apiserver-kubelet-client`.
        (
            "system:kube-apiserver-kubelet-api-admin".into(),
            "system:kubelet-api-admin".into(),
            vec![user("system:kube-apiserver")],
        ),
        (
            "system:node-proxier".into(),
            "system:node-proxier".into(),
            vec![user("system:kube-proxy")],
        ),
        (
            "skiff:service-lb".into(),
            "skiff:service-lb".into(),
            vec![user("system:kube-proxy")],
        ),
        (
            "skiff:dns".into(),
            "skiff:dns".into(),
            vec![user(crate::pki::DNS_USER)],
        ),
        (
            "system:kube-dns".into(),
            "system:kube-dns".into(),
            vec![sa("kube-dns")],
        ),
        (
            "system:kube-scheduler".into(),
            "system:kube-scheduler".into(),
            vec![user("system:kube-scheduler")],
        ),
        (
            "system:volume-scheduler".into(),
            "system:volume-scheduler".into(),
            vec![user("system:kube-scheduler")],
        ),
        (
            "system:kube-controller-manager".into(),
            "system:kube-controller-manager".into(),
            vec![user("system:kube-controller-manager")],
        ),
    ];
    for (name, _) in controller_roles() {
        let role = format!("system:controller:{name}");
        v.push((role.clone(), role, vec![sa(name)]));
    }
    v
}

/// Creates or tops up the default ClusterRoles and ClusterRoleBindings.
pub async fn reconcile(ctx: &Ctx) {
    let Some(cr) = ctx.registry.by_kind(GROUP, "ClusterRole") else {
        return;
    };
    let Some(crb) = ctx.registry.by_kind(GROUP, "ClusterRoleBinding") else {
        return;
    };
    let meta = |name: &str, labels: &[(&str, &str)]| {
        let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
        for (k, v) in labels {
            l[*k] = json!(v);
        }
        json!({"name": name, "labels": l,
               "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
    };
    for d in cluster_roles() {
        let mut o = json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRole",
            "metadata": meta(&d.name, &d.labels), "rules": d.rules});
        if let Some(agg) = d.aggregate {
            o["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels":
                {format!("rbac.authorization.k8s.io/aggregate-to-{agg}"): "true"}}]});
        }
        top_up(ctx, &cr, o, "rules").await;
    }
    for (name, role, subjects) in cluster_role_bindings() {
        let o = json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRoleBinding",
            "metadata": meta(&name, &[]),
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
            "subjects": subjects});
        top_up(ctx, &crb, o, "subjects").await;
    }
    // Bindings of earlier versions that gave the controller manager every controller's rights.
    for (name, _) in controller_roles() {
        let key = crb.key(None, &format!("skiff:controller:{name}"));
        if let Ok(Some(kv)) = ctx.store.get(&key).await {
            let bootstrapped = handlers::decode_as(&crb, &kv).is_ok_and(|o| {
                o["metadata"]["labels"]["kubernetes.io/bootstrapping"] == "rbac-defaults"
            });
            if bootstrapped {
                let _ = ctx.store.delete(&key, Some(kv.mod_revision)).await;
            }
        }
    }
    ctx.rbac.invalidate();
}

/// Creates `want`, or adds the entries of `field` it lacks to the stored object.
async fn top_up(ctx: &Ctx, res: &crate::registry::Resource, mut want: Value, field: &str) {
    let key = res.key(None, want["metadata"]["name"].as_str().unwrap_or(""));
    let Ok(Some(kv)) = ctx.store.get(&key).await else {
        crate::lifecycle::create_internal(ctx, res, &mut want).await;
        return;
    };
    let Ok(mut cur) = handlers::decode_as(res, &kv) else {
        return;
    };
    if cur["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] == "false" {
        return;
    }
    if cur["aggregationRule"].is_object() {
        return;
    }
    let mut items = cur[field].as_array().cloned().unwrap_or_default();
    let mut changed = false;
    for w in want[field].as_array().into_iter().flatten() {
        if !items.contains(w) {
            items.push(w.clone());
            changed = true;
        }
    }
    if changed {
        cur[field] = json!(items);
        let _ = ctx
            .store
            .update(&key, handlers::encode_for(res, &cur), Some(kv.mod_revision))
            .await;
    }
}
