//! The resource registry: what the API server serves, as values. Discovery (legacy and
//! aggregated), routing, storage keys, OpenAPI paths and Table output are all driven from these
//! entries; per-kind behaviour comes from each entry's [`Strategy`] object. The built-in kinds
//! are listed in [`crate::kinds`]; CustomResourceDefinitions add entries at run time.

use crate::strategy::Strategy;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What a resource answers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbs {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    All,
    /// Only `create` (reviews and bindings: nothing is stored).
    CreateOnly,
    /// get, list, watch, create, update, patch, delete (no deletecollection: namespaces, nodes).
    NoCollectionDelete,
    /// get and list of computed objects (the metrics API: nothing is stored).
    ReadOnly,
}

const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NO_COLLECTION: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const CREATE: &[&str] = &["create"];
const READ_ONLY: &[&str] = &["get", "list"];

impl Verbs {
    pub fn list(self) -> &'static [&'static str] {
        match self {
            Verbs::All => ALL,
            Verbs::CreateOnly => CREATE,
            Verbs::NoCollectionDelete => NO_COLLECTION,
            Verbs::ReadOnly => READ_ONLY,
        }
    }
    pub fn allows(self, verb: &str) -> bool {
        self.list().contains(&verb)
    }
}

/// A subresource served under `<name>/<sub>`.
#[derive(Clone, Debug)]
pub struct Subresource {
    pub name: String,
    /// Group, version and kind of what it takes and returns.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub verbs: &'static [&'static str],
}

#[derive(Clone)]
pub struct Resource {
    /// API group; "" for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Verbs,
    pub subresources: Vec<Subresource>,
    /// Whether `status` is split from the rest (updates to the main resource keep the stored
    /// status; updates to `/status` change only it).
    pub has_status: bool,
    /// Group whose storage this resource shares (e.g. `events.k8s.io` events are core events);
    /// versions of one group share storage.
    pub storage_group: String,
    pub storage_plural: String,
    /// Whether this version is the group's preferred one.
    pub preferred: bool,
    /// Built in (false for CRD-defined resources).
    pub builtin: bool,
    pub strategy: Arc<dyn Strategy>,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.group, self.version, self.plural)
    }
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        self.verbs.list()
    }

    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Storage prefix of every object of this resource (ends with '/').
    pub fn prefix(&self) -> String {
        let g = if self.storage_group.is_empty() {
            "core"
        } else {
            &self.storage_group
        };
        format!("/registry/{g}/{}/", self.storage_plural)
    }

    /// Storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    /// Whether objects are stored (reviews are computed and never stored).
    pub fn stored(&self) -> bool {
        !matches!(self.verbs, Verbs::CreateOnly | Verbs::ReadOnly)
    }
}

/// The live registry: built-in kinds plus those CRDs add.
pub struct Registry {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    list: Vec<Arc<Resource>>,
    by_path: HashMap<(String, String, String), Arc<Resource>>,
}

impl Inner {
    fn index(&mut self) {
        self.by_path = self
            .list
            .iter()
            .map(|r| {
                (
                    (r.group.clone(), r.version.clone(), r.plural.clone()),
                    r.clone(),
                )
            })
            .collect();
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// Every built-in kind.
    pub fn builtin() -> Self {
        let mut inner = Inner {
            list: crate::kinds::builtin().into_iter().map(Arc::new).collect(),
            ..Default::default()
        };
        inner.index();
        Self {
            inner: RwLock::new(inner),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn all(&self) -> Vec<Arc<Resource>> {
        self.read().list.clone()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        self.read()
            .by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// The preferred version's entry of a kind in a group.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<Resource>> {
        let r = self.read();
        let mut it = r.list.iter().filter(|x| x.group == group && x.kind == kind);
        let first = it.next()?.clone();
        if first.preferred {
            return Some(first);
        }
        it.find(|x| x.preferred).cloned().or(Some(first))
    }

    /// The entry for an object's apiVersion and kind.
    pub fn by_gvk(&self, api_version: &str, kind: &str) -> Option<Arc<Resource>> {
        let (g, v) = api_version.split_once('/').unwrap_or(("", api_version));
        self.read()
            .list
            .iter()
            .find(|x| x.group == g && x.version == v && x.kind == kind)
            .cloned()
    }

    /// The groups served under `/apis` with their versions (preferred first), in discovery order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.read().list.iter().filter(|r| !r.group.is_empty()) {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) => {
                    if !vs.contains(&r.version) {
                        if r.preferred {
                            vs.insert(0, r.version.clone());
                        } else {
                            vs.push(r.version.clone());
                        }
                    }
                }
                None => out.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        out
    }

    /// Adds or replaces the entries of one group (a CRD's versions), keyed by group + plural.
    pub fn replace_group_resource(&self, group: &str, plural: &str, entries: Vec<Resource>) {
        let mut w = self.inner.write().unwrap_or_else(|e| e.into_inner());
        w.list.retain(|r| !(r.group == group && r.plural == plural));
        w.list.extend(entries.into_iter().map(Arc::new));
        w.index();
    }
}
