//! The swagger 2.0 document in the protobuf form client-go asks `/openapi/v2` for
//! (gnostic's `openapi.v2.Document`, field numbers from its published OpenAPIv2.proto).
//! Only what the documents of this crate contain is encoded.

use serde_json::{Map, Value};

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        bytes(out, field, s.as_bytes());
    }
}

fn boolean(out: &mut Vec<u8>, field: u32, b: bool) {
    if b {
        key(out, field, 0);
        varint(out, 1);
    }
}

fn double(out: &mut Vec<u8>, field: u32, f: f64) {
    key(out, field, 1);
    out.extend_from_slice(&f.to_le_bytes());
}

fn int64(out: &mut Vec<u8>, field: u32, i: i64) {
    key(out, field, 0);
    varint(out, i as u64);
}

fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes(out, field, &inner);
}

fn str_of<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

/// `Any { yaml = 2 }`: JSON is YAML.
fn any(out: &mut Vec<u8>, field: u32, v: &Value) {
    message(out, field, |b| string(b, 2, &v.to_string()));
}

/// `NamedAny` vendor extensions (`x-...` keys) of `m`.
fn extensions(out: &mut Vec<u8>, field: u32, m: &Map<String, Value>) {
    for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
        message(out, field, |b| {
            string(b, 1, k);
            any(b, 2, v);
        });
    }
}

fn schema(out: &mut Vec<u8>, v: &Value) {
    let Value::Object(m) = v else { return };
    string(out, 1, str_of(m, "$ref"));
    string(out, 2, str_of(m, "format"));
    string(out, 3, str_of(m, "title"));
    string(out, 4, str_of(m, "description"));
    if let Some(d) = m.get("default") {
        any(out, 5, d);
    }
    for (k, f) in [("multipleOf", 6), ("maximum", 7), ("minimum", 9)] {
        if let Some(x) = m.get(k).and_then(Value::as_f64) {
            double(out, f, x);
        }
    }
    for (k, f) in [
        ("exclusiveMaximum", 8),
        ("exclusiveMinimum", 10),
        ("uniqueItems", 16),
    ] {
        boolean(out, f, m.get(k) == Some(&Value::Bool(true)));
    }
    for (k, f) in [
        ("maxLength", 11),
        ("minLength", 12),
        ("maxItems", 14),
        ("minItems", 15),
        ("maxProperties", 17),
        ("minProperties", 18),
    ] {
        if let Some(x) = m.get(k).and_then(Value::as_i64) {
            int64(out, f, x);
        }
    }
    string(out, 13, str_of(m, "pattern"));
    for r in m
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        bytes(out, 19, r.as_str().unwrap_or("").as_bytes());
    }
    for e in m
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        any(out, 20, e);
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => message(out, 21, |o| {
            key(o, 2, 0);
            varint(o, u64::from(*b));
        }),
        Some(s @ Value::Object(_)) => message(out, 21, |o| message(o, 1, |o| schema(o, s))),
        _ => {}
    }
    match m.get("type") {
        Some(Value::String(t)) => message(out, 22, |o| string(o, 1, t)),
        Some(Value::Array(ts)) => message(out, 22, |o| {
            ts.iter()
                .filter_map(Value::as_str)
                .for_each(|t| string(o, 1, t))
        }),
        _ => {}
    }
    match m.get("items") {
        Some(s @ Value::Object(_)) => message(out, 23, |o| message(o, 1, |o| schema(o, s))),
        Some(Value::Array(ss)) => message(out, 23, |o| {
            ss.iter().for_each(|s| message(o, 1, |o| schema(o, s)))
        }),
        _ => {}
    }
    for s in m
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        message(out, 24, |o| schema(o, s));
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        message(out, 25, |o| named_schemas(o, props));
    }
    if let Some(e) = m.get("example") {
        any(out, 30, e);
    }
    extensions(out, 31, m);
}

/// `repeated NamedSchema additional_properties = 1` (Properties, Definitions).
fn named_schemas(out: &mut Vec<u8>, m: &Map<String, Value>) {
    for (k, s) in m {
        message(out, 1, |o| {
            string(o, 1, k);
            message(o, 2, |o| schema(o, s));
        });
    }
}

fn parameter(out: &mut Vec<u8>, p: &Value) {
    let Value::Object(m) = p else { return };
    // ParametersItem { parameter = 1 }
    message(out, 1, |o| match str_of(m, "in") {
        "body" => message(o, 1, |o| {
            string(o, 1, str_of(m, "description"));
            string(o, 2, str_of(m, "name"));
            string(o, 3, "body");
            boolean(o, 4, m.get("required") == Some(&Value::Bool(true)));
            if let Some(s) = m.get("schema") {
                message(o, 5, |o| schema(o, s));
            }
        }),
        place => message(o, 2, |o| {
            // NonBodyParameter: header 1, formData 2, query 3, path 4.
            let (field, type_field, unique_field) = match place {
                "path" => (4, 5, 19),
                "header" => (1, 5, 19),
                _ => (3, 6, 20),
            };
            message(o, field, |o| {
                boolean(o, 1, m.get("required") == Some(&Value::Bool(true)));
                string(o, 2, place);
                string(o, 3, str_of(m, "description"));
                string(o, 4, str_of(m, "name"));
                string(o, type_field, str_of(m, "type"));
                boolean(
                    o,
                    unique_field,
                    m.get("uniqueItems") == Some(&Value::Bool(true)),
                );
            })
        }),
    });
}

fn operation(out: &mut Vec<u8>, op: &Map<String, Value>) {
    string(out, 3, str_of(op, "description"));
    string(out, 5, str_of(op, "operationId"));
    for (k, f) in [("produces", 6), ("consumes", 7)] {
        for s in op.get(k).and_then(Value::as_array).into_iter().flatten() {
            bytes(out, f, s.as_str().unwrap_or("").as_bytes());
        }
    }
    for p in op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        message(out, 8, |o| parameter(o, p));
    }
    if let Some(Value::Object(rs)) = op.get("responses") {
        message(out, 9, |o| {
            for (code, r) in rs {
                message(o, 1, |o| {
                    string(o, 1, code);
                    message(o, 2, |o| {
                        message(o, 1, |o| {
                            string(o, 1, r["description"].as_str().unwrap_or(""));
                            if let Some(s) = r.get("schema") {
                                message(o, 2, |o| message(o, 1, |o| schema(o, s)));
                            }
                        })
                    })
                });
            }
        });
    }
    for s in op
        .get("schemes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        bytes(out, 10, s.as_str().unwrap_or("").as_bytes());
    }
    extensions(out, 13, op);
}

fn path_item(out: &mut Vec<u8>, item: &Map<String, Value>) {
    for (verb, f) in [
        ("get", 2),
        ("put", 3),
        ("post", 4),
        ("delete", 5),
        ("options", 6),
        ("head", 7),
        ("patch", 8),
    ] {
        if let Some(Value::Object(op)) = item.get(verb) {
            message(out, f, |o| operation(o, op));
        }
    }
    for p in item
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        message(out, 9, |o| parameter(o, p));
    }
}

/// Encodes a swagger 2.0 document (as [`crate::v2`] makes it).
pub(crate) fn encode_document(doc: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let Value::Object(d) = doc else { return out };
    string(&mut out, 1, str_of(d, "swagger"));
    if let Some(Value::Object(info)) = d.get("info") {
        message(&mut out, 2, |o| {
            string(o, 1, str_of(info, "title"));
            string(o, 2, str_of(info, "version"));
        });
    }
    if let Some(Value::Object(paths)) = d.get("paths") {
        message(&mut out, 8, |o| {
            for (p, item) in paths {
                if let Value::Object(item) = item {
                    message(o, 2, |o| {
                        string(o, 1, p);
                        message(o, 2, |o| path_item(o, item));
                    });
                }
            }
        });
    }
    if let Some(Value::Object(defs)) = d.get("definitions") {
        message(&mut out, 9, |o| named_schemas(o, defs));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_nesting() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
        let doc = serde_json::json!({"swagger": "2.0", "definitions": {"A": {"type": "string"}}});
        let b = encode_document(&doc);
        // swagger = 1 ("2.0"), definitions = 9 { NamedSchema { name "A", Schema { type { "string" } } } }
        assert_eq!(&b[..5], &[0x0A, 3, b'2', b'.', b'0']);
        assert_eq!(b[5], 0x4A);
        assert!(b.windows(6).any(|w| w == b"string"));
    }
}
