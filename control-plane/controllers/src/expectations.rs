//! Controller expectations (upstream's `UIDTrackingControllerExpectations`): before a controller
//! creates N pods or deletes some, it records that it expects to see them come or go; until the
//! informer shows all of it (or the record is five minutes old), the controller does not act on
//! that key again, so watch lag never makes it create or delete twice.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upstream's `ExpectationsTimeout`.
const TTL: Duration = Duration::from_secs(5 * 60);

struct Expect {
    adds: i64,
    deletes: HashSet<String>,
    at: Instant,
}

#[derive(Default)]
pub struct Expectations {
    m: Mutex<HashMap<String, Expect>>,
}

impl Expectations {
    /// Whether the controller may sync `key`: nothing is outstanding, or the record expired.
    pub fn satisfied(&self, key: &str) -> bool {
        let m = self.m.lock().expect("expectations lock");
        match m.get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.deletes.is_empty()) || e.at.elapsed() > TTL,
        }
    }

    pub fn expect_creations(&self, key: &str, n: i64) {
        let mut m = self.m.lock().expect("expectations lock");
        m.insert(
            key.to_string(),
            Expect {
                adds: n,
                deletes: HashSet::new(),
                at: Instant::now(),
            },
        );
    }

    pub fn expect_deletions(&self, key: &str, uids: impl IntoIterator<Item = String>) {
        let mut m = self.m.lock().expect("expectations lock");
        m.insert(
            key.to_string(),
            Expect {
                adds: 0,
                deletes: uids.into_iter().collect(),
                at: Instant::now(),
            },
        );
    }

    /// A pod owned by `key` appeared (or a create failed / was not attempted).
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.m.lock().expect("expectations lock").get_mut(key) {
            e.adds -= 1;
        }
    }

    /// A pod owned by `key` is gone or terminating (or its deletion failed).
    pub fn deletion_observed(&self, key: &str, uid: &str) {
        if let Some(e) = self.m.lock().expect("expectations lock").get_mut(key) {
            e.deletes.remove(uid);
        }
    }

    pub fn forget(&self, key: &str) {
        self.m.lock().expect("expectations lock").remove(key);
    }

    /// After lost change notifications: the stores are current, start over from them.
    pub fn clear(&self) {
        self.m.lock().expect("expectations lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_every_expected_change() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/a"));
        e.expect_creations("ns/a", 2);
        assert!(!e.satisfied("ns/a"));
        e.creation_observed("ns/a");
        assert!(!e.satisfied("ns/a"));
        e.creation_observed("ns/a");
        assert!(e.satisfied("ns/a"));
        e.expect_deletions("ns/a", ["u1".to_string(), "u2".to_string()]);
        e.deletion_observed("ns/a", "u1");
        e.deletion_observed("ns/a", "u1");
        assert!(!e.satisfied("ns/a"));
        e.deletion_observed("ns/a", "u2");
        assert!(e.satisfied("ns/a"));
    }
}
