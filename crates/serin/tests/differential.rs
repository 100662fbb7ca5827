//! Real Flagger as the judge (issue 13 §1). For each scenario the same manifests of
//! `tests/e2e/` go into two namespaces of one sandbox: one run by Flagger v1.44 (`-namespace`),
//! one by `serin controller` (`--namespace`), each with its own mesh simulator at the same rate,
//! and the same releases at the same moment. Both run under Flagger's own CRD, as its Helm chart
//! installs it. Then what users and their tools see is compared: the generated objects, the
//! Events, the status, the event-webhook payloads a loopback receiver gets, the Slack alerts
//! another loopback receiver gets, and the `flagger_*` series of `/metrics`.
//!
//! Every difference must be listed in [`ALLOWED`], whose ids are the rows of the table
//! "What the differential test allows" in docs/flagger-differences.md: the test fails on any
//! other difference, and on an id that is in one list and not the other, so the two stay in step.
//!
//! Scenarios run concurrently (they wait on analysis intervals, not on CPUs), so this binary is
//! its own harness as `e2e` is; `cargo test --test differential [-- FILTER...]`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;
#[path = "support/user.rs"]
mod user;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use serde_json::Value;
use serin_sandbox::mesh::{self, MeshHandle, MeshOptions};
use serin_sandbox::setup::flux::FlaggerBinaries;
use serin_sandbox::testenv::{SharedEnv, shared};

const LIMIT: Duration = Duration::from_secs(240);

/// The global notifier's channel. Flagger's global Slack notifier needs one: without
/// `-slack-channel` it sends nothing, serin posts to `general` (flagger-contract.md §9.13).
const SLACK_CHANNEL: &str = "deploys";

/// Scenarios whose controllers get `-slack-url` without `-slack-channel`.
const WITHOUT_SLACK_CHANNEL: &[&str] = &["slack-no-channel"];

/// A difference the test accepts: `id` is a row of docs/flagger-differences.md's table
/// "What the differential test allows"; `pattern` is matched (`*` matches any text) against the
/// difference as printed (`<area> <path>: flagger=<value> serin=<value>`); `scenarios` empty
/// means every scenario.
struct Allowed {
    id: &'static str,
    pattern: &'static str,
    scenarios: &'static [&'static str],
}

const fn allow(id: &'static str, pattern: &'static str) -> Allowed {
    Allowed {
        id,
        pattern,
        scenarios: &[],
    }
}

const ALLOWED: &[Allowed] = &[
    allow(
        "revision-annotation",
        "Deployment/podinfo-primary metadata.annotations.serin.dev/revision: flagger=<absent> serin=*",
    ),
    allow(
        "no-flagger-id",
        "Deployment/podinfo-primary spec.template.metadata.annotations.flagger-id: flagger=* serin=<absent>",
    ),
    allow(
        "serin-conditions",
        "status conditions[*].*: flagger=<absent> serin=*",
    ),
    // The waits for readiness: which of Flagger's texts is seen, if any, and when, depends on
    // when the controller looked.
    allow(
        "readiness-events",
        "event * not ready: waiting for rollout to finish: *",
    ),
    allow(
        "readiness-events",
        "event order * not ready: waiting for rollout to finish: *",
    ),
    allow(
        "readiness-events",
        "event webhook * not ready: waiting for rollout to finish: *",
    ),
    allow(
        "readiness-events",
        "event webhook order * not ready: waiting for rollout to finish: *",
    ),
    allow("counters-kept", "status failedChecks: flagger=0 serin=*"),
    allow("counters-kept", "status iterations: flagger=0 serin=*"),
    allow(
        "counters-kept",
        "status over time phase=Failed canaryWeight=0 failedChecks=* iterations=*: *",
    ),
    allow(
        "counters-kept",
        "status over time phase=Finalising canaryWeight=0 failedChecks=0 iterations=*: *",
    ),
    allow(
        "counters-kept",
        "status over time phase=Succeeded canaryWeight=0 failedChecks=0 iterations=*: *",
    ),
    Allowed {
        id: "one-status-write-per-step",
        pattern: "status over time phase=Progressing canaryWeight=* failedChecks=2 iterations=0: flagger=present serin=<absent>",
        scenarios: &["rollback", "alert-provider"],
    },
    Allowed {
        id: "real-weight",
        pattern: "status over time phase=* canaryWeight=* failedChecks=0 iterations=*: *",
        scenarios: &["ab-header", "ab-cookie", "blue-green", "blue-green-mirror"],
    },
    allow(
        "no-flagger-id",
        "Deployment/podinfo-primary spec.template.metadata.annotations.serin.dev/configs-checksum: flagger=<absent> serin=*",
    ),
    Allowed {
        id: "apex-metadata-vs-label",
        pattern: "VirtualService/podinfo metadata.labels.app: flagger=\"podinfo\" serin=<absent>",
        scenarios: &["ab-header", "ab-cookie", "session-affinity"],
    },
    Allowed {
        id: "apex-metadata-vs-label",
        pattern: "VirtualService/podinfo spec.http[1].route[0].weight: flagger=100 serin=<absent>",
        scenarios: &["ab-header", "ab-cookie"],
    },
    Allowed {
        id: "session-affinity-details",
        pattern: "VirtualService/podinfo spec.http[0].name: flagger=<absent> serin=\"sticky-route\"",
        scenarios: &["session-affinity"],
    },
    Allowed {
        id: "explicit-false",
        pattern: "VirtualService/podinfo spec.http[0].corsPolicy.allowCredentials: flagger=<absent> serin=false",
        scenarios: &["gateways"],
    },
    allow("slack-blocks", "alert *: blocks*: flagger=<absent> serin=*"),
    Allowed {
        id: "slack-no-channel",
        pattern: "alert general *: flagger=<absent> serin=present",
        scenarios: &["slack-no-channel"],
    },
    Allowed {
        id: "alert-effective-max",
        pattern: "alert *: attachments[0].fields[*].value: flagger=\"Weight steps: 5,20,50 max: 0\" serin=\"Weight steps: 5,20,50 max: 50\"",
        scenarios: &["step-weights"],
    },
    Allowed {
        id: "original-configuration",
        pattern: "VirtualService/podinfo metadata.annotations.flagger.kubernetes.io/original-configuration: *",
        scenarios: &["takeover-nodeport"],
    },
];

/// One thing a user sees differently.
#[derive(Debug, Clone)]
struct Diff {
    area: String,
    path: String,
    flagger: String,
    serin: String,
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: flagger={} serin={}",
            self.area, self.path, self.flagger, self.serin
        )
    }
}

/// `*` matches any text (also none).
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

fn allowed_by(scenario: &str, d: &Diff) -> Option<&'static str> {
    let text = d.to_string();
    ALLOWED
        .iter()
        .find(|a| {
            (a.scenarios.is_empty() || a.scenarios.contains(&scenario)) && glob(a.pattern, &text)
        })
        .map(|a| a.id)
}

// ---------------------------------------------------------------------------------------------
// A side: one namespace, its mesh, its controller, the observers.

#[derive(Clone, Copy, PartialEq)]
enum Who {
    Flagger,
    Serin,
}

use support::{Proc, spawn};

/// A loopback HTTP receiver keeping every JSON body posted to it.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(path: &str) -> Receiver {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let b = b.clone();
            async move {
                let v = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
                b.lock().unwrap().push(v);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/{path}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, bodies, task }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a poller saw over time: distinct status tuples, the VirtualService's canary weights,
/// and the Events in the order they appeared (with the poll that first saw each).
#[derive(Default)]
struct Observed {
    status: Vec<String>,
    weights: Vec<i64>,
    events: Vec<(String, usize)>,
}

struct Side {
    who: Who,
    ns: String,
    client: Client,
    _mesh: MeshHandle,
    _proc: Proc,
    log: PathBuf,
    metrics_port: u16,
    hooks: Receiver,
    /// Slack-type alerts: the global notifier's, and the AlertProviders' of a scenario that
    /// points them at `${SLACK_URL}`.
    alerts: Receiver,
    observed: Arc<Mutex<Observed>>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for Side {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

fn canaries(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("flagger.app", "v1beta1", "Canary"),
            "canaries",
        ),
    )
}

fn dynamic(
    client: &Client,
    ns: &str,
    api_version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural),
    )
}

fn status_tuple(c: &Value) -> String {
    let s = &c["status"];
    format!(
        "phase={} canaryWeight={} failedChecks={} iterations={}",
        s["phase"].as_str().unwrap_or(""),
        s["canaryWeight"].as_i64().unwrap_or(0),
        s["failedChecks"].as_i64().unwrap_or(0),
        s["iterations"].as_i64().unwrap_or(0)
    )
}

fn event_key(e: &Event, ns: &str) -> String {
    norm_text(
        &format!(
            "{} {} {}",
            e.type_.clone().unwrap_or_default(),
            e.reason.clone().unwrap_or_default(),
            e.message
                .clone()
                .unwrap_or_default()
                .trim_start_matches("(combined from similar events): ")
        ),
        ns,
    )
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The namespace as NS, and measured values (`51.07%`, `212ms`) as N: two runs never measure
/// the same.
fn norm_text(s: &str, ns: &str) -> String {
    let s = s.replace(ns, "NS");
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut num = c.to_string();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_digit() || d == '.' {
                    num.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            if num.contains('.') && chars.peek() == Some(&'%') {
                out.push('N');
            } else {
                out.push_str(&num);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Side {
    async fn start(
        who: Who,
        env: &'static SharedEnv,
        bins: &FlaggerBinaries,
        scenario: &str,
    ) -> Side {
        let tag = match who {
            Who::Flagger => "f",
            Who::Serin => "s",
        };
        let ns = env.namespace(&format!("df-{scenario}-{tag}")).await;
        let client = env.client();
        let mesh = mesh::start(
            env.config(),
            MeshOptions {
                namespace: Some(ns.clone()),
                rate_per_second: 20.0,
                ..Default::default()
            },
        )
        .expect("mesh simulator");
        env.register_scrape_target(&format!("mesh-{ns}"), &mesh.metrics_addr().to_string())
            .expect("scrape target");
        let hooks = Receiver::start("events").await;
        let alerts = Receiver::start("slack").await;
        let metrics_port = serin_sandbox::free_ports(1).unwrap()[0];
        let kubeconfig = env.kubeconfig_path().display().to_string();
        let channel = !WITHOUT_SLACK_CHANNEL.contains(&scenario);
        let log = env.logs_dir().join(format!("differential-{ns}.log"));
        let mut proc_args: Vec<String> = match who {
            Who::Flagger => vec![
                format!("-kubeconfig={kubeconfig}"),
                "-mesh-provider=istio".into(),
                format!("-metrics-server={}", env.prometheus_url()),
                format!("-namespace={ns}"),
                format!("-port={metrics_port}"),
                format!("-event-webhook={}", hooks.url),
                format!("-slack-url={}", alerts.url),
                "-log-level=info".into(),
                "-zap-encoding=console".into(),
            ],
            Who::Serin => vec![
                "controller".into(),
                "--kubeconfig".into(),
                kubeconfig,
                "--namespace".into(),
                ns.clone(),
                "--metrics-server".into(),
                env.prometheus_url().into(),
                "--listen".into(),
                format!("127.0.0.1:{metrics_port}"),
                "--event-webhook".into(),
                hooks.url.clone(),
                "--slack-url".into(),
                alerts.url.clone(),
            ],
        };
        if channel {
            proc_args.push(match who {
                Who::Flagger => format!("-slack-channel={SLACK_CHANNEL}"),
                Who::Serin => format!("--slack-channel={SLACK_CHANNEL}"),
            });
        }
        let proc = match who {
            Who::Flagger => spawn(&bins.flagger, &proc_args, &log),
            Who::Serin => spawn(Path::new(env!("CARGO_BIN_EXE_serin")), &proc_args, &log),
        };
        let observed = Arc::new(Mutex::new(Observed::default()));
        let poller = tokio::spawn(poll(client.clone(), ns.clone(), observed.clone()));
        Side {
            who,
            ns,
            client,
            _mesh: mesh,
            _proc: proc,
            log,
            metrics_port,
            hooks,
            alerts,
            observed,
            poller,
        }
    }

    fn name(&self) -> &'static str {
        match self.who {
            Who::Flagger => "flagger",
            Who::Serin => "serin",
        }
    }

    async fn apply(&self, rel: &str, edits: &[(&str, &str)]) {
        let kubeconfig = shared().kubeconfig_path().to_path_buf();
        user::apply(&kubeconfig, &self.ns, rel, edits).await;
    }

    async fn canary(&self) -> Value {
        canaries(&self.client, &self.ns)
            .get_opt("podinfo")
            .await
            .ok()
            .flatten()
            .map(|o| serde_json::to_value(o).unwrap())
            .unwrap_or(Value::Null)
    }

    /// How many status changes the watch has seen.
    fn mark(&self) -> usize {
        self.observed.lock().unwrap().status.len()
    }

    /// Waits until the watch saw `phase` in a status after `mark` (so a phase the release
    /// passes through quickly, or the one it started in, is not mistaken for its outcome).
    async fn wait_phase_after(&self, mark: usize, phase: &str) {
        let want = format!("phase={phase} ");
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let seen = self.observed.lock().unwrap().status.clone();
            let changed = seen.len() > mark;
            if changed && seen.last().is_some_and(|t| t.starts_with(&want)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no phase {phase} within {LIMIT:?} of the release: {:?}; log {}:\n{}",
                self.name(),
                &seen[mark.min(seen.len())..],
                self.log.display(),
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_phase(&self, phase: &str) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let c = self.canary().await;
            if c["status"]["phase"] == phase {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no phase {phase} within {LIMIT:?}: {}; log {}:\n{}",
                self.name(),
                status_tuple(&c),
                self.log.display(),
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Watches the Canary and the VirtualService (every change, in order, none missed as a poll
/// would) and polls the Events.
async fn poll(client: Client, ns: String, out: Arc<Mutex<Observed>>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let by_name = || watcher::Config::default().fields("metadata.name=podinfo");
    let o = out.clone();
    let cs = canaries(&client, &ns);
    let canary_watch = tokio::spawn(async move {
        let mut s = watcher(cs, by_name()).applied_objects().boxed();
        while let Some(c) = s.next().await {
            if let Ok(c) = c {
                let t = status_tuple(&serde_json::to_value(c).unwrap());
                let mut o = o.lock().unwrap();
                // The Canary as applied, before any status: seen or not depending on when the
                // watch's first list ran, not on the controller.
                if o.status.is_empty() && t.starts_with("phase= ") {
                    continue;
                }
                if o.status.last() != Some(&t) {
                    o.status.push(t);
                }
            }
        }
    });
    let o = out.clone();
    let vs = dynamic(
        &client,
        &ns,
        "networking.istio.io/v1beta1",
        "VirtualService",
        "virtualservices",
    );
    let vs_watch = tokio::spawn(async move {
        let mut s = watcher(vs, by_name()).applied_objects().boxed();
        while let Some(v) = s.next().await {
            if let Ok(v) = v {
                let v = serde_json::to_value(v).unwrap();
                let routes = if v["spec"]["http"].is_array() {
                    &v["spec"]["http"][0]["route"]
                } else {
                    &v["spec"]["tcp"][0]["route"]
                };
                let w = routes
                    .as_array()
                    .and_then(|r| {
                        r.iter()
                            .find(|r| r["destination"]["host"] == "podinfo-canary")
                            .and_then(|r| r["weight"].as_i64())
                    })
                    .unwrap_or(0);
                let mut o = o.lock().unwrap();
                if o.weights.last() != Some(&w) {
                    o.weights.push(w);
                }
            }
        }
    });
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let _watches = AbortOnDrop(vec![canary_watch, vs_watch]);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().fields("involvedObject.kind=Canary,involvedObject.name=podinfo");
    let mut round = 0usize;
    loop {
        round += 1;
        if let Ok(list) = events.list(&lp).await {
            let mut items = list.items;
            items.sort_by_key(|e| e.first_timestamp.as_ref().map(|t| t.0));
            let mut o = out.lock().unwrap();
            for e in items {
                let k = event_key(&e, &ns);
                if !o.events.iter().any(|(x, _)| *x == k) {
                    o.events.push((k, round));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Normalising and comparing.

/// The generated objects users see, by (apiVersion, kind, plural, name).
const OBJECTS: &[(&str, &str, &str, &str)] = &[
    ("apps/v1", "Deployment", "deployments", "podinfo-primary"),
    ("apps/v1", "Deployment", "deployments", "podinfo"),
    (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "podinfo-primary",
    ),
    ("v1", "Service", "services", "podinfo"),
    ("v1", "Service", "services", "podinfo-primary"),
    ("v1", "Service", "services", "podinfo-canary"),
    (
        "networking.istio.io/v1beta1",
        "DestinationRule",
        "destinationrules",
        "podinfo-primary",
    ),
    (
        "networking.istio.io/v1beta1",
        "DestinationRule",
        "destinationrules",
        "podinfo-canary",
    ),
    (
        "networking.istio.io/v1beta1",
        "VirtualService",
        "virtualservices",
        "podinfo",
    ),
    ("v1", "ConfigMap", "configmaps", "podinfo-config-primary"),
];

/// An object as a user compares it: metadata's name, labels, annotations and owner references
/// (without uids), and the spec (without what the API server allocates); the namespace as NS.
fn normalise(o: &Value, ns: &str, cookies: &[String]) -> Value {
    let mut out = serde_json::json!({});
    let m = &o["metadata"];
    for k in ["name", "labels", "annotations"] {
        if !m[k].is_null() {
            out["metadata"][k] = m[k].clone();
        }
    }
    if let Some(a) = out["metadata"]["annotations"].as_object_mut() {
        a.remove("deployment.kubernetes.io/revision");
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    // An empty map and no map read the same to users.
    if let Some(m) = out["metadata"].as_object_mut() {
        m.retain(|_, v| !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty())));
    }
    if let Some(refs) = m["ownerReferences"].as_array() {
        let refs: Vec<Value> = refs
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if let Some(r) = r.as_object_mut() {
                    r.remove("uid");
                }
                r
            })
            .collect();
        out["metadata"]["ownerReferences"] = Value::Array(refs);
    }
    let mut spec = o["spec"].clone();
    if let Some(s) = spec.as_object_mut() {
        for k in ["clusterIP", "clusterIPs"] {
            s.remove(k);
        }
    }
    if !spec.is_null() {
        out["spec"] = spec;
    }
    if !o["data"].is_null() {
        out["data"] = o["data"].clone();
    }
    if let Some(ports) = out["spec"]["ports"].as_array_mut() {
        for p in ports {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort"); // allocated by the API server
            }
        }
    }
    let mut text = norm_text(&out.to_string(), ns);
    for cookie in cookies {
        text = text.replace(cookie.as_str(), "COOKIE");
    }
    let mut v: Value = serde_json::from_str(&text).unwrap();
    drop_empty(&mut v);
    v
}

/// Empty lists and maps read as absent: Go's `omitempty` and serde's `skip_serializing_if`
/// decide which are written, and Kubernetes and Istio read both the same.
fn drop_empty(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                drop_empty(x);
            }
            m.retain(|_, x| !(x.as_array().is_some_and(|a| a.is_empty())));
        }
        Value::Array(a) => a.iter_mut().for_each(drop_empty),
        _ => {}
    }
}

/// The random session-affinity cookie values (10 letters after `<name>=`) of a canary.
fn cookie_values(canary: &Value) -> Vec<String> {
    [
        "sessionAffinityCookie",
        "primarySessionAffinityCookie",
        "previousSessionAffinityCookie",
    ]
    .iter()
    .filter_map(|k| canary["status"][k].as_str())
    .filter_map(|c| c.split_once('=').map(|(_, v)| v.to_string()))
    .filter(|v| !v.is_empty())
    .collect()
}

/// Leaves of a JSON value by path.
fn flatten(v: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                flatten(v, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                flatten(v, &format!("{path}[{i}]"), out);
            }
        }
        v => {
            out.insert(path.trim_start_matches('.').to_string(), v.to_string());
        }
    }
}

fn diff_values(area: &str, f: &Value, s: &Value, out: &mut Vec<Diff>) {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(f, "", &mut a);
    flatten(s, "", &mut b);
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            out.push(Diff {
                area: area.to_string(),
                path: k.clone(),
                flagger: x.cloned().unwrap_or_else(|| "<absent>".into()),
                serin: y.cloned().unwrap_or_else(|| "<absent>".into()),
            });
        }
    }
}

/// Sequences compared as sets of entries, and as orders of the entries both have.
fn diff_sequences(area: &str, f: &[(String, usize)], s: &[(String, usize)], out: &mut Vec<Diff>) {
    let fa: BTreeMap<&String, usize> = f.iter().map(|(k, i)| (k, *i)).collect();
    let sa: BTreeMap<&String, usize> = s.iter().map(|(k, i)| (k, *i)).collect();
    for (k, _) in f {
        if !sa.contains_key(k) {
            out.push(Diff {
                area: area.into(),
                path: k.clone(),
                flagger: "present".into(),
                serin: "<absent>".into(),
            });
        }
    }
    for (k, _) in s {
        if !fa.contains_key(k) {
            out.push(Diff {
                area: area.into(),
                path: k.clone(),
                flagger: "<absent>".into(),
                serin: "present".into(),
            });
        }
    }
    let common: Vec<&String> = f
        .iter()
        .map(|(k, _)| k)
        .filter(|k| sa.contains_key(k))
        .collect();
    for (i, a) in common.iter().enumerate() {
        for b in &common[i + 1..] {
            if fa[a] < fa[b] && sa[a] > sa[b] {
                out.push(Diff {
                    area: format!("{area} order"),
                    path: format!("{a} / {b}"),
                    flagger: "in this order".into(),
                    serin: "reversed".into(),
                });
            }
        }
    }
}

/// The `flagger_*` series of a `/metrics` page: name and labels, the namespace as NS.
async fn series(port: u16, ns: &str) -> BTreeSet<String> {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("flagger_"))
        .map(|l| {
            // Label order means nothing to Prometheus: sorted.
            let series = match (l.find('{'), l.rfind('}')) {
                (Some(open), Some(end)) => {
                    let mut labels: Vec<String> = l[open + 1..end]
                        .split("\",")
                        .map(|p| p.trim_end_matches('"').to_string())
                        .collect();
                    labels.sort();
                    let labels: Vec<String> = labels
                        .into_iter()
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").unwrap_or((&p, ""));
                            // Bucket bounds as numbers: Go writes 1, Rust 1.0.
                            let v = match v.parse::<f64>() {
                                Ok(n) if k == "le" => n.to_string(),
                                _ => v.to_string(),
                            };
                            format!("{k}=\"{v}\"")
                        })
                        .collect();
                    format!("{}{{{}}}", &l[..open], labels.join(","))
                }
                _ => l.split_whitespace().next().unwrap_or(l).to_string(),
            };
            norm_text(&series, ns)
        })
        .filter(|s| !s.starts_with("flagger_info"))
        .collect()
}

/// `flagger_alerts`: whether Flagger is expected to post alerts at all.
async fn compare(f: &Side, s: &Side, flagger_alerts: bool) -> Vec<Diff> {
    let mut out = Vec::new();
    let (cf, cs) = (
        cookie_values(&f.canary().await),
        cookie_values(&s.canary().await),
    );
    for (api_version, kind, plural, name) in OBJECTS {
        let get = |side: &Side, cookies: Vec<String>| {
            let api = dynamic(&side.client, &side.ns, api_version, kind, plural);
            let ns = side.ns.clone();
            async move {
                api.get_opt(name)
                    .await
                    .unwrap()
                    .map(|o| normalise(&serde_json::to_value(o).unwrap(), &ns, &cookies))
                    .unwrap_or(Value::Null)
            }
        };
        let (a, b) = (get(f, cf.clone()).await, get(s, cs.clone()).await);
        diff_values(&format!("{kind}/{name}"), &a, &b, &mut out);
    }
    // The status users script against, at the end.
    let pick = |c: &Value, ns: &str| {
        let st = &c["status"];
        let conditions: Vec<Value> = st["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                serde_json::json!({"type": c["type"], "status": c["status"], "reason": c["reason"],
                    "message": norm_text(c["message"].as_str().unwrap_or(""), ns)})
            })
            .collect();
        serde_json::json!({
            "phase": st["phase"], "canaryWeight": st["canaryWeight"],
            "failedChecks": st["failedChecks"], "iterations": st["iterations"],
            "conditions": conditions,
        })
    };
    diff_values(
        "status",
        &pick(&f.canary().await, &f.ns),
        &pick(&s.canary().await, &s.ns),
        &mut out,
    );
    let (of, os) = (
        std::mem::take(&mut *f.observed.lock().unwrap()),
        std::mem::take(&mut *s.observed.lock().unwrap()),
    );
    let numbered = |v: &[String]| -> Vec<(String, usize)> {
        v.iter().enumerate().map(|(i, k)| (k.clone(), i)).collect()
    };
    diff_sequences(
        "status over time",
        &numbered(&of.status),
        &numbered(&os.status),
        &mut out,
    );
    if of.weights != os.weights {
        out.push(Diff {
            area: "VirtualService over time".into(),
            path: "canary weight".into(),
            flagger: format!("{:?}", of.weights),
            serin: format!("{:?}", os.weights),
        });
    }
    diff_sequences("event", &of.events, &os.events, &mut out);
    // Event-webhook payloads: their fields, and what they say in order.
    let hooks = |side: &Side| -> (Vec<(String, usize)>, BTreeSet<String>) {
        let bodies = side.hooks.bodies.lock().unwrap().clone();
        let mut seq: Vec<(String, usize)> = Vec::new();
        let mut fields = BTreeSet::new();
        for (i, b) in bodies.iter().enumerate() {
            let mut flat = BTreeMap::new();
            flatten(b, "", &mut flat);
            fields.extend(flat.keys().cloned());
            let k = norm_text(
                &format!(
                    "{} {} {} {}",
                    b["phase"].as_str().unwrap_or(""),
                    b["metadata"]["eventType"].as_str().unwrap_or(""),
                    b["metadata"]["eventMessage"].as_str().unwrap_or(""),
                    b["namespace"].as_str().unwrap_or(""),
                ),
                &side.ns,
            );
            if !seq.iter().any(|(x, _)| *x == k) {
                seq.push((k, i));
            }
        }
        (seq, fields)
    };
    let ((hf, ff), (hs, fs)) = (hooks(f), hooks(s));
    diff_sequences("event webhook", &hf, &hs, &mut out);
    for k in ff.symmetric_difference(&fs) {
        out.push(Diff {
            area: "event webhook field".into(),
            path: k.clone(),
            flagger: ff.contains(k).to_string(),
            serin: fs.contains(k).to_string(),
        });
    }
    // Slack alerts: which were posted, in order, and each payload whole (keys, text, fields,
    // colours).
    let (af, as_) = (alerts(f), alerts(s));
    // Every canary alerts at initialisation: none at all means the receiver saw nothing.
    assert!(
        !flagger_alerts || !af.is_empty(),
        "Flagger posted no alert to {}; log {}:\n{}",
        f.alerts.url,
        f.log.display(),
        tail(&f.log)
    );
    println!(
        "  {}: alerts posted by both: {:?}",
        f.ns,
        af.iter()
            .filter(|(k, _)| as_.iter().any(|(x, _)| x == k))
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
    );
    let numbered = |v: &[(String, Value)]| -> Vec<(String, usize)> {
        v.iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect()
    };
    diff_sequences("alert", &numbered(&af), &numbered(&as_), &mut out);
    for (k, a) in &af {
        if let Some((_, b)) = as_.iter().find(|(x, _)| x == k) {
            diff_values(&format!("alert {k}:"), a, b, &mut out);
        }
    }
    let (mf, ms) = (
        series(f.metrics_port, &f.ns).await,
        series(s.metrics_port, &s.ns).await,
    );
    for k in mf.symmetric_difference(&ms) {
        out.push(Diff {
            area: "metrics".into(),
            path: k.clone(),
            flagger: mf.contains(k).to_string(),
            serin: ms.contains(k).to_string(),
        });
    }
    out
}

/// The Slack payloads a side's receiver got, the namespace as NS, each keyed by
/// `<channel> <color> <author_name> <text>` (and `#n` from its second time on). Grouped by
/// channel, in the order received within each: serin delivers to each destination in a task of
/// its own, so an alert that goes to two channels may reach them in either order, which no one
/// reading one channel can see.
fn alerts(side: &Side) -> Vec<(String, Value)> {
    let mut bodies = side.alerts.bodies.lock().unwrap().clone();
    bodies.sort_by(|a, b| a["channel"].to_string().cmp(&b["channel"].to_string()));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    bodies
        .iter()
        .map(|b| {
            let b: Value = serde_json::from_str(&norm_text(&b.to_string(), &side.ns)).unwrap();
            let a = &b["attachments"][0];
            let key = format!(
                "{} {} {} {}",
                b["channel"].as_str().unwrap_or(""),
                a["color"].as_str().unwrap_or(""),
                a["author_name"].as_str().unwrap_or(""),
                a["text"].as_str().unwrap_or("")
            );
            let n = seen.entry(key.clone()).or_default();
            *n += 1;
            let key = if *n > 1 { format!("{key} #{n}") } else { key };
            (key, b)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// A release: edits of base/deployment.yaml (or the scenario's own deployment) and the phase it
/// ends in.
struct Release {
    /// The file edited and applied again; the scenario's deployment when `None`.
    file: Option<&'static str>,
    edits: &'static [(&'static str, &'static str)],
    ends: &'static str,
}

struct Scenario {
    name: &'static str,
    /// Applied before the app (with `${PROMETHEUS_URL}` and the side's `${SLACK_URL}` filled in).
    before: &'static [&'static str],
    deployment: &'static str,
    canary: &'static str,
    releases: &'static [Release],
}

const HEALTHY: Release = Release {
    file: None,
    edits: &[(":6.0.0", ":6.0.1")],
    ends: "Succeeded",
};

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "progressive",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "canary/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "rollback",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "canary/canary.yaml",
        releases: &[Release {
            file: None,
            edits: &[(":6.0.0", ":6.0.1"), ("errors=0%", "errors=50%")],
            ends: "Failed",
        }],
    },
    // AlertProviders instead of the global notifier, a promotion then a rollback.
    Scenario {
        name: "alert-provider",
        before: &["alert-provider/providers.yaml"],
        deployment: "base/deployment.yaml",
        canary: "alert-provider/canary.yaml",
        releases: &[
            HEALTHY,
            Release {
                file: None,
                edits: &[(":6.0.0", ":6.0.2"), ("errors=0%", "errors=50%")],
                ends: "Failed",
            },
        ],
    },
    // The global notifier without a channel: Flagger disables it, serin posts to `general`.
    Scenario {
        name: "slack-no-channel",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "canary/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "step-weights",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "step-weights/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "ab-header",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "ab-header/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "ab-cookie",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "ab-cookie/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "blue-green",
        before: &["blue-green/loadtest.yaml"],
        deployment: "base/deployment.yaml",
        canary: "blue-green/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "blue-green-mirror",
        before: &["blue-green/loadtest.yaml"],
        deployment: "base/deployment.yaml",
        canary: "blue-green-mirror/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "skip-analysis",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "skip-analysis/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "metric-template",
        before: &["metric-template/metric-template.yaml"],
        deployment: "base/deployment.yaml",
        canary: "metric-template/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "config-map",
        before: &["config-map/configmap.yaml"],
        deployment: "config-map/deployment.yaml",
        canary: "config-map/canary.yaml",
        releases: &[Release {
            file: Some("config-map/configmap.yaml"),
            edits: &[("color: blue", "color: green")],
            ends: "Succeeded",
        }],
    },
    Scenario {
        name: "session-affinity",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "session-affinity/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "delegation",
        before: &["delegation/root.yaml"],
        deployment: "base/deployment.yaml",
        canary: "delegation/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "gateways",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "gateways/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "tcp",
        before: &[],
        deployment: "base/deployment.yaml",
        canary: "tcp/canary.yaml",
        releases: &[HEALTHY],
    },
    Scenario {
        name: "takeover-nodeport",
        before: &["takeover-nodeport/service.yaml"],
        deployment: "base/deployment.yaml",
        canary: "takeover/canary.yaml",
        releases: &[HEALTHY],
    },
];

async fn run(s: &'static Scenario, bins: FlaggerBinaries) -> Vec<Diff> {
    let env = shared();
    let f = Side::start(Who::Flagger, env, &bins, s.name).await;
    let v = Side::start(Who::Serin, env, &bins, s.name).await;
    let prom = env.prometheus_url().to_string();
    for side in [&f, &v] {
        for rel in s.before {
            let text = std::fs::read_to_string(user::manifest(rel)).unwrap();
            let edits: Vec<(&str, &str)> = [
                ("${PROMETHEUS_URL}", prom.as_str()),
                ("${SLACK_URL}", side.alerts.url.as_str()),
            ]
            .into_iter()
            .filter(|(from, _)| text.contains(from))
            .collect();
            side.apply(rel, &edits).await;
        }
        side.apply(s.deployment, &[]).await;
        side.apply(s.canary, &[]).await;
    }
    futures::join!(f.wait_phase("Initialized"), v.wait_phase("Initialized"));
    for r in s.releases {
        let (mf, mv) = (f.mark(), v.mark());
        let file = r.file.unwrap_or(s.deployment);
        futures::join!(f.apply(file, r.edits), v.apply(file, r.edits));
        futures::join!(
            f.wait_phase_after(mf, r.ends),
            v.wait_phase_after(mv, r.ends)
        );
    }
    // What lands just after the final phase (the last Event, the webhook, the metrics scrape).
    tokio::time::sleep(Duration::from_secs(5)).await;
    compare(&f, &v, !WITHOUT_SLACK_CHANNEL.contains(&s.name)).await
}

/// The ids of the doc's table "What the differential test allows".
fn doc_ids() -> BTreeSet<String> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/flagger-differences.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let Some(start) = text.find("## What the differential test allows") else {
        return BTreeSet::new();
    };
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for s in SCENARIOS {
            println!("{}: test", s.name);
        }
        return;
    }
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let chosen: Vec<&'static Scenario> = SCENARIOS
        .iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f)))
        .collect();
    // The allowed list and the doc name the same differences.
    let ids = doc_ids();
    let listed: BTreeSet<String> = ALLOWED.iter().map(|a| a.id.to_string()).collect();
    let mut failed: Vec<(String, String)> = Vec::new();
    if ids != listed {
        failed.push((
            "allowed list".into(),
            format!(
                "ALLOWED and docs/flagger-differences.md disagree: only in the test {:?}, only in the doc {:?}",
                listed.difference(&ids).collect::<Vec<_>>(),
                ids.difference(&listed).collect::<Vec<_>>()
            ),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    println!("\nrunning {} tests", chosen.len());
    runtime.block_on(async {
        let bins = tokio::task::spawn_blocking(serin_sandbox::setup::flux::ensure_flagger)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("Flagger is not available: {e:#}"));
        let env = shared();
        serin_sandbox::flagger::install_crd(&env.client(), &bins)
            .await
            .unwrap();
        let tasks: Vec<_> = chosen
            .iter()
            .map(|s| (*s, tokio::spawn(run(s, bins.clone()))))
            .collect();
        for (s, task) in tasks {
            match task.await {
                Ok(diffs) => {
                    let mut unexplained = Vec::new();
                    for d in &diffs {
                        match allowed_by(s.name, d) {
                            Some(id) => println!("  {}: allowed ({id}): {d}", s.name),
                            None => unexplained.push(d.to_string()),
                        }
                    }
                    if unexplained.is_empty() {
                        println!("test {} ... ok", s.name);
                    } else {
                        println!("test {} ... FAILED", s.name);
                        failed.push((
                            s.name.to_string(),
                            format!(
                                "differences from Flagger not in docs/flagger-differences.md:\n  {}",
                                unexplained.join("\n  ")
                            ),
                        ));
                    }
                }
                Err(e) => {
                    println!("test {} ... FAILED", s.name);
                    let text = match e.try_into_panic() {
                        Ok(p) => p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into()),
                        Err(e) => e.to_string(),
                    };
                    failed.push((s.name.to_string(), text));
                }
            }
        }
    });
    if !failed.is_empty() {
        println!("\nfailures:\n");
        for (name, text) in &failed {
            println!("---- {name} ----\n{text}\n");
        }
    }
    println!(
        "\ntest result: {}. {} failed; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    std::process::exit(if failed.is_empty() { 0 } else { 101 });
}
