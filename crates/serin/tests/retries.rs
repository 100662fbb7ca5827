//! A Canary whose objects the API server keeps refusing (issue 11, finding 6): serin retries it
//! with a growing delay, asks Prometheus nothing while it is not analysing, and does not patch
//! the same Event on every retry; once the cause goes, it initializes and probes the metric
//! provider once. Prometheus is reached through a counting proxy, so the test counts the queries
//! Prometheus received, not what serin says it sent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use serin::rollout::messages as msg;
use serin_sandbox::testenv::eventually;
use support::*;

/// A proxy in front of the sandbox's Prometheus that counts the requests it forwards.
struct CountingProxy {
    url: String,
    queries: Arc<AtomicUsize>,
}

impl CountingProxy {
    async fn start(upstream: &str) -> CountingProxy {
        #[derive(Clone)]
        struct Upstream {
            base: String,
            client: reqwest::Client,
            queries: Arc<AtomicUsize>,
        }
        async fn forward(
            State(up): State<Upstream>,
            method: Method,
            uri: Uri,
            body: Bytes,
        ) -> (StatusCode, [(&'static str, String); 1], String) {
            up.queries.fetch_add(1, Ordering::SeqCst);
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let url = format!("{}{path}", up.base.trim_end_matches('/'));
            let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
            let resp = up
                .client
                .request(method, url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_vec())
                .send()
                .await;
            match resp {
                Ok(r) => {
                    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                    let kind = r
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/json")
                        .to_string();
                    let body = r.text().await.unwrap_or_default();
                    (status, [("content-type", kind)], body)
                }
                Err(e) => (
                    StatusCode::BAD_GATEWAY,
                    [("content-type", "text/plain".into())],
                    e.to_string(),
                ),
            }
        }
        let queries = Arc::new(AtomicUsize::new(0));
        let up = Upstream {
            base: upstream.to_string(),
            client: reqwest::Client::new(),
            queries: queries.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(up);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        CountingProxy { url, queries }
    }

    fn count(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The address `serin controller --listen 127.0.0.1:0` bound, from its log.
async fn metrics_addr(w: &World) -> String {
    let log = w.controller.log.clone();
    eventually("serin serving /metrics", LIMIT, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let marker = "serving /metrics, /healthz and /readyz on ";
            text.lines()
                .find_map(|l| l.split_once(marker).map(|(_, a)| a.trim().to_string()))
                .ok_or_else(|| "no address logged yet".to_string())
        }
    })
    .await
}

/// The value of one series on serin's /metrics (0 when absent).
async fn sample(addr: &str, series: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const FAILED: &str = "serin_reconciles_total{result=\"error\"}";
const REFUSED: &str = "serin_reconcile_errors_total{kind=\"forbidden\"}";

/// (message, count) of the Events on the Canary.
async fn events(w: &World) -> Vec<(String, i32)> {
    let api: Api<Event> = Api::namespaced(w.client.clone(), &w.ns);
    let lp = ListParams::default().fields("involvedObject.name=podinfo,involvedObject.kind=Canary");
    api.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.message.unwrap_or_default(), e.count.unwrap_or(1)))
        .collect()
}

#[tokio::test]
async fn a_canary_whose_services_are_refused_backs_off_without_querying_prometheus() {
    let w = World::new("retries").await;
    let prometheus = CountingProxy::start(w.env.prometheus_url()).await;
    let addr = metrics_addr(&w).await;

    // No Service may be created in the namespace: serin's `podinfo-canary` is refused.
    let quotas = w.forbid_services().await;

    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    let mut c = canary(
        "podinfo",
        json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": builtin_metrics()}),
    );
    c["spec"]["metricsServer"] = json!(prometheus.url);
    w.apply(c).await;

    // The primary is written before the Services; once it runs, the refusals are all that is
    // left to retry.
    eventually("the primary ready and a refused Service", LIMIT, || async {
        let p = w.deployment("podinfo-primary").await.ok_or("no primary")?;
        let ready = p.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let errors = sample(&addr, FAILED).await;
        if ready == 2 && errors > 0 {
            Ok(())
        } else {
            Err(format!("primary ready {ready}, failed reconciles {errors}"))
        }
    })
    .await;
    let errors_before = sample(&addr, FAILED).await;
    let queries_before = prometheus.count();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let retries = sample(&addr, FAILED).await - errors_before;
    let queries = prometheus.count() - queries_before;
    let seen = events(&w).await;
    println!(
        "in 30 s: {retries} failed reconciles, {queries} Prometheus requests, events {seen:?}"
    );
    assert_eq!(
        prometheus.count(),
        0,
        "a Canary that never initialized asked Prometheus (log: {})",
        w.controller.log.display()
    );
    assert!(
        seen.iter().all(|(_, count)| *count == 1),
        "an Event was patched on a retry: {seen:?}"
    );
    // A fixed 5 s retry gives 6 in 30 s; the backoff (1, 2, 4, 8, 16 s) at most 5.
    assert!(
        retries <= 5,
        "{retries} failed reconciles in 30 s (log: {})",
        w.controller.log.display()
    );
    assert_eq!(
        w.canary("podinfo").await.status.and_then(|s| s.phase),
        None,
        "nothing initialized while the Services are refused"
    );
    assert!(
        sample(&addr, REFUSED).await >= 1,
        "the refusals are counted by kind"
    );

    // The cause goes: the next retry (within the 32 s the backoff has reached) initializes it,
    // and the providers are probed once.
    w.allow_services(&quotas).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let available = eventually("the providers' Event", LIMIT, || async {
        events(&w)
            .await
            .into_iter()
            .find(|(m, _)| m == msg::PROVIDERS_AVAILABLE)
            .ok_or_else(|| "no providers Event yet".to_string())
    })
    .await;
    assert_eq!(available.1, 1, "{available:?}");
    assert_eq!(
        prometheus.count(),
        1,
        "one vector(1) probe at initialization"
    );
}
