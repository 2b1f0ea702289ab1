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

/// Maps looked up by `&str` pairs and triples, without building an owned key per lookup.
type ByPair = HashMap<String, HashMap<String, Arc<Resource>>>;
type ByTriple = HashMap<String, ByPair>;

fn pair<'a>(m: &'a ByPair, a: &str, b: &str) -> Option<&'a Arc<Resource>> {
    m.get(a)?.get(b)
}

#[derive(Default)]
struct Inner {
    list: Vec<Arc<Resource>>,
    /// group -> version -> plural.
    by_path: ByTriple,
    /// group -> kind: the preferred version's entry (else the first listed).
    by_kind: ByPair,
    /// group -> version -> kind: the first entry listed.
    by_gvk: ByTriple,
}

impl Inner {
    /// Rebuilds the lookup maps from `list` (at start-up and when a CRD changes).
    fn index(&mut self) {
        let (mut by_path, mut by_kind, mut by_gvk) =
            (ByTriple::new(), ByPair::new(), ByTriple::new());
        for r in &self.list {
            let (g, v) = (&r.group, &r.version);
            by_path
                .entry(g.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(r.plural.clone(), r.clone());
            by_gvk
                .entry(g.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .entry(r.kind.clone())
                .or_insert_with(|| r.clone());
            let kinds = by_kind.entry(g.clone()).or_default();
            match kinds.get(&r.kind) {
                Some(have) if have.preferred || !r.preferred => {}
                _ => {
                    kinds.insert(r.kind.clone(), r.clone());
                }
            }
        }
        (self.by_path, self.by_kind, self.by_gvk) = (by_path, by_kind, by_gvk);
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
        pair(self.read().by_path.get(group)?, version, plural).cloned()
    }

    /// The preferred version's entry of a kind in a group.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<Resource>> {
        pair(&self.read().by_kind, group, kind).cloned()
    }

    /// The entry for an object's apiVersion and kind.
    pub fn by_gvk(&self, api_version: &str, kind: &str) -> Option<Arc<Resource>> {
        let (g, v) = api_version.split_once('/').unwrap_or(("", api_version));
        pair(self.read().by_gvk.get(g)?, v, kind).cloned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_the_preferred_version_and_follow_replaced_groups() {
        let reg = Registry::builtin();
        let hpa = reg
            .by_kind("autoscaling", "HorizontalPodAutoscaler")
            .unwrap();
        assert_eq!(
            hpa.version, "v2",
            "the preferred version, not the first listed"
        );
        let v1 = reg
            .by_gvk("autoscaling/v1", "HorizontalPodAutoscaler")
            .unwrap();
        assert_eq!(v1.version, "v1");
        let cm = reg.by_gvk("v1", "ConfigMap").unwrap();
        assert_eq!((cm.group.as_str(), cm.plural.as_str()), ("", "configmaps"));
        let found = reg
            .find("autoscaling", "v1", "horizontalpodautoscalers")
            .unwrap();
        assert!(!found.preferred);
        assert!(reg.find("", "v1", "nope").is_none());
        assert!(reg.find("nope.example.com", "v1", "configmaps").is_none());
        assert!(reg.by_kind("", "Nope").is_none());

        // A CRD's versions: v1beta1 listed first, v1 preferred.
        let mk = |version: &str, preferred: bool| {
            let mut r = (*cm).clone();
            r.group = "sk.example.com".into();
            r.version = version.into();
            r.plural = "widgets".into();
            r.kind = "Widget".into();
            r.preferred = preferred;
            r
        };
        reg.replace_group_resource(
            "sk.example.com",
            "widgets",
            vec![mk("v1beta1", false), mk("v1", true)],
        );
        assert_eq!(
            reg.by_kind("sk.example.com", "Widget").unwrap().version,
            "v1"
        );
        assert!(reg.find("sk.example.com", "v1beta1", "widgets").is_some());
        reg.replace_group_resource("sk.example.com", "widgets", vec![mk("v2", true)]);
        assert!(reg.find("sk.example.com", "v1", "widgets").is_none());
        assert_eq!(
            reg.by_kind("sk.example.com", "Widget").unwrap().version,
            "v2"
        );
        assert!(reg.by_gvk("sk.example.com/v2", "Widget").is_some());
    }
}
