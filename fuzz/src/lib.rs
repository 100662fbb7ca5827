//! The entry points of serin's fuzz targets, one per kind of untrusted input. They are shared by
//! the cargo-fuzz binaries (`fuzz/fuzz_targets/`, nightly) and by the stable regression test
//! `crates/serin/tests/fuzz_corpus.rs`, which includes this file and replays every input under
//! `fuzz/corpus/` on each `cargo test`, so a crash once found stays fixed without nightly.
//!
//! Every function takes raw bytes, so a corpus file is the input as is. A panic is a bug: either
//! in serin, or an invariant stated here that serin broke. Inputs that need structure (a template
//! and its model, an HTTP status and a body) are cut out of the bytes by the small decoders
//! below, never with `arbitrary`, so corpus files stay readable and editable by hand.
//!
//! The HTTP targets (webhook and Prometheus answers) run the product's real client code against a
//! loopback server that answers with the fuzzed bytes: the parsing under test is reqwest's, hyper's
//! and prometheus-http-query's as much as serin's, and that is the point, since serin only ever
//! sees what they return.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::Value;
use serin::api::{self, AlertProvider, Canary, MetricTemplate};
use serin::hooks::{self, Outcome, Payload, RetryPolicy};
use serin::loadtester::{self, Gates, LoadTester, Options, TaskRequest};
use serin::metrics::prometheus::{Prometheus, ProviderConfig, classify};
use serin::metrics::{self, Check, MetricKind, QueryOutcome, TemplateModel};

/// One fuzz target: it takes the fuzzer's bytes and must never panic.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: the directory names under `fuzz/corpus/` and the binaries under
/// `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("api_manifest", api_manifest),
    ("api_json", api_json),
    ("go_duration", go_duration),
    ("template_render", template_render),
    ("loadtester_request", loadtester_request),
    ("webhook_response", webhook_response),
    ("prometheus_response", prometheus_response),
];

/// `serin validate` on a YAML (or JSON) stream: the YAML parser, the CRD schema check and
/// `validate()` of all three kinds, as `lint::check` runs them for every document.
pub fn api_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let checked = api::lint::check(text);
    for (at, problem) in &checked.problems {
        // Every problem is shown to a user; rendering it must work.
        let _ = format!("{at}: {problem}");
    }
}

/// A JSON object as the controller gets it from the API server: each kind deserialised, then
/// `validate()`, the schema check, the accessors with Flagger's defaults, a serialisation round
/// trip (the controller writes status and reads it back), and, for a Canary `validate()` accepts,
/// the Services, DestinationRules and VirtualService built from it.
pub fn api_json(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = api::validate(&value);
    if let Some(problems) = api::schema::check_object(&value)
        && problems.is_empty()
    {
        readable_when_accepted(&value);
    }
    // The typed reads do not look at `kind`: try all three, so the fuzzer need not find it.
    if let Ok(canary) = serde_json::from_value::<Canary>(value.clone()) {
        round_trip(&canary);
        canary_consumers(&canary);
    }
    if let Ok(template) = serde_json::from_value::<MetricTemplate>(value.clone()) {
        round_trip(&template);
        let _ = api::validate_metric_template(&template);
        let model = TemplateModel {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            interval: "1m".into(),
            ..Default::default()
        };
        let _ = metrics::render(&template.spec.query, &model);
    }
    if let Ok(provider) = serde_json::from_value::<AlertProvider>(value) {
        round_trip(&provider);
        let _ = api::validate_alert_provider(&provider);
    }
}

/// A spec the schema check passes without a word is one the API server stores as it is; the
/// controller must be able to read it back, or that Canary gets no status (issue 11, finding 2).
/// The object is given as the API server returns it: numbers as Go prints them, and valid
/// metadata, which the API server checks itself and the CRD schema does not describe. The status
/// is left out: serin writes it, and its schema is deliberately looser than the types (as
/// Flagger's, `status.phase` is any string), so a hand-edited status can make a Canary
/// unreadable; the controller has to skip and report such a Canary rather than the schema
/// refusing it.
fn readable_when_accepted(value: &Value) {
    let Some(kind) = value.get("kind").and_then(Value::as_str) else {
        return;
    };
    let mut written = value.clone();
    written["apiVersion"] = Value::from(api::API_VERSION);
    written["metadata"] = serde_json::json!({"name": "fuzz", "namespace": "test"});
    if let Some(obj) = written.as_object_mut() {
        obj.remove("status");
    }
    let stored = as_go_returns_it(&written);
    let read = match kind {
        "Canary" => serde_json::from_value::<Canary>(stored.clone()).map(drop),
        "MetricTemplate" => serde_json::from_value::<MetricTemplate>(stored.clone()).map(drop),
        "AlertProvider" => serde_json::from_value::<AlertProvider>(stored.clone()).map(drop),
        _ => return,
    };
    if let Err(e) = read {
        panic!("the schema accepts this {kind} but serin cannot read it: {e}\n{stored}");
    }
    // `serin validate` must not call unreadable what the API server stores and serin reads.
    for p in api::validate(&written) {
        assert!(
            !p.message.starts_with("cannot be read"),
            "serin validate refuses a readable {kind}: {p}"
        );
    }
}

/// The API server decodes a number without a fraction or exponent as an integer and any other as
/// a float64, which Go prints without a fraction when it has none (`3.0` and `1e1` come back as
/// `3` and `10`; from 1e21 on, in exponent form).
fn as_go_returns_it(value: &Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < 1e21 => {
                if f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    Value::from(f as i64)
                } else if f >= 0.0 && f < u64::MAX as f64 {
                    Value::from(f as u64)
                } else {
                    value.clone()
                }
            }
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(as_go_returns_it).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), as_go_returns_it(v)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

/// What serin writes it must read back: serialising an object it read gives JSON that reads
/// again into the same object (a status the controller wrote and then cannot read would stop
/// that Canary for good).
fn round_trip<T>(obj: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_value(obj).expect("an object that was read serialises");
    let again: T = serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("serin cannot read what it wrote: {e}\n{json}"));
    assert_eq!(&again, obj, "the round trip changed the object");
}

fn canary_consumers(canary: &Canary) {
    let problems = api::validate_canary(canary);
    let spec = &canary.spec;
    let _ = (
        canary.apex_name(),
        spec.progress_deadline_seconds(),
        spec.strategy(),
        spec.skip_analysis(),
        spec.revert_on_deletion(),
        spec.suspend(),
    );
    if let Some(a) = spec.analysis() {
        let _ = (
            a.interval(),
            a.threshold(),
            a.iterations(),
            a.max_weight(),
            a.step_weight(),
            a.step_weights().len(),
            a.step_weight_promotion(),
            a.mirror(),
            a.primary_ready_threshold(),
            a.canary_ready_threshold(),
        );
        for m in &a.metrics {
            let _ = (m.interval(), m.is_builtin());
            for kind in [MetricKind::SuccessRate, MetricKind::Duration] {
                let _ = metrics::range_of(m, kind);
            }
        }
        for w in &a.webhooks {
            let _ = (w.timeout(), w.hook_type(), w.retries(), w.disable_tls());
        }
    }
    let _ = (
        spec.service.port_name(),
        spec.service.target_port(),
        spec.service.delegation(),
    );
    // Warnings do not hold a Canary: the controller builds its objects for those too.
    if problems.iter().any(|p| !p.is_warning()) {
        return;
    }
    // What the controller builds from a Canary that passed validation.
    let target = canary.spec.target_ref.name.clone();
    let selector = serin::workload::SelectorLabel {
        key: "app".into(),
        value: target,
    };
    let inputs = serin::router::RouterInputs {
        canary,
        namespace: "test",
        selector: &selector,
        owner: Default::default(),
        discovered: &[],
    };
    let _ = serin::router::desired_services(&inputs);
    let _ = serin::router::desired_destination_rules(&inputs);
    for (primary, canary_weight) in [(100, 0), (90, 10), (0, 100)] {
        let routes = serin::rollout::Routes {
            primary,
            canary: canary_weight,
            mirror: canary_weight == 10,
        };
        let vs = serin::router::desired_virtual_service(&inputs, routes);
        // The controller reads its own VirtualService back to learn the current weights.
        let read = serin::router::read_routes(&vs, &canary.apex_name());
        assert!(
            read.is_some_and(|r| r.primary == primary && r.canary == canary_weight),
            "read_routes does not give back the weights {primary}/{canary_weight}: {read:?}"
        );
    }
}

/// Go durations (`interval`, `timeout`, a metric's `interval`): the parser, and Go's formatting
/// of milliseconds that the request-duration check writes in Events, read back by the parser.
pub fn go_duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(d) = api::parse_go_duration(text) else {
        return;
    };
    let nanos = d.as_nanos();
    assert!(nanos <= i64::MAX as u128, "{text:?} is beyond Go's range");
    let again = api::parse_go_duration(&format!("{nanos}ns"));
    assert_eq!(again, Ok(d), "{text:?} as nanoseconds");
    let ms = d.as_millis() as i64;
    let formatted = metrics::go_duration_ms(ms);
    let back = api::parse_go_duration(&formatted)
        .unwrap_or_else(|e| panic!("go_duration_ms({ms}) = {formatted:?} does not parse: {e}"));
    assert_eq!(
        back.as_millis() as i64,
        ms,
        "go_duration_ms({ms}) = {formatted:?}"
    );
}

/// Fields separated by NUL bytes; missing fields are empty.
fn fields(data: &[u8]) -> Option<Vec<&str>> {
    let text = std::str::from_utf8(data).ok()?;
    Some(text.split('\0').collect())
}

/// MetricTemplate rendering. Input: `template NUL name NUL namespace NUL target NUL service NUL
/// ingress NUL route NUL interval NUL value NUL min NUL max NUL key=value ...` (NUL-separated).
/// The template is rendered against the model, and checked as the controller would check a
/// metric on the value.
pub fn template_render(data: &[u8]) {
    let Some(f) = fields(data) else {
        return;
    };
    let get = |i: usize| f.get(i).copied().unwrap_or_default();
    let template = get(0);
    let mut model = TemplateModel {
        name: get(1).into(),
        namespace: get(2).into(),
        target: get(3).into(),
        service: get(4).into(),
        ingress: get(5).into(),
        route: get(6).into(),
        interval: get(7).into(),
        variables: BTreeMap::new(),
    };
    for kv in f.iter().skip(11) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        model.variables.insert(k.into(), v.into());
    }
    let rendered = metrics::render(template, &model);
    if !template.contains("{{") {
        assert_eq!(rendered.as_deref(), Ok(template), "text without actions");
    }
    // Values are inserted as they are, never rendered again (as Go's text/template does).
    assert_eq!(
        metrics::render("{{ name }}", &model).as_deref(),
        Ok(model.name.as_str())
    );
    let values = [&model.namespace, &model.target, &model.interval];
    for name in [metrics::REQUEST_SUCCESS_RATE, metrics::REQUEST_DURATION] {
        let q = metrics::builtin_query(name, &model).expect("the built-in queries render");
        if values.iter().all(|v| !v.contains("{{")) {
            assert!(!q.contains("{{"), "{name} left an action: {q}");
        }
    }
    let trimmed = metrics::trim_query(template);
    assert_eq!(metrics::trim_query(&trimmed), trimmed, "trim_query twice");

    let number = |i: usize| get(i).trim().parse::<f64>().ok();
    let metric = api::CanaryMetric {
        name: "custom".into(),
        threshold_range: Some(api::CanaryThresholdRange {
            min: number(9),
            max: number(10),
        }),
        ..Default::default()
    };
    let value = number(8).unwrap_or(0.0);
    for kind in [
        MetricKind::SuccessRate,
        MetricKind::Duration,
        MetricKind::Template,
        MetricKind::Inline,
    ] {
        let check = Check::new(&metric, kind, rendered.as_deref().unwrap_or(template));
        let _ = metrics::verdict(&check, value, "podinfo");
        let _ = metrics::no_values_text(&check, "podinfo");
        let _ = metrics::error_text(&check, template);
    }
}

/// The load tester's HTTP API with any body. Input: one byte choosing the path and the
/// `--namespace-regexp`, then the body. `/` is read with `parse_task` and never run (it would run
/// the command); the gate paths go through the router, and opening, checking and closing a gate
/// with the same body must agree.
pub fn loadtester_request(data: &[u8]) {
    const PATHS: [&str; 10] = [
        "/",
        "/gate/check",
        "/gate/open",
        "/gate/close",
        "/rollback/check",
        "/rollback/open",
        "/rollback/close",
        "/gate/approve",
        "/gate/halt",
        "/healthz",
    ];
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let path = PATHS[usize::from(selector) % PATHS.len()];
    let opts = Options {
        namespace_regexp: (selector & 0x80 != 0)
            .then(|| regex::Regex::new("^(test|prod)$").expect("a fixed regexp")),
        ..Default::default()
    };
    if path == "/" {
        let parsed = loadtester::parse_task(body, &opts);
        check_task(body, &opts, &parsed);
        return;
    }
    let lt = LoadTester::new(opts, Gates::in_memory());
    let (status, text) = serve(&lt, path, body);
    let decodes = serde_json::from_slice::<loadtester::Payload>(body).is_ok();
    let expected: &[u16] = match path {
        "/gate/approve" | "/healthz" => &[200],
        "/gate/halt" => &[403],
        _ if !decodes => &[400],
        "/gate/check" | "/rollback/check" => &[403],
        _ => &[202],
    };
    assert!(
        expected.contains(&status),
        "{path} answered {status} {text:?}"
    );
    if decodes && path.ends_with("/open") {
        let prefix = path.trim_end_matches("/open");
        let (checked, _) = serve(&lt, &format!("{prefix}/check"), body);
        assert_eq!(checked, 200, "{prefix} open, then check");
        let (closed, _) = serve(&lt, &format!("{prefix}/close"), body);
        assert_eq!(closed, 202, "{prefix}/close");
        let (checked, _) = serve(&lt, &format!("{prefix}/check"), body);
        assert_eq!(checked, 403, "{prefix} closed, then check");
    }
}

fn check_task(
    body: &[u8],
    opts: &Options,
    parsed: &Result<TaskRequest, (axum::http::StatusCode, String)>,
) {
    match parsed {
        Ok(TaskRequest::Blocking {
            kind,
            program,
            args,
            command,
            ..
        }) => match kind.as_str() {
            "bash" => assert_eq!(
                (*program, args.as_slice()),
                ("bash", &["-c".to_string(), command.clone()][..])
            ),
            "helm" | "helmv3" | "kubectl" => {
                assert!(
                    args.iter()
                        .all(|a| !a.is_empty() && !a.contains(char::is_whitespace))
                );
            }
            other => panic!("a blocking task of unknown type {other:?}"),
        },
        Ok(TaskRequest::Background { .. }) => {}
        Err((status, text)) => assert!(
            matches!(status.as_u16(), 400 | 403) && !text.is_empty(),
            "{status} {text:?}"
        ),
    }
    // A refused namespace is refused before anything else is looked at.
    if let (Some(re), Ok(p)) = (
        &opts.namespace_regexp,
        serde_json::from_slice::<loadtester::Payload>(body),
    ) && !re.is_match(p.namespace.as_deref().unwrap_or_default())
    {
        assert!(matches!(parsed, Err((s, _)) if s.as_u16() == 403));
    }
}

/// One request through the load tester's router, in process.
fn serve(lt: &std::sync::Arc<LoadTester>, path: &str, body: &[u8]) -> (u16, String) {
    use tower::Service as _;
    type Request = axum::http::Request<axum::body::Body>;
    let mut router = loadtester::router(lt.clone());
    let request = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a valid request");
    runtime().block_on(async {
        std::future::poll_fn(|cx| {
            <axum::Router as tower::Service<Request>>::poll_ready(&mut router, cx)
        })
        .await
        .expect("the router is always ready");
        let response = router
            .call(request)
            .await
            .expect("the router is infallible");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("an in-memory body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    })
}

/// A webhook receiver's answer. Input: a mode byte, then either (even mode) a well-formed answer
/// `status(2 bytes) retries(1 byte) Retry-After line \n body`, or (odd mode) the raw bytes the
/// receiver writes back. Checked: a call succeeds exactly on 200-202; the error text that goes
/// into Events is bounded.
pub fn webhook_response(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (response, status, retries) = if mode % 2 == 1 {
        (rest.to_vec(), None, 1)
    } else {
        let [a, b, r, tail @ ..] = rest else {
            return;
        };
        let status = 100 + u16::from_be_bytes([*a, *b]) % 900;
        let (retry_after, body) = match tail.iter().position(|&c| c == b'\n') {
            Some(i) => (&tail[..i], &tail[i + 1..]),
            None => (&tail[..0], tail),
        };
        let retry_after: String = String::from_utf8_lossy(retry_after)
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .collect();
        let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
        if !retry_after.is_empty() {
            head.push_str(&format!("Retry-After: {retry_after}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut response = head.into_bytes();
        response.extend_from_slice(body);
        (response, Some(status), i32::from(*r % 3))
    };
    let result = loopback().answer(response, |base| {
        let hook = api::CanaryWebhook {
            name: "fuzz".into(),
            url: format!("{base}/hook"),
            timeout: Some("2s".into()),
            retries: Some(retries),
            ..Default::default()
        };
        let payload = Payload {
            name: "podinfo".into(),
            namespace: "test".into(),
            phase: "Progressing".into(),
            checksum: "0".into(),
            metadata: BTreeMap::new(),
        };
        let policy = RetryPolicy {
            wait_min: Duration::ZERO,
            wait_max: Duration::ZERO,
            budget: Duration::from_secs(5),
            max_retries: 2,
        };
        let client = webhook_client();
        runtime().block_on(hooks::call_with(client, client, &hook, &payload, policy))
    });
    if let Err(e) = &result {
        let _ = e.outcome.as_str();
        if e.outcome == Outcome::Failure {
            // The body is cut at 512 characters; the attempts note is the rest.
            let limit = 512 + " (giving up after 3 attempts)".len();
            assert!(
                e.message.chars().count() <= limit,
                "an Event text of {} characters",
                e.message.chars().count()
            );
        }
    }
    // Informational answers (1xx) are not final answers in HTTP; leave them to the raw mode.
    if let Some(status) = status.filter(|s| *s >= 200) {
        assert_eq!(
            result.is_ok(),
            (200..=202).contains(&status),
            "status {status}: {result:?}"
        );
        if let Err(e) = &result {
            assert_eq!(e.outcome, Outcome::Failure, "status {status}: {e:?}");
        }
    }
}

/// The client the controller uses for webhooks, without connection reuse: the loopback receiver
/// closes every connection, and a reused one would fail at random, hiding what is tested.
fn webhook_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("a plain HTTP client")
    })
}

/// Prometheus's answer to an instant query. Input: a mode byte, then (mode 0) a JSON body
/// answered 200 with `application/json`, (mode 1) `status(2 bytes) content-type line \n body`, or
/// (other modes) the raw bytes Prometheus writes back. The body (after the mode byte) is also read
/// as a `data` object and classified directly. Checked: no value is NaN, and for a successful 200
/// JSON answer the HTTP path gives what `classify` gives on its `data`.
pub fn prometheus_response(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if let Ok(d) = serde_json::from_slice::<prometheus_http_query::response::Data>(rest) {
        no_nan(&classify(&d));
    }
    let response = match mode {
        0 => http_answer(200, "application/json", rest),
        1 => {
            let [a, b, tail @ ..] = rest else {
                return;
            };
            let status = 200 + u16::from_be_bytes([*a, *b]) % 400;
            let (ctype, body) = match tail.iter().position(|&c| c == b'\n') {
                Some(i) => (&tail[..i], &tail[i + 1..]),
                None => (&b"application/json"[..], tail),
            };
            let ctype: String = String::from_utf8_lossy(ctype)
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .collect();
            http_answer(status, &ctype, body)
        }
        _ => rest.to_vec(),
    };
    let outcome = loopback().answer(response, |base| {
        // One client, as the controller keeps one per provider: building one loads the system's
        // root certificates, which took longer than the query.
        static CLIENT: OnceLock<Prometheus> = OnceLock::new();
        let prometheus = CLIENT.get_or_init(|| {
            let cfg = ProviderConfig {
                address: base.to_string(),
                // The loopback server closes every connection; a reused one would fail at random.
                headers: BTreeMap::from([("connection".to_string(), vec!["close".to_string()])]),
                ..Default::default()
            };
            Prometheus::new(&cfg).expect("a loopback address")
        });
        runtime().block_on(prometheus.query("vector(1)"))
    });
    no_nan(&outcome);
    // Only one way round: the client may refuse what `Value` accepts (duplicate keys, bad stats).
    if mode == 0
        && !matches!(outcome, QueryOutcome::Error(_))
        && let Ok(body) = serde_json::from_slice::<Value>(rest)
        && body.get("status").and_then(Value::as_str) == Some("success")
        && let Some(Ok(d)) = body
            .get("data")
            .map(|d| serde_json::from_value::<prometheus_http_query::response::Data>(d.clone()))
    {
        assert_eq!(outcome, classify(&d), "the HTTP path and classify disagree");
    }
}

fn no_nan(outcome: &QueryOutcome) {
    if let QueryOutcome::Value(v) = outcome {
        assert!(!v.is_nan(), "NaN must be reported as no values");
    }
}

fn http_answer(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// One tokio runtime for every input: building one per input would dominate the time.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A loopback HTTP server that answers every request with the bytes of the call in progress, on
/// a thread of its own for the life of the process.
struct Loopback {
    base: String,
    /// Held for a whole call, so that concurrent tests do not mix their answers.
    call: Mutex<()>,
    answer: Mutex<Vec<u8>>,
}

fn loopback() -> &'static Loopback {
    static SERVER: OnceLock<&'static Loopback> = OnceLock::new();
    SERVER.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let server: &'static Loopback = Box::leak(Box::new(Loopback {
            base: format!("http://{addr}"),
            call: Mutex::new(()),
            answer: Mutex::new(Vec::new()),
        }));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let answer = relock(&server.answer).clone();
                let _ = respond(stream, &answer);
            }
        });
        server
    })
}

/// A lock that a panicking input (the very thing a fuzzer looks for) must not poison for the
/// inputs after it.
fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Loopback {
    fn answer<R>(&self, response: Vec<u8>, call: impl FnOnce(&str) -> R) -> R {
        let _call = relock(&self.call);
        *relock(&self.answer) = response;
        call(&self.base)
    }
}

/// Reads one request (head and a `Content-Length` body), writes `answer`, closes.
fn respond(mut stream: TcpStream, answer: &[u8]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    stream.write_all(answer)?;
    stream.shutdown(std::net::Shutdown::Write)
}
