//! The real gRPC CRI client over a unix socket, against Debian's containerd (a private instance in
//! a temp dir, stopped by PID). Skipped when containerd is not installed or we are not root.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use skiff_node::cri::{CriRuntime, GrpcCri};

struct Containerd(Child);

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn grpc_client_talks_to_containerd() {
    let Ok(bin) = which("containerd") else {
        eprintln!("containerd not installed; skipped");
        return;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root; skipped");
        return;
    }
    let dir = tempfile::Builder::new().prefix("skctd").tempdir().unwrap();
    let sock = dir.path().join("ctd.sock");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{1}\"\n",
            dir.path().display(),
            sock.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let _ctd = Containerd(
        Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let cri = GrpcCri::new(&sock).unwrap();
    let mut version = None;
    for _ in 0..50 {
        match cri.version().await {
            Ok(v) => {
                version = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let v = version.expect("containerd's CRI did not answer Version");
    assert_eq!(v.runtime_name, "containerd");
    assert_eq!(v.runtime_api_version, "v1");

    assert!(cri
        .list_pod_sandbox(Default::default())
        .await
        .unwrap()
        .is_empty());
    assert!(cri
        .list_containers("", Default::default())
        .await
        .unwrap()
        .is_empty());
    assert!(cri.image_status("sk-none:1").await.unwrap().is_none());
    // A pull from a closed local port fails with the runtime's message (what ErrImagePull shows).
    let err = cri
        .pull_image("127.0.0.1:1/sk-none:1", Default::default())
        .await
        .unwrap_err();
    eprintln!("pull error: {err}");
    assert!(!err.message().is_empty());
    assert!(err.to_string().starts_with("CRI PullImage: "), "{err}");

    // A closed socket gives a clear error.
    let missing = GrpcCri::new(&dir.path().join("nope.sock")).unwrap();
    let err = missing.version().await.unwrap_err();
    eprintln!("closed socket: {err}");
    assert!(err.to_string().contains("nope.sock"), "{err}");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
