//! The built-in kinds, one entry each. Group, version, kind, plural and scope come from the
//! `k8s-openapi` type of the kind (which also checks the types of every field of a request
//! body); the rest (short names, categories, subresources, strategy) is listed here.

use crate::registry::{Resource, Subresource, Verbs};
use crate::strategy::{self as s, Strategy};
use k8s_openapi::api::{
    admissionregistration::v1 as admission, apps::v1 as apps, authentication::v1 as authn,
    authorization::v1 as authz, autoscaling::v1 as autoscaling1, autoscaling::v2 as autoscaling2,
    batch::v1 as batch, certificates::v1 as certs, coordination::v1 as coordination,
    core::v1 as core, discovery::v1 as discovery, events::v1 as events,
    flowcontrol::v1 as flowcontrol, networking::v1 as networking, node::v1 as node,
    policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use k8s_openapi::NamespaceResourceScope;
use std::any::TypeId;
use std::sync::Arc;

/// Builder of one entry.
struct B(Resource);

fn res<T>(strategy: impl Strategy + 'static) -> B
where
    T: k8s_openapi::Resource + serde::de::DeserializeOwned + 'static,
{
    let namespaced = TypeId::of::<T::Scope>() == TypeId::of::<NamespaceResourceScope>();
    B(Resource {
        group: T::GROUP.into(),
        version: T::VERSION.into(),
        kind: T::KIND.into(),
        plural: T::URL_PATH_SEGMENT.into(),
        singular: T::KIND.to_lowercase(),
        namespaced,
        short_names: vec![],
        categories: vec![],
        verbs: Verbs::All,
        subresources: vec![],
        has_status: false,
        storage_group: T::GROUP.into(),
        storage_plural: T::URL_PATH_SEGMENT.into(),
        preferred: true,
        builtin: true,
        strategy: Arc::new(s::Typed::<T, _>::new(strategy)),
    })
}

impl B {
    fn short(mut self, names: &[&str]) -> Self {
        self.0.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }
    fn all(mut self) -> Self {
        self.0.categories = vec!["all".into()];
        self
    }
    fn verbs(mut self, v: Verbs) -> Self {
        self.0.verbs = v;
        self
    }
    fn sub_as(
        mut self,
        name: &str,
        gvk: (&str, &str, &str),
        verbs: &'static [&'static str],
    ) -> Self {
        self.0.subresources.push(Subresource {
            name: name.into(),
            group: gvk.0.into(),
            version: gvk.1.into(),
            kind: gvk.2.into(),
            verbs,
        });
        self
    }
    fn sub(self, name: &str, verbs: &'static [&'static str]) -> Self {
        let (g, v, k) = (
            self.0.group.clone(),
            self.0.version.clone(),
            self.0.kind.clone(),
        );
        self.sub_as(name, (&g, &v, &k), verbs)
    }
    fn status(mut self) -> Self {
        self.0.has_status = true;
        self.sub("status", GET_PATCH_UPDATE)
    }
    fn scale(self) -> Self {
        self.sub_as("scale", ("autoscaling", "v1", "Scale"), GET_PATCH_UPDATE)
    }
    fn storage(mut self, group: &str) -> Self {
        self.0.storage_group = group.into();
        self
    }
    fn not_preferred(mut self) -> Self {
        self.0.preferred = false;
        self
    }
}

const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];
const CREATE: &[&str] = &["create"];
const GET_CREATE: &[&str] = &["create", "get"];
const PROXY: &[&str] = &["create", "delete", "get", "patch", "update"];

/// Every built-in kind, in the order discovery lists them.
pub fn builtin() -> Vec<Resource> {
    vec![
        res::<core::Binding>(s::Generic::default()).verbs(Verbs::CreateOnly),
        res::<core::ConfigMap>(s::ConfigMap).short(&["cm"]),
        res::<core::Endpoints>(s::Endpoints).short(&["ep"]),
        res::<core::Event>(s::Event::Core).short(&["ev"]),
        res::<core::LimitRange>(s::Generic::default()).short(&["limits"]),
        res::<core::Namespace>(s::Namespace)
            .short(&["ns"])
            .verbs(Verbs::NoCollectionDelete)
            .status()
            .sub("finalize", &["update"]),
        res::<core::Node>(s::Node).short(&["no"]).status().sub_as(
            "proxy",
            ("", "v1", "NodeProxyOptions"),
            PROXY,
        ),
        res::<core::PersistentVolumeClaim>(s::Pvc)
            .short(&["pvc"])
            .status(),
        res::<core::PersistentVolume>(s::Pv).short(&["pv"]).status(),
        res::<core::Pod>(s::Pod)
            .short(&["po"])
            .all()
            .sub_as("attach", ("", "v1", "PodAttachOptions"), GET_CREATE)
            .sub_as("binding", ("", "v1", "Binding"), CREATE)
            .sub("ephemeralcontainers", GET_PATCH_UPDATE)
            .sub_as("eviction", ("policy", "v1", "Eviction"), CREATE)
            .sub_as("exec", ("", "v1", "PodExecOptions"), GET_CREATE)
            .sub("log", &["get"])
            .sub_as(
                "portforward",
                ("", "v1", "PodPortForwardOptions"),
                GET_CREATE,
            )
            .sub_as("proxy", ("", "v1", "PodProxyOptions"), PROXY)
            .sub("resize", GET_PATCH_UPDATE)
            .status()
            .then(|b| b.0.subresources.sort_by(|a, c| a.name.cmp(&c.name))),
        res::<core::PodTemplate>(s::PodTemplate),
        res::<core::ReplicationController>(s::Workload::ReplicationController)
            .short(&["rc"])
            .all()
            .scale()
            .status(),
        res::<core::ResourceQuota>(s::ResourceQuota)
            .short(&["quota"])
            .status(),
        res::<core::Secret>(s::Secret),
        res::<core::ServiceAccount>(s::Generic::default())
            .short(&["sa"])
            .sub_as(
                "token",
                ("authentication.k8s.io", "v1", "TokenRequest"),
                CREATE,
            ),
        res::<core::Service>(s::Service)
            .short(&["svc"])
            .all()
            .sub_as("proxy", ("", "v1", "ServiceProxyOptions"), PROXY)
            .status(),
        res::<apiext::CustomResourceDefinition>(s::Crd)
            .short(&["crd", "crds"])
            .status(),
        res::<admission::MutatingWebhookConfiguration>(s::Generic::default()),
        res::<admission::ValidatingWebhookConfiguration>(s::Generic::default()),
        res::<admission::ValidatingAdmissionPolicy>(s::Generic::default()).status(),
        res::<admission::ValidatingAdmissionPolicyBinding>(s::Generic::default()),
        res::<apps::ControllerRevision>(s::ControllerRevision),
        res::<apps::DaemonSet>(s::Workload::DaemonSet)
            .short(&["ds"])
            .all()
            .status(),
        res::<apps::Deployment>(s::Workload::Deployment)
            .short(&["deploy"])
            .all()
            .scale()
            .status(),
        res::<apps::ReplicaSet>(s::Workload::ReplicaSet)
            .short(&["rs"])
            .all()
            .scale()
            .status(),
        res::<apps::StatefulSet>(s::Workload::StatefulSet)
            .short(&["sts"])
            .all()
            .scale()
            .status(),
        res::<authn::SelfSubjectReview>(s::Review).verbs(Verbs::CreateOnly),
        res::<authn::TokenReview>(s::Review).verbs(Verbs::CreateOnly),
        res::<authz::LocalSubjectAccessReview>(s::Review).verbs(Verbs::CreateOnly),
        res::<authz::SelfSubjectAccessReview>(s::Review).verbs(Verbs::CreateOnly),
        res::<authz::SelfSubjectRulesReview>(s::Review).verbs(Verbs::CreateOnly),
        res::<authz::SubjectAccessReview>(s::Review).verbs(Verbs::CreateOnly),
        res::<autoscaling2::HorizontalPodAutoscaler>(s::Hpa::V2)
            .short(&["hpa"])
            .all()
            .status(),
        res::<autoscaling1::HorizontalPodAutoscaler>(s::Hpa::V1)
            .short(&["hpa"])
            .all()
            .status()
            .not_preferred(),
        res::<batch::CronJob>(s::Workload::CronJob)
            .short(&["cj"])
            .all()
            .status(),
        res::<batch::Job>(s::Workload::Job).all().status(),
        res::<certs::CertificateSigningRequest>(s::Csr)
            .short(&["csr"])
            .sub("approval", GET_PATCH_UPDATE)
            .status(),
        res::<coordination::Lease>(s::Lease),
        res::<discovery::EndpointSlice>(s::EndpointSlice),
        res::<events::Event>(s::Event::V1)
            .short(&["ev"])
            .storage(""),
        res::<flowcontrol::FlowSchema>(s::Generic::default()).status(),
        res::<flowcontrol::PriorityLevelConfiguration>(s::Generic::default()).status(),
        res::<networking::IngressClass>(s::Generic::default()),
        res::<networking::Ingress>(s::Ingress)
            .short(&["ing"])
            .status(),
        res::<networking::NetworkPolicy>(s::Generic::default()).short(&["netpol"]),
        res::<node::RuntimeClass>(s::Generic::default()),
        res::<policy::PodDisruptionBudget>(s::Pdb)
            .short(&["pdb"])
            .status(),
        res::<rbac::ClusterRoleBinding>(s::Rbac::ClusterRoleBinding),
        res::<rbac::ClusterRole>(s::Rbac::ClusterRole),
        res::<rbac::RoleBinding>(s::Rbac::RoleBinding),
        res::<rbac::Role>(s::Rbac::Role),
        res::<scheduling::PriorityClass>(s::PriorityClass).short(&["pc"]),
        res::<storage::CSIDriver>(s::Generic::default()),
        res::<storage::CSINode>(s::Generic::default()),
        res::<storage::CSIStorageCapacity>(s::Generic::default()),
        res::<storage::StorageClass>(s::StorageClass).short(&["sc"]),
        res::<storage::VolumeAttachment>(s::Generic::default()).status(),
    ]
    .into_iter()
    .map(|b| b.0)
    .chain(crate::metrics_api::resources())
    .collect()
}

impl B {
    fn then(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
