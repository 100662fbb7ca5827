//! What the demo shows while a release runs: one line per change of phase, weight or metric value,
//! the Events as they are recorded, and, at the end, a summary row per release.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::flux::api as flux_api;
use serin_api::{Canary, CanaryPhase};

/// What one poll of the Canary shows, reduced to what the live view prints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub phase: String,
    pub weight: i32,
    pub failed_checks: i32,
    pub metrics: Vec<(String, Option<f64>)>,
}

impl Snapshot {
    pub fn of(c: &Canary) -> Snapshot {
        let st = c.status.clone().unwrap_or_default();
        Snapshot {
            phase: st
                .phase
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "-".into()),
            weight: st.canary_weight.unwrap_or(0),
            failed_checks: st.failed_checks.unwrap_or(0),
            metrics: st
                .serin_metrics
                .iter()
                .map(|m| (m.name.clone(), m.value))
                .collect(),
        }
    }

    /// `Progressing  [████░░░░░░] 40%  checks 0/2  request-success-rate 100.00  request-duration 12.00`
    pub fn line(&self, threshold: i32) -> String {
        let mut out = format!(
            "{:<16} {} {:>3}%  failed checks {}/{}",
            self.phase,
            bar(self.weight),
            self.weight,
            self.failed_checks,
            threshold
        );
        for (name, v) in &self.metrics {
            match v {
                Some(v) => out.push_str(&format!("  {name} {v:.2}")),
                None => out.push_str(&format!("  {name} (no data)")),
            }
        }
        out
    }
}

/// A ten-cell bar of the canary's traffic share.
pub fn bar(weight: i32) -> String {
    let filled = (weight.clamp(0, 100) as usize).div_ceil(10);
    format!("[{}{}]", "█".repeat(filled), "░".repeat(10 - filled))
}

/// One release of the story, as the summary table shows it.
#[derive(Clone, Debug)]
pub struct Release {
    pub tag: String,
    pub steps: Vec<i32>,
    pub duration: Duration,
    pub outcome: String,
    pub primary_image: String,
}

pub fn summary(releases: &[Release]) -> String {
    let mut out = format!(
        "{:<10} {:<22} {:>9}  {:<10} {}\n",
        "RELEASE", "WEIGHT STEPS", "DURATION", "OUTCOME", "PRIMARY RUNS"
    );
    for r in releases {
        let steps = if r.steps.is_empty() {
            "-".to_string()
        } else {
            r.steps
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("→")
        };
        out.push_str(&format!(
            "{:<10} {:<22} {:>8.0}s  {:<10} {}\n",
            r.tag,
            steps,
            r.duration.as_secs_f64(),
            r.outcome,
            r.primary_image
        ));
    }
    out
}

/// Follows one Canary until it reaches one of `done` phases (after having left them, so a stale
/// Succeeded from the previous release does not end the wait) or `limit` passes. Prints as it goes,
/// the Flux Kustomizations' Ready conditions beside serin's progress.
pub struct Follower {
    client: Client,
    ns: String,
    name: String,
    seen_events: BTreeSet<String>,
    /// Each Kustomization's last printed (ready, revision, message).
    kustomizations: BTreeMap<String, (String, String, String)>,
    start: Instant,
}

/// `[00:12]   flux  apps  Ready=True  main@sha1:0123456  Applied revision: main@sha1:0123…`
pub fn flux_line(row: &flux_api::Row) -> String {
    let revision = if row.revision.is_empty() {
        "-".to_string()
    } else {
        super::short(&row.revision)
    };
    let message: String = row.message.lines().next().unwrap_or_default().to_string();
    format!(
        "flux  {:<12} Ready={:<7} {:<17} {message}",
        row.name, row.ready, revision
    )
}

impl Follower {
    pub fn new(client: Client, ns: &str, name: &str) -> Follower {
        Follower {
            client,
            ns: ns.into(),
            name: name.into(),
            seen_events: BTreeSet::new(),
            kustomizations: BTreeMap::new(),
            start: Instant::now(),
        }
    }

    fn stamp(&self) -> String {
        let s = self.start.elapsed().as_secs();
        format!("[{:02}:{:02}]", s / 60, s % 60)
    }

    /// Prints Events not printed before (all of them on the first call, unless `skip_old`).
    pub async fn events(&mut self, print: bool) {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind=Canary,involvedObject.name={}",
            self.name
        ));
        let Ok(list) = api.list(&lp).await else {
            return;
        };
        let mut items = list.items;
        items.sort_by_key(|e| {
            e.last_timestamp
                .clone()
                .or(e.first_timestamp.clone())
                .map(|t| t.0)
        });
        for e in items {
            let key = format!(
                "{}/{}",
                e.metadata.name.clone().unwrap_or_default(),
                e.count.unwrap_or(1)
            );
            if self.seen_events.insert(key) && print {
                let kind = e.type_.clone().unwrap_or_default();
                let mark = if kind == "Warning" { "!" } else { " " };
                println!(
                    "{} {mark} event: {}",
                    self.stamp(),
                    e.message.clone().unwrap_or_default()
                );
            }
        }
    }

    /// Prints each Flux Kustomization whose Ready condition or revision changed since the last
    /// look; returns them all.
    pub async fn flux(&mut self) -> Vec<flux_api::Row> {
        let Ok(rows) = flux_api::list(
            &self.client,
            flux_api::Kind::Kustomization,
            flux_api::NAMESPACE,
        )
        .await
        else {
            return Vec::new();
        };
        for r in &rows {
            let seen = (r.ready.clone(), r.revision.clone(), r.message.clone());
            if self.kustomizations.get(&r.name) != Some(&seen) {
                println!("{}   {}", self.stamp(), flux_line(r));
                self.kustomizations.insert(r.name.clone(), seen);
            }
        }
        rows
    }

    /// Waits until every Kustomization is Ready at `revision`, printing their changes.
    pub async fn until_applied(&mut self, revision: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let rows = self.flux().await;
            if !rows.is_empty() && rows.iter().all(|r| r.is_ready() && r.revision == revision) {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the Kustomizations were not all Ready at {revision} within {} s:\n{}",
                    limit.as_secs(),
                    flux_api::table(&rows)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits for a terminal phase after the release started. Returns the last snapshot and the
    /// canary weights seen on the way.
    pub async fn follow(
        &mut self,
        threshold: i32,
        limit: Duration,
    ) -> anyhow::Result<(Snapshot, Vec<i32>)> {
        let api: Api<Canary> = Api::namespaced(self.client.clone(), &self.ns);
        let deadline = Instant::now() + limit;
        let mut last = Snapshot::default();
        let mut steps: Vec<i32> = Vec::new();
        let mut started = false;
        loop {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} did not finish within {} s (last: {})",
                    self.name,
                    limit.as_secs(),
                    last.line(threshold)
                );
            }
            if let Ok(Some(c)) = api.get_opt(&self.name).await {
                let snap = Snapshot::of(&c);
                let phase = c.status.as_ref().and_then(|s| s.phase);
                if snap != last {
                    println!("{} {}", self.stamp(), snap.line(threshold));
                }
                if snap.weight > 0 && steps.last() != Some(&snap.weight) {
                    steps.push(snap.weight);
                }
                started |= matches!(
                    phase,
                    Some(
                        CanaryPhase::Progressing
                            | CanaryPhase::Waiting
                            | CanaryPhase::WaitingPromotion
                            | CanaryPhase::Promoting
                    )
                );
                last = snap;
                self.events(true).await;
                self.flux().await;
                if started && matches!(phase, Some(CanaryPhase::Succeeded | CanaryPhase::Failed)) {
                    return Ok((last, steps));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_one_cell_per_ten_percent() {
        for (w, filled) in [
            (0, 0),
            (1, 1),
            (10, 1),
            (25, 3),
            (100, 10),
            (150, 10),
            (-5, 0),
        ] {
            let b = bar(w);
            assert_eq!(b.matches('█').count(), filled, "weight {w}: {b}");
            assert_eq!(b.chars().count(), 12, "weight {w}: {b}");
        }
    }

    #[test]
    fn snapshot_line_shows_weight_checks_and_metrics() {
        let s = Snapshot {
            phase: "Progressing".into(),
            weight: 40,
            failed_checks: 1,
            metrics: vec![
                ("request-success-rate".into(), Some(98.5)),
                ("x".into(), None),
            ],
        };
        let line = s.line(2);
        assert!(line.contains(" 40%"), "{line}");
        assert!(line.contains("failed checks 1/2"), "{line}");
        assert!(line.contains("request-success-rate 98.50"), "{line}");
        assert!(line.contains("x (no data)"), "{line}");
    }

    #[test]
    fn summary_has_a_row_per_release() {
        let t = summary(&[
            Release {
                tag: "6.0.1".into(),
                steps: vec![20, 40, 60],
                duration: Duration::from_secs(71),
                outcome: "Succeeded".into(),
                primary_image: "podinfo:6.0.1".into(),
            },
            Release {
                tag: "6.0.2".into(),
                steps: vec![],
                duration: Duration::from_secs(30),
                outcome: "Failed".into(),
                primary_image: "podinfo:6.0.1".into(),
            },
        ]);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 3);
        assert!(
            rows[1].contains("20→40→60") && rows[1].contains("71s"),
            "{t}"
        );
        assert!(rows[2].contains("Failed") && rows[2].contains(" - "), "{t}");
    }
}
