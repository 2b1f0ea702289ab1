//! CustomResourceDefinition versions as OpenAPI definitions.

use crate::model::{META, V3_REF};
use crate::{Error, Resource};
use serde_json::{json, Value};

/// One served version of a CustomResourceDefinition.
#[derive(Clone, Debug, PartialEq)]
pub struct CrdSchema {
    /// What the API server serves for it (all verbs; `status`/`scale` when enabled).
    pub resource: Resource,
    /// Upstream's definition name: the group reversed, the version, the kind
    /// (`com.example.stable.v1.CronTab`).
    pub definition: String,
    /// The version's `openAPIV3Schema` (OpenAPI 3.0 form) with `apiVersion`, `kind`, `metadata`
    /// and `x-kubernetes-group-version-kind` added.
    pub schema: Value,
}

impl CrdSchema {
    /// The `<Kind>List` definition (swagger 2.0 form).
    pub(crate) fn list_schema(&self) -> Value {
        json!({
            "description": format!("{}List is a list of {}", self.resource.kind, self.resource.kind),
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "items": {"type": "array", "items": {"$ref": format!("#/definitions/{}", self.definition)}},
                "kind": {"type": "string"},
                "metadata": {"$ref": format!("#/definitions/{META}ListMeta")}
            },
            "required": ["items"],
            "x-kubernetes-group-version-kind": [{"group": self.resource.group, "version": self.resource.version, "kind": format!("{}List", self.resource.kind)}]
        })
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, Error> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .ok_or_else(|| Error::InvalidCrd(format!("no {}", path.join("."))))
}

/// The served versions of `crd` (an `apiextensions.k8s.io/v1` CustomResourceDefinition in JSON
/// form) as definitions. A version without a schema gets one that preserves unknown fields.
pub fn crd_schemas(crd: &Value) -> Result<Vec<CrdSchema>, Error> {
    let group = str_at(crd, &["spec", "group"])?;
    let kind = str_at(crd, &["spec", "names", "kind"])?;
    let plural = str_at(crd, &["spec", "names", "plural"])?;
    let namespaced = crd["spec"]["scope"].as_str() != Some("Cluster");
    let versions = crd["spec"]["versions"]
        .as_array()
        .ok_or_else(|| Error::InvalidCrd("no spec.versions".into()))?;
    let reversed: Vec<&str> = group.split('.').rev().collect();
    let mut out = Vec::new();
    for v in versions {
        if v["served"] == false {
            continue;
        }
        let version = str_at(v, &["name"])?;
        let mut schema = match &v["schema"]["openAPIV3Schema"] {
            Value::Object(_) => v["schema"]["openAPIV3Schema"].clone(),
            _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        };
        let Value::Object(m) = &mut schema else {
            return Err(Error::InvalidCrd(format!(
                "version {version}: schema is not an object"
            )));
        };
        let props = m
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| {
                Error::InvalidCrd(format!("version {version}: properties is not an object"))
            })?;
        props.insert(
            "apiVersion".into(),
            json!({"description": "APIVersion defines the versioned schema of this representation of an object.", "type": "string"}),
        );
        props.insert(
            "kind".into(),
            json!({"description": "Kind is a string value representing the REST resource this object represents.", "type": "string"}),
        );
        props.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": format!("{V3_REF}{META}ObjectMeta")}], "description": "Standard object's metadata."}),
        );
        m.entry("type").or_insert_with(|| "object".into());
        m.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": group, "version": version, "kind": kind}]),
        );
        let mut subresources = Vec::new();
        for s in ["status", "scale"] {
            if v["subresources"].get(s).is_some() {
                subresources.push(s.to_string());
            }
        }
        let mut resource = Resource::new(group, version, kind, plural, namespaced);
        resource.subresources = subresources;
        out.push(CrdSchema {
            resource,
            definition: format!("{}.{version}.{kind}", reversed.join(".")),
            schema,
        });
    }
    Ok(out)
}
