//! `serin status NAME [--watch]`: one canary at a glance, and an exit code CI can wait on.
//!
//! Exit codes: 0 when the canary's current revision is promoted (Succeeded, or Initialized for a
//! first deployment: Flagger's `Promoted` condition is True in both), 1 when it Failed, 2 when it
//! is neither yet (without `--watch`, or when `--timeout` ran out), 3 for errors (no such canary,
//! no cluster). A phase counts only once serin has taken up the target's current pod template
//! (`status.lastAppliedSpec` equals its hash): right after a new image was pushed, the old
//! Succeeded is not mistaken for the new revision's.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::{Session, age, event_time};
use crate::api::{Canary, Strategy};
use crate::metrics::{MetricKind, range_of};
use crate::rollout::{Phase, REVISION_PREFIX, max_weight, next_step_weight};

const BAR_WIDTH: usize = 40;
const EVENTS_SHOWN: usize = 6;

/// Where a canary stands for the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Promoted,
    Failed,
    Pending,
}

impl Verdict {
    pub fn code(self) -> u8 {
        match self {
            Verdict::Promoted => 0,
            Verdict::Failed => 1,
            Verdict::Pending => 2,
        }
    }
}

/// The verdict, given the target's current revision hash (`None` when unknown).
pub fn verdict(c: &Canary, target_revision: Option<&str>) -> Verdict {
    let Some(st) = c.status.as_ref() else {
        return Verdict::Pending;
    };
    let applied = st.last_applied_spec.as_deref();
    let taken_up = match (target_revision, applied) {
        (Some(t), Some(a)) if a.starts_with(REVISION_PREFIX) => t == a,
        _ => true,
    };
    if !taken_up {
        return Verdict::Pending;
    }
    match st.phase {
        Some(Phase::Succeeded | Phase::Initialized) => Verdict::Promoted,
        Some(Phase::Failed) => Verdict::Failed,
        _ => Verdict::Pending,
    }
}

/// The step the canary is at and how many there are, for the canary strategy; iterations for
/// A/B and Blue/Green.
pub fn step_of(c: &Canary) -> Option<(u32, u32, &'static str)> {
    let analysis = c.spec.analysis()?;
    let st = c.status.as_ref();
    match analysis.strategy() {
        Strategy::Canary => {
            let weight = st.and_then(|s| s.canary_weight).unwrap_or(0).max(0) as u32;
            let steps: Vec<u32> = analysis
                .step_weights()
                .iter()
                .map(|w| (*w).clamp(0, 100) as u32)
                .collect();
            let step = analysis.step_weight().max(0) as u32;
            let max = max_weight(analysis.max_weight().clamp(0, 100) as u32, &steps);
            let (mut w, mut n, mut at) = (0u32, 0u32, 0u32);
            while w < max && n < 100 {
                let inc = next_step_weight(w, step, &steps);
                if inc == 0 {
                    break;
                }
                w = (w + inc).min(max);
                n += 1;
                if w <= weight {
                    at = n;
                }
            }
            Some((at, n, "step"))
        }
        _ => {
            let i = st.and_then(|s| s.iterations).unwrap_or(0).max(0) as u32;
            Some((i, analysis.iterations().max(0) as u32, "iteration"))
        }
    }
}

fn bar(weight: u32, max: u32) -> String {
    let filled = (weight.min(100) as usize * BAR_WIDTH) / 100;
    let limit = (max.min(100) as usize * BAR_WIDTH) / 100;
    (0..BAR_WIDTH)
        .map(|i| {
            if i < filled {
                '#'
            } else if i < limit {
                '-'
            } else {
                ' '
            }
        })
        .collect()
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The view; pure, for tests.
pub fn render(
    c: &Canary,
    events: &[Event],
    target_revision: Option<&str>,
    now: DateTime<Utc>,
) -> String {
    let ns = c.metadata.namespace.clone().unwrap_or_default();
    let name = c.metadata.name.clone().unwrap_or_default();
    let st = c.status.clone().unwrap_or_default();
    let phase = st
        .phase
        .map(|p| p.as_str())
        .unwrap_or("(not yet seen by serin)");
    let mut out = format!("canary {ns}/{name}   {phase}");
    let run = st.serin_progress.clone().unwrap_or_default();
    if let Some(by) = &run.paused_by {
        out.push_str(&format!(
            "   PAUSED by {by} (`serin resume {name}` continues)"
        ));
    }
    if verdict(c, target_revision) == Verdict::Pending
        && matches!(
            st.phase,
            Some(Phase::Succeeded | Phase::Failed | Phase::Initialized)
        )
    {
        out.push_str("   (a new revision is waiting to be picked up)");
    }
    out.push('\n');
    if let Some(p) = &st.serin_pending {
        out.push_str(&format!("  {}: {}\n", p.reason.to_uppercase(), p.message));
    }

    let weight = st.canary_weight.unwrap_or(0).max(0) as u32;
    let analysis = c.spec.analysis().cloned().unwrap_or_default();
    let steps: Vec<u32> = analysis
        .step_weights()
        .iter()
        .map(|w| (*w).clamp(0, 100) as u32)
        .collect();
    let max = max_weight(analysis.max_weight().clamp(0, 100) as u32, &steps);
    out.push_str(&format!(
        "  weight   [{}] {weight}% (max {max}%)",
        bar(weight, max)
    ));
    if let Some((at, of, what)) = step_of(c) {
        out.push_str(&format!("   {what} {at}/{of}"));
    }
    out.push('\n');
    out.push_str(&format!(
        "  failed checks {} of {}\n",
        st.failed_checks.unwrap_or(0),
        analysis.threshold()
    ));

    if !analysis.metrics.is_empty() {
        out.push_str("  metrics\n");
        let width = analysis
            .metrics
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(0);
        for m in &analysis.metrics {
            let kind = match m.name.as_str() {
                "request-success-rate" if m.template_ref.is_none() => MetricKind::SuccessRate,
                _ => MetricKind::Duration,
            };
            let (min, max) = range_of(m, kind);
            let range = match (min, max) {
                (Some(a), Some(b)) => format!("{}..{}", number(a), number(b)),
                (Some(a), None) => format!(">= {}", number(a)),
                (None, Some(b)) => format!("<= {}", number(b)),
                (None, None) => "any".into(),
            };
            let last = st.serin_metrics.iter().find(|s| s.name == m.name);
            let (value, mut verdict) = match last.and_then(|l| l.value) {
                Some(v) => {
                    let ok = min.is_none_or(|a| v >= a) && max.is_none_or(|b| v <= b);
                    (number(v), if ok { "ok" } else { "OUT OF RANGE" })
                }
                None if last.is_some() => ("-".into(), "no value"),
                None => ("-".into(), "not checked yet"),
            };
            // The controller's verdict, when it recorded one, over what the range alone says.
            match last.and_then(|l| l.result.as_deref()) {
                Some("pass") => verdict = "ok",
                Some("fail") if verdict == "ok" || verdict == "no value" => verdict = "FAILED",
                Some("noData") => verdict = "no data",
                _ => {}
            }
            let checked = last
                .map(|l| {
                    format!(
                        "  ({} ago)",
                        age(now - crate::controller::state::to_chrono(&l.checked_at))
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "    {:<width$}  {value:>10}  {range:<14} {verdict}{checked}\n",
                m.name
            ));
            if let Some(c) = last.and_then(|l| l.comparison.as_ref()) {
                out.push_str(&format!("    {:<width$}  {}\n", "", comparison_line(c)));
            }
        }
    }

    if !events.is_empty() {
        out.push_str("  events\n");
        let start = events.len().saturating_sub(EVENTS_SHOWN);
        for e in &events[start..] {
            let when = event_time(e)
                .map(|t| age(now - t))
                .unwrap_or_else(|| "-".into());
            let kind = e.type_.clone().unwrap_or_default();
            let msg = e.message.clone().unwrap_or_default();
            out.push_str(&format!("    {when:>4}  {kind:<7}  {msg}\n"));
        }
    }
    out
}

/// "vs primary: canary 250 (10) primary 120 (10), +108.3% worse, allowed 12, p 0.0001 < 0.02:
/// fail": the numbers behind a comparison.
fn comparison_line(c: &crate::api::MetricComparisonStatus) -> String {
    let side = |v: Option<f64>, n: u32| match v {
        Some(v) => format!("{} ({n})", number(v)),
        None => format!("- ({n})"),
    };
    let mut out = format!(
        "vs primary: canary {} primary {}",
        side(c.canary, c.canary_samples),
        side(c.primary, c.primary_samples)
    );
    if let Some(d) = c.degradation_percent {
        out.push_str(&format!(", {d:+.1}% worse"));
    }
    out.push_str(&format!(", allowed {}", number(c.allowed)));
    if let Some(p) = c.p_value {
        let op = if p < c.alpha { "<" } else { ">=" };
        let p = if p < 0.0001 {
            "< 0.0001".to_string()
        } else {
            format!("{p:.4}")
        };
        out.push_str(&format!(", p {p} {op} {}", number(c.alpha)));
    }
    let result = match c.result.as_str() {
        "notEnoughData" => "not enough data",
        r => r,
    };
    out.push_str(&format!(": {result}"));
    out
}

async fn target_revision(s: &Session, c: &Canary) -> Option<String> {
    let api: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    let d = api.get_opt(&c.spec.target_ref.name).await.ok()??;
    Some(crate::workload::revision_hash(&d.spec.template))
}

/// Prints the view once (or, with `watch`, whenever it changes until the canary is promoted or
/// failed) and returns the exit code.
pub async fn run(
    s: &Session,
    name: &str,
    watch: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<u8> {
    let mut out = std::io::stdout();
    let tty = out.is_terminal();
    let c = s.canary(name).await?;
    if !watch {
        let rev = target_revision(s, &c).await;
        let events = s.events(name).await?;
        write!(out, "{}", render(&c, &events, rev.as_deref(), Utc::now()))?;
        return Ok(verdict(&c, rev.as_deref()).code());
    }
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(s.canaries(), cfg).applied_objects().boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut canary = c;
    let mut shown = String::new();
    loop {
        let rev = target_revision(s, &canary).await;
        let events = s.events(name).await?;
        let view = render(&canary, &events, rev.as_deref(), Utc::now());
        if view != shown {
            if tty {
                write!(out, "\x1b[H\x1b[2J{view}")?;
            } else {
                writeln!(out, "{view}")?;
            }
            out.flush()?;
            shown = view;
        }
        let v = verdict(&canary, rev.as_deref());
        if v != Verdict::Pending {
            return Ok(v.code());
        }
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = changes.next() => match next {
                Some(Ok(c)) => canary = c.with_stored_additions(),
                Some(Err(e)) => {
                    // The watcher retries by itself; say so once in a while and go on.
                    tracing::debug!("watching canary {name}: {e}");
                }
                None => anyhow::bail!("the watch on canary {name} ended"),
            },
            _ = tick.tick() => {}
            _ = expired => {
                eprintln!("canary {}/{name} is still {} after the timeout", s.namespace,
                    canary.status.as_ref().and_then(|s| s.phase).map(|p| p.as_str()).unwrap_or("new"));
                return Ok(Verdict::Pending.code());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).single().unwrap()
    }

    fn canary(analysis: serde_json::Value, status: serde_json::Value) -> Canary {
        serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "service": {"port": 80}, "analysis": analysis},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn a_waiting_revision_says_why_on_its_own_line() {
        let c = canary(
            json!({"interval": "1m", "maxWeight": 50, "stepWeight": 10}),
            json!({"phase": "Succeeded", "serin.dev/pending": {
                "since": "2026-01-01T00:58:00Z", "reason": "Queued", "position": 2,
                "message": "New revision of web.prod queued at position 2 of 4"}}),
        );
        let out = render(&c, &[], None, now());
        let line = out.lines().nth(1).unwrap_or_default();
        assert_eq!(
            line, "  QUEUED: New revision of web.prod queued at position 2 of 4",
            "{out}"
        );
    }

    /// Under Flagger's CRD the status has no room for serin's additions and they live in the
    /// `serin.dev/status` annotation: the view reads them from there.
    #[test]
    fn under_flaggers_crd_the_view_reads_the_additions_from_the_annotation() {
        let mut c = canary(
            json!({"interval": "1m", "maxWeight": 50, "stepWeight": 10}),
            json!({"phase": "Succeeded"}),
        );
        c.metadata.annotations = Some(
            [(
                crate::api::STATUS_ADDITIONS_ANNOTATION.to_string(),
                json!({"serin.dev/pending": {
                    "since": "2026-01-01T00:58:00Z", "reason": "Frozen",
                    "message": "New revision of web.prod waits for the freeze to end"}})
                .to_string(),
            )]
            .into(),
        );
        let before = render(&c, &[], None, now());
        assert!(!before.contains("FROZEN"), "{before}");
        let out = render(&c.with_stored_additions(), &[], None, now());
        let line = out.lines().nth(1).unwrap_or_default();
        assert_eq!(
            line, "  FROZEN: New revision of web.prod waits for the freeze to end",
            "{out}"
        );
    }

    #[test]
    fn the_view_shows_weight_step_metrics_and_events() {
        let c = canary(
            json!({"interval": "1m", "threshold": 5, "maxWeight": 50, "stepWeight": 10,
            "metrics": [
                {"name": "request-success-rate", "thresholdRange": {"min": 99}},
                {"name": "request-duration", "thresholdRange": {"max": 500}},
                {"name": "errors", "templateRef": {"name": "t"}, "thresholdRange": {"min": 0, "max": 2}},
                {"name": "latency", "templateRef": {"name": "l"}, "compare": {}}
            ]}),
            json!({"phase": "Progressing", "canaryWeight": 20, "failedChecks": 1,
            "lastAppliedSpec": "sha256:b",
            "serin.dev/metrics": [
                {"name": "request-success-rate", "value": 99.5, "checkedAt": "2026-01-01T00:59:30Z"},
                {"name": "request-duration", "value": 612.0, "checkedAt": "2026-01-01T00:59:30Z"},
                {"name": "errors", "checkedAt": "2026-01-01T00:59:30Z", "message": "no values"},
                {"name": "latency", "value": 250.0, "checkedAt": "2026-01-01T00:59:30Z", "result": "fail",
                 "comparison": {"canary": 250.0, "primary": 120.0, "canarySamples": 20, "primarySamples": 20,
                                "degradationPercent": 108.3, "allowed": 12.0, "pValue": 0.0001, "alpha": 0.02,
                                "result": "fail"}}
            ]}),
        );
        let events: Vec<Event> = serde_json::from_value(json!([
            {"metadata": {"name": "e1"}, "involvedObject": {}, "type": "Normal",
             "lastTimestamp": "2026-01-01T00:59:00Z", "message": "Advance web.prod canary weight 20"}
        ]))
        .unwrap();
        let view = render(&c, &events, Some("sha256:b"), now());
        assert!(
            view.starts_with("canary prod/web   Progressing\n"),
            "{view}"
        );
        let bar = format!("[{}{}{}]", "#".repeat(8), "-".repeat(12), " ".repeat(20));
        assert!(
            view.contains(&format!("weight   {bar} 20% (max 50%)   step 2/5")),
            "{view}"
        );
        assert!(view.contains("failed checks 1 of 5"), "{view}");
        let line = |name: &str| {
            view.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap()
                .to_string()
        };
        assert!(
            line("request-success-rate").contains("99.50  >= 99"),
            "{view}"
        );
        assert!(
            line("request-success-rate").ends_with("ok  (30s ago)"),
            "{view}"
        );
        assert!(line("request-duration").contains("612  <= 500"), "{view}");
        assert!(line("request-duration").contains("OUT OF RANGE"), "{view}");
        assert!(line("errors").contains("0..2"), "{view}");
        assert!(line("errors").contains("no value"), "{view}");
        assert!(line("latency").contains("250  any"), "{view}");
        assert!(line("latency").contains("FAILED"), "{view}");
        assert!(
            line("vs primary").contains(
                "vs primary: canary 250 (20) primary 120 (20), +108.3% worse, allowed 12, p 0.0001 < 0.02: fail"
            ),
            "{view}"
        );
        assert!(
            view.contains(" 60s  Normal   Advance web.prod canary weight 20"),
            "{view}"
        );
        assert_eq!(verdict(&c, Some("sha256:b")), Verdict::Pending);
    }

    #[test]
    fn verdicts_count_only_for_the_revision_taken_up() {
        let with = |phase: &str| {
            canary(
                json!({}),
                json!({"phase": phase, "lastAppliedSpec": "sha256:b"}),
            )
        };
        assert_eq!(
            verdict(&with("Succeeded"), Some("sha256:b")),
            Verdict::Promoted
        );
        assert_eq!(
            verdict(&with("Initialized"), Some("sha256:b")),
            Verdict::Promoted
        );
        assert_eq!(verdict(&with("Failed"), Some("sha256:b")), Verdict::Failed);
        assert_eq!(
            verdict(&with("Promoting"), Some("sha256:b")),
            Verdict::Pending
        );
        // A new template was pushed and serin has not taken it up yet.
        assert_eq!(
            verdict(&with("Succeeded"), Some("sha256:c")),
            Verdict::Pending
        );
        assert_eq!(verdict(&with("Failed"), Some("sha256:c")), Verdict::Pending);
        // Flagger's hashes cannot be compared: the phase alone counts.
        let flagger = canary(
            json!({}),
            json!({"phase": "Succeeded", "lastAppliedSpec": "5d8b9c7f6"}),
        );
        assert_eq!(verdict(&flagger, Some("sha256:c")), Verdict::Promoted);
        let paused = canary(
            json!({}),
            json!({"phase": "Progressing", "serin.dev/progress": {"pausedBy": "bob"}}),
        );
        assert!(render(&paused, &[], None, now()).contains("PAUSED by bob"));
        assert_eq!(
            [
                Verdict::Promoted.code(),
                Verdict::Failed.code(),
                Verdict::Pending.code()
            ],
            [0, 1, 2]
        );
    }

    #[test]
    fn steps_follow_step_weights_and_iterations() {
        let c = canary(
            json!({"stepWeights": [5, 20, 60], "maxWeight": 50}),
            json!({"canaryWeight": 20}),
        );
        assert_eq!(step_of(&c), Some((2, 3, "step")));
        let ab = canary(
            json!({"iterations": 10, "match": [{"headers": {"x": {"exact": "1"}}}]}),
            json!({"iterations": 3}),
        );
        assert_eq!(step_of(&ab), Some((3, 10, "iteration")));
    }
}
