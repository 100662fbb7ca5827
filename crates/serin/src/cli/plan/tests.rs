use super::*;

fn canary(analysis: &str) -> Canary {
    let text = format!(
        "apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {{name: podinfo, namespace: test}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: podinfo}}
  service: {{port: 9898}}
  analysis:
{analysis}"
    );
    serde_yaml_ng::from_str(&text).unwrap()
}

/// (seconds, phase, primary, canary, mirror) of every step.
fn timeline(p: &Plan) -> Vec<(i64, &str, u32, u32, bool)> {
    p.steps
        .iter()
        .map(|s| {
            (
                s.at_seconds,
                s.phase.as_str(),
                s.primary_weight,
                s.canary_weight,
                s.mirror,
            )
        })
        .collect()
}

#[test]
fn progressive_canary_with_hooks_and_metrics() {
    let c = canary(
        "    interval: 1m
    threshold: 3
    maxWeight: 30
    stepWeight: 10
    metrics:
      - {name: request-success-rate, interval: 1m, thresholdRange: {min: 99}}
      - name: request-duration
        thresholdRange: {max: 500}
        compare: {window: 2m, step: 10s, minSamples: 10}
    webhooks:
      - {name: approve, type: confirm-rollout, url: http://lt/gate/approve}
      - {name: smoke, type: pre-rollout, url: http://lt/}
      - {name: load, url: http://lt/}
      - {name: done, type: post-rollout, url: http://lt/}
",
    );
    let p = plan(&c, &[]);
    assert_eq!(
        timeline(&p),
        vec![
            (0, "Progressing", 100, 0, false),
            (0, "Progressing", 90, 10, false),
            (60, "Progressing", 80, 20, false),
            (120, "Progressing", 70, 30, false),
            (180, "Promoting", 70, 30, false),
            (180, "Finalising", 100, 0, false),
            (183, "Succeeded", 100, 0, false),
        ]
    );
    let calls: Vec<(i64, Vec<&str>, bool)> = p
        .steps
        .iter()
        .map(|s| {
            (
                s.at_seconds,
                s.webhooks.iter().map(String::as_str).collect(),
                s.analysis,
            )
        })
        .collect();
    assert_eq!(calls[0], (0, vec!["confirm-rollout: approve"], false));
    assert_eq!(calls[1], (0, vec!["pre-rollout: smoke"], false));
    assert_eq!(calls[2], (60, vec!["rollout: load"], true));
    assert_eq!(calls[4], (180, vec!["rollout: load"], true));
    assert_eq!(calls[6], (183, vec!["post-rollout: done"], false));
    assert_eq!(p.promotion.copy_at_seconds, Some(180));
    assert_eq!(p.promotion.succeeded_at_seconds, Some(183));
    // Threshold 3: failing from the first analysis (60 s) rolls back at the third (180 s); failing
    // from the last (180 s) rolls back at 300 s.
    assert_eq!(p.rollback.earliest_at_seconds, Some(180));
    assert_eq!(p.rollback.latest_at_seconds, Some(300));
    assert_eq!(p.rollback.worst_after_first_failure_seconds, Some(120));
    assert_eq!(p.rollback.not_ready_after_seconds, 600);

    let sr = &p.metrics[0];
    assert!(
        sr.query
            .as_deref()
            .unwrap()
            .contains(r#"destination_workload_namespace="test""#)
    );
    assert_eq!((sr.min, sr.max, sr.on_no_data), (Some(99.0), None, "fail"));
    let d = p.metrics[1].compare.as_ref().unwrap();
    assert!(d.primary_query.contains("podinfo-primary"));
    assert_eq!(d.direction, "higherIsWorse");
    // Traffic from 0 s; 10 values at 10 s steps need 90 s: the check at 120 s is the first.
    assert_eq!(d.first_full_check_at_seconds, Some(120));

    let text = table(&p);
    assert!(text.contains("+3m3s  Succeeded"), "{text}");
    assert!(text.contains("primary query:"), "{text}");
    let json: serde_json::Value = serde_json::to_value(&p).unwrap();
    assert_eq!(json["steps"][1]["canaryWeight"], 10);
    assert_eq!(json["rollback"]["latestAtSeconds"], 300);
}

#[test]
fn step_weights_and_promotion_steps() {
    let c = canary(
        "    interval: 30s
    threshold: 1
    stepWeights: [1, 5, 50]
    stepWeightPromotion: 50
",
    );
    let p = plan(&c, &[]);
    let w: Vec<(i64, &str, u32)> = p
        .steps
        .iter()
        .map(|s| (s.at_seconds, s.phase.as_str(), s.canary_weight))
        .collect();
    assert_eq!(
        w,
        vec![
            (0, "Progressing", 0),
            (0, "Progressing", 1),
            (30, "Progressing", 5),
            (60, "Progressing", 50),
            (90, "Promoting", 50),
            (90, "Finalising", 0),
            (93, "Succeeded", 0),
        ],
        "{:#?}",
        p.steps
    );
    // Threshold 1: the first failing check rolls back at once.
    assert_eq!(p.rollback.worst_after_first_failure_seconds, Some(0));
}

#[test]
fn ab_testing_routes_the_match_to_the_canary() {
    let c = canary(
        "    interval: 1m
    threshold: 2
    iterations: 3
    match:
      - headers: {x-canary: {exact: insider}}
    webhooks:
      - {name: gate, type: confirm-promotion, url: http://lt/gate/check}
",
    );
    let p = plan(&c, &[]);
    assert_eq!(p.strategy, "ab-testing");
    let t: Vec<(i64, &str, u32, u32)> = p
        .steps
        .iter()
        .map(|s| {
            (
                s.at_seconds,
                s.phase.as_str(),
                s.canary_weight,
                s.iterations,
            )
        })
        .collect();
    assert_eq!(
        t,
        vec![
            (0, "Progressing", 0, 0),
            (0, "Progressing", 100, 1),
            (60, "Progressing", 100, 2),
            (120, "Progressing", 100, 3),
            (180, "Promoting", 100, 3),
            (180, "Finalising", 0, 3),
            (183, "Succeeded", 0, 3),
        ]
    );
    assert!(
        p.steps[1].route.contains("insider") && p.steps[1].route.contains("→ canary"),
        "{}",
        p.steps[1].route
    );
    assert_eq!(p.steps[4].webhooks, vec!["confirm-promotion: gate"]);
}

#[test]
fn blue_green_with_mirroring() {
    let c = canary(
        "    interval: 1m
    threshold: 2
    iterations: 2
    mirror: true
    mirrorWeight: 100
",
    );
    let p = plan(&c, &[]);
    assert_eq!(p.strategy, "blue-green");
    assert_eq!(
        timeline(&p),
        vec![
            (0, "Progressing", 100, 0, false),
            (0, "Progressing", 100, 0, true),
            (60, "Progressing", 100, 0, true),
            (120, "Progressing", 0, 100, false),
            (180, "Promoting", 0, 100, false),
            (180, "Finalising", 100, 0, false),
            (183, "Succeeded", 100, 0, false),
        ]
    );
    assert!(
        p.steps[1].route.contains("mirrored"),
        "{}",
        p.steps[1].route
    );
    assert_eq!(p.steps[3].route, "all traffic → canary");
    // Without mirror the iterations keep all traffic on the primary.
    let c = canary("    interval: 1m\n    threshold: 2\n    iterations: 2\n");
    let p = plan(&c, &[]);
    assert!(p.steps.iter().all(|s| !s.mirror));
    assert_eq!(p.steps[3].canary_weight, 100);
}

#[test]
fn templates_are_rendered_or_reported_missing() {
    let c = canary(
        "    interval: 1m
    threshold: 2
    stepWeight: 50
    metrics:
      - name: errors
        templateRef: {name: errors}
        templateVariables: {code: '5..'}
        thresholdRange: {max: 1}
",
    );
    let p = plan(&c, &[]);
    assert!(p.metrics[0].query.is_none());
    assert!(
        p.metrics[0]
            .error
            .as_deref()
            .unwrap()
            .contains("MetricTemplate test/errors"),
        "{:?}",
        p.metrics[0]
    );
    let t: MetricTemplate = serde_yaml_ng::from_str(
        "apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: {name: errors, namespace: test}
spec:
  provider: {type: prometheus, address: http://prom:9090}
  query: |
    sum(rate(istio_requests_total{destination_workload=\"{{ target }}\",
      response_code=~\"{{ variables.code }}\"}[{{ interval }}]))
",
    )
    .unwrap();
    let p = plan(&c, &[t]);
    assert_eq!(
        p.metrics[0].query.as_deref(),
        Some(
            r#"sum(rate(istio_requests_total{destination_workload="podinfo", response_code=~"5.."}[1m]))"#
        )
    );
}

#[test]
fn offsets() {
    assert_eq!(offset(0), "+0s");
    assert_eq!(offset(183), "+3m3s");
    assert_eq!(offset(3600), "+1h0m");
    assert_eq!(offset(3661), "+1h1m1s");
    assert_eq!(offset(120), "+2m");
}
