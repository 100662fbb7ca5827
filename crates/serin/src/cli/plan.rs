//! `serin plan -f canary.yaml [-f template.yaml ...]`: the timeline of a rollout before it starts.
//!
//! The timeline is the controller's own decision function ([`crate::rollout::decide`]) played
//! through [`crate::rollout::simulate`] with every check passing and every workload ready at once,
//! so each moment is the earliest the controller can reach it and the plan cannot drift from what
//! the controller does. The worst-case rollback comes from the same simulation with checks that
//! start failing at each analysis in turn.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::api::{Canary, CanaryAnalysis, HookType, MetricTemplate};
use crate::metrics::{ResolveError, Resolved};
use crate::relative::resolve_files;
use crate::rollout::compare::Direction;
use crate::rollout::simulate::{self, AllPass, Moment, Oracle};
use crate::rollout::{Action, Need, Outcome, Progress, Settings, Strategy, Time};

/// The whole plan of one Canary, as `-o json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub canary: String,
    pub strategy: &'static str,
    pub interval_seconds: u64,
    pub threshold: u32,
    pub progress_deadline_seconds: u64,
    /// Every moment something happens, earliest possible times, every check passing.
    pub steps: Vec<Step>,
    pub promotion: Promotion,
    pub rollback: Rollback,
    pub metrics: Vec<PlannedMetric>,
    /// Things worth knowing that are not a step (unrendered templates, skipped analysis...).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Seconds after the new revision was detected.
    pub at_seconds: i64,
    pub phase: String,
    pub primary_weight: u32,
    pub canary_weight: u32,
    pub mirror: bool,
    /// A/B and Blue/Green: iterations done.
    pub iterations: u32,
    /// How requests reach the canary in words (A/B: the match; Blue/Green: mirrored or all).
    pub route: String,
    /// Webhooks called at this moment, in order, as `type: name`.
    pub webhooks: Vec<String>,
    /// Whether the metrics are evaluated at this moment.
    pub analysis: bool,
    /// The Events the controller records.
    pub events: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// When the primary gets the new template; `None` if the run never gets there.
    pub copy_at_seconds: Option<i64>,
    /// When the run ends Succeeded.
    pub succeeded_at_seconds: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    /// Failing from the first analysis: rolled back at this time.
    pub earliest_at_seconds: Option<i64>,
    /// Checks that start failing at the last analysis before promotion: rolled back at this time.
    pub latest_at_seconds: Option<i64>,
    /// The longest time from the first failing check to the rollback, over all analysis moments.
    pub worst_after_first_failure_seconds: Option<i64>,
    /// A canary that never becomes ready is rolled back after this long.
    pub not_ready_after_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedMetric {
    pub name: String,
    pub interval: String,
    /// The query as the controller sends it; absent when it cannot be rendered (see `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    pub on_no_data: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<PlannedComparison>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedComparison {
    pub primary_query: String,
    pub direction: &'static str,
    pub max_degradation_percent: f64,
    pub tolerance: f64,
    pub confidence_percent: f64,
    pub min_samples: usize,
    pub window_seconds: u64,
    pub step_seconds: f64,
    /// The first analysis moment whose window can hold `minSamples` canary values (traffic starts
    /// at the first step); earlier checks have no data for this metric and follow `onNoData`.
    pub first_full_check_at_seconds: Option<i64>,
}

/// A fixed origin for the simulation; the plan reports offsets from it.
fn origin() -> Time {
    DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

/// Hook names of a kind, in the spec's order, as `type: name`.
fn hooks_of(analysis: &CanaryAnalysis, kind: HookType) -> Vec<String> {
    analysis
        .webhooks
        .iter()
        .filter(|w| w.hook_type() == kind)
        .map(|w| format!("{}: {}", kind.as_str(), w.name))
        .collect()
}

/// The webhooks a moment calls, in the controller's order.
fn calls(analysis: &CanaryAnalysis, m: &Moment) -> Vec<String> {
    let mut out = Vec::new();
    for need in &m.needs {
        match need {
            Need::Gate(kind) => out.extend(hooks_of(analysis, *kind)),
            Need::RollbackHooks => out.extend(hooks_of(analysis, HookType::Rollback)),
            Need::PreRollout => out.extend(hooks_of(analysis, HookType::PreRollout)),
            Need::Analysis => out.extend(hooks_of(analysis, HookType::Rollout)),
        }
    }
    for a in &m.actions {
        if let Action::PostRollout(_) = a {
            out.extend(hooks_of(analysis, HookType::PostRollout));
        }
    }
    if !m.events.is_empty() {
        for h in hooks_of(analysis, HookType::Event) {
            out.push(format!("{h} (×{})", m.events.len()));
        }
    }
    out
}

fn route_text(s: &Settings, analysis: &CanaryAnalysis, m: &Moment) -> String {
    let r = m.routes;
    match s.strategy {
        Strategy::ABTesting if r.canary > 0 => {
            let matches = serde_json::to_string(&analysis.match_).unwrap_or_default();
            format!("requests matching {matches} → canary, the rest → primary")
        }
        Strategy::BlueGreen if r.canary >= 100 => "all traffic → canary".into(),
        _ if r.mirror => format!(
            "primary {}%, canary {}%, mirrored to the canary",
            r.primary, r.canary
        ),
        _ => format!("primary {}%, canary {}%", r.primary, r.canary),
    }
}

/// An oracle whose analysis fails from `from` on.
struct FailFrom(Time);

impl Oracle for FailFrom {
    fn analysis(
        &mut self,
        at: Time,
        _: &Progress,
    ) -> (
        Result<(), crate::rollout::CheckFailed>,
        Option<crate::rollout::NoDataHold>,
    ) {
        if at >= self.0 {
            (Err("planned failure".into()), None)
        } else {
            (Ok(()), None)
        }
    }
}

fn secs(t: Time) -> i64 {
    (t - origin()).num_seconds()
}

/// The plan of one Canary, with the MetricTemplates at hand.
pub fn plan(canary: &Canary, templates: &[MetricTemplate]) -> Plan {
    let settings = crate::controller::state::settings(canary);
    let analysis = canary.spec.analysis().cloned().unwrap_or_default();
    let start = origin();
    // Long enough for any sane analysis; the simulation stops at the outcome.
    let until = start + chrono::Duration::days(30);
    let run = simulate::run(&settings, start, until, &mut AllPass);
    let mut notes = Vec::new();
    if settings.skip_analysis {
        notes.push("skipAnalysis (or no analysis): promoted without checks".into());
    }
    if settings.suspend {
        notes.push("suspend: true: nothing moves until it is lifted".into());
    }
    let steps: Vec<Step> = run
        .moments
        .iter()
        .map(|m| Step {
            at_seconds: secs(m.at),
            phase: m.phase.as_str().into(),
            primary_weight: m.routes.primary,
            canary_weight: m.routes.canary,
            mirror: m.routes.mirror,
            iterations: m.iterations,
            route: route_text(&settings, &analysis, m),
            webhooks: calls(&analysis, m),
            analysis: m.needs.contains(&Need::Analysis),
            events: m.events.iter().map(|e| e.message.clone()).collect(),
        })
        .collect();
    let copy_at = run
        .moments
        .iter()
        .find(|m| {
            m.actions
                .iter()
                .any(|a| matches!(a, Action::Promote { .. }))
        })
        .map(|m| secs(m.at));
    let succeeded_at = match run.end {
        Some((Outcome::Promoted | Outcome::Skipped, at)) => Some(secs(at)),
        _ => None,
    };
    let analysis_moments: Vec<Time> = run
        .moments
        .iter()
        .filter(|m| m.needs.contains(&Need::Analysis))
        .map(|m| m.at)
        .collect();
    let mut rollbacks = Vec::new();
    for from in &analysis_moments {
        let r = simulate::run(&settings, start, until, &mut FailFrom(*from));
        if let Some((Outcome::Failed, at)) = r.end {
            rollbacks.push((secs(*from), secs(at)));
        }
    }
    let rollback = Rollback {
        earliest_at_seconds: rollbacks.first().map(|r| r.1),
        latest_at_seconds: rollbacks.iter().map(|r| r.1).max(),
        worst_after_first_failure_seconds: rollbacks.iter().map(|r| r.1 - r.0).max(),
        not_ready_after_seconds: settings.progress_deadline.as_secs(),
    };
    // Canary traffic (or mirroring) starts at the first step that routes to it.
    let traffic_from = run
        .moments
        .iter()
        .find(|m| m.routes.canary > 0 || m.routes.mirror)
        .map(|m| m.at);
    let metrics = analysis
        .metrics
        .iter()
        .enumerate()
        .map(|(i, metric)| {
            let resolved = resolve_files(canary, i, metric, templates);
            planned_metric(metric, resolved, &analysis_moments, traffic_from)
        })
        .collect();
    Plan {
        canary: settings.canary.clone(),
        strategy: settings.strategy.as_str(),
        interval_seconds: settings.interval.as_secs(),
        threshold: settings.threshold,
        progress_deadline_seconds: settings.progress_deadline.as_secs(),
        steps,
        promotion: Promotion {
            copy_at_seconds: copy_at,
            succeeded_at_seconds: succeeded_at,
        },
        rollback,
        metrics,
        notes,
    }
}

fn planned_metric(
    metric: &crate::api::CanaryMetric,
    resolved: Result<Resolved, ResolveError>,
    analysis_moments: &[Time],
    traffic_from: Option<Time>,
) -> PlannedMetric {
    let mut out = PlannedMetric {
        name: metric.name.clone(),
        interval: metric.interval().to_string(),
        query: None,
        min: None,
        max: None,
        on_no_data: metric.on_no_data().as_str(),
        compare: None,
        error: None,
    };
    match resolved {
        Err(e) => out.error = Some(e.to_string()),
        Ok(r) => {
            out.query = Some(r.check.query.clone());
            out.min = r.check.min;
            out.max = r.check.max;
            if let (Some(c), Some(pq), Some(cmp)) = (r.criteria, r.primary_query, &metric.compare) {
                let step = cmp.step().as_secs_f64().max(0.001);
                let window = cmp.window().as_secs_f64();
                let first_full = traffic_from.and_then(|from| {
                    analysis_moments.iter().copied().find(|at| {
                        let span = (*at - from).num_milliseconds() as f64 / 1000.0;
                        let values = (span.min(window) / step).floor() as usize + 1;
                        values >= c.min_samples
                    })
                });
                out.compare = Some(PlannedComparison {
                    primary_query: pq,
                    direction: match c.direction {
                        Direction::HigherIsWorse => "higherIsWorse",
                        Direction::LowerIsWorse => "lowerIsWorse",
                    },
                    max_degradation_percent: cmp.max_degradation(),
                    tolerance: c.tolerance,
                    confidence_percent: cmp.confidence(),
                    min_samples: c.min_samples,
                    window_seconds: cmp.window().as_secs(),
                    step_seconds: step,
                    first_full_check_at_seconds: first_full.map(secs),
                });
            }
        }
    }
    out
}

/// `+1m30s`.
pub fn offset(secs: i64) -> String {
    let (sign, s) = if secs < 0 { ("-", -secs) } else { ("+", secs) };
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    let mut out = sign.to_string();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || (h == 0 && m == 0) {
        out.push_str(&format!("{s}s"));
    }
    out
}

fn opt_offset(v: Option<i64>) -> String {
    v.map(offset).unwrap_or_else(|| "never".into())
}

/// The plan as a table for people.
pub fn table(p: &Plan) -> String {
    let mut out = format!(
        "Canary {} ({} strategy), interval {}, threshold {}, progress deadline {}\n\
         Timeline from the moment a new revision is detected; earliest times (workloads ready at\n\
         once, every check passing):\n\n",
        p.canary,
        p.strategy,
        offset(p.interval_seconds as i64).trim_start_matches('+'),
        p.threshold,
        offset(p.progress_deadline_seconds as i64).trim_start_matches('+'),
    );
    let rows: Vec<[String; 5]> = p
        .steps
        .iter()
        .map(|s| {
            let mut calls = s.webhooks.clone();
            if s.analysis {
                calls.push("metrics".into());
            }
            let iter = if s.iterations > 0 {
                format!("iteration {} · ", s.iterations)
            } else {
                String::new()
            };
            [
                offset(s.at_seconds),
                s.phase.clone(),
                format!("{iter}{}", s.route),
                calls.join(", "),
                s.events.join(" | "),
            ]
        })
        .collect();
    let head = ["TIME", "PHASE", "TRAFFIC", "CALLS", "EVENTS"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..4).map(width).collect();
    let line = |cells: [&str; 5]| {
        let mut l = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            if i < 4 {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            } else {
                l.push_str(c);
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(head));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    out.push('\n');
    out.push_str(&format!(
        "Promotion: template copied to the primary at {}, Succeeded at {}.\n",
        opt_offset(p.promotion.copy_at_seconds),
        opt_offset(p.promotion.succeeded_at_seconds)
    ));
    let r = &p.rollback;
    out.push_str(&format!(
        "Rollback: checks failing from the first analysis roll back at {}; failing from the last \
         analysis, at {}; at most {} after the first failing check. A canary that never becomes \
         ready is rolled back after {}.\n",
        opt_offset(r.earliest_at_seconds),
        opt_offset(r.latest_at_seconds),
        r.worst_after_first_failure_seconds
            .map(|s| offset(s).trim_start_matches('+').to_string())
            .unwrap_or_else(|| "-".into()),
        offset(r.not_ready_after_seconds as i64).trim_start_matches('+'),
    ));
    if !p.metrics.is_empty() {
        out.push_str("\nMetrics (evaluated at each step marked \"metrics\"):\n");
    }
    for m in &p.metrics {
        let range = match (m.min, m.max) {
            (Some(a), Some(b)) => format!("between {a} and {b}"),
            (Some(a), None) => format!("at least {a}"),
            (None, Some(b)) => format!("at most {b}"),
            (None, None) => "no fixed range".into(),
        };
        out.push_str(&format!(
            "  {} (interval {}, {range}, onNoData {})\n",
            m.name, m.interval, m.on_no_data
        ));
        if let Some(q) = &m.query {
            out.push_str(&format!("    query: {q}\n"));
        }
        if let Some(c) = &m.compare {
            out.push_str(&format!(
                "    against the primary: {}, fails when worse by more than {}% of the primary's \
                 median (or {}) with {}% confidence; {} values per side over {}s at {}s steps\n",
                c.direction,
                c.max_degradation_percent,
                c.tolerance,
                c.confidence_percent,
                c.min_samples,
                c.window_seconds,
                c.step_seconds
            ));
            out.push_str(&format!("    primary query: {}\n", c.primary_query));
            out.push_str(&format!(
                "    first check with enough values: {}\n",
                opt_offset(c.first_full_check_at_seconds)
            ));
        }
        if let Some(e) = &m.error {
            out.push_str(&format!("    cannot render: {e}\n"));
        }
    }
    for n in &p.notes {
        out.push_str(&format!("Note: {n}\n"));
    }
    out
}

/// Canaries and MetricTemplates from files (`-` for standard input), multi-document YAML or JSON.
pub fn read_manifests(files: &[PathBuf]) -> anyhow::Result<(Vec<Canary>, Vec<MetricTemplate>)> {
    use serde::Deserialize;
    let mut canaries = Vec::new();
    let mut templates = Vec::new();
    for path in files {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading standard input")?;
            s
        } else {
            std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?
        };
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).with_context(|| format!("{}", path.display()))?;
            match value.get("kind").and_then(Value::as_str) {
                Some("Canary") => canaries.push(
                    serde_json::from_value(value)
                        .with_context(|| format!("{}: reading a Canary", path.display()))?,
                ),
                Some("MetricTemplate") => templates
                    .push(serde_json::from_value(value).with_context(|| {
                        format!("{}: reading a MetricTemplate", path.display())
                    })?),
                _ => {}
            }
        }
    }
    Ok((canaries, templates))
}

/// Fills in the namespace of objects without one: `-n`, else `default`.
pub fn default_namespace(
    canaries: &mut [Canary],
    templates: &mut [MetricTemplate],
    ns: Option<&str>,
) {
    let ns = ns.unwrap_or("default");
    for c in canaries.iter_mut() {
        c.metadata.namespace.get_or_insert_with(|| ns.to_string());
    }
    for t in templates.iter_mut() {
        t.metadata.namespace.get_or_insert_with(|| ns.to_string());
    }
}

/// `serin plan`: the plan of every Canary in the files, as a table or JSON.
pub fn run(files: &[PathBuf], namespace: Option<&str>, json: bool) -> anyhow::Result<String> {
    let (mut canaries, mut templates) = read_manifests(files)?;
    anyhow::ensure!(!canaries.is_empty(), "no Canary in the given files");
    default_namespace(&mut canaries, &mut templates, namespace);
    let plans: Vec<Plan> = canaries.iter().map(|c| plan(c, &templates)).collect();
    if json {
        let v = if plans.len() == 1 {
            serde_json::to_string_pretty(&plans[0])?
        } else {
            serde_json::to_string_pretty(&plans)?
        };
        return Ok(v + "\n");
    }
    Ok(plans.iter().map(table).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests;
