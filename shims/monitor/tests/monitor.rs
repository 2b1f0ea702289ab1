//! End-to-end tests of `skiff-monitor` (needs root): the `container` role driving
//! `skiff-runtime` (or Debian's `runc` when that is not built) on a busybox bundle, and the
//! `pause` role. Names start with `sk`; everything is cleaned up.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MONITOR: &str = env!("CARGO_BIN_EXE_skiff-monitor");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The runtimes to drive: our own build next to this test binary's target dir, and runc.
fn runtimes() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let exe = PathBuf::from(MONITOR);
    if let Some(dir) = exe.parent() {
        let ours = dir.join("skiff-runtime");
        if ours.exists() {
            out.push(ours);
        } else {
            eprintln!("note: {} not built, only runc is tested", ours.display());
        }
    }
    if Path::new("/usr/sbin/runc").exists() {
        out.push("/usr/sbin/runc".into());
    }
    out
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sk-mon-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// With `host_pid`, the container shares the host pid namespace (so its shell is not a
/// namespace init, which ignores SIGKILL sent from inside).
fn busybox_bundle(dir: &Path, script: &str, host_pid: bool) -> PathBuf {
    let bundle = dir.join("bundle");
    let bin = bundle.join("rootfs/bin");
    fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(bundle.join("rootfs").join(d)).unwrap();
    }
    fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for a in ["sh", "echo", "sleep", "printf"] {
        symlink("busybox", bin.join(a)).unwrap();
    }
    let spec = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(spec.success());
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = Value::Bool(false);
    config["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    if host_pid {
        config["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|ns| ns["type"] != "pid");
    }
    fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    bundle
}

fn wait_for_any(paths: &[PathBuf], timeout: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(p) = paths.iter().find(|p| p.exists()) {
            return Some(p.clone());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn run_container(
    runtime: &Path,
    s: &Scratch,
    id: &str,
    script: &str,
    host_pid: bool,
) -> (Value, String) {
    let dir = s.0.join(runtime.file_name().unwrap());
    fs::create_dir_all(&dir).unwrap();
    let bundle = busybox_bundle(&dir, script, host_pid);
    let root = dir.join("root");
    let state = dir.join("state");
    let log = dir.join("logs/0.log");
    let status = Command::new(MONITOR)
        .arg("container")
        .arg("--runtime")
        .arg(runtime)
        .arg("--runtime-root")
        .arg(&root)
        .arg("--bundle")
        .arg(&bundle)
        .args(["--id", id])
        .arg("--log-path")
        .arg(&log)
        .arg("--state-dir")
        .arg(&state)
        .status()
        .unwrap();
    assert!(status.success(), "monitor did not detach cleanly");
    let created = state.join("created");
    let outcome = wait_for_any(
        &[created.clone(), state.join("create-error")],
        Duration::from_secs(10),
    );
    assert_eq!(
        outcome.as_deref(),
        Some(created.as_path()),
        "create failed: {:?}",
        fs::read_to_string(state.join("create-error"))
    );
    let created: Value = serde_json::from_slice(&fs::read(&created).unwrap()).unwrap();
    let pid = created["pid"].as_i64().unwrap();
    assert_eq!(
        fs::read_to_string(state.join("pid")).unwrap().trim(),
        pid.to_string()
    );
    let monitor_pid: i32 = fs::read_to_string(state.join("monitor.pid"))
        .unwrap()
        .parse()
        .unwrap();
    let rss = fs::read_to_string(format!("/proc/{monitor_pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .map(str::to_owned);
    eprintln!("idle monitor {monitor_pid} {rss:?}");

    let start = Command::new(runtime)
        .arg("--root")
        .arg(&root)
        .args(["start", id])
        .status()
        .unwrap();
    assert!(start.success());
    let exit = wait_for_any(&[state.join("exit")], Duration::from_secs(10)).expect("no exit file");
    let exit: Value = serde_json::from_slice(&fs::read(exit).unwrap()).unwrap();
    let text = fs::read_to_string(&log).unwrap();
    let deleted = Command::new(runtime)
        .arg("--root")
        .arg(&root)
        .args(["delete", id])
        .status()
        .unwrap();
    assert!(deleted.success());
    // The monitor is gone once it wrote the exit file.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{monitor_pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "monitor {monitor_pid} did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (exit, text)
}

/// `<RFC3339Nano> <stream> <F|P> <content>`
fn parse_cri_line(line: &str) -> (String, String, String, String) {
    let mut it = line.splitn(4, ' ');
    let mut next = || it.next().unwrap_or_default().to_owned();
    (next(), next(), next(), next())
}

#[test]
fn container_logs_and_exit_code() {
    if !is_root() {
        panic!("missing prerequisite: needs root");
    }
    for runtime in runtimes() {
        let s = Scratch::new("ctr");
        let (exit, log) = run_container(
            &runtime,
            &s,
            "skmon1",
            "echo hello; echo err >&2; printf tail; exit 3",
            false,
        );
        assert_eq!(exit["exit_code"], 3, "{runtime:?}: {exit}");
        assert_eq!(exit["signal"], Value::Null);
        let finished = exit["finished_at"].as_str().unwrap();
        assert!(
            finished.len() == 30 && finished.ends_with('Z'),
            "{finished}"
        );
        let lines: Vec<_> = log.lines().map(parse_cri_line).collect();
        let find = |stream: &str, tag: &str, content: &str| {
            lines
                .iter()
                .any(|(_, s, t, c)| s == stream && t == tag && c == content)
        };
        assert!(find("stdout", "F", "hello"), "{runtime:?}: {log}");
        assert!(find("stderr", "F", "err"), "{runtime:?}: {log}");
        assert!(find("stdout", "P", "tail"), "{runtime:?}: {log}");
        for (ts, ..) in &lines {
            assert_eq!(ts.len(), 30, "bad time stamp {ts}");
            assert!(ts.as_bytes()[10] == b'T' && ts.ends_with('Z'));
        }
    }
}

#[test]
fn container_killed_by_signal() {
    if !is_root() {
        panic!("missing prerequisite: needs root");
    }
    let Some(runtime) = runtimes().into_iter().next() else {
        return;
    };
    let s = Scratch::new("sig");
    let (exit, _) = run_container(&runtime, &s, "skmon2", "kill -9 $$", true);
    assert_eq!(exit["exit_code"], 137, "{exit}");
    assert_eq!(exit["signal"], 9);
}

#[test]
fn create_error_is_reported() {
    if !is_root() {
        panic!("missing prerequisite: needs root");
    }
    let Some(runtime) = runtimes().into_iter().next() else {
        return;
    };
    let s = Scratch::new("err");
    let state = s.0.join("state");
    let status = Command::new(MONITOR)
        .arg("container")
        .arg("--runtime")
        .arg(&runtime)
        .arg("--runtime-root")
        .arg(s.0.join("root"))
        .arg("--bundle")
        .arg(s.0.join("no-such-bundle"))
        .args(["--id", "skmonerr"])
        .arg("--log-path")
        .arg(s.0.join("0.log"))
        .arg("--state-dir")
        .arg(&state)
        .status()
        .unwrap();
    assert!(status.success());
    let err = state.join("create-error");
    let got = wait_for_any(
        &[err.clone(), state.join("created")],
        Duration::from_secs(10),
    );
    assert_eq!(got.as_deref(), Some(err.as_path()));
    let text = fs::read_to_string(err).unwrap();
    assert!(
        !text.trim().is_empty() && text.trim().lines().count() == 1,
        "{text:?}"
    );
}

#[test]
fn bad_flags_fail_before_detaching() {
    let out = Command::new(MONITOR)
        .args(["container", "--runtime", "/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing required flag"));
}

#[test]
fn pause_holds_namespaces_until_sigterm() {
    if !is_root() {
        panic!("missing prerequisite: needs root");
    }
    let mut child = Command::new(MONITOR)
        .args(["pause", "--hostname", "skpause"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id();
    let ns = |kind: &str, p: &str| fs::metadata(format!("/proc/{p}/ns/{kind}")).unwrap().ino();
    for kind in ["net", "ipc", "uts"] {
        assert_ne!(
            ns(kind, &pid.to_string()),
            ns(kind, "self"),
            "{kind} not unshared"
        );
    }
    let host = Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--uts", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "skpause");
    // SAFETY: plain kill(2) of the child we spawned.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The pod monitor: a pause with `--socket-dir` runs two containers asked over its control
/// socket, in the host's namespaces (not the pod's), logs both, records both exits, and stays
/// the one process of the pod; SIGTERM then ends it.
#[test]
fn pod_monitor_runs_the_pods_containers() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    if !is_root() {
        panic!("missing prerequisite: needs root");
    }
    let Some(runtime) = runtimes().into_iter().next() else {
        panic!("missing prerequisite: neither skiff-runtime nor /usr/sbin/runc");
    };
    let s = Scratch::new("pod");
    let sb_dir = s.0.join("sandbox");
    fs::create_dir_all(&sb_dir).unwrap();
    let mut pause = Command::new(MONITOR)
        .args(["pause", "--hostname", "skpod", "--sandbox", "skpodsb"])
        .arg("--socket-dir")
        .arg(&sb_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(pause.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let pod_pid = pause.id() as i32;
    let ask = |args: &[String]| -> String {
        let mut c = UnixStream::connect(sb_dir.join("monitor.sock")).unwrap();
        c.write_all(args.join("\0").as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        reply
    };
    let root = s.0.join("root");
    let mut states = Vec::new();
    for (i, script) in ["echo one; exit 4", "echo two >&2; sleep 1; exit 5"]
        .iter()
        .enumerate()
    {
        let dir = s.0.join(format!("c{i}"));
        fs::create_dir_all(&dir).unwrap();
        let bundle = busybox_bundle(&dir, script, false);
        let state = dir.join("state");
        let id = format!("skpodc{i}");
        let args: Vec<String> = [
            "--runtime",
            runtime.to_str().unwrap(),
            "--runtime-root",
            root.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "--id",
            &id,
            "--log-path",
            dir.join("0.log").to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        assert_eq!(ask(&args), "ok\n");
        let created = state.join("created");
        let got = wait_for_any(
            &[created.clone(), state.join("create-error")],
            Duration::from_secs(30),
        );
        assert_eq!(
            got.as_deref(),
            Some(created.as_path()),
            "create failed: {:?}",
            fs::read_to_string(state.join("create-error"))
        );
        assert_eq!(
            fs::read_to_string(state.join("monitor.pid")).unwrap(),
            pod_pid.to_string()
        );
        // The container's init is the pod monitor's child (it is their subreaper).
        let pid = fs::read_to_string(state.join("pid")).unwrap();
        let ppid = fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .unwrap()
            .rsplit(") ")
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned();
        assert_eq!(
            ppid,
            pod_pid.to_string(),
            "init is not the pod monitor's child"
        );
        states.push((id, state, dir.join("0.log")));
    }
    // A bad request gets an error line and starts nothing.
    assert!(ask(&["--id".into(), "x".into()]).starts_with("error missing required flag"));
    for (id, _, _) in &states {
        let ok = Command::new(&runtime)
            .arg("--root")
            .arg(&root)
            .args(["start", id])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    for ((id, state, log), (code, stream, text)) in states
        .iter()
        .zip([(4, "stdout", "one"), (5, "stderr", "two")])
    {
        let exit = wait_for_any(&[state.join("exit")], Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no exit file for {id}"));
        let exit: Value = serde_json::from_slice(&fs::read(exit).unwrap()).unwrap();
        assert_eq!(exit["exit_code"], code, "{id}: {exit}");
        let log = fs::read_to_string(log).unwrap();
        assert!(
            log.lines()
                .map(parse_cri_line)
                .any(|(_, s, t, c)| s == stream && t == "F" && c == text),
            "{id}: {log}"
        );
        let _ = Command::new(&runtime)
            .arg("--root")
            .arg(&root)
            .args(["delete", id])
            .status();
    }
    assert!(Path::new(&format!("/proc/{pod_pid}")).exists());
    // SAFETY: plain kill(2) of the child we spawned.
    assert_eq!(unsafe { libc::kill(pod_pid, libc::SIGTERM) }, 0);
    assert_eq!(pause.wait().unwrap().code(), Some(0));
    assert!(!sb_dir.join("monitor.sock").exists());
}

/// A pod with a user namespace: the pod monitor stays in every host namespace and writes the
/// maps of its child, the pause, which is root of the new user namespace and holds net, ipc
/// and uts namespaces owned by it (with the hostname); SIGTERM ends both. A map the kernel
/// refuses fails with a message naming it.
#[test]
fn pod_monitor_clones_the_pause_into_a_user_namespace() {
    if !is_root() {
        panic!("missing prerequisite: needs root");
    }
    let s = Scratch::new("userns");
    let mut monitor = Command::new(MONITOR)
        .args(["pause", "--hostname", "skuserns", "--sandbox", "skusersb"])
        .arg("--socket-dir")
        .arg(&s.0)
        .args([
            "--uid-map",
            "0 2000000 65536",
            "--gid-map",
            "0 2100000 65536",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(monitor.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pause: i32 = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("want `ready <pid>`, got {line:?}"));
    let mon = monitor.id().to_string();
    let ns = |kind: &str, p: &str| fs::metadata(format!("/proc/{p}/ns/{kind}")).unwrap().ino();
    for kind in ["user", "net", "ipc", "uts", "pid"] {
        assert_eq!(
            ns(kind, &mon),
            ns(kind, "self"),
            "the monitor left the host's {kind} namespace"
        );
    }
    for kind in ["user", "net", "ipc", "uts"] {
        assert_ne!(
            ns(kind, &pause.to_string()),
            ns(kind, "self"),
            "{kind} not new for the pause"
        );
    }
    let words = |f: &str| {
        fs::read_to_string(format!("/proc/{pause}/{f}"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(words("uid_map"), "0 2000000 65536");
    assert_eq!(words("gid_map"), "0 2100000 65536");
    let status = fs::read_to_string(format!("/proc/{pause}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>().join(" "),
        "Uid: 2000000 2000000 2000000 2000000",
        "the pause is not root of its user namespace"
    );
    let host = Command::new("nsenter")
        .args(["--target", &pause.to_string(), "--uts", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "skuserns");
    // SAFETY: plain kill(2) of the child we spawned.
    assert_eq!(unsafe { libc::kill(monitor.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(monitor.wait().unwrap().code(), Some(0));
    // Gone, or a zombie nobody of ours reaps (it was reparented).
    let dead = || {
        fs::read_to_string(format!("/proc/{pause}/stat"))
            .map(|s| s.rsplit(") ").next().unwrap_or("").starts_with('Z'))
            .unwrap_or(true)
    };
    let until = Instant::now() + Duration::from_secs(60);
    while !dead() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dead(), "the pause outlived its monitor");

    // Two lines mapping the same container ids: the kernel refuses the map.
    let out = Command::new(MONITOR)
        .args(["pause", "--hostname", "skuserns", "--sandbox", "skusersb"])
        .arg("--socket-dir")
        .arg(&s.0)
        .args([
            "--uid-map",
            "0 2000000 10,0 3000000 10",
            "--gid-map",
            "0 2000000 10",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the kernel refused uid_map"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}
