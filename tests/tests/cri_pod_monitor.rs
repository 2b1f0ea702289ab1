//! The pod monitor (run as root): one `skiff-monitor` process per pod, the sandbox's pause, runs
//! and monitors all of the pod's containers (their parent, logs, exit codes, log reopening), and
//! keeps doing so across a CRI server restart, when it also takes new containers. A pod that
//! shares a PID namespace has two: the pod monitor and its child, the pause (PID 1 of the pod).
//! Bridge `skbr27`, 10.244.27.0/24.

use std::time::Duration;

use skiff_proto::cri;
use skiff_tests::cri_env::{pull_image, push_busybox, run_sandbox, start_container, wait_exited};
use skiff_tests::{CriEnv, Registry};

/// PIDs whose command line contains every one of `needles`.
fn pids_with(needles: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            needles.iter().all(|n| cmd.contains(n))
        })
        .collect()
}

fn ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(") ")
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn monitor_pid(env: &CriEnv, id: &str) -> i32 {
    std::fs::read_to_string(
        env.cfg
            .state_dir
            .join("containers")
            .join(id)
            .join("monitor/monitor.pid"),
    )
    .unwrap_or_else(|e| panic!("monitor.pid of {id}: {e}"))
    .trim()
    .parse()
    .unwrap()
}

async fn info_pid(
    rt: &mut skiff_tests::cri_env::RuntimeClient,
    sandbox: Option<&str>,
    ct: Option<&str>,
) -> i32 {
    let info = match (sandbox, ct) {
        (Some(sb), _) => {
            rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sb.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner()
            .info
        }
        (_, Some(ct)) => {
            rt.container_status(cri::ContainerStatusRequest {
                container_id: ct.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner()
            .info
        }
        _ => unreachable!(),
    };
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

async fn wait_for_log(path: &std::path::Path, needle: &str) -> String {
    for _ in 0..450 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{} never got {needle:?}: {:?}",
        path.display(),
        std::fs::read_to_string(path)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_monitor_process_per_pod() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = push_busybox(registry.addr(), "busybox:latest").await;
    let mut env = CriEnv::start("skbr27", "10.244.27.0/24", registry.addr())
        .await
        .unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();
    pull_image(&mut img, &image).await;
    let sb_config = env.sandbox_config("skpm");
    let sb = run_sandbox(&mut rt, &sb_config, "").await;
    let pause = info_pid(&mut rt, Some(&sb), None).await;
    let logs = env.log_dir("skpm");

    let talker = CriEnv::shell_container(
        "sktalk",
        &image,
        "i=0; while :; do echo line$i; i=$((i+1)); sleep 0.1; done",
    );
    let a = start_container(&mut rt, &sb, &sb_config, talker).await;
    let quitter = CriEnv::shell_container("skquit", &image, "echo bye; echo oops >&2; exit 7");
    let b = start_container(&mut rt, &sb, &sb_config, quitter).await;
    let sleeper = CriEnv::shell_container("sksleep", &image, "sleep 3600");
    let c = start_container(&mut rt, &sb, &sb_config, sleeper).await;

    // One process: the pause monitors all three and is their parent.
    for id in [&a, &b, &c] {
        assert_eq!(monitor_pid(&env, id), pause, "monitor of {id}");
    }
    assert!(
        pids_with(&["skiff-monitor", "container"]).iter().all(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            ![&a, &b, &c].iter().any(|id| cmd.contains(id.as_str()))
        }),
        "a per-container monitor runs for this pod"
    );
    let c_pid = info_pid(&mut rt, None, Some(&c)).await;
    assert_eq!(
        ppid(c_pid),
        pause,
        "the container's init is the pod monitor's child"
    );

    let st = wait_exited(&mut rt, &b).await;
    assert_eq!(st.exit_code, 7);
    assert_eq!(st.reason, "Error");
    let blog = wait_for_log(&logs.join("skquit/0.log"), "stdout F bye").await;
    assert!(blog.contains(" stderr F oops"), "{blog}");

    // ReopenContainerLog goes to the pod monitor (SIGUSR1 reopens every log of the pod).
    let alog = logs.join("sktalk/0.log");
    wait_for_log(&alog, "stdout F line3").await;
    std::fs::rename(&alog, alog.with_extension("log.1")).unwrap();
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: a.clone(),
    })
    .await
    .unwrap();
    wait_for_log(&alog, "stdout F line").await;

    // The CRI server restarts: the pod monitor and its containers go on, and it takes new
    // containers from the restarted server.
    drop((rt, img));
    env.stop().await.unwrap();
    env.restart().await.unwrap();
    let (mut rt, _img) = env.clients().await.unwrap();
    let sbs = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sb.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(sbs.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(info_pid(&mut rt, Some(&sb), None).await, pause);
    let late = CriEnv::shell_container("sklate", &image, "echo late; exit 3");
    let d = start_container(&mut rt, &sb, &sb_config, late).await;
    assert_eq!(monitor_pid(&env, &d), pause);
    assert_eq!(wait_exited(&mut rt, &d).await.exit_code, 3);
    wait_for_log(&logs.join("sklate/0.log"), "stdout F late").await;
    let size = std::fs::metadata(&alog).unwrap().len();
    for _ in 0..100 {
        if std::fs::metadata(&alog).unwrap().len() > size {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        std::fs::metadata(&alog).unwrap().len() > size,
        "the talker's log stopped growing after the restart"
    );

    // Stopping works as ever; the pod's processes are gone after StopPodSandbox.
    rt.stop_container(cri::StopContainerRequest {
        container_id: c.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    let st = wait_exited(&mut rt, &c).await;
    assert_eq!(st.exit_code, 137, "sleep as PID 1 ignores SIGTERM: killed");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sb.clone(),
    })
    .await
    .unwrap();
    let code = wait_exited(&mut rt, &a).await.exit_code;
    assert!(code == 137 || code == 143, "talker exit code {code}");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sb })
        .await
        .unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pause}")).exists()
            || std::fs::read_to_string(format!("/proc/{pause}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true),
        "the pod monitor outlived StopPodSandbox"
    );
    assert!(pids_with(&["skiff-monitor", "pause", "skpm"]).is_empty());
}

fn ns(kind: &str, pid: i32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// `shareProcessNamespace`: the pause is PID 1 of the pod's PID namespace, a child of the pod
/// monitor, which stays in the host's and runs the containers (in the pod's PID namespace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_monitor_of_a_shared_pid_namespace() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = push_busybox(registry.addr(), "busybox:latest").await;
    let env = CriEnv::start("skbr28", "10.244.28.0/24", registry.addr())
        .await
        .unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();
    pull_image(&mut img, &image).await;
    let mut sb_config = env.sandbox_config("skpmpid");
    sb_config.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let sb = run_sandbox(&mut rt, &sb_config, "").await;
    let pause = info_pid(&mut rt, Some(&sb), None).await;
    let mut cts = Vec::new();
    for name in ["skpma", "skpmb"] {
        let mut cfg = CriEnv::shell_container(name, &image, "echo up; sleep 3600");
        cfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        cts.push(start_container(&mut rt, &sb, &sb_config, cfg).await);
    }
    let monitor = monitor_pid(&env, &cts[0]);
    assert_ne!(monitor, pause);
    assert_eq!(
        monitor_pid(&env, &cts[1]),
        monitor,
        "one pod monitor for both"
    );
    assert_eq!(ppid(pause), monitor, "the pause is the pod monitor's child");
    assert_eq!(ns("pid", monitor), ns("pid", std::process::id() as i32));
    assert_ne!(ns("pid", pause), ns("pid", monitor));
    for ct in &cts {
        let pid = info_pid(&mut rt, None, Some(ct)).await;
        assert_eq!(ppid(pid), monitor, "{ct}: not the pod monitor's child");
        assert_eq!(
            ns("pid", pid),
            ns("pid", pause),
            "{ct}: not in the pod's PID namespace"
        );
        assert_eq!(ns("net", pid), ns("net", pause));
    }
    wait_for_log(&env.log_dir("skpmpid").join("skpmb/0.log"), "stdout F up").await;

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sb.clone(),
    })
    .await
    .unwrap();
    for ct in &cts {
        wait_exited(&mut rt, ct).await;
    }
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sb })
        .await
        .unwrap();
    assert!(
        pids_with(&["skiff-monitor", "pause", "skpmpid"]).is_empty(),
        "the pod monitor or its pause outlived StopPodSandbox"
    );
}
