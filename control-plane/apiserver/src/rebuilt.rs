//! A value rebuilt from the store after invalidations (the RBAC snapshot, the webhook
//! configurations). A reader that arrives after an invalidation waits for a build that started
//! after it, so it never answers from older state (at start-up: the empty value).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub struct Rebuilt<T> {
    /// Bumped by every invalidation.
    wanted: AtomicU64,
    /// The `wanted` value the current value was built after.
    built: AtomicU64,
    value: RwLock<Arc<T>>,
    rebuild: tokio::sync::Mutex<()>,
}

impl<T: Default> Default for Rebuilt<T> {
    fn default() -> Self {
        Rebuilt {
            wanted: AtomicU64::new(1),
            built: AtomicU64::new(0),
            value: RwLock::new(Arc::new(T::default())),
            rebuild: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T> Rebuilt<T> {
    /// Marks the value stale (after a write to what it is built from).
    pub fn invalidate(&self) {
        self.wanted.fetch_add(1, Ordering::AcqRel);
    }

    /// The current value, rebuilt first with `build` when stale. `build` returns `None` when it
    /// could not read everything; the value is then kept and rebuilt on the next call.
    pub async fn get<F, Fut>(&self, build: F) -> Arc<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let want = self.wanted.load(Ordering::Acquire);
        if self.built.load(Ordering::Acquire) < want {
            let _g = self.rebuild.lock().await;
            if self.built.load(Ordering::Acquire) < want {
                // Writes during the build bump `wanted` again and trigger another one.
                let target = self.wanted.load(Ordering::Acquire);
                if let Some(v) = build().await {
                    *self.value.write().expect("rebuilt value lock") = Arc::new(v);
                    self.built.store(target, Ordering::Release);
                }
            }
        }
        self.value.read().expect("rebuilt value lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_see_a_build_after_the_last_invalidation() {
        let r: Rebuilt<u32> = Rebuilt::default();
        assert_eq!(*r.get(|| async { Some(1) }).await, 1);
        // Fresh: no rebuild.
        assert_eq!(*r.get(|| async { Some(2) }).await, 1);
        r.invalidate();
        assert_eq!(*r.get(|| async { Some(3) }).await, 3);
        // A failed build keeps the old value and retries next time.
        r.invalidate();
        assert_eq!(*r.get(|| async { None }).await, 3);
        assert_eq!(*r.get(|| async { Some(4) }).await, 4);
    }
}
