//! Conversion between the Kubernetes protobuf wire format
//! (`application/vnd.kubernetes.protobuf`) and Kubernetes JSON (`serde_json::Value`), for every
//! built-in kind.
//!
//! # How
//!
//! The message definitions are the descriptors embedded in the `k8s-rs-pb` crate (Kubernetes 1.33
//! API: core, all `k8s.io/api` groups, `meta.k8s.io`, apiextensions, apiregistration, metrics).
//! They are flattened once into an index-based schema and a generic converter walks the
//! protobuf wire format against it: no per-kind code. A short table of special messages gives
//! their JSON forms:
//!
//! | message | JSON |
//! | --- | --- |
//! | `meta/v1.Time` | RFC 3339, whole seconds, UTC (`"2024-01-02T03:04:05Z"`); Go's zero time is `null` |
//! | `meta/v1.MicroTime` | RFC 3339 with 6 fraction digits, UTC |
//! | `meta/v1.Duration` | Go duration string (`"1h0m0s"`) |
//! | `intstr.IntOrString` | number or string |
//! | `resource.Quantity` | string (as sent; not canonicalised) |
//! | `runtime.RawExtension` | the embedded JSON; embedded protobuf (`k8s\0…`) is decoded too |
//! | `meta/v1.FieldsV1`, apiextensions `JSON` | the embedded JSON |
//! | `JSONSchemaPropsOrArray` / `OrBool` / `OrStringArray` | schema or array / schema or bool / schema or string array |
//! | `ExtraValue`, `Verbs` (named string slices) | array of strings |
//! | `bytes` fields (`Secret.data`, `ConfigMap.binaryData`, `caBundle`) | standard base64 |
//!
//! # JSON facts from the Go types
//!
//! What the descriptors do not carry comes from `descriptors/fields.txt`, generated from the Go
//! struct tags of the API types by `descriptors/fields.py`:
//! - structs embedded inline that keep a protobuf field (`Volume.volumeSource`,
//!   `PersistentVolumeSpec.persistentVolumeSource`, `*.localObjectReference`, `Probe.handler`,
//!   `IngressRule.ingressRuleValue`, …) are flattened into their parent object;
//! - protobuf names that are not the JSON names are mapped (`uID` -> `uid`, `ref` -> `$ref`,
//!   `xKubernetesListType` -> `x-kubernetes-list-type`, …);
//! - zero values: Go's protobuf marshaller writes every non-pointer field, set or not, while its
//!   JSON marshaller omits the zero of `omitempty` fields and keeps pointer zeros. Decoding drops
//!   the zero scalars (`""`, `0`, `false`) of the non-pointer `omitempty` fields listed there and
//!   keeps every other field that is on the wire (`replicas: 0`, `runAsUser: 0`, `ready: false`);
//!   present messages are kept even when empty (`spec: {}`, `resources: {}`), as Go's JSON does;
//!   empty lists and maps are absent. Encoding writes exactly what the JSON holds; absent
//!   properties are absent on the wire, which Go reads as zero values.
//!
//! For kubectl's protobuf bodies the result is exactly what `kubectl create … --dry-run=client
//! -o json` prints for the same command (see `tests/golden.rs`).
//!
//! # Watch streams
//!
//! Upstream frames a protobuf watch (`application/vnd.kubernetes.protobuf;stream=watch`) as a
//! 4-byte big-endian length followed by a `meta/v1.WatchEvent` encoded *without* the `k8s\0`
//! envelope (the stream serializer is the raw one); the event's `object.raw` holds the object
//! encoded *with* the envelope. [`encode_watch_event`] and [`decode_watch_event`] do exactly that.
//!
//! Custom resources have no protobuf form (upstream serves them as JSON only): [`encode`] and
//! [`decode`] return [`CodecError::UnknownKind`] for them, which the API server turns into 406/415.

#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
mod schema;
mod time;
mod wire;

pub use error::CodecError;
use error::Path;
use schema::Schema;
use serde_json::Value;
use wire::{put_bytes, put_nested, Raw, Reader};

/// The media type of the Kubernetes protobuf encoding.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The media type of a protobuf watch stream.
pub const WATCH_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf;stream=watch";
/// The four bytes every enveloped protobuf object starts with.
pub const MAGIC: [u8; 4] = *b"k8s\0";

/// Whether `body` starts with the Kubernetes protobuf magic.
pub fn is_protobuf(body: &[u8]) -> bool {
    body.starts_with(&MAGIC)
}

/// Whether a protobuf form exists for this apiVersion and kind.
pub fn supports(api_version: &str, kind: &str) -> bool {
    Schema::get().kind(api_version, kind).is_some()
}

/// The `runtime.Unknown` envelope, read.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

fn wire_error(what: &str, reason: &str) -> CodecError {
    CodecError::Wire {
        path: "$".into(),
        message: what.into(),
        reason: reason.into(),
    }
}

fn string_of(b: &[u8], what: &str) -> Result<String, CodecError> {
    String::from_utf8(b.to_vec()).map_err(|_| wire_error(what, "string is not UTF-8"))
}

impl<'a> Envelope<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, CodecError> {
        const UNKNOWN: &str = "runtime.Unknown";
        const TYPE_META: &str = "runtime.TypeMeta";
        let mut env = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let mut r = Reader::new(buf);
        while let Some((n, v)) = r.next().map_err(|e| wire_error(UNKNOWN, e))? {
            match (n, v) {
                (1, Raw::Len(tm)) => {
                    let mut t = Reader::new(tm);
                    while let Some((n, v)) = t.next().map_err(|e| wire_error(TYPE_META, e))? {
                        match (n, v) {
                            (1, Raw::Len(b)) => env.api_version = string_of(b, TYPE_META)?,
                            (2, Raw::Len(b)) => env.kind = string_of(b, TYPE_META)?,
                            _ => {}
                        }
                    }
                }
                (2, Raw::Len(b)) => env.raw = b,
                (3, Raw::Len(b)) => env.content_encoding = string_of(b, UNKNOWN)?,
                (4, Raw::Len(b)) => env.content_type = string_of(b, UNKNOWN)?,
                _ => {}
            }
        }
        Ok(env)
    }
}

/// Decodes an enveloped protobuf object (`k8s\0` + `runtime.Unknown`) into the JSON upstream
/// would serve for it, with `apiVersion` and `kind` set.
pub fn decode(body: &[u8]) -> Result<Value, CodecError> {
    let rest = body.strip_prefix(&MAGIC).ok_or(CodecError::MissingMagic)?;
    let env = Envelope::parse(rest)?;
    if !env.content_encoding.is_empty() {
        return Err(CodecError::Unsupported {
            what: "contentEncoding",
            value: env.content_encoding,
        });
    }
    match env.content_type.as_str() {
        "" | CONTENT_TYPE => decode_raw(&env.api_version, &env.kind, env.raw),
        "application/json" => serde_json::from_slice(env.raw)
            .map_err(|e| wire_error("application/json", &e.to_string())),
        other => Err(CodecError::Unsupported {
            what: "contentType",
            value: other.to_string(),
        }),
    }
}

/// Decodes the bare protobuf bytes of an object of the given apiVersion and kind (no envelope).
pub fn decode_raw(api_version: &str, kind: &str, raw: &[u8]) -> Result<Value, CodecError> {
    if api_version.is_empty() {
        return Err(CodecError::MissingTypeMeta("apiVersion"));
    }
    if kind.is_empty() {
        return Err(CodecError::MissingTypeMeta("kind"));
    }
    let s = Schema::get();
    let mi = s
        .kind(api_version, kind)
        .ok_or_else(|| CodecError::UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        })?;
    let mut v = decode::message(s, mi, raw, &Path::Root)?;
    if let Value::Object(o) = &mut v {
        o.insert("apiVersion".into(), Value::String(api_version.to_string()));
        o.insert("kind".into(), Value::String(kind.to_string()));
    }
    Ok(v)
}

fn type_meta(obj: &Value) -> Result<(&str, &str), CodecError> {
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(CodecError::MissingTypeMeta("apiVersion"))?;
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(CodecError::MissingTypeMeta("kind"))?;
    Ok((api_version, kind))
}

/// Encodes a JSON object (with `apiVersion` and `kind`) as an enveloped protobuf object, as
/// upstream's protobuf serializer writes it. JSON properties without a protobuf field are
/// dropped, as upstream's (non-strict) JSON decoding drops them.
pub fn encode(obj: &Value) -> Result<Vec<u8>, CodecError> {
    encode_with(obj, false)
}

/// Like [`encode`], but a JSON property without a protobuf field is an error
/// ([`CodecError::UnknownField`]); `apiVersion` and `kind` are always accepted.
pub fn encode_strict(obj: &Value) -> Result<Vec<u8>, CodecError> {
    encode_with(obj, true)
}

fn encode_with(obj: &Value, strict: bool) -> Result<Vec<u8>, CodecError> {
    let (api_version, kind) = type_meta(obj)?;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    put_nested(&mut out, 1, |o| {
        put_bytes(o, 1, api_version.as_bytes());
        put_bytes(o, 2, kind.as_bytes());
        Ok::<(), CodecError>(())
    })?;
    put_nested(&mut out, 2, |o| encode_raw_into(obj, strict, o))?;
    put_bytes(&mut out, 3, b"");
    put_bytes(&mut out, 4, b"");
    Ok(out)
}

/// Encodes the bare protobuf bytes of an object (no magic, no envelope).
pub fn encode_raw(obj: &Value) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    encode_raw_into(obj, false, &mut out)?;
    Ok(out)
}

fn encode_raw_into(obj: &Value, strict: bool, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let (api_version, kind) = type_meta(obj)?;
    let s = Schema::get();
    let mi = s
        .kind(api_version, kind)
        .ok_or_else(|| CodecError::UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        })?;
    if kind == "WatchEvent" && s.msgs[mi].full_name == WATCH_EVENT {
        // The event's object travels as an enveloped protobuf object, as upstream embeds it.
        let type_ = obj.get("type").and_then(Value::as_str).unwrap_or("");
        return watch_event_body(
            type_,
            obj.get("object").unwrap_or(&Value::Null),
            strict,
            out,
        );
    }
    let msg = &s.msgs[mi];
    let enc = encode::Encoder { s, strict };
    if msg.by_json.contains_key("apiVersion") || msg.by_json.contains_key("kind") {
        // The root's apiVersion/kind are its type, not fields of the message.
        let mut o = obj.clone();
        if let Value::Object(m) = &mut o {
            m.remove("apiVersion");
            m.remove("kind");
        }
        return enc.message(mi, &o, out, &Path::Root);
    }
    enc.message(mi, obj, out, &Path::Root)
}

const WATCH_EVENT: &str = "apimachinery.pkg.apis.meta.v1.WatchEvent";

fn watch_event_body(
    type_: &str,
    object: &Value,
    strict: bool,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    put_bytes(out, 1, type_.as_bytes());
    let embedded = match object {
        Value::Null => Vec::new(),
        o if type_meta(o).is_ok_and(|(a, k)| supports(a, k)) => encode_with(o, strict)?,
        // Objects without a protobuf form (custom resources) are embedded as JSON.
        o => serde_json::to_vec(o).map_err(|e| CodecError::Json {
            path: "$.object".into(),
            message: WATCH_EVENT.into(),
            reason: e.to_string(),
        })?,
    };
    put_nested(out, 2, |o| {
        put_bytes(o, 1, &embedded);
        Ok(())
    })
}

/// One frame of a protobuf watch stream: 4-byte big-endian length, then the `meta/v1.WatchEvent`
/// (no envelope) whose `object.raw` is `obj` encoded with [`encode`].
pub fn encode_watch_event(type_: &str, obj: &Value) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; 4];
    watch_event_body(type_, obj, false, &mut out)?;
    let len = u32::try_from(out.len() - 4)
        .map_err(|_| CodecError::Frame("event larger than 4 GiB".into()))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads one frame from the start of a protobuf watch stream: `Ok(None)` if `buf` does not yet
/// hold a whole frame, else the event's type, its decoded object and the bytes consumed.
pub fn decode_watch_event(buf: &[u8]) -> Result<Option<(String, Value, usize)>, CodecError> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let s = Schema::get();
    let mi = s
        .message(WATCH_EVENT)
        .ok_or_else(|| CodecError::Frame("no WatchEvent descriptor".into()))?;
    let ev = decode::message(s, mi, frame, &Path::Root)?;
    let type_ = ev
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| CodecError::Frame("event without type".into()))?
        .to_string();
    let object = ev.get("object").cloned().unwrap_or(Value::Null);
    Ok(Some((type_, object, 4 + len)))
}

/// Every known `(apiVersion, kind)` pair, sorted (for discovery and diagnostics).
pub fn kinds() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Schema::get()
        .kinds()
        .map(|(a, k, _)| (a.to_string(), k.to_string()))
        .collect();
    v.sort();
    v
}

/// One line per message field: `message json_name inline`; for tests and debugging.
#[doc(hidden)]
pub fn dump_schema() -> String {
    let s = Schema::get();
    let mut out = String::new();
    for m in &s.msgs {
        for f in &m.fields {
            out.push_str(&format!(
                "{} {} {} {:?}\n",
                m.full_name, f.json, f.inline, f.card
            ));
        }
    }
    out
}
