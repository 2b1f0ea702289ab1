//! Helpers shared by the integration tests: busybox bundles, scratch state roots, and running
//! `skiff-runtime` and Debian's `runc` side by side.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const RUNTIME: &str = env!("CARGO_BIN_EXE_skiff-runtime");
pub const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "true", "cat", "ls", "hostname", "id", "pwd", "env", "tty",
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A scratch dir holding bundles and the state roots of both runtimes; removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sk-rt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// A bundle whose rootfs holds Debian's static busybox and a few applet links, and whose
    /// config is `runc spec`'s default with `args` and no terminal.
    pub fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
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

    pub fn edit_config(&self, bundle: &Path, f: impl FnOnce(&mut Value)) {
        let path = bundle.join("config.json");
        let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        f(&mut config);
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    pub fn root(&self, runtime: &str) -> PathBuf {
        self.dir.join(format!("root-{}", short(runtime)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn short(runtime: &str) -> &str {
    Path::new(runtime).file_name().unwrap().to_str().unwrap()
}

/// `<runtime> --root <scratch root> args...`, stdin null, output captured.
pub fn rt(s: &Scratch, runtime: &str, args: &[&str]) -> Output {
    Command::new(runtime)
        .arg("--root")
        .arg(s.root(runtime))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `create` with the container's stdout/stderr going to `out_file`.
pub fn create(s: &Scratch, runtime: &str, bundle: &Path, id: &str, out_file: &Path) -> Output {
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

pub fn state(s: &Scratch, runtime: &str, id: &str) -> Value {
    let out = rt(s, runtime, &["state", id]);
    assert!(out.status.success(), "{runtime} state {id}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn wait_status(s: &Scratch, runtime: &str, id: &str, want: &str) -> Value {
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

pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

pub fn skip() -> bool {
    if !is_root() || !have("runc") {
        panic!("missing prerequisite: needs root and Debian's runc");
    }
    false
}

/// Remove a container whatever its state (test cleanup).
pub fn force_delete(s: &Scratch, runtime: &str, id: &str) {
    let _ = rt(s, runtime, &["delete", "--force", id]);
}

/// Whether any v1 controller still holds the cgroup `path` (e.g. `/sk-par-x`).
pub fn cgroup_left(path: &str) -> Vec<String> {
    let mut left = Vec::new();
    for entry in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = entry.path().join(path.trim_start_matches('/'));
        if dir.is_dir() {
            left.push(dir.display().to_string());
        }
    }
    left
}

/// Mount points under `/proc/self/mountinfo` that mention `needle`.
pub fn mounts_with(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}
