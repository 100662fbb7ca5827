//! Logging set-up and the controller's `/metrics` and `/healthz`, with Flagger's metric names and
//! labels (docs/flagger-contract.md §8) so existing Grafana dashboards keep working.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub mod ops;

/// Log output format of `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global tracing subscriber. `RUST_LOG` wins over `level` when set.
pub fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::util::SubscriberInitExt;
    // An insecure-skip-verify kubeconfig (the sandbox's) would log a warning per connection.
    let default = format!("{level},kube_client::client::tls=error");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = subscriber(filter, format, std::io::stderr).try_init();
}

fn subscriber<W>(
    filter: tracing_subscriber::EnvFilter,
    format: LogFormat,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // Applied whatever `RUST_LOG` says: a log level is no reason to leak object bodies.
    let no_bodies = tracing_subscriber::filter::filter_fn(|meta| !logs_bodies(meta));
    tracing_subscriber::registry().with(fmt.with_filter(filter).with_filter(no_bodies))
}

/// kube_client's WARNs of its `client` module print a whole response body (a list of every
/// Canary with its spec and webhook URLs, 10 KB and more) when one object fails to deserialize;
/// serin reports such objects itself, by name (see `controller::unreadable`). The module's only
/// other WARNs are a watch stream's timeout and end, after which kube resumes the watch.
fn logs_bodies(meta: &tracing::Metadata<'_>) -> bool {
    meta.target() == "kube_client::client" && *meta.level() == tracing::Level::WARN
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameNs {
    pub name: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ns {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadNs {
    pub workload: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub name: String,
    pub namespace: String,
    pub metric: String,
}

/// A metric check's value on one side of a comparison (`side`: canary or primary).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricSideLabels {
    pub name: String,
    pub namespace: String,
    pub metric: String,
    pub side: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub name: String,
    pub namespace: String,
    pub deployment_strategy: String,
    pub analysis_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub version: String,
    pub mesh_provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

// ---- webhooks (serin_webhook_calls_total) ----

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The hook type (`confirm-rollout`, ..., `event`).
    pub r#type: String,
    /// success (status ≤ 202), failure (another status), error (no answer).
    pub outcome: String,
}

fn register_webhook_calls(registry: &mut Registry) -> Family<WebhookLabels, Counter> {
    let calls = Family::<WebhookLabels, Counter>::default();
    registry.register(
        "serin_webhook_calls",
        "Webhook calls by hook type and outcome (success, failure, error)",
        calls.clone(),
    );
    calls
}

// ---- end webhooks ----
// ---- alerts: `serin_alert_deliveries_total{provider, outcome}` ----
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertDeliveryLabels {
    /// slack | msteams | discord | rocket | gchat
    pub provider: String,
    /// success | failure
    pub outcome: String,
}
// ---- end alerts ----

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The numbers of the last check of each metric (`status["serin.dev/metrics"]` as metrics).
pub struct MetricCheckMetrics {
    /// The canary's value (the instant query's, else its median over the comparison window)
    /// and, with `compare`, the primary's median.
    pub value: Family<MetricSideLabels, FloatGauge>,
    /// 0 passed, 1 no data, 2 failed (as `flagger_canary_status`: 0 is the good state).
    pub result: Family<MetricLabels, Gauge>,
    /// With `compare`: how much worse than the primary the canary may be, in the metric's unit.
    pub allowed: Family<MetricLabels, FloatGauge>,
    /// With `compare`: the one-sided p-value of "worse by more than allowed".
    pub p_value: Family<MetricLabels, FloatGauge>,
}

impl MetricCheckMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = MetricCheckMetrics {
            value: Family::default(),
            result: Family::default(),
            allowed: Family::default(),
            p_value: Family::default(),
        };
        registry.register(
            "serin_canary_metric_value",
            "Last value of a metric check: the canary's and, when compared, the primary's",
            m.value.clone(),
        );
        registry.register(
            "serin_canary_metric_result",
            "Last result of a metric check (0 passed, 1 no data, 2 failed)",
            m.result.clone(),
        );
        registry.register(
            "serin_canary_metric_allowed_degradation",
            "How much worse than the primary the canary may be, in the metric's unit",
            m.allowed.clone(),
        );
        registry.register(
            "serin_canary_metric_p_value",
            "One-sided p-value of the canary being worse than the primary by more than allowed",
            m.p_value.clone(),
        );
        m
    }
}

/// Flagger's metrics plus serin's own.
pub struct Metrics {
    registry: Registry,
    pub canary_total: Family<Ns, Gauge>,
    pub canary_status: Family<NameNs, Gauge>,
    pub canary_weight: Family<WorkloadNs, Gauge>,
    pub canary_duration: Family<NameNs, Histogram>,
    pub metric_analysis: Family<MetricLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// serin's: what a person needs to see why a metric check went the way it did.
    pub metric_checks: MetricCheckMetrics,
    pub successes: Family<OutcomeLabels, Counter>,
    pub failures: Family<OutcomeLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub reconciles: Family<ResultLabels, Counter>,
    /// serin's operational metrics and health (leader election, API errors, caches).
    pub ops: ops::OpsMetrics,
    pub webhook_calls: Family<WebhookLabels, Counter>,
    /// alerts
    pub alert_deliveries: Family<AlertDeliveryLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let info = Family::<InfoLabels, Gauge>::default();
        info.get_or_create(&InfoLabels {
            version: env!("CARGO_PKG_VERSION").into(),
            mesh_provider: "istio".into(),
        })
        .set(1);
        registry.register(
            "flagger_info",
            "Flagger version and mesh provider information",
            info,
        );
        let canary_total = Family::<Ns, Gauge>::default();
        registry.register(
            "flagger_canary_total",
            "Total number of canary object",
            canary_total.clone(),
        );
        let canary_status = Family::<NameNs, Gauge>::default();
        registry.register(
            "flagger_canary_status",
            "Last canary analysis result (0 progressing, 1 done, 2 failed)",
            canary_status.clone(),
        );
        let canary_weight = Family::<WorkloadNs, Gauge>::default();
        registry.register(
            "flagger_canary_weight",
            "The virtual service destination weight current value",
            canary_weight.clone(),
        );
        let canary_duration = Family::<NameNs, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "flagger_canary_duration_seconds",
            "Seconds spent performing canary analysis.",
            canary_duration.clone(),
        );
        let metric_analysis =
            Family::<MetricLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "flagger_canary_metric_analysis",
            "Last canary analysis result per metric",
            metric_analysis.clone(),
        );
        let metric_checks = MetricCheckMetrics::register(&mut registry);
        let successes = Family::<OutcomeLabels, Counter>::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "flagger_canary_successes",
            "Total number of canary successes",
            successes.clone(),
        );
        let failures = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "flagger_canary_failures",
            "Total number of canary failures",
            failures.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "serin_reconcile_duration_seconds",
            "Time one reconcile of a canary took",
            reconcile_duration.clone(),
        );
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "serin_reconciles",
            "Reconciles by result (ok, error)",
            reconciles.clone(),
        );
        let ops = ops::OpsMetrics::register(&mut registry);
        let webhook_calls = register_webhook_calls(&mut registry);
        // ---- alerts ----
        let alert_deliveries = Family::<AlertDeliveryLabels, Counter>::default();
        registry.register(
            "serin_alert_deliveries",
            "Alert deliveries to chat services by provider type and outcome (success, failure)",
            alert_deliveries.clone(),
        );
        // ---- end alerts ----
        Metrics {
            ops,
            registry,
            webhook_calls,
            canary_total,
            canary_status,
            canary_weight,
            canary_duration,
            metric_analysis,
            metric_checks,
            successes,
            failures,
            reconcile_duration,
            reconciles,
            alert_deliveries,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the future is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let health = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "OK") }))
        .route(
            "/readyz",
            get(move || {
                let (code, body) = health.ops.readiness();
                async move { (code, body) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // The bound address, not the requested one: `--listen 127.0.0.1:0` picks a free port.
    if let Ok(bound) = listener.local_addr() {
        tracing::info!("serving /metrics, /healthz and /readyz on {bound}");
    }
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn kube_clients_body_dumps_never_reach_the_log_even_at_trace() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let buf = Buf::default();
            let out = buf.clone();
            let sub = subscriber(
                tracing_subscriber::EnvFilter::new("trace"),
                format,
                move || out.clone(),
            );
            tracing::subscriber::with_default(sub, || {
                tracing::warn!(target: "kube_client::client", "{{\"items\":[{{\"spec\":\"https://hooks.example/secret\"}}]}}, Error(\"invalid value\")");
                tracing::error!(target: "kube_client::client::builder", "failed with status 500");
                tracing::warn!(target: "serin::controller", "kept");
            });
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            assert!(!text.contains("hooks.example"), "{text}");
            assert!(text.contains("failed with status 500"), "{text}");
            assert!(text.contains("kept"), "{text}");
        }
    }

    #[test]
    fn exposition_uses_flaggers_names_and_labels() {
        let m = Metrics::new();
        let nn = NameNs {
            name: "podinfo".into(),
            namespace: "test".into(),
        };
        m.canary_status.get_or_create(&nn).set(1);
        m.canary_total
            .get_or_create(&Ns {
                namespace: "test".into(),
            })
            .set(3);
        for (workload, w) in [("podinfo-primary", 75), ("podinfo", 25)] {
            m.canary_weight
                .get_or_create(&WorkloadNs {
                    workload: workload.into(),
                    namespace: "test".into(),
                })
                .set(w);
        }
        m.metric_analysis
            .get_or_create(&MetricLabels {
                name: "podinfo".into(),
                namespace: "test".into(),
                metric: "request-duration".into(),
            })
            .set(0.25);
        let outcome = OutcomeLabels {
            name: "podinfo".into(),
            namespace: "test".into(),
            deployment_strategy: "canary".into(),
            analysis_status: "completed".into(),
        };
        m.successes.get_or_create(&outcome).inc();
        m.failures.get_or_create(&outcome).inc();
        m.canary_duration.get_or_create(&nn).observe(0.2);
        let text = m.encode();
        for line in [
            r#"flagger_info{version="#,
            r#"flagger_canary_total{namespace="test"} 3"#,
            r#"flagger_canary_status{name="podinfo",namespace="test"} 1"#,
            r#"flagger_canary_weight{workload="podinfo-primary",namespace="test"} 75"#,
            r#"flagger_canary_weight{workload="podinfo",namespace="test"} 25"#,
            r#"flagger_canary_metric_analysis{name="podinfo",namespace="test",metric="request-duration"} 0.25"#,
            r#"flagger_canary_successes_total{name="podinfo",namespace="test",deployment_strategy="canary",analysis_status="completed"} 1"#,
            r#"flagger_canary_failures_total{name="podinfo",namespace="test",deployment_strategy="canary",analysis_status="completed"} 1"#,
            r#"flagger_canary_duration_seconds_count{name="podinfo",namespace="test"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }
}
