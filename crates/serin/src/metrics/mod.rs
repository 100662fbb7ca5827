//! Metric checks: Flagger's built-in Istio queries, MetricTemplate rendering, the verdict on a
//! value, resolving a metric of the spec against its MetricTemplate and Secret, and the
//! Prometheus provider (docs/flagger-contract.md §2.1 and §5). Everything here but the provider
//! is pure.

pub mod prometheus;
mod resolve;

pub use resolve::{Lookups, ResolveError, Resolved, primary_model, resolve};

use std::collections::BTreeMap;

use crate::api::{CanaryMetric, CanaryThresholdRange};
use crate::rollout::{CheckFailed, messages as msg};

pub const REQUEST_SUCCESS_RATE: &str = "request-success-rate";
pub const REQUEST_DURATION: &str = "request-duration";

/// Flagger's Istio `request-success-rate` query (docs/flagger-contract.md §5), verbatim.
const SUCCESS_RATE_QUERY: &str = r#"sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}",response_code!~"5.*"}[{{ interval }}])) / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}"}[{{ interval }}])) * 100"#;

/// Flagger's Istio `request-duration` query, verbatim.
const DURATION_QUERY: &str = r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="destination",destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}"}[{{ interval }}])) by (le))"#;

/// Flagger's `trimQuery`: every run of whitespace becomes one space, so multi-line templates
/// are sent as one line.
pub fn trim_query(q: &str) -> String {
    q.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The values a MetricTemplate (and a built-in query) may use, as Flagger's
/// `MetricTemplateModel`: each is written `{{ name }}`; variables as `{{ variables.key }}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TemplateModel {
    pub name: String,
    pub namespace: String,
    pub target: String,
    pub service: String,
    pub ingress: String,
    pub route: String,
    pub interval: String,
    pub variables: BTreeMap<String, String>,
}

/// Why a template could not be rendered; the text says what to write instead, as Go's
/// `missingkey=error` would refuse it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("unclosed action: a \"{{{{\" has no matching \"}}}}\"")]
    Unclosed,
    #[error("empty action \"{{{{ }}}}\"")]
    EmptyAction,
    #[error(
        "map has no entry for key \"{0}\": add it to spec.analysis.metrics[].templateVariables"
    )]
    MissingVariable(String),
    #[error(
        "function \"{0}\" not defined: use one of name, namespace, target, service, ingress, route, interval, variables.<key>"
    )]
    UnknownFunction(String),
}

impl TemplateModel {
    fn lookup(&self, key: &str) -> Result<String, RenderError> {
        Ok(match key {
            "name" => self.name.clone(),
            "namespace" => self.namespace.clone(),
            "target" => self.target.clone(),
            "service" => self.service.clone(),
            "ingress" => self.ingress.clone(),
            "route" => self.route.clone(),
            "interval" => self.interval.clone(),
            _ => {
                if let Some(var) = key.strip_prefix("variables.") {
                    return self
                        .variables
                        .get(var)
                        .cloned()
                        .ok_or_else(|| RenderError::MissingVariable(var.to_string()));
                }
                return Err(RenderError::UnknownFunction(key.to_string()));
            }
        })
    }
}

/// Renders `{{ key }}` actions (with Go's `{{-`/`-}}` trimming) against the model. Anything
/// else inside `{{ }}` is an error naming it, as Go's `missingkey=error` would refuse it.
pub fn render(template: &str, model: &TemplateModel) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        let after = &after[2..];
        let Some(end) = after.find("}}") else {
            return Err(RenderError::Unclosed);
        };
        let mut action = &after[..end];
        let mut text = before;
        if let Some(a) = action.strip_prefix('-') {
            text = text.trim_end();
            action = a;
        }
        let trim_right = action.ends_with('-');
        if trim_right {
            action = &action[..action.len() - 1];
        }
        out.push_str(text);
        let key = action.trim().trim_start_matches('.');
        if key.is_empty() {
            return Err(RenderError::EmptyAction);
        }
        out.push_str(&model.lookup(key)?);
        rest = &after[end + 2..];
        if trim_right {
            rest = rest.trim_start();
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The rendered built-in query, or `None` for a name that is not built in.
pub fn builtin_query(name: &str, model: &TemplateModel) -> Option<String> {
    let template = match name {
        REQUEST_SUCCESS_RATE => SUCCESS_RATE_QUERY,
        REQUEST_DURATION => DURATION_QUERY,
        _ => return None,
    };
    render(template, model).ok().map(|q| trim_query(&q))
}

/// What a query gave.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryOutcome {
    Value(f64),
    /// Empty result or NaN (for example 0/0 without traffic): Flagger's `ErrNoValuesFound`.
    NoValues,
    Error(String),
}

/// How a metric is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    SuccessRate,
    Duration,
    /// A MetricTemplate.
    Template,
    /// The deprecated inline `query`.
    Inline,
}

/// A metric ready to run: its rendered query and accepted range.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub name: String,
    pub kind: MetricKind,
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Check {
    /// A check of `metric` with its accepted range and the query as sent (whitespace collapsed).
    pub fn new(metric: &CanaryMetric, kind: MetricKind, query: &str) -> Check {
        let (min, max) = range_of(metric, kind);
        Check {
            name: metric.name.clone(),
            kind,
            query: trim_query(query),
            min,
            max,
        }
    }
}

/// The accepted range with Flagger's treatment of the legacy `threshold` (a minimum for the
/// success rate, a maximum for everything else).
pub fn range_of(metric: &CanaryMetric, kind: MetricKind) -> (Option<f64>, Option<f64>) {
    let CanaryThresholdRange { min, max } = metric.threshold_range.clone().unwrap_or_default();
    match (metric.threshold, kind) {
        (Some(t), MetricKind::SuccessRate) if min.is_none() && max.is_none() => (Some(t), None),
        (Some(t), _) if min.is_none() && max.is_none() => (None, Some(t)),
        _ => (min, max),
    }
}

/// Go's `time.Duration.String()` for whole milliseconds ("523ms", "1.5s", "1m30s").
pub fn go_duration_ms(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let neg = ms < 0;
    let ms = ms.unsigned_abs();
    let s = if ms < 1000 {
        format!("{ms}ms")
    } else {
        let total_secs = ms / 1000;
        let frac = ms % 1000;
        let (h, m, sec) = (total_secs / 3600, (total_secs / 60) % 60, total_secs % 60);
        let mut secs = format!("{sec}");
        if frac > 0 {
            let f = format!("{frac:03}");
            secs.push('.');
            secs.push_str(f.trim_end_matches('0'));
        }
        match (h, m) {
            (0, 0) => format!("{secs}s"),
            (0, m) => format!("{m}m{secs}s"),
            (h, m) => format!("{h}h{m}m{secs}s"),
        }
    };
    if neg { format!("-{s}") } else { s }
}

/// The verdict on a value: `Err` carries Flagger's "Halt ..." event text.
pub fn verdict(check: &Check, value: f64, canary: &str) -> Result<(), CheckFailed> {
    match check.kind {
        MetricKind::SuccessRate => {
            if let Some(min) = check.min
                && value < min
            {
                return Err(CheckFailed(msg::halt_success_rate(canary, value, '<', min)));
            }
            if let Some(max) = check.max
                && value > max
            {
                return Err(CheckFailed(msg::halt_success_rate(canary, value, '>', max)));
            }
        }
        MetricKind::Duration => {
            // Flagger truncates the p99 to whole milliseconds before comparing.
            let ms = value.trunc() as i64;
            if let Some(min) = check.min
                && (ms as f64) < min
            {
                let bound = go_duration_ms(min as i64);
                return Err(CheckFailed(msg::halt_request_duration(
                    canary,
                    &go_duration_ms(ms),
                    '<',
                    &bound,
                )));
            }
            if let Some(max) = check.max
                && (ms as f64) > max
            {
                let bound = go_duration_ms(max as i64);
                return Err(CheckFailed(msg::halt_request_duration(
                    canary,
                    &go_duration_ms(ms),
                    '>',
                    &bound,
                )));
            }
        }
        MetricKind::Template | MetricKind::Inline => {
            if let Some(min) = check.min
                && value < min
            {
                return Err(CheckFailed(msg::halt_custom_metric(
                    canary,
                    &check.name,
                    value,
                    '<',
                    min,
                )));
            }
            if let Some(max) = check.max
                && value > max
            {
                return Err(CheckFailed(msg::halt_custom_metric(
                    canary,
                    &check.name,
                    value,
                    '>',
                    max,
                )));
            }
        }
    }
    Ok(())
}

/// A query outcome that does not pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Judged {
    /// A failed check, counted towards the threshold: out of range, no values, or a query that
    /// failed for a reason other than its text (Prometheus away, a timeout).
    Failed(CheckFailed),
    /// Prometheus refused the query as malformed (`bad_data`): a configuration problem that
    /// holds the canary, never a failed check.
    QueryRefused(String),
}

/// The verdict on one query's outcome for the canary `canary` (`name.namespace`) whose target
/// is `target` (`name.namespace`).
pub fn judge(
    check: &Check,
    outcome: &QueryOutcome,
    canary: &str,
    target: &str,
) -> Result<(), Judged> {
    match outcome {
        QueryOutcome::Value(v) => verdict(check, *v, canary).map_err(Judged::Failed),
        QueryOutcome::NoValues => Err(Judged::Failed(CheckFailed(no_values_text(check, target)))),
        QueryOutcome::Error(e) if e.starts_with("bad_data") => Err(Judged::QueryRefused(e.clone())),
        QueryOutcome::Error(e) => Err(Judged::Failed(CheckFailed(error_text(check, e)))),
    }
}

/// The value of `flagger_canary_metric_analysis`: as queried, except request durations, which
/// Flagger reports in seconds.
pub fn gauge_value(check: &Check, value: f64) -> f64 {
    if check.kind == MetricKind::Duration {
        value / 1000.0
    } else {
        value
    }
}

/// The event text when a query found nothing.
pub fn no_values_text(check: &Check, target: &str) -> String {
    match check.kind {
        MetricKind::SuccessRate | MetricKind::Duration => {
            msg::no_values_builtin("istio", &check.name, target, None)
        }
        MetricKind::Template => msg::no_values_custom(&check.name, "no values found"),
        MetricKind::Inline => msg::no_values_inline(&check.name),
    }
}

/// The event text when a query failed.
pub fn error_text(check: &Check, err: &str) -> String {
    msg::prometheus_query_failed(&check.name, err)
}

#[cfg(test)]
mod tests;
