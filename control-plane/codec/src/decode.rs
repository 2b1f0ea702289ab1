//! Protobuf wire bytes -> Kubernetes JSON, driven by the descriptors.

use base64::Engine as _;
use serde_json::{Map, Number, Value};

use crate::error::{CodecError, Path};
use crate::schema::{Card, Field, Msg, Schema, Special, Ty};
use crate::time;
use crate::wire::{packed_varint, Raw, Reader};

fn err(path: &Path, msg: &Msg, reason: impl Into<String>) -> CodecError {
    CodecError::Wire {
        path: path.to_string(),
        message: msg.full_name.clone(),
        reason: reason.into(),
    }
}

/// Decodes one message of type `mi` into its JSON form.
pub(crate) fn message(s: &Schema, mi: usize, buf: &[u8], path: &Path) -> Result<Value, CodecError> {
    let msg = &s.msgs[mi];
    match msg.special {
        Special::None => Ok(Value::Object(object(s, mi, buf, path)?)),
        Special::RawExtension | Special::RawJson => {
            let mut raw: &[u8] = &[];
            let mut r = Reader::new(buf);
            while let Some((n, v)) = r.next().map_err(|e| err(path, msg, e))? {
                if let (1, Raw::Len(b)) = (n, v) {
                    raw = b;
                }
            }
            embedded(raw, msg.special == Special::RawExtension, path, msg)
        }
        Special::Time
        | Special::MicroTime
        | Special::Duration
        | Special::IntOrString
        | Special::Quantity => scalar_special(msg, buf, path),
        special => {
            let o = object(s, mi, buf, path)?;
            Ok(reshape(special, o))
        }
    }
}

/// The specials whose fields are all scalars, read straight off the wire (the hot ones: every
/// timestamp and quantity of an object).
fn scalar_special(msg: &Msg, buf: &[u8], path: &Path) -> Result<Value, CodecError> {
    let mut ints = [0i64; 3];
    let mut text: &[u8] = &[];
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.next().map_err(|e| err(path, msg, e))? {
        match (n, v) {
            (1..=3, Raw::Varint(x)) => ints[n as usize - 1] = x as i64,
            (1 | 3, Raw::Len(b)) => text = b,
            _ => {}
        }
    }
    let string = || {
        std::str::from_utf8(text)
            .map(str::to_string)
            .map_err(|_| err(path, msg, "string is not UTF-8"))
    };
    Ok(match msg.special {
        // An empty Time is Go's zero time (upstream writes nothing for it): JSON null.
        Special::Time | Special::MicroTime if buf.is_empty() => Value::Null,
        Special::Time | Special::MicroTime => {
            time::format(ints[0], ints[1] as i32, msg.special == Special::MicroTime)
                .map(Value::String)
                .unwrap_or(Value::Null)
        }
        Special::Duration => Value::String(time::format_duration(ints[0])),
        // type (1): 0 = int (intVal, 2), 1 = string (strVal, 3).
        Special::IntOrString if ints[0] == 1 => Value::String(string()?),
        Special::IntOrString => Value::from(ints[1] as i32),
        Special::Quantity if text.is_empty() => Value::String("0".into()),
        _ => Value::String(string()?),
    })
}

/// The JSON of a RawExtension / FieldsV1 / apiextensions JSON payload.
fn embedded(raw: &[u8], allow_proto: bool, path: &Path, msg: &Msg) -> Result<Value, CodecError> {
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    if allow_proto && raw.starts_with(&crate::MAGIC) {
        return crate::decode(raw);
    }
    serde_json::from_slice(raw)
        .map_err(|e| err(path, msg, format!("embedded bytes are not JSON: {e}")))
}

/// Turns the generic object form of a special message into its JSON form.
fn reshape(special: Special, mut o: Map<String, Value>) -> Value {
    match special {
        Special::PropsOrArray => match o.remove("jSONSchemas") {
            Some(Value::Array(a)) if !a.is_empty() => Value::Array(a),
            _ => o.remove("schema").unwrap_or(Value::Null),
        },
        Special::PropsOrBool => match o.remove("schema") {
            Some(schema) => schema,
            None => o.remove("allows").unwrap_or(Value::Bool(false)),
        },
        Special::PropsOrStringArray => match o.remove("property") {
            Some(Value::Array(a)) if !a.is_empty() => Value::Array(a),
            _ => o.remove("schema").unwrap_or(Value::Null),
        },
        Special::StringList => o
            .remove("items")
            .unwrap_or_else(|| Value::Array(Vec::new())),
        _ => Value::Object(o),
    }
}

/// Decodes a message into a JSON object of its fields (inline fields flattened).
fn object(
    s: &Schema,
    mi: usize,
    buf: &[u8],
    path: &Path,
) -> Result<Map<String, Value>, CodecError> {
    let msg = &s.msgs[mi];
    let mut obj = Map::new();
    let mut r = Reader::new(buf);
    while let Some((number, raw)) = r.next().map_err(|e| err(path, msg, e))? {
        let Some(f) = msg.field_by_number(number) else {
            continue; // unknown field: skipped, as protobuf readers do
        };
        let p = path.key(&f.json);
        match f.card {
            Card::Singular => {
                let v = value(s, msg, f.ty, raw, &p)?;
                if f.inline {
                    if let Value::Object(m) = v {
                        obj.extend(m);
                    }
                } else if omitted(f, &v) {
                    obj.remove(&f.json);
                } else {
                    match (obj.get_mut(&f.json), v) {
                        // A repeated occurrence of a message field merges into the first.
                        (Some(Value::Object(old)), Value::Object(new)) => old.extend(new),
                        (_, v) => {
                            obj.insert(f.json.clone(), v);
                        }
                    }
                }
            }
            Card::Repeated => {
                let slot = obj
                    .entry(f.json.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(arr) = slot else {
                    unreachable!("repeated slot is an array")
                };
                match raw {
                    Raw::Len(mut b) if f.ty.packable() => {
                        // Packed scalars.
                        while !b.is_empty() {
                            let item;
                            (item, b) = match f.ty {
                                Ty::Double | Ty::Fixed64 | Ty::Sfixed64 if b.len() >= 8 => {
                                    let (h, t) = b.split_at(8);
                                    (Raw::Fixed64(u64::from_le_bytes(h.try_into().unwrap())), t)
                                }
                                Ty::Float | Ty::Fixed32 | Ty::Sfixed32 if b.len() >= 4 => {
                                    let (h, t) = b.split_at(4);
                                    (Raw::Fixed32(u32::from_le_bytes(h.try_into().unwrap())), t)
                                }
                                Ty::Double
                                | Ty::Fixed64
                                | Ty::Sfixed64
                                | Ty::Float
                                | Ty::Fixed32
                                | Ty::Sfixed32 => {
                                    return Err(err(&p, msg, "truncated packed field"))
                                }
                                _ => {
                                    let (v, t) = packed_varint(b).map_err(|e| err(&p, msg, e))?;
                                    (Raw::Varint(v), t)
                                }
                            };
                            let i = arr.len();
                            arr.push(value(s, msg, f.ty, item, &p.index(i))?);
                        }
                    }
                    raw => {
                        let i = arr.len();
                        arr.push(value(s, msg, f.ty, raw, &p.index(i))?);
                    }
                }
            }
            Card::Map { key, value: vty } => {
                let Raw::Len(entry) = raw else {
                    return Err(err(&p, msg, "map entry is not length-delimited"));
                };
                let (k, v) = map_entry(s, msg, key, vty, entry, &p)?;
                let slot = obj
                    .entry(f.json.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = slot {
                    m.insert(k, v);
                }
            }
        }
    }
    Ok(obj)
}

/// Zero values that upstream's JSON omits: zero scalars of non-pointer `omitempty` fields.
fn omitted(f: &Field, v: &Value) -> bool {
    f.omit_zero
        && match v {
            Value::String(s) => s.is_empty(),
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::Bool(b) => !b,
            _ => false,
        }
}

fn map_entry(
    s: &Schema,
    msg: &Msg,
    kty: Ty,
    vty: Ty,
    entry: &[u8],
    path: &Path,
) -> Result<(String, Value), CodecError> {
    let mut k: Option<Value> = None;
    let mut v: Option<Value> = None;
    let mut r = Reader::new(entry);
    while let Some((n, raw)) = r.next().map_err(|e| err(path, msg, e))? {
        match n {
            1 => k = Some(value(s, msg, kty, raw, path)?),
            2 => {
                let kp = k.as_ref().and_then(Value::as_str).unwrap_or("");
                v = Some(value(s, msg, vty, raw, &path.key(kp))?)
            }
            _ => {}
        }
    }
    let key = match k {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => match kty {
            Ty::String => String::new(),
            Ty::Bool => "false".into(),
            _ => "0".into(),
        },
    };
    let v = match v {
        Some(v) => v,
        None => default_value(s, msg, vty, path)?,
    };
    Ok((key, v))
}

/// The JSON of a field that is absent from a map entry.
fn default_value(s: &Schema, msg: &Msg, ty: Ty, path: &Path) -> Result<Value, CodecError> {
    Ok(match ty {
        Ty::Message(mi) => message(s, mi, &[], path)?,
        Ty::String | Ty::Bytes => Value::String(String::new()),
        Ty::Bool => Value::Bool(false),
        _ => value(s, msg, ty, Raw::Varint(0), path)?,
    })
}

fn float(x: f64) -> Value {
    // Go prints integral floats without a fraction.
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
        Value::from(x as i64)
    } else {
        Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// One scalar or message value.
fn value(s: &Schema, msg: &Msg, ty: Ty, raw: Raw, path: &Path) -> Result<Value, CodecError> {
    let zz32 = |v: u64| ((v as u32 >> 1) as i32) ^ -((v & 1) as i32);
    let zz64 = |v: u64| ((v >> 1) as i64) ^ -((v & 1) as i64);
    Ok(match (ty, raw) {
        (Ty::Message(mi), Raw::Len(b)) => message(s, mi, b, path)?,
        (Ty::String, Raw::Len(b)) => Value::String(
            std::str::from_utf8(b)
                .map_err(|_| err(path, msg, "string is not UTF-8"))?
                .to_string(),
        ),
        (Ty::Bytes, Raw::Len(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Ty::Int32 | Ty::Enum, Raw::Varint(v)) => Value::from(v as i32),
        (Ty::Int64, Raw::Varint(v)) => Value::from(v as i64),
        (Ty::Uint32, Raw::Varint(v)) => Value::from(v as u32),
        (Ty::Uint64, Raw::Varint(v)) => Value::from(v),
        (Ty::Sint32, Raw::Varint(v)) => Value::from(zz32(v)),
        (Ty::Sint64, Raw::Varint(v)) => Value::from(zz64(v)),
        (Ty::Bool, Raw::Varint(v)) => Value::Bool(v != 0),
        (Ty::Fixed32, Raw::Fixed32(v)) => Value::from(v),
        (Ty::Sfixed32, Raw::Fixed32(v)) => Value::from(v as i32),
        (Ty::Float, Raw::Fixed32(v)) => float(f64::from(f32::from_bits(v))),
        (Ty::Fixed64, Raw::Fixed64(v)) => Value::from(v),
        (Ty::Sfixed64, Raw::Fixed64(v)) => Value::from(v as i64),
        (Ty::Double, Raw::Fixed64(v)) => float(f64::from_bits(v)),
        (ty, raw) => {
            return Err(err(
                path,
                msg,
                format!("wire value {raw:?} does not fit a field of type {ty:?}"),
            ))
        }
    })
}
