//! Metrics judged against the primary (`analysis.metrics[].compare`) and the verdict on one
//! metric at one analysis, shared by the controller, `serin backtest` and `serin plan`: the
//! combination of the fixed range and the comparison, what no data means, and the texts and
//! status that explain a judgement. The statistics live in [`crate::rollout::compare`]; the
//! queries come from [`crate::metrics::resolve`] (the same resolution for all three). Pure.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;

use crate::api::{MetricComparisonStatus, MetricTemplate, OnNoData};
use crate::metrics::{self, Judged, Lookups, QueryOutcome, Resolved};
use crate::rollout::compare::{Criteria, Direction, Judgement, Verdict, judge};

pub use crate::metrics::prometheus::Sample;

/// The MetricTemplates given to the CLI as files, as lookups for [`metrics::resolve`]. Secrets
/// are not read offline: a template's `secretRef` resolves to an empty Secret (no credentials;
/// the CLI names its Prometheus itself).
pub struct TemplateFiles<'a>(pub &'a [MetricTemplate]);

impl Lookups for TemplateFiles<'_> {
    fn template(&self, namespace: &str, name: &str) -> Option<Arc<MetricTemplate>> {
        self.0
            .iter()
            .find(|t| {
                t.metadata.name.as_deref() == Some(name)
                    && t.metadata.namespace.as_deref().unwrap_or(namespace) == namespace
            })
            .map(|t| Arc::new(t.clone()))
    }

    fn secret(&self, _namespace: &str, _name: &str) -> Option<Arc<Secret>> {
        Some(Arc::new(Secret::default()))
    }
}

/// Resolves the `index`-th metric of `canary` against MetricTemplates given as files, with the
/// controller's resolution.
pub fn resolve_files(
    canary: &crate::api::Canary,
    index: usize,
    metric: &crate::api::CanaryMetric,
    templates: &[MetricTemplate],
) -> Result<Resolved, metrics::ResolveError> {
    metrics::resolve(canary, index, metric, "", &TemplateFiles(templates))
}

/// Whether a metric needs its instant query: it has a fixed range, or nothing else to judge by.
pub fn needs_instant(r: &Resolved) -> bool {
    r.check.min.is_some() || r.check.max.is_some() || r.criteria.is_none()
}

/// What one metric gave at one analysis, before `onNoData`.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    Pass,
    /// A failed check: the text the Warning Event and the status carry.
    Fail(String),
    /// No values (or too few to compare): `onNoData` decides; the text says which side lacks them.
    NoData(String),
}

/// One metric at one analysis: the value to show, the finding and, with `compare`, the
/// judgement.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The instant query's value, else the canary's median over the comparison window.
    pub value: Option<f64>,
    /// The instant query's value (Flagger's `flagger_canary_metric_analysis`).
    pub instant: Option<f64>,
    pub finding: Finding,
    pub judgement: Option<Judgement>,
}

/// The canary's and the primary's values over the comparison window, or why they could not be
/// fetched (the query's error).
pub type Compared = Result<(Vec<f64>, Vec<f64>), String>;

/// The text of a query Prometheus refused: the metric, Prometheus' words, the fix.
pub fn refused_text(index: usize, metric: &str, err: &str) -> String {
    format!(
        "spec.analysis.metrics[{index}] ({metric}): Prometheus refused the query: {err}; fix the query"
    )
}

/// Judges the `index`-th metric: the fixed range on `instant` (when [`needs_instant`]), then the
/// comparison on `compared` (the canary's and the primary's values over the window, or the
/// error of fetching them). `canary` and `target` are `name.namespace`. The first failure wins;
/// a refused or failed query is a failed check (Flagger's behaviour), not a hold.
pub fn evaluate(
    r: &Resolved,
    index: usize,
    instant: Option<&QueryOutcome>,
    compared: Option<Compared>,
    canary: &str,
    target: &str,
) -> Evaluation {
    let check = &r.check;
    let mut out = Evaluation {
        value: None,
        instant: None,
        finding: Finding::Pass,
        judgement: None,
    };
    let mut no_data = None;
    if let Some(outcome) = instant {
        if let QueryOutcome::Value(v) = outcome {
            out.value = Some(*v);
            out.instant = Some(*v);
        }
        match metrics::judge(check, outcome, canary, target) {
            Ok(()) => {}
            Err(Judged::QueryRefused(e)) => {
                out.finding = Finding::Fail(refused_text(index, &check.name, &e));
                return out;
            }
            Err(Judged::Failed(f)) if *outcome == QueryOutcome::NoValues => no_data = Some(f.0),
            Err(Judged::Failed(f)) => {
                out.finding = Finding::Fail(f.0);
                return out;
            }
        }
    }
    if let (Some(c), Some(compared)) = (&r.criteria, compared) {
        let (cv, pv) = match compared {
            Ok(values) => values,
            Err(e) if e.starts_with("bad_data") => {
                out.finding = Finding::Fail(refused_text(index, &check.name, &e));
                return out;
            }
            Err(e) => {
                out.finding = Finding::Fail(metrics::error_text(check, &e));
                return out;
            }
        };
        let j = judge(&cv, &pv, c);
        if out.value.is_none() {
            out.value = j.canary.median;
        }
        match j.verdict {
            Verdict::Pass => {}
            Verdict::Fail => out.finding = Finding::Fail(halt_text(canary, &check.name, &j, c)),
            Verdict::NotEnoughData => {
                no_data.get_or_insert_with(|| not_enough_data_text(&check.name, &j, c));
            }
        }
        out.judgement = Some(j);
        if matches!(out.finding, Finding::Fail(_)) {
            return out;
        }
    }
    if let Some(text) = no_data {
        out.finding = Finding::NoData(text);
    }
    out
}

/// The status line of a comparison.
pub fn comparison_status(j: &Judgement, c: &Criteria) -> MetricComparisonStatus {
    MetricComparisonStatus {
        canary: j.canary.median,
        primary: j.primary.median,
        canary_samples: j.canary.count.min(u32::MAX as usize) as u32,
        primary_samples: j.primary.count.min(u32::MAX as usize) as u32,
        degradation_percent: j.degradation_percent.filter(|v| v.is_finite()),
        allowed: j.allowed,
        p_value: (j.verdict != Verdict::NotEnoughData).then_some(j.p_value),
        alpha: c.alpha,
        result: verdict_str(j.verdict).to_string(),
    }
}

pub fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::NotEnoughData => "notEnoughData",
    }
}

/// What `onNoData` makes of a finding without data: `Some(Ok)` pass, `Some(Err)` fail with the
/// text, `None` hold.
pub fn on_no_data(policy: OnNoData, text: &str) -> Option<Result<(), String>> {
    match policy {
        OnNoData::Fail => Some(Err(text.to_string())),
        OnNoData::Pass => Some(Ok(())),
        OnNoData::Hold => None,
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
    use crate::api::{
        Canary, CanaryMetric, CanarySpec, MetricComparison, MetricTemplateSpec, TargetRef,
    };

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
        let r = resolve_files(&c, 0, &m, &[]).unwrap();
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
        let r = resolve_files(&c, 0, &m, std::slice::from_ref(&t)).unwrap();
        assert_eq!(
            r.check.query,
            r#"sum(rate(errs{workload="podinfo",ns="test"}[1m]))"#
        );
        assert_eq!(
            r.primary_query.as_deref(),
            Some(r#"sum(rate(errs{workload="podinfo-primary",ns="test"}[1m]))"#)
        );
        let e = resolve_files(&c, 0, &m, &[]).unwrap_err().to_string();
        assert!(e.contains("MetricTemplate test/errors"), "{e}");

        t.spec.query = "sum(rate(errs[1m]))".into();
        let e = resolve_files(&c, 0, &m, &[t]).unwrap_err().to_string();
        assert!(e.contains("spec.analysis.metrics[0].compare"), "{e}");
    }

    fn compared(m: CanaryMetric) -> Resolved {
        let c = canary(vec![m.clone()]);
        resolve_files(&c, 0, &m, &[]).unwrap()
    }

    #[test]
    fn evaluation_combines_the_range_and_the_comparison() {
        let m = CanaryMetric {
            name: "request-duration".into(),
            threshold_range: Some(crate::api::CanaryThresholdRange {
                min: None,
                max: Some(1000.0),
            }),
            compare: Some(MetricComparison {
                min_samples: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = compared(m);
        assert!(needs_instant(&r));
        let same = || Ok((vec![100.0; 10], vec![100.0; 10]));
        let twice = || {
            Ok((
                (0..10).map(|i| 200.0 + i as f64).collect(),
                (0..10).map(|i| 100.0 + i as f64).collect(),
            ))
        };
        let e = evaluate(
            &r,
            0,
            Some(&QueryOutcome::Value(150.0)),
            Some(same()),
            "c.t",
            "p.t",
        );
        assert_eq!(e.finding, Finding::Pass);
        assert_eq!(e.value, Some(150.0));
        let e = evaluate(
            &r,
            0,
            Some(&QueryOutcome::Value(200.0)),
            Some(twice()),
            "c.t",
            "p.t",
        );
        let Finding::Fail(text) = &e.finding else {
            panic!("{e:?}")
        };
        assert!(text.contains("worse than the primary"), "{text}");
        let s = comparison_status(e.judgement.as_ref().unwrap(), r.criteria.as_ref().unwrap());
        assert_eq!(s.result, "fail");
        assert_eq!((s.canary_samples, s.primary_samples), (10, 10));
        assert!(s.p_value.unwrap() < s.alpha);
        assert!((s.allowed - 10.45).abs() < 1e-9, "10 % of the median 104.5");

        // Out of range first: the comparison is not needed.
        let e = evaluate(
            &r,
            0,
            Some(&QueryOutcome::Value(2000.0)),
            Some(same()),
            "c.t",
            "p.t",
        );
        assert!(
            matches!(e.finding, Finding::Fail(ref t) if t.contains("2s > 1s")),
            "{e:?}"
        );
        assert_eq!(e.judgement, None);

        // No values on the canary side: no data, whatever the range said.
        let e = evaluate(
            &r,
            0,
            Some(&QueryOutcome::NoValues),
            Some(Ok((vec![], vec![100.0; 10]))),
            "c.t",
            "p.t",
        );
        assert!(matches!(e.finding, Finding::NoData(_)), "{e:?}");
        // A query Prometheus refuses, or one that fails, is a failed check.
        let e = evaluate(
            &r,
            2,
            None,
            Some(Err("bad_data: parse error".into())),
            "c.t",
            "p.t",
        );
        assert!(
            matches!(e.finding, Finding::Fail(ref t) if t.starts_with("spec.analysis.metrics[2] (request-duration): Prometheus refused the query")),
            "{e:?}"
        );
        let e = evaluate(
            &r,
            0,
            Some(&QueryOutcome::Error("bad_data: x".into())),
            None,
            "c.t",
            "p.t",
        );
        assert!(matches!(e.finding, Finding::Fail(_)), "{e:?}");
        let e = evaluate(&r, 0, None, Some(Err("timeout".into())), "c.t", "p.t");
        assert!(
            matches!(e.finding, Finding::Fail(ref t) if t.contains("timeout")),
            "{e:?}"
        );
    }

    #[test]
    fn no_data_policies() {
        assert_eq!(on_no_data(OnNoData::Fail, "x"), Some(Err("x".into())));
        assert_eq!(on_no_data(OnNoData::Pass, "x"), Some(Ok(())));
        assert_eq!(on_no_data(OnNoData::Hold, "x"), None);
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
