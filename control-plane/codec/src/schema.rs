//! A compact, index-based view of the Kubernetes protobuf descriptors, built once.
//!
//! Every message of every loaded file gets an index; fields point at other messages by index, so
//! the converters never look anything up by name on the hot path.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// The FileDescriptorSet of the Kubernetes 1.33 API, extracted from the `k8s-rs-pb` crate by
/// `descriptors/extract.py`.
static DESCRIPTORS: &[u8] = include_bytes!("../descriptors/k8s-v1_33.fds");

/// JSON facts the descriptors lack, generated from the Go struct tags by `descriptors/fields.py`:
/// `omitempty MSG FIELD...`, `inline MSG FIELD`, `rename MSG FIELD JSON`.
static FIELDS: &str = include_str!("../descriptors/fields.txt");

/// The parsed `fields.txt`.
#[derive(Default)]
struct Facts<'a> {
    omitempty: HashSet<(&'a str, &'a str)>,
    inline: HashSet<(&'a str, &'a str)>,
    rename: HashMap<(&'a str, &'a str), &'a str>,
    /// Messages with an `omitempty` line, by package without version + name, for API versions
    /// the Go sources no longer carry (`api.resource.v1alpha3.X` uses `api.resource.*.X`).
    unversioned: HashMap<String, &'a str>,
    /// Messages that have an `omitempty` line.
    listed: HashSet<&'a str>,
}

/// `api.resource.v1beta1.Device` -> `api.resource.Device`.
fn unversioned(full: &str) -> String {
    let mut parts: Vec<&str> = full.split('.').collect();
    if parts.len() >= 2 {
        parts.remove(parts.len() - 2);
    }
    parts.join(".")
}

impl<'a> Facts<'a> {
    fn parse(text: &'a str) -> Self {
        let mut f = Facts::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["omitempty", msg, fields @ ..] => {
                    f.unversioned.entry(unversioned(msg)).or_insert(msg);
                    f.listed.insert(msg);
                    f.omitempty.extend(fields.iter().map(|x| (*msg, *x)));
                }
                ["inline", msg, field] => {
                    f.inline.insert((msg, field));
                }
                ["rename", msg, field, json] => {
                    f.rename.insert((msg, field), json);
                }
                _ => {}
            }
        }
        f
    }

    fn omit_zero(&self, msg: &str, field: &str) -> bool {
        if self.listed.contains(msg) {
            return self.omitempty.contains(&(msg, field));
        }
        self.unversioned
            .get(&unversioned(msg))
            .is_some_and(|other| self.omitempty.contains(&(*other, field)))
    }
}

/// Wire-level scalar type of a field (message fields carry the message index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Double,
    Float,
    Int64,
    Uint64,
    Int32,
    Uint32,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum,
    Message(usize),
}

impl Ty {
    /// Whether values of this type may appear in a packed repeated field.
    pub(crate) fn packable(self) -> bool {
        !matches!(self, Ty::String | Ty::Bytes | Ty::Message(_))
    }
}

/// How a field is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Card {
    Singular,
    Repeated,
    /// A `map<K, V>`: a repeated entry message whose fields 1 and 2 are key and value.
    Map {
        key: Ty,
        value: Ty,
    },
}

#[derive(Debug)]
pub(crate) struct Field {
    pub number: u32,
    /// JSON property name (usually the protobuf name).
    pub json: String,
    pub ty: Ty,
    pub card: Card,
    /// The field is a Go struct embedded with `json:",inline"`: its properties appear directly in
    /// the parent JSON object.
    pub inline: bool,
    /// A Go non-pointer `omitempty` field: a zero scalar (`""`, `0`, `false`) on the wire means
    /// "unset" and is left out of the JSON. Other fields keep their zeros.
    pub omit_zero: bool,
}

/// Messages whose JSON form is not an object of their fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Special {
    None,
    /// `meta/v1.Time`: RFC 3339, whole seconds, UTC.
    Time,
    /// `meta/v1.MicroTime`: RFC 3339 with microseconds, UTC.
    MicroTime,
    /// `meta/v1.Duration`: Go duration string.
    Duration,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `resource.Quantity` / `QuantityValue`: a string.
    Quantity,
    /// `runtime.RawExtension`: embedded JSON (or an embedded protobuf object).
    RawExtension,
    /// `meta/v1.FieldsV1`, apiextensions `JSON`: field 1 holds raw JSON bytes.
    RawJson,
    /// apiextensions `JSONSchemaPropsOrArray`.
    PropsOrArray,
    /// apiextensions `JSONSchemaPropsOrBool`.
    PropsOrBool,
    /// apiextensions `JSONSchemaPropsOrStringArray`.
    PropsOrStringArray,
    /// A named string slice (`ExtraValue`, `Verbs`): `repeated string items = 1` as a JSON array.
    StringList,
}

#[derive(Debug)]
pub(crate) struct Msg {
    pub full_name: String,
    pub special: Special,
    /// Fields sorted by number.
    pub fields: Vec<Field>,
    /// Field index by JSON name (non-inline fields only).
    pub by_json: HashMap<String, usize>,
}

impl Msg {
    pub(crate) fn field_by_number(&self, n: u32) -> Option<&Field> {
        self.fields
            .binary_search_by_key(&n, |f| f.number)
            .ok()
            .map(|i| &self.fields[i])
    }
}

pub(crate) struct Schema {
    pub msgs: Vec<Msg>,
    by_name: HashMap<String, usize>,
    /// (apiVersion, kind) -> message index.
    kinds: HashMap<(String, String), usize>,
    /// Kinds of `meta.k8s.io/v1` that upstream registers in every group version.
    meta_kinds: HashMap<String, usize>,
}

const META_V1: &str = "apimachinery.pkg.apis.meta.v1";
const APIEXT: [&str; 2] = [
    "apiextensions_apiserver.pkg.apis.apiextensions.v1",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1beta1",
];

/// Go structs embedded inline that keep a protobuf field of their own, by message short name:
/// a fallback for API versions the Go sources of `fields.txt` no longer carry.
const INLINE: &[(&str, &str)] = &[
    ("Volume", "volumeSource"),
    ("PersistentVolumeSpec", "persistentVolumeSource"),
    ("EphemeralContainer", "ephemeralContainerCommon"),
    ("IngressRule", "ingressRuleValue"),
    ("RuleWithOperations", "rule"),
    ("NamedRuleWithOperations", "ruleWithOperations"),
    ("DeviceClaimConfiguration", "deviceConfiguration"),
    ("DeviceClassConfiguration", "deviceConfiguration"),
    ("DeviceAllocationConfiguration", "deviceConfiguration"),
];

fn special_of(pkg: &str, name: &str, d: &DescriptorProto) -> Special {
    match (pkg, name) {
        (META_V1, "Time") => Special::Time,
        (META_V1, "MicroTime") => Special::MicroTime,
        (META_V1, "Duration") => Special::Duration,
        (META_V1, "FieldsV1") => Special::RawJson,
        ("apimachinery.pkg.util.intstr", "IntOrString") => Special::IntOrString,
        ("apimachinery.pkg.api.resource", "Quantity" | "QuantityValue") => Special::Quantity,
        ("apimachinery.pkg.runtime", "RawExtension") => Special::RawExtension,
        (p, "JSON") if APIEXT.contains(&p) => Special::RawJson,
        (p, "JSONSchemaPropsOrArray") if APIEXT.contains(&p) => Special::PropsOrArray,
        (p, "JSONSchemaPropsOrBool") if APIEXT.contains(&p) => Special::PropsOrBool,
        (p, "JSONSchemaPropsOrStringArray") if APIEXT.contains(&p) => Special::PropsOrStringArray,
        _ => {
            // Named string slices: a single `repeated string items = 1`.
            let f = &d.field;
            if f.len() == 1
                && f[0].name() == "items"
                && f[0].number() == 1
                && f[0].label() == Label::Repeated
                && f[0].r#type() == Type::String
            {
                Special::StringList
            } else {
                Special::None
            }
        }
    }
}

/// JSON name of a protobuf field (`msg` is the full message name).
fn json_name(facts: &Facts, msg: &str, field: &str) -> String {
    if let Some(j) = facts.rename.get(&(msg, field)) {
        return (*j).to_string();
    }
    // apiextensions: `xKubernetesPreserveUnknownFields` <-> `x-kubernetes-preserve-unknown-fields`.
    if let Some(rest) = field.strip_prefix("xKubernetes") {
        let mut s = String::from("x-kubernetes");
        for c in rest.chars() {
            if c.is_ascii_uppercase() {
                s.push('-');
                s.push(c.to_ascii_lowercase());
            } else {
                s.push(c);
            }
        }
        return s;
    }
    field.to_string()
}

/// API group of a protobuf package, and the version, e.g. `api.rbac.v1` ->
/// (`rbac.authorization.k8s.io`, `v1`).
fn group_version(pkg: &str) -> Option<(String, String)> {
    let pkg = pkg.strip_prefix("k8s.io.").unwrap_or(pkg);
    let (path, version) = pkg.rsplit_once('.')?;
    let group = if let Some(g) = path.strip_prefix("api.") {
        match g {
            "core" => "".to_string(),
            "apps" | "batch" | "autoscaling" | "policy" | "extensions" => g.to_string(),
            "rbac" => "rbac.authorization.k8s.io".to_string(),
            "flowcontrol" => "flowcontrol.apiserver.k8s.io".to_string(),
            "apiserverinternal" => "internal.apiserver.k8s.io".to_string(),
            g => format!("{g}.k8s.io"),
        }
    } else {
        match path {
            "apimachinery.pkg.apis.meta" => "meta.k8s.io".to_string(),
            "apiextensions_apiserver.pkg.apis.apiextensions" => "apiextensions.k8s.io".into(),
            "kube_aggregator.pkg.apis.apiregistration" => "apiregistration.k8s.io".into(),
            "metrics.pkg.apis.metrics" => "metrics.k8s.io".into(),
            "metrics.pkg.apis.custom_metrics" => "custom.metrics.k8s.io".into(),
            "metrics.pkg.apis.external_metrics" => "external.metrics.k8s.io".into(),
            _ => return None,
        }
    };
    Some((group, version.to_string()))
}

fn scalar(t: Type) -> Ty {
    match t {
        Type::Double => Ty::Double,
        Type::Float => Ty::Float,
        Type::Int64 => Ty::Int64,
        Type::Uint64 => Ty::Uint64,
        Type::Int32 => Ty::Int32,
        Type::Uint32 => Ty::Uint32,
        Type::Sint32 => Ty::Sint32,
        Type::Sint64 => Ty::Sint64,
        Type::Fixed32 => Ty::Fixed32,
        Type::Fixed64 => Ty::Fixed64,
        Type::Sfixed32 => Ty::Sfixed32,
        Type::Sfixed64 => Ty::Sfixed64,
        Type::Bool => Ty::Bool,
        Type::String => Ty::String,
        Type::Bytes => Ty::Bytes,
        Type::Enum => Ty::Enum,
        // Groups do not occur in the Kubernetes protos; messages are resolved by the caller.
        Type::Message | Type::Group => Ty::Bytes,
    }
}

impl Schema {
    pub(crate) fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            let set = FileDescriptorSet::decode(DESCRIPTORS).expect("embedded descriptors decode");
            Schema::build(&set.file)
        })
    }

    fn build(files: &[FileDescriptorProto]) -> Schema {
        // Pass 1: number every message (nested ones too, e.g. map entries).
        let mut all: Vec<(String, String, &DescriptorProto)> = Vec::new(); // (pkg, full, desc)
        fn walk<'a>(
            pkg: &str,
            prefix: &str,
            d: &'a DescriptorProto,
            out: &mut Vec<(String, String, &'a DescriptorProto)>,
        ) {
            let full = format!("{prefix}.{}", d.name());
            for n in &d.nested_type {
                walk(pkg, &full, n, out);
            }
            out.push((pkg.to_string(), full, d));
        }
        for f in files {
            for d in &f.message_type {
                walk(f.package(), f.package(), d, &mut all);
            }
        }
        let by_name: HashMap<String, usize> = all
            .iter()
            .enumerate()
            .map(|(i, (_, full, _))| (full.clone(), i))
            .collect();
        let resolve = |type_name: &str| -> usize {
            let n = type_name.trim_start_matches('.');
            *by_name
                .get(n)
                .unwrap_or_else(|| panic!("descriptor references unknown message {n}"))
        };
        let ty_of = |f: &FieldDescriptorProto| -> Ty {
            if f.r#type() == Type::Message {
                Ty::Message(resolve(f.type_name()))
            } else {
                scalar(f.r#type())
            }
        };

        let facts = Facts::parse(FIELDS);

        // Pass 2: fields.
        let mut msgs = Vec::with_capacity(all.len());
        for (pkg, full, d) in &all {
            let short = d.name();
            let mut fields = Vec::with_capacity(d.field.len());
            for f in &d.field {
                let mut ty = ty_of(f);
                let mut card = if f.label() == Label::Repeated {
                    Card::Repeated
                } else {
                    Card::Singular
                };
                if let (Card::Repeated, Ty::Message(mi)) = (card, ty) {
                    let (_, _, entry) = &all[mi];
                    if entry.options.as_ref().is_some_and(|o| o.map_entry()) {
                        let kf = entry.field.iter().find(|x| x.number() == 1);
                        let vf = entry.field.iter().find(|x| x.number() == 2);
                        if let (Some(kf), Some(vf)) = (kf, vf) {
                            card = Card::Map {
                                key: ty_of(kf),
                                value: ty_of(vf),
                            };
                            ty = Ty::Message(mi);
                        }
                    }
                }
                let name = f.name();
                fields.push(Field {
                    number: f.number() as u32,
                    json: json_name(&facts, full, name),
                    ty,
                    card,
                    inline: facts.inline.contains(&(full.as_str(), name))
                        || INLINE.iter().any(|(m, n)| *m == short && *n == name),
                    omit_zero: facts.omit_zero(full, name),
                });
            }
            fields.sort_by_key(|f| f.number);
            let by_json = fields
                .iter()
                .enumerate()
                .filter(|(_, f)| !f.inline)
                .map(|(i, f)| (f.json.clone(), i))
                .collect();
            msgs.push(Msg {
                full_name: full.clone(),
                special: special_of(pkg, short, d),
                fields,
                by_json,
            });
        }

        // Kinds: every top-level message of an API package, keyed by apiVersion and name.
        let mut kinds = HashMap::new();
        let mut meta_kinds = HashMap::new();
        for (i, (pkg, full, _)) in all.iter().enumerate() {
            let Some(kind) = full
                .strip_prefix(pkg.as_str())
                .and_then(|k| k.strip_prefix('.'))
            else {
                continue;
            };
            if kind.contains('.') {
                continue; // nested
            }
            let Some((group, version)) = group_version(pkg) else {
                continue;
            };
            let api_version = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            if pkg == META_V1 {
                meta_kinds.insert(kind.to_string(), i);
            }
            kinds.insert((api_version, kind.to_string()), i);
        }
        Schema {
            msgs,
            by_name,
            kinds,
            meta_kinds,
        }
    }

    /// Message index of a full protobuf name.
    pub(crate) fn message(&self, full_name: &str) -> Option<usize> {
        self.by_name.get(full_name).copied()
    }

    /// Message for an object's apiVersion and kind.
    pub(crate) fn kind(&self, api_version: &str, kind: &str) -> Option<usize> {
        if let Some(i) = self.kinds.get(&(api_version.to_string(), kind.to_string())) {
            return Some(*i);
        }
        // Types of meta.k8s.io/v1 that upstream adds to every group version (and `Status`, which
        // is served as `v1`).
        if matches!(
            kind,
            "Status"
                | "WatchEvent"
                | "DeleteOptions"
                | "ListOptions"
                | "GetOptions"
                | "CreateOptions"
                | "UpdateOptions"
                | "PatchOptions"
        ) {
            return self.meta_kinds.get(kind).copied();
        }
        // Discovery documents are served as `v1` (`/api`, `/apis`, `/api/v1`).
        if api_version == "v1"
            && matches!(
                kind,
                "APIVersions" | "APIGroupList" | "APIGroup" | "APIResourceList"
            )
        {
            return self.meta_kinds.get(kind).copied();
        }
        None
    }

    /// All (apiVersion, kind) pairs known whose JSON form is an object.
    pub(crate) fn kinds(&self) -> impl Iterator<Item = (&str, &str, usize)> {
        self.kinds
            .iter()
            .filter(|(_, i)| self.msgs[**i].special == Special::None)
            .map(|((a, k), i)| (a.as_str(), k.as_str(), *i))
    }
}
