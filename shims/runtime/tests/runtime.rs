//! End-to-end tests of `skiff-runtime` against a busybox bundle, side by side with Debian's
//! `runc`. They need root (namespaces, cgroups); as another user they print why and pass.
//! Every container id, netns and temp dir starts with `sk`; each test cleans up after itself.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const RUNTIME: &str = env!("CARGO_BIN_EXE_skiff-runtime");
const APPLETS: &[&str] = &["sh", "echo", "sleep", "true", "cat", "ls", "hostname"];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A scratch dir holding bundles and the state roots of both runtimes; removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sk-rt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// A bundle whose rootfs holds Debian's static busybox and a few applet links, and whose
    /// config is `runc spec`'s default with `args` and no terminal.
    fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        let bundle = self.dir.join(name);
        let bin = bundle.join("rootfs/bin");
        fs::create_dir_all(&bin).unwrap();
        for d in ["proc", "dev", "sys", "tmp"] {
            fs::create_dir_all(bundle.join("rootfs").join(d)).unwrap();
        }
        fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for a in APPLETS {
            symlink("busybox", bin.join(a)).unwrap();
        }
        let out = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "runc spec failed: {out:?}");
        self.edit_config(&bundle, |c| {
            c["process"]["terminal"] = Value::Bool(false);
            c["process"]["args"] = serde_json::json!(args);
        });
        bundle
    }

    fn edit_config(&self, bundle: &Path, f: impl FnOnce(&mut Value)) {
        let path = bundle.join("config.json");
        let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        f(&mut config);
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    fn root(&self, runtime: &str) -> PathBuf {
        self.dir.join(format!("root-{}", short(runtime)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn short(runtime: &str) -> &str {
    Path::new(runtime).file_name().unwrap().to_str().unwrap()
}

/// `<runtime> --root <scratch root> args...`, stdin null, output captured.
fn rt(s: &Scratch, runtime: &str, args: &[&str]) -> Output {
    Command::new(runtime)
        .arg("--root")
        .arg(s.root(runtime))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `create` with the container's stdout/stderr going to `out_file`.
fn create(s: &Scratch, runtime: &str, bundle: &Path, id: &str, out_file: &Path) -> Output {
    let out = fs::File::create(out_file).unwrap();
    let status = Command::new(runtime)
        .arg("--root")
        .arg(s.root(runtime))
        .args(["create", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr: fs::read(out_file).unwrap(),
    }
}

fn state(s: &Scratch, runtime: &str, id: &str) -> Value {
    let out = rt(s, runtime, &["state", id]);
    assert!(out.status.success(), "{runtime} state {id}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_status(s: &Scratch, runtime: &str, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = state(s, runtime, id);
        if st["status"] == want {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{runtime} {id} never became {want}: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn skip() -> bool {
    if !is_root() || !have("runc") {
        eprintln!("skipping: needs root and Debian's runc");
        return true;
    }
    false
}

#[test]
fn lifecycle_matches_runc() {
    if skip() {
        return;
    }
    let s = Scratch::new("life");
    let bundle = s.bundle("b", &["sh", "-c", "echo hello from $0; echo oops >&2"]);
    let mut seen = Vec::new();
    for runtime in [RUNTIME, "runc"] {
        let id = "sklife";
        let log = s.dir.join(format!("out-{}", short(runtime)));
        let out = create(&s, runtime, &bundle, id, &log);
        assert!(out.status.success(), "{runtime} create: {out:?}");
        let created = state(&s, runtime, id);
        assert_eq!(created["status"], "created", "{runtime}: {created}");
        assert!(created["pid"].as_i64().unwrap() > 0);
        assert_eq!(created["bundle"], bundle.to_str().unwrap());
        assert_eq!(created["rootfs"], bundle.join("rootfs").to_str().unwrap());
        let start = rt(&s, runtime, &["start", id]);
        assert!(start.status.success(), "{runtime} start: {start:?}");
        let stopped = wait_status(&s, runtime, id, "stopped");
        assert_eq!(stopped["pid"], 0, "{runtime}: {stopped}");
        let text = fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("hello from sh\n"),
            "{runtime} stdout: {text:?}"
        );
        assert!(text.contains("oops\n"), "{runtime} stderr: {text:?}");
        let del = rt(&s, runtime, &["delete", id]);
        assert!(del.status.success(), "{runtime} delete: {del:?}");
        assert!(!s.root(runtime).join(id).exists());
        // Deleting again fails the same way in both.
        let again = rt(&s, runtime, &["delete", id]);
        seen.push((keys(&created), keys(&stopped), again.status.code()));
    }
    assert_eq!(
        seen[0], seen[1],
        "skiff-runtime vs runc (state keys, exit code)"
    );
}

#[test]
fn kill_sleeping_container() {
    if skip() {
        return;
    }
    let s = Scratch::new("kill");
    let bundle = s.bundle("b", &["sleep", "100"]);
    let mut codes = Vec::new();
    for runtime in [RUNTIME, "runc"] {
        let id = "skkill";
        let out = create(&s, runtime, &bundle, id, &s.dir.join("out"));
        assert!(out.status.success(), "{runtime} create: {out:?}");
        assert!(rt(&s, runtime, &["start", id]).status.success());
        let running = wait_status(&s, runtime, id, "running");
        let pid = running["pid"].as_i64().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        // As pid 1 of its namespace, sleep ignores TERM; KILL by name and number both parse.
        let kill = rt(&s, runtime, &["kill", id, "KILL"]);
        assert!(kill.status.success(), "{runtime} kill: {kill:?}");
        wait_status(&s, runtime, id, "stopped");
        let again = rt(&s, runtime, &["kill", id, "9"]);
        let bad = rt(&s, runtime, &["kill", id, "NOSUCHSIG"]);
        codes.push((again.status.code(), bad.status.code()));
        assert!(rt(&s, runtime, &["delete", id]).status.success());
    }
    assert_eq!(codes[0], codes[1], "exit codes: skiff-runtime vs runc");
}

#[test]
fn joins_network_namespace_by_path() {
    if skip() {
        return;
    }
    let netns = format!("sknet{}", std::process::id());
    let add = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .unwrap();
    assert!(add.success());
    let ns_path = format!("/var/run/netns/{netns}");
    let s = Scratch::new("netns");
    let bundle = s.bundle("b", &["sleep", "100"]);
    s.edit_config(&bundle, |c| {
        for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = Value::String(ns_path.clone());
            }
        }
    });
    let id = "sknetns";
    let out = create(&s, RUNTIME, &bundle, id, &s.dir.join("out"));
    let result = std::panic::catch_unwind(|| {
        assert!(out.status.success(), "create: {out:?}");
        let pid = state(&s, RUNTIME, id)["pid"].as_i64().unwrap();
        let inside = fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino();
        let wanted = fs::metadata(&ns_path).unwrap().ino();
        let host = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(inside, wanted, "container is not in {ns_path}");
        assert_ne!(inside, host);
    });
    let _ = rt(&s, RUNTIME, &["delete", "--force", id]);
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    result.unwrap();
    assert!(!s.root(RUNTIME).join(id).exists());
}

#[test]
fn missing_rootfs_is_one_line_and_leaves_nothing() {
    if skip() {
        return;
    }
    let s = Scratch::new("err");
    let bundle = s.bundle("b", &["true"]);
    fs::remove_dir_all(bundle.join("rootfs")).unwrap();
    let mut codes = Vec::new();
    for runtime in [RUNTIME, "runc"] {
        let id = "skerr";
        let out = rt(
            &s,
            runtime,
            &["create", "--bundle", bundle.to_str().unwrap(), id],
        );
        codes.push(out.status.code());
        assert!(!s.root(runtime).join(id).exists(), "{runtime} left state");
        if runtime == RUNTIME {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
            assert!(
                err.contains("rootfs") && err.contains("does not exist"),
                "{err}"
            );
            assert!(out.stdout.is_empty());
        }
    }
    assert_eq!(codes, vec![Some(1), Some(1)]);
}

#[test]
fn run_returns_the_exit_code_and_logs_json() {
    if skip() {
        return;
    }
    let s = Scratch::new("run");
    let bundle = s.bundle("b", &["sh", "-c", "exit 7"]);
    for runtime in [RUNTIME, "runc"] {
        let out = rt(
            &s,
            runtime,
            &["run", "--bundle", bundle.to_str().unwrap(), "skrun"],
        );
        assert_eq!(out.status.code(), Some(7), "{runtime} run: {out:?}");
        assert!(!s.root(runtime).join("skrun").exists());
    }
    // --log --log-format json gets runc's keys on failure.
    let log = s.dir.join("log.json");
    let out = Command::new(RUNTIME)
        .arg("--root")
        .arg(s.root(RUNTIME))
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "start", "sknosuch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let last = fs::read_to_string(&log).unwrap();
    let line: Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"]
        .as_str()
        .unwrap()
        .contains("sknosuch does not exist"));
}

#[test]
fn negative_oom_score_adj_is_applied_or_clamped() {
    if skip() {
        return;
    }
    let s = Scratch::new("oom");
    let bundle = s.bundle("b", &["sleep", "100"]);
    s.edit_config(&bundle, |c| {
        c["process"]["oomScoreAdj"] = serde_json::json!(-500)
    });
    let own: i32 = fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let id = "skoom";
    let out = create(&s, RUNTIME, &bundle, id, &s.dir.join("out"));
    let result = std::panic::catch_unwind(|| {
        assert!(out.status.success(), "create: {out:?}");
        let st = state(&s, RUNTIME, id);
        // The caller's bundle is reported, not the clamped copy.
        assert_eq!(st["bundle"], bundle.to_str().unwrap());
        let pid = st["pid"].as_i64().unwrap();
        let got: i32 = fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // -500 with CAP_SYS_RESOURCE, else clamped to our own score.
        assert!(got == -500 || got == own, "oom_score_adj {got}");
    });
    let _ = rt(&s, RUNTIME, &["delete", "--force", id]);
    result.unwrap();
    assert!(!s.root(RUNTIME).join(format!("{id}@bundle")).exists());
}
