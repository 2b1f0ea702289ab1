//! End-to-end tests of `skiff-runtime` against a busybox bundle, side by side with Debian's
//! `runc`. They need root (namespaces, cgroups); as another user they print why and pass.
//! Every container id, netns and temp dir starts with `sk`; each test cleans up after itself.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

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

/// CVE-2019-5736: the container's init runs our binary until `start`; what its
/// `/proc/<pid>/exe` names must not be writable. On this kernel (5.12+) every bundle, hooks
/// included, gets a read-only clone of the binary's mount that is attached to no namespace, so
/// nothing is mounted where the caller can see it (older kernels: a private-namespace bind, or
/// a sealed memfd for bundles with runtime-namespace hooks).
#[test]
fn init_exe_is_on_a_read_only_detached_mount() {
    if skip() {
        return;
    }
    let s = Scratch::new("seal");
    let plain = s.bundle("plain", &["true"]);
    let hooked = s.bundle("hooked", &["true"]);
    s.edit_config(&hooked, |c| {
        c["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}]});
    });
    let before = mounts_with("skiff-runtime");
    for bundle in [&plain, &hooked] {
        let id = "skseal";
        let out = create(&s, RUNTIME, bundle, id, &s.dir.join("out"));
        let result = std::panic::catch_unwind(|| {
            assert!(out.status.success(), "create: {out:?}");
            let pid = state(&s, RUNTIME, id)["pid"].as_i64().unwrap();
            let link = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            let exe = fs::File::open(format!("/proc/{pid}/exe")).unwrap();
            let st = nix::sys::statfs::fstatfs(&exe).unwrap();
            let ro = st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY);
            assert!(ro, "{link:?} not on a read-only mount");
            // It is our binary, not a copy.
            let ours = fs::metadata(RUNTIME).unwrap();
            let theirs = exe.metadata().unwrap();
            assert_eq!((theirs.dev(), theirs.ino()), (ours.dev(), ours.ino()));
            // Opening it for writing fails.
            let w = fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{pid}/exe"));
            assert!(w.is_err(), "init exe opened for writing");
            // Nothing was mounted in our namespace to get there.
            assert_eq!(mounts_with("skiff-runtime"), before);
        });
        let _ = rt(&s, RUNTIME, &["delete", "--force", id]);
        result.unwrap();
    }
}

/// A foreground `run` leaves neither its state nor its cgroups behind (the short teardown),
/// runs poststop hooks (the `Container::delete` path), and `--keep` leaves a stopped container
/// for `delete`, as runc's.
#[test]
fn run_cleans_up_runs_poststop_and_keeps_on_request() {
    if skip() {
        return;
    }
    let s = Scratch::new("runclean");
    let cgroup = format!("/sk-rt-run-{}", std::process::id());
    let bundle = s.bundle("b", &["sh", "-c", "exit 3"]);
    s.edit_config(&bundle, |c| {
        c["linux"]["cgroupsPath"] = cgroup.clone().into()
    });
    let root = s.root(RUNTIME);
    let run = |extra: &[&str], id: &str| {
        let mut args = vec!["run", "--bundle", bundle.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(id);
        rt(&s, RUNTIME, &args)
    };
    let result = std::panic::catch_unwind(|| {
        let out = run(&[], "skrun1");
        assert_eq!(out.status.code(), Some(3), "run: {out:?}");
        assert!(!root.join("skrun1").exists(), "state dir left");
        assert_eq!(cgroup_left(&cgroup), Vec::<String>::new());

        let out = run(&["--keep"], "skrun2");
        assert_eq!(out.status.code(), Some(3), "run --keep: {out:?}");
        assert_eq!(state(&s, RUNTIME, "skrun2")["status"], "stopped");
        assert!(
            !cgroup_left(&cgroup).is_empty(),
            "--keep removed the cgroup"
        );
        let out = rt(&s, RUNTIME, &["delete", "skrun2"]);
        assert!(out.status.success(), "delete: {out:?}");
        assert!(!root.join("skrun2").exists());
        assert_eq!(cgroup_left(&cgroup), Vec::<String>::new());

        let marker = s.dir.join("poststop-ran");
        s.edit_config(&bundle, |c| {
            c["hooks"] = serde_json::json!({"poststop": [{
                "path": "/bin/sh",
                "args": ["sh", "-c", format!("echo ran > {}", marker.display())],
            }]});
        });
        let out = run(&[], "skrun3");
        assert_eq!(out.status.code(), Some(3), "run with poststop: {out:?}");
        assert_eq!(fs::read_to_string(&marker).unwrap(), "ran\n");
        assert!(!root.join("skrun3").exists());
        assert_eq!(cgroup_left(&cgroup), Vec::<String>::new());
    });
    for id in ["skrun1", "skrun2", "skrun3"] {
        force_delete(&s, RUNTIME, id);
    }
    result.unwrap();
}
