//! `serin backtest` against releases recorded in the sandbox's Prometheus: a real controller runs
//! each release with the mesh simulator's telemetry, then the backtest replays a Canary over the
//! recorded window and must reach the outcome the run had (or, for a different manifest, the
//! outcome that manifest implies). The recorded promotion is also held against `serin plan`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use support::*;

/// A recorded release: from the moment its revision was applied to a little after it ended.
struct Window {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// Applies `image` (with simulate annotations) and waits for `phase`; returns the window.
async fn record(w: &World, image: &str, simulate: Value, phase: &str) -> Window {
    let from = Utc::now();
    w.apply(deployment("podinfo", image, simulate)).await;
    // The phase before is often the same one (Succeeded): wait for the run to start first.
    w.wait_phase("podinfo", "Progressing", LIMIT).await;
    w.wait_phase("podinfo", phase, LIMIT).await;
    Window {
        from,
        to: Utc::now() + chrono::Duration::seconds(15),
    }
}

/// Runs `serin backtest` on `canary` over `window`; returns the exit code and the output.
fn backtest(w: &World, name: &str, canary: &Value, window: &Window) -> (i32, String) {
    let file: PathBuf = w
        .env
        .logs_dir()
        .join(format!("backtest-{}-{name}.yaml", w.ns));
    std::fs::write(&file, serde_yaml_ng::to_string(canary).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serin"))
        .arg("backtest")
        .arg("-f")
        .arg(&file)
        .args(["-n", &w.ns, "--prometheus", w.env.prometheus_url()])
        .args(["--from", &window.from.to_rfc3339()])
        .args(["--to", &window.to.to_rfc3339()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running serin backtest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `serin plan -o json` of `canary`.
fn plan_json(w: &World, canary: &Value) -> Value {
    let file: PathBuf = w.env.logs_dir().join(format!("plan-{}.yaml", w.ns));
    std::fs::write(&file, serde_yaml_ng::to_string(canary).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serin"))
        .args(["plan", "-o", "json", "-n", &w.ns, "-f"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running serin plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until Prometheus has scraped past the end of the windows.
async fn settle(windows: &[&Window]) {
    let last = windows.iter().map(|w| w.to).max().unwrap();
    let wait = (last - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(3);
    tokio::time::sleep(wait).await;
}

fn progressive(metrics: Value) -> Value {
    json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": metrics})
}

#[tokio::test]
async fn backtest_reproduces_a_recorded_promotion_and_a_recorded_rollback() {
    let w = World::new("backtest-runs").await;
    let manifest = canary("podinfo", progressive(builtin_metrics()));
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(manifest.clone()).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;

    let weights = w.watch_weights("podinfo");
    let good = record(&w, "podinfo:6.0.1", json!({}), "Succeeded").await;
    let took = (Utc::now() - good.from).num_milliseconds() as f64 / 1000.0;
    weights.caught_up().await;
    let seen = weights.canary_weights();

    // `serin plan` foretold these weights and, as the earliest possible, no later an end.
    let plan = plan_json(&w, &manifest);
    let mut planned: Vec<u32> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["canaryWeight"].as_u64().unwrap() as u32)
        .collect();
    planned.dedup();
    assert_eq!(seen, planned, "VirtualService weights {:?}", weights.all());
    let planned_end = plan["promotion"]["succeededAtSeconds"].as_f64().unwrap();
    // The plan gives the earliest moment; how much later a loaded machine gets there is no
    // property of serin's (no upper bound: that would be a timing assertion).
    assert!(
        planned_end <= took,
        "planned Succeeded at +{planned_end}s, but the run took only {took}s"
    );

    let bad = record(
        &w,
        "podinfo:6.0.2",
        json!({"serin.dev/simulate": "errors=50%"}),
        "Failed",
    )
    .await;
    settle(&[&good, &bad]).await;

    let (code, out) = backtest(&w, "good", &manifest, &good);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("would have been PROMOTED"), "{out}");
    assert!(out.contains("request-success-rate"), "{out}");

    let (code, out) = backtest(&w, "bad", &manifest, &bad);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("would have been ROLLED BACK"), "{out}");
    assert!(
        out.contains("advancement success rate") && out.contains("< 99%"),
        "the failing check is named: {out}"
    );
}

#[tokio::test]
async fn relative_judgement_follows_the_primary() {
    let w = World::new("backtest-relative").await;
    // The recording itself judges nothing (metrics without ranges pass), so each run lasts its
    // full five steps and both workloads are measured throughout.
    let recorder = canary(
        "podinfo",
        json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 10,
               "metrics": [{"name": "request-success-rate", "interval": "30s"},
                           {"name": "request-duration", "interval": "30s"}]}),
    );
    // The primary starts out degraded: a bad hour for a dependency.
    w.apply(deployment(
        "podinfo",
        "podinfo:6.0.0",
        json!({"serin.dev/simulate": "errors=20%"}),
    ))
    .await;
    w.apply(recorder).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    // The canary is degraded exactly as much.
    let both_degraded = record(
        &w,
        "podinfo:6.0.1",
        json!({"serin.dev/simulate": "errors=20%"}),
        "Succeeded",
    )
    .await;
    // A healthy primary at 100 ms, then a release whose latency doubles.
    record(
        &w,
        "podinfo:6.0.2",
        json!({"serin.dev/simulate": "latency=100ms"}),
        "Succeeded",
    )
    .await;
    // Let the windows of the queries (30 s) and of the comparison (30 s) forget the runs before:
    // a release right after a promotion would compare against a primary still changing.
    tokio::time::sleep(Duration::from_secs(65)).await;
    let slower = record(
        &w,
        "podinfo:6.0.3",
        json!({"serin.dev/simulate": "latency=200ms"}),
        "Succeeded",
    )
    .await;
    settle(&[&both_degraded, &slower]).await;

    let compare = json!({"window": "30s", "step": "2s", "minSamples": 5});
    let fixed_sr = canary(
        "podinfo",
        progressive(json!([{"name": "request-success-rate", "interval": "30s",
                            "thresholdRange": {"min": 99}}])),
    );
    let relative_sr = canary(
        "podinfo",
        progressive(json!([{"name": "request-success-rate", "interval": "30s",
                            "compare": {"window": "30s", "step": "2s", "minSamples": 5,
                                        "maxDegradation": 5},
                            "onNoData": "hold"}])),
    );
    let (code, out) = backtest(&w, "fixed-sr", &fixed_sr, &both_degraded);
    assert_eq!(
        code, 1,
        "the fixed floor fails a canary as bad as the primary: {out}"
    );
    let (code, out) = backtest(&w, "relative-sr", &relative_sr, &both_degraded);
    assert_eq!(code, 0, "no worse than the primary: {out}");
    assert!(out.contains("vs primary"), "{out}");

    let generous = canary(
        "podinfo",
        progressive(json!([{"name": "request-duration", "interval": "30s",
                            "thresholdRange": {"max": 1000}}])),
    );
    let relative_duration = canary(
        "podinfo",
        progressive(json!([{"name": "request-duration", "interval": "30s",
                            "thresholdRange": {"max": 1000},
                            "compare": compare, "onNoData": "hold"}])),
    );
    let (code, out) = backtest(&w, "generous", &generous, &slower);
    assert_eq!(code, 0, "a doubled latency stays under 1000 ms: {out}");
    let (code, out) = backtest(&w, "relative-duration", &relative_duration, &slower);
    assert_eq!(code, 1, "but it is twice the primary's: {out}");
    assert!(
        out.contains("request-duration is worse than the primary"),
        "{out}"
    );
}
