//! Metrics judged against the primary (`analysis.metrics[].compare`), offline parts: the two
//! queries, the range query that samples them, and the texts that explain a judgement. The
//! statistics live in [`crate::rollout::compare`]; `serin plan` and `serin backtest` use this
//! module now, the controller's analysis will call the same functions.

use std::time::Duration;

use prometheus_http_query::response::Data;

use crate::api::{Canary, CanaryMetric, MetricTemplate, OnNoData, TargetRef};
use crate::metrics::{self, Check, MetricKind, TemplateModel};
use crate::rollout::compare::{Criteria, Direction, Judgement, Verdict};

/// The template model of a metric, as the controller builds it (Flagger's `MetricTemplateModel`).
pub fn model(canary: &Canary, metric: &CanaryMetric) -> TemplateModel {
    let spec = &canary.spec;
    let target = spec.target_ref.name.clone();
    let or_target = |r: &Option<TargetRef>| {
        r.as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| target.clone())
    };
    TemplateModel {
        name: canary.metadata.name.clone().unwrap_or_default(),
        namespace: canary
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        target: target.clone(),
        service: spec.service.name.clone().unwrap_or_else(|| target.clone()),
        ingress: or_target(&spec.ingress_ref),
        route: or_target(&spec.route_ref),
        interval: metric.interval().to_string(),
        variables: metric.template_variables.clone(),
    }
}

/// The model for the primary's side: `{{ target }}` names `<target>-primary`, the workload the
/// built-in queries (and templates written like them) select with `destination_workload`.
pub fn primary_model(model: &TemplateModel) -> TemplateModel {
    TemplateModel {
        target: format!("{}-primary", model.target),
        ..model.clone()
    }
}

/// A metric resolved offline: its check (rendered query and range) and, with `compare`, the
/// primary's query.
#[derive(Clone, Debug, PartialEq)]
pub struct OfflineMetric {
    pub check: Check,
    pub primary_query: Option<String>,
    pub criteria: Option<Criteria>,
    pub on_no_data: OnNoData,
}

/// Why a metric of the manifest cannot be resolved offline; each names the field and the fix,
/// as the controller's `serin.dev/Valid` condition would.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(
        "{field}.templateRef: MetricTemplate {namespace}/{name} is not among the files; add it with -f"
    )]
    MissingTemplate {
        field: String,
        namespace: String,
        name: String,
    },
    #[error("{field}: {}", crate::rollout::messages::NO_USABLE_METRIC)]
    NoUsableMetric { field: String },
    #[error("{place}: {source}")]
    Render {
        place: String,
        source: metrics::RenderError,
    },
    #[error(
        "{field}.compare: the query does not depend on {{{{ target }}}}, so the primary's query is the canary's; select the workload with {{{{ target }}}}"
    )]
    CompareWithoutTarget { field: String },
}

/// Resolves the `index`-th metric against the MetricTemplates at hand (files given to the CLI).
/// `Err` names the field and the fix, as the controller's `serin.dev/Valid` condition would.
pub fn resolve_offline(
    canary: &Canary,
    index: usize,
    metric: &CanaryMetric,
    templates: &[MetricTemplate],
) -> Result<OfflineMetric, OfflineError> {
    let m = model(canary, metric);
    let ns = m.namespace.clone();
    let field = format!("spec.analysis.metrics[{index}]");
    let (kind, template): (MetricKind, String) = if let Some(tr) = &metric.template_ref {
        let tns = tr.namespace_or(&ns).to_string();
        let Some(t) = templates.iter().find(|t| {
            t.metadata.name.as_deref() == Some(tr.name.as_str())
                && t.metadata.namespace.as_deref().unwrap_or(&ns) == tns
        }) else {
            return Err(OfflineError::MissingTemplate {
                field,
                namespace: tns,
                name: tr.name.clone(),
            });
        };
        (MetricKind::Template, t.spec.query.clone())
    } else if let Some(q) = &metric.query {
        (MetricKind::Inline, q.clone())
    } else {
        let kind = match metric.name.as_str() {
            metrics::REQUEST_SUCCESS_RATE => MetricKind::SuccessRate,
            metrics::REQUEST_DURATION => MetricKind::Duration,
            _ => {
                return Err(OfflineError::NoUsableMetric { field });
            }
        };
        let render =
            |m: &TemplateModel| metrics::builtin_query(&metric.name, m).unwrap_or_default();
        let check = Check::new(metric, kind, &render(&m));
        let primary_query = metric.compare.as_ref().map(|_| render(&primary_model(&m)));
        return Ok(OfflineMetric {
            check,
            primary_query,
            criteria: metric.compare_criteria(),
            on_no_data: metric.on_no_data(),
        });
    };
    let place = match kind {
        MetricKind::Template => "spec.query of the MetricTemplate".to_string(),
        _ => format!("{field}.query"),
    };
    let rendered = metrics::render(&template, &m).map_err(|source| OfflineError::Render {
        place: place.clone(),
        source,
    })?;
    let check = Check::new(metric, kind, &rendered);
    let primary_query = match &metric.compare {
        Some(_) => {
            let q = metrics::render(&template, &primary_model(&m))
                .map_err(|source| OfflineError::Render { place, source })?;
            let q = metrics::trim_query(&q);
            if q == check.query {
                return Err(OfflineError::CompareWithoutTarget { field });
            }
            Some(q)
        }
        None => None,
    };
    Ok(OfflineMetric {
        check,
        primary_query,
        criteria: metric.compare_criteria(),
        on_no_data: metric.on_no_data(),
    })
}

/// One sampled value: seconds since the epoch, value.
pub type Sample = (f64, f64);

/// Runs a range query and returns its samples. A query that returns several series is an error
/// naming their count, as an instant query with several values is for Flagger; no series at all
/// is an empty result (no data).
pub async fn range_samples(
    client: &prometheus_http_query::Client,
    query: &str,
    start: i64,
    end: i64,
    step: Duration,
) -> Result<Vec<Sample>, String> {
    let res = client
        .query_range(query, start, end, step.as_secs_f64().max(0.001))
        .get()
        .await
        .map_err(|e| e.to_string())?;
    match res.data() {
        Data::Matrix(series) => match series.as_slice() {
            [] => Ok(Vec::new()),
            [one] => Ok(one
                .samples()
                .iter()
                .map(|s| (s.timestamp(), s.value()))
                .collect()),
            many => Err(format!(
                "the query returned {} series; aggregate it to one (sum, max, histogram_quantile ... by (le))",
                many.len()
            )),
        },
        _ => Err("a range query returned no matrix".into()),
    }
}

/// The values of `samples` within the window that ends at `at` (`(at − window, at]`).
pub fn window_values(samples: &[Sample], at: f64, window: Duration) -> Vec<f64> {
    let from = at - window.as_secs_f64();
    samples
        .iter()
        .filter(|(t, _)| *t > from && *t <= at)
        .map(|(_, v)| *v)
        .collect()
}

/// The value an instant query at `at` would have seen: the latest sample at or before `at`, if
/// no older than `staleness` (Prometheus' lookback).
pub fn value_at(samples: &[Sample], at: f64, staleness: Duration) -> Option<f64> {
    samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= at)
        .filter(|(t, _)| at - *t <= staleness.as_secs_f64())
        .map(|(_, v)| *v)
        .filter(|v| !v.is_nan())
}

fn number(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// "canary 250.1 vs primary 120.3 (+107.9 %, allowed 10 %, p = 0.0001 < 0.02)": the numbers a
/// person needs to see why the comparison went the way it did.
pub fn explain(j: &Judgement, c: &Criteria) -> String {
    let side = |s: &crate::rollout::compare::SampleSummary| match s.median {
        Some(m) => format!("{} (median of {})", number(m), s.count),
        None => format!("no values (0 of {})", s.count + s.dropped),
    };
    let mut out = format!("canary {} vs primary {}", side(&j.canary), side(&j.primary));
    if let Some(d) = j.degradation_percent {
        let worse = match c.direction {
            Direction::HigherIsWorse => "higher is worse",
            Direction::LowerIsWorse => "lower is worse",
        };
        out.push_str(&format!(", {:+.1}% worse ({worse})", d));
    }
    out.push_str(&format!(", allowed {}", number(j.allowed)));
    if j.verdict != Verdict::NotEnoughData {
        let op = if j.p_value < c.alpha { "<" } else { ">=" };
        let p = if j.p_value < 0.0001 {
            "p < 0.0001".to_string()
        } else {
            format!("p = {:.4}", j.p_value)
        };
        out.push_str(&format!(", {p} {op} {}", number(c.alpha)));
    }
    out
}

/// The failure text of a comparison, in the style of Flagger's "Halt ..." texts.
pub fn halt_text(canary: &str, metric: &str, j: &Judgement, c: &Criteria) -> String {
    format!(
        "Halt {canary} advancement {metric} is worse than the primary: {}",
        explain(j, c)
    )
}

/// The no-data text of a comparison: which side lacks values.
pub fn not_enough_data_text(metric: &str, j: &Judgement, c: &Criteria) -> String {
    format!(
        "Halt advancement not enough values to compare {metric} with the primary (need {} per side): {}",
        c.min_samples,
        explain(j, c)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CanarySpec, MetricComparison, MetricTemplateSpec};

    fn canary(metrics: Vec<CanaryMetric>) -> Canary {
        let mut c = Canary::new(
            "podinfo",
            CanarySpec {
                target_ref: TargetRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "podinfo".into(),
                },
                analysis: Some(crate::api::CanaryAnalysis {
                    metrics,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("test".into());
        c
    }

    #[test]
    fn builtin_and_template_queries_for_both_sides() {
        let m = CanaryMetric {
            name: "request-duration".into(),
            compare: Some(MetricComparison::default()),
            ..Default::default()
        };
        let c = canary(vec![m.clone()]);
        let r = resolve_offline(&c, 0, &m, &[]).unwrap();
        assert!(r.check.query.contains(r#"destination_workload=~"podinfo""#));
        let pq = r.primary_query.unwrap();
        assert!(
            pq.contains(r#"destination_workload=~"podinfo-primary""#),
            "{pq}"
        );
        assert_eq!(r.criteria.unwrap().direction, Direction::HigherIsWorse);

        let mut t = MetricTemplate::new(
            "errors",
            MetricTemplateSpec {
                query: "sum(rate(errs{workload=\"{{ target }}\",ns=\"{{ namespace }}\"}[{{ interval }}]))".into(),
                ..Default::default()
            },
        );
        t.metadata.namespace = Some("test".into());
        let m = CanaryMetric {
            name: "errors".into(),
            template_ref: Some(crate::api::CrossNamespaceObjectReference {
                name: "errors".into(),
                namespace: None,
            }),
            compare: Some(MetricComparison::default()),
            ..Default::default()
        };
        let r = resolve_offline(&c, 0, &m, std::slice::from_ref(&t)).unwrap();
        assert_eq!(
            r.check.query,
            r#"sum(rate(errs{workload="podinfo",ns="test"}[1m]))"#
        );
        assert_eq!(
            r.primary_query.as_deref(),
            Some(r#"sum(rate(errs{workload="podinfo-primary",ns="test"}[1m]))"#)
        );
        let e = resolve_offline(&c, 0, &m, &[]).unwrap_err().to_string();
        assert!(e.contains("MetricTemplate test/errors"), "{e}");

        t.spec.query = "sum(rate(errs[1m]))".into();
        let e = resolve_offline(&c, 0, &m, &[t]).unwrap_err().to_string();
        assert!(e.contains("spec.analysis.metrics[0].compare"), "{e}");
    }

    #[test]
    fn windows_and_instants() {
        let s: Vec<Sample> = (0..10)
            .map(|i| (100.0 + i as f64 * 10.0, i as f64))
            .collect();
        assert_eq!(
            window_values(&s, 150.0, Duration::from_secs(30)),
            vec![3.0, 4.0, 5.0]
        );
        assert_eq!(value_at(&s, 155.0, Duration::from_secs(10)), Some(5.0));
        assert_eq!(value_at(&s, 300.0, Duration::from_secs(10)), None, "stale");
        assert_eq!(
            value_at(&s, 50.0, Duration::from_secs(10)),
            None,
            "before the data"
        );
        let nan = vec![(100.0, f64::NAN)];
        assert_eq!(value_at(&nan, 100.0, Duration::from_secs(10)), None);
    }
}
