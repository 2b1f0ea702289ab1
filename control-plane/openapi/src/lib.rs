//! OpenAPI documents for Skiff's API server, and strict field validation.
//!
//! The schemas of every built-in kind come from k8s-openapi (its `schemars` impls: descriptions,
//! `required`, formats, int-or-string), completed here with what those lack: the list kinds
//! (`PodList`...), `x-kubernetes-group-version-kind`, and the merge extensions
//! (`x-kubernetes-list-type`, `-list-map-keys`, `-map-type`, `-patch-merge-key`,
//! `-patch-strategy`) derived from k8s-openapi's DeepMerge strategies (`src/tables.rs`, made by
//! `tools/gen_tables.py`). Definition names and `$ref`s are upstream's
//! (`io.k8s.api.core.v1.Pod`, `#/components/schemas/...` in v3, `#/definitions/...` in v2).
//!
//! Serving:
//! - `GET /openapi/v3`: [`v3_index`]; `GET /openapi/v3/api/v1`, `/openapi/v3/apis/<g>/<v>`:
//!   [`v3_group_version`], or [`cached_v3_group_version`] for the serialized bytes.
//! - `GET /openapi/v2`: [`v2`] / [`cached_v2`] (JSON), and the protobuf form kubectl asks for
//!   (`Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`): [`Document::protobuf`].
//!
//! The caller describes what it serves with [`Resource`]s ([`builtin_resources`] lists every kind
//! k8s-openapi knows). CustomResourceDefinitions are added with [`register_crd`] (their
//! `openAPIV3Schema`s become definitions named like upstream's, `com.example.stable.v1.CronTab`),
//! removed with [`unregister_crd`]; [`crd_schemas`] is the pure conversion.
//!
//! Validation (`fieldValidation=Strict|Warn`): [`unknown_fields`] walks an object against its
//! kind's schema; [`duplicate_fields`] scans the request body.
//!
//! ```no_run
//! let served = skiff_openapi::builtin_resources(); // or the API server's own table
//! // GET /openapi/v3/apis/apps/v1: send doc.gzip() with `Content-Encoding: gzip`, or doc.json().
//! let doc = skiff_openapi::cached_v3_group_version("apps", "v1", &served).expect("served");
//! // POST ...?fieldValidation=Strict
//! let body = br#"{"apiVersion":"apps/v1","kind":"Deployment","spec":{"replicas":1,"replicas":2}}"#;
//! let obj: serde_json::Value = serde_json::from_slice(body).expect("json");
//! let mut problems = skiff_openapi::duplicate_fields(body);
//! problems.extend(skiff_openapi::unknown_fields("apps", "v1", "Deployment", &obj));
//! // Strict: 400 "Deployment in version \"v1\" cannot be handled as a Deployment: strict
//! // decoding error: " + problems.join(", "); Warn: one `Warning: 299 - "<problem>"` each.
//! ```
//!
//! Memory: nothing is kept but the compressed bytes of the documents served so far (about
//! 1.1 MB for all 35 built-in v3 documents plus v2 in JSON and protobuf) and the compact field
//! tree [`unknown_fields`] walks (0.2 MB, built on first use). The cached documents are written a
//! resource's paths and a kind's definitions at a time straight into gzip, never whole as a JSON
//! tree, so a first `/openapi/v2` peaks at ~10 MiB RSS in a bare process (see
//! `examples/memory.rs`).
//!
//! The list/merge extensions come from `src/tables.rs`, generated from k8s-openapi's sources by
//! `tools/gen_tables.py` (rerun it when k8s-openapi is bumped).

#[macro_use]
mod tables;
mod crd;
mod docs;
mod model;
mod proto;
mod stream;
mod validate;

pub use crd::{crd_schemas, CrdSchema};
pub use validate::{duplicate_fields, tree_heap_bytes, unknown_fields};

use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CustomResourceDefinition lacks a field the documents need.
    #[error("invalid CustomResourceDefinition: {0}")]
    InvalidCrd(String),
}

/// One resource the API server serves, as the documents' paths describe it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    /// API group, `""` for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Lower-case plural, the URL segment (`pods`).
    pub plural: String,
    pub namespaced: bool,
    /// Kubernetes verbs served: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`.
    pub verbs: Vec<String>,
    /// Subresources served (`status`, `scale` get paths; others are not described).
    pub subresources: Vec<String>,
}

impl Resource {
    /// A resource with every read/write verb.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Resource {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            verbs: ALL_VERBS.iter().map(|v| v.to_string()).collect(),
            subresources: Vec::new(),
        }
    }
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Every namespaced or cluster-scoped kind of k8s-openapi (v1.33), with all verbs for listable
/// kinds and `create` alone for the others (reviews, bindings). No subresources.
pub fn builtin_resources() -> Vec<Resource> {
    model::kinds()
        .into_iter()
        .filter(|k| k.scope != model::Scope::Subresource && !k.definition.starts_with(model::META))
        .map(|k| {
            let mut r = Resource::new(
                k.group,
                k.version,
                k.kind,
                k.plural,
                k.scope == model::Scope::Namespaced,
            );
            if k.list.is_none() {
                r.verbs = vec!["create".into()];
            }
            r
        })
        .collect()
}

fn crds() -> &'static RwLock<BTreeMap<String, Vec<CrdSchema>>> {
    static CRDS: OnceLock<RwLock<BTreeMap<String, Vec<CrdSchema>>>> = OnceLock::new();
    CRDS.get_or_init(Default::default)
}

/// Adds (or replaces) a CustomResourceDefinition's served versions in the documents and in
/// [`unknown_fields`]. Keyed by the CRD's `metadata.name`.
pub fn register_crd(crd: &Value) -> Result<(), Error> {
    let name = crd["metadata"]["name"]
        .as_str()
        .ok_or_else(|| Error::InvalidCrd("no metadata.name".into()))?
        .to_string();
    let schemas = crd_schemas(crd)?;
    crds()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name, schemas);
    Ok(())
}

/// Removes what [`register_crd`] added for the CRD named `name`.
pub fn unregister_crd(name: &str) {
    crds()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name);
}

fn with_crds<R>(f: impl FnOnce(&BTreeMap<String, Vec<CrdSchema>>) -> R) -> R {
    f(&crds().read().unwrap_or_else(|e| e.into_inner()))
}

/// The registered CRD versions of `group`/`version` (all when `None`).
fn crd_versions(gv: Option<(&str, &str)>) -> Vec<CrdSchema> {
    with_crds(|m| {
        m.values()
            .flatten()
            .filter(|c| gv.is_none_or(|(g, v)| c.resource.group == g && c.resource.version == v))
            .cloned()
            .collect()
    })
}

/// Definition name of a kind among the built-ins and `crds`.
pub(crate) fn definition_of(
    kinds: &[model::KindInfo],
    crds: &[CrdSchema],
    group: &str,
    version: &str,
    kind: &str,
) -> Option<String> {
    kinds
        .iter()
        .find(|k| k.group == group && k.version == version && k.kind == kind)
        .map(|k| k.definition.clone())
        .or_else(|| {
            crds.iter()
                .find(|c| {
                    c.resource.group == group
                        && c.resource.version == version
                        && c.resource.kind == kind
                })
                .map(|c| c.definition.clone())
        })
}

/// The kinds whose definitions a group-version document carries: those of its resources, and
/// `Scale` when a resource has that subresource.
fn pick<'a>(resources: &'a [&'a Resource]) -> impl Fn(&model::KindInfo) -> bool + 'a {
    move |k| {
        resources.iter().any(|r| {
            (r.group == k.group && r.version == k.version && r.kind == k.kind)
                || (k.group == "autoscaling"
                    && k.version == "v1"
                    && k.kind == "Scale"
                    && r.subresources.iter().any(|s| s == "scale"))
        })
    }
}

/// Definitions plus paths for `resources` (swagger 2.0 form); `only_referenced`: the
/// definitions of the kinds served (per group-version documents) instead of all.
fn build(
    resources: &[&Resource],
    crds: &[CrdSchema],
    only_referenced: bool,
) -> (Map<String, Value>, Map<String, Value>) {
    let (mut defs, kinds) = if only_referenced {
        model::definitions_for(pick(resources))
    } else {
        model::definitions()
    };
    for c in crds {
        let mut s = c.schema.clone();
        // v3 documents keep the CRD's own form (nullable, anyOf...); see `to_v2`.
        if !only_referenced {
            model::to_v2(&mut s);
        }
        defs.insert(c.definition.clone(), s);
        defs.insert(format!("{}List", c.definition), c.list_schema());
    }
    let def_of = |g: &str, v: &str, k: &str| definition_of(&kinds, crds, g, v, k);
    let mut paths = Map::new();
    for r in resources {
        docs::resource_paths(r, &def_of, &mut paths);
    }
    (defs, paths)
}

pub(crate) const INFO_VERSION: &str = concat!("v1.33.0+skiff-", env!("CARGO_PKG_VERSION"));

/// `GET /openapi/v3`: one entry per group-version of `resources` (and of the registered CRDs),
/// each with a `serverRelativeURL` carrying a hash of the document's inputs, as upstream.
pub fn v3_index(resources: &[Resource]) -> Value {
    let mut gvs: Vec<(String, String)> = resources
        .iter()
        .map(|r| (r.group.clone(), r.version.clone()))
        .chain(
            crd_versions(None)
                .into_iter()
                .map(|c| (c.resource.group, c.resource.version)),
        )
        .collect();
    gvs.sort();
    gvs.dedup();
    let mut paths = Map::new();
    for (g, v) in gvs {
        let p = docs::gv_path(&g, &v);
        let hash = gv_hash(&g, &v, resources);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash:016X}")}),
        );
    }
    json!({"paths": paths})
}

fn served<'a>(
    group: &str,
    version: &str,
    resources: &'a [Resource],
    crds: &'a [CrdSchema],
) -> Vec<&'a Resource> {
    let mut out: Vec<&Resource> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    for c in crds {
        if !out.iter().any(|r| r.kind == c.resource.kind) {
            out.push(&c.resource);
        }
    }
    out
}

/// FNV-1a of everything a group-version document is made of.
fn gv_hash(group: &str, version: &str, resources: &[Resource]) -> u64 {
    let crds = crd_versions(Some((group, version)));
    let mut h = Fnv::default();
    h.write(INFO_VERSION.as_bytes());
    h.write(group.as_bytes());
    h.write(version.as_bytes());
    for r in served(group, version, resources, &crds) {
        h.write(format!("{r:?}").as_bytes());
    }
    for c in &crds {
        h.write(c.schema.to_string().as_bytes());
    }
    h.0
}

struct Fnv(u64);
impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}
impl Fnv {
    fn write(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x100_0000_01b3);
    }
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`: paths for the resources of
/// that group-version (and its registered CRDs), and the schemas they reach. `None` when nothing
/// of that group-version is served.
pub fn v3_group_version(group: &str, version: &str, resources: &[Resource]) -> Option<Value> {
    let crds = crd_versions(Some((group, version)));
    let rs = served(group, version, resources, &crds);
    if rs.is_empty() {
        return None;
    }
    let (mut defs, mut paths) = build(&rs, &crds, true);
    defs.values_mut().for_each(model::to_v3);
    model::v3_scalars(&mut defs);
    paths.values_mut().for_each(docs::path_to_v3);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": INFO_VERSION},
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}}},
        "security": [{"BearerToken": []}]
    }))
}

/// `GET /openapi/v2`: the swagger 2.0 document with every definition (built-in and registered
/// CRDs) and the paths of `resources`.
pub fn v2(resources: &[Resource]) -> Value {
    let crds = crd_versions(None);
    let rs = v2_resources(resources, &crds);
    let (defs, paths) = build(&rs, &crds, false);
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": INFO_VERSION},
        "paths": paths,
        "definitions": defs,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}},
        "security": [{"BearerToken": []}]
    })
}

fn v2_resources<'a>(resources: &'a [Resource], crds: &'a [CrdSchema]) -> Vec<&'a Resource> {
    let mut rs: Vec<&Resource> = resources.iter().collect();
    for c in crds {
        if !rs.iter().any(|r| {
            r.group == c.resource.group
                && r.version == c.resource.version
                && r.kind == c.resource.kind
        }) {
            rs.push(&c.resource);
        }
    }
    rs
}

/// A serialized document, kept gzip-compressed.
#[derive(Debug)]
pub struct Document {
    /// Hash of the document's inputs, for `ETag` / the v3 index's `?hash=`.
    pub hash: u64,
    gzip: Vec<u8>,
    json_len: usize,
    protobuf_gzip: Option<Vec<u8>>,
}

impl Document {
    fn new(hash: u64, v: &Value, protobuf: bool) -> Document {
        // Serialized straight into the compressor: the JSON text is never whole in memory.
        let mut w = stream::Counting(0, GzEncoder::new(Vec::new(), Compression::new(6)));
        let _ = serde_json::to_writer(&mut w, v);
        let mut gzip = w.1.finish().unwrap_or_default();
        gzip.shrink_to_fit();
        Document {
            hash,
            gzip,
            json_len: w.0,
            protobuf_gzip: protobuf.then(|| self::gzip(&proto::encode_document(v))),
        }
    }
    /// The JSON, gzip-compressed (serve as is with `Content-Encoding: gzip`).
    pub fn gzip(&self) -> &[u8] {
        &self.gzip
    }
    /// The JSON.
    pub fn json(&self) -> Vec<u8> {
        gunzip(&self.gzip, self.json_len)
    }
    /// Length of the uncompressed JSON.
    pub fn json_len(&self) -> usize {
        self.json_len
    }
    /// The gnostic `openapi_v2.Document` protobuf (v2 documents only), what client-go's
    /// `OpenAPISchema()` asks for.
    pub fn protobuf(&self) -> Option<Vec<u8>> {
        self.protobuf_gzip.as_ref().map(|g| gunzip(g, 0))
    }
    /// Memory held by this document (compressed forms).
    pub fn heap_bytes(&self) -> usize {
        self.gzip.capacity() + self.protobuf_gzip.as_ref().map_or(0, Vec::capacity)
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::new(6));
    let _ = e.write_all(b);
    let mut out = e.finish().unwrap_or_default();
    out.shrink_to_fit();
    out
}

fn gunzip(b: &[u8], hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(hint);
    let _ = GzDecoder::new(b).read_to_end(&mut out);
    out
}

type Cache = Mutex<HashMap<String, Arc<Document>>>;
fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn cached(
    key: String,
    hash: u64,
    make: impl FnOnce() -> Option<Arc<Document>>,
) -> Option<Arc<Document>> {
    if let Some(d) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        if d.hash == hash {
            return Some(d.clone());
        }
    }
    let d = make()?;
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, d.clone());
    Some(d)
}

/// [`v3_group_version`], serialized and compressed once per set of inputs.
pub fn cached_v3_group_version(
    group: &str,
    version: &str,
    resources: &[Resource],
) -> Option<Arc<Document>> {
    let hash = gv_hash(group, version, resources);
    cached(format!("v3/{group}/{version}"), hash, || {
        let crds = crd_versions(Some((group, version)));
        let rs = served(group, version, resources, &crds);
        if rs.is_empty() {
            return None;
        }
        let only = pick(&rs);
        let doc = stream::document(hash, true, &rs, &crds, &only);
        Some(Arc::new(doc))
    })
}

/// [`v2`], serialized (JSON and protobuf) and compressed once per set of inputs.
pub fn cached_v2(resources: &[Resource]) -> Arc<Document> {
    let mut h = Fnv::default();
    h.write(INFO_VERSION.as_bytes());
    h.write(format!("{resources:?}").as_bytes());
    for c in crd_versions(None) {
        h.write(c.schema.to_string().as_bytes());
    }
    let hash = h.0;
    cached("v2".into(), hash, || {
        let crds = crd_versions(None);
        let rs = v2_resources(resources, &crds);
        Some(Arc::new(stream::document(hash, false, &rs, &crds, &|_| {
            true
        })))
    })
    .unwrap_or_else(|| Arc::new(Document::new(hash, &Value::Null, false)))
}

/// Bytes held by the cached documents (compressed), for memory accounting.
pub fn cache_heap_bytes() -> usize {
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|d| d.heap_bytes())
        .sum()
}

/// Drops the cached documents.
pub fn clear_cache() {
    cache().lock().unwrap_or_else(|e| e.into_inner()).clear();
}
