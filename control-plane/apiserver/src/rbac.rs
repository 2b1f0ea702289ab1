//! Authorization: `system:masters` first (it may do everything, as upstream's privileged-group
//! authorizer), then the node authorizer ([`crate::nodeauthz`]) for kubelets, then RBAC.
//!
//! RBAC is answered from an in-memory [`Snapshot`] of every Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding, indexed by subject (user name or group), so one decision looks only at
//! the grants of the asking user's name and groups. Any write to an RBAC kind marks the snapshot
//! stale; the next decision rebuilds it from the store (aggregated ClusterRoles are resolved
//! then, and their stored `rules` brought up to date, which is the job of upstream's
//! clusterrole-aggregation controller).

use crate::handlers::{self, Ctx, UserInfo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// One PolicyRule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

/// What a request asks to do.
#[derive(Clone, Debug, Default)]
pub struct Attrs {
    pub verb: String,
    /// Resource requests: namespace ("" for cluster scope), group, resource, subresource, name.
    pub resource: Option<ResourceAttrs>,
    /// Non-resource requests: the path.
    pub path: String,
}

#[derive(Clone, Debug, Default)]
pub struct ResourceAttrs {
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl Attrs {
    pub fn resource(verb: &str, ns: &str, group: &str, res: &str, sub: &str, name: &str) -> Self {
        Attrs {
            verb: verb.into(),
            resource: Some(ResourceAttrs {
                namespace: ns.into(),
                group: group.into(),
                resource: res.into(),
                subresource: sub.into(),
                name: name.into(),
            }),
            path: String::new(),
        }
    }
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attrs {
            verb: verb.into(),
            resource: None,
            path: path.into(),
        }
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

impl Rule {
    pub fn new(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Rule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Rule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            ..Default::default()
        }
    }
    pub fn urls(verbs: &[&str], urls: &[&str]) -> Rule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Rule {
            verbs: v(verbs),
            non_resource_urls: v(urls),
            ..Default::default()
        }
    }
    pub fn names(mut self, names: &[&str]) -> Rule {
        self.resource_names = names.iter().map(|x| x.to_string()).collect();
        self
    }

    /// Whether this rule allows the request (upstream's RuleAllows).
    pub fn allows(&self, a: &Attrs) -> bool {
        if !has(&self.verbs, &a.verb) {
            return false;
        }
        match &a.resource {
            Some(r) => {
                if !has(&self.api_groups, &r.group) {
                    return false;
                }
                let matched = self.resources.iter().any(|x| {
                    if x == "*" {
                        return true;
                    }
                    if r.subresource.is_empty() {
                        x == &r.resource
                    } else {
                        x.split_once('/')
                            .is_some_and(|(a, b)| a == r.resource && b == r.subresource)
                            || x.strip_prefix("*/") == Some(r.subresource.as_str())
                    }
                });
                matched
                    && (self.resource_names.is_empty()
                        || (!r.name.is_empty() && self.resource_names.contains(&r.name)))
            }
            None => self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || u == &a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            }),
        }
    }

    /// Upstream's CompactString, used in escalation errors.
    pub fn compact(&self) -> String {
        let q = |v: &[String]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let mut parts = vec![];
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:{}", q(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:{}", q(&self.resources)));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:{}", q(&self.resource_names)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!("NonResourceURLs:{}", q(&self.non_resource_urls)));
        }
        if !self.verbs.is_empty() {
            parts.push(format!("Verbs:{}", q(&self.verbs)));
        }
        format!("{{{}}}", parts.join(", "))
    }

    /// Splits into rules of one verb, group, resource and name (or one verb and URL).
    fn atoms(&self) -> Vec<Rule> {
        let mut out = vec![];
        for v in &self.verbs {
            if !self.resources.is_empty() {
                for g in &self.api_groups {
                    for r in &self.resources {
                        if self.resource_names.is_empty() {
                            out.push(Rule {
                                verbs: vec![v.clone()],
                                api_groups: vec![g.clone()],
                                resources: vec![r.clone()],
                                ..Default::default()
                            });
                        }
                        for n in &self.resource_names {
                            out.push(Rule {
                                verbs: vec![v.clone()],
                                api_groups: vec![g.clone()],
                                resources: vec![r.clone()],
                                resource_names: vec![n.clone()],
                                ..Default::default()
                            });
                        }
                    }
                }
            }
            for u in &self.non_resource_urls {
                out.push(Rule {
                    verbs: vec![v.clone()],
                    non_resource_urls: vec![u.clone()],
                    ..Default::default()
                });
            }
        }
        out
    }

    /// Whether this rule covers an atom (upstream's ruleCovers).
    fn covers(&self, atom: &Rule) -> bool {
        let one = |v: &[String]| v.first().cloned().unwrap_or_default();
        let verb = one(&atom.verbs);
        if !has(&self.verbs, &verb) {
            return false;
        }
        if let Some(u) = atom.non_resource_urls.first() {
            return self.non_resource_urls.iter().any(|o| {
                o == "*"
                    || o == u
                    || o.strip_suffix('*')
                        .is_some_and(|p| u.starts_with(p) || u.strip_suffix('*') == Some(p))
            });
        }
        let group = one(&atom.api_groups);
        if !self.api_groups.iter().any(|g| g == "*" || *g == group) {
            return false;
        }
        let res = one(&atom.resources);
        let res_ok = self.resources.iter().any(|o| {
            o == "*" || *o == res || (o.starts_with("*/") && res.ends_with(&o[1..]) && res != "*")
        });
        if !res_ok {
            return false;
        }
        if self.resource_names.is_empty() {
            return true;
        }
        atom.resource_names
            .first()
            .is_some_and(|n| self.resource_names.contains(n))
    }
}

/// The rules among `servant` not covered by `owner` (empty: covered).
pub fn uncovered(owner: &[Rule], servant: &[Rule]) -> Vec<Rule> {
    let mut out = vec![];
    for r in servant {
        for a in r.atoms() {
            if !owner.iter().any(|o| o.covers(&a)) {
                out.push(a);
            }
        }
    }
    out
}

/// One binding's grant to a subject.
#[derive(Clone, Debug)]
struct Grant {
    /// None for a ClusterRoleBinding.
    namespace: Option<String>,
    rules: Arc<Vec<Rule>>,
    /// `RoleBinding "x/y" of Role "z"` for the SubjectAccessReview reason.
    why: Arc<str>,
}

#[derive(Default)]
pub struct Snapshot {
    by_user: HashMap<String, Vec<Grant>>,
    by_group: HashMap<String, Vec<Grant>>,
    bindings: usize,
}

/// The RBAC state and its cache.
#[derive(Default)]
pub struct Rbac(crate::rebuilt::Rebuilt<Snapshot>);

/// The outcome of one authorization.
#[derive(Clone, Debug, Default)]
pub struct Decision {
    pub allowed: bool,
    /// Why (allowed: which binding; denied: what the node authorizer said, or "").
    pub reason: String,
}

fn decode_all(ctx: &Ctx, kind: &str, kvs: &[skiff_store::KeyValue]) -> Vec<Value> {
    let Some(res) = ctx.registry.by_kind(GROUP, kind) else {
        return vec![];
    };
    kvs.iter()
        .filter_map(|kv| handlers::decode_as(&res, kv).ok())
        .collect()
}

async fn list_kind(ctx: &Ctx, kind: &str) -> Vec<Value> {
    let Some(res) = ctx.registry.by_kind(GROUP, kind) else {
        return vec![];
    };
    match ctx.store.list(&res.prefix()).await {
        Ok((kvs, _)) => decode_all(ctx, kind, &kvs),
        Err(e) => {
            tracing::warn!(error = %e, kind, "reading RBAC objects failed");
            vec![]
        }
    }
}

fn rules_of(o: &Value) -> Vec<Rule> {
    serde_json::from_value(o["rules"].clone()).unwrap_or_default()
}

/// Whether a LabelSelector (matchLabels, matchExpressions) matches `labels`.
pub fn selector_matches(sel: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            if label(k) != v.as_str() {
                return false;
            }
        }
    }
    if let Some(exprs) = sel["matchExpressions"].as_array() {
        for e in exprs {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let ok = match e["operator"].as_str().unwrap_or("") {
                "In" => label(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => !label(key).is_some_and(|v| values.contains(&v)),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

impl Rbac {
    /// Marks the cache stale (after any write to an RBAC kind).
    pub fn invalidate(&self) {
        self.0.invalidate();
    }

    /// The current snapshot, rebuilt first when stale.
    pub async fn snapshot(&self, ctx: &Ctx) -> Arc<Snapshot> {
        self.0.get(|| async { Some(build(ctx).await) }).await
    }
}

async fn build(ctx: &Ctx) -> Snapshot {
    let croles = list_kind(ctx, "ClusterRole").await;
    let roles = list_kind(ctx, "Role").await;
    let crbs = list_kind(ctx, "ClusterRoleBinding").await;
    let rbs = list_kind(ctx, "RoleBinding").await;
    // ClusterRoles, with aggregation resolved.
    let mut cr_rules: HashMap<String, Arc<Vec<Rule>>> = HashMap::new();
    for cr in &croles {
        let name = cr["metadata"]["name"].as_str().unwrap_or("").to_string();
        let sels = cr["aggregationRule"]["clusterRoleSelectors"].as_array();
        let rules = match sels {
            Some(sels) => {
                let mut rules: Vec<Rule> = vec![];
                for other in &croles {
                    if other["metadata"]["name"] == cr["metadata"]["name"] {
                        continue;
                    }
                    let labels = &other["metadata"]["labels"];
                    if sels.iter().any(|s| selector_matches(s, labels)) {
                        for r in rules_of(other) {
                            if !rules.contains(&r) {
                                rules.push(r);
                            }
                        }
                    }
                }
                if rules_of(cr) != rules {
                    write_aggregated(ctx, &name, &rules);
                }
                rules
            }
            None => rules_of(cr),
        };
        cr_rules.insert(name, Arc::new(rules));
    }
    let mut role_rules: HashMap<(String, String), Arc<Vec<Rule>>> = HashMap::new();
    for r in &roles {
        let ns = r["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = r["metadata"]["name"].as_str().unwrap_or("").to_string();
        role_rules.insert((ns, name), Arc::new(rules_of(r)));
    }
    let mut snap = Snapshot::default();
    for (b, namespaced) in crbs
        .iter()
        .map(|b| (b, false))
        .chain(rbs.iter().map(|b| (b, true)))
    {
        let ns = b["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let bname = b["metadata"]["name"].as_str().unwrap_or("");
        let rk = b["roleRef"]["kind"].as_str().unwrap_or("");
        let rn = b["roleRef"]["name"].as_str().unwrap_or("").to_string();
        let rules = match rk {
            "ClusterRole" => cr_rules.get(&rn).cloned(),
            "Role" if namespaced => role_rules.get(&(ns.clone(), rn.clone())).cloned(),
            _ => None,
        };
        let Some(rules) = rules else { continue };
        let why: Arc<str> = if namespaced {
            format!("RoleBinding \"{bname}/{ns}\" of {rk} \"{rn}\"").into()
        } else {
            format!("ClusterRoleBinding \"{bname}\" of {rk} \"{rn}\"").into()
        };
        snap.bindings += 1;
        for s in b["subjects"].as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap_or("").to_string();
            let grant = |who: String| Grant {
                namespace: namespaced.then(|| ns.clone()),
                rules: rules.clone(),
                why: format!("{why} to {who}").into(),
            };
            match s["kind"].as_str().unwrap_or("") {
                "User" => {
                    let g = grant(format!("User \"{name}\""));
                    snap.by_user.entry(name).or_default().push(g);
                }
                "Group" => {
                    let g = grant(format!("Group \"{name}\""));
                    snap.by_group.entry(name).or_default().push(g);
                }
                "ServiceAccount" => {
                    let sns = s["namespace"]
                        .as_str()
                        .filter(|n| !n.is_empty())
                        .unwrap_or(&ns);
                    let g = grant(format!("ServiceAccount \"{name}/{sns}\""));
                    snap.by_user
                        .entry(format!("system:serviceaccount:{sns}:{name}"))
                        .or_default()
                        .push(g);
                }
                _ => {}
            }
        }
    }
    snap
}

/// Stores the aggregated rules of a ClusterRole (upstream's aggregation controller does this).
fn write_aggregated(ctx: &Ctx, name: &str, rules: &[Rule]) {
    let Some(ctx) = ctx.self_ref() else { return };
    let name = name.to_string();
    let rules = json!(rules);
    tokio::spawn(async move {
        let Some(res) = ctx.registry.by_kind(GROUP, "ClusterRole") else {
            return;
        };
        let key = res.key(None, &name);
        if let Ok(Some(kv)) = ctx.store.get(&key).await {
            if let Ok(mut o) = handlers::decode_as(&res, &kv) {
                o["rules"] = rules;
                if ctx
                    .store
                    .update(&key, handlers::encode_for(&res, &o), Some(kv.mod_revision))
                    .await
                    .is_ok()
                {
                    ctx.rbac.invalidate();
                }
            }
        }
    });
}

impl Snapshot {
    fn grants<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = &'a Grant> + 'a {
        self.by_user.get(&user.name).into_iter().flatten().chain(
            user.groups
                .iter()
                .filter_map(|g| self.by_group.get(g))
                .flatten(),
        )
    }

    /// RBAC's decision.
    pub fn authorize(&self, user: &UserInfo, a: &Attrs) -> Option<Arc<str>> {
        let ns = a.resource.as_ref().map(|r| r.namespace.as_str());
        for g in self.grants(user) {
            if let Some(gns) = &g.namespace {
                // Namespaced grants apply only to requests in that namespace.
                if ns != Some(gns.as_str()) {
                    continue;
                }
            }
            if g.rules.iter().any(|r| r.allows(a)) {
                return Some(g.why.clone());
            }
        }
        None
    }

    /// Every rule the user holds in `ns` (cluster-wide grants included).
    pub fn rules_for(&self, user: &UserInfo, ns: &str) -> Vec<Rule> {
        let mut out: Vec<Rule> = vec![];
        for g in self.grants(user) {
            if g.namespace.as_deref().is_some_and(|n| n != ns) {
                continue;
            }
            for r in g.rules.iter() {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    pub fn binding_count(&self) -> usize {
        self.bindings
    }
}

pub fn is_master(user: &UserInfo) -> bool {
    user.groups.iter().any(|g| g == "system:masters")
}

/// The whole chain: system:masters, node authorizer, RBAC.
pub async fn authorize(ctx: &Ctx, user: &UserInfo, a: &Attrs) -> Decision {
    if is_master(user) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    let mut reason = String::new();
    if let Some(node) = crate::nodeauthz::node_of(user) {
        match crate::nodeauthz::authorize(ctx, node, a).await {
            Ok(()) => {
                return Decision {
                    allowed: true,
                    reason: String::new(),
                }
            }
            Err(why) => reason = why,
        }
    }
    let snap = ctx.rbac.snapshot(ctx).await;
    match snap.authorize(user, a) {
        Some(why) => Decision {
            allowed: true,
            reason: format!("RBAC: allowed by {why}"),
        },
        None => Decision {
            allowed: false,
            reason,
        },
    }
}

/// Upstream's forbidden message for a denied request.
pub fn forbidden(user: &UserInfo, a: &Attrs, reason: &str) -> crate::status::StatusError {
    let mut msg = match &a.resource {
        Some(r) => {
            let res = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{}\"", r.namespace)
            };
            format!(
                "User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
                user.name, a.verb, r.group
            )
        }
        None => format!(
            "User \"{}\" cannot {} path \"{}\"",
            user.name, a.verb, a.path
        ),
    };
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    let (group, resource, name) = match &a.resource {
        Some(r) => (r.group.as_str(), r.resource.as_str(), r.name.as_str()),
        None => ("", "", ""),
    };
    crate::status::StatusError::forbidden(group, resource, name, &msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let r = Rule::new(&["get"], &[""], &["pods", "pods/log"]);
        assert!(r.allows(&Attrs::resource("get", "a", "", "pods", "", "x")));
        assert!(r.allows(&Attrs::resource("get", "a", "", "pods", "log", "x")));
        assert!(!r.allows(&Attrs::resource("get", "a", "", "pods", "exec", "x")));
        assert!(!r.allows(&Attrs::resource("list", "a", "", "pods", "", "")));
        let s = Rule::new(&["*"], &["*"], &["*/scale"]);
        assert!(s.allows(&Attrs::resource(
            "update",
            "a",
            "apps",
            "deployments",
            "scale",
            "d"
        )));
        let n = Rule::new(&["get"], &[""], &["secrets"]).names(&["s1"]);
        assert!(n.allows(&Attrs::resource("get", "a", "", "secrets", "", "s1")));
        assert!(!n.allows(&Attrs::resource("list", "a", "", "secrets", "", "")));
        let u = Rule::urls(&["get"], &["/healthz", "/api/*"]);
        assert!(u.allows(&Attrs::non_resource("get", "/api/v1")));
        assert!(!u.allows(&Attrs::non_resource("get", "/apis")));
    }

    #[test]
    fn coverage_and_compact() {
        let owner = vec![Rule::new(&["get", "list"], &[""], &["pods"])];
        assert!(uncovered(&owner, &[Rule::new(&["get"], &[""], &["pods"])]).is_empty());
        let missing = uncovered(&owner, &[Rule::new(&["get", "delete"], &[""], &["pods"])]);
        assert_eq!(missing.len(), 1);
        assert_eq!(
            missing[0].compact(),
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#
        );
        let admin = vec![
            Rule::new(&["*"], &["*"], &["*"]),
            Rule::urls(&["*"], &["*"]),
        ];
        assert!(uncovered(&admin, &crate::policy::cluster_roles()[1].rules).is_empty());
    }

    #[test]
    fn forbidden_messages() {
        let u = UserInfo {
            name: "bob".into(),
            ..Default::default()
        };
        let e = forbidden(&u, &Attrs::resource("list", "sk", "", "pods", "", ""), "");
        assert_eq!(
            e.message,
            r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "sk""#
        );
        let e = forbidden(
            &u,
            &Attrs::resource("get", "", "apps", "deployments", "scale", "d"),
            "",
        );
        assert_eq!(
            e.message,
            r#"deployments.apps "d" is forbidden: User "bob" cannot get resource "deployments/scale" in API group "apps" at the cluster scope"#
        );
        let e = forbidden(&u, &Attrs::non_resource("get", "/metrics"), "");
        assert_eq!(
            e.message,
            r#"forbidden: User "bob" cannot get path "/metrics""#
        );
    }
}
