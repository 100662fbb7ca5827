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
            (Err(got), Err(w)) => assert!(got.contains(w), "{tpl}: {got}"),
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
        assert_eq!(verdict(&ch, v, c), want.map_err(String::from), "case {i}");
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
