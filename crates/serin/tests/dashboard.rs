//! The Grafana dashboard in deploy/grafana/serin.json only asks for series serin exposes: every
//! `flagger_*` and `serin_*` name in its PromQL is checked against the registry's exposition.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::collections::BTreeSet;

use regex::Regex;
use serde_json::Value;

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/serin.json"
    );
    let text = std::fs::read_to_string(path).expect("deploy/grafana/serin.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL string: panel targets and template variable queries.
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) => out.push(s.clone()),
                    _ => expressions(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| expressions(x, out)),
        _ => {}
    }
}

/// Sample names the exposition contains, from its `# TYPE` lines, once every labelled family has
/// a series (an empty family prints nothing, as in Flagger's Go client).
fn exposed() -> BTreeSet<String> {
    use serin::telemetry::ops::{ApiErrorLabels, PhaseLabels};
    use serin::telemetry::{MetricLabels, NameNs, Ns, OutcomeLabels, ResultLabels, WorkloadNs};
    let m = serin::telemetry::Metrics::new();
    let s = |x: &str| x.to_string();
    let nn = NameNs {
        name: s("podinfo"),
        namespace: s("test"),
    };
    m.canary_total
        .get_or_create(&Ns {
            namespace: s("test"),
        })
        .set(1);
    m.canary_status.get_or_create(&nn).set(1);
    m.canary_weight
        .get_or_create(&WorkloadNs {
            workload: s("podinfo"),
            namespace: s("test"),
        })
        .set(10);
    m.canary_duration.get_or_create(&nn).observe(0.1);
    m.metric_analysis
        .get_or_create(&MetricLabels {
            name: s("podinfo"),
            namespace: s("test"),
            metric: s("request-success-rate"),
        })
        .set(99.0);
    let outcome = OutcomeLabels {
        name: s("podinfo"),
        namespace: s("test"),
        deployment_strategy: s("canary"),
        analysis_status: s("completed"),
    };
    m.successes.get_or_create(&outcome).inc();
    m.failures.get_or_create(&outcome).inc();
    m.reconciles
        .get_or_create(&ResultLabels { result: s("ok") })
        .inc();
    m.ops
        .api_errors
        .get_or_create(&ApiErrorLabels {
            verb: s("patch"),
            resource: s("canaries"),
        })
        .inc();
    m.ops
        .canaries
        .get_or_create(&PhaseLabels {
            phase: s("Succeeded"),
        })
        .set(1);
    m.webhook_calls
        .get_or_create(&serin::telemetry::WebhookLabels {
            r#type: s("rollout"),
            outcome: s("success"),
        })
        .inc();
    m.alert_deliveries
        .get_or_create(&serin::telemetry::AlertDeliveryLabels {
            provider: s("slack"),
            outcome: s("success"),
        })
        .inc();
    let text = m.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_exposed() {
    let d = dashboard();
    let mut exprs = Vec::new();
    expressions(&d["panels"], &mut exprs);
    expressions(&d["templating"], &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:#?}");
    let re = Regex::new(r"flagger_\w+|serin_\w+").unwrap();
    let used: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_string()))
        .collect();
    let exposed = exposed();
    let missing: Vec<&String> = used.iter().filter(|n| !exposed.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which serin does not expose; exposed: {exposed:#?}"
    );
    // And it shows Flagger's metrics (docs/flagger-contract.md §8) and serin's own.
    for name in [
        "flagger_canary_weight",
        "flagger_canary_status",
        "flagger_canary_duration_seconds_bucket",
        "flagger_canary_successes_total",
        "flagger_canary_failures_total",
        "flagger_canary_metric_analysis",
        "flagger_canary_total",
        "flagger_info",
        "serin_canaries",
        "serin_leader",
        "serin_reconcile_duration_seconds_bucket",
        "serin_api_errors_total",
        "serin_prometheus_query_duration_seconds_bucket",
        "serin_webhook_calls_total",
        "serin_alert_deliveries_total",
    ] {
        assert!(used.contains(name), "the dashboard has no panel for {name}");
    }
}

#[test]
fn panels_are_well_formed() {
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_i64().expect("id")),
            "duplicate id in {p}"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
    }
}
