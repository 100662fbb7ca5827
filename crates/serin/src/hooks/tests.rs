//! Payload shapes, timeout and retry rules as tables; `call_with` against a loopback receiver
//! that answers scripted statuses.

use super::*;
use crate::api::HookType;
use std::sync::{Arc, Mutex};

fn base() -> Payload {
    Payload {
        name: "podinfo".into(),
        namespace: "test".into(),
        phase: "Progressing".into(),
        checksum: checksum(Some("sha256:ab"), &BTreeMap::new()),
        metadata: BTreeMap::new(),
    }
}

fn hook(kind: Option<HookType>, metadata: &[(&str, &str)]) -> CanaryWebhook {
    CanaryWebhook {
        name: "h".into(),
        type_: kind,
        url: "http://127.0.0.1:1/".into(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn every_hook_type_sends_flaggers_five_fields() {
    for kind in [
        None,
        Some(HookType::ConfirmRollout),
        Some(HookType::PreRollout),
        Some(HookType::Rollout),
        Some(HookType::ConfirmTrafficIncrease),
        Some(HookType::ConfirmPromotion),
        Some(HookType::PostRollout),
        Some(HookType::Rollback),
    ] {
        let h = hook(kind, &[("type", "cmd"), ("cmd", "hey -z 1m http://x")]);
        let json = serde_json::to_value(hook_payload(&base(), &h)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "podinfo", "namespace": "test", "phase": "Progressing",
                "checksum": base().checksum,
                "metadata": {"type": "cmd", "cmd": "hey -z 1m http://x"}
            }),
            "{kind:?}"
        );
    }
    // Without metadata the key is absent, as Flagger's `omitempty`.
    let json = serde_json::to_value(hook_payload(&base(), &hook(None, &[]))).unwrap();
    assert_eq!(
        json.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["checksum", "name", "namespace", "phase"]
    );
}

#[test]
fn event_metadata_merges_and_the_three_keys_win() {
    let h = hook(
        Some(HookType::Event),
        &[("eventType", "spoofed"), ("team", "payments")],
    );
    let p = event_payload(
        &base(),
        &h,
        "Advance podinfo.test canary weight 10",
        true,
        1_700_000_000_123,
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["metadata"],
        serde_json::json!({
            "eventMessage": "Advance podinfo.test canary weight 10",
            "eventType": "Warning",
            "timestamp": "1700000000123",
            "team": "payments"
        })
    );
    assert_eq!(json["name"], "podinfo");
    assert_eq!(json["phase"], "Progressing");
    let normal = event_payload(&base(), &hook(Some(HookType::Event), &[]), "x", false, 1);
    assert_eq!(normal.metadata["eventType"], "Normal");
}

#[test]
fn the_global_event_webhook_is_used_only_without_the_canarys_own() {
    let own = vec![hook(Some(HookType::Event), &[("team", "a")])];
    // The Canary's hooks win over --event-webhook.
    assert_eq!(
        event_targets(own.clone(), Some("http://global/")),
        own.clone()
    );
    assert_eq!(event_targets(own.clone(), None), own);
    // Without its own, the global one under Flagger's name, with no metadata.
    let global = event_targets(vec![], Some("http://global/"));
    assert_eq!(global.len(), 1);
    assert_eq!(global[0].name, "events");
    assert_eq!(global[0].url, "http://global/");
    assert_eq!(global[0].hook_type(), HookType::Event);
    assert!(global[0].metadata.is_empty());
    assert_eq!(global[0].timeout(), Duration::from_secs(10));
    // Neither: nothing to send.
    assert!(event_targets(vec![], None).is_empty());
}

#[test]
fn checksum_tells_revisions_and_configs_apart() {
    let none = BTreeMap::new();
    let cfg = BTreeMap::from([("configmap/x".to_string(), "ab".to_string())]);
    let a = checksum(Some("sha256:a"), &none);
    assert_eq!(a, checksum(Some("sha256:a"), &none));
    assert_ne!(a, checksum(Some("sha256:b"), &none));
    assert_ne!(a, checksum(Some("sha256:a"), &cfg));
    assert_eq!(a.len(), 16);
}

#[test]
fn timeouts_default_to_ten_seconds() {
    let cases: &[(Option<&str>, u64)] = &[
        (None, 10_000),
        (Some(""), 10_000),
        (Some("5"), 10_000), // shorter than 2 characters: Flagger's default
        (Some("5s"), 5_000),
        (Some("500ms"), 500),
        (Some("1m"), 60_000),
        (Some("1m30s"), 90_000),
        (Some("1.5s"), 1_500),
        (Some("soon"), 10_000), // unparsable: `validate()` reports it
    ];
    for (given, ms) in cases {
        let h = CanaryWebhook {
            timeout: given.map(String::from),
            ..Default::default()
        };
        assert_eq!(h.timeout(), Duration::from_millis(*ms), "{given:?}");
    }
}

#[test]
fn what_is_retried() {
    let answered = |status| Attempt::Answered {
        status,
        body: String::new(),
        retry_after: None,
    };
    let no_answer = |kind| Attempt::NoAnswer {
        kind,
        message: String::new(),
    };
    let cases = [
        (answered(200), false, true),
        (answered(202), false, true),
        (answered(204), false, false),
        (answered(400), false, false),
        (answered(403), false, false),
        (answered(404), false, false),
        (answered(429), true, false),
        (answered(500), true, false),
        (answered(501), false, false),
        (answered(502), true, false),
        (answered(503), true, false),
        (answered(504), true, false),
        (no_answer(Transport::Transient), true, false),
        (no_answer(Transport::Invalid), false, false),
        (no_answer(Transport::Redirects), false, false),
        (no_answer(Transport::Certificate), false, false),
    ];
    for (attempt, retry, success) in cases {
        assert_eq!(attempt.retryable(), retry, "{attempt:?}");
        assert_eq!(attempt.succeeded(), success, "{attempt:?}");
    }
}

#[test]
fn backoff_doubles_from_one_second_up_to_thirty() {
    let p = RetryPolicy::default();
    let waits: Vec<u64> = (0..7).map(|i| p.backoff(i, None).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    assert_eq!(p.backoff(40, None), Duration::from_secs(30));
    assert_eq!(
        p.backoff(0, Some(Duration::from_secs(7))),
        Duration::from_secs(7)
    );
    assert_eq!(
        p.backoff(0, Some(Duration::from_secs(600))),
        Duration::from_secs(30)
    );
}

#[test]
fn the_error_text_is_the_trimmed_body() {
    let e = error_of(
        Attempt::Answered {
            status: 500,
            body: "\n  smoke test failed: 3 of 10 requests timed out \n".into(),
            retry_after: None,
        },
        1,
    );
    assert_eq!(e.outcome, Outcome::Failure);
    assert_eq!(e.message, "smoke test failed: 3 of 10 requests timed out");
    let e = error_of(
        Attempt::Answered {
            status: 503,
            body: " ".into(),
            retry_after: None,
        },
        3,
    );
    assert_eq!(
        e.message,
        "503 Service Unavailable (giving up after 3 attempts)"
    );
    let long = error_of(
        Attempt::Answered {
            status: 403,
            body: "x".repeat(5000),
            retry_after: None,
        },
        1,
    );
    assert_eq!(long.message.len(), BODY_LIMIT);
    let e = error_of(
        Attempt::NoAnswer {
            kind: Transport::Transient,
            message: "POST http://x/: connection refused".into(),
        },
        1,
    );
    assert_eq!(e.outcome, Outcome::Error);
}

// ---- against a loopback receiver ----

type Seen = Arc<Mutex<Vec<serde_json::Value>>>;
type Script = Arc<Mutex<Vec<(u16, &'static str)>>>;

/// Answers the scripted statuses in order (the last one repeats) and records the bodies.
async fn receiver(script: Vec<(u16, &'static str)>) -> (String, Seen) {
    use axum::extract::State;
    use axum::http::StatusCode;
    let seen: Seen = Arc::default();
    let script = Arc::new(Mutex::new(script));
    let state = (seen.clone(), script);
    let app = axum::Router::new()
        .fallback(
            |State((seen, script)): State<(Seen, Script)>, body: String| async move {
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or_default());
                let mut s = script.lock().unwrap();
                let (code, text) = if s.len() > 1 { s.remove(0) } else { s[0] };
                (StatusCode::from_u16(code).unwrap(), text)
            },
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/"), seen)
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        wait_min: Duration::from_millis(10),
        wait_max: Duration::from_millis(40),
        budget: Duration::from_secs(5),
        max_retries: 10,
    }
}

async fn call_once(url: &str, retries: i32, policy: RetryPolicy) -> Result<(), CallError> {
    let http = reqwest::Client::new();
    let h = CanaryWebhook {
        name: "smoke".into(),
        url: url.into(),
        retries: Some(retries),
        timeout: Some("2s".into()),
        ..Default::default()
    };
    call_with(&http, &http, &h, &base(), policy).await
}

#[tokio::test]
async fn retries_on_503_until_success() {
    let (url, seen) = receiver(vec![(503, "busy"), (503, "busy"), (200, "ok")]).await;
    assert_eq!(call_once(&url, 3, fast()).await, Ok(()));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|p| p["name"] == "podinfo"));
}

#[tokio::test]
async fn without_retries_the_body_is_the_error() {
    let (url, seen) = receiver(vec![(503, "  canary is not warmed up\n")]).await;
    let err = call_once(&url, 0, fast()).await.unwrap_err();
    assert_eq!(err.message, "canary is not warmed up");
    assert_eq!(err.outcome, Outcome::Failure);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn retries_run_out_and_keep_the_body() {
    let (url, seen) = receiver(vec![(500, "still broken")]).await;
    let err = call_once(&url, 2, fast()).await.unwrap_err();
    assert_eq!(err.message, "still broken (giving up after 3 attempts)");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_403_and_a_501_are_final_and_a_429_is_retried() {
    let (url, seen) = receiver(vec![(403, "Forbidden")]).await;
    assert_eq!(
        call_once(&url, 5, fast()).await.unwrap_err().message,
        "Forbidden"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    let (url, seen) = receiver(vec![(501, "no")]).await;
    assert!(call_once(&url, 5, fast()).await.is_err());
    assert_eq!(seen.lock().unwrap().len(), 1);
    let (url, seen) = receiver(vec![(429, "slow down"), (202, "")]).await;
    assert_eq!(call_once(&url, 1, fast()).await, Ok(()));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn retries_stop_at_the_budget() {
    let (url, seen) = receiver(vec![(503, "busy")]).await;
    let policy = RetryPolicy {
        wait_min: Duration::from_millis(200),
        wait_max: Duration::from_millis(200),
        budget: Duration::from_millis(500),
        max_retries: 10,
    };
    let start = Instant::now();
    let err = call_once(&url, 10, policy).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    let n = seen.lock().unwrap().len();
    assert!((2..=4).contains(&n), "{n} attempts within the budget");
    assert!(err.message.starts_with("busy (giving up after"));
}

#[tokio::test]
async fn no_listener_is_an_error_and_is_retried() {
    // Bind then drop, so the port is (almost certainly) closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/");
    let err = call_once(&url, 1, fast()).await.unwrap_err();
    assert_eq!(err.outcome, Outcome::Error);
    assert!(err.message.starts_with(&format!("POST {url}")), "{err}");
    assert!(
        err.message.ends_with("(giving up after 2 attempts)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_slow_hook_times_out() {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let h = CanaryWebhook {
        name: "slow".into(),
        url: format!("http://{addr}/"),
        timeout: Some("300ms".into()),
        ..Default::default()
    };
    let start = Instant::now();
    let err = call_with(&http, &http, &h, &base(), fast())
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(err.outcome, Outcome::Error);
}

#[test]
fn calls_are_counted_by_type_and_outcome() {
    let m = crate::telemetry::Metrics::new();
    let labels = |t: &str, o: Outcome| crate::telemetry::WebhookLabels {
        r#type: t.into(),
        outcome: o.as_str().into(),
    };
    m.webhook_calls
        .get_or_create(&labels("confirm-promotion", Outcome::Failure))
        .inc();
    m.webhook_calls
        .get_or_create(&labels("event", Outcome::Error))
        .inc();
    let text = m.encode();
    assert!(
        text.contains(r#"serin_webhook_calls_total{type="confirm-promotion",outcome="failure"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"serin_webhook_calls_total{type="event",outcome="error"} 1"#));
}

#[tokio::test]
async fn disable_tls_picks_the_insecure_client() {
    let (url, seen) = receiver(vec![(200, "ok")]).await;
    // The verifying client is made unusable, so only the insecure one can reach the receiver.
    let verifying = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all("http://127.0.0.1:1").unwrap())
        .build()
        .unwrap();
    let insecure = reqwest::Client::new();
    let mut h = CanaryWebhook {
        name: "tls".into(),
        url,
        ..Default::default()
    };
    assert!(
        call_with(&verifying, &insecure, &h, &base(), fast())
            .await
            .is_err()
    );
    h.disable_tls = Some(true);
    assert_eq!(
        call_with(&verifying, &insecure, &h, &base(), fast()).await,
        Ok(())
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// Runs Debian's `openssl` (installed by `serin-sandbox setup`), failing with what it said.
fn openssl(cmd: &mut std::process::Command) {
    let out = cmd
        .output()
        .expect("openssl (installed by `serin-sandbox setup`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An HTTPS receiver with a self-signed certificate (made by Debian's `openssl`, which
/// `serin-sandbox setup` installs) that answers 200 to every request and counts them.
async fn tls_receiver() -> (String, Arc<Mutex<usize>>, std::path::PathBuf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("serin-hooks-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("key.der"), dir.join("cert.der"));
    openssl(
        std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .args(["-outform", "DER", "-out"])
            .arg(&cert)
            .arg("-keyout")
            .arg(dir.join("key.pem")),
    );
    openssl(
        std::process::Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(&key),
    );
    let cert = rustls::pki_types::CertificateDer::from(std::fs::read(&cert).unwrap());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(std::fs::read(&key).unwrap().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(Mutex::new(0usize));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake here.
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                // Headers, then the body by Content-Length.
                loop {
                    let Ok(n) = tls.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                *count.lock().unwrap() += 1;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://{addr}/"), served, dir)
}

#[tokio::test]
async fn disable_tls_accepts_a_self_signed_receiver_that_is_refused_otherwise() {
    let (url, served, dir) = tls_receiver().await;
    let (http, insecure) = clients().unwrap();
    let mut h = CanaryWebhook {
        name: "tls".into(),
        url,
        timeout: Some("5s".into()),
        ..Default::default()
    };
    let refused = call_with(&http, &insecure, &h, &base(), fast()).await;
    let e = refused.expect_err("a self-signed certificate is refused without disableTLS");
    assert_eq!(e.outcome, Outcome::Error, "{e:?}");
    assert_eq!(*served.lock().unwrap(), 0);

    h.disable_tls = Some(true);
    assert_eq!(
        call_with(&http, &insecure, &h, &base(), fast()).await,
        Ok(())
    );
    assert_eq!(*served.lock().unwrap(), 1);
    let _ = std::fs::remove_dir_all(dir);
}
