//! `skiff controller-manager` as a process of its own beside `skiff server
//! --disable-controller-manager` (no node): it drives Deployments and ReplicaSets through the
//! API, holds (and on SIGTERM gives back) the `kube-system/kube-controller-manager` Lease, and
//! with `--leader-elect=false` runs without one.

use skiff_tests::control_plane::ControlPlane;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(90);

/// A `skiff controller-manager` this test started (log in the control plane's temp dir),
/// killed by PID if the test ends without stopping it.
struct Cm(Child);

impl Drop for Cm {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start_cm(cp: &ControlPlane, extra: &[&str]) -> Cm {
    let bin = skiff_tests::workspace_bin("skiff");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --bin skiff)",
        bin.display()
    );
    // The server writes the components' kubeconfigs right after its API answers.
    let kubeconfig = cp.dir().join("data/server/controller.kubeconfig");
    cp.wait_for(
        &format!("the server to write {}", kubeconfig.display()),
        Duration::from_secs(60),
        || kubeconfig.exists(),
    );
    let log = std::fs::File::create(cp.dir().join("controller-manager.log")).expect("log file");
    Cm(Command::new(bin)
        .arg("controller-manager")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--default-local-storage-path")
        .arg(cp.dir().join("storage"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start skiff controller-manager"))
}

fn cm_log(cp: &ControlPlane) -> String {
    let log = std::fs::read_to_string(cp.dir().join("controller-manager.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!(
        "--- controller-manager log (tail) ---\n{}",
        lines[from..].join("\n")
    )
}

/// SIGTERM, then the exit status (within 60 s).
fn terminate(cp: &ControlPlane, cm: &mut Cm) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cm.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to the controller manager");
    let start = Instant::now();
    loop {
        if let Some(st) = cm.0.try_wait().expect("wait for the controller manager") {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "skiff controller-manager did not exit within 60 s of SIGTERM\n{}",
            cm_log(cp)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Deployment of 2 replicas gets its ReplicaSet and 2 pods (unscheduled: no node).
fn deployment_gets_replicaset_and_pods(cp: &ControlPlane, name: &str) {
    cp.ok(&[
        "create",
        "deployment",
        name,
        "--image=sk-busybox",
        "--replicas=2",
    ]);
    let mut rs = String::new();
    cp.wait_for(&format!("the ReplicaSet of {name}"), WAIT, || {
        rs = cp
            .kubectl(&[
                "get",
                "rs",
                "-l",
                &format!("app={name}"),
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ])
            .stdout;
        !rs.is_empty()
    });
    assert!(
        rs.starts_with(&format!("{name}-")),
        "ReplicaSet {rs:?} is not named after {name}"
    );
    let owner = cp.ok(&[
        "get",
        "rs",
        &rs,
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(owner, format!("Deployment/{name}"));
    let mut last = String::new();
    let mut pods_ready = || {
        last = cp
            .kubectl(&[
                "get",
                "pods",
                "-l",
                &format!("app={name}"),
                "-o",
                "jsonpath={range .items[*]}{.metadata.ownerReferences[0].name}{\"\\n\"}{end}",
            ])
            .stdout;
        last.lines().filter(|l| *l == rs).count() == 2
    };
    let start = Instant::now();
    while !pods_ready() {
        assert!(
            start.elapsed() < WAIT,
            "2 pods of {rs} not created in {WAIT:?}; saw:\n{last}\n{}",
            cm_log(cp)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cp.wait_for(
        &format!("{name}'s status to count 2 replicas"),
        WAIT,
        || {
            cp.kubectl(&[
                "get",
                "deployment",
                name,
                "-o",
                "jsonpath={.status.replicas}",
            ])
            .stdout
                == "2"
        },
    );
}

fn lease_holder(cp: &ControlPlane) -> Option<String> {
    let o = cp.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-controller-manager",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    o.ok.then_some(o.stdout)
}

#[test]
fn controller_manager_runs_beside_a_server_without_controllers() {
    let cp = ControlPlane::start_with_args(&["--disable-controller-manager"]);
    let mut cm = start_cm(&cp, &[]);
    deployment_gets_replicaset_and_pods(&cp, "sk-cm-web");
    // It leads through the Lease, as kube-controller-manager does...
    let holder = lease_holder(&cp).unwrap_or_default();
    assert!(
        !holder.is_empty(),
        "no holder on kube-system/kube-controller-manager\n{}",
        cm_log(&cp)
    );
    // ...and on SIGTERM it stops cleanly and gives the Lease back.
    let st = terminate(&cp, &mut cm);
    assert!(
        st.success(),
        "skiff controller-manager exited with {st} on SIGTERM\n{}",
        cm_log(&cp)
    );
    assert_eq!(
        lease_holder(&cp).as_deref(),
        Some(""),
        "the lease was not released on a clean stop"
    );
    cp.ok(&["delete", "deployment", "sk-cm-web", "--wait=false"]);
}

#[test]
fn controller_manager_without_leader_election() {
    let cp = ControlPlane::start_with_args(&["--disable-controller-manager"]);
    let mut cm = start_cm(&cp, &["--leader-elect=false"]);
    deployment_gets_replicaset_and_pods(&cp, "sk-cm-solo");
    assert_eq!(
        lease_holder(&cp),
        None,
        "--leader-elect=false still wrote kube-system/kube-controller-manager"
    );
    let st = terminate(&cp, &mut cm);
    assert!(st.success(), "exited with {st} on SIGTERM\n{}", cm_log(&cp));
    cp.ok(&["delete", "deployment", "sk-cm-solo", "--wait=false"]);
}
