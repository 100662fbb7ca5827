//! Chat alerts end to end: `serin controller` against the real API server, the mesh simulator's
//! telemetry in the real Prometheus, and loopback HTTP receivers standing in for Slack, Teams,
//! Discord, Rocket.Chat and Google Chat. Each test asserts what lands in the "channel".
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

#[path = "support/mod.rs"]
mod support;

#[path = "support/alerts.rs"]
mod receivers;

use base64::Engine;
use serde_json::{Value, json};
use serin::rollout::messages as msg;
use serin_sandbox::testenv::eventually;
use support::*;

use receivers::{Controller, Got, Receiver};

/// How each chat service shows an alert.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Slack,
    Msteams,
    Discord,
    Rocket,
    Gchat,
}

/// The message text of a received payload.
fn text_of(kind: Kind, b: &Value) -> String {
    let s = match kind {
        Kind::Msteams => &b["sections"][0]["activityTitle"],
        Kind::Gchat => &b["cards"][0]["sections"][0]["widgets"][0]["textParagraph"]["text"],
        _ => &b["attachments"][0]["text"],
    };
    let s = s.as_str().unwrap_or_default();
    s.trim_start_matches("<font color=#848484><strong>")
        .trim_end_matches("</strong></font>")
        .to_string()
}

/// The (name, value) fields of a received payload.
fn fields_of(kind: Kind, b: &Value) -> Vec<(String, String)> {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match kind {
        Kind::Msteams => list(&b["sections"][0]["facts"])
            .iter()
            .map(|f| (str_of(&f["name"]), str_of(&f["value"])))
            .collect(),
        Kind::Gchat => list(&b["cards"][0]["sections"])
            .iter()
            .skip(1)
            .map(|s| {
                let t = str_of(&s["widgets"][0]["textParagraph"]["text"]);
                let (name, value) = t.split_once("<br>").unwrap_or_default();
                let value = value
                    .trim_start_matches("<font color=#848484><strong>")
                    .trim_end_matches("</strong></font>");
                (name.to_string(), value.to_string())
            })
            .collect(),
        _ => list(&b["attachments"][0]["fields"])
            .iter()
            .map(|f| {
                assert_eq!(f["short"], json!(false), "{f}");
                (str_of(&f["title"]), str_of(&f["value"]))
            })
            .collect(),
    }
}

/// Whether the payload shows an error (red).
fn is_red(kind: Kind, b: &Value) -> bool {
    match kind {
        Kind::Slack | Kind::Discord => b["attachments"][0]["color"] == "danger",
        Kind::Rocket => b["attachments"][0]["color"] == "#FF0000",
        Kind::Msteams => b["themeColor"] == "FF0000",
        // Google Chat cards carry no colour in Flagger's payload.
        Kind::Gchat => false,
    }
}

/// Who the payload is about (`<canary>.<ns>`).
fn subject_of(kind: Kind, b: &Value) -> String {
    match kind {
        Kind::Msteams => str_of(&b["summary"]),
        Kind::Gchat => str_of(&b["cards"][0]["header"]["subtitle"]),
        _ => str_of(&b["attachments"][0]["author_name"]),
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn wait_text(r: &Receiver, kind: Kind, text: &str) -> Got {
    let t = text.to_string();
    r.wait_for(&format!("{text:?}"), move |g| text_of(kind, &g.body) == t)
        .await
}

#[tokio::test]
async fn every_provider_gets_initialization_progress_waiting_promotion_and_failure() {
    let w = World::new("alerts").await;
    let ns = w.ns.clone();
    let providers = [
        (Kind::Slack, "slack"),
        (Kind::Msteams, "msteams"),
        (Kind::Discord, "discord"),
        (Kind::Rocket, "rocket"),
        (Kind::Gchat, "gchat"),
    ];
    let mut rx = Vec::new();
    for (kind, name) in providers {
        rx.push((kind, Receiver::start(name, 200).await));
    }
    let warn_only = Receiver::start("slack-warn", 200).await;
    let gate = Receiver::start("confirm-promotion gate", 403).await;

    // Slack through a secret (address and bot token); the others by spec.address.
    w.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "slack-hook"},
        "data": {"address": b64(&format!("{}/services/T0/B0", rx[0].1.base)), "token": b64("xoxb-e2e-token")}
    }))
    .await;
    w.apply(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider", "metadata": {"name": "slack"},
        "spec": {"type": "slack", "channel": "alerts-e2e", "username": "serin-e2e", "secretRef": {"name": "slack-hook"}}
    }))
    .await;
    let addresses = [
        ("msteams", format!("{}/webhookb2/x", rx[1].1.base)),
        ("discord", format!("{}/api/webhooks/1/abc", rx[2].1.base)),
        ("rocket", format!("{}/hooks/r", rx[3].1.base)),
        ("gchat", format!("{}/v1/spaces/s/messages", rx[4].1.base)),
    ];
    for (kind, address) in &addresses {
        w.apply(json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider", "metadata": {"name": kind},
            "spec": {"type": kind, "address": address}
        }))
        .await;
    }
    w.apply(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider", "metadata": {"name": "slack-warn"},
        "spec": {"type": "slack", "address": format!("{}/warn", warn_only.base)}
    }))
    .await;

    let mut alerts: Vec<Value> = providers
        .iter()
        .map(|(_, name)| json!({"name": format!("to-{name}"), "severity": "info", "providerRef": {"name": name, "namespace": ns}}))
        .collect();
    alerts.push(
        json!({"name": "warnings", "severity": "warn", "providerRef": {"name": "slack-warn"}}),
    );
    alerts.push(json!({"name": "missing", "providerRef": {"name": "absent"}}));
    w.apply(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider", "metadata": {"name": "no-secret"},
        "spec": {"type": "msteams", "secretRef": {"name": "nowhere"}}
    }))
    .await;
    alerts.push(
        json!({"name": "secretless", "severity": "error", "providerRef": {"name": "no-secret"}}),
    );
    let analysis = json!({
        "interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25,
        "metrics": builtin_metrics(),
        "webhooks": [{"name": "approval", "type": "confirm-promotion", "url": format!("{}/gate", gate.base)}],
        "alerts": alerts,
    });
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", analysis)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;

    let metadata = vec![
        ("Target".to_string(), format!("Deployment/podinfo.{ns}")),
        ("Failed checks threshold".into(), "2".into()),
        ("Progress deadline".into(), "60s".into()),
        ("Traffic routing".into(), "Weight step: 25 max: 50".into()),
    ];
    let subject = format!("podinfo.{ns}");
    let init = msg::alert_initialized("Deployment");
    for (kind, r) in &rx {
        let g = wait_text(r, *kind, &init).await;
        assert_eq!(fields_of(*kind, &g.body), metadata, "{kind:?}: {}", g.body);
        assert_eq!(subject_of(*kind, &g.body), subject, "{kind:?}");
        assert!(!is_red(*kind, &g.body), "{kind:?}: {}", g.body);
    }

    // Slack: the secret's address and token, the provider's channel and user, Block Kit blocks.
    let (_, slack) = &rx[0];
    let g = wait_text(slack, Kind::Slack, &init).await;
    assert_eq!(g.path, "/services/T0/B0");
    assert_eq!(g.authorization.as_deref(), Some("Bearer xoxb-e2e-token"));
    assert_eq!(g.body["channel"], "alerts-e2e");
    assert_eq!(g.body["username"], "serin-e2e");
    assert_eq!(g.body["icon_emoji"], ":rocket:");
    assert_eq!(g.body["blocks"][1]["text"]["text"], json!(init));
    assert_eq!(
        g.body["blocks"][1]["fields"][0]["text"],
        json!(format!("*Target*\nDeployment/podinfo.{ns}"))
    );
    // Discord: the Slack-compatible endpoint; default channel and user; no token anywhere else.
    let g = wait_text(&rx[2].1, Kind::Discord, &init).await;
    assert_eq!(g.path, "/api/webhooks/1/abc/slack");
    assert_eq!(
        (g.body["channel"].clone(), g.body["username"].clone()),
        (json!("general"), json!("flagger"))
    );
    for (kind, r) in &rx[1..] {
        assert!(
            r.got().iter().all(|g| g.authorization.is_none()),
            "{kind:?} got an Authorization header"
        );
    }
    // A provider that does not exist: a Warning Event naming the field, and the rollout goes on.
    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Warning"
            && m.contains("analysis.alerts[6]")
            && m.contains(&format!("AlertProvider {ns}/absent not found"))),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|(_, m)| m.contains("analysis.alerts[7]")),
        "an error-only entry is not even resolved for info alerts: {events:#?}"
    );

    // A provider whose secret is missing: only error alerts go to it, so the Warning comes with
    // the failure below.

    // A new revision: progress, then the closed gate holds it with a warning.
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    for (kind, r) in &rx {
        let g = wait_text(r, *kind, msg::ALERT_NEW_REVISION).await;
        assert_eq!(fields_of(*kind, &g.body), metadata, "{kind:?}");
    }
    w.wait_phase("podinfo", "WaitingPromotion", LIMIT).await;
    for (kind, r) in &rx {
        let g = wait_text(r, *kind, msg::ALERT_WAITING_PROMOTION).await;
        assert_eq!(fields_of(*kind, &g.body), vec![], "{kind:?}");
        assert!(!is_red(*kind, &g.body), "a warning is not red: {kind:?}");
    }
    // Approval: the gate opens, the canary is promoted.
    gate.set_status(200);
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    for (kind, r) in &rx {
        wait_text(r, *kind, msg::ALERT_PROMOTED).await;
    }

    // A faulty revision: rolled back on errors, an error alert in red.
    w.apply(deployment(
        "podinfo",
        "podinfo:6.0.2",
        json!({"serin.dev/simulate": "errors=50%"}),
    ))
    .await;
    w.wait_phase("podinfo", "Failed", LIMIT).await;
    let failed = msg::alert_threshold(2);
    for (kind, r) in &rx {
        let g = wait_text(r, *kind, &failed).await;
        if *kind != Kind::Gchat {
            assert!(is_red(*kind, &g.body), "{kind:?}: {}", g.body);
        }
    }

    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Warning"
            && m.contains("analysis.alerts[7]")
            && m.contains(&format!("Secret {ns}/nowhere"))
            && m.contains("create it with the key `address`")),
        "{events:#?}"
    );

    // The warn entry got the warning and the error, nothing of severity info.
    wait_text(&warn_only, Kind::Slack, &failed).await;
    let texts: Vec<String> = warn_only
        .got()
        .iter()
        .map(|g| text_of(Kind::Slack, &g.body))
        .collect();
    assert_eq!(
        texts,
        vec![msg::ALERT_WAITING_PROMOTION.to_string(), failed.clone()],
        "severity warn receives warn and error only"
    );
    // Each alert once per provider: the waiting alert is not repeated every interval.
    for (kind, r) in &rx {
        let n = r
            .got()
            .iter()
            .filter(|g| text_of(*kind, &g.body) == msg::ALERT_WAITING_PROMOTION)
            .count();
        assert_eq!(n, 1, "{kind:?}");
    }
}

/// The global notifier: no `analysis.alerts`, `--slack-url` set. A failing receiver is counted
/// and does not hold the rollout.
#[tokio::test]
async fn without_alert_providers_the_global_slack_url_gets_the_alerts() {
    let mut w = World::new("alerts-global").await;
    let ns = w.ns.clone();
    let slack = Receiver::start("global slack", 500).await;
    w.controller.kill();
    let url = format!("{}/services/global", slack.base);
    let ctl = Controller::spawn(
        w.env,
        &ns,
        &[
            "--slack-url",
            &url,
            "--slack-channel",
            "deploys",
            "--slack-user",
            "serin-global",
            "--cluster-name",
            "e2e-cluster",
        ],
    );
    let analysis = json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": builtin_metrics()});
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", analysis)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;

    let init = msg::alert_initialized("Deployment");
    let g = wait_text(&slack, Kind::Slack, &init).await;
    assert_eq!(g.path, "/services/global");
    assert_eq!(g.authorization, None);
    assert_eq!(g.body["channel"], "deploys");
    assert_eq!(g.body["username"], "serin-global");
    let fields = fields_of(Kind::Slack, &g.body);
    assert_eq!(
        fields.first(),
        Some(&("Cluster".to_string(), "e2e-cluster".to_string())),
        "{fields:?}"
    );
    assert_eq!(
        fields.get(1),
        Some(&("Target".to_string(), format!("Deployment/podinfo.{ns}")))
    );

    // The receiver answered 500: logged and counted as a failure.
    let http = reqwest::Client::new();
    let scrape = |want: &'static str| {
        let (http, url, log) = (http.clone(), ctl.metrics_url.clone(), ctl.log.clone());
        async move {
            eventually(&format!("{want} on /metrics"), LIMIT, || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let text = http
                        .get(&url)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .text()
                        .await
                        .map_err(|e| e.to_string())?;
                    if text.contains(want) {
                        Ok(())
                    } else {
                        Err(text
                            .lines()
                            .filter(|l| l.starts_with("serin_alert"))
                            .collect::<Vec<_>>()
                            .join("\n"))
                    }
                }
            })
            .await;
            std::fs::read_to_string(log).unwrap_or_default()
        }
    };
    let log = scrape(r#"serin_alert_deliveries_total{provider="slack",outcome="failure"} 1"#).await;
    assert!(
        log.contains("sending notification bad response 500: receiver answers 500"),
        "the controller log names the failure"
    );
    assert!(
        !log.contains("/services/global"),
        "the webhook URL (a credential) stays out of the log"
    );

    // The failure held nothing up: the next revision is analysed and promoted, and announced.
    slack.set_status(200);
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    wait_text(&slack, Kind::Slack, msg::ALERT_NEW_REVISION).await;
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    let g = wait_text(&slack, Kind::Slack, msg::ALERT_PROMOTED).await;
    assert_eq!(
        fields_of(Kind::Slack, &g.body),
        vec![("Cluster".to_string(), "e2e-cluster".to_string())],
        "without metadata only the cluster field"
    );
    scrape(r#"serin_alert_deliveries_total{provider="slack",outcome="success"} 2"#).await;
}
