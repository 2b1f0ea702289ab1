//! Image pulls (run as root): bearer-token and basic auth, image indexes resolved by platform,
//! hosts.toml mirrors, concurrent pulls of one image deduplicated, and a `skiff cri` killed with
//! SIGKILL in the middle of a blob leaves no half image behind. Uses an in-memory registry
//! (`cri_env::fake_registry`); no pods, so no bridge.

use std::sync::atomic::Ordering;
use std::time::Duration;

use skiff_proto::cri;
use skiff_tests::cri_env::fake_registry::{Auth, FakeRegistry};
use skiff_tests::cri_env::ImageClient;
use skiff_tests::image::{Blob, MEDIA_CONFIG, MEDIA_MANIFEST};
use skiff_tests::{build_busybox_image, workspace_bin, CriEnv, OciImage};

/// The busybox image with a label in its config (a distinct image id, same layer).
fn variant(base: &OciImage, label: &str) -> OciImage {
    let mut cfg: serde_json::Value = serde_json::from_slice(&base.config.data).unwrap();
    cfg["config"]["Labels"] = serde_json::json!({ "sk.variant": label });
    let config = Blob::new(MEDIA_CONFIG, serde_json::to_vec(&cfg).unwrap());
    let layer = &base.layers[0];
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.data.len()}],
    });
    OciImage {
        config,
        layers: base.layers.clone(),
        manifest: Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest).unwrap()),
    }
}

async fn pull(
    img: &mut ImageClient,
    name: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: name.into(),
            ..Default::default()
        }),
        auth,
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

async fn listed(img: &mut ImageClient) -> Vec<cri::Image> {
    img.list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pulls_with_auth_indexes_mirrors_and_dedup() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_cri=info".into()))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let base = build_busybox_image().unwrap();
    let env = CriEnv::start("skbr9", "10.244.9.0/24", "127.0.0.1:1")
        .await
        .unwrap();
    let (_rt, mut img) = env.clients().await.unwrap();

    // Concurrent pulls of one image share one download (fresh store: the layer is fetched).
    let open = FakeRegistry::start(Auth::None).await.unwrap();
    let a = variant(&base, "dedup");
    open.add("sk/dedup", "1", &a);
    open.blob_delay_ms.store(300, Ordering::SeqCst);
    let name = format!("{}/sk/dedup:1", open.addr);
    let (mut i1, mut i2) = (img.clone(), img.clone());
    let (r1, r2) = tokio::join!(pull(&mut i1, &name, None), pull(&mut i2, &name, None));
    assert_eq!(r1.unwrap(), a.config.digest);
    assert_eq!(r2.unwrap(), a.config.digest);
    assert_eq!(
        open.blob_gets(&a.layers[0].digest),
        1,
        "layer downloaded once"
    );
    open.blob_delay_ms.store(0, Ordering::SeqCst);

    // Bearer token auth: refused without credentials, accepted with them.
    let bearer = FakeRegistry::start(Auth::Bearer {
        user: "skuser".into(),
        password: "skpass".into(),
    })
    .await
    .unwrap();
    let b = variant(&base, "bearer");
    bearer.add("sk/private", "1", &b);
    let name = format!("{}/sk/private:1", bearer.addr);
    let err = pull(&mut img, &name, None).await.unwrap_err();
    assert!(!err.message().is_empty(), "{err}");
    let auth = cri::AuthConfig {
        username: "skuser".into(),
        password: "skpass".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut img, &name, Some(auth)).await.unwrap(),
        b.config.digest
    );

    // Basic auth with the docker-config style `auth` field.
    let basic = FakeRegistry::start(Auth::Basic {
        user: "sku".into(),
        password: "skp".into(),
    })
    .await
    .unwrap();
    let c = variant(&base, "basic");
    basic.add("sk/basic", "1", &c);
    let name = format!("{}/sk/basic:1", basic.addr);
    assert!(pull(&mut img, &name, None).await.is_err());
    let auth = cri::AuthConfig {
        auth: "c2t1OnNrcA==".into(),
        ..Default::default()
    }; // sku:skp
    assert_eq!(
        pull(&mut img, &name, Some(auth)).await.unwrap(),
        c.config.digest
    );

    // An image index: the linux/amd64 entry is chosen.
    let amd = variant(&base, "amd64");
    let arm = variant(&base, "arm64");
    open.add_index("sk/multi", "1", &[("arm64", &arm), ("amd64", &amd)]);
    let name = format!("{}/sk/multi:1", open.addr);
    assert_eq!(
        pull(&mut img, &name, None).await.unwrap(),
        amd.config.digest
    );

    // A mirror from hosts.toml: the upstream does not exist, the mirror serves it; the image is
    // recorded under the name asked for.
    let m = variant(&base, "mirror");
    open.add("sk/mirrored", "1", &m);
    let upstream = "sk-upstream.invalid:5999";
    let dir = env.cfg.registry_config_dir.join(upstream);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"https://{upstream}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            open.addr
        ),
    )
    .unwrap();
    let name = format!("{upstream}/sk/mirrored:1");
    assert_eq!(pull(&mut img, &name, None).await.unwrap(), m.config.digest);
    let images = listed(&mut img).await;
    let rec = images
        .iter()
        .find(|i| i.id == m.config.digest)
        .expect("mirrored image listed");
    assert_eq!(rec.repo_tags, vec![name.clone()]);
    // Pull-only mirrors (no resolve) are skipped for tags: with only that mirror, it fails.
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"https://{upstream}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            open.addr
        ),
    )
    .unwrap();
    let m2 = variant(&base, "mirror2");
    open.add("sk/mirrored", "2", &m2);
    assert!(pull(&mut img, &format!("{upstream}/sk/mirrored:2"), None)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pull_killed_mid_blob_leaves_no_image() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let skiff = workspace_bin("skiff");
    assert!(
        skiff.exists(),
        "build the skiff binary first: cargo build --bins"
    );
    let base = build_busybox_image().unwrap();
    let reg = FakeRegistry::start(Auth::None).await.unwrap();
    let k = variant(&base, "killed");
    reg.add("sk/killed", "1", &k);
    reg.stall_blobs.store(true, Ordering::SeqCst);
    let tmp = tempfile::Builder::new()
        .prefix("sk-cri-kill-")
        .tempdir()
        .unwrap();
    let sock = tmp.path().join("cri.sock");
    let start = || {
        let mut cmd = std::process::Command::new(&skiff);
        cmd.args(["cri", "--address"])
            .arg(&sock)
            .arg("--root")
            .arg(tmp.path().join("state"))
            .arg("--runtime-root")
            .arg(tmp.path().join("runtime"))
            .arg("--netns-dir")
            .arg(tmp.path().join("netns"))
            .arg("--runtime")
            .arg(workspace_bin("skiff-runtime"))
            .arg("--monitor")
            .arg(workspace_bin("skiff-monitor"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("cri.log")).unwrap());
        cmd.spawn().unwrap()
    };
    let connect = || async {
        for _ in 0..300 {
            if sock.exists() {
                if let Ok(c) = skiff_cri::client::connect(&sock).await {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("skiff cri did not come up");
    };
    let mut server = start();
    let (_, img) = connect().await;
    let name = format!("{}/sk/killed:1", reg.addr);
    let mut i2 = img.clone();
    let n2 = name.clone();
    let pulling = tokio::spawn(async move { pull(&mut i2, &n2, None).await });
    // Wait until a blob is being written, then SIGKILL the server.
    let blobs = tmp.path().join("state/images/blobs/sha256");
    let mut partial = None;
    for _ in 0..500 {
        partial = std::fs::read_dir(&blobs)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path());
        if partial.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let partial = partial.unwrap_or_else(|| {
        panic!(
            "no partial blob appeared; server log:\n{}",
            std::fs::read_to_string(tmp.path().join("cri.log")).unwrap_or_default()
        )
    });
    // The fetch runs in a `skiff cri-fetch` child of the server; it must die with it.
    let helpers = children_of(server.id() as i32);
    assert!(
        helpers
            .iter()
            .any(|p| std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.windows(9).any(|w| w == b"cri-fetch"))
                .unwrap_or(false)),
        "no fetch helper among the server's children {helpers:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    server.wait().unwrap();
    assert!(
        pulling.await.unwrap().is_err(),
        "the interrupted pull failed"
    );
    for _ in 0..100 {
        if helpers.iter().all(|p| !alive_not_zombie(*p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        helpers.iter().all(|p| !alive_not_zombie(*p)),
        "the fetch helper outlived the killed server"
    );

    // Restarted on the same state: no image, no partial blob; a new pull completes.
    reg.stall_blobs.store(false, Ordering::SeqCst);
    let mut server = start();
    let (_, mut img2) = connect().await;
    drop(img);
    assert!(listed(&mut img2).await.is_empty(), "no half image listed");
    assert!(!partial.exists(), "partial blob removed at start");
    assert_eq!(pull(&mut img2, &name, None).await.unwrap(), k.config.digest);
    assert_eq!(listed(&mut img2).await.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    server.wait().unwrap();
}

/// PIDs whose parent is `pid` (from /proc/*/stat).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

fn alive_not_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s[s.rfind(')')? + 2..].chars().next())
        .is_some_and(|state| state != 'Z' && state != 'X')
}
