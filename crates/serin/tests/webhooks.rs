//! Webhooks end to end: `serin controller` as its own process against the real API server, its
//! webhooks answered by a loopback receiver in this test that records every payload and answers
//! scripted statuses. Asserts what a user sees: payloads, Events (with their counts), status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use serin::rollout::messages as msg;
use serin_sandbox::testenv::eventually;
use support::*;

/// What the receiver answers on one path: the scripted answers in order, the last one repeating.
type Script = Vec<(u16, String)>;

#[derive(Clone, Default)]
struct Receiver {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    /// (path, payload) in arrival order.
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    base: String,
}

impl Receiver {
    async fn start() -> Receiver {
        let mut r = Receiver::default();
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(answer))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        r.base = format!(
            "http://{}",
            listener.local_addr().expect("receiver address")
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn script(&self, path: &str, answers: &[(u16, &str)]) {
        self.scripts.lock().unwrap().insert(
            path.to_string(),
            answers.iter().map(|(c, b)| (*c, b.to_string())).collect(),
        );
    }

    fn payloads(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn answer(
    State(r): State<Receiver>,
    Path(path): Path<String>,
    body: String,
) -> (StatusCode, String) {
    let payload: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    r.seen.lock().unwrap().push((path.clone(), payload));
    let mut scripts = r.scripts.lock().unwrap();
    let (code, text) = match scripts.get_mut(&path) {
        Some(s) if s.len() > 1 => s.remove(0),
        Some(s) if !s.is_empty() => s[0].clone(),
        _ => (200, "OK".to_string()),
    };
    (StatusCode::from_u16(code).unwrap(), text)
}

/// Waits until the event hook on `path` has received `message`; returns all it received.
async fn delivered(r: &Receiver, path: &str, message: &str) -> Vec<Value> {
    let what = format!("{path} received the event {message:?}");
    eventually(&what, LIMIT, || async {
        let got = r.payloads(path);
        if got.iter().any(|p| p["metadata"]["eventMessage"] == message) {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
}

fn hook(name: &str, kind: &str, url: String) -> Value {
    json!({"name": name, "type": kind, "url": url})
}

/// The Events on the Canary as (type, message, count), oldest first.
async fn events(w: &World, name: &str) -> Vec<(String, String, i32)> {
    let api: Api<Event> = Api::namespaced(w.client.clone(), &w.ns);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.name={name},involvedObject.kind=Canary"
    ));
    let mut list = api.list(&lp).await.expect("list events").items;
    list.sort_by_key(|e| e.first_timestamp.as_ref().map(|t| t.0));
    list.into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.message.unwrap_or_default(),
                e.count.unwrap_or(1),
            )
        })
        .collect()
}

async fn count_of(w: &World, message: &str) -> i32 {
    events(w, "podinfo")
        .await
        .iter()
        .filter(|(_, m, _)| m == message)
        .map(|(_, _, c)| *c)
        .sum()
}

async fn wait_event(w: &World, message: &str) {
    let what = format!(
        "event {message:?} (controller log: {})",
        w.controller.log.display()
    );
    eventually(&what, LIMIT, || async {
        let all = events(w, "podinfo").await;
        if all.iter().any(|(_, m, _)| m == message) {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                all.iter().map(|e| &e.1).collect::<Vec<_>>()
            ))
        }
    })
    .await
}

/// The `serin.dev/Gate` condition as (status, reason).
async fn gate_condition(w: &World) -> Option<(String, String)> {
    let c = w.canary("podinfo").await;
    c.status?
        .conditions
        .iter()
        .find(|c| c.type_ == "serin.dev/Gate")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// A Canary initialized on 6.0.0 with these webhooks and no metrics (the hooks are the analysis).
async fn initialized(prefix: &str, webhooks: Value) -> World {
    let w = World::new(prefix).await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    let analysis = json!({"interval": "5s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "webhooks": webhooks});
    w.apply(canary("podinfo", analysis)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    w
}

#[tokio::test]
async fn every_hook_type_gets_flaggers_payload_and_failures_show_their_body() {
    let r = Receiver::start().await;
    r.script("pre", &[(503, "warming up"), (200, "ok")]);
    r.script(
        "load",
        &[(500, "  load test failed: p99 1.2s > 500ms\n"), (200, "")],
    );
    r.script("rollback", &[(403, "Forbidden")]);
    let mut pre = hook("pre", "pre-rollout", r.url("pre"));
    pre["retries"] = json!(2);
    let mut load = hook("load", "rollout", r.url("load"));
    load["metadata"] =
        json!({"type": "cmd", "cmd": "hey -z 1m -q 10 -c 2 http://podinfo-canary:9898/"});
    let mut events_hook = hook("events", "event", r.url("events"));
    events_hook["metadata"] = json!({"team": "payments", "eventType": "spoofed"});
    let webhooks = json!([
        hook(
            "confirm-rollout",
            "confirm-rollout",
            r.url("confirm-rollout")
        ),
        pre,
        load,
        hook("traffic", "confirm-traffic-increase", r.url("traffic")),
        hook("promotion", "confirm-promotion", r.url("promotion")),
        hook("post", "post-rollout", r.url("post")),
        hook("rollback", "rollback", r.url("rollback")),
        events_hook,
    ]);
    let w = initialized("hooks-payloads", webhooks).await;
    let ns = w.ns.clone();
    let started = chrono::Utc::now().timestamp_millis();
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;

    // Flagger's five fields, with the phase each type is documented to send.
    for (path, phase) in [
        ("confirm-rollout", "Initialized"),
        ("pre", "Progressing"),
        ("load", "Progressing"),
        ("traffic", "Progressing"),
        ("promotion", "Progressing"),
        ("rollback", "Progressing"),
        ("post", "Succeeded"),
    ] {
        let got = r.payloads(path);
        assert!(!got.is_empty(), "{path} was called");
        for p in &got {
            assert_eq!(p["name"], "podinfo", "{path}: {p}");
            assert_eq!(p["namespace"], ns.as_str(), "{path}: {p}");
            assert_eq!(p["phase"], phase, "{path}: {p}");
            let checksum = p["checksum"].as_str().unwrap_or_default();
            assert!(
                checksum.len() == 16 && checksum.chars().all(|c| c.is_ascii_hexdigit()),
                "{path}: {p}"
            );
        }
    }
    let load = r.payloads("load");
    assert_eq!(
        load[0]["metadata"],
        json!({"type": "cmd", "cmd": "hey -z 1m -q 10 -c 2 http://podinfo-canary:9898/"})
    );
    // The analysed revision has one checksum; the confirm-rollout call came before it was taken up.
    let run_checksum = &load[0]["checksum"];
    for path in ["pre", "traffic", "promotion", "post"] {
        assert_eq!(&r.payloads(path)[0]["checksum"], run_checksum, "{path}");
    }
    assert_ne!(&r.payloads("confirm-rollout")[0]["checksum"], run_checksum);

    // 503 then 200: retried within the same check, and it passed.
    let pre = r.payloads("pre");
    assert_eq!(pre.len(), 2, "one retry after the 503: {pre:?}");
    assert_eq!(pre[0], pre[1]);
    assert_eq!(count_of(&w, "Pre-rollout check pre passed").await, 1);

    // The failing rollout hook: its trimmed body is in the Halt event.
    let halt = msg::halt_external_check(
        &format!("podinfo.{ns}"),
        "load",
        "load test failed: p99 1.2s > 500ms",
    );
    assert_eq!(count_of(&w, &halt).await, 1);
    assert_eq!(
        w.canary("podinfo").await.status.unwrap().failed_checks,
        Some(1)
    );
    assert!(count_of(&w, "Rollback hook rollback not signaling a rollback").await >= 2);
    assert!(count_of(&w, "Confirm-promotion check promotion passed").await >= 1);
    assert!(count_of(&w, "Post-rollout check post passed").await >= 1);

    // Event hooks: every Event, with the three keys winning over the user's.
    let target = format!("podinfo.{ns}");
    let now = chrono::Utc::now().timestamp_millis();
    let delivered = eventually("event hook deliveries", LIMIT, || async {
        let got = r.payloads("events");
        let texts: Vec<String> = got
            .iter()
            .map(|p| {
                p["metadata"]["eventMessage"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let want = [
            msg::new_revision_scaling_up(&target),
            halt.clone(),
            msg::promotion_completed(&target),
        ];
        if want.iter().all(|t| texts.contains(t)) {
            Ok(got)
        } else {
            Err(format!("{texts:?}"))
        }
    })
    .await;
    for p in &delivered {
        let m = &p["metadata"];
        let text = m["eventMessage"].as_str().unwrap_or_default();
        let expected = if text.starts_with("Halt ") {
            "Warning"
        } else {
            "Normal"
        };
        if text.starts_with("Halt ") || text.starts_with("New revision") {
            assert_eq!(m["eventType"], expected, "{p}");
        }
        assert_ne!(m["eventType"], "spoofed");
        assert_eq!(m["team"], "payments");
        let ts: i64 = m["timestamp"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("timestamp in unix ms: {p}"));
        assert!(ts >= started - 60_000 && ts <= now + 5_000, "{p}");
        assert_eq!(p["name"], "podinfo");
        assert_eq!(p["namespace"], ns.as_str());
    }
}

#[tokio::test]
async fn a_closed_traffic_gate_at_weight_zero_holds_without_replaying_the_start() {
    let r = Receiver::start().await;
    r.script("gate", &[(403, "Forbidden")]);
    let webhooks = json!([
        hook("pre", "pre-rollout", r.url("pre")),
        hook("gate", "confirm-traffic-increase", r.url("gate")),
    ]);
    let w = initialized("hooks-gate", webhooks).await;
    let ns = w.ns.clone();
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    let halt = msg::halt_waiting_traffic_increase(&format!("podinfo.{ns}"), "gate");
    wait_event(&w, &halt).await;
    assert_eq!(
        gate_condition(&w).await,
        Some(("False".into(), "ConfirmTrafficIncreaseClosed".into()))
    );
    // Four more intervals with the gate closed.
    eventually("the gate asked four more times", LIMIT, || async {
        let n = r.payloads("gate").len();
        if n >= 5 {
            Ok(())
        } else {
            Err(format!("{n} calls"))
        }
    })
    .await;
    let starting = msg::starting_analysis(&format!("podinfo.{ns}"));
    assert_eq!(count_of(&w, &starting).await, 1, "#1248: no replay");
    assert_eq!(r.payloads("pre").len(), 1, "#1248: pre-rollout ran once");
    assert_eq!(
        count_of(&w, &halt).await,
        1,
        "the waiting event is told once"
    );
    let c = w.canary("podinfo").await.status.unwrap();
    assert_eq!((c.canary_weight, c.failed_checks), (Some(0), Some(0)));

    r.script("gate", &[(200, "Approved")]);
    w.wait_weight("podinfo", 25).await;
    wait_event(&w, "Confirm-traffic-increase check gate passed").await;
    assert_eq!(
        gate_condition(&w).await,
        Some(("True".into(), "ConfirmTrafficIncreaseOpen".into()))
    );
    assert_eq!(count_of(&w, &starting).await, 1);
    assert_eq!(r.payloads("pre").len(), 1);
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
}

#[tokio::test]
async fn a_rollback_hook_answering_2xx_rolls_back() {
    let r = Receiver::start().await;
    r.script("rollback", &[(403, "Forbidden")]);
    let webhooks = json!([
        hook("rollback", "rollback", r.url("rollback")),
        hook("post", "post-rollout", r.url("post")),
    ]);
    let w = initialized("hooks-rollback", webhooks).await;
    let ns = w.ns.clone();
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_weight("podinfo", 25).await;
    r.script("rollback", &[(200, "Approved")]);
    w.wait_phase("podinfo", "Failed", LIMIT).await;
    let all: Vec<(String, String)> = events(&w, "podinfo")
        .await
        .into_iter()
        .map(|(t, m, _)| (t, m))
        .collect();
    for (kind, text) in [
        (
            "Normal",
            "Rollback hook rollback not signaling a rollback".to_string(),
        ),
        ("Warning", "Rollback check rollback passed".to_string()),
        (
            "Warning",
            msg::rolling_back_webhook(&format!("podinfo.{ns}")),
        ),
        (
            "Warning",
            format!("Canary failed! Scaling down podinfo.{ns}"),
        ),
    ] {
        assert!(
            all.contains(&(kind.to_string(), text.clone())),
            "{kind} {text:?} in {all:?}"
        );
    }
    let post = eventually("post-rollout call", LIMIT, || async {
        r.payloads("post")
            .into_iter()
            .next()
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    assert_eq!(post["phase"], "Failed");
    let primary = w.deployment("podinfo-primary").await.expect("primary");
    assert_eq!(
        image_of(&primary),
        "podinfo:6.0.0",
        "the primary is untouched"
    );
}

/// `--event-webhook` (Flagger's `-event-webhook`): Canaries without `event` hooks send their
/// Events there; a Canary with its own `event` hook sends them only to its own.
#[tokio::test]
async fn the_global_event_webhook_gets_the_events_of_canaries_without_their_own() {
    let r = Receiver::start().await;
    let global = r.url("global");
    let w = World::with_controller_args("hooks-global", &["--event-webhook", &global]).await;
    let ns = w.ns.clone();
    let analysis = |hooks: Value| json!({"interval": "5s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "webhooks": hooks});
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", analysis(json!([])))).await;
    w.apply(deployment("own", "podinfo:6.0.0", json!({}))).await;
    w.apply(canary(
        "own",
        analysis(json!([hook("mine", "event", r.url("own"))])),
    ))
    .await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    w.wait_phase("own", "Initialized", LIMIT).await;

    let done = msg::initialization_done(&format!("podinfo.{ns}"));
    let got = delivered(&r, "global", &done).await;
    for p in &got {
        assert_eq!(p["name"], "podinfo", "only podinfo's Events go there: {p}");
        assert_eq!(p["namespace"], ns.as_str());
        let expected = if p["metadata"]["eventMessage"] == done.as_str() {
            &["Normal"][..]
        } else {
            &["Normal", "Warning"][..]
        };
        assert!(
            p["metadata"]["eventType"]
                .as_str()
                .is_some_and(|t| expected.contains(&t)),
            "{p}"
        );
        assert!(
            p["metadata"]["timestamp"]
                .as_str()
                .is_some_and(|t| t.parse::<i64>().is_ok()),
            "{p}"
        );
    }
    let own_done = msg::initialization_done(&format!("own.{ns}"));
    delivered(&r, "own", &own_done).await;
    assert!(
        r.payloads("global").iter().all(|p| p["name"] == "podinfo"),
        "a Canary with its own event hook does not also use the global one"
    );
}
