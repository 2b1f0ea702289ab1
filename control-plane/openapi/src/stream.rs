//! The serialized documents, written a resource's paths and a kind's definitions at a time
//! straight into the compressors: no document is ever whole in memory as a JSON tree (a
//! `serde_json::Value` takes 10 to 15 times its text), which keeps the peak of a first
//! `/openapi/v2` request down. Protobuf merges repeated occurrences of the `paths` and
//! `definitions` fields, so those are written in chunks too.

use crate::model::{self, KindInfo};
use crate::{docs, proto, CrdSchema, Document, Resource, INFO_VERSION};
use flate2::{write::GzEncoder, Compression};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::io::Write;

pub(crate) struct Counting<W>(pub usize, pub W);
impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.1.write(b)?;
        self.0 += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.1.flush()
    }
}

type Gz = GzEncoder<Vec<u8>>;

fn gz() -> Gz {
    GzEncoder::new(Vec::new(), Compression::new(6))
}

fn finish(g: Gz) -> Vec<u8> {
    let mut v = g.finish().unwrap_or_default();
    v.shrink_to_fit();
    v
}

struct Writer {
    v3: bool,
    json: Counting<Gz>,
    pb: Option<Gz>,
    first: bool,
    written: HashSet<String>,
}

impl Writer {
    fn raw(&mut self, b: &[u8]) {
        let _ = self.json.write_all(b);
    }
    fn entry(&mut self, name: &str, v: &Value) {
        if !std::mem::replace(&mut self.first, false) {
            self.raw(b",");
        }
        let _ = serde_json::to_writer(&mut self.json, name);
        self.raw(b":");
        let _ = serde_json::to_writer(&mut self.json, v);
    }
    fn paths(&mut self, paths: Map<String, Value>) {
        if let Some(pb) = &mut self.pb {
            let _ = pb.write_all(&proto::encode_document(&json!({ "paths": paths })));
        }
        for (p, mut item) in paths {
            if self.v3 {
                docs::path_to_v3(&mut item);
            }
            self.entry(&p, &item);
        }
    }
    fn definitions(&mut self, defs: Map<String, Value>) {
        let mut chunk = Map::new();
        for (name, mut d) in defs {
            if !self.written.insert(name.clone()) {
                continue;
            }
            if self.v3 {
                model::to_v3(&mut d);
                let mut one = Map::new();
                one.insert(name.clone(), d);
                model::v3_scalars(&mut one);
                d = one.remove(&name).unwrap_or(Value::Null);
            }
            self.entry(&name, &d);
            if self.pb.is_some() {
                chunk.insert(name, d);
            }
        }
        if let Some(pb) = &mut self.pb {
            if !chunk.is_empty() {
                let _ = pb.write_all(&proto::encode_document(&json!({ "definitions": chunk })));
            }
        }
    }
}

/// Writes the document for `resources` (already with the CRDs' resources) and `crds`.
/// `only`: the kinds whose definitions go in (with what they refer to); v3 documents pass the
/// kinds of their group-version, v2 all.
pub(crate) fn document(
    hash: u64,
    v3: bool,
    resources: &[&Resource],
    crds: &[CrdSchema],
    only: &dyn Fn(&KindInfo) -> bool,
) -> Document {
    let kinds = model::kinds();
    let def_of = |g: &str, v: &str, k: &str| crate::definition_of(&kinds, crds, g, v, k);
    let mut w = Writer {
        v3,
        json: Counting(0, gz()),
        pb: (!v3).then(gz),
        first: true,
        written: HashSet::new(),
    };
    let info = json!({"title": "Kubernetes", "version": INFO_VERSION});
    let security = json!({"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}});
    if v3 {
        w.raw(format!("{{\"openapi\":\"3.0.0\",\"info\":{info},\"security\":[{{\"BearerToken\":[]}}],\"paths\":{{").as_bytes());
    } else {
        w.raw(format!("{{\"swagger\":\"2.0\",\"info\":{info},\"security\":[{{\"BearerToken\":[]}}],\"securityDefinitions\":{security},\"paths\":{{").as_bytes());
        if let Some(pb) = &mut w.pb {
            let _ = pb.write_all(&proto::encode_document(
                &json!({"swagger": "2.0", "info": info}),
            ));
        }
    }
    for r in resources {
        let mut paths = Map::new();
        docs::resource_paths(r, &def_of, &mut paths);
        w.paths(paths);
    }
    if v3 {
        w.raw(
            format!("}},\"components\":{{\"securitySchemes\":{security},\"schemas\":{{").as_bytes(),
        );
    } else {
        w.raw(b"},\"definitions\":{");
    }
    w.first = true;
    // One kind at a time (plus the meta types every chunk brings, written once).
    for k in kinds.iter().filter(|k| only(k)) {
        let (defs, _) = model::definitions_for(|x| x.definition == k.definition);
        w.definitions(defs);
    }
    if kinds.iter().all(|k| !only(k)) {
        w.definitions(model::definitions_for(|_| false).0);
    }
    let mut crd_defs = Map::new();
    for c in crds {
        let mut s = c.schema.clone();
        if !v3 {
            model::to_v2(&mut s);
        }
        crd_defs.insert(c.definition.clone(), s);
        crd_defs.insert(format!("{}List", c.definition), c.list_schema());
    }
    w.definitions(crd_defs);
    w.raw(if v3 { b"}}}" } else { b"}}" });
    Document {
        hash,
        json_len: w.json.0,
        gzip: finish(w.json.1),
        protobuf_gzip: w.pb.map(finish),
    }
}
