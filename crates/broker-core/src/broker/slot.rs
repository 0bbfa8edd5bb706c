//! A cache key's in-memory slot: its current token and its refresh state machine.

use super::*;

/// One cache key's in-memory slot: the current token, and the refresh state machine that makes one fetch serve
/// all callers. Its states: idle (nobody holds `fetch`), fetching (someone does; others queue on it), then the
/// outcome, published before `fetch` is released: a token (`current`, `generation`) or a failure (`failure`),
/// with `fetches` counting ended fetches so a waiter knows whether the one it queued behind has ended. An outage
/// or rejection also leaves `cooldown`: the time before which nobody asks again.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) current: RwLock<Option<Arc<AccessToken>>>,
    pub(super) fetch: tokio::sync::Mutex<()>,
    pub(super) generation: AtomicU64,
    pub(super) fetches: AtomicU64,
    pub(super) failure: std::sync::Mutex<Option<Error>>,
    pub(super) cooldown: std::sync::Mutex<Option<Cooldown>>,
}

impl Slot {
    pub(super) fn get(&self) -> Option<Arc<AccessToken>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub(super) fn fresh(
        &self,
        now: SystemTime,
        per_call: Option<Duration>,
        min_ttl: Duration,
    ) -> Option<Arc<AccessToken>> {
        let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
        match &*cur {
            Some(t) if t.is_fresh_for(now, per_call, min_ttl) => Some(Arc::clone(t)),
            _ => None,
        }
    }
    /// The failure of the last fetch, if it failed.
    pub(super) fn failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Publishes a fetch's outcome to those queued behind it (call before releasing `fetch`).
    pub(super) fn publish(&self, failure: Option<&Error>) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = failure.cloned();
        self.fetches.fetch_add(1, Ordering::AcqRel);
    }
    pub(super) fn cooldown(&self) -> Option<Cooldown> {
        self.cooldown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub(super) fn install(&self, t: Arc<AccessToken>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(t);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
