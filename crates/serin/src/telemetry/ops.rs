//! serin's own operational metrics (beside Flagger's) and the state behind `/readyz`.
//!
//! Names are fixed in advance so that dashboards and other parts can rely on them:
//! `serin_reconcile_duration_seconds` (registered with Flagger's block), `serin_api_errors_total`,
//! `serin_reconcile_errors_total{kind}`, `serin_prometheus_query_duration_seconds`,
//! `serin_canaries{phase}`, `serin_leader` and `serin_unreadable_objects{kind}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiErrorLabels {
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// Plural resource name (`canaries`, `deployments`, ...), without subresource.
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorKindLabels {
    /// A short fixed set: conflict, invalid, forbidden, not_found, throttled, server_error,
    /// api_error, not_leader, transport, no_uid, serialize.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// Shared by the controller, the leader elector and the HTTP server.
#[derive(Clone)]
pub struct OpsMetrics {
    pub api_errors: Family<ApiErrorLabels, Counter>,
    pub reconcile_errors: Family<ErrorKindLabels, Counter>,
    pub prometheus_query_duration: Histogram,
    pub canaries: Family<PhaseLabels, Gauge>,
    pub leader: Gauge,
    /// Objects the API server holds that serin cannot read, by kind: they are skipped.
    pub unreadable: Family<KindLabels, Gauge>,
    pub health: Arc<Health>,
}

impl OpsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let api_errors = Family::<ApiErrorLabels, Counter>::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "serin_api_errors",
            "Kubernetes API requests that failed (transport error or HTTP status >= 400, except 404 on get and delete)",
            api_errors.clone(),
        );
        let reconcile_errors = Family::<ErrorKindLabels, Counter>::default();
        registry.register(
            "serin_reconcile_errors",
            "Reconciles of a canary that failed and are retried with a backoff, by kind of error",
            reconcile_errors.clone(),
        );
        let prometheus_query_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "serin_prometheus_query_duration_seconds",
            "Time one Prometheus query of a canary analysis took",
            prometheus_query_duration.clone(),
        );
        let canaries = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "serin_canaries",
            "Canaries by status phase (Unknown: no phase yet)",
            canaries.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "serin_leader",
            "1 while this process holds the leader Lease (or runs without leader election), else 0",
            leader.clone(),
        );
        let unreadable = Family::<KindLabels, Gauge>::default();
        registry.register(
            "serin_unreadable_objects",
            "Objects serin cannot read (a value its types refuse), by kind; they are skipped and reported on the object",
            unreadable.clone(),
        );
        OpsMetrics {
            unreadable,
            api_errors,
            reconcile_errors,
            prometheus_query_duration,
            canaries,
            leader,
            health: Arc::new(Health::default()),
        }
    }

    /// `/readyz`: a controller is ready once its caches have listed everything, and only while
    /// no watch is failing: a controller whose watches are down decides from a cache that no
    /// longer follows the cluster, and must not look healthy. A standby (leader election on,
    /// Lease held by another process) runs no caches and answers ready, since it is healthy and
    /// able to take over (controller-runtime does the same), and a 2-replica Deployment's
    /// rolling update would otherwise never finish.
    pub fn readiness(&self) -> (StatusCode, String) {
        let h = &self.health;
        if h.leader_elect.load(Ordering::Acquire) && !h.leading.load(Ordering::Acquire) {
            return (
                StatusCode::OK,
                "OK (standby: waiting for the leader Lease)".into(),
            );
        }
        let blind = h.blind_watches();
        if !blind.is_empty() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "watches failing, relisting: {}",
                    blind
                        .iter()
                        .map(|(w, e)| format!("{w} ({e})"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
        }
        if h.caches_synced.load(Ordering::Acquire) {
            (StatusCode::OK, "OK".into())
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "caches not synced yet".into(),
            )
        }
    }
}

/// What `/readyz` depends on.
#[derive(Debug, Default)]
pub struct Health {
    pub leader_elect: AtomicBool,
    pub leading: AtomicBool,
    pub caches_synced: AtomicBool,
    /// Watches that failed and have not listed again since: watch name → last error.
    blind: Mutex<BTreeMap<String, String>>,
}

impl Health {
    /// A watch failed: the cache it feeds stops following the cluster until it has relisted.
    pub fn watch_failed(&self, watch: &str, error: &str) {
        if let Ok(mut b) = self.blind.lock() {
            b.insert(watch.to_string(), error.to_string());
        }
    }

    /// A watch listed everything again.
    pub fn watch_listed(&self, watch: &str) {
        if let Ok(mut b) = self.blind.lock() {
            b.remove(watch);
        }
    }

    pub fn blind_watches(&self) -> BTreeMap<String, String> {
        self.blind.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_caches_and_leadership() {
        let mut r = Registry::default();
        let ops = OpsMetrics::register(&mut r);
        assert_eq!(ops.readiness().0, StatusCode::SERVICE_UNAVAILABLE);
        ops.health.caches_synced.store(true, Ordering::Release);
        assert_eq!(ops.readiness().0, StatusCode::OK);

        let ops = OpsMetrics::register(&mut Registry::default());
        ops.health.leader_elect.store(true, Ordering::Release);
        let (code, body) = ops.readiness();
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("standby"));
        ops.health.leading.store(true, Ordering::Release);
        assert_eq!(ops.readiness().0, StatusCode::SERVICE_UNAVAILABLE);
        ops.health.caches_synced.store(true, Ordering::Release);
        assert_eq!(ops.readiness(), (StatusCode::OK, "OK".to_string()));
    }

    #[test]
    fn a_failing_watch_makes_the_controller_unready_until_it_has_listed_again() {
        let ops = OpsMetrics::register(&mut Registry::default());
        ops.health.caches_synced.store(true, Ordering::Release);
        ops.health.watch_failed("deployments", "connection refused");
        ops.health
            .watch_failed("canaries", "too old resource version");
        let (code, body) = ops.readiness();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "watches failing, relisting: canaries (too old resource version); deployments (connection refused)"
        );
        ops.health.watch_listed("canaries");
        assert_eq!(ops.readiness().0, StatusCode::SERVICE_UNAVAILABLE);
        ops.health.watch_listed("deployments");
        assert_eq!(ops.readiness(), (StatusCode::OK, "OK".to_string()));
        // A standby runs no watches: whatever they last said does not matter.
        ops.health.watch_failed("deployments", "x");
        ops.health.leader_elect.store(true, Ordering::Release);
        assert_eq!(ops.readiness().0, StatusCode::OK);
    }
}
