use std::time::Duration;

use serde_json::{Value, json};

use super::payload::{body, url};
use super::*;
use crate::api::{AlertProviderType as T, AlertSeverity as E};
use crate::rollout::{Settings, Severity as S, Strategy};

fn settings() -> Settings {
    Settings {
        canary: "podinfo.test".into(),
        target: "podinfo-target.test".into(),
        primary: "podinfo-target-primary.test".into(),
        kind: "Deployment".into(),
        strategy: Strategy::Canary,
        interval: Duration::from_secs(60),
        threshold: 5,
        max_weight: 50,
        step_weight: 10,
        step_weights: vec![],
        step_weight_promotion: 0,
        iterations: 0,
        mirror: false,
        skip_analysis: false,
        suspend: false,
        progress_deadline: Duration::from_secs(600),
        hooks: vec![],
        muted_hooks: vec![],
    }
}

fn message(severity: S, fields: Vec<Field>) -> Message {
    Message {
        canary: "podinfo".into(),
        namespace: "test".into(),
        text: "New revision detected, progressing canary analysis.".into(),
        severity,
        fields,
    }
}

fn two_fields() -> Vec<Field> {
    vec![
        field("Cluster", "prod-eu"),
        field("Progress deadline", "600s"),
    ]
}

#[test]
fn metadata_fields_are_flaggers() {
    let s = settings();
    assert_eq!(
        fields(Some("prod-eu"), &s, true),
        vec![
            field("Cluster", "prod-eu"),
            field("Target", "Deployment/podinfo-target.test"),
            field("Failed checks threshold", "5"),
            field("Progress deadline", "600s"),
            field("Traffic routing", "Weight step: 10 max: 50"),
        ]
    );
    // Without metadata only the cluster stays; without a cluster name nothing.
    assert_eq!(
        fields(Some("prod-eu"), &s, false),
        vec![field("Cluster", "prod-eu")]
    );
    assert_eq!(fields(None, &s, false), vec![]);
    assert_eq!(fields(Some(""), &s, false), vec![]);
}

#[test]
fn traffic_routing_per_strategy() {
    let routing = |s: &Settings| {
        fields(None, s, true)
            .into_iter()
            .find(|f| f.name == "Traffic routing")
            .map(|f| f.value)
    };
    let mut s = settings();
    assert_eq!(routing(&s).as_deref(), Some("Weight step: 10 max: 50"));
    s.step_weight = 0;
    s.step_weights = vec![1, 10, 80];
    s.max_weight = 80;
    assert_eq!(
        routing(&s).as_deref(),
        Some("Weight steps: 1,10,80 max: 80")
    );
    s.step_weights.clear();
    s.strategy = Strategy::ABTesting;
    assert_eq!(routing(&s).as_deref(), Some("A/B Testing"));
    s.strategy = Strategy::BlueGreen;
    assert_eq!(routing(&s).as_deref(), Some("Blue/Green"));
    s.strategy = Strategy::Canary;
    assert_eq!(routing(&s), None, "no steps, no strategy: no routing field");
}

#[test]
fn severity_filter_table() {
    // (entry severity, alert severity, delivered)
    let table = [
        (E::Info, S::Info, true),
        (E::Info, S::Warn, true),
        (E::Info, S::Error, true),
        (E::Warn, S::Info, false),
        (E::Warn, S::Warn, true),
        (E::Warn, S::Error, true),
        (E::Error, S::Info, false),
        (E::Error, S::Warn, false),
        (E::Error, S::Error, true),
        // Flagger sends nothing here; serin treats "" as info.
        (E::Unset, S::Info, true),
        (E::Unset, S::Warn, true),
        (E::Unset, S::Error, true),
    ];
    for (entry, alert, want) in table {
        assert_eq!(accepts(entry, alert), want, "{entry:?} receives {alert:?}");
    }
}

#[test]
fn an_absent_or_empty_entry_severity_means_info() {
    let entry: crate::api::CanaryAlert =
        serde_json::from_value(json!({"name": "a", "severity": "", "providerRef": {"name": "p"}}))
            .unwrap();
    assert!(accepts(entry.severity(), S::Info));
    let entry: crate::api::CanaryAlert =
        serde_json::from_value(json!({"name": "a", "providerRef": {"name": "p"}})).unwrap();
    assert!(accepts(entry.severity(), S::Info));
}

fn slack_attachment(color: &str, fields: Value) -> Value {
    json!({
        "color": color,
        "author_name": "podinfo.test",
        "text": "New revision detected, progressing canary analysis.",
        "mrkdwn_in": ["text"],
        "fields": fields,
    })
}

#[test]
fn slack_golden() {
    let got = body(T::Slack, "ops", "bot", &message(S::Info, two_fields()));
    let want = json!({
        "channel": "ops",
        "username": "bot",
        "icon_url": "",
        "icon_emoji": ":rocket:",
        "attachments": [slack_attachment("good", json!([
            {"title": "Cluster", "value": "prod-eu", "short": false},
            {"title": "Progress deadline", "value": "600s", "short": false},
        ]))],
        "blocks": [
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "podinfo.test"}]},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "New revision detected, progressing canary analysis."},
                "fields": [
                    {"type": "mrkdwn", "text": "*Cluster*\nprod-eu"},
                    {"type": "mrkdwn", "text": "*Progress deadline*\n600s"},
                ],
            },
        ],
    });
    assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
}

#[test]
fn slack_error_is_danger_and_no_fields_is_an_empty_list() {
    let got = body(T::Slack, "general", "flagger", &message(S::Error, vec![]));
    assert_eq!(got["attachments"][0]["color"], "danger");
    assert_eq!(got["attachments"][0]["fields"], json!([]));
    // A section with an empty `fields` list is refused by Slack: the key is left out.
    assert!(got["blocks"][1].get("fields").is_none(), "{got}");
    assert_eq!(
        body(T::Slack, "g", "f", &message(S::Warn, vec![]))["attachments"][0]["color"],
        "good",
        "only errors are red"
    );
}

#[test]
fn discord_golden_is_the_slack_attachment_payload_without_blocks() {
    let got = body(T::Discord, "ops", "bot", &message(S::Error, two_fields()));
    let want = json!({
        "channel": "ops",
        "username": "bot",
        "icon_url": "",
        "icon_emoji": ":rocket:",
        "attachments": [slack_attachment("danger", json!([
            {"title": "Cluster", "value": "prod-eu", "short": false},
            {"title": "Progress deadline", "value": "600s", "short": false},
        ]))],
    });
    assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
}

#[test]
fn rocket_golden_uses_hex_colours() {
    let got = body(T::Rocket, "ops", "bot", &message(S::Info, vec![]));
    let want = json!({
        "channel": "ops",
        "username": "bot",
        "icon_url": "",
        "icon_emoji": ":rocket:",
        "attachments": [slack_attachment("#0076D7", json!([]))],
    });
    assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
    let err = body(T::Rocket, "ops", "bot", &message(S::Error, vec![]));
    assert_eq!(err["attachments"][0]["color"], "#FF0000");
}

#[test]
fn msteams_golden() {
    let got = body(
        T::Msteams,
        "ignored",
        "ignored",
        &message(S::Info, two_fields()),
    );
    let want = json!({
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": "0076D7",
        "summary": "podinfo.test",
        "sections": [{
            "activityTitle": "New revision detected, progressing canary analysis.",
            "activitySubtitle": "podinfo.test",
            "facts": [
                {"name": "Cluster", "value": "prod-eu"},
                {"name": "Progress deadline", "value": "600s"},
            ],
        }],
    });
    assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
    let err = body(T::Msteams, "", "", &message(S::Error, vec![]));
    assert_eq!(err["themeColor"], "FF0000");
    assert_eq!(err["sections"][0]["facts"], json!([]));
}

#[test]
fn gchat_golden() {
    let got = body(
        T::Gchat,
        "ignored",
        "ignored",
        &message(S::Warn, two_fields()),
    );
    let para = |t: &str| json!({"widgets": [{"textParagraph": {"text": t}}]});
    let want = json!({
        "cards": [{
            "header": {
                "title": "Flagger",
                "subtitle": "podinfo.test",
                "imageUrl": "https://flagger.app/favicon.png",
            },
            "sections": [
                para("<font color=#848484><strong>New revision detected, progressing canary analysis.</strong></font>"),
                para("Cluster<br><font color=#848484><strong>prod-eu</strong></font>"),
                para("Progress deadline<br><font color=#848484><strong>600s</strong></font>"),
            ],
        }],
    });
    assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
}

#[test]
fn discord_urls_get_slack_appended_once() {
    let cases = [
        (
            "https://discord.com/api/webhooks/1/abc",
            "https://discord.com/api/webhooks/1/abc/slack",
        ),
        (
            "https://discord.com/api/webhooks/1/abc/",
            "https://discord.com/api/webhooks/1/abc/slack",
        ),
        (
            "https://discord.com/api/webhooks/1/abc/slack",
            "https://discord.com/api/webhooks/1/abc/slack",
        ),
        (
            "https://discord.com/api/webhooks/1/abc?wait=true",
            "https://discord.com/api/webhooks/1/abc/slack?wait=true",
        ),
    ];
    for (given, want) in cases {
        assert_eq!(url(T::Discord, given).unwrap().as_str(), want, "{given}");
    }
    // Other providers post to the address as given.
    for kind in [T::Slack, T::Msteams, T::Rocket, T::Gchat] {
        assert_eq!(
            url(kind, "https://hooks.example/x").unwrap().as_str(),
            "https://hooks.example/x"
        );
    }
}

#[test]
fn bad_urls_are_refused_without_echoing_the_address() {
    for bad in ["not a url", "ftp://hooks.example/secret-path", "/relative"] {
        let err = url(T::Slack, bad).unwrap_err().to_string();
        assert!(err.starts_with("invalid URL"), "{err}");
        assert!(!err.contains("secret-path"), "{err}");
    }
}

#[test]
fn global_notifier_from_flags() {
    assert_eq!(GlobalArgs::default().destination(), None);
    let slack = GlobalArgs {
        slack_url: Some("https://hooks.slack.com/services/x".into()),
        slack_token: Some("xoxb-1".into()),
        slack_proxy_url: Some("http://proxy:3128".into()),
        ..Default::default()
    };
    let d = slack.destination().unwrap();
    assert_eq!(d.kind, T::Slack);
    assert_eq!(
        (d.channel.as_str(), d.username.as_str()),
        ("general", "flagger")
    );
    assert_eq!(d.token.as_deref(), Some("xoxb-1"));
    assert_eq!(d.proxy.as_deref(), Some("http://proxy:3128"));
    let both = GlobalArgs {
        msteams_url: Some("https://teams.example/hook".into()),
        slack_channel: Some("ops".into()),
        ..slack
    };
    let d = both.destination().unwrap();
    assert_eq!(d.kind, T::Msteams, "Teams wins, as in Flagger");
    assert_eq!(d.token, None);
    assert_eq!(d.proxy, None, "Slack's proxy is not Teams' proxy");
    // An empty value (a blank env var) counts as unset.
    let blank = GlobalArgs {
        slack_url: Some("  ".into()),
        ..Default::default()
    };
    assert_eq!(blank.destination(), None);
}

#[test]
fn debug_output_hides_addresses_and_tokens() {
    let args = GlobalArgs {
        slack_url: Some("https://hooks.slack.com/services/SECRET".into()),
        slack_token: Some("xoxb-SECRET".into()),
        ..Default::default()
    };
    let d = args.destination().unwrap();
    for text in [format!("{args:?}"), format!("{d:?}")] {
        assert!(!text.contains("SECRET"), "{text}");
    }
}

/// A one-shot HTTP server on loopback answering `status` with `answer`; returns its URL and the
/// raw request it got.
async fn receiver(status: u16, answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Headers, then as many body bytes as Content-Length says.
        loop {
            let n = sock.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        );
        sock.write_all(reply.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf).to_string()
    });
    (format!("http://{addr}/hook"), task)
}

fn dest(kind: T, address: String, token: Option<&str>) -> Destination {
    Destination {
        kind,
        address,
        token: token.map(String::from),
        proxy: None,
        channel: "ops".into(),
        username: "flagger".into(),
        origin: "test".into(),
    }
}

#[tokio::test]
async fn send_posts_json_with_the_bearer_token() {
    let (addr, got) = receiver(200, "ok").await;
    let client = reqwest::Client::new();
    send(
        &client,
        &dest(T::Slack, addr, Some("xoxb-42")),
        &message(S::Info, two_fields()),
    )
    .await
    .unwrap();
    let req = got.await.unwrap();
    let lower = req.to_ascii_lowercase();
    assert!(req.starts_with("POST /hook HTTP/1.1"), "{req}");
    assert!(lower.contains("authorization: bearer xoxb-42"), "{req}");
    assert!(lower.contains("content-type: application/json"), "{req}");
    let body: Value = serde_json::from_str(&req[req.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["channel"], "ops");
    assert_eq!(body["attachments"][0]["author_name"], "podinfo.test");
}

#[tokio::test]
async fn a_non_2xx_answer_is_flaggers_bad_response_error() {
    let (addr, got) = receiver(500, "  invalid_payload\n").await;
    let client = reqwest::Client::new();
    let err = send(
        &client,
        &dest(T::Msteams, addr, None),
        &message(S::Error, vec![]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sending notification bad response 500: invalid_payload"
    );
    let req = got.await.unwrap();
    assert!(
        !req.to_ascii_lowercase().contains("authorization:"),
        "no token, no header: {req}"
    );
}

#[tokio::test]
async fn an_unreachable_receiver_fails_without_naming_the_url() {
    // A port that was free a moment ago: the connection is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = reqwest::Client::new();
    let err = send(
        &client,
        &dest(T::Gchat, format!("http://127.0.0.1:{port}/SECRET"), None),
        &message(S::Info, vec![]),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("sending notification failed"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test]
async fn a_provider_proxy_carries_the_request() {
    // The "proxy" is a loopback receiver: an HTTP proxy gets the absolute URL in the request line.
    let (proxy, got) = receiver(200, "ok").await;
    let proxy = proxy.trim_end_matches("/hook").to_string();
    let alerter = Alerter::new(
        &GlobalArgs::default(),
        reqwest::Client::new(),
        std::sync::Arc::new(crate::telemetry::Metrics::new()),
    );
    let mut d = dest(
        T::Discord,
        "http://chat.invalid/api/webhooks/1/x".into(),
        None,
    );
    d.proxy = Some(proxy.clone());
    let client = alerter.client_for(d.proxy.as_deref()).unwrap();
    send(&client, &d, &message(S::Info, vec![])).await.unwrap();
    let req = got.await.unwrap();
    assert!(
        req.starts_with("POST http://chat.invalid/api/webhooks/1/x/slack HTTP/1.1"),
        "{req}"
    );
    // One client per proxy, reused.
    assert_eq!(alerter.proxied.lock().unwrap().len(), 1);
    alerter.client_for(Some(&proxy)).unwrap();
    assert_eq!(alerter.proxied.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn slack_web_api_ok_false_is_a_failure() {
    let (addr, _got) = receiver(200, r#"{"ok":false,"error":"channel_not_found"}"#).await;
    let err = send(
        &reqwest::Client::new(),
        &dest(T::Slack, addr, Some("xoxb-1")),
        &message(S::Info, vec![]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sending notification failed: Slack answered ok=false: channel_not_found"
    );
    // An incoming webhook's plain "ok" is a success.
    let (addr, _got) = receiver(200, "ok").await;
    send(
        &reqwest::Client::new(),
        &dest(T::Slack, addr, None),
        &message(S::Info, vec![]),
    )
    .await
    .unwrap();
}

mod properties {
    use proptest::prelude::*;
    use proptest::strategy::Strategy;

    use super::{Message, S, T, body, field};

    fn kinds() -> impl Strategy<Value = T> {
        prop_oneof![
            Just(T::Slack),
            Just(T::Msteams),
            Just(T::Discord),
            Just(T::Rocket),
            Just(T::Gchat)
        ]
    }

    fn severities() -> impl Strategy<Value = S> {
        prop_oneof![Just(S::Info), Just(S::Warn), Just(S::Error)]
    }

    proptest! {
        /// Whatever the text and fields, every provider's payload carries the text, each field in
        /// order, and `<canary>.<ns>`; Slack's blocks stay within Slack's limits.
        #[test]
        fn every_payload_carries_text_and_fields(
            kind in kinds(),
            severity in severities(),
            text in "\\PC{1,4000}",
            fields in proptest::collection::vec(("[A-Za-z ]{1,20}", "\\PC{0,2100}"), 0..6),
        ) {
            let m = Message {
                canary: "app".into(),
                namespace: "ns".into(),
                text: text.clone(),
                severity,
                fields: fields.iter().map(|(n, v)| field(n, v.clone())).collect(),
            };
            let b = body(kind, "c", "u", &m);
            let (shown_text, shown_fields): (String, Vec<(String, String)>) = match kind {
                T::Msteams => (
                    b["sections"][0]["activityTitle"].as_str().unwrap().into(),
                    b["sections"][0]["facts"].as_array().unwrap().iter()
                        .map(|f| (f["name"].as_str().unwrap().into(), f["value"].as_str().unwrap().into()))
                        .collect(),
                ),
                T::Gchat => {
                    let secs = b["cards"][0]["sections"].as_array().unwrap();
                    let t = |i: usize| secs[i]["widgets"][0]["textParagraph"]["text"].as_str().unwrap().to_string();
                    (
                        t(0),
                        (1..secs.len()).map(|i| {
                            let s = t(i);
                            let (n, v) = s.split_once("<br>").unwrap();
                            (n.to_string(), v.to_string())
                        }).collect(),
                    )
                }
                _ => (
                    b["attachments"][0]["text"].as_str().unwrap().into(),
                    b["attachments"][0]["fields"].as_array().unwrap().iter()
                        .map(|f| (f["title"].as_str().unwrap().into(), f["value"].as_str().unwrap().into()))
                        .collect(),
                ),
            };
            prop_assert!(shown_text.contains(&text));
            prop_assert_eq!(shown_fields.len(), fields.len());
            for ((n, v), (sn, sv)) in fields.iter().zip(&shown_fields) {
                prop_assert_eq!(n, sn);
                prop_assert!(sv.contains(v.as_str()));
            }
            prop_assert!(serde_json::to_string(&b).unwrap().contains("app.ns"));
            if kind == T::Slack {
                let section = &b["blocks"][1];
                prop_assert!(section["text"]["text"].as_str().unwrap().chars().count() <= 3000);
                for f in section["fields"].as_array().map(Vec::as_slice).unwrap_or_default() {
                    prop_assert!(f["text"].as_str().unwrap().chars().count() <= 2000);
                }
                prop_assert_eq!(section.get("fields").is_some(), !fields.is_empty());
            } else {
                prop_assert!(b.get("blocks").is_none());
            }
        }
    }
}
