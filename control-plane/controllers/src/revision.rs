//! ControllerRevisions for DaemonSets and StatefulSets (upstream's `pkg/controller/history`):
//! each distinct pod template is stored once as a revision named `<owner>-<hash>` whose `data`
//! is the patch `{"spec":{"template":{..., "$patch":"replace"}}}`, which is what
//! `kubectl rollout history` prints and `kubectl rollout undo` applies back to the owner.
//! Returning to an older template reuses its revision with a new, higher `revision` number.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{json, Value};

use crate::workload;

/// The label carrying the revision hash on pods and revisions.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// FNV-1a, 32 bits, as upstream's `ComputeHash` uses.
fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// Upstream's `rand.SafeEncodeString`: digits mapped to consonants and digits that cannot make
/// words.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// The hash of a revision's data (with the collision count, as upstream).
pub fn hash(data: &Value, collision_count: Option<i32>) -> String {
    // serde_json's map is ordered, so the encoding is canonical.
    let mut bytes = serde_json::to_vec(data).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// The patch a revision stores for a pod template.
pub fn data_for_template(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The revisions `owner` controls, oldest revision number first.
pub async fn list<K: Resource<DynamicType = ()>>(
    api: &Api<ControllerRevision>,
    owner: &K,
) -> Result<Vec<ControllerRevision>, kube::Error> {
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let mut out: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    out.sort_by_key(|r| r.revision);
    Ok(out)
}

/// Finds or creates the revision of `template` for `owner` and makes it the newest. Returns it
/// and the revisions as they stand after.
pub async fn ensure<K: Resource<DynamicType = ()>>(
    api: &Api<ControllerRevision>,
    owner: &K,
    template: &Value,
    labels: BTreeMap<String, String>,
    collision_count: Option<i32>,
    existing: &mut Vec<ControllerRevision>,
) -> Result<ControllerRevision, kube::Error> {
    let data = data_for_template(template);
    let max = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    if let Some(i) = existing
        .iter()
        .position(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
    {
        if existing[i].revision == max {
            return Ok(existing[i].clone());
        }
        // A rollback to an older template: that revision becomes the newest.
        let mut r = existing[i].clone();
        r.revision = max + 1;
        let r = api
            .replace(&r.name_any(), &PostParams::default(), &r)
            .await?;
        existing[i] = r.clone();
        existing.sort_by_key(|r| r.revision);
        return Ok(r);
    }
    let owner_name = owner.meta().name.clone().unwrap_or_default();
    let mut cc = collision_count;
    loop {
        let h = hash(&data, cc);
        let mut l = labels.clone();
        l.insert(HASH_LABEL.into(), h.clone());
        let rev = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(format!("{owner_name}-{h}")),
                namespace: owner.meta().namespace.clone(),
                labels: Some(l),
                owner_references: Some(vec![workload::controller_ref(owner)]),
                ..Default::default()
            },
            data: Some(RawExtension(data.clone())),
            revision: max + 1,
        };
        match api.create(&PostParams::default(), &rev).await {
            Ok(r) => {
                existing.push(r.clone());
                return Ok(r);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Same name: ours with equal data is reused, anything else is a collision.
                let other = api.get(&format!("{owner_name}-{h}")).await?;
                let ours = other
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == owner.meta().uid.as_ref());
                if ours && other.data.as_ref().map(|d| &d.0) == Some(&data) {
                    existing.push(other.clone());
                    return Ok(other);
                }
                cc = Some(cc.unwrap_or(0) + 1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The hash label of a revision.
pub fn hash_of(r: &ControllerRevision) -> String {
    r.labels().get(HASH_LABEL).cloned().unwrap_or_else(|| {
        let n = r.name_any();
        n.rsplit('-').next().unwrap_or_default().to_string()
    })
}

/// Deletes the oldest revisions beyond `limit` that no live pod uses (`in_use` names).
pub async fn truncate(
    api: &Api<ControllerRevision>,
    revisions: &[ControllerRevision],
    limit: i32,
    in_use: &(dyn Fn(&ControllerRevision) -> bool + Sync),
) -> Result<(), kube::Error> {
    let unused: Vec<&ControllerRevision> = revisions.iter().filter(|r| !in_use(r)).collect();
    let extra = unused.len() as i64 - i64::from(limit.max(0));
    for r in unused.into_iter().take(extra.max(0) as usize) {
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The pod template of `owner` as JSON.
pub fn template_json<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_safe_and_stable() {
        let d = data_for_template(&json!({"metadata": {"labels": {"a": "b"}}}));
        assert_eq!(d["spec"]["template"]["$patch"], "replace");
        let h = hash(&d, None);
        assert_eq!(h, hash(&d, None));
        assert_ne!(h, hash(&d, Some(1)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
