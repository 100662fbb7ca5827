//! Metric misconfigurations (issue 11, finding 5): a reference to a missing MetricTemplate shows
//! on a Canary before any release (the `serin.dev/Valid` condition and a Warning Event); a
//! template deleted mid-run, or a query Prometheus refuses (known only once it is asked, at the
//! first analysis), counts as failed checks, so the canary is rolled back instead of keeping
//! its traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use kube::Api;
use kube::api::DeleteParams;
use serde_json::{Value, json};
use serin::api::{CanaryCondition, MetricTemplate};
use serin_sandbox::testenv::eventually;
use support::*;

fn template(w: &World, query: &str) -> Value {
    json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
        "metadata": {"name": "error-rate"},
        "spec": {"provider": {"type": "prometheus", "address": w.env.prometheus_url()},
                 "query": query}
    })
}

/// Errors per second of the target: 0 for a healthy one.
const GOOD_QUERY: &str = r#"sum(rate(istio_requests_total{destination_workload_namespace="{{ namespace }}",destination_workload="{{ target }}",response_code=~"5.*"}[{{ interval }}])) or vector(0)"#;

fn with_template() -> Value {
    json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25,
           "metrics": [{"name": "error-rate", "interval": "30s",
                        "templateRef": {"name": "error-rate"}, "thresholdRange": {"max": 1}}]})
}

async fn valid_condition(w: &World) -> Option<CanaryCondition> {
    w.canary("podinfo").await.status.and_then(|s| {
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "serin.dev/Valid")
    })
}

/// Waits for `serin.dev/Valid=False` with `reason`.
async fn wait_invalid(w: &World, reason: &str) -> CanaryCondition {
    eventually(&format!("Valid=False {reason}"), LIMIT, || async {
        match valid_condition(w).await {
            Some(c) if c.status == "False" && c.reason == reason => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test]
async fn a_missing_template_shows_at_initialization_before_any_release() {
    let w = World::new("metric-init").await;
    let ns = w.ns.clone();
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", with_template())).await;

    let c = wait_invalid(&w, "MetricTemplateNotFound").await;
    let message = c.message.unwrap();
    assert_eq!(
        message,
        format!(
            "spec.analysis.metrics[0].templateRef: MetricTemplate {ns}/error-rate not found; create it or fix the reference"
        )
    );
    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Warning" && *m == message),
        "{events:#?}"
    );
    let status = w.canary("podinfo").await.status.unwrap();
    assert_eq!(status.phase, None, "not initialized while broken");
    assert!(
        w.deployment("podinfo-primary").await.is_none(),
        "nothing created before the references are usable"
    );

    // Fixed: the Canary initializes, and the condition says so.
    w.apply(template(&w, GOOD_QUERY)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let c = valid_condition(&w).await.unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Valid"));
}

#[tokio::test]
async fn a_template_deleted_mid_run_counts_as_failed_checks_and_the_canary_is_rolled_back() {
    let w = World::new("metric-midrun").await;
    let ns = w.ns.clone();
    w.apply(template(&w, GOOD_QUERY)).await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", with_template())).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;

    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_phase("podinfo", "Progressing", LIMIT).await;
    w.wait_weight("podinfo", 25).await;
    let templates: Api<MetricTemplate> = Api::namespaced(w.client.clone(), &ns);
    templates
        .delete("error-rate", &DeleteParams::default())
        .await
        .unwrap();

    let c = w.wait_phase("podinfo", "Failed", LIMIT).await;
    assert_eq!(c.status.unwrap().failed_checks, Some(2));
    let routes = routes_of(&w.virtual_service("podinfo").await.unwrap(), "podinfo").unwrap();
    assert_eq!(routes.canary, 0, "traffic back on the primary");
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.0"
    );
    let expected = format!(
        "spec.analysis.metrics[0].templateRef: MetricTemplate {ns}/error-rate not found; create it or fix the reference"
    );
    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Warning" && *m == expected),
        "the failed check names the field and the fix: {events:#?}"
    );
    // Once the run is over, the condition tells what is still broken.
    let c = wait_invalid(&w, "MetricTemplateNotFound").await;
    assert_eq!(c.message.as_deref(), Some(expected.as_str()));

    // A template whose query Prometheus refuses: the next release fails its checks on it.
    w.apply(template(
        &w,
        r#"sum(rate(istio_requests_total{namespace="{{ namespace }}"}[{{ interval }}]) /"#,
    ))
    .await;
    eventually("Valid=True again", LIMIT, || async {
        match valid_condition(&w).await {
            Some(c) if c.status == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    w.apply(deployment("podinfo", "podinfo:6.0.2", json!({})))
        .await;
    w.wait_phase("podinfo", "Progressing", LIMIT).await;
    let c = w.wait_phase("podinfo", "Failed", LIMIT).await;
    assert_eq!(c.status.unwrap().failed_checks, Some(2));
    let routes = routes_of(&w.virtual_service("podinfo").await.unwrap(), "podinfo").unwrap();
    assert_eq!(routes.canary, 0);
    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Warning"
            && m.starts_with(
                "spec.analysis.metrics[0] (error-rate): Prometheus refused the query"
            )
            && m.ends_with("fix the query")),
        "{events:#?}"
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.0"
    );
}
