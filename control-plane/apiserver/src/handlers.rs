//! The REST verbs on resources, generic over the registry; per-kind rules come from each entry's
//! strategy, side effects of a few kinds (service IPs, namespaces, cascading deletion) from
//! [`crate::lifecycle`].

use crate::lifecycle;
use crate::registry::{Registry, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::{ApiServerConfig, Body};
use crate::status::{FieldError, StatusError};
use crate::wire::{self, Format};
use crate::ApiError;
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
    pub registry: Arc<Registry>,
    pub advertise: SocketAddr,
    pub services: lifecycle::ServiceRanges,
    pub ca_pem: String,
    pub kubelet: reqwest::Client,
    pub metrics: crate::metrics::Metrics,
    pub watch_cache: crate::watchcache::WatchCache,
    pub signer: Option<crate::tokens::Signer>,
    pub rbac: crate::rbac::Rbac,
    pub webhooks: crate::webhook::Webhooks,
    /// Dependents by owner uid, for garbage collection.
    pub owners: crate::owners::OwnerIndex,
    me: std::sync::OnceLock<std::sync::Weak<Ctx>>,
}

impl Ctx {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        cfg: &ApiServerConfig,
    ) -> Result<Self, ApiError> {
        let pki = &cfg.pki;
        let ident = format!(
            "{}{}",
            pki.apiserver_kubelet_client.cert_pem()?,
            pki.apiserver_kubelet_client.key_pem()?
        );
        let ca_pem = pki.ca.cert_pem()?;
        let kubelet = reqwest::Client::builder()
            .use_rustls_tls()
            .identity(
                reqwest::Identity::from_pem(ident.as_bytes())
                    .map_err(|e| ApiError::Tls(format!("kubelet client identity: {e}")))?,
            )
            .add_root_certificate(
                reqwest::Certificate::from_pem(ca_pem.as_bytes())
                    .map_err(|e| ApiError::Tls(format!("cluster CA: {e}")))?,
            )
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::Tls(format!("kubelet client: {e}")))?;
        Ok(Self {
            store,
            registry,
            advertise: cfg.advertise,
            services: lifecycle::ServiceRanges::parse(&cfg.service_cidr, cfg.node_port_range)
                .map_err(ApiError::Config)?,
            ca_pem,
            kubelet,
            metrics: Default::default(),
            watch_cache: Default::default(),
            signer: match crate::tokens::Signer::load_or_create(
                &pki.dir.join("service-account.key"),
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "service-account tokens disabled");
                    None
                }
            },
            rbac: Default::default(),
            webhooks: Default::default(),
            owners: Default::default(),
            me: Default::default(),
        })
    }

    /// Wraps the context in an `Arc` that background tasks can reach.
    pub fn into_arc(self) -> Arc<Self> {
        let a = Arc::new(self);
        let _ = a.me.set(Arc::downgrade(&a));
        a
    }

    /// A strong reference for a background task (None while shutting down).
    pub fn self_ref(&self) -> Option<Arc<Self>> {
        self.me.get().and_then(std::sync::Weak::upgrade)
    }
}

/// Who is asking, as [`crate::authn`] found it. An empty name is the API server itself
/// (internal writes skip admission).
#[derive(Clone, Debug, Default)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
    pub uid: String,
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// One request's target: resource, namespace, name, subresource and the query.
pub struct Target {
    pub res: Arc<Resource>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub query: Vec<(String, String)>,
    pub accept: String,
    pub content_type: String,
    pub format: Format,
    pub gzip: bool,
    pub user: UserInfo,
}

impl Target {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
    pub fn key(&self) -> String {
        self.res.key(self.namespace.as_deref(), self.name())
    }
    fn prefix(&self) -> String {
        match &self.namespace {
            Some(ns) if self.res.namespaced => format!("{}{ns}/", self.res.prefix()),
            _ => self.res.prefix(),
        }
    }
    /// `as=Table` / `as=PartialObjectMetadata[List]` from the Accept header.
    fn wants(&self) -> Option<&str> {
        for part in self.accept.split(',') {
            for p in part.split(';').map(str::trim) {
                if let Some(a) = p.strip_prefix("as=") {
                    return Some(a);
                }
            }
        }
        None
    }
    fn dry_run(&self) -> bool {
        self.param("dryRun").is_some_and(|d| d == "All")
    }
    pub fn respond(&self, code: u16, v: &Value) -> Response<Body> {
        wire::respond(self.format, code, v, self.gzip)
    }
    fn field_manager(&self, default: &str) -> String {
        self.param("fieldManager")
            .filter(|m| !m.is_empty())
            .unwrap_or(default)
            .to_string()
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

pub fn store_err(res: &Resource, name: &str, e: StoreError) -> StatusError {
    let (g, p) = (res.group.as_str(), res.plural.as_str());
    match e {
        StoreError::NotFound(_) => StatusError::not_found(g, p, name),
        StoreError::AlreadyExists(_) => StatusError::already_exists(g, p, name),
        StoreError::Conflict { .. } => StatusError::conflict(
            &qualified(res),
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        StoreError::Compacted { .. } => StatusError::gone(e.to_string()),
        other => StatusError::internal(other.to_string()),
    }
}

fn qualified(res: &Resource) -> String {
    if res.group.is_empty() {
        res.plural.clone()
    } else {
        format!("{}.{}", res.plural, res.group)
    }
}

fn terr(t: &Target, e: StoreError) -> StatusError {
    store_err(&t.res, t.name(), e)
}

/// Decodes a stored object as the resource `res` serves it and sets its resourceVersion.
pub fn decode_as(res: &Resource, kv: &KeyValue) -> Result<Value, StatusError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| StatusError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    res.strategy.storage_to_version(&mut v);
    v["apiVersion"] = json!(res.api_version());
    v["kind"] = json!(res.kind);
    v["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok(v)
}

pub fn encode_for(res: &Resource, obj: &Value) -> Vec<u8> {
    if res.strategy.stores_as_served() {
        return serde_json::to_vec(&WithoutResourceVersion(obj)).expect("json");
    }
    let mut o = obj.clone();
    res.strategy.version_to_storage(&mut o);
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).expect("json")
}

/// Serializes an object as it is but for `metadata.resourceVersion` (never stored: the store's
/// revision is), without copying it.
struct WithoutResourceVersion<'a>(&'a Value);

impl serde::Serialize for WithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(m) = self.0 else {
            return self.0.serialize(s);
        };
        let mut out = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            match v {
                Value::Object(md) if k == "metadata" => {
                    out.serialize_entry(k, &MetaWithoutResourceVersion(md))?
                }
                _ => out.serialize_entry(k, v)?,
            }
        }
        out.end()
    }
}

struct MetaWithoutResourceVersion<'a>(&'a serde_json::Map<String, Value>);

impl serde::Serialize for MetaWithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut out = s.serialize_map(None)?;
        for (k, v) in self.0.iter().filter(|(k, _)| *k != "resourceVersion") {
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

async fn load(ctx: &Ctx, t: &Target) -> Result<(Value, i64), StatusError> {
    match ctx.store.get(&t.key()).await.map_err(|e| terr(t, e))? {
        Some(kv) => Ok((decode_as(&t.res, &kv)?, kv.mod_revision)),
        None => Err(StatusError::not_found(
            &t.res.group,
            &t.res.plural,
            t.name(),
        )),
    }
}

/// A JSON object of `fields`, moved in: `json!` would serialize each interpolated value into a
/// copy (for a list of 10,000 pods as a Table, a third of the time went to such copies).
fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// The object's metadata as a `PartialObjectMetadata` (the rest of it is dropped).
fn partial(mut o: Value) -> Value {
    object([
        ("kind", "PartialObjectMetadata".into()),
        ("apiVersion", "meta.k8s.io/v1".into()),
        ("metadata", o["metadata"].take()),
    ])
}

/// A list of `items` under `kind`/`api_version`.
fn list_of(kind: String, api_version: String, md: Value, items: Vec<Value>) -> Value {
    object([
        ("kind", kind.into()),
        ("apiVersion", api_version.into()),
        ("metadata", md),
        ("items", Value::Array(items)),
    ])
}

fn table(t: &Target, items: Vec<Value>, md: Value) -> Value {
    let now = Utc::now();
    let strategy = &t.res.strategy;
    let cols: Vec<Value> = strategy
        .columns()
        .iter()
        .map(|c| json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority}))
        .collect();
    let include = t.param("includeObject").unwrap_or("Metadata");
    let rows: Vec<Value> = items
        .into_iter()
        .map(|o| {
            let cells = Value::Array(strategy.cells(&o, now));
            let shown = match include {
                "None" => Value::Null,
                "Object" => o,
                _ => partial(o),
            };
            object([("cells", cells), ("object", shown)])
        })
        .collect();
    object([
        ("kind", "Table".into()),
        ("apiVersion", "meta.k8s.io/v1".into()),
        ("metadata", md),
        ("columnDefinitions", Value::Array(cols)),
        ("rows", Value::Array(rows)),
    ])
}

fn selectors(t: &Target) -> Result<(LabelSelector, FieldSelector), StatusError> {
    let fs = FieldSelector::parse(t.param("fieldSelector").unwrap_or(""))?;
    fs.check(&t.res.group, &t.res.kind)?;
    Ok((
        LabelSelector::parse(t.param("labelSelector").unwrap_or(""))?,
        fs,
    ))
}

/// A continue token: the revision of the first page and the last key returned.
fn continue_token(rv: i64, key: &str) -> String {
    use base64::Engine;
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{key}\u{0}")});
    base64::engine::general_purpose::URL_SAFE.encode(raw.to_string())
}

fn parse_continue(c: &str) -> Result<(i64, String), StatusError> {
    use base64::Engine;
    let bad = || {
        StatusError::bad_request("continue key is not valid: encoded form is not valid base64 JSON; list again without `continue`")
    };
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(c)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let start = v["start"].as_str().ok_or_else(bad)?;
    Ok((
        v["rv"].as_i64().unwrap_or(0),
        start.trim_end_matches('\u{0}').to_string(),
    ))
}

/// Matching objects of a list request, with the revision and the continue token.
async fn list_items(
    ctx: &Ctx,
    t: &Target,
) -> Result<(Vec<Value>, i64, Option<String>), StatusError> {
    let (ls, fs) = selectors(t)?;
    list_each(ctx, t, |kv| {
        let o = decode_as(&t.res, kv)?;
        Ok((ls.matches(&o) && fs.matches(&o)).then_some(o))
    })
    .await
}

/// The items of a list request (`limit`, `continue`, `resourceVersionMatch=Exact`), each made
/// by `item` from its stored key and value (`None`: not selected), with the revision and the
/// continue token.
async fn list_each<T>(
    ctx: &Ctx,
    t: &Target,
    mut item: impl FnMut(&KeyValue) -> Result<Option<T>, StatusError>,
) -> Result<(Vec<T>, i64, Option<String>), StatusError> {
    let limit: usize = t
        .param("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(0);
    // The revision to read at: the continue token's (one consistent list across pages), an
    // exact one asked for, or the current one.
    let (mut revision, mut start) = match t.param("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let (rv, key) = parse_continue(c)?;
            (rv, Some(format!("{key}\u{0}")))
        }
        None => (0, None),
    };
    if revision == 0 && t.param("resourceVersionMatch") == Some("Exact") {
        revision = t
            .param("resourceVersion")
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| {
                StatusError::bad_request("resourceVersionMatch=Exact needs a resourceVersion")
            })?;
    }
    let mut items = Vec::new();
    let mut list_rv;
    let mut last_key = String::new();
    loop {
        let page = if limit == 0 { 0 } else { (limit + 1).max(64) };
        let req = skiff_store::RangeRequest {
            prefix: t.prefix(),
            start: start.clone(),
            limit: page,
            revision,
        };
        let resp = match ctx.store.range(req).await {
            Ok(r) => r,
            Err(StoreError::Compacted { .. }) if t.param("continue").is_some() => {
                // The token's revision is gone: 410 with a token that continues at the
                // current revision, as upstream does.
                let fresh = ctx.store.current_revision().await.unwrap_or(0);
                let key = t
                    .param("continue")
                    .and_then(|c| parse_continue(c).ok())
                    .map(|(_, k)| k)
                    .unwrap_or_default();
                let mut e = StatusError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.");
                e.list_continue = Some(continue_token(fresh, &key));
                return Err(e);
            }
            Err(e) => return Err(terr(t, e)),
        };
        list_rv = resp.revision;
        revision = resp.revision;
        let n = resp.kvs.len();
        for kv in resp.kvs {
            let key = kv.key.clone();
            start = Some(format!("{key}\u{0}"));
            let Some(o) = item(&kv)? else {
                continue;
            };
            if limit > 0 && items.len() == limit {
                return Ok((items, list_rv, Some(continue_token(list_rv, &last_key))));
            }
            last_key = key;
            items.push(o);
        }
        if !resp.more || n == 0 {
            break;
        }
    }
    Ok((items, list_rv, None))
}

pub async fn list(ctx: &Ctx, t: &Target) -> Result<Response<Body>, StatusError> {
    if t.res.group == crate::metrics_api::GROUP {
        return crate::metrics_api::list(ctx, t).await;
    }
    let unselected = ["labelSelector", "fieldSelector"]
        .iter()
        .all(|p| t.param(p).is_none_or(|s| s.trim().is_empty()));
    if t.format == Format::Json && unselected {
        match t.wants() {
            None => return list_json(ctx, t, false).await,
            Some("PartialObjectMetadataList") | Some("PartialObjectMetadata") => {
                return list_json(ctx, t, true).await
            }
            _ => {}
        }
    }
    let (items, rv, cont) = list_items(ctx, t).await?;
    let md = list_meta(items.len(), rv, cont);
    let list = match t.wants() {
        Some("Table") => table(t, items, md),
        Some("PartialObjectMetadataList") | Some("PartialObjectMetadata") => list_of(
            "PartialObjectMetadataList".into(),
            "meta.k8s.io/v1".into(),
            md,
            items.into_iter().map(partial).collect(),
        ),
        _ => list_of(
            format!("{}List", t.res.kind),
            t.res.api_version(),
            md,
            items,
        ),
    };
    Ok(t.respond(200, &list))
}

/// A plain JSON list (no selector, no `as=`), written from the stored bytes: each item is its
/// stored JSON with `metadata.resourceVersion` spliced in (the stored form lacks only that),
/// not decoded and encoded again. Items whose stored form is not the served one (another
/// version, keys with escapes) go the long way. Byte for byte what [`list_items`] would give:
/// objects keep serde_json's sorted keys.
async fn list_json(ctx: &Ctx, t: &Target, metadata: bool) -> Result<Response<Body>, StatusError> {
    let api_version = t.res.api_version();
    let (items, rv, cont) = list_each(ctx, t, |kv| {
        Ok(Some(
            match splice_resource_version(&api_version, &t.res.kind, kv, metadata) {
                Some(b) => b,
                None if metadata => {
                    serde_json::to_vec(&partial(decode_as(&t.res, kv)?)).expect("json")
                }
                None => serde_json::to_vec(&decode_as(&t.res, kv)?).expect("json"),
            },
        ))
    })
    .await?;
    let md = list_meta(items.len(), rv, cont);
    let body = if metadata {
        json_list("meta.k8s.io/v1", "PartialObjectMetadataList", md, &items)
    } else {
        json_list(&api_version, &format!("{}List", t.res.kind), md, &items)
    };
    Ok(wire::respond_bytes("application/json", 200, body, t.gzip))
}

/// A list answer's metadata. After a large list (`len` items), the freed heap is given back
/// once the answer is built (off the async workers; glibc would otherwise keep it for the
/// process's life).
fn list_meta(len: usize, rv: i64, cont: Option<String>) -> Value {
    if len >= 1000 {
        tokio::task::spawn_blocking(skiff_memtrim::trim_heap);
    }
    let mut md = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        md["continue"] = json!(c);
    }
    md
}

/// A list as JSON, from its metadata and its items' JSON: the bytes serializing the list as a
/// value gives (keys in order).
fn json_list(api_version: &str, kind: &str, md: Value, items: &[Vec<u8>]) -> Vec<u8> {
    let len: usize = items.iter().map(|i| i.len() + 1).sum();
    let mut out = Vec::with_capacity(len + 256);
    out.extend_from_slice(b"{\"apiVersion\":");
    serde_json::to_writer(&mut out, api_version).expect("json");
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"],\"kind\":");
    serde_json::to_writer(&mut out, kind).expect("json");
    out.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut out, &md).expect("json");
    out.push(b'}');
    out
}

/// The stored object `kv` as the JSON [`decode_as`] would serialize (with `partial`, as
/// [`partial`] of it would), if it is stored as `api_version`/`kind` serve it: its bytes with
/// `"resourceVersion"` added to `metadata` in key order. `None` when it is not (or has keys this
/// cannot borrow).
fn splice_resource_version(
    api_version: &str,
    kind: &str,
    kv: &KeyValue,
    partial: bool,
) -> Option<Vec<u8>> {
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;
    type Fields<'a> = BTreeMap<&'a str, &'a RawValue>;
    let top: Fields = serde_json::from_slice(&kv.value).ok()?;
    let is = |field: &str, want: &str| {
        top.get(field)
            .and_then(|r| serde_json::from_str::<&str>(r.get()).ok())
            == Some(want)
    };
    if !is("apiVersion", api_version) || !is("kind", kind) {
        return None;
    }
    let mut md: Fields = serde_json::from_str(top.get("metadata")?.get()).ok()?;
    let rv = format!("\"{}\"", kv.mod_revision);
    let rv = RawValue::from_string(rv).ok()?;
    md.insert("resourceVersion", &rv);
    let mut out = Vec::with_capacity(kv.value.len() + 40);
    let object =
        |out: &mut Vec<u8>, fields: &Fields, inner: &mut dyn FnMut(&str, &mut Vec<u8>) -> bool| {
            out.push(b'{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Borrowed keys have no escapes: quoting them is their JSON.
                out.push(b'"');
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"\":");
                if !inner(k, out) {
                    out.extend_from_slice(v.get().as_bytes());
                }
            }
            out.push(b'}');
        };
    if partial {
        // As `partial` gives it: the metadata alone.
        out.extend_from_slice(
            br#"{"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":"#,
        );
        object(&mut out, &md, &mut |_, _| false);
        out.push(b'}');
        return Some(out);
    }
    object(&mut out, &top, &mut |k, out| {
        if k != "metadata" {
            return false;
        }
        object(out, &md, &mut |_, _| false);
        true
    });
    Some(out)
}

pub async fn get(ctx: &Ctx, t: &Target) -> Result<Response<Body>, StatusError> {
    if t.res.group == crate::metrics_api::GROUP {
        return crate::metrics_api::get(ctx, t).await;
    }
    let (obj, _) = load(ctx, t).await?;
    if t.sub.as_deref() == Some("scale") {
        return Ok(t.respond(200, &to_scale(&t.res, &obj)));
    }
    if t.sub.is_none() {
        match t.wants() {
            Some("Table") => {
                let md = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                return Ok(t.respond(200, &table(t, vec![obj], md)));
            }
            Some("PartialObjectMetadata") => return Ok(t.respond(200, &partial(obj))),
            _ => {}
        }
    }
    Ok(t.respond(200, &obj))
}

async fn ensure_namespace(ctx: &Ctx, t: &Target, creating: bool) -> Result<(), StatusError> {
    if !t.res.namespaced {
        return Ok(());
    }
    let ns = t.namespace.as_deref().unwrap_or("default");
    let nsres = ctx.registry.by_kind("", "Namespace").expect("namespaces");
    match ctx.store.get(&nsres.key(None, ns)).await {
        Ok(Some(kv)) => {
            // Cheap test first: only a terminating namespace holds a deletionTimestamp.
            if creating && memchr::memmem::find(&kv.value, b"\"deletionTimestamp\"").is_some() {
                let v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                if !v["metadata"]["deletionTimestamp"].is_null() {
                    return Err(StatusError::forbidden_terminating(&t.res, t.name(), ns));
                }
            }
            Ok(())
        }
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

/// Checks types, defaults and validates an object for the resource, as every write does.
fn admit(
    ctx: &Ctx,
    t: &Target,
    obj: &mut Value,
    old: Option<&Value>,
    raw: Option<&[u8]>,
) -> Result<Vec<String>, StatusError> {
    let res = &t.res;
    let strategy = &res.strategy;
    let warnings = crate::validation::field_validation(ctx, t, obj, raw)?;
    strategy.set_defaults(obj);
    strip_nulls(obj);
    let mut errs: Vec<FieldError> = vec![];
    crate::strategy::validate_meta(strategy.name_rule(), obj, &mut errs);
    strategy.validate(obj, &mut errs);
    if let Some(old) = old {
        strategy.validate_update(obj, old, &mut errs);
    }
    if !errs.is_empty() {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        return Err(StatusError::invalid(&res.kind, &name, &res.group, &errs));
    }
    Ok(warnings)
}

/// Drops `null` map values, as upstream's typed round trip drops unset optional fields.
pub fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, x| !x.is_null() || k == "creationTimestamp");
            for x in m.values_mut() {
                strip_nulls(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let quoted = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("299 - \"{quoted}\"")) {
            r.headers_mut().append("warning", v);
        }
    }
    r
}

pub async fn create(ctx: &Ctx, t: &Target, body: &[u8]) -> Result<Response<Body>, StatusError> {
    let mut obj = wire::decode_body(&t.content_type, body)?;
    let res = t.res.clone();
    if let Some(sub) = t.sub.as_deref() {
        return crate::subresources::create(ctx, t, sub, obj).await;
    }
    if res.kind == "Binding" {
        return crate::subresources::bind_resource(ctx, t, &obj).await;
    }
    if !res.stored() {
        return crate::reviews::create(ctx, t, obj).await;
    }
    res.strategy
        .check_types(&obj)
        .map_err(StatusError::bad_request)?;
    if obj["kind"].is_null() {
        obj["kind"] = json!(res.kind);
    }
    if obj["apiVersion"].is_null() {
        obj["apiVersion"] = json!(res.api_version());
    }
    if obj["kind"] != res.kind.as_str() || obj["apiVersion"] != res.api_version().as_str() {
        return Err(StatusError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({}) or kind {} does not match {}",
            obj["apiVersion"].as_str().unwrap_or(""),
            res.api_version(),
            obj["kind"].as_str().unwrap_or(""),
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
                return Err(StatusError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
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
    obj["metadata"]["generation"] = json!(1);
    res.strategy.prepare_create(&mut obj);
    if res.group == "certificates.k8s.io" && res.kind == "CertificateSigningRequest" {
        // Who asked, as upstream's CSR strategy records it (signers and approvers read it).
        let u = &t.user;
        obj["spec"]["username"] = json!(u.name);
        obj["spec"]["groups"] = json!(u.groups);
        if u.uid.is_empty() {
            if let Some(m) = obj["spec"].as_object_mut() {
                m.remove("uid");
            }
        } else {
            obj["spec"]["uid"] = json!(u.uid);
        }
        if u.extra.is_empty() {
            if let Some(m) = obj["spec"].as_object_mut() {
                m.remove("extra");
            }
        } else {
            obj["spec"]["extra"] = json!(u.extra);
        }
    }
    // NamespaceLifecycle runs first, as upstream orders admission: a missing namespace is 404
    // and a terminating one 403 before any other plugin looks at the object.
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let t2 = Target {
        name: Some(name),
        namespace: obj["metadata"]["namespace"].as_str().map(str::to_string),
        res: res.clone(),
        sub: None,
        query: vec![],
        accept: String::new(),
        content_type: String::new(),
        format: t.format,
        gzip: false,
        user: t.user.clone(),
    };
    ensure_namespace(ctx, &t2, true).await?;
    let hook_warnings = crate::admission::mutate_create(ctx, t, &mut obj).await?;
    let mut warnings = admit(ctx, t, &mut obj, None, Some(body))?;
    warnings.extend(hook_warnings);
    warnings.extend(crate::admission::validate(ctx, t, "create", &obj).await?);
    crate::managed::record(
        &mut obj,
        None,
        &t.field_manager("unknown"),
        "Update",
        &res.api_version(),
    );
    if t.dry_run() {
        lifecycle::before_create(ctx, &res, &mut obj, true).await?;
        return Ok(with_warnings(t.respond(201, &obj), &warnings));
    }
    // Only Services allocate before they are stored: spare the lookup for the rest (the store's
    // create answers AlreadyExists itself).
    let allocates = res.group.is_empty() && res.kind == "Service";
    if allocates
        && ctx
            .store
            .get(&t2.key())
            .await
            .map_err(|e| terr(&t2, e))?
            .is_some()
    {
        return Err(StatusError::already_exists(
            &res.group,
            &res.plural,
            t2.name(),
        ));
    }
    lifecycle::before_create(ctx, &res, &mut obj, false).await?;
    let kv = match ctx.store.create(&t2.key(), encode_for(&res, &obj)).await {
        Ok(kv) => kv,
        Err(e) => {
            lifecycle::undo_create(ctx, &res, &obj).await;
            return Err(terr(&t2, e));
        }
    };
    // What was stored is `obj` in the served version: no need to decode it again.
    let mut out = obj;
    out["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    lifecycle::after_create(ctx, &res, &out).await;
    Ok(with_warnings(t.respond(201, &out), &warnings))
}

/// Immutable metadata copied from the stored object on every update.
const KEEP_META: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "namespace",
    "name",
    "generation",
];

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}

/// Computes the object an update stores, from the old one and what the client sent.
pub fn merge_update(
    ctx: &Ctx,
    t: &Target,
    old: &Value,
    mut new: Value,
    raw: Option<&[u8]>,
) -> Result<(Value, Vec<String>), StatusError> {
    let res = &t.res;
    res.strategy
        .check_types(&new)
        .map_err(StatusError::bad_request)?;
    match t.sub.as_deref() {
        Some("status") => {
            let mut out = old.clone();
            out["status"] = new["status"].take();
            // Status writers may change labels/annotations? Upstream keeps metadata except
            // for a few fields; keep all of the old.
            return Ok((out, vec![]));
        }
        Some("finalize") => {
            let mut out = old.clone();
            out["spec"]["finalizers"] = new["spec"]["finalizers"].take();
            return Ok((out, vec![]));
        }
        Some("approval") => {
            let mut out = old.clone();
            out["status"]["conditions"] = new["status"]["conditions"].take();
            return Ok((out, vec![]));
        }
        _ => {}
    }
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
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
    if new["apiVersion"].is_null() {
        new["apiVersion"] = json!(res.api_version());
    }
    if new["kind"].is_null() {
        new["kind"] = json!(res.kind);
    }
    if new["kind"] != res.kind.as_str() {
        return Err(StatusError::bad_request(format!(
            "the kind of the object ({}) does not match the resource {}",
            new["kind"].as_str().unwrap_or(""),
            res.kind
        )));
    }
    new["apiVersion"] = json!(res.api_version());
    if res.has_status
        && matches!(
            t.sub.as_deref(),
            None | Some("ephemeralcontainers") | Some("resize")
        )
    {
        new["status"] = old["status"].clone();
    }
    if t.sub.as_deref() == Some("ephemeralcontainers") {
        let mut out = old.clone();
        let added = new["spec"]["ephemeralContainers"].take();
        check_ephemeral_update(t.name(), &old["spec"]["ephemeralContainers"], &added)?;
        out["spec"]["ephemeralContainers"] = added;
        new = out;
    } else if t.sub.is_none() && res.kind == "Pod" && res.group.is_empty() {
        // Ephemeral containers change only through their subresource.
        match old["spec"].get("ephemeralContainers") {
            Some(e) => new["spec"]["ephemeralContainers"] = e.clone(),
            None => {
                if let Some(m) = new["spec"].as_object_mut() {
                    m.remove("ephemeralContainers");
                }
            }
        }
    }
    res.strategy.prepare_update(&mut new, old);
    let warnings = admit(ctx, t, &mut new, Some(old), raw)?;
    // generation follows spec changes (the whole body for kinds without a status split).
    let ignore: &[&str] = &["metadata", "status", "apiVersion", "kind"];
    if without(&new, ignore) != without(old, ignore) {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(g + 1);
    }
    Ok((new, warnings))
}

/// Upstream's rule for the ephemeralcontainers subresource: containers may be added, never
/// changed or removed.
fn check_ephemeral_update(name: &str, old: &Value, new: &Value) -> Result<(), StatusError> {
    let empty = vec![];
    let old = old.as_array().unwrap_or(&empty);
    let new = new.as_array().unwrap_or(&empty);
    for (i, o) in old.iter().enumerate() {
        let c = o["name"].as_str().unwrap_or("");
        let err = match new.iter().find(|n| n["name"].as_str() == Some(c)) {
            Some(n) if n == o => continue,
            Some(_) => FieldError::forbidden(
                format!("spec.ephemeralContainers[{i}]"),
                "existing ephemeral containers may not be changed",
            ),
            None => FieldError::forbidden(
                "spec.ephemeralContainers",
                format!("existing ephemeral containers \"{c}\" may not be removed"),
            ),
        };
        return Err(StatusError::invalid("Pod", name, "", &[err]));
    }
    Ok(())
}

/// Stores `obj` over revision `rev`, or deletes it when its deletion is complete
/// (deletionTimestamp set, no finalizers left).
pub async fn commit_update(
    ctx: &Ctx,
    t: &Target,
    obj: &Value,
    rev: i64,
) -> Result<Value, StatusError> {
    crate::admission::validate(ctx, t, "update", obj).await?;
    let md = &obj["metadata"];
    let finalizers_empty = md["finalizers"].as_array().is_none_or(Vec::is_empty);
    // A namespace also waits for its spec finalizers (`kubernetes`: the namespace controller),
    // as upstream's `ShouldDeleteNamespaceDuringUpdate`.
    let spec_finalizers_empty = !is_namespace(&t.res)
        || obj["spec"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
    if !md["deletionTimestamp"].is_null()
        && finalizers_empty
        && spec_finalizers_empty
        && md["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0
    {
        if t.dry_run() {
            return Ok(obj.clone());
        }
        tracing::debug!(key = %t.key(), "deletion complete: object removed");
        let kv = ctx
            .store
            .delete(&t.key(), Some(rev))
            .await
            .map_err(|e| terr(t, e))?;
        let gone = decode_as(&t.res, &kv)?;
        lifecycle::after_delete(ctx, &t.res, &gone).await;
        return Ok(gone);
    }
    // A Service update allocates what its new spec needs (NodePorts when it becomes a NodePort,
    // ...) and releases, once stored, what its old spec held and the new one does not.
    let mut obj = obj.clone();
    let service = t.res.group.is_empty() && t.res.kind == "Service" && t.sub.is_none();
    let mut svc_old = None;
    let mut fresh = vec![];
    if service {
        if let Ok(Some(kv)) = ctx.store.get(&t.key()).await {
            let old = decode_as(&t.res, &kv)?;
            fresh =
                lifecycle::before_service_update(ctx, &t.res, &mut obj, Some(&old), t.dry_run())
                    .await?;
            svc_old = Some(old);
        }
    }
    if t.dry_run() {
        return Ok(obj);
    }
    let stored = ctx
        .store
        .update(&t.key(), encode_for(&t.res, &obj), Some(rev))
        .await;
    if let Some(old) = &svc_old {
        lifecycle::after_service_update(ctx, old, stored.as_ref().ok().map(|_| &obj), &fresh).await;
    }
    let kv = stored.map_err(|e| terr(t, e))?;
    let mut out = obj;
    out["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    lifecycle::after_update(ctx, &t.res, &out).await;
    Ok(out)
}

fn is_namespace(res: &Resource) -> bool {
    res.kind == "Namespace" && res.group.is_empty()
}

/// A uid precondition: 409 when the stored object is another incarnation.
fn check_uid(t: &Target, current: &Value, uid: &str) -> Result<(), StatusError> {
    if current["metadata"]["uid"] == uid {
        return Ok(());
    }
    Err(StatusError::conflict(
        &qualified(&t.res),
        t.name(),
        &format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            current["metadata"]["uid"].as_str().unwrap_or("")
        ),
    ))
}

fn check_update_target(t: &Target, new: &Value) -> Result<(), StatusError> {
    if let Some(n) = new["metadata"]["name"].as_str() {
        if !n.is_empty() && n != t.name() {
            return Err(StatusError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                t.name()
            )));
        }
    }
    if let (Some(ns), Some(path_ns)) = (new["metadata"]["namespace"].as_str(), &t.namespace) {
        if !ns.is_empty() && ns != path_ns && t.res.namespaced {
            return Err(StatusError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(())
}

pub async fn update(ctx: &Ctx, t: &Target, body: &[u8]) -> Result<Response<Body>, StatusError> {
    let new = wire::decode_body(&t.content_type, body)?;
    if t.sub.as_deref() == Some("scale") {
        return scale_write(ctx, t, |_| Ok(new.clone())).await;
    }
    check_update_target(t, &new)?;
    let (old, rev) = match load(ctx, t).await {
        Ok(x) => x,
        // PUT creates when the object does not exist (upstream allows create-on-update for a
        // few kinds; kubectl replace --force deletes first).
        Err(e) if e.code == 404 && t.sub.is_none() && allow_create_on_update(&t.res) => {
            return create(ctx, t, body).await;
        }
        Err(e) => return Err(e),
    };
    let expected = match new["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() => rv
            .parse::<i64>()
            .map_err(|_| StatusError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        _ => rev,
    };
    if expected != rev {
        return Err(terr(
            t,
            StoreError::Conflict {
                key: t.key(),
                expected,
                actual: rev,
            },
        ));
    }
    if let Some(uid) = new["metadata"]["uid"].as_str().filter(|u| !u.is_empty()) {
        check_uid(t, &old, uid)?;
    }
    let (mut obj, warnings) = merge_update(ctx, t, &old, new, Some(body))?;
    crate::managed::record(
        &mut obj,
        Some(&old),
        &t.field_manager("unknown"),
        "Update",
        &t.res.api_version(),
    );
    let out = commit_update(ctx, t, &obj, rev).await?;
    Ok(with_warnings(t.respond(200, &out), &warnings))
}

fn allow_create_on_update(res: &Resource) -> bool {
    matches!(
        res.kind.as_str(),
        "Endpoints" | "Lease" | "Event" | "EndpointSlice"
    )
}

pub async fn patch(ctx: &Ctx, t: &Target, body: &[u8]) -> Result<Response<Body>, StatusError> {
    if body.len() > wire::MAX_BODY {
        return Err(StatusError::new(
            413,
            "RequestEntityTooLarge",
            "the request is too large: limit is 3MB",
        ));
    }
    let ct = wire::media_type(&t.content_type).to_string();
    if t.sub.as_deref() == Some("scale") {
        return scale_write(ctx, t, |scale| {
            let mut s = scale.clone();
            crate::patch::apply(&ct, &mut s, body)?;
            Ok(s)
        })
        .await;
    }
    let apply = ct == "application/apply-patch+yaml";
    for _ in 0..8 {
        let (old, rev) = match load(ctx, t).await {
            Ok(x) => x,
            Err(e) if e.code == 404 && apply && t.sub.is_none() => {
                return crate::managed::apply_create(ctx, t, body).await;
            }
            Err(e) => return Err(e),
        };
        let mut patched = old.clone();
        let manager;
        if apply {
            manager = t.param("fieldManager").unwrap_or("").to_string();
            if manager.is_empty() {
                return Err(StatusError::bad_request(
                    "PATCH, application/apply-patch+yaml requests require fieldManager to be set",
                ));
            }
            crate::managed::apply(
                &mut patched,
                body,
                &manager,
                t.param("force") == Some("true"),
                &t.res,
            )?;
        } else {
            manager = t.field_manager("unknown");
            crate::patch::apply(&ct, &mut patched, body)?;
            let pre_rv = patched["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("");
            if !pre_rv.is_empty() && pre_rv != rev.to_string() {
                return Err(terr(
                    t,
                    StoreError::Conflict {
                        key: t.key(),
                        expected: pre_rv.parse().unwrap_or(0),
                        actual: rev,
                    },
                ));
            }
            if patched["metadata"]["uid"] != old["metadata"]["uid"]
                && !patched["metadata"]["uid"].is_null()
            {
                return Err(StatusError::conflict(
                    &qualified(&t.res),
                    t.name(),
                    &format!(
                        "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                        patched["metadata"]["uid"].as_str().unwrap_or(""),
                        old["metadata"]["uid"].as_str().unwrap_or("")
                    ),
                ));
            }
        }
        let (mut obj, warnings) = merge_update(ctx, t, &old, patched, None)?;
        if !apply {
            crate::managed::record(
                &mut obj,
                Some(&old),
                &manager,
                "Update",
                &t.res.api_version(),
            );
        }
        match commit_update(ctx, t, &obj, rev).await {
            Err(e) if e.code == 409 && e.reason == "Conflict" => continue,
            r => return r.map(|o| with_warnings(t.respond(200, &o), &warnings)),
        }
    }
    Err(StatusError::conflict(
        &qualified(&t.res),
        t.name(),
        "too many concurrent writers; try again",
    ))
}

/// The autoscaling/v1 Scale view of a scalable object.
fn to_scale(res: &Resource, obj: &Value) -> Value {
    let sel = &obj["spec"]["selector"];
    let selector = if res.kind == "ReplicationController" {
        crate::strategy::printers_label_text(sel)
    } else {
        crate::strategy::printers_selector_text(sel)
    };
    let mut md = json!({
        "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
        "resourceVersion": obj["metadata"]["resourceVersion"],
        "creationTimestamp": obj["metadata"]["creationTimestamp"]});
    if res.namespaced {
        md["namespace"] = obj["metadata"]["namespace"].clone();
    }
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": md,
           "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
           "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector}})
}

async fn scale_write(
    ctx: &Ctx,
    t: &Target,
    f: impl Fn(&Value) -> Result<Value, StatusError>,
) -> Result<Response<Body>, StatusError> {
    for _ in 0..8 {
        let (old, rev) = load(ctx, t).await?;
        let scale = f(&to_scale(&t.res, &old))?;
        if let Some(rv) = scale["metadata"]["resourceVersion"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            if rv != rev.to_string() {
                return Err(terr(
                    t,
                    StoreError::Conflict {
                        key: t.key(),
                        expected: rv.parse().unwrap_or(0),
                        actual: rev,
                    },
                ));
            }
        }
        let Some(replicas) = scale["spec"]["replicas"].as_i64() else {
            return Err(StatusError::invalid(
                "Scale",
                t.name(),
                "autoscaling",
                &[FieldError::required("spec.replicas", "")],
            ));
        };
        if replicas < 0 {
            return Err(StatusError::invalid(
                "Scale",
                t.name(),
                "autoscaling",
                &[FieldError::invalid(
                    "spec.replicas",
                    &replicas.to_string(),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut obj = old.clone();
        obj["spec"]["replicas"] = json!(replicas);
        crate::managed::record(
            &mut obj,
            Some(&old),
            &t.field_manager("unknown"),
            "Update",
            &t.res.api_version(),
        );
        if obj != old {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(g + 1);
        }
        match commit_update(ctx, t, &obj, rev).await {
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
            Ok(o) => return Ok(t.respond(200, &to_scale(&t.res, &o))),
        }
    }
    Err(StatusError::conflict(
        &qualified(&t.res),
        t.name(),
        "too many concurrent writers; try again",
    ))
}

/// DeleteOptions from the body or the query.
struct DeleteOpts {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    rv: Option<String>,
}

fn delete_opts(t: &Target, body: &[u8]) -> Result<DeleteOpts, StatusError> {
    let opts: Value = if body.is_empty() {
        json!({})
    } else {
        wire::decode_body(&t.content_type, body).map_err(|e| {
            StatusError::bad_request(format!("invalid DeleteOptions: {}", e.message))
        })?
    };
    let mut propagation = opts["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| t.param("propagationPolicy").map(str::to_string));
    if propagation.is_none() {
        if let Some(o) = opts["orphanDependents"]
            .as_bool()
            .or_else(|| t.param("orphanDependents").map(|v| v == "true"))
        {
            propagation = Some(if o { "Orphan" } else { "Background" }.into());
        }
    }
    if let Some(p) = &propagation {
        if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
            return Err(StatusError::invalid(
                "DeleteOptions",
                "",
                "",
                &[FieldError::not_supported(
                    "propagationPolicy",
                    p,
                    &["Foreground", "Background", "Orphan"],
                )],
            ));
        }
    }
    Ok(DeleteOpts {
        grace: opts["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| t.param("gracePeriodSeconds").and_then(|g| g.parse().ok())),
        propagation,
        uid: opts["preconditions"]["uid"].as_str().map(str::to_string),
        rv: opts["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
    })
}

pub async fn delete(ctx: &Ctx, t: &Target, body: &[u8]) -> Result<Response<Body>, StatusError> {
    let opts = delete_opts(t, body)?;
    let out = delete_one(ctx, t, &opts).await?;
    let code = if out["metadata"]["deletionTimestamp"].is_null() || t.dry_run() {
        200
    } else {
        202
    };
    // Upstream answers a finished deletion with the object for most kinds and a Status for
    // a few; kubectl handles both.
    Ok(t.respond(code, &out))
}

/// Deletes with `opts` as the DeleteOptions body (JSON) and the target's query (the eviction
/// subresource: grace period and preconditions from the Eviction).
pub async fn delete_with(ctx: &Ctx, t: &Target, opts: &Value) -> Result<Value, StatusError> {
    let body = serde_json::to_vec(opts).unwrap_or_default();
    let opts = delete_opts(t, &body)?;
    delete_one(ctx, t, &opts).await
}

/// Deletes with the options in the target's query (internal callers: cascades, namespaces).
pub async fn delete_sync(ctx: &Ctx, t: &Target) -> Result<Value, StatusError> {
    let opts = delete_opts(t, &[])?;
    delete_one(ctx, t, &opts).await
}

/// Deletes one object. Without a resourceVersion precondition, a write that lands between our
/// read and the delete is not the caller's problem: read again and retry (upstream's
/// GuaranteedUpdate loop), so a controller's status write does not fail `kubectl delete`.
async fn delete_one(ctx: &Ctx, t: &Target, opts: &DeleteOpts) -> Result<Value, StatusError> {
    let mut attempts = 0;
    loop {
        match delete_once(ctx, t, opts).await {
            Err(e) if e.code == 409 && opts.rv.is_none() && attempts < 10 => attempts += 1,
            other => return other,
        }
    }
}

async fn delete_once(ctx: &Ctx, t: &Target, opts: &DeleteOpts) -> Result<Value, StatusError> {
    let (mut obj, rev) = load(ctx, t).await?;
    if let Some(uid) = &opts.uid {
        check_uid(t, &obj, uid)?;
    }
    crate::admission::validate(ctx, t, "delete", &obj).await?;
    if let Some(prv) = &opts.rv {
        if *prv != rev.to_string() {
            return Err(StatusError::conflict(
                &qualified(&t.res),
                t.name(),
                &format!("Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {rev}"),
            ));
        }
    }
    let grace = lifecycle::grace_period(&t.res, &obj, opts.grace);
    let propagation = opts
        .propagation
        .clone()
        .unwrap_or_else(|| lifecycle::default_propagation(&t.res).into());
    let namespace_like = is_namespace(&t.res);
    // A namespace with spec finalizers (normally `kubernetes`) is only marked Terminating: the
    // namespace controller empties it, then finalizes it (upstream's namespace REST Delete).
    let namespace_waits = namespace_like
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
    let md = &mut obj["metadata"];
    let mut finalizers: Vec<Value> = md["finalizers"].as_array().cloned().unwrap_or_default();
    let add = |f: &mut Vec<Value>, name: &str| {
        if !f.iter().any(|x| x == name) {
            f.push(json!(name));
        }
    };
    match propagation.as_str() {
        "Orphan" => add(&mut finalizers, "orphan"),
        "Foreground" => add(&mut finalizers, "foregroundDeletion"),
        _ => {}
    }
    if grace == 0 && finalizers.is_empty() && !namespace_waits {
        if t.dry_run() {
            return Ok(obj);
        }
        tracing::debug!(key = %t.key(), user = %t.user.name, "object deleted");
        let kv = ctx
            .store
            .delete(&t.key(), Some(rev))
            .await
            .map_err(|e| terr(t, e))?;
        let gone = decode_as(&t.res, &kv)?;
        lifecycle::after_delete(ctx, &t.res, &gone).await;
        return Ok(gone);
    }
    let current = md["deletionGracePeriodSeconds"].as_i64();
    let first = md["deletionTimestamp"].is_null();
    if first || current.is_some_and(|c| grace < c) {
        let at = Utc::now() + chrono::Duration::seconds(grace);
        md["deletionTimestamp"] = json!(at.to_rfc3339_opts(SecondsFormat::Secs, true));
        md["deletionGracePeriodSeconds"] = json!(grace);
    }
    if first {
        md["finalizers"] = json!(finalizers);
        if namespace_like {
            obj["status"]["phase"] = json!("Terminating");
        }
    }
    if t.dry_run() {
        return Ok(obj);
    }
    let kv = ctx
        .store
        .update(&t.key(), encode_for(&t.res, &obj), Some(rev))
        .await
        .map_err(|e| terr(t, e))?;
    let out = decode_as(&t.res, &kv)?;
    lifecycle::after_delete_started(ctx, &t.res, &out);
    Ok(out)
}

pub async fn delete_collection(
    ctx: &Ctx,
    t: &Target,
    body: &[u8],
) -> Result<Response<Body>, StatusError> {
    if !t.res.verbs.allows("deletecollection") {
        return Err(StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource (delete {})",
            t.res.plural
        )));
    }
    let opts = delete_opts(t, body)?;
    // Only the names are kept from the list, and the deleted objects as JSON bytes when the
    // answer is JSON: ten thousand pods held as decoded values, twice, took ~500 MB at the peak
    // (and glibc kept most of it).
    let (ls, fs) = selectors(t)?;
    let meta = |o: &Value, f: &str| o["metadata"][f].as_str().map(str::to_string);
    let (names, rv, _) = list_each(ctx, t, |kv| {
        let o = decode_as(&t.res, kv)?;
        Ok((ls.matches(&o) && fs.matches(&o)).then(|| (meta(&o, "namespace"), meta(&o, "name"))))
    })
    .await?;
    let json = t.format == Format::Json;
    let (mut out, mut out_json) = (Vec::new(), Vec::new());
    for (namespace, name) in names {
        let one = Target {
            res: t.res.clone(),
            namespace,
            name,
            sub: None,
            query: t.query.clone(),
            accept: String::new(),
            content_type: t.content_type.clone(),
            format: t.format,
            gzip: false,
            user: t.user.clone(),
        };
        match delete_one(ctx, &one, &opts).await {
            Ok(v) if json => out_json.push(serde_json::to_vec(&v).expect("json")),
            Ok(v) => out.push(v),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let md = json!({"resourceVersion": rv.to_string()});
    if json {
        let kind = format!("{}List", t.res.kind);
        let body = json_list(&t.res.api_version(), &kind, md, &out_json);
        return Ok(wire::respond_bytes("application/json", 200, body, t.gzip));
    }
    Ok(t.respond(
        200,
        &list_of(format!("{}List", t.res.kind), t.res.api_version(), md, out),
    ))
}

/// Where a watch's events come from: the watch cache, or the store's history for revisions
/// older than the cache's window.
enum Source {
    Cache(crate::watchcache::Subscription),
    Store(skiff_store::Watch),
}

impl Source {
    async fn next(&mut self) -> Option<Result<Arc<crate::watchcache::CachedEvent>, String>> {
        match self {
            Source::Cache(sub) => match sub.next().await {
                crate::watchcache::Next::Event(e) => Some(Ok(e)),
                crate::watchcache::Next::TooSlow => Some(Err(
                    "the watcher fell too far behind; list again".to_string(),
                )),
                crate::watchcache::Next::Closed => None,
            },
            Source::Store(w) => match w.next().await? {
                Ok(ev) => Some(Ok(Arc::new(crate::watchcache::CachedEvent::from_store(
                    &ev,
                )?))),
                Err(e) => Some(Err(e.to_string())),
            },
        }
    }
}

/// A JSON watch event line, `{"object":..,"type":..}\n`: the bytes of `json!` then `to_vec`,
/// without first copying the object into the macro's value.
fn json_watch_frame(kind: &str, obj: &Value) -> Vec<u8> {
    let mut b = Vec::with_capacity(1024);
    b.extend_from_slice(b"{\"object\":");
    serde_json::to_writer(&mut b, obj).expect("json");
    b.extend_from_slice(b",\"type\":");
    serde_json::to_writer(&mut b, kind).expect("json");
    b.extend_from_slice(b"}\n");
    b
}

/// Watch: every change after the requested revision, as upstream's watch stream (JSON lines,
/// or length-prefixed protobuf frames), with bookmarks and the initial-events end marker.
pub async fn watch(ctx: &Ctx, t: &Target) -> Result<Response<Body>, StatusError> {
    let (ls, fs) = selectors(t)?;
    let prefix = t.prefix();
    let rv = t.param("resourceVersion").unwrap_or("");
    let send_initial = t.param("sendInitialEvents") == Some("true");
    let bookmarks = t.param("allowWatchBookmarks") == Some("true");
    let timeout = t
        .param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let format = t.format;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let frame = move |kind: &str, obj: &Value| -> Bytes {
        match format {
            Format::Protobuf => match crate::wire::watch_frame(kind, obj) {
                Some(b) => Bytes::from(b),
                None => Bytes::new(),
            },
            _ => Bytes::from(json_watch_frame(kind, obj)),
        }
    };
    let res = t.res.clone();
    let bookmark = {
        let res = res.clone();
        move |rv: i64, initial_end: bool| -> Value {
            let mut md = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": md})
        }
    };
    let mut initial = Vec::new();
    let start = if rv.is_empty() || rv == "0" || send_initial {
        let (kvs, rev) = ctx.store.list(&prefix).await.map_err(|e| terr(t, e))?;
        for kv in kvs {
            let o = decode_as(&res, &kv)?;
            if ls.matches(&o) && fs.matches(&o) {
                initial.push(frame("ADDED", &o));
            }
        }
        if send_initial && bookmarks {
            initial.push(frame("BOOKMARK", &bookmark(rev, true)));
        }
        rev
    } else {
        rv.parse::<i64>()
            .map_err(|_| StatusError::bad_request(format!("invalid resourceVersion {rv:?}")))?
    };
    let store_prefix = res.prefix();
    let mut source = match ctx
        .watch_cache
        .subscribe(&ctx.store, &store_prefix, start)
        .await
    {
        Some(sub) => Some(Source::Cache(sub)),
        None => match ctx.store.watch(&prefix, start).await {
            Ok(w) => Some(Source::Store(w)),
            Err(e @ StoreError::Compacted { .. }) => {
                let st = StatusError::gone(format!("too old resource version: {start} ({e})"));
                initial.push(frame("ERROR", &st.to_json()));
                None
            }
            Err(e) => return Err(terr(t, e)),
        },
    };
    let fmt_id = format as u8;
    let metrics = ctx.metrics.clone();
    tokio::spawn(async move {
        let _guard = metrics.watcher_guard(&res);
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let Some(source) = source.as_mut() else {
            return;
        };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        let mut last_rev = start;
        let api_version = res.api_version();
        loop {
            let ev = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(frame("BOOKMARK", &bookmark(last_rev, false))).await.is_err() {
                        return;
                    }
                    continue;
                }
                ev = source.next() => ev,
            };
            let ev = match ev {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => {
                    let st = StatusError::gone(e);
                    let _ = tx.send(frame("ERROR", &st.to_json())).await;
                    return;
                }
                None => return,
            };
            last_rev = ev.rev;
            if !ev.key.starts_with(&prefix) {
                continue;
            }
            // Objects stored in another version than the one watched are converted per
            // watcher; the rest share one decoded object and one encoded frame.
            let same =
                ev.obj["apiVersion"] == api_version.as_str() && ev.obj["kind"] == res.kind.as_str();
            let convert = |v: &Value| {
                let mut o = v.clone();
                res.strategy.storage_to_version(&mut o);
                o["apiVersion"] = json!(api_version);
                o["kind"] = json!(res.kind);
                o
            };
            let converted = (!same).then(|| convert(&ev.obj));
            let obj: &Value = converted.as_ref().unwrap_or(&ev.obj);
            let now_match = ls.matches(obj) && fs.matches(obj);
            let prev_match = ev.prev.as_ref().is_some_and(|p| {
                if same {
                    ls.matches(p) && fs.matches(p)
                } else {
                    let p = convert(p);
                    ls.matches(&p) && fs.matches(&p)
                }
            });
            let kind = match (ev.kind.clone(), prev_match, now_match) {
                (EventKind::Delete, true, _) => "DELETED",
                (EventKind::Delete, false, _) => continue,
                (EventKind::Put, false, true) => "ADDED",
                (EventKind::Put, true, true) => "MODIFIED",
                (EventKind::Put, true, false) => "DELETED",
                (EventKind::Put, false, false) => continue,
            };
            let bytes = if same {
                ev.frame(kind, fmt_id, || frame(kind, obj))
            } else {
                frame(kind, obj)
            };
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
    let ct = match format {
        Format::Protobuf => "application/vnd.kubernetes.protobuf;stream=watch",
        _ => "application/json",
    };
    Ok(Response::builder()
        .status(200)
        .header("content-type", ct)
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn watch_frames_and_lists_are_what_json_macro_gave() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "\"x\""}, "resourceVersion": "7"},
            "spec": {"containers": [{"name": "c"}]}});
        let mut want = serde_json::to_vec(&json!({"type": "ADDED", "object": obj})).unwrap();
        want.push(b'\n');
        assert_eq!(json_watch_frame("ADDED", &obj), want);
        let md = json!({"resourceVersion": "9"});
        assert_eq!(
            list_of("PodList".into(), "v1".into(), md.clone(), vec![obj.clone()]),
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": md, "items": [obj]})
        );
        assert_eq!(
            partial(obj.clone()),
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"]})
        );
    }

    /// The plain JSON list splices resourceVersion into the stored bytes: what it writes must be
    /// the bytes the decoding path would write, for every shape of object.
    #[test]
    fn spliced_list_items_are_the_decoded_objects_bytes() {
        let reg = Registry::builtin();
        let pod = reg.by_kind("", "Pod").unwrap();
        let kv = |value: Vec<u8>| KeyValue {
            key: "/registry/core/pods/ns/p".into(),
            value,
            create_revision: 5,
            mod_revision: 4_294_967_297,
        };
        let full = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "p", "namespace": "ns", "uid": "6f1c2a8e-0d3b-4c59-9a7e-000000000001",
                "resourceVersion": "3",
                "labels": {"app": "x", "z": "\"quoted\" \\ \u{e9} \u{2028} \u{1}"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"a\":[1,2.5,null]}\n"},
                "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]
            },
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["", "x y"]}],
                "priority": -3, "activeDeadlineSeconds": 10},
            "status": {"phase": "Pending"}
        });
        let bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}});
        for obj in [full, bare] {
            let kv = kv(encode_for(&pod, &obj));
            let fast = splice_resource_version(&pod.api_version(), &pod.kind, &kv, false)
                .expect("spliced");
            let slow = serde_json::to_vec(&decode_as(&pod, &kv).unwrap()).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap()
            );
            let fast =
                splice_resource_version(&pod.api_version(), &pod.kind, &kv, true).expect("spliced");
            let slow = serde_json::to_vec(&partial(decode_as(&pod, &kv).unwrap())).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap()
            );
        }
        // Stored as another version or kind, or not an object with metadata: the long way.
        for other in [
            json!({"apiVersion": "v2", "kind": "Pod", "metadata": {}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {}}),
            json!({"apiVersion": "v1", "kind": "Pod"}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": null}),
        ] {
            let kv = kv(serde_json::to_vec(&other).unwrap());
            assert!(
                splice_resource_version("v1", "Pod", &kv, false).is_none(),
                "{other}"
            );
        }
        // A key with an escape cannot be borrowed: the long way too.
        let kv = kv(br#"{"apiVersion":"v1","kind":"Pod","metadata":{"na\u006de":"p"}}"#.to_vec());
        assert!(splice_resource_version("v1", "Pod", &kv, true).is_none());
    }

    #[test]
    fn storage_encoding_drops_only_the_resource_version() {
        let reg = Registry::builtin();
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "d", "resourceVersion": "7", "uid": "u"},
            "data": {"k": "v\"\u{e9}"}});
        let cm = reg.by_kind("", "ConfigMap").unwrap();
        assert!(cm.strategy.stores_as_served());
        let mut want = obj.clone();
        want["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        assert_eq!(encode_for(&cm, &obj), serde_json::to_vec(&want).unwrap());
        // events.k8s.io/v1 Events are stored as core/v1 ones: converted on a copy.
        let ev = reg.by_kind("events.k8s.io", "Event").unwrap();
        assert!(!ev.strategy.stores_as_served());
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "resourceVersion": "3"}, "note": "hi"});
        let stored: Value = serde_json::from_slice(&encode_for(&ev, &e)).unwrap();
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["message"], "hi");
        assert!(stored["metadata"]["resourceVersion"].is_null());
        assert_eq!(e["metadata"]["resourceVersion"], "3");
    }
}
