//! RuntimeClass handlers (run as root): the CRI config file maps handler names to runc-compatible
//! runtimes. A pod per handler (the default skiff-runtime, Debian's `runc`, and `crun` through a
//! wrapper, since crun 1.8 refuses this host's hybrid cgroup layout) runs a container that the
//! handler's own `state` reports running, answers ExecSync, and is gone from that runtime's root
//! after RemovePodSandbox. An unknown handler is InvalidArgument and leaves nothing behind.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use skiff_proto::cri;
use skiff_tests::cri_env::{pull_image, push_busybox, run_sandbox, start_container};
use skiff_tests::netns::link_exists;
use skiff_tests::{CriEnv, Registry};

const BRIDGE: &str = "skbr14";

/// `<runtime> --root <root> state <id>` as JSON, if the runtime knows the id.
fn runtime_state(bin: &Path, root: &Path, id: &str) -> Option<serde_json::Value> {
    let out = std::process::Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["state", id])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_runtime_handlers_from_config_file() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image_name = push_busybox(registry.addr(), "skbusybox:handlers").await;
    let mut env = CriEnv::start(BRIDGE, "10.244.14.0/24", registry.addr())
        .await
        .unwrap();

    // The config file: runc by name (found on PATH), crun through a wrapper script.
    let dir = env.dir().to_path_buf();
    let runc_root = dir.join("runc-root");
    let crun_root = dir.join("crun-root");
    let crun_bin = Path::new("/usr/bin/crun");
    let wrapper = dir.join("crun-wrapper");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\n# crun 1.8 refuses hybrid cgroups: run it where the v2 mount is gone.\n\
         exec unshare -m --propagation private sh -c 'if grep -q \" /sys/fs/cgroup/unified \" /proc/self/mountinfo; then umount /sys/fs/cgroup/unified; fi; exec /usr/bin/crun \"$@\"' crun \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.join("cri.toml");
    std::fs::write(
        &conf,
        format!(
            "[runtimes.runc]\nbinary = \"runc\"\nroot = \"{}\"\n\n[runtimes.crun]\nbinary = \"{}\"\nroot = \"{}\"\n",
            runc_root.display(),
            wrapper.display(),
            crun_root.display()
        ),
    )
    .unwrap();
    env.cfg = env.cfg.clone().load_file(&conf).unwrap();
    env.restart().await.unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();

    let status = rt
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.clone())
        .collect();
    for want in ["", "skiff", "runc", "crun"] {
        assert!(names.iter().any(|n| n == want), "{want:?} in {names:?}");
    }

    pull_image(&mut img, &image_name).await;

    let runc_bin = which("runc");
    let mut handlers = vec![
        (
            "",
            env.cfg.runtime_bin.clone(),
            env.cfg.runtime_root.clone(),
        ),
        ("runc", runc_bin, runc_root.clone()),
    ];
    if crun_bin.exists() {
        handlers.push(("crun", crun_bin.to_path_buf(), crun_root.clone()));
    }
    for (i, (handler, bin, root)) in handlers.into_iter().enumerate() {
        let name = format!("skh{i}");
        let sb_cfg = env.sandbox_config(&name);
        let sb = run_sandbox(&mut rt, &sb_cfg, handler).await;
        let st = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sb.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(st.runtime_handler, handler);
        let script = "echo started; exec sleep 300";
        let main = CriEnv::shell_container("main", &image_name, script);
        let ct = start_container(&mut rt, &sb, &sb_cfg, main).await;

        // The handler's runtime itself holds the container.
        let state = runtime_state(&bin, &root, &ct)
            .unwrap_or_else(|| panic!("{handler:?}: {} has no state for {ct}", bin.display()));
        assert_eq!(state["status"], "running", "{handler:?}: {state}");
        let pid = state["pid"].as_i64().unwrap();
        let cs = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: ct.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(cs.state, cri::ContainerState::ContainerRunning as i32);
        let out = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: ct.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo $((6*7)); cat /proc/1/cmdline".into(),
                ],
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("{handler:?}: {e}"))
            .into_inner();
        assert_eq!(out.exit_code, 0, "{handler:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("42\n") && stdout.contains("sleep"),
            "{handler:?}: {stdout}"
        );
        assert!(Path::new(&format!("/proc/{pid}")).exists());

        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
        assert!(
            runtime_state(&bin, &root, &ct).is_none(),
            "{handler:?}: the runtime still knows {ct}"
        );
        assert!(!root.join(&ct).exists(), "{handler:?}: state dir left");
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{handler:?}: process left"
        );
    }

    // An unknown handler: a clear InvalidArgument, and nothing made.
    let before = std::fs::read_dir(&env.cfg.netns_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(env.sandbox_config("sknope")),
            runtime_handler: "sknope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("no runtime handler \"sknope\"") && err.message().contains("runc"),
        "{}",
        err.message()
    );
    let list = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(list.is_empty(), "{list:?}");
    let after = std::fs::read_dir(&env.cfg.netns_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(before, after, "a netns was left");
    assert!(link_exists(BRIDGE));
}

fn which(name: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH (scripts/deps.sh test installs it)"))
}
