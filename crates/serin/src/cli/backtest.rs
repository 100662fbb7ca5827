//! `serin backtest -f canary.yaml --prometheus URL --from T --to T`: the Canary's analysis
//! replayed against past Prometheus data.
//!
//! The run starts at `--from` (the moment the release's new revision was detected) and is played
//! through the controller's decision function ([`crate::rollout::simulate`]); at every moment the
//! analysis would have run, each metric is judged on the values Prometheus held then (fetched
//! beforehand with range queries), exactly as the controller judges an instant query: the fixed
//! range, the comparison with the primary, `onNoData`. Webhooks are not called (gates count as
//! open, hooks as passing); nothing is written anywhere.
//!
//! [`replay`] is pure: the series in, the verdicts out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::api::{Canary, MetricTemplate, parse_go_duration};
use crate::metrics::prometheus::{Prometheus, ProviderConfig};
use crate::metrics::{MetricKind, QueryOutcome, Resolved};
use crate::relative::{self, Finding, Sample};
use crate::rollout::simulate::{self, Oracle};
use crate::rollout::{NoDataHold, Outcome, Progress, Settings, Time};

/// The values of one metric over the backtest window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricSeries {
    /// The metric's query, sampled at the backtest's resolution.
    pub canary: Vec<Sample>,
    /// With `compare`: the canary's and the primary's query at `compare.step`, from one window
    /// before the start.
    pub compare_canary: Vec<Sample>,
    pub compare_primary: Vec<Sample>,
}

/// A metric to replay: how to judge it and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayMetric {
    pub metric: Resolved,
    /// `compare.window`, when compared.
    pub window: Duration,
    pub series: MetricSeries,
}

/// One metric at one analysis moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    pub name: String,
    /// The value an instant query would have returned; absent when there was none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// `pass`, `fail`, `noData` (then `onNoData` decides) or `skipped` (an earlier metric
    /// failed; the controller stops at the first failure).
    pub verdict: &'static str,
    /// With `compare`: the canary against the primary, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<String>,
    /// The failure or no-data text the controller would record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One analysis moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStep {
    pub at: DateTime<Utc>,
    /// Seconds after `--from`.
    pub at_seconds: i64,
    /// Canary weight (or iterations for A/B and Blue/Green) when the check ran.
    pub canary_weight: u32,
    pub iterations: u32,
    /// `pass`, `fail` or `hold`.
    pub result: &'static str,
    /// Failed checks after this step.
    pub failed_checks: u32,
    pub metrics: Vec<MetricResult>,
}

/// The replay's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backtest {
    pub canary: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `promoted`, `rolledBack` or `unfinished` (the window ended first).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome_at: Option<DateTime<Utc>>,
    /// The canary weight (or iteration) at which the run ended or the window closed.
    pub final_canary_weight: u32,
    pub final_iterations: u32,
    pub steps: Vec<AnalysisStep>,
    /// The Events the controller would have recorded, with their times.
    pub events: Vec<(i64, String)>,
}

/// Plays the run from `from` to `to` on the given series (see the module documentation).
pub fn replay(
    settings: &Settings,
    metrics: &[ReplayMetric],
    from: Time,
    to: Time,
    resolution: Duration,
) -> Backtest {
    let mut oracle = Replayer {
        from,
        settings,
        metrics,
        resolution,
        hold_since: None,
        steps: Vec::new(),
    };
    let run = simulate::run(settings, from, to, &mut oracle);
    let mut steps = oracle.steps;
    // The failed-check count after each step, from the moments the simulation recorded.
    for s in &mut steps {
        if let Some(m) = run
            .moments
            .iter()
            .find(|m| m.at == s.at && m.analysis.is_some())
        {
            s.failed_checks = m.failed_checks;
        }
    }
    let last = run.moments.last();
    let (outcome, outcome_at) = match run.end {
        Some((Outcome::Promoted | Outcome::Skipped, at)) => ("promoted", Some(at)),
        Some((Outcome::Failed, at)) => ("rolledBack", Some(at)),
        None => ("unfinished", None),
    };
    // Weight when the verdict fell: the last analysis step's (the rollback resets it to 0).
    let (final_canary_weight, final_iterations) = steps
        .last()
        .map(|s| (s.canary_weight, s.iterations))
        .or_else(|| last.map(|m| (m.routes.canary, m.iterations)))
        .unwrap_or((0, 0));
    Backtest {
        canary: settings.canary.clone(),
        from,
        to,
        outcome,
        outcome_at,
        final_canary_weight,
        final_iterations,
        steps,
        events: run
            .moments
            .iter()
            .flat_map(|m| {
                m.events
                    .iter()
                    .map(move |e| ((m.at - from).num_seconds(), e.message.clone()))
            })
            .collect(),
    }
}

struct Replayer<'a> {
    from: Time,
    settings: &'a Settings,
    metrics: &'a [ReplayMetric],
    resolution: Duration,
    /// Start of the current stretch without data for a metric with `onNoData: hold`.
    hold_since: Option<Time>,
    steps: Vec<AnalysisStep>,
}

impl Oracle for Replayer<'_> {
    fn analysis(
        &mut self,
        at: Time,
        progress: &Progress,
    ) -> (Result<(), crate::rollout::CheckFailed>, Option<NoDataHold>) {
        let t = at.timestamp_millis() as f64 / 1000.0;
        let target = &self.settings.target;
        let mut results = Vec::new();
        let mut failure: Option<String> = None;
        let mut hold: Option<String> = None;
        let canary_name = &self.settings.canary;
        for (i, m) in self.metrics.iter().enumerate() {
            let check = &m.metric.check;
            let mut r = MetricResult {
                name: check.name.clone(),
                value: None,
                verdict: "pass",
                comparison: None,
                message: None,
            };
            if failure.is_some() {
                r.verdict = "skipped";
                results.push(r);
                continue;
            }
            // The value an instant query would have returned at `at`.
            let instant = relative::needs_instant(&m.metric).then(|| {
                match relative::value_at(&m.series.canary, t, self.resolution) {
                    Some(v) => QueryOutcome::Value(v),
                    None => QueryOutcome::NoValues,
                }
            });
            let compared = m.metric.criteria.as_ref().map(|_| {
                Ok((
                    relative::window_values(&m.series.compare_canary, t, m.window),
                    relative::window_values(&m.series.compare_primary, t, m.window),
                ))
            });
            let e = relative::evaluate(
                &m.metric,
                i,
                instant.as_ref(),
                compared,
                canary_name,
                target,
            );
            // A duration's median over the window is not shown in place of its p99.
            r.value = e
                .value
                .filter(|_| instant.is_some() || check.kind != MetricKind::Duration);
            if let (Some(j), Some(c)) = (&e.judgement, &m.metric.criteria) {
                r.comparison = Some(relative::explain(j, c));
            }
            match e.finding {
                Finding::Pass => {}
                Finding::Fail(text) => {
                    r.verdict = "fail";
                    r.message = Some(text.clone());
                    failure = Some(text);
                }
                Finding::NoData(text) => {
                    r.verdict = "noData";
                    r.message = Some(text.clone());
                    match relative::on_no_data(m.metric.on_no_data, &text) {
                        Some(Err(text)) => failure = Some(text),
                        None => {
                            hold.get_or_insert(text);
                        }
                        Some(Ok(())) => {}
                    }
                }
            }
            results.push(r);
        }
        let (result, held) = match (&failure, &hold) {
            (Some(text), _) => (Err(text.clone()), None),
            (None, Some(text)) => {
                let since = *self.hold_since.get_or_insert(at);
                (
                    Ok(()),
                    Some(NoDataHold {
                        since,
                        text: text.clone(),
                    }),
                )
            }
            (None, None) => (Ok(()), None),
        };
        if held.is_none() {
            self.hold_since = None;
        }
        self.steps.push(AnalysisStep {
            at,
            at_seconds: (at - self.from).num_seconds(),
            canary_weight: progress.canary_weight,
            iterations: progress.iterations,
            result: match (&result, &held) {
                (Err(_), _) => "fail",
                (Ok(()), Some(_)) => "hold",
                _ => "pass",
            },
            failed_checks: progress.failed_checks,
            metrics: results,
        });
        (result.map_err(crate::rollout::CheckFailed), held)
    }
}

/// A time the command line could not read, with the forms it accepts.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum TimeError {
    #[error("{text:?}: {source}")]
    Duration {
        text: String,
        source: crate::api::InvalidDuration,
    },
    #[error("{text:?}: the duration is out of range")]
    OutOfRange { text: String },
    #[error(
        "{text:?} is not a time ({source}); write RFC 3339 (2026-01-02T15:04:05Z), now, now-1h or -90m"
    )]
    NotATime {
        text: String,
        source: chrono::ParseError,
    },
}

/// A time on the command line: RFC 3339, `now`, `now-DURATION` or `-DURATION` (Go durations).
pub fn parse_time(text: &str, now: Time) -> Result<Time, TimeError> {
    let t = text.trim();
    if t == "now" {
        return Ok(now);
    }
    if let Some(d) = t.strip_prefix("now-").or_else(|| t.strip_prefix('-')) {
        let d = parse_go_duration(d).map_err(|source| TimeError::Duration {
            text: text.into(),
            source,
        })?;
        let d = chrono::Duration::from_std(d)
            .map_err(|_| TimeError::OutOfRange { text: text.into() })?;
        return Ok(now - d);
    }
    DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|source| TimeError::NotATime {
            text: text.into(),
            source,
        })
}

/// Range-query resolution for the fixed checks: 1s, coarser when the window would exceed
/// Prometheus' 11,000 points per series.
pub fn resolution(from: Time, to: Time) -> Duration {
    let span = (to - from).num_seconds().max(0) as u64;
    Duration::from_secs(span.div_ceil(10_000).max(1))
}

/// What `serin backtest` needs besides the files.
pub struct Args {
    pub files: Vec<PathBuf>,
    pub namespace: Option<String>,
    pub prometheus: String,
    pub from: String,
    pub to: String,
    pub json: bool,
}

/// Fetches the series of every metric of `canary` and replays its analysis. The output and
/// the exit code: 0 promoted, 1 rolled back, 2 unfinished.
pub async fn run(args: &Args) -> anyhow::Result<(String, u8)> {
    let (mut canaries, mut templates) = super::plan::read_manifests(&args.files)?;
    super::plan::default_namespace(&mut canaries, &mut templates, args.namespace.as_deref());
    let canary = match canaries.as_slice() {
        [one] => one.clone(),
        [] => anyhow::bail!("no Canary in the given files"),
        _ => anyhow::bail!(
            "{} Canaries in the given files; backtest one at a time",
            canaries.len()
        ),
    };
    let now = Utc::now();
    let from = parse_time(&args.from, now)?;
    let to = parse_time(&args.to, now)?;
    anyhow::ensure!(from < to, "--from {from} is not before --to {to}");
    let client = Prometheus::new(&ProviderConfig {
        address: args.prometheus.clone(),
        ..Default::default()
    })
    .with_context(|| format!("--prometheus {:?}", args.prometheus))?;
    let res = resolution(from, to);
    let metrics = fetch(&client, &canary, &templates, from, to, res).await?;
    let settings = crate::controller::state::settings(&canary);
    let report = replay(&settings, &metrics, from, to, res);
    let code = match report.outcome {
        "promoted" => 0,
        "rolledBack" => 1,
        _ => 2,
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        table(&report)
    };
    Ok((text, code))
}

async fn fetch(
    client: &Prometheus,
    canary: &Canary,
    templates: &[MetricTemplate],
    from: Time,
    to: Time,
    res: Duration,
) -> anyhow::Result<Vec<ReplayMetric>> {
    let Some(analysis) = canary.spec.analysis() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, metric) in analysis.metrics.iter().enumerate() {
        let resolved = relative::resolve_files(canary, i, metric, templates)?;
        let name = &resolved.check.name;
        let mut series = MetricSeries {
            canary: client
                .query_range(&resolved.check.query, from.timestamp(), to.timestamp(), res)
                .await
                .map_err(|e| anyhow::anyhow!("metric {name}: {e}"))?,
            ..Default::default()
        };
        let mut window = Duration::ZERO;
        if let (Some(cmp), Some(pq)) = (&metric.compare, &resolved.primary_query) {
            window = cmp.window();
            let start = from.timestamp() - window.as_secs() as i64;
            series.compare_canary = client
                .query_range(&resolved.check.query, start, to.timestamp(), cmp.step())
                .await
                .map_err(|e| anyhow::anyhow!("metric {name} (canary): {e}"))?;
            series.compare_primary = client
                .query_range(pq, start, to.timestamp(), cmp.step())
                .await
                .map_err(|e| anyhow::anyhow!("metric {name} (primary): {e}"))?;
        }
        out.push(ReplayMetric {
            metric: resolved,
            window,
            series,
        });
    }
    Ok(out)
}

fn show(v: Option<f64>) -> String {
    match v {
        Some(v) if v == v.trunc() && v.abs() < 1e12 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
        None => "-".into(),
    }
}

/// The replay for people.
pub fn table(b: &Backtest) -> String {
    let at = |t: Option<DateTime<Utc>>| {
        t.map(|t| super::plan::offset((t - b.from).num_seconds()))
            .unwrap_or_default()
    };
    let headline = match b.outcome {
        "promoted" => format!("would have been PROMOTED at {}", at(b.outcome_at)),
        "rolledBack" => format!(
            "would have been ROLLED BACK at {} (canary weight {}, iteration {})",
            at(b.outcome_at),
            b.final_canary_weight,
            b.final_iterations
        ),
        _ => format!(
            "was still under analysis when the window closed (canary weight {}, iteration {})",
            b.final_canary_weight, b.final_iterations
        ),
    };
    let mut out = format!(
        "Backtest of {} from {} to {}: {headline}\n\n",
        b.canary,
        b.from.to_rfc3339(),
        b.to.to_rfc3339()
    );
    out.push_str(
        "  TIME     WEIGHT  RESULT  FAILED  METRIC                          VALUE       VERDICT\n",
    );
    for s in &b.steps {
        for (i, m) in s.metrics.iter().enumerate() {
            let (time, weight, result, failed) = if i == 0 {
                (
                    super::plan::offset(s.at_seconds),
                    if s.iterations > 0 {
                        format!("it {}", s.iterations)
                    } else {
                        s.canary_weight.to_string()
                    },
                    s.result.to_string(),
                    s.failed_checks.to_string(),
                )
            } else {
                Default::default()
            };
            let mut verdict = m.verdict.to_string();
            if let Some(c) = &m.comparison {
                verdict.push_str(&format!(" · {c}"));
            }
            if let Some(msg) = &m.message
                && m.verdict != "pass"
            {
                verdict.push_str(&format!(" · {msg}"));
            }
            out.push_str(&format!(
                "  {time:<8} {weight:<7} {result:<7} {failed:<7} {:<31} {:<11} {verdict}\n",
                m.name,
                show(m.value)
            ));
        }
        if s.metrics.is_empty() {
            out.push_str(&format!(
                "  {:<8} {:<7} {:<7} {}\n",
                super::plan::offset(s.at_seconds),
                s.canary_weight,
                s.result,
                s.failed_checks
            ));
        }
    }
    out.push_str("\nEvents:\n");
    for (t, e) in &b.events {
        out.push_str(&format!("  {:<8} {e}\n", super::plan::offset(*t)));
    }
    out
}

#[cfg(test)]
mod tests;
