//! Per-Canary exponential backoff for failed reconciles. kube's controller retries when the
//! error policy says; a fixed delay turns a failure that repeats (a Service the API server
//! refuses, a quota, a webhook that denies) into a steady stream of writes per Canary, and with
//! many Canaries into a hot loop against the API server. The delay doubles per consecutive
//! failure of one Canary, is capped, and resets when a reconcile of that Canary succeeds.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::Canary;

/// The delay after the first failure.
pub const FIRST: Duration = Duration::from_secs(1);
/// The longest delay: a Canary that keeps failing is still retried every five minutes.
pub const MAX: Duration = Duration::from_secs(300);
/// How often entries of deleted Canaries are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The delay after `failures` consecutive failures (at least one): 1 s, 2 s, 4 s, ... up to
/// [`MAX`].
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    FIRST.saturating_mul(1u32 << doublings).min(MAX)
}

/// The key of a Canary: its uid, so that a Canary deleted and created again under the same name
/// starts afresh; the namespaced name for an object without one.
pub fn key(canary: &Canary) -> String {
    match &canary.metadata.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}",
            canary.metadata.namespace.as_deref().unwrap_or_default(),
            canary.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// Consecutive failures per Canary.
#[derive(Default)]
pub struct Backoffs {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    failures: HashMap<String, u32>,
    pruned_at: Option<Instant>,
}

impl Backoffs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a failure and says how long to wait before the next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let mut s = self.state();
        let n = s.failures.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        delay(*n)
    }

    /// A reconcile succeeded: the next failure starts from [`FIRST`] again.
    pub fn succeeded(&self, key: &str) {
        self.state().failures.remove(key);
    }

    /// Whether the last reconcile of this Canary failed, so that this one is a retry.
    pub fn retrying(&self, key: &str) -> bool {
        self.state().failures.contains_key(key)
    }

    /// Forgets Canaries that are gone, at most once per minute: `live` lists the keys of the
    /// Canaries that exist (from the watch cache), and is only asked when a pass is due.
    pub fn prune(&self, now: Instant, live: impl FnOnce() -> HashSet<String>) {
        let mut s = self.state();
        if s.failures.is_empty() || s.pruned_at.is_some_and(|t| now < t + PRUNE_EVERY) {
            return;
        }
        s.pruned_at = Some(now);
        let live = live();
        s.failures.retain(|k, _| live.contains(k));
    }

    /// How many Canaries are backing off.
    pub fn len(&self) -> usize {
        self.state().failures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_one_second_up_to_five_minutes() {
        let cases = [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 16),
            (6, 32),
            (7, 64),
            (8, 128),
            (9, 256),
            (10, 300),
            (40, 300),
            (u32::MAX, 300),
        ];
        for (failures, secs) in cases {
            assert_eq!(
                delay(failures),
                Duration::from_secs(secs),
                "after {failures} failures"
            );
        }
    }

    #[test]
    fn failures_count_per_canary_and_reset_on_success() {
        let b = Backoffs::default();
        assert!(!b.retrying("a"));
        let a: Vec<u64> = (0..4).map(|_| b.failed("a").as_secs()).collect();
        assert_eq!(a, [1, 2, 4, 8]);
        assert_eq!(b.failed("b"), Duration::from_secs(1), "b has its own count");
        assert!(b.retrying("a"));
        b.succeeded("a");
        assert!(!b.retrying("a"));
        assert_eq!(b.failed("a"), Duration::from_secs(1), "starts over");
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn deleted_canaries_are_forgotten_at_most_once_a_minute() {
        let b = Backoffs::default();
        for k in ["a", "b", "c"] {
            b.failed(k);
        }
        let t0 = Instant::now();
        b.prune(t0, || HashSet::from(["a".to_string()]));
        assert_eq!(b.len(), 1);
        assert!(b.retrying("a"));
        b.failed("d");
        let mut asked = false;
        b.prune(t0 + Duration::from_secs(30), || {
            asked = true;
            HashSet::new()
        });
        assert!(!asked, "not due yet");
        assert_eq!(b.len(), 2);
        b.prune(t0 + PRUNE_EVERY, HashSet::new);
        assert!(b.is_empty());
    }

    #[test]
    fn a_canary_is_keyed_by_uid_or_else_by_name() {
        let mut c: Canary = serde_json::from_value(serde_json::json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test", "uid": "u1"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"}, "service": {"port": 80}},
        }))
        .unwrap();
        assert_eq!(key(&c), "u1");
        c.metadata.uid = None;
        assert_eq!(key(&c), "test/podinfo");
    }
}
