//! The REST verbs on resources, generic over the registry; per-kind rules come from `strategy`.

use crate::registry::{self, Resource, Strategy};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::{full, json_response, ApiServerConfig, Body};
use crate::status::StatusError;
use crate::{strategy, ApiError};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::{json, Value};
use skiff_store::{EventKind, KeyValue, Store, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Ctx {
    pub store: Arc<dyn Store>,
    pub advertise: SocketAddr,
    kubelet: reqwest::Client,
}

impl Ctx {
    pub fn new(store: Arc<dyn Store>, cfg: &ApiServerConfig) -> Result<Self, ApiError> {
        let pki = &cfg.pki;
        let ident = format!(
            "{}{}",
            pki.apiserver_kubelet_client.cert_pem()?,
            pki.apiserver_kubelet_client.key_pem()?
        );
        let kubelet = reqwest::Client::builder()
            .use_rustls_tls()
            .identity(
                reqwest::Identity::from_pem(ident.as_bytes())
                    .map_err(|e| ApiError::Tls(format!("kubelet client identity: {e}")))?,
            )
            .add_root_certificate(
                reqwest::Certificate::from_pem(pki.ca.cert_pem()?.as_bytes())
                    .map_err(|e| ApiError::Tls(format!("cluster CA: {e}")))?,
            )
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::Tls(format!("kubelet client: {e}")))?;
        Ok(Self {
            store,
            advertise: cfg.advertise,
            kubelet,
        })
    }
}

/// One request's target: resource, namespace, name, subresource and the query.
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub query: Vec<(String, String)>,
    pub accept: String,
    pub content_type: String,
}

impl Target {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
    fn key(&self) -> String {
        self.res.key(self.namespace.as_deref(), self.name())
    }
    fn prefix(&self) -> String {
        match &self.namespace {
            Some(ns) if self.res.namespaced => format!("{}{ns}/", self.res.prefix()),
            _ => self.res.prefix(),
        }
    }
    fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Sets the server-owned metadata of a new object.
pub fn stamp_new(obj: &mut Value) {
    let md = &mut obj["metadata"];
    md["uid"] = json!(uuid::Uuid::new_v4().to_string());
    md["creationTimestamp"] = json!(now_rfc3339());
    if let Some(m) = md.as_object_mut() {
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(k);
        }
    }
}

fn store_err(t: &Target, e: StoreError) -> StatusError {
    let (g, p, n) = (t.res.group, t.res.plural, t.name());
    match e {
        StoreError::NotFound(_) => StatusError::not_found(g, p, n),
        StoreError::AlreadyExists(_) => StatusError::already_exists(g, p, n),
        StoreError::Conflict { .. } => StatusError::conflict(
            p,
            n,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        StoreError::Compacted { .. } => StatusError::gone(e.to_string()),
        other => StatusError::internal(other.to_string()),
    }
}

/// Decodes a stored object and sets its resourceVersion.
fn decode(kv: &KeyValue) -> Result<Value, StatusError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| StatusError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    v["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok(v)
}

fn encode(obj: &Value) -> Vec<u8> {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).expect("json")
}

fn parse_body(body: &[u8]) -> Result<Value, StatusError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        StatusError::bad_request(format!("the request body is not valid JSON: {e}"))
    })?;
    if !v.is_object() {
        return Err(StatusError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

fn load(ctx: &Ctx, t: &Target) -> Result<(Value, i64), StatusError> {
    match ctx.store.get(&t.key()).map_err(|e| store_err(t, e))? {
        Some(kv) => Ok((decode(&kv)?, kv.mod_revision)),
        None => Err(StatusError::not_found(t.res.group, t.res.plural, t.name())),
    }
}

fn table(t: &Target, items: &[Value], rv: &str, cont: Option<String>) -> Value {
    let now = Utc::now();
    let cols: Vec<Value> = strategy::columns(t.res.strategy)
        .iter()
        .map(|c| json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority}))
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({"cells": strategy::cells(t.res.strategy, o, now), "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    let mut md = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        md["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": cols, "rows": rows})
}

fn selectors(t: &Target) -> Result<(LabelSelector, FieldSelector), StatusError> {
    Ok((
        LabelSelector::parse(t.param("labelSelector").unwrap_or(""))?,
        FieldSelector::parse(t.param("fieldSelector").unwrap_or(""))?,
    ))
}

pub fn list(ctx: &Ctx, t: &Target) -> Result<Response<Body>, StatusError> {
    let (ls, fs) = selectors(t)?;
    let (kvs, rev) = ctx.store.list(&t.prefix()).map_err(|e| store_err(t, e))?;
    let start_after = match t.param("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| StatusError::bad_request("invalid continue token"))?;
            Some(raw)
        }
        None => None,
    };
    let limit: usize = t
        .param("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut cont = None;
    for kv in kvs {
        if start_after
            .as_ref()
            .is_some_and(|s| kv.key.as_str() <= s.as_str())
        {
            continue;
        }
        let o = decode(&kv)?;
        if !(ls.matches(&o) && fs.matches(&o)) {
            continue;
        }
        if items.len() == limit {
            use base64::Engine;
            let last: &Value = items.last().expect("limit > 0");
            let last_key = t.res.key(
                last["metadata"]["namespace"].as_str(),
                last["metadata"]["name"].as_str().unwrap_or(""),
            );
            cont = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_key));
            break;
        }
        items.push(o);
    }
    let rv = rev.to_string();
    if t.wants_table() {
        return Ok(json_response(200, &table(t, &items, &rv, cont)));
    }
    let mut md = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        md["continue"] = json!(c);
    }
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": md, "items": items}),
    ))
}

pub fn get(ctx: &Ctx, t: &Target) -> Result<Response<Body>, StatusError> {
    let (obj, _) = load(ctx, t)?;
    if t.wants_table() && t.sub.is_none() {
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        return Ok(json_response(200, &table(t, &[obj], &rv, None)));
    }
    Ok(json_response(200, &obj))
}

fn ensure_namespace(ctx: &Ctx, t: &Target) -> Result<(), StatusError> {
    if !t.res.namespaced {
        return Ok(());
    }
    let ns = t.namespace.as_deref().unwrap_or("default");
    let nsres = registry::by_kind("Namespace").expect("namespaces registered");
    match ctx.store.get(&nsres.key(None, ns)) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(StatusError::not_found("", "namespaces", ns)),
        Err(e) => Err(StatusError::internal(e.to_string())),
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let u = uuid::Uuid::new_v4();
    u.as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

pub fn create(ctx: &Ctx, t: &Target, body: &[u8]) -> Result<Response<Body>, StatusError> {
    let mut obj = parse_body(body)?;
    let res = t.res;
    if obj["kind"].is_null() {
        obj["kind"] = json!(res.kind);
    }
    if obj["apiVersion"].is_null() {
        obj["apiVersion"] = json!(res.api_version());
    }
    if obj["kind"] != res.kind || obj["apiVersion"] != res.api_version() {
        return Err(StatusError::bad_request(format!(
            "the body kind {} {} does not match the resource {} {}",
            obj["apiVersion"],
            obj["kind"],
            res.api_version(),
            res.kind
        )));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if res.namespaced {
        let path_ns = t.namespace.clone().unwrap_or_else(|| "default".into());
        match obj["metadata"]["namespace"].as_str() {
            Some(ns) if !ns.is_empty() && ns != path_ns => {
                return Err(StatusError::bad_request(format!(
                    "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({path_ns})"
                )))
            }
            _ => obj["metadata"]["namespace"] = json!(path_ns),
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    if obj["metadata"]["name"].as_str().unwrap_or("").is_empty() {
        if let Some(g) = obj["metadata"]["generateName"].as_str() {
            obj["metadata"]["name"] = json!(format!("{g}{}", random_suffix()));
        }
    }
    stamp_new(&mut obj);
    strategy::prepare_create(res.strategy, &mut obj);
    strategy::default(res.strategy, &mut obj);
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let errs = strategy::validate(res.strategy, &obj);
    if !errs.is_empty() {
        return Err(StatusError::invalid(res.kind, &name, &errs));
    }
    ensure_namespace(ctx, t)?;
    let t2 = Target {
        name: Some(name),
        namespace: obj["metadata"]["namespace"].as_str().map(str::to_string),
        res,
        sub: None,
        query: vec![],
        accept: String::new(),
        content_type: String::new(),
    };
    if t.param("dryRun").is_some() {
        return Ok(json_response(201, &obj));
    }
    let kv = ctx
        .store
        .create(&t2.key(), encode(&obj))
        .map_err(|e| store_err(&t2, e))?;
    Ok(json_response(201, &decode(&kv)?))
}

/// Immutable metadata copied from the stored object on every update.
const KEEP_META: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "namespace",
    "name",
];

/// Computes the object an update stores, from the old one and what the client sent.
fn merge_update(t: &Target, old: &Value, mut new: Value) -> Result<Value, StatusError> {
    let res = t.res;
    if t.sub.as_deref() == Some("status") {
        let mut out = old.clone();
        out["status"] = new["status"].take();
        return Ok(out);
    }
    for k in KEEP_META {
        match old["metadata"].get(*k) {
            Some(v) => new["metadata"][*k] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(*k);
                }
            }
        }
    }
    new["kind"] = json!(res.kind);
    new["apiVersion"] = json!(res.api_version());
    if res.has_status {
        new["status"] = old["status"].clone();
    }
    if res.strategy == Strategy::Pod {
        // A pod's node binding only changes through the binding subresource.
        let old_node = &old["spec"]["nodeName"];
        if !old_node.is_null() && new["spec"]["nodeName"] != *old_node {
            return Err(StatusError::invalid(
                res.kind,
                t.name(),
                &[crate::status::FieldError::invalid(
                    "spec.nodeName",
                    new["spec"]["nodeName"].as_str().unwrap_or(""),
                    "field is immutable",
                )],
            ));
        }
    }
    strategy::default(res.strategy, &mut new);
    let errs = strategy::validate(res.strategy, &new);
    if !errs.is_empty() {
        return Err(StatusError::invalid(res.kind, t.name(), &errs));
    }
    Ok(new)
}

/// Stores `obj` over revision `rev`, or deletes it when its graceful deletion is complete
/// (deletionTimestamp set, no finalizers, grace 0).
fn commit_update(ctx: &Ctx, t: &Target, obj: &Value, rev: i64) -> Result<Value, StatusError> {
    let md = &obj["metadata"];
    let finalizers_empty = md["finalizers"].as_array().is_none_or(Vec::is_empty);
    if !md["deletionTimestamp"].is_null()
        && finalizers_empty
        && md["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0
    {
        let kv = ctx
            .store
            .delete(&t.key(), Some(rev))
            .map_err(|e| store_err(t, e))?;
        return decode(&kv);
    }
    let kv = ctx
        .store
        .update(&t.key(), encode(obj), Some(rev))
        .map_err(|e| store_err(t, e))?;
    decode(&kv)
}

pub fn update(ctx: &Ctx, t: &Target, body: &[u8]) -> Result<Response<Body>, StatusError> {
    let new = parse_body(body)?;
    if let Some(n) = new["metadata"]["name"].as_str() {
        if n != t.name() {
            return Err(StatusError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                t.name()
            )));
        }
    }
    let (old, rev) = load(ctx, t)?;
    let expected = match new["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() => rv
            .parse::<i64>()
            .map_err(|_| StatusError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        _ => rev,
    };
    if expected != rev {
        return Err(store_err(
            t,
            StoreError::Conflict {
                key: t.key(),
                expected,
                actual: rev,
            },
        ));
    }
    let obj = merge_update(t, &old, new)?;
    Ok(json_response(200, &commit_update(ctx, t, &obj, rev)?))
}

pub fn patch(ctx: &Ctx, t: &Target, body: &[u8]) -> Result<Response<Body>, StatusError> {
    for _ in 0..5 {
        let (old, rev) = load(ctx, t)?;
        let mut patched = old.clone();
        crate::patch::apply(&t.content_type, &mut patched, body)?;
        let obj = merge_update(t, &old, patched)?;
        match commit_update(ctx, t, &obj, rev) {
            Err(e) if e.code == 409 => continue,
            r => return r.map(|o| json_response(200, &o)),
        }
    }
    Err(StatusError::conflict(
        t.res.plural,
        t.name(),
        "too many concurrent writers; try again",
    ))
}

pub fn delete(ctx: &Ctx, t: &Target, body: &[u8]) -> Result<Response<Body>, StatusError> {
    let opts: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| StatusError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let grace_opt = opts["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| t.param("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let (mut obj, rev) = load(ctx, t)?;
    let pre = &opts["preconditions"];
    if let Some(uid) = pre["uid"].as_str() {
        if obj["metadata"]["uid"] != uid {
            return Err(StatusError::conflict(
                t.res.plural,
                t.name(),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    obj["metadata"]["uid"].as_str().unwrap_or("")
                ),
            ));
        }
    }
    if let Some(prv) = pre["resourceVersion"].as_str() {
        if prv != rev.to_string() {
            return Err(StatusError::conflict(
                t.res.plural,
                t.name(),
                "Precondition failed: the resourceVersion does not match",
            ));
        }
    }
    let has_finalizers = obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    let grace = if t.res.strategy == Strategy::Pod {
        let phase = obj["status"]["phase"].as_str().unwrap_or("");
        if obj["spec"]["nodeName"].as_str().unwrap_or("").is_empty()
            || phase == "Succeeded"
            || phase == "Failed"
        {
            0
        } else {
            grace_opt
                .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
                .max(0)
        }
    } else {
        0
    };
    if grace == 0 && !has_finalizers {
        let kv = ctx
            .store
            .delete(&t.key(), Some(rev))
            .map_err(|e| store_err(t, e))?;
        if t.res.strategy == Strategy::Namespace {
            delete_namespace_contents(ctx, t.name());
        }
        return Ok(json_response(200, &decode(&kv)?));
    }
    let md = &mut obj["metadata"];
    let current = md["deletionGracePeriodSeconds"].as_i64();
    if md["deletionTimestamp"].is_null() || current.is_some_and(|c| grace < c) {
        let at = Utc::now() + chrono::Duration::seconds(grace);
        md["deletionTimestamp"] = json!(at.to_rfc3339_opts(SecondsFormat::Secs, true));
        md["deletionGracePeriodSeconds"] = json!(grace);
        let kv = ctx
            .store
            .update(&t.key(), encode(&obj), Some(rev))
            .map_err(|e| store_err(t, e))?;
        obj = decode(&kv)?;
    }
    Ok(json_response(200, &obj))
}

/// Upstream's namespace controller empties a deleted namespace; here it happens at once.
fn delete_namespace_contents(ctx: &Ctx, ns: &str) {
    for r in registry::RESOURCES.iter().filter(|r| r.namespaced) {
        let prefix = format!("{}{ns}/", r.prefix());
        if let Ok((kvs, _)) = ctx.store.list(&prefix) {
            for kv in kvs {
                let _ = ctx.store.delete(&kv.key, None);
            }
        }
    }
}

pub fn bind(ctx: &Ctx, t: &Target, body: &[u8]) -> Result<Response<Body>, StatusError> {
    let binding = parse_body(body)?;
    let node = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(StatusError::invalid(
            "Binding",
            t.name(),
            &[crate::status::FieldError::required("target.name", "")],
        ));
    }
    let (mut pod, rev) = load(ctx, t)?;
    if !pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
        return Err(StatusError::conflict(
            "pods/binding",
            t.name(),
            &format!(
                "pod {} is already assigned to node {:?}",
                t.name(),
                pod["spec"]["nodeName"].as_str().unwrap_or("")
            ),
        ));
    }
    pod["spec"]["nodeName"] = json!(node);
    let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
    let conds = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conds: Vec<Value> = conds
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conds.push(cond);
    pod["status"]["conditions"] = json!(conds);
    ctx.store
        .update(&t.key(), encode(&pod), Some(rev))
        .map_err(|e| store_err(t, e))?;
    Ok(json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

pub async fn watch(ctx: &Ctx, t: &Target) -> Result<Response<Body>, StatusError> {
    let (ls, fs) = selectors(t)?;
    let prefix = t.prefix();
    let rv = t.param("resourceVersion").unwrap_or("");
    let timeout = t
        .param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let line = |kind: &str, obj: &Value| {
        let mut b = serde_json::to_vec(&json!({"type": kind, "object": obj})).expect("json");
        b.push(b'\n');
        Bytes::from(b)
    };
    let mut initial = Vec::new();
    let start = if rv.is_empty() || rv == "0" {
        let (kvs, rev) = ctx.store.list(&prefix).map_err(|e| store_err(t, e))?;
        for kv in kvs {
            let o = decode(&kv)?;
            if ls.matches(&o) && fs.matches(&o) {
                initial.push(line("ADDED", &o));
            }
        }
        rev
    } else {
        rv.parse::<i64>()
            .map_err(|_| StatusError::bad_request(format!("invalid resourceVersion {rv:?}")))?
    };
    let watch = match ctx.store.watch(&prefix, start) {
        Ok(w) => Some(w),
        Err(e @ StoreError::Compacted { .. }) => {
            let st = StatusError::gone(format!("too old resource version: {start} ({e})"));
            initial.push(line("ERROR", &st.to_json()));
            None
        }
        Err(e) => return Err(store_err(t, e)),
    };
    tokio::spawn(async move {
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let Some(mut watch) = watch else { return };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            let ev = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                ev = watch.next() => ev,
            };
            let ev = match ev {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => {
                    let st = StatusError::gone(e.to_string());
                    let _ = tx.send(line("ERROR", &st.to_json())).await;
                    return;
                }
                None => return,
            };
            let Ok(obj) = decode(&ev.kv) else { continue };
            let now_match = ls.matches(&obj) && fs.matches(&obj);
            let prev_match = ev
                .prev
                .as_ref()
                .and_then(|p| decode(p).ok())
                .is_some_and(|p| ls.matches(&p) && fs.matches(&p));
            let kind = match (ev.kind, prev_match, now_match) {
                (EventKind::Delete, true, _) => "DELETED",
                (EventKind::Delete, false, _) => continue,
                (EventKind::Put, false, true) => "ADDED",
                (EventKind::Put, true, true) => "MODIFIED",
                (EventKind::Put, true, false) => "DELETED",
                (EventKind::Put, false, false) => continue,
            };
            if tx.send(line(kind, &obj)).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response"))
}

/// `pods/log`: proxies to the kubelet of the pod's node, like upstream.
pub async fn pod_log(ctx: &Ctx, t: &Target) -> Result<Response<Body>, StatusError> {
    let (pod, _) = load(ctx, t)?;
    let names: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match t.param("container") {
        Some(c) if !c.is_empty() => c.to_string(),
        _ if names.len() == 1 => names[0].clone(),
        _ => {
            return Err(StatusError::bad_request(format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                t.name(),
                names.join(" ")
            )))
        }
    };
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(StatusError::bad_request(format!(
            "pod {} is not scheduled to a node yet; there are no logs",
            t.name()
        )));
    }
    let nodes = registry::by_kind("Node").expect("nodes registered");
    let node = match ctx.store.get(&nodes.key(None, node_name)) {
        Ok(Some(kv)) => decode(&kv)?,
        _ => return Err(StatusError::not_found("", "nodes", node_name)),
    };
    let ip = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("127.0.0.1")
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(10250);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    let mut url = url::Url::parse(&format!(
        "https://{host}:{port}/containerLogs/{}/{}/{container}",
        t.namespace.as_deref().unwrap_or("default"),
        t.name()
    ))
    .map_err(|e| StatusError::internal(e.to_string()))?;
    for (k, v) in &t.query {
        if [
            "follow",
            "previous",
            "timestamps",
            "tailLines",
            "sinceSeconds",
            "sinceTime",
            "limitBytes",
        ]
        .contains(&k.as_str())
        {
            url.query_pairs_mut().append_pair(k, v);
        }
    }
    let resp = ctx.kubelet.get(url.clone()).send().await.map_err(|e| {
        StatusError::internal(format!(
            "cannot reach the kubelet on node {node_name} at {url}: {e}"
        ))
    })?;
    let code = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_string();
    if code >= 400 {
        let text = resp.text().await.unwrap_or_default();
        return Err(StatusError::new(
            code,
            "BadRequest",
            text.trim().to_string(),
        ));
    }
    let stream = resp
        .bytes_stream()
        .map(|r| r.map(Frame::data).map_err(std::io::Error::other));
    let _ = full(Bytes::new());
    Ok(Response::builder()
        .status(200)
        .header("content-type", ct)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response"))
}
