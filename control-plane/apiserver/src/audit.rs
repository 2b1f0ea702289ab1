//! Auditing as kube-apiserver does it: `--audit-policy-file` (an `audit.k8s.io/v1` Policy: rules
//! matched in order on users, groups, verbs, resources, namespaces and non-resource URLs, each
//! giving a level None/Metadata/Request/RequestResponse, with `omitStages`) and
//! `--audit-log-path` (JSON lines of `audit.k8s.io/v1` Events; `-` for standard output), rotated
//! by `--audit-log-maxsize` (MiB), keeping `--audit-log-maxbackup` files no older than
//! `--audit-log-maxage` days.
//!
//! Each request carries a [`Record`] (a task-local) that the router fills in as it learns who
//! asked for what; the level is decided once user and target are known, bodies are kept only
//! when the level asks for them. Stages: `RequestReceived` when the request has been
//! authenticated and understood, `ResponseStarted` for watches and streams when their response
//! begins, `ResponseComplete` when it is complete.

use crate::handlers::UserInfo;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How much of a request is logged.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    #[default]
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<String>,
}

/// An `audit.k8s.io/v1` Policy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<String>,
    #[serde(default)]
    omit_managed_fields: bool,
}

/// What a rule is matched against.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub verb: String,
    /// Resource requests: (group, resource, subresource, namespace, name).
    pub resource: Option<(String, String, String, String, String)>,
    pub path: String,
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, String> {
        let p: Policy = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if p.kind != "Policy" {
            return Err(format!(
                "expected kind Policy (apiVersion audit.k8s.io/v1), got {:?}",
                p.kind
            ));
        }
        Ok(p)
    }

    /// The level and the stages to leave out for `req` by `user` (the first matching rule).
    pub fn decide(&self, user: &UserInfo, req: &Request) -> (Level, Vec<String>) {
        for r in &self.rules {
            if r.matches(user, req) {
                let mut omit = self.omit_stages.clone();
                omit.extend(r.omit_stages.iter().cloned());
                return (r.level, omit);
            }
        }
        (Level::None, vec![])
    }
}

impl Rule {
    fn matches(&self, user: &UserInfo, req: &Request) -> bool {
        if !self.users.is_empty() && !self.users.contains(&user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&req.verb) {
            return false;
        }
        match &req.resource {
            Some((group, resource, sub, ns, name)) => {
                if !self.non_resource_urls.is_empty() && self.resources.is_empty() {
                    return false;
                }
                if !self.namespaces.is_empty() && !self.namespaces.contains(ns) {
                    return false;
                }
                if self.resources.is_empty() {
                    return true;
                }
                let full = if sub.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{sub}")
                };
                self.resources.iter().any(|gr| {
                    gr.group == *group
                        && (gr.resources.is_empty()
                            || gr.resources.iter().any(|r| {
                                *r == full
                                    || r == "*"
                                    || (sub.is_empty() && *r == *resource)
                                    || r.strip_prefix("*/").is_some_and(|s| s == sub)
                                    || r.strip_suffix("/*").is_some_and(|s| s == resource)
                            }))
                        && (gr.resource_names.is_empty() || gr.resource_names.contains(name))
                })
            }
            None => {
                if !self.resources.is_empty() || !self.namespaces.is_empty() {
                    return false;
                }
                if self.non_resource_urls.is_empty() {
                    return true;
                }
                self.non_resource_urls
                    .iter()
                    .any(|u| match u.strip_suffix('*') {
                        Some(prefix) => req.path.starts_with(prefix),
                        None => *u == req.path,
                    })
            }
        }
    }
}

/// `--audit-*` flags.
#[derive(Clone, Debug, Default)]
pub struct AuditConfig {
    pub policy_file: PathBuf,
    /// `-` for standard output.
    pub log_path: PathBuf,
    /// MiB; 0: never rotate.
    pub max_size_mib: u64,
    /// Rotated files kept; 0: all.
    pub max_backup: usize,
    /// Days a rotated file is kept; 0: no limit.
    pub max_age_days: u64,
}

enum Sink {
    Stdout,
    File { file: std::fs::File, size: u64 },
}

/// The policy and the log.
pub struct Auditor {
    pub policy: Policy,
    cfg: AuditConfig,
    sink: Mutex<Sink>,
}

impl Auditor {
    pub fn open(cfg: &AuditConfig) -> Result<Auditor, String> {
        let text = std::fs::read_to_string(&cfg.policy_file).map_err(|e| {
            format!(
                "reading the audit policy {}: {e}",
                cfg.policy_file.display()
            )
        })?;
        let policy = Policy::parse(&text)
            .map_err(|e| format!("the audit policy {}: {e}", cfg.policy_file.display()))?;
        let sink = if cfg.log_path == Path::new("-") {
            Sink::Stdout
        } else {
            let file = open_log(&cfg.log_path)?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            Sink::File { file, size }
        };
        Ok(Auditor {
            policy,
            cfg: cfg.clone(),
            sink: Mutex::new(sink),
        })
    }

    /// Appends one event (a JSON line). Called off the async workers (a blocking write).
    fn write(&self, ev: &Value) {
        let mut line = serde_json::to_vec(ev).unwrap_or_default();
        line.push(b'\n');
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *sink {
            Sink::Stdout => {
                let _ = std::io::stdout().write_all(&line);
            }
            Sink::File { file, size } => {
                let limit = self.cfg.max_size_mib << 20;
                if limit > 0 && *size + line.len() as u64 > limit {
                    match self.rotate() {
                        Ok(f) => {
                            *file = f;
                            *size = 0;
                        }
                        Err(e) => tracing::warn!(error = %e, "audit log rotation failed"),
                    }
                }
                if let Err(e) = file.write_all(&line) {
                    tracing::warn!(error = %e, path = %self.cfg.log_path.display(), "cannot write the audit log");
                } else {
                    *size += line.len() as u64;
                }
            }
        }
    }

    /// Renames the log to `<name>-<timestamp><ext>` (as upstream's lumberjack does), drops old
    /// backups, and opens a new log.
    fn rotate(&self) -> Result<std::fs::File, String> {
        let path = &self.cfg.log_path;
        let dir = path.parent().unwrap_or(Path::new("."));
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H-%M-%S%.3f");
        let backup = dir.join(format!("{stem}-{stamp}{ext}"));
        std::fs::rename(path, &backup).map_err(|e| format!("renaming {}: {e}", path.display()))?;
        let prefix = format!("{stem}-");
        let mut backups: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&prefix) && n.ends_with(&ext)
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        backups.sort();
        let now = std::time::SystemTime::now();
        let too_old = |t: &std::time::SystemTime| {
            self.cfg.max_age_days > 0
                && now.duration_since(*t).unwrap_or_default().as_secs()
                    > self.cfg.max_age_days * 86_400
        };
        let excess = if self.cfg.max_backup > 0 {
            backups.len().saturating_sub(self.cfg.max_backup)
        } else {
            0
        };
        for (i, (t, p)) in backups.iter().enumerate() {
            if i < excess || too_old(t) {
                let _ = std::fs::remove_file(p);
            }
        }
        open_log(path)
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("opening the audit log {}: {e}", path.display()))
}

/// One request's audit state.
#[derive(Default)]
pub struct Record {
    pub id: String,
    pub received: String,
    pub uri: String,
    pub verb: String,
    pub user: Option<UserInfo>,
    pub impersonated: Option<UserInfo>,
    pub source_ips: Vec<String>,
    pub user_agent: String,
    /// Resource requests: objectRef.
    pub object_ref: Option<Value>,
    pub request: Request,
    pub level: Option<Level>,
    pub omit: Vec<String>,
    pub request_object: Option<Value>,
    pub annotations: serde_json::Map<String, Value>,
    /// Whether `RequestReceived` was written.
    pub received_logged: bool,
    /// Watches, streams and followed logs: logged as `ResponseStarted` when they begin.
    pub long_running: bool,
}

pub type Shared = Arc<Mutex<Record>>;

tokio::task_local! {
    static CURRENT: (Arc<Auditor>, Shared);
}

/// Runs `f` with `rec` as the current request's record.
pub async fn scope<F: std::future::Future>(a: Arc<Auditor>, rec: Shared, f: F) -> F::Output {
    CURRENT.scope((a, rec), f).await
}

/// Updates the current request's record (a no-op without auditing).
pub fn with(f: impl FnOnce(&Auditor, &mut Record)) {
    let _ = CURRENT.try_with(|(a, rec)| {
        let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
        f(a, &mut r);
    });
}

/// The request body as an object, for levels that log it (JSON, YAML or protobuf).
pub fn request_body(content_type: &str, body: &[u8]) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    if content_type.contains("protobuf") {
        skiff_codec::decode(body).ok()
    } else if content_type.contains("yaml") {
        serde_yaml::from_slice(body).ok()
    } else {
        serde_json::from_slice(body).ok()
    }
}

fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

impl Record {
    /// Decides the level once the user and the target are known.
    pub fn decide(&mut self, a: &Auditor) {
        if self.level.is_some() {
            return;
        }
        let Some(user) = self.user.clone() else {
            return;
        };
        let (level, omit) = a.policy.decide(&user, &self.request);
        self.level = Some(level);
        self.omit = omit;
    }

    fn event(&self, stage: &str, level: Level) -> Value {
        let mut ev = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level_name(level),
            "auditID": self.id,
            "stage": stage,
            "requestURI": self.uri,
            "verb": self.verb,
            "user": self.user.as_ref().map(user_json).unwrap_or_else(|| json!({})),
            "sourceIPs": self.source_ips,
            "userAgent": self.user_agent,
            "requestReceivedTimestamp": self.received,
            "stageTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        });
        if let Some(i) = &self.impersonated {
            ev["impersonatedUser"] = user_json(i);
        }
        if let Some(o) = &self.object_ref {
            ev["objectRef"] = o.clone();
        }
        if level >= Level::Request {
            if let Some(b) = &self.request_object {
                ev["requestObject"] = b.clone();
            }
        }
        if !self.annotations.is_empty() {
            ev["annotations"] = Value::Object(self.annotations.clone());
        }
        ev
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::None => "None",
        Level::Metadata => "Metadata",
        Level::Request => "Request",
        Level::RequestResponse => "RequestResponse",
    }
}

/// Writes the `RequestReceived` stage of the current request (once, when its level is known).
pub fn request_received() {
    let mut out = None;
    with(|a, r| {
        r.decide(a);
        let level = r.level.unwrap_or_default();
        if level == Level::None || r.received_logged {
            return;
        }
        r.received_logged = true;
        if !r.omit.iter().any(|s| s == "RequestReceived") {
            out = Some(r.event("RequestReceived", level));
        }
    });
    if let Some(ev) = out {
        emit(ev);
    }
}

/// The final stage of a request: `code` and, for errors, the Status; `response` for
/// RequestResponse.
pub fn finish(
    a: &Arc<Auditor>,
    rec: &Shared,
    stage: &str,
    code: u16,
    status: Option<&Value>,
    response: Option<Value>,
) {
    let ev = {
        let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
        r.decide(a);
        let level = r.level.unwrap_or_default();
        if level == Level::None || r.omit.iter().any(|s| s == stage) {
            return;
        }
        let mut ev = r.event(stage, level);
        let mut st = json!({"metadata": {}, "code": code});
        if let Some(s) = status {
            for k in ["status", "message", "reason", "details"] {
                if !s[k].is_null() {
                    st[k] = s[k].clone();
                }
            }
        }
        ev["responseStatus"] = st;
        if level == Level::RequestResponse {
            if let Some(mut o) = response {
                if a.policy.omit_managed_fields {
                    if let Some(md) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                        md.remove("managedFields");
                    }
                }
                ev["responseObject"] = o;
            }
        }
        ev
    };
    let a = a.clone();
    write_off_thread(a, ev);
}

fn emit(ev: Value) {
    let _ = CURRENT.try_with(|(a, _)| write_off_thread(a.clone(), ev));
}

fn write_off_thread(a: Arc<Auditor>, ev: Value) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(move || a.write(&ev));
        }
        Err(_) => a.write(&ev),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rules_match_in_order() {
        let p = Policy::parse(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["configmaps"]
    resourceNames: ["sk-watched"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets", "configmaps", "pods/log"]
- level: Request
  verbs: ["create"]
  namespaces: ["sk-ns"]
- level: Metadata
  nonResourceURLs: ["/healthz*", "/version"]
"#,
        )
        .unwrap();
        let admin = user("admin", &["system:masters"]);
        let res = |verb: &str, r: &str, sub: &str, ns: &str, name: &str| Request {
            verb: verb.into(),
            resource: Some(("".into(), r.into(), sub.into(), ns.into(), name.into())),
            path: String::new(),
        };
        assert_eq!(
            p.decide(
                &user("system:kube-proxy", &[]),
                &res("get", "configmaps", "", "a", "b")
            )
            .0,
            Level::None
        );
        assert_eq!(
            p.decide(&admin, &res("get", "configmaps", "", "a", "sk-watched")),
            (Level::RequestResponse, vec!["RequestReceived".to_string()])
        );
        assert_eq!(
            p.decide(&admin, &res("get", "configmaps", "", "a", "x")).0,
            Level::Metadata
        );
        assert_eq!(
            p.decide(&admin, &res("get", "pods", "log", "a", "x")).0,
            Level::Metadata
        );
        assert_eq!(
            p.decide(&admin, &res("get", "pods", "", "a", "x")).0,
            Level::None
        );
        assert_eq!(
            p.decide(&admin, &res("create", "pods", "", "sk-ns", "x")).0,
            Level::Request
        );
        let nr = |path: &str| Request {
            verb: "get".into(),
            resource: None,
            path: path.into(),
        };
        assert_eq!(p.decide(&admin, &nr("/healthz/ready")).0, Level::Metadata);
        assert_eq!(p.decide(&admin, &nr("/version")).0, Level::Metadata);
        assert_eq!(p.decide(&admin, &nr("/metrics")).0, Level::None);
        assert!(Policy::parse("kind: Other\n").is_err());
    }
}
