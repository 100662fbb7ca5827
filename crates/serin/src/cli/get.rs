//! `serin get`: a table of canaries with their newest Event.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use super::{Session, age, event_order};
use crate::api::Canary;
use crate::controller::state::to_chrono;

pub async fn run(s: &Session, all_namespaces: bool) -> anyhow::Result<String> {
    let (canaries, events): (Api<Canary>, Api<Event>) = if all_namespaces {
        (Api::all(s.client.clone()), Api::all(s.client.clone()))
    } else {
        (
            Api::namespaced(s.client.clone(), &s.namespace),
            Api::namespaced(s.client.clone(), &s.namespace),
        )
    };
    let canaries: Vec<Canary> = canaries
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(Canary::with_stored_additions)
        .collect();
    let events = events
        .list(&ListParams::default().fields("involvedObject.kind=Canary"))
        .await?
        .items;
    if canaries.is_empty() {
        return Ok(if all_namespaces {
            "No canaries found.\n".into()
        } else {
            format!("No canaries found in namespace {}.\n", s.namespace)
        });
    }
    Ok(table(&canaries, &events, all_namespaces, Utc::now()))
}

/// The table; pure, for tests.
pub fn table(
    canaries: &[Canary],
    events: &[Event],
    all_namespaces: bool,
    now: DateTime<Utc>,
) -> String {
    type Newest = ((Option<DateTime<Utc>>, u64), String);
    let mut newest: HashMap<(String, String), Newest> = HashMap::new();
    for e in events {
        let key = (
            e.involved_object.namespace.clone().unwrap_or_default(),
            e.involved_object.name.clone().unwrap_or_default(),
        );
        let t = event_order(e);
        let msg = e.message.clone().unwrap_or_default();
        let entry = newest.entry(key).or_insert(((None, 0), String::new()));
        if entry.1.is_empty() || t >= entry.0 {
            *entry = (t, msg);
        }
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["NAME", "PHASE", "WEIGHT", "FAILED", "AGE", "LAST EVENT"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.iter().map(|h| h.to_string()).collect());
    let mut sorted: Vec<&Canary> = canaries.iter().collect();
    sorted.sort_by_key(|c| (c.metadata.namespace.clone(), c.metadata.name.clone()));
    for c in sorted {
        let ns = c.metadata.namespace.clone().unwrap_or_default();
        let name = c.metadata.name.clone().unwrap_or_default();
        let st = c.status.as_ref();
        let mut phase = st
            .and_then(|s| s.phase)
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "-".into());
        if st
            .and_then(|s| s.serin_progress.as_ref())
            .and_then(|p| p.paused_by.as_ref())
            .is_some()
        {
            phase.push_str(" (paused)");
        }
        if let Some(p) = st.and_then(|s| s.serin_pending.as_ref()) {
            phase.push_str(&pending_note(p));
        }
        let weight = st
            .and_then(|s| s.canary_weight)
            .map(|w| w.to_string())
            .unwrap_or_else(|| "-".into());
        let failed = st
            .and_then(|s| s.failed_checks)
            .map(|w| w.to_string())
            .unwrap_or_else(|| "-".into());
        let created = c.metadata.creation_timestamp.as_ref().map(to_chrono);
        let age = created.map(|t| age(now - t)).unwrap_or_else(|| "-".into());
        let last = newest
            .get(&(ns.clone(), name.clone()))
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| "-".into());
        let mut row = vec![name, phase, weight, failed, age, last];
        if all_namespaces {
            row.insert(0, ns);
        }
        rows.push(row);
    }
    render(&rows)
}

/// The phase column's note on a revision that waits to start: ` (queued 2)`, ` (frozen)`.
fn pending_note(p: &crate::api::PendingRun) -> String {
    match p.position {
        Some(n) => format!(" ({} {n})", p.reason.to_lowercase()),
        None => format!(" ({})", p.reason.to_lowercase()),
    }
}

/// Left-aligned columns, three spaces apart, the last one unpadded.
fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use k8s_openapi::api::core::v1::ObjectReference;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).single().unwrap()
    }

    fn canary(ns: &str, name: &str, status: serde_json::Value) -> Canary {
        serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:55:00Z"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "service": {"port": 80}},
            "status": status
        }))
        .unwrap()
    }

    fn event(ns: &str, name: &str, at: &str, msg: &str) -> Event {
        event_rv(ns, name, at, msg, "1")
    }

    fn event_rv(ns: &str, name: &str, at: &str, msg: &str, rv: &str) -> Event {
        Event {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("Canary".into()),
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            last_timestamp: serde_json::from_value(json!(at)).unwrap(),
            message: Some(msg.into()),
            ..Default::default()
        }
    }

    #[test]
    fn one_row_per_canary_with_its_newest_event() {
        let canaries = [
            canary(
                "b",
                "web",
                json!({"phase": "Progressing", "canaryWeight": 20, "failedChecks": 1,
                       "serin.dev/progress": {"pausedBy": "alice"}}),
            ),
            canary("a", "api", json!({})),
        ];
        let events = [
            event(
                "b",
                "web",
                "2026-01-01T00:59:00Z",
                "Advance web.b canary weight 20",
            ),
            event(
                "b",
                "web",
                "2026-01-01T00:58:00Z",
                "Advance web.b canary weight 10",
            ),
            event("a", "web", "2026-01-01T00:59:30Z", "other namespace"),
        ];
        let out = table(&canaries, &events, true, now());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAMESPACE   NAME   PHASE"), "{out}");
        let cells = |l: &str| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(cells(lines[1]), ["a", "api", "-", "-", "-", "5m", "-"]);
        assert_eq!(
            cells(lines[2]),
            [
                "b",
                "web",
                "Progressing (paused)",
                "20",
                "1",
                "5m",
                "Advance web.b canary weight 20"
            ]
        );
        let one_ns = table(&canaries[..1], &events, false, now());
        assert!(one_ns.starts_with("NAME   PHASE"), "{one_ns}");
    }

    #[test]
    fn queued_and_frozen_canaries_say_so_in_the_phase() {
        let pending = |reason: &str, position: Option<i32>| {
            json!({"phase": "Succeeded", "serin.dev/pending": {
                "since": "2026-01-01T00:58:00Z", "reason": reason, "position": position,
                "message": "why"}})
        };
        let canaries = [
            canary("a", "q", pending("Queued", Some(2))),
            canary("a", "f", pending("Frozen", None)),
            canary("a", "r", json!({"phase": "Succeeded"})),
        ];
        let out = table(&canaries, &[], false, now());
        let phases: Vec<String> = out
            .lines()
            .skip(1)
            .map(|l| {
                l.split("   ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .nth(1)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(
            phases,
            ["Succeeded (frozen)", "Succeeded (queued 2)", "Succeeded"],
            "{out}"
        );
    }

    #[test]
    fn within_one_second_the_later_write_is_the_newest_event() {
        let canaries = [canary("a", "web", json!({"phase": "Initialized"}))];
        let at = "2026-01-01T00:59:00Z";
        let events = [
            event_rv("a", "web", at, "Initialization done! web.a", "120"),
            event_rv(
                "a",
                "web",
                at,
                "all the metrics providers are available!",
                "119",
            ),
        ];
        for order in [[0, 1], [1, 0]] {
            let evs = [events[order[0]].clone(), events[order[1]].clone()];
            let out = table(&canaries, &evs, false, now());
            assert!(
                out.lines()
                    .nth(1)
                    .unwrap()
                    .ends_with("Initialization done! web.a"),
                "{out}"
            );
        }
    }

    #[test]
    fn ages_read_like_kubectl() {
        let d = chrono::Duration::seconds;
        assert_eq!(age(d(45)), "45s");
        assert_eq!(age(d(600)), "10m");
        assert_eq!(age(d(3 * 3600)), "3h");
        assert_eq!(age(d(5 * 86400)), "5d");
        assert_eq!(age(d(-3)), "0s");
    }
}
