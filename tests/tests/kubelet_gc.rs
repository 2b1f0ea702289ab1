//! Image and dead-container garbage collection on a real node. The thresholds are set so the
//! host's disk is over them (high 1%, low 0%), with short GC periods: an image no container
//! uses any more is removed, the image of a running pod is kept. A crash-looping container
//! keeps one dead instance (`--maximum-dead-containers-per-container=1`).

use skiff_proto::cri;
use skiff_tests::control_plane::ControlPlane;
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

fn apply(c: &ControlPlane, yaml: &str) {
    let o = c.with_stdin(&["apply", "-f", "-"], yaml);
    assert!(o.ok, "{}", o.stderr);
}

fn images(rt: &tokio::runtime::Runtime, c: &ControlPlane) -> Vec<String> {
    rt.block_on(async {
        let (_, mut img) = skiff_cri::client::connect(&c.cri_socket())
            .await
            .expect("connecting to the cluster's CRI socket");
        img.list_images(cri::ListImagesRequest { filter: None })
            .await
            .expect("ListImages")
            .into_inner()
            .images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect()
    })
}

fn containers_of(rt: &tokio::runtime::Runtime, c: &ControlPlane, uid: &str) -> Vec<cri::Container> {
    rt.block_on(async {
        let (mut r, _) = skiff_cri::client::connect(&c.cri_socket())
            .await
            .expect("connecting to the cluster's CRI socket");
        let mut sel = HashMap::new();
        sel.insert("io.kubernetes.pod.uid".to_string(), uid.to_string());
        r.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: sel,
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
    })
}

#[test]
fn unused_images_and_dead_containers_are_collected() {
    let c = ControlPlane::start_cluster_with(&[
        "--image-gc-high-threshold=1",
        "--image-gc-low-threshold=0",
        "--minimum-image-ttl-duration=5s",
        "--image-gc-period=3s",
        "--container-gc-period=3s",
        "--maximum-dead-containers-per-container=1",
    ]);
    let busybox = c.agent.as_ref().unwrap().busybox.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A second image, distinct from the busybox the running pod uses.
    let registry = busybox.split('/').next().unwrap().to_string();
    let base = skiff_tests::image::build_busybox_image().expect("busybox image");
    let other = skiff_tests::image::with_layer(&base, &[("sk-gc", 0o644, 0, b"gc\n")])
        .expect("image with a layer");
    rt.block_on(skiff_tests::image::push(
        &registry,
        "sk-gc-unused:v1",
        &other,
    ))
    .expect("push");
    let unused = format!("{registry}/sk-gc-unused:v1");

    apply(
        &c,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-gc-keep}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: {busybox}, command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-gc-once}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: {unused}, command: ["cat", "/sk-gc"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-gc-crash}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: {busybox}, command: ["sh", "-c", "echo run-$(date +%s%N); exit 1"]}}
"#
        ),
    );
    c.wait_for("sk-gc-once Succeeded", WAIT, || {
        c.kubectl(&["get", "pod", "sk-gc-once", "-o", "jsonpath={.status.phase}"])
            .stdout
            == "Succeeded"
    });
    // While its (exited) container exists the image is in use.
    assert!(images(&rt, &c).contains(&unused), "{:?}", images(&rt, &c));
    c.ok(&["delete", "pod", "sk-gc-once", "--grace-period=1"]);
    c.wait_for("the unused image to be collected", WAIT, || {
        !images(&rt, &c).contains(&unused)
    });
    // The running pod's image stays, and the pod keeps running.
    assert!(images(&rt, &c).contains(&busybox), "{:?}", images(&rt, &c));
    assert_eq!(
        c.ok(&["get", "pod", "sk-gc-keep", "-o", "jsonpath={.status.phase}"]),
        "Running"
    );

    // Dead containers: after two restarts the crash-looping container keeps one dead
    // instance (plus the current one), and `logs --previous` still reads it.
    let uid = c.ok(&[
        "get",
        "pod",
        "sk-gc-crash",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    c.wait_for("sk-gc-crash to restart twice", WAIT, || {
        c.kubectl(&[
            "get",
            "pod",
            "sk-gc-crash",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
        .stdout
        .parse::<u32>()
        .unwrap_or(0)
            >= 2
    });
    c.wait_for("dead containers to be collected", WAIT, || {
        let exited = containers_of(&rt, &c, &uid)
            .iter()
            .filter(|x| x.state == cri::ContainerState::ContainerExited as i32)
            .count();
        exited <= 1
    });
    // One dead instance is kept: the pod status's lastState, which `logs --previous` reads
    // (while the container runs and while it waits in back-off alike).
    let exited = containers_of(&rt, &c, &uid)
        .iter()
        .filter(|x| x.state == cri::ContainerState::ContainerExited as i32)
        .count();
    assert!(exited >= 1, "every dead instance was removed");
    c.wait_for(
        "logs --previous of the crash-looping container",
        WAIT,
        || {
            let out = c.kubectl(&["logs", "sk-gc-crash", "--previous"]);
            out.ok && out.stdout.contains("run-")
        },
    );
    let restarts: u32 = c
        .ok(&[
            "get",
            "pod",
            "sk-gc-crash",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
        .parse()
        .unwrap_or(0);
    assert!(restarts >= 2, "restart count went back to {restarts}");
    c.ok(&[
        "delete",
        "pod",
        "sk-gc-keep",
        "sk-gc-crash",
        "--grace-period=1",
    ]);
}
