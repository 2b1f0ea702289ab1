//! The `kube` crate (kube-rs) against `skiff server --disable-agent`: typed CRUD, strategic
//! merge and server-side apply patches, and a watcher + reflector that follows creates,
//! updates and deletes (initial list, then watch with bookmarks).

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use skiff_tests::control_plane::ControlPlane;
use std::collections::BTreeMap;
use std::time::Duration;

fn cm(name: &str, v: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app".into(), "sk-kube".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".into(), v.into())])),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_crud_patch_and_reflector() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .unwrap();
    let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Reflector first, so it sees everything that follows.
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(
            cms.clone(),
            watcher::Config::default().labels("app=sk-kube"),
        ),
    )
    .applied_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                panic!("watcher error: {e}");
            }
        }
    });

    cms.create(&PostParams::default(), &cm("sk-a", "1"))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("sk-b", "1"))
        .await
        .unwrap();
    let err = cms
        .create(&PostParams::default(), &cm("sk-a", "1"))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("expected a 409 Status, got {other}"),
    }
    let patched = cms
        .patch(
            "sk-a",
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"data": {"w": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["w"], "2");
    let ssa = PatchParams::apply("sk-kube-test");
    let applied = cms
        .patch("sk-c", &ssa, &Patch::Apply(cm("sk-c", "3")))
        .await
        .unwrap();
    let mf = applied.metadata.managed_fields.unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("sk-kube-test"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let list = cms
        .list(&ListParams::default().labels("app=sk-kube"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 3);
    cms.delete("sk-b", &DeleteParams::default()).await.unwrap();

    // The reflector converges on sk-a (v=1, w=2) and sk-c, without sk-b.
    let mut ok = false;
    for _ in 0..100 {
        let mut names: Vec<String> = reader
            .state()
            .iter()
            .filter_map(|o| o.metadata.name.clone())
            .collect();
        names.sort();
        let a_w = reader
            .state()
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some("sk-a"))
            .and_then(|o| o.data.clone())
            .and_then(|d| d.get("w").cloned());
        if names == ["sk-a", "sk-c"] && a_w.as_deref() == Some("2") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "reflector state: {:?}", reader.state());
    task.abort();

    // Typed apps/v1 with defaults filled by the server.
    let deps: Api<Deployment> = Api::namespaced(client, "default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sk-d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
    .unwrap();
    let d = deps.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(1));
    let scale = deps.get_scale("sk-d").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    drop(cp);
}
