//! The definitions of every built-in kind, derived from k8s-openapi's `schemars` impls and
//! completed with what those lack (list kinds, group-version-kind, list/map merge extensions).
//!
//! The canonical form kept here is swagger 2.0's: `$ref`s point at `#/definitions/<name>` and may
//! carry a `description` beside them. [`to_v3`] rewrites a schema to OpenAPI 3.0's form.

use crate::tables::{ATOMIC_MAPS, LIST_STRATEGIES};
use k8s_openapi::schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use k8s_openapi::{ListableResource, NamespaceResourceScope, Resource, SubResourceScope};
use serde_json::{json, Map, Value};
use std::any::TypeId;

pub(crate) const V2_REF: &str = "#/definitions/";
pub(crate) const V3_REF: &str = "#/components/schemas/";
pub(crate) const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

/// Scope of a built-in kind, as k8s-openapi types it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Namespaced,
    Cluster,
    Subresource,
}

/// One type implementing `k8s_openapi::Resource`.
#[derive(Clone, Debug)]
pub(crate) struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub scope: Scope,
    pub definition: String,
    /// `(kind, definition)` of the list kind, when the kind is listable.
    pub list: Option<(&'static str, String)>,
    /// Adds the kind's schema (and those it refers to) to a generator.
    pub generate: fn(&mut SchemaGenerator),
}

fn generate<T: JsonSchema>(gen: &mut SchemaGenerator) {
    gen.subschema_for::<T>();
}

fn info<T: Resource + JsonSchema>(list_kind: Option<&'static str>) -> KindInfo
where
    T::Scope: 'static,
{
    let scope = if TypeId::of::<T::Scope>() == TypeId::of::<NamespaceResourceScope>() {
        Scope::Namespaced
    } else if TypeId::of::<T::Scope>() == TypeId::of::<SubResourceScope>() {
        Scope::Subresource
    } else {
        Scope::Cluster
    };
    let definition = T::schema_name().into_owned();
    KindInfo {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        plural: T::URL_PATH_SEGMENT,
        scope,
        list: list_kind.map(|k| (k, format!("{definition}List"))),
        definition,
        generate: generate::<T>,
    }
}

fn list_kind<T: ListableResource>() -> Option<&'static str> {
    Some(T::LIST_KIND)
}

macro_rules! list_kind_of {
    ($p:path, true) => {
        list_kind::<$p>()
    };
    ($p:path, false) => {
        None
    };
}

macro_rules! collect_kinds {
    ($($p:path => $l:tt,)*) => {
        fn collect_infos() -> Vec<KindInfo> {
            vec![$(info::<$p>(list_kind_of!($p, $l)),)*]
        }
    };
}

for_each_kind!(collect_kinds);

/// The built-in kinds, without their schemas (cheap: no schema generation).
pub(crate) fn kinds() -> Vec<KindInfo> {
    collect_infos()
}

/// All definitions (swagger 2.0 form) and the kinds.
pub(crate) fn definitions() -> (Map<String, Value>, Vec<KindInfo>) {
    definitions_for(|_| true)
}

/// The definitions of the kinds `pick` selects (their list kinds included), of what they refer
/// to, and of the options, status and events every group-version uses (swagger 2.0 form), with
/// all the kinds. Generating only what a document needs keeps the peak memory down.
pub(crate) fn definitions_for(
    pick: impl Fn(&KindInfo) -> bool,
) -> (Map<String, Value>, Vec<KindInfo>) {
    let settings = SchemaSettings::draft07().with(|s| {
        s.definitions_path = "/definitions".into();
        s.meta_schema = None;
        s.transforms = Vec::new();
    });
    let mut gen = settings.into_generator();
    let kinds = collect_infos();
    for k in kinds.iter().filter(|k| pick(k)) {
        (k.generate)(&mut gen);
    }
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent<()>>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Patch>();
    let mut defs = gen.take_definitions(false);
    // `WatchEvent<T>` is generic in k8s-openapi; upstream's definition has a raw `object`.
    if let Some((name, _)) = defs
        .iter()
        .find(|(k, _)| k.starts_with(&format!("{META}WatchEvent")))
        .map(|(k, v)| (k.clone(), v.clone()))
    {
        defs.remove(&name);
    }
    defs.insert(format!("{META}WatchEvent"), watch_event());
    defs.insert(
        format!("{META}Patch"),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
    );
    fixups(&mut defs);
    for k in kinds.iter().filter(|k| pick(k)) {
        if let Some((list_kind, list_def)) = &k.list {
            defs.insert(list_def.clone(), list_schema(k, list_kind));
        }
    }
    merge_extensions(&mut defs);
    group_version_kinds(&mut defs, &kinds);
    (defs, kinds)
}

fn watch_event() -> Value {
    json!({
        "description": "Event represents a single event to a watched resource.",
        "type": "object",
        "properties": {
            "object": {
                "$ref": format!("{V2_REF}io.k8s.apimachinery.pkg.runtime.RawExtension"),
                "description": "Object is: * If Type is Added or Modified: the new state of the object. * If Type is Deleted: the state of the object immediately before deletion. * If Type is Error: *Status is recommended; other types may make sense depending on context."
            },
            "type": {"type": "string"}
        },
        "required": ["type", "object"]
    })
}

fn list_schema(k: &KindInfo, list_kind: &str) -> Value {
    json!({
        "description": format!("{list_kind} is a list of {} objects.", k.kind),
        "type": "object",
        "properties": {
            "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources", "type": "string"},
            "items": {"description": format!("List of {}.", k.plural), "type": "array", "items": {"$ref": format!("{V2_REF}{}", k.definition)}},
            "kind": {"description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds", "type": "string"},
            "metadata": {"$ref": format!("{V2_REF}{META}ListMeta"), "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}
        },
        "required": ["items"]
    })
}

/// Types whose k8s-openapi schema differs from what clients expect on the wire.
fn fixups(defs: &mut Map<String, Value>) {
    // k8s-openapi types hold a non-optional ObjectMeta; upstream's schemas never require
    // `metadata` (reviews and generated objects are sent without it).
    for d in defs.values_mut() {
        if let Some(req) = d.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|r| r != "metadata");
            if req.is_empty() {
                d.as_object_mut().map(|o| o.remove("required"));
            }
        }
    }
    if let Some(Value::Object(s)) = defs.get_mut("io.k8s.apimachinery.pkg.util.intstr.IntOrString")
    {
        s.insert("type".into(), "string".into());
        s.insert("format".into(), "int-or-string".into());
    }
    if let Some(Value::Object(s)) = defs.get_mut("io.k8s.apimachinery.pkg.api.resource.Quantity") {
        s.insert("type".into(), "string".into());
        s.remove("x-kubernetes-int-or-string");
    }
    // Any JSON value (a CRD's `default`, `example`, `enum` items).
    if let Some(Value::Object(s)) =
        defs.get_mut("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON")
    {
        s.remove("type");
        s.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
    }
}

/// Well-known lists keyed by more than their strategic-merge key, and lists patched with
/// `retainKeys` (neither can be read from k8s-openapi's DeepMerge impls).
const LIST_MAP_KEYS: &[(&str, &str, &[&str])] = &[
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        &["containerPort", "protocol"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        &["containerPort", "protocol"],
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        &["port", "protocol"],
    ),
];
const PATCH_STRATEGY: &[(&str, &str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "volumes", "merge,retainKeys"),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        "retainKeys",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "merge",
    ),
];

fn prop<'a>(
    defs: &'a mut Map<String, Value>,
    def: &str,
    prop: &str,
) -> Option<&'a mut Map<String, Value>> {
    defs.get_mut(def)?
        .get_mut("properties")?
        .get_mut(prop)?
        .as_object_mut()
}

/// `x-kubernetes-list-type`, `-list-map-keys`, `-map-type`, `-patch-merge-key` and
/// `-patch-strategy` from k8s-openapi's merge strategies (see tools/gen_tables.py).
fn merge_extensions(defs: &mut Map<String, Value>) {
    for (def, name, strategy, keys) in LIST_STRATEGIES {
        let Some(p) = prop(defs, def, name) else {
            continue;
        };
        match *strategy {
            "map" if !keys.is_empty() => {
                let map_keys = LIST_MAP_KEYS
                    .iter()
                    .find(|(d, n, _)| d == def && n == name)
                    .map_or(*keys, |(_, _, k)| k);
                p.insert("x-kubernetes-list-type".into(), "map".into());
                p.insert("x-kubernetes-list-map-keys".into(), json!(map_keys));
                p.insert("x-kubernetes-patch-merge-key".into(), keys[0].into());
                p.insert("x-kubernetes-patch-strategy".into(), "merge".into());
            }
            "set" => {
                p.insert("x-kubernetes-list-type".into(), "set".into());
            }
            _ => {}
        }
    }
    for (def, name) in ATOMIC_MAPS {
        if let Some(p) = prop(defs, def, name) {
            p.insert("x-kubernetes-map-type".into(), "atomic".into());
        }
    }
    for (def, name, strategy) in PATCH_STRATEGY {
        if let Some(p) = prop(defs, def, name) {
            p.insert("x-kubernetes-patch-strategy".into(), (*strategy).into());
        }
    }
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "kind": kind, "version": version})
}

fn group_version_kinds(defs: &mut Map<String, Value>, kinds: &[KindInfo]) {
    let mut add = |def: &str, v: Value| {
        if let Some(Value::Object(s)) = defs.get_mut(def) {
            let e = s
                .entry("x-kubernetes-group-version-kind")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = e {
                if !a.contains(&v) {
                    a.push(v);
                }
            }
        }
    };
    let mut gvs: Vec<(&str, &str)> = Vec::new();
    for k in kinds {
        add(&k.definition, gvk(k.group, k.version, k.kind));
        if let Some((lk, ld)) = &k.list {
            add(ld, gvk(k.group, k.version, lk));
        }
        if !k.definition.starts_with(META) && !gvs.contains(&(k.group, k.version)) {
            gvs.push((k.group, k.version));
        }
    }
    // The options and events every group-version serves, as upstream tags them.
    gvs.sort();
    for (g, v) in gvs {
        add(&format!("{META}DeleteOptions"), gvk(g, v, "DeleteOptions"));
        add(&format!("{META}WatchEvent"), gvk(g, v, "WatchEvent"));
    }
}

/// Swagger 2.0 schema to OpenAPI 3.0: `$ref`s to `#/components/schemas/`, and a `$ref` with
/// siblings (a description) wrapped in `allOf` as kube-apiserver does.
pub(crate) fn to_v3(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(V2_REF) {
                    *r = format!("{V3_REF}{name}");
                }
                if m.len() > 1 {
                    let r = m.remove("$ref").unwrap_or(Value::Null);
                    m.insert("allOf".into(), json!([{"$ref": r}]));
                }
            }
            subschemas(m, to_v3);
        }
        Value::Array(a) => a.iter_mut().for_each(to_v3),
        _ => {}
    }
}

/// Applies `f` to the schemas nested in schema `m` (not to `enum`, `default`, extensions...).
pub(crate) fn subschemas(m: &mut Map<String, Value>, f: fn(&mut Value)) {
    for (k, v) in m.iter_mut() {
        match (k.as_str(), v) {
            ("properties" | "patternProperties" | "definitions", Value::Object(props)) => {
                props.values_mut().for_each(f)
            }
            ("additionalProperties" | "items" | "not" | "allOf" | "anyOf" | "oneOf", v) => f(v),
            _ => {}
        }
    }
}

/// The v3 forms of the two union scalars: kube-apiserver's v3 documents give them `oneOf` types
/// (and no `type`), which is also what makes kubectl name them `IntOrString` / `Quantity`.
pub(crate) fn v3_scalars(defs: &mut Map<String, Value>) {
    for (name, types) in [
        (
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
            ["integer", "string"],
        ),
        (
            "io.k8s.apimachinery.pkg.api.resource.Quantity",
            ["string", "number"],
        ),
    ] {
        if let Some(Value::Object(s)) = defs.get_mut(name) {
            s.remove("type");
            s.insert(
                "oneOf".into(),
                json!([{"type": types[0]}, {"type": types[1]}]),
            );
            s.insert("x-kubernetes-int-or-string".into(), true.into());
        }
    }
}

/// OpenAPI 3.0 (as a CRD's `openAPIV3Schema`) back to swagger 2.0: `allOf` of a single `$ref`
/// becomes the `$ref`, and the keywords swagger 2.0 lacks are dropped (`nullable`,
/// `anyOf`/`oneOf`/`not`), as kube-apiserver does for its v2 document.
pub(crate) fn to_v2(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(all)) = m.get("allOf") {
                if all.len() == 1 && all[0].get("$ref").is_some() {
                    let r = all[0]["$ref"].clone();
                    m.remove("allOf");
                    m.insert("$ref".into(), r);
                }
            }
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(V3_REF) {
                    *r = format!("{V2_REF}{name}");
                }
            }
            for k in ["nullable", "anyOf", "oneOf", "not"] {
                m.remove(k);
            }
            subschemas(m, to_v2);
        }
        Value::Array(a) => a.iter_mut().for_each(to_v2),
        _ => {}
    }
}
