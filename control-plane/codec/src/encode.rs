//! Kubernetes JSON -> protobuf wire bytes, driven by the descriptors.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::{CodecError, Path};
use crate::schema::{Card, Msg, Schema, Special, Ty};
use crate::time;
use crate::wire::{put_bytes, put_key, put_nested, put_varint, FIXED32, FIXED64, VARINT};

pub(crate) struct Encoder<'s> {
    pub s: &'s Schema,
    /// Report JSON properties that have no protobuf field instead of dropping them.
    pub strict: bool,
}

fn err(path: &Path, msg: &Msg, reason: impl Into<String>) -> CodecError {
    CodecError::Json {
        path: path.to_string(),
        message: msg.full_name.clone(),
        reason: reason.into(),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Encoder<'_> {
    /// Appends the fields of message `mi` for JSON value `v`.
    pub(crate) fn message(
        &self,
        mi: usize,
        v: &Value,
        out: &mut Vec<u8>,
        path: &Path,
    ) -> Result<(), CodecError> {
        let msg = &self.s.msgs[mi];
        let field_ty = |n: u32| msg.field_by_number(n).map(|f| f.ty).unwrap_or(Ty::Bytes);
        match (msg.special, v) {
            (_, Value::Null) if !matches!(msg.special, Special::Time | Special::MicroTime) => {
                Ok(())
            }
            (Special::None, Value::Object(o)) => self.object(mi, o, out, path, self.strict),
            // Go's zero time: upstream writes an empty message for it.
            (Special::Time | Special::MicroTime, Value::Null) => Ok(()),
            (Special::Time | Special::MicroTime, Value::String(t)) => {
                let (secs, nanos) = time::parse(t)
                    .ok_or_else(|| err(path, msg, format!("{t:?} is not an RFC 3339 time")))?;
                put_key(out, 1, VARINT);
                put_varint(out, secs as u64);
                if nanos != 0 {
                    put_key(out, 2, VARINT);
                    put_varint(out, nanos as u64);
                }
                Ok(())
            }
            (Special::Duration, Value::String(d)) => {
                let ns = time::parse_duration(d)
                    .ok_or_else(|| err(path, msg, format!("{d:?} is not a duration")))?;
                put_key(out, 1, VARINT);
                put_varint(out, ns as u64);
                Ok(())
            }
            (Special::IntOrString, Value::Number(n)) => {
                let i = n
                    .as_i64()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| err(path, msg, format!("{n} is not a 32-bit integer")))?;
                put_key(out, 1, VARINT);
                put_varint(out, 0);
                put_key(out, 2, VARINT);
                put_varint(out, i64::from(i) as u64);
                put_bytes(out, 3, b"");
                Ok(())
            }
            (Special::IntOrString, Value::String(t)) => {
                put_key(out, 1, VARINT);
                put_varint(out, 1);
                put_key(out, 2, VARINT);
                put_varint(out, 0);
                put_bytes(out, 3, t.as_bytes());
                Ok(())
            }
            (Special::Quantity, Value::String(q)) => {
                put_bytes(out, 1, q.as_bytes());
                Ok(())
            }
            (Special::Quantity, Value::Number(n)) => {
                put_bytes(out, 1, n.to_string().as_bytes());
                Ok(())
            }
            (Special::RawExtension | Special::RawJson, v) => {
                let raw = serde_json::to_vec(v).map_err(|e| err(path, msg, e.to_string()))?;
                put_bytes(out, 1, &raw);
                Ok(())
            }
            (Special::PropsOrArray, Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.field_value(out, 2, field_ty(2), item, &path.index(i), msg)?;
                }
                Ok(())
            }
            (Special::PropsOrArray | Special::PropsOrStringArray, Value::Object(_)) => {
                self.field_value(out, 1, field_ty(1), v, path, msg)
            }
            (Special::PropsOrBool, Value::Bool(b)) => {
                put_key(out, 1, VARINT);
                put_varint(out, u64::from(*b));
                Ok(())
            }
            (Special::PropsOrBool, Value::Object(_)) => {
                put_key(out, 1, VARINT);
                put_varint(out, 1);
                self.field_value(out, 2, field_ty(2), v, path, msg)
            }
            (Special::PropsOrStringArray | Special::StringList, Value::Array(items)) => {
                let n = if msg.special == Special::StringList {
                    1
                } else {
                    2
                };
                for (i, item) in items.iter().enumerate() {
                    self.field_value(out, n, Ty::String, item, &path.index(i), msg)?;
                }
                Ok(())
            }
            (special, v) => Err(err(
                path,
                msg,
                format!("{} cannot encode as {special:?}", kind_of(v)),
            )),
        }
    }

    /// Whether JSON property `key` belongs to message `mi` (directly or through inline fields).
    fn accepts(&self, mi: usize, key: &str) -> bool {
        let msg = &self.s.msgs[mi];
        msg.by_json.contains_key(key)
            || msg.fields.iter().any(|f| match (f.inline, f.ty) {
                (true, Ty::Message(c)) => self.accepts(c, key),
                _ => false,
            })
    }

    fn object(
        &self,
        mi: usize,
        o: &Map<String, Value>,
        out: &mut Vec<u8>,
        path: &Path,
        check_unknown: bool,
    ) -> Result<(), CodecError> {
        let msg = &self.s.msgs[mi];
        if check_unknown {
            for k in o.keys() {
                if !self.accepts(mi, k) && k != "apiVersion" && k != "kind" {
                    return Err(CodecError::UnknownField {
                        path: path.key(k).to_string(),
                        message: msg.full_name.clone(),
                    });
                }
            }
        }
        for f in &msg.fields {
            if f.inline {
                let Ty::Message(c) = f.ty else { continue };
                if o.keys().any(|k| self.accepts(c, k)) {
                    // The parent object's other properties are the parent's business.
                    put_nested(out, f.number, |out| self.object(c, o, out, path, false))?;
                }
                continue;
            }
            let Some(v) = o.get(&f.json) else { continue };
            let p = path.key(&f.json);
            match f.card {
                Card::Singular => {
                    if v.is_null() && !is_time(self.s, f.ty) {
                        continue;
                    }
                    self.field_value(out, f.number, f.ty, v, &p, msg)?;
                }
                Card::Repeated => match v {
                    Value::Null => {}
                    Value::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            self.field_value(out, f.number, f.ty, item, &p.index(i), msg)?;
                        }
                    }
                    other => {
                        return Err(err(
                            &p,
                            msg,
                            format!("expected an array, got {}", kind_of(other)),
                        ))
                    }
                },
                Card::Map { key, value } => match v {
                    Value::Null => {}
                    Value::Object(m) => {
                        let mut keys: Vec<&String> = m.keys().collect();
                        keys.sort_unstable();
                        for k in keys {
                            let kp = p.key(k);
                            put_nested(out, f.number, |out| {
                                let kv =
                                    match key {
                                        Ty::String => Value::String(k.clone()),
                                        Ty::Bool => Value::Bool(k == "true"),
                                        _ => Value::from(k.parse::<i64>().map_err(|_| {
                                            err(&kp, msg, "map key is not an integer")
                                        })?),
                                    };
                                self.field_value(out, 1, key, &kv, &kp, msg)?;
                                let val = &m[k.as_str()];
                                if val.is_null() {
                                    return Ok(());
                                }
                                self.field_value(out, 2, value, val, &kp, msg)
                            })?;
                        }
                    }
                    other => {
                        return Err(err(
                            &p,
                            msg,
                            format!("expected an object, got {}", kind_of(other)),
                        ))
                    }
                },
            }
        }
        Ok(())
    }

    /// Writes one value of field `number`.
    fn field_value(
        &self,
        out: &mut Vec<u8>,
        number: u32,
        ty: Ty,
        v: &Value,
        path: &Path,
        msg: &Msg,
    ) -> Result<(), CodecError> {
        let mismatch = |want: &str| err(path, msg, format!("expected {want}, got {}", kind_of(v)));
        let int = |lo: i64, hi: i64| -> Result<i64, CodecError> {
            let i = match v {
                Value::Number(n) => n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                        .map(|f| f as i64)
                }),
                _ => return Err(mismatch("an integer")),
            };
            i.filter(|i| (lo..=hi).contains(i))
                .ok_or_else(|| err(path, msg, format!("{v} is out of range for {ty:?}")))
        };
        match ty {
            Ty::Message(mi) => put_nested(out, number, |out| self.message(mi, v, out, path)),
            Ty::String => {
                let s = v.as_str().ok_or_else(|| mismatch("a string"))?;
                put_bytes(out, number, s.as_bytes());
                Ok(())
            }
            Ty::Bytes => {
                let s = v.as_str().ok_or_else(|| mismatch("a base64 string"))?;
                let b = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
                    .map_err(|e| err(path, msg, format!("invalid base64: {e}")))?;
                put_bytes(out, number, &b);
                Ok(())
            }
            Ty::Bool => {
                let b = v.as_bool().ok_or_else(|| mismatch("a boolean"))?;
                put_key(out, number, VARINT);
                put_varint(out, u64::from(b));
                Ok(())
            }
            Ty::Int32 | Ty::Enum => {
                let i = int(i32::MIN.into(), i32::MAX.into())?;
                put_key(out, number, VARINT);
                put_varint(out, i as u64);
                Ok(())
            }
            Ty::Int64 => {
                let i = int(i64::MIN, i64::MAX)?;
                put_key(out, number, VARINT);
                put_varint(out, i as u64);
                Ok(())
            }
            Ty::Uint32 | Ty::Uint64 => {
                let u = match v {
                    Value::Number(n) => n.as_u64(),
                    _ => return Err(mismatch("an unsigned integer")),
                }
                .filter(|u| ty == Ty::Uint64 || *u <= u64::from(u32::MAX))
                .ok_or_else(|| err(path, msg, format!("{v} is out of range for {ty:?}")))?;
                put_key(out, number, VARINT);
                put_varint(out, u);
                Ok(())
            }
            Ty::Sint32 | Ty::Sint64 => {
                let i = if ty == Ty::Sint32 {
                    int(i32::MIN.into(), i32::MAX.into())?
                } else {
                    int(i64::MIN, i64::MAX)?
                };
                put_key(out, number, VARINT);
                put_varint(out, ((i << 1) ^ (i >> 63)) as u64);
                Ok(())
            }
            Ty::Double | Ty::Fixed64 | Ty::Sfixed64 => {
                let bits = match ty {
                    Ty::Double => v.as_f64().ok_or_else(|| mismatch("a number"))?.to_bits(),
                    Ty::Fixed64 => v.as_u64().ok_or_else(|| mismatch("an unsigned integer"))?,
                    _ => int(i64::MIN, i64::MAX)? as u64,
                };
                put_key(out, number, FIXED64);
                out.extend_from_slice(&bits.to_le_bytes());
                Ok(())
            }
            Ty::Float | Ty::Fixed32 | Ty::Sfixed32 => {
                let bits = match ty {
                    Ty::Float => (v.as_f64().ok_or_else(|| mismatch("a number"))? as f32).to_bits(),
                    Ty::Fixed32 => v
                        .as_u64()
                        .and_then(|u| u32::try_from(u).ok())
                        .ok_or_else(|| mismatch("an unsigned 32-bit integer"))?,
                    _ => int(i32::MIN.into(), i32::MAX.into())? as i32 as u32,
                };
                put_key(out, number, FIXED32);
                out.extend_from_slice(&bits.to_le_bytes());
                Ok(())
            }
        }
    }
}

fn is_time(s: &Schema, ty: Ty) -> bool {
    matches!(ty, Ty::Message(mi) if matches!(s.msgs[mi].special, Special::Time | Special::MicroTime))
}
