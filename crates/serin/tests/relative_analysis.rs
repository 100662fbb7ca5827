//! The controller's relative judgement (`analysis.metrics[].compare`) and `onNoData`, on the
//! sandbox: the mesh simulator's `serin.dev/simulate` makes the primary and the canary degrade
//! (errors, latency) or lose their traffic, real Prometheus records it, a real `serin controller`
//! judges. Each test asserts what a user sees: phases, Events, the status' metric checks, the
//! VirtualService and serin's /metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use serin::api::MetricCheckStatus;
use serin_sandbox::testenv::eventually;
use support::*;

fn analysis(metrics: Value) -> Value {
    json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": metrics})
}

/// A world whose primary runs `podinfo:6.0.0` with `simulate`, initialized with `metrics`.
async fn initialized(prefix: &str, simulate: Value, metrics: Value) -> World {
    let w = World::new(prefix).await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", simulate))
        .await;
    w.apply(canary("podinfo", analysis(metrics))).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    w
}

/// Applies a new revision and waits for its run to start.
async fn release(w: &World, image: &str, simulate: Value) {
    w.apply(deployment("podinfo", image, simulate)).await;
    w.wait_phase("podinfo", "Progressing", LIMIT).await;
}

async fn metric_status(w: &World, metric: &str) -> Option<MetricCheckStatus> {
    w.canary("podinfo")
        .await
        .status?
        .serin_metrics
        .into_iter()
        .find(|m| m.name == metric)
}

fn canary_weight_in_vs(vs: &Value) -> u32 {
    routes_of(vs, "podinfo").unwrap().canary
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

/// The value of the series whose line starts with `series` on serin's /metrics.
async fn exported(addr: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const COMPARE: &str = r#"{"window": "30s", "step": "2s", "minSamples": 5}"#;

#[tokio::test]
async fn equal_degradation_is_promoted_by_the_relative_judgement_where_the_fixed_floor_rolls_back()
{
    // The primary has a bad hour: one request in five fails.
    let fixed = json!([{"name": "request-success-rate", "interval": "30s",
                        "thresholdRange": {"min": 99}}]);
    let degraded = json!({"serin.dev/simulate": "errors=20%"});
    let w = initialized("relative-sr", degraded.clone(), fixed).await;
    let ns = w.ns.clone();

    // The fixed floor fails a canary exactly as bad as the primary.
    release(&w, "podinfo:6.0.1", degraded.clone()).await;
    w.wait_phase("podinfo", "Failed", LIMIT).await;
    let events = w.events("podinfo").await;
    assert!(
        events
            .iter()
            .any(|(t, m)| t == "Warning" && m.contains("success rate") && m.contains("< 99%")),
        "{events:#?}"
    );

    // Judged against the primary, the same canary is no worse, and is promoted.
    let mut compare: Value = serde_json::from_str(COMPARE).unwrap();
    compare["maxDegradation"] = json!(5);
    w.apply(canary(
        "podinfo",
        analysis(json!([{"name": "request-success-rate", "interval": "30s",
                         "compare": compare, "onNoData": "hold"}])),
    ))
    .await;
    release(&w, "podinfo:6.0.2", degraded).await;
    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert_eq!(c.status.as_ref().unwrap().failed_checks, Some(0));
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.2"
    );
    let m = metric_status(&w, "request-success-rate").await.unwrap();
    assert_eq!(m.result.as_deref(), Some("pass"), "{m:?}");
    let cmp = m.comparison.expect("the comparison in status");
    assert_eq!(cmp.result, "pass");
    let (canary, primary) = (cmp.canary.unwrap(), cmp.primary.unwrap());
    assert!(
        (75.0..=85.0).contains(&primary) && (canary - primary).abs() < 4.0,
        "both at about 80 %: {cmp:?}"
    );
    assert!(
        cmp.canary_samples >= 5 && cmp.primary_samples >= 5,
        "{cmp:?}"
    );
    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Normal"
            && m.starts_with("Metric request-success-rate passed against the primary: canary ")
            && m.contains("vs primary")),
        "an Event tells the numbers: {events:#?}"
    );
    let _ = ns;
}

#[tokio::test]
async fn a_doubled_latency_under_a_generous_threshold_is_rolled_back_by_the_relative_judgement() {
    let compare: Value = serde_json::from_str(COMPARE).unwrap();
    let metrics = json!([{"name": "request-duration", "interval": "30s",
                          "thresholdRange": {"max": 1000},
                          "compare": compare, "onNoData": "hold"}]);
    let w = initialized(
        "relative-latency",
        json!({"serin.dev/simulate": "latency=100ms"}),
        metrics,
    )
    .await;
    let addr = metrics_addr(&w).await;
    release(
        &w,
        "podinfo:6.0.1",
        json!({"serin.dev/simulate": "latency=200ms"}),
    )
    .await;
    let c = w.wait_phase("podinfo", "Failed", LIMIT).await;
    assert_eq!(
        canary_weight_in_vs(&w.virtual_service("podinfo").await.unwrap()),
        0,
        "traffic back on the primary"
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.0"
    );
    assert_eq!(c.status.as_ref().unwrap().failed_checks, Some(2));

    let m = metric_status(&w, "request-duration").await.unwrap();
    assert_eq!(m.result.as_deref(), Some("fail"), "{m:?}");
    let value = m.value.unwrap();
    assert!(
        value > 150.0 && value < 1000.0,
        "the p99 stayed under the generous 1000 ms: {m:?}"
    );
    let cmp = m.comparison.clone().expect("the comparison in status");
    assert_eq!(cmp.result, "fail");
    let (canary, primary) = (cmp.canary.unwrap(), cmp.primary.unwrap());
    assert!(canary > 1.5 * primary, "{cmp:?}");
    assert!(cmp.p_value.unwrap() < cmp.alpha, "{cmp:?}");
    assert!(cmp.degradation_percent.unwrap() > 10.0, "{cmp:?}");
    let message = m.message.unwrap();
    println!("the failure: {message}");
    assert!(
        message.contains("request-duration is worse than the primary"),
        "{message}"
    );
    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Warning" && *m == message),
        "the Warning Event carries the numbers: {events:#?}"
    );

    // The same numbers on /metrics, under serin's names; Flagger's gauge keeps its meaning.
    let ns = &w.ns;
    let labels = format!(r#"name="podinfo",namespace="{ns}",metric="request-duration""#);
    assert_eq!(
        exported(&addr, &format!("serin_canary_metric_result{{{labels}}}")).await,
        Some(2.0)
    );
    let primary_exported = exported(
        &addr,
        &format!(r#"serin_canary_metric_value{{{labels},side="primary"}}"#),
    )
    .await
    .unwrap();
    assert!((primary_exported - primary).abs() < 1e-6);
    assert!(
        exported(&addr, &format!("serin_canary_metric_p_value{{{labels}}}"))
            .await
            .unwrap()
            < cmp.alpha
    );
    assert!(
        exported(
            &addr,
            &format!("serin_canary_metric_allowed_degradation{{{labels}}}")
        )
        .await
        .unwrap()
            > 0.0
    );
    let flagger = exported(
        &addr,
        &format!("flagger_canary_metric_analysis{{{labels}}}"),
    )
    .await
    .unwrap();
    assert!(
        (flagger - value / 1000.0).abs() < 1e-6,
        "Flagger's gauge: the p99 in seconds"
    );
}

/// A canary nobody calls (`traffic=0%`) under a success-rate check with `onNoData: policy`.
async fn without_traffic(prefix: &str, policy: &str) -> World {
    let w = initialized(
        prefix,
        json!({}),
        json!([{"name": "request-success-rate", "interval": "30s",
                "thresholdRange": {"min": 99}, "onNoData": policy}]),
    )
    .await;
    release(
        &w,
        "podinfo:6.0.1",
        json!({"serin.dev/simulate": "traffic=0%"}),
    )
    .await;
    w
}

#[tokio::test]
async fn no_traffic_with_on_no_data_fail_is_a_failed_check() {
    let w = without_traffic("nodata-fail", "fail").await;
    let c = w.wait_phase("podinfo", "Failed", LIMIT).await;
    assert_eq!(c.status.unwrap().failed_checks, Some(2));
    let events = w.events("podinfo").await;
    assert!(
        events
            .iter()
            .any(|(t, m)| t == "Warning" && m.contains("no values found")),
        "{events:#?}"
    );
    let m = metric_status(&w, "request-success-rate").await.unwrap();
    assert_eq!(m.result.as_deref(), Some("noData"));
    assert_eq!(m.value, None);
}

#[tokio::test]
async fn no_traffic_with_on_no_data_pass_is_promoted() {
    let w = without_traffic("nodata-pass", "pass").await;
    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert_eq!(c.status.unwrap().failed_checks, Some(0));
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.1"
    );
}

#[tokio::test]
async fn no_traffic_with_on_no_data_hold_waits_across_a_restart_then_rolls_back_at_the_deadline() {
    let mut w = without_traffic("nodata-hold", "hold").await;
    // Held: the step neither advances nor counts a failure, and the start of the stretch without
    // data is in the status.
    let since = eventually("noDataSince in status", LIMIT, || async {
        let c = w.canary("podinfo").await;
        c.status
            .as_ref()
            .and_then(|s| s.serin_progress.as_ref())
            .and_then(|p| p.no_data_since.clone())
            .ok_or_else(|| format!("{:?}", c.status))
    })
    .await;
    let held = eventually("a hold Event", LIMIT, || async {
        let events = w.events("podinfo").await;
        events
            .iter()
            .find(|(t, m)| t == "Warning" && m.contains("onNoData: hold, not counted"))
            .cloned()
            .ok_or_else(|| format!("{events:#?}"))
    })
    .await;
    assert!(held.1.contains("no values found"), "{held:?}");
    let status = w.canary("podinfo").await.status.unwrap();
    assert_eq!(status.failed_checks, Some(0));
    assert_eq!(
        status.canary_weight,
        Some(25),
        "the first step, not advanced"
    );

    // A restarted controller keeps the stretch where it began.
    w.controller.kill();
    w.controller = ControllerProcess::spawn(w.env, &w.ns, "2");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = w.canary("podinfo").await;
    let status = c.status.unwrap();
    assert_eq!(
        status.serin_progress.and_then(|p| p.no_data_since),
        Some(since),
        "the same start after the restart"
    );
    assert_eq!(status.failed_checks, Some(0));

    // progressDeadlineSeconds (60) after the first check without data, it is rolled back.
    let c = w.wait_phase("podinfo", "Failed", LIMIT).await;
    assert_eq!(c.status.unwrap().failed_checks, Some(0));
    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Warning"
            && m.contains("for longer than progressDeadlineSeconds 60 (onNoData: hold)")),
        "{events:#?}"
    );
    assert_eq!(
        canary_weight_in_vs(&w.virtual_service("podinfo").await.unwrap()),
        0
    );
}
