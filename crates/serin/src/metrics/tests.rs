use super::*;

fn model() -> TemplateModel {
    TemplateModel {
        name: "podinfo".into(),
        namespace: "test".into(),
        target: "podinfo".into(),
        service: "podinfo".into(),
        ingress: "podinfo".into(),
        route: "podinfo".into(),
        interval: "1m".into(),
        variables: BTreeMap::from([("reporter".to_string(), "source".to_string())]),
    }
}

#[test]
fn builtin_queries_are_flaggers() {
    assert_eq!(
        builtin_query(REQUEST_SUCCESS_RATE, &model()).unwrap(),
        r#"sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload=~"podinfo",response_code!~"5.*"}[1m])) / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload=~"podinfo"}[1m])) * 100"#
    );
    assert_eq!(
        builtin_query(REQUEST_DURATION, &model()).unwrap(),
        r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="destination",destination_workload_namespace="test",destination_workload=~"podinfo"}[1m])) by (le))"#
    );
    assert_eq!(builtin_query("error-rate", &model()), None);
}

#[test]
fn render_table() {
    let m = model();
    let cases: &[(&str, Result<&str, &str>)] = &[
        ("{{ namespace }}/{{ name }}", Ok("test/podinfo")),
        ("{{namespace}}", Ok("test")),
        ("a {{- target -}} b", Ok("apodinfob")),
        ("{{ .interval }}", Ok("1m")),
        (
            "reporter=\"{{ variables.reporter }}\"",
            Ok("reporter=\"source\""),
        ),
        ("no actions", Ok("no actions")),
        (
            "{{ variables.missing }}",
            Err("map has no entry for key \"missing\""),
        ),
        ("{{ nope }}", Err("function \"nope\" not defined")),
        ("{{ name ", Err("unclosed action")),
    ];
    for (tpl, want) in cases {
        match (render(tpl, &m), want) {
            (Ok(got), Ok(w)) => assert_eq!(&got, w, "{tpl}"),
            (Err(got), Err(w)) => assert!(got.to_string().contains(w), "{tpl}: {got}"),
            (got, w) => panic!("{tpl}: got {got:?}, want {w:?}"),
        }
    }
}

#[test]
fn trim_query_collapses_whitespace() {
    assert_eq!(
        trim_query("\n  sum(\n    rate(x[1m])\n  )\n"),
        "sum( rate(x[1m]) )"
    );
}

fn check(kind: MetricKind, min: Option<f64>, max: Option<f64>) -> Check {
    Check {
        name: "error-rate".into(),
        kind,
        query: String::new(),
        min,
        max,
    }
}

#[test]
fn verdict_table() {
    let c = "podinfo.test";
    let cases = vec![
        (
            check(MetricKind::SuccessRate, Some(99.0), None),
            99.5,
            Ok(()),
        ),
        (
            check(MetricKind::SuccessRate, Some(99.0), None),
            93.456,
            Err("Halt podinfo.test advancement success rate 93.46% < 99%"),
        ),
        (
            check(MetricKind::SuccessRate, None, Some(50.0)),
            60.0,
            Err("Halt podinfo.test advancement success rate 60.00% > 50%"),
        ),
        (
            check(MetricKind::Duration, None, Some(500.0)),
            500.9,
            Ok(()),
        ),
        (
            check(MetricKind::Duration, None, Some(500.0)),
            1523.2,
            Err("Halt podinfo.test advancement request duration 1.523s > 500ms"),
        ),
        (
            check(MetricKind::Duration, Some(10.0), None),
            3.0,
            Err("Halt podinfo.test advancement request duration 3ms < 10ms"),
        ),
        (
            check(MetricKind::Template, None, Some(1.0)),
            1.5,
            Err("Halt podinfo.test advancement error-rate 1.50 > 1"),
        ),
        (
            check(MetricKind::Inline, Some(2.0), Some(4.0)),
            1.0,
            Err("Halt podinfo.test advancement error-rate 1.00 < 2"),
        ),
        (check(MetricKind::Template, None, None), 1e9, Ok(())),
    ];
    for (i, (ch, v, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            verdict(&ch, v, c),
            want.map_err(CheckFailed::from),
            "case {i}"
        );
    }
}

#[test]
fn legacy_threshold_semantics() {
    let m = |threshold: Option<f64>, range: Option<(Option<f64>, Option<f64>)>| CanaryMetric {
        name: "x".into(),
        threshold,
        threshold_range: range.map(|(min, max)| CanaryThresholdRange { min, max }),
        ..Default::default()
    };
    assert_eq!(
        range_of(&m(Some(99.0), None), MetricKind::SuccessRate),
        (Some(99.0), None)
    );
    assert_eq!(
        range_of(&m(Some(500.0), None), MetricKind::Duration),
        (None, Some(500.0))
    );
    assert_eq!(
        range_of(&m(Some(5.0), None), MetricKind::Template),
        (None, Some(5.0))
    );
    assert_eq!(
        range_of(&m(Some(5.0), Some((Some(1.0), None))), MetricKind::Template),
        (Some(1.0), None)
    );
}

#[test]
fn go_durations() {
    for (ms, want) in [
        (0, "0s"),
        (5, "5ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (1523, "1.523s"),
        (90_000, "1m30s"),
        (3_600_000, "1h0m0s"),
    ] {
        assert_eq!(go_duration_ms(ms), want);
    }
}

#[test]
fn no_values_texts() {
    let sr = Check {
        name: REQUEST_SUCCESS_RATE.into(),
        kind: MetricKind::SuccessRate,
        query: String::new(),
        min: None,
        max: None,
    };
    assert_eq!(
        no_values_text(&sr, "podinfo.test"),
        "Halt advancement no values found for istio metric request-success-rate probably podinfo.test is not receiving traffic"
    );
    let inline = Check {
        kind: MetricKind::Inline,
        ..sr.clone()
    };
    assert_eq!(
        no_values_text(&inline, "podinfo.test"),
        "Halt advancement no values found for metric: request-success-rate"
    );
}

/// Maps standing in for the watch caches.
#[derive(Default)]
struct Objects {
    templates: BTreeMap<(String, String), std::sync::Arc<crate::api::MetricTemplate>>,
    secrets: BTreeMap<(String, String), std::sync::Arc<k8s_openapi::api::core::v1::Secret>>,
}

impl Lookups for Objects {
    fn template(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::sync::Arc<crate::api::MetricTemplate>> {
        self.templates
            .get(&(namespace.into(), name.into()))
            .cloned()
    }
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::sync::Arc<k8s_openapi::api::core::v1::Secret>> {
        self.secrets.get(&(namespace.into(), name.into())).cloned()
    }
}

fn objects() -> Objects {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let template = |ns: &str, name: &str, provider: serde_json::Value, query: &str| {
        let t: crate::api::MetricTemplate = serde_json::from_value(serde_json::json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"provider": provider, "query": query},
        }))
        .unwrap();
        ((ns.to_string(), name.to_string()), std::sync::Arc::new(t))
    };
    let secret = |ns: &str, name: &str, data: serde_json::Value| {
        let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "data": data,
        }))
        .unwrap();
        ((ns.to_string(), name.to_string()), std::sync::Arc::new(s))
    };
    Objects {
        templates: BTreeMap::from([
            template(
                "test",
                "errors",
                serde_json::json!({"type": "prometheus", "address": "http://tpl:9090"}),
                "sum(errors{ns=\"{{ namespace }}\", app=\"{{ target }}\", r=\"{{ variables.r }}\"})",
            ),
            template(
                "shared",
                "latency",
                serde_json::json!({"type": "prometheus", "secretRef": {"name": "prom"}, "headers": {"X-Org": ["a"]}, "insecureSkipVerify": true}),
                "latency{svc=\"{{ service }}\"}",
            ),
            template(
                "test",
                "no-secret",
                serde_json::json!({"type": "prometheus", "secretRef": {"name": "absent"}}),
                "up",
            ),
            template(
                "test",
                "datadog",
                serde_json::json!({"type": "datadog"}),
                "avg:x",
            ),
            template(
                "test",
                "broken",
                serde_json::json!({"type": "prometheus"}),
                "{{ nope }}",
            ),
        ]),
        secrets: BTreeMap::from([secret(
            "shared",
            "prom",
            serde_json::json!({"address": b64("https://secret:9090"), "token": b64("t0k"), "username": b64("u"), "password": b64("p")}),
        )]),
    }
}

fn resolve_canary(metrics_server: Option<&str>) -> crate::api::Canary {
    let mut spec = serde_json::json!({
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
        "service": {"port": 9898, "name": "web"},
        "analysis": {"interval": "1m"},
    });
    if let Some(s) = metrics_server {
        spec["metricsServer"] = serde_json::json!(s);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": spec,
    }))
    .unwrap()
}

fn metric(v: serde_json::Value) -> CanaryMetric {
    serde_json::from_value(v).unwrap()
}

#[test]
fn resolve_table() {
    use prometheus::ProviderConfig;
    let objects = objects();
    let at = |address: &str| ProviderConfig {
        address: address.into(),
        ..Default::default()
    };
    // (canary metricsServer, metric) → (kind, query, provider) or the error text
    type Want = Result<(MetricKind, &'static str, ProviderConfig), &'static str>;
    let cases: Vec<(Option<&str>, serde_json::Value, Want)> = vec![
        (
            None,
            serde_json::json!({"name": "request-success-rate", "interval": "30s"}),
            Ok((
                MetricKind::SuccessRate,
                "destination_workload=~\"podinfo\",response_code!~\"5.*\"}[30s]",
                at("http://default:9090"),
            )),
        ),
        (
            Some("http://own:9090"),
            serde_json::json!({"name": "request-duration"}),
            Ok((
                MetricKind::Duration,
                "histogram_quantile(0.99",
                at("http://own:9090"),
            )),
        ),
        (
            None,
            serde_json::json!({"name": "inline", "query": "rate(x{ns=\"{{ namespace }}\"}[{{ interval }}])", "interval": "2m"}),
            Ok((
                MetricKind::Inline,
                "rate(x{ns=\"test\"}[2m])",
                at("http://default:9090"),
            )),
        ),
        (
            Some("http://own:9090"),
            serde_json::json!({"name": "errors", "templateRef": {"name": "errors"}, "templateVariables": {"r": "source"}}),
            Ok((
                MetricKind::Template,
                "sum(errors{ns=\"test\", app=\"podinfo\", r=\"source\"})",
                at("http://tpl:9090"),
            )),
        ),
        (
            Some("http://own:9090"),
            serde_json::json!({"name": "latency", "templateRef": {"name": "latency", "namespace": "shared"}}),
            Ok((
                MetricKind::Template,
                "latency{svc=\"web\"}",
                ProviderConfig {
                    address: "https://secret:9090".into(),
                    headers: BTreeMap::from([("X-Org".to_string(), vec!["a".to_string()])]),
                    bearer_token: Some("t0k".into()),
                    basic_auth: Some(("u".into(), "p".into())),
                    insecure_skip_verify: true,
                },
            )),
        ),
        (
            None,
            serde_json::json!({"name": "x", "templateRef": {"name": "missing"}}),
            Err(
                "spec.analysis.metrics[0].templateRef: MetricTemplate test/missing not found; create it or fix the reference",
            ),
        ),
        (
            None,
            serde_json::json!({"name": "x", "templateRef": {"name": "errors", "namespace": "other"}}),
            Err("MetricTemplate other/errors not found"),
        ),
        (
            None,
            serde_json::json!({"name": "x", "templateRef": {"name": "no-secret"}}),
            Err(
                "MetricTemplate test/no-secret spec.provider.secretRef: secret test/absent not found; create it with the key token, or username and password",
            ),
        ),
        (
            None,
            serde_json::json!({"name": "x", "templateRef": {"name": "datadog"}}),
            Err(
                "MetricTemplate test/datadog spec.provider.type: datadog is not supported by serin; use prometheus",
            ),
        ),
        (
            None,
            serde_json::json!({"name": "x", "templateRef": {"name": "broken"}}),
            Err("MetricTemplate test/broken spec.query: function \"nope\" not defined"),
        ),
        (
            None,
            serde_json::json!({"name": "x", "query": "{{ variables.r }}"}),
            Err("spec.analysis.metrics[0].query: map has no entry for key \"r\""),
        ),
        (
            None,
            serde_json::json!({"name": "error-rate"}),
            Err("spec.analysis.metrics[0]: "),
        ),
    ];
    for (i, (server, m, want)) in cases.into_iter().enumerate() {
        let canary = resolve_canary(server);
        let got = resolve(&canary, 0, &metric(m), "http://default:9090", &objects);
        match (got, want) {
            (Ok(r), Ok((kind, query, provider))) => {
                assert_eq!(r.check.kind, kind, "case {i}");
                assert!(r.check.query.contains(query), "case {i}: {}", r.check.query);
                assert_eq!(r.provider, provider, "case {i}");
            }
            (Err(e), Err(text)) => assert!(
                e.to_string().starts_with(text) || e.to_string().contains(text),
                "case {i}: {e}"
            ),
            (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn resolve_errors_name_their_kind() {
    let objects = objects();
    let canary = resolve_canary(None);
    let err = |m| resolve(&canary, 2, &metric(m), "http://p", &objects).unwrap_err();
    assert!(matches!(
        err(serde_json::json!({"name": "x", "templateRef": {"name": "missing"}})),
        ResolveError::TemplateNotFound { index: 2, .. }
    ));
    assert!(matches!(
        err(serde_json::json!({"name": "x"})),
        ResolveError::NoUsableMetric { index: 2 }
    ));
    assert!(matches!(
        err(serde_json::json!({"name": "x", "templateRef": {"name": "broken"}})),
        ResolveError::Render {
            source: RenderError::UnknownFunction(_),
            ..
        }
    ));
}

#[test]
fn judge_table() {
    let c = "podinfo.test";
    let t = "podinfo.test";
    let sr = check(MetricKind::SuccessRate, Some(99.0), None);
    let failed = |text: &str| Err(Judged::Failed(CheckFailed(text.into())));
    let cases = vec![
        (sr.clone(), QueryOutcome::Value(99.5), Ok(())),
        (
            sr.clone(),
            QueryOutcome::Value(93.456),
            failed("Halt podinfo.test advancement success rate 93.46% < 99%"),
        ),
        (
            Check {
                name: REQUEST_SUCCESS_RATE.into(),
                ..sr.clone()
            },
            QueryOutcome::NoValues,
            failed(
                "Halt advancement no values found for istio metric request-success-rate probably podinfo.test is not receiving traffic",
            ),
        ),
        (
            sr.clone(),
            QueryOutcome::Error("timeout: query timed out".into()),
            Err(Judged::Failed(CheckFailed(error_text(
                &sr,
                "timeout: query timed out",
            )))),
        ),
        (
            sr.clone(),
            QueryOutcome::Error("bad_data: parse error at char 5".into()),
            Err(Judged::QueryRefused(
                "bad_data: parse error at char 5".into(),
            )),
        ),
    ];
    for (i, (ch, outcome, want)) in cases.into_iter().enumerate() {
        assert_eq!(judge(&ch, &outcome, c, t), want, "case {i}");
    }
}

#[test]
fn durations_are_reported_in_seconds() {
    let d = check(MetricKind::Duration, None, Some(500.0));
    assert_eq!(gauge_value(&d, 1523.0), 1.523);
    let sr = check(MetricKind::SuccessRate, Some(99.0), None);
    assert_eq!(gauge_value(&sr, 99.5), 99.5);
}
