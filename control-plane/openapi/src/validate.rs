//! Strict field validation: unknown fields against the schemas, duplicate fields in the body.

use crate::model::{self, META};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

/// What the walk needs of a schema.
#[derive(Debug)]
enum Node {
    /// Anything goes (preserve-unknown-fields, RawExtension, free-form objects).
    Any,
    /// A string, number or boolean: nothing inside to check.
    Scalar,
    Object {
        /// Sorted by name.
        props: Box<[(Box<str>, u32)]>,
        /// `additionalProperties` beside `properties`.
        extra: Option<u32>,
    },
    Map(u32),
    Array(u32),
}

const ANY: u32 = 0;
const SCALAR: u32 = 1;

/// The built-in schemas, compacted to field names (a few hundred KiB instead of the documents).
struct Tree {
    nodes: Vec<Node>,
    by_def: HashMap<String, u32>,
    by_gvk: HashMap<(String, String, String), u32>,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let (defs, kinds) = model::definitions();
        let mut t = Tree {
            nodes: vec![Node::Any, Node::Scalar],
            by_def: HashMap::new(),
            by_gvk: HashMap::new(),
        };
        let mut names: Vec<&String> = defs.keys().collect();
        names.sort();
        for n in names {
            t.def(&defs, n);
        }
        for k in kinds {
            if let Some(&id) = t.by_def.get(&k.definition) {
                t.by_gvk
                    .insert((k.group.into(), k.version.into(), k.kind.into()), id);
            }
            if let Some((lk, ld)) = &k.list {
                if let Some(&id) = t.by_def.get(ld) {
                    t.by_gvk
                        .insert((k.group.into(), k.version.into(), (*lk).into()), id);
                }
            }
        }
        t.nodes.shrink_to_fit();
        t
    })
}

impl Tree {
    fn def(&mut self, defs: &Map<String, Value>, name: &str) -> u32 {
        if let Some(&id) = self.by_def.get(name) {
            return id;
        }
        let Some(schema) = defs.get(name) else {
            return ANY;
        };
        let id = self.nodes.len() as u32;
        self.nodes.push(Node::Any);
        self.by_def.insert(name.to_string(), id);
        let node = self.node(defs, schema);
        self.nodes[id as usize] = node;
        id
    }

    fn add(&mut self, defs: &Map<String, Value>, schema: &Value) -> u32 {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            return self.def(defs, r.rsplit('/').next().unwrap_or(r));
        }
        match self.node(defs, schema) {
            Node::Any => ANY,
            Node::Scalar => SCALAR,
            n => {
                self.nodes.push(n);
                self.nodes.len() as u32 - 1
            }
        }
    }

    fn node(&mut self, defs: &Map<String, Value>, schema: &Value) -> Node {
        if schema.get("$ref").is_some() {
            // Only `add` meets `$ref`s: no definition is a bare reference.
            return Node::Any;
        }
        if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            return Node::Any;
        }
        if let Some(items) = schema.get("items") {
            return Node::Array(self.add(defs, items));
        }
        let extra = match schema.get("additionalProperties") {
            Some(Value::Bool(true)) => Some(ANY),
            Some(s @ Value::Object(_)) => Some(self.add(defs, s)),
            _ => None,
        };
        match schema.get("properties").and_then(Value::as_object) {
            Some(props) => {
                let mut v: Vec<(Box<str>, u32)> = props
                    .iter()
                    .map(|(k, s)| (k.as_str().into(), self.add(defs, s)))
                    .collect();
                v.sort();
                Node::Object {
                    props: v.into(),
                    extra,
                }
            }
            None => match extra {
                Some(e) => Node::Map(e),
                None if schema.get("type").and_then(Value::as_str) == Some("object") => Node::Any,
                None if schema.get("type").is_none() && schema.get("format").is_none() => Node::Any,
                None => Node::Scalar,
            },
        }
    }
}

struct Walk<'a> {
    tree: &'a Tree,
    out: Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Appends `.key` (or `key` at the root) to `path`; returns the length to truncate back to.
fn push_key(path: &mut String, key: &str) -> usize {
    let at = path.len();
    if at > 0 {
        path.push('.');
    }
    path.push_str(key);
    at
}

impl Walk<'_> {
    /// Walks `v` against node `id`; `path` is the dotted path of `v`, extended in place for the
    /// children (no string is built unless a field is unknown).
    fn node(&mut self, id: u32, v: &Value, path: &mut String) {
        match (&self.tree.nodes[id as usize], v) {
            (Node::Object { props, extra }, Value::Object(m)) => {
                for (k, child) in m {
                    let at = push_key(path, k);
                    match props.binary_search_by(|(n, _)| (**n).cmp(k.as_str())) {
                        Ok(i) => self.node(props[i].1, child, path),
                        Err(_) => match extra {
                            Some(e) => self.node(*e, child, path),
                            None => self.out.push(format!("unknown field \"{path}\"")),
                        },
                    }
                    path.truncate(at);
                }
            }
            (Node::Map(e), Value::Object(m)) => {
                for (k, child) in m {
                    let at = push_key(path, k);
                    self.node(*e, child, path);
                    path.truncate(at);
                }
            }
            (Node::Array(e), Value::Array(a)) => {
                for (i, child) in a.iter().enumerate() {
                    let at = path.len();
                    let _ = write!(path, "[{i}]");
                    self.node(*e, child, path);
                    path.truncate(at);
                }
            }
            _ => {}
        }
    }

    /// A CRD's schema (OpenAPI 3.0 form), reaching into the built-ins for `$ref`s.
    fn json(&mut self, schema: &Value, v: &Value, path: &str) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            if let Some(&id) = self.tree.by_def.get(r.rsplit('/').next().unwrap_or(r)) {
                self.node(id, v, &mut path.to_string());
            }
            return;
        }
        if let Some(Value::Array(all)) = schema.get("allOf") {
            if let [one] = all.as_slice() {
                if one.get("$ref").is_some() {
                    return self.json(one, v, path);
                }
            }
        }
        if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            return;
        }
        match v {
            Value::Object(m) => {
                let props = schema.get("properties").and_then(Value::as_object);
                let extra = schema.get("additionalProperties");
                let embedded =
                    schema.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true));
                if props.is_none() && extra.is_none() && !embedded {
                    return;
                }
                for (k, child) in m {
                    let p = join(path, k);
                    if let Some(s) = props.and_then(|ps| ps.get(k)) {
                        self.json(s, child, &p);
                    } else if embedded && (k == "apiVersion" || k == "kind") {
                    } else if embedded && k == "metadata" {
                        if let Some(&id) = self.tree.by_def.get(&format!("{META}ObjectMeta")) {
                            self.node(id, child, &mut p.clone());
                        }
                    } else {
                        match extra {
                            Some(s @ Value::Object(_)) => self.json(s, child, &p),
                            Some(Value::Bool(true)) => {}
                            _ => self.out.push(format!("unknown field \"{p}\"")),
                        }
                    }
                }
            }
            Value::Array(a) => {
                if let Some(items) = schema.get("items") {
                    for (i, child) in a.iter().enumerate() {
                        self.json(items, child, &format!("{path}[{i}]"));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The fields of `obj` that the schema of `group`/`version`/`kind` does not know, as upstream's
/// strict decoding reports them (`unknown field "spec.containers[0].foo"`). Kinds without a
/// schema (unknown kinds, CRDs not registered with [`crate::register_crd`]) report nothing.
pub fn unknown_fields(group: &str, version: &str, kind: &str, obj: &Value) -> Vec<String> {
    let tree = tree();
    let mut w = Walk {
        tree,
        out: Vec::new(),
    };
    if let Some(&id) = tree
        .by_gvk
        .get(&(group.to_string(), version.to_string(), kind.to_string()))
    {
        w.node(id, obj, &mut String::new());
    } else {
        let crd = crate::with_crds(|m| {
            m.values()
                .flatten()
                .find(|c| {
                    c.resource.group == group
                        && c.resource.version == version
                        && c.resource.kind == kind
                })
                .map(|c| c.schema.clone())
        });
        if let Some(schema) = crd {
            w.json(&schema, obj, "");
        }
    }
    w.out
}

/// Bytes held by the field tree behind [`unknown_fields`] (approximate), building it if needed.
pub fn tree_heap_bytes() -> usize {
    let t = tree();
    let mut n = t.nodes.capacity() * std::mem::size_of::<Node>();
    for node in &t.nodes {
        if let Node::Object { props, .. } = node {
            n += props.len() * std::mem::size_of::<(Box<str>, u32)>();
            n += props.iter().map(|(k, _)| k.len()).sum::<usize>();
        }
    }
    n += t.by_def.keys().map(|k| k.len() + 48).sum::<usize>();
    n += t
        .by_gvk
        .keys()
        .map(|(g, v, k)| g.len() + v.len() + k.len() + 96)
        .sum::<usize>();
    n
}

/// The keys that appear twice in one JSON object of `body`, as upstream's strict decoding reports
/// them (`duplicate field "spec.replicas"`). Scans the bytes without building a tree; stops at
/// the first syntax error (reporting what it found before).
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut s = Scanner {
        b: body,
        i: 0,
        out: Vec::new(),
    };
    let _ = s.scan();
    s.out
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    out: Vec<String>,
}

const MAX_DEPTH: usize = 10_000;

enum Frame {
    Object { path: String, seen: Vec<String> },
    Array { path: String, n: usize },
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }
    /// Scans one value, iteratively (no recursion: nesting depth costs heap, not stack).
    fn scan(&mut self) -> Option<()> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut path = String::new();
        loop {
            if stack.len() > MAX_DEPTH {
                return None;
            }
            match self.peek()? {
                b'{' => {
                    self.i += 1;
                    if self.peek()? == b'}' {
                        self.i += 1;
                    } else {
                        let mut f = Frame::Object {
                            path,
                            seen: Vec::new(),
                        };
                        path = self.key(&mut f)?;
                        stack.push(f);
                        continue;
                    }
                }
                b'[' => {
                    self.i += 1;
                    if self.peek()? == b']' {
                        self.i += 1;
                    } else {
                        let p = format!("{path}[0]");
                        stack.push(Frame::Array { path, n: 0 });
                        path = p;
                        continue;
                    }
                }
                b'"' => self.skip_string()?,
                _ => {
                    let start = self.i;
                    while self.i < self.b.len()
                        && !matches!(
                            self.b[self.i],
                            b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'
                        )
                    {
                        self.i += 1;
                    }
                    if self.i == start {
                        return None;
                    }
                }
            }
            // After a value: the next member or element, or close containers.
            loop {
                let Some(top) = stack.last_mut() else {
                    return Some(());
                };
                match (self.peek()?, &mut *top) {
                    (b',', Frame::Array { path: p, n }) => {
                        self.i += 1;
                        *n += 1;
                        path = format!("{p}[{n}]");
                        break;
                    }
                    (b',', f @ Frame::Object { .. }) => {
                        self.i += 1;
                        path = self.key(f)?;
                        break;
                    }
                    (b'}', Frame::Object { .. }) | (b']', Frame::Array { .. }) => {
                        self.i += 1;
                        stack.pop();
                    }
                    _ => return None,
                }
            }
        }
    }

    /// A member's key and colon; records duplicates; returns the member's path.
    fn key(&mut self, f: &mut Frame) -> Option<String> {
        let Frame::Object { path, seen } = f else {
            return None;
        };
        if self.peek()? != b'"' {
            return None;
        }
        let key = self.string()?;
        if self.peek()? != b':' {
            return None;
        }
        self.i += 1;
        let p = join(path, &key);
        if seen.contains(&key) {
            let msg = format!("duplicate field \"{p}\"");
            if !self.out.contains(&msg) {
                self.out.push(msg);
            }
        } else {
            seen.push(key);
        }
        Some(p)
    }

    /// Steps over a string value at `self.i` (on its opening quote) without decoding it.
    fn skip_string(&mut self) -> Option<()> {
        self.i += 1;
        loop {
            let rest = self.b.get(self.i..)?;
            let at = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
            if rest[at] == b'"' {
                self.i += at + 1;
                return Some(());
            }
            // A backslash: skip it and the character it escapes.
            self.i += at + 2;
        }
    }

    /// A string at `self.i` (on its opening quote), unescaped.
    fn string(&mut self) -> Option<String> {
        self.i += 1;
        // Most keys have no escapes: take them whole.
        let rest = self.b.get(self.i..)?;
        let end = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
        if rest[end] == b'"' {
            let s = std::str::from_utf8(&rest[..end]).ok()?.to_string();
            self.i += end + 1;
            return Some(s);
        }
        let mut out = Vec::new();
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.b.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = std::str::from_utf8(self.b.get(self.i..self.i + 4)?).ok()?;
                            self.i += 4;
                            let mut cp = u32::from_str_radix(hex, 16).ok()?;
                            if (0xD800..0xDC00).contains(&cp)
                                && self.b.get(self.i..self.i + 2) == Some(b"\\u")
                            {
                                let lo = std::str::from_utf8(self.b.get(self.i + 2..self.i + 6)?)
                                    .ok()?;
                                let lo = u32::from_str_radix(lo, 16).ok()?;
                                self.i += 6;
                                cp = 0x10000
                                    + ((cp - 0xD800) << 10)
                                    + (lo.wrapping_sub(0xDC00) & 0x3FF);
                            }
                            let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
                            let mut buf = [0; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }
}
