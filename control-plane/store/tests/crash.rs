//! Acknowledged writes survive kill -9.
//!
//! `kill_9_keeps_every_acknowledged_write` runs this test binary again as a child in the
//! `crash_child` mode (an `#[ignore]`d test that does nothing unless `SKIFF_STORE_CRASH_DIR` is
//! set): 8 tasks create, update and delete keys and print a line for each write once it is
//! acknowledged. The parent SIGKILLs the child at a random moment, reopens the store and checks
//! every acknowledged write, five times over the same directory.

use skiff_store::{EmbeddedOptions, EmbeddedStore, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DIR_ENV: &str = "SKIFF_STORE_CRASH_DIR";
const ROUND_ENV: &str = "SKIFF_STORE_CRASH_ROUND";
const TASKS: usize = 8;

/// A small rewrite threshold, so that kills also land during log rewrites.
fn open(dir: &std::path::Path) -> EmbeddedStore {
    let opts = EmbeddedOptions {
        rewrite_slack: 16 << 10,
        ..Default::default()
    };
    EmbeddedStore::open_with(dir, opts).unwrap()
}

fn random_below(n: u64) -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % n
}

#[test]
#[ignore = "helper: the child process of kill_9_keeps_every_acknowledged_write"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let round: u32 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(open(std::path::Path::new(&dir)));
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let ack = move |out: &Mutex<std::io::Stdout>, line: String| {
            let mut o = out.lock().unwrap();
            writeln!(o, "{line}").unwrap();
            o.flush().unwrap();
        };
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (store, out) = (store.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                let counter = format!("/counter/{t}");
                // The parent kills us long before this ends; stop anyway if it went away.
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                for i in 0..u64::MAX {
                    if std::time::Instant::now() > deadline {
                        break;
                    }
                    let key = format!("/obj/{round}/{t}/{i}");
                    let kv = store.create(&key, key.clone().into_bytes()).await.unwrap();
                    ack(&out, format!("create {key} {}", kv.mod_revision));
                    // Updates outnumber creates, so the log outgrows the live data and is
                    // rewritten now and then (kills land in rewrites too).
                    for _ in 0..4 {
                        let n = match store.get(&counter).await.unwrap() {
                            Some(c) => {
                                String::from_utf8(c.value).unwrap().parse::<u64>().unwrap() + 1
                            }
                            None => 0,
                        };
                        let kv = if n == 0 {
                            store.create(&counter, b"0".to_vec()).await.unwrap()
                        } else {
                            store
                                .update(&counter, n.to_string().into_bytes(), None)
                                .await
                                .unwrap()
                        };
                        ack(&out, format!("counter {counter} {n} {}", kv.mod_revision));
                    }
                    if i % 4 == 3 {
                        let old = format!("/obj/{round}/{t}/{}", i - 2);
                        let kv = store.delete(&old, None).await.unwrap();
                        ack(&out, format!("delete {old} {}", kv.mod_revision));
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Our child process, killed (by its PID) if the test fails before it does.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Acked {
    created: BTreeSet<String>,
    deleted: BTreeSet<String>,
    counters: BTreeMap<String, u64>,
    max_revision: i64,
    min_revision: i64,
    lines: usize,
}

impl Acked {
    fn add(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let rev: i64 = match f.as_slice() {
            ["create", key, rev] => {
                self.created.insert(key.to_string());
                rev.parse().unwrap()
            }
            ["delete", key, rev] => {
                self.deleted.insert(key.to_string());
                rev.parse().unwrap()
            }
            ["counter", key, n, rev] => {
                let n: u64 = n.parse().unwrap();
                let c = self.counters.entry(key.to_string()).or_default();
                *c = (*c).max(n);
                rev.parse().unwrap()
            }
            // libtest's own lines.
            _ => return,
        };
        if self.lines == 0 {
            self.min_revision = rev;
        }
        self.lines += 1;
        self.min_revision = self.min_revision.min(rev);
        self.max_revision = self.max_revision.max(rev);
    }
}

/// `/obj/<round>/<task>/<i>` is the key the task deletes right after creating `i + 2`, and
/// `i + 2` is the last key it created (so it was killed before acknowledging the delete).
fn deletion_in_flight(created: &BTreeSet<String>, key: &str) -> bool {
    let (task, i) = key.rsplit_once('/').unwrap();
    let i: u64 = i.parse().unwrap();
    i % 4 == 1
        && created.contains(&format!("{task}/{}", i + 2))
        && !created.contains(&format!("{task}/{}", i + 3))
}

#[test]
fn kill_9_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut all = Acked::default();
    let mut last_revision = 0;
    for round in 0..5 {
        let mut child = Child(
            Command::new(&exe)
                .args(["--ignored", "--exact", "crash_child", "--nocapture"])
                .env(DIR_ENV, dir.path())
                .env(ROUND_ENV, round.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it get going, then kill it at a random moment.
        let mut round_acks = Acked::default();
        while round_acks.lines < 50 {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the child writes");
            round_acks.add(&line);
        }
        std::thread::sleep(Duration::from_millis(random_below(400)));
        child.0.kill().unwrap(); // SIGKILL, to our own child by its pid
        child.0.wait().unwrap();
        reader.join().unwrap();
        for line in rx.try_iter() {
            round_acks.add(&line);
        }
        assert!(
            round_acks.min_revision > last_revision,
            "revisions go on increasing across restarts"
        );
        last_revision = round_acks.max_revision;
        all.created.extend(round_acks.created);
        all.deleted.extend(round_acks.deleted);
        for (k, n) in round_acks.counters {
            let c = all.counters.entry(k).or_default();
            *c = (*c).max(n);
        }
        all.max_revision = all.max_revision.max(round_acks.max_revision);
        all.lines += round_acks.lines;

        rt.block_on(async {
            let s = open(dir.path());
            let current = s.current_revision().await.unwrap();
            assert!(current >= all.max_revision);
            for key in &all.created {
                let got = s.get(key).await.unwrap();
                if all.deleted.contains(key) {
                    assert!(got.is_none(), "{key} was deleted");
                } else if let Some(kv) = got {
                    assert_eq!(kv.value, key.as_bytes());
                } else {
                    // Only allowed when its delete may have been durable without being
                    // acknowledged: the task's last step before it was killed.
                    assert!(
                        deletion_in_flight(&all.created, key),
                        "acknowledged {key} is missing"
                    );
                }
            }
            for (key, n) in &all.counters {
                let kv = s.get(key).await.unwrap().unwrap();
                let v: u64 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                // The last write may have been durable without being acknowledged.
                assert!(v == *n || v == *n + 1, "{key}: {v} after acknowledging {n}");
            }
            // Consistent: revisions are sane and unique (one op per transaction here).
            let (kvs, rev) = s.list("/").await.unwrap();
            assert_eq!(rev, current);
            let mut revs = BTreeSet::new();
            for kv in &kvs {
                assert!(kv.create_revision <= kv.mod_revision && kv.mod_revision <= current);
                assert!(revs.insert(kv.mod_revision), "duplicate revision");
            }
        });
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(dir.path().join("store.log"))
            .unwrap()
            .ino();
        eprintln!(
            "round {round}: {} acknowledged writes checked, revision {}, log inode {inode}",
            all.lines, all.max_revision
        );
    }
    assert!(all.lines >= 250);
}
