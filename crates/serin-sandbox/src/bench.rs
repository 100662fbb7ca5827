//! `serin-sandbox bench`: serin and real Flagger side by side on one sandbox, with the same
//! manifests and the same releases, measured from outside both (issue 14 §2).
//!
//! Why it is built this way:
//! - Each controller watches its own namespace (`--namespace` / `-namespace`) and runs under its
//!   own identity (a token of its own, group `system:masters`), so the API server's audit log
//!   ([`SandboxOptions::audit`]) attributes every request to one of them.
//! - Prometheus cannot tell its clients apart, so each controller talks to it through a loopback
//!   proxy of its own that counts the query requests ([`QueryCounter`]).
//! - Every time is taken in this process from watch events (Canaries and VirtualServices), the
//!   way a user with `kubectl get -w` sees it; nothing relies on either controller's logs or
//!   metrics.
//! - The run grows in stages (`--stages 100,1000,5000`): at each stage both controllers get the
//!   same number of canaries, and the idle cost is measured once every canary has settled. Small
//!   stages also take the release measures (detection, rollout, a faulty release, bursts), so
//!   that the big stage costs only its initialization and idle window.
//! - Bumps are spread over the canaries round-robin, one at a time, with a pause that is not a
//!   multiple of the analysis interval, so Flagger's ticks are met at varying phases.
//! - A controller that does not reach a stage in time does not end the run: the report says how
//!   far it got, and what could not be measured because of it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::environment::kubeconfig_yaml;
use crate::flagger::{Flagger, FlaggerOptions};
use crate::{Sandbox, SandboxOptions, mesh};

/// A progress line on stderr, stamped with the UTC time so that a run's log can be laid beside
/// the sandbox's logs.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("{} {}", chrono::Utc::now().format("%H:%M:%S"), format_args!($($arg)*))
    };
}

/// The field manager the bench applies its manifests with.
const MANAGER: &str = "serin-bench";
const THRESHOLD: i64 = 2;
/// The verbs every report lists, whether or not a controller used them.
const VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];
/// The verbs that change something: an idle controller should send none.
const WRITES: [&str; 4] = ["create", "update", "patch", "delete"];
/// Manifests applied at once while a stage grows.
const APPLY_CONCURRENCY: usize = 16;

/// Options of `serin-sandbox bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Canaries per controller at each stage, ascending (the run grows from one to the next).
    pub stages: Vec<usize>,
    /// Releases whose detection latency is measured, at each stage up to `bumps_up_to`.
    pub bumps: usize,
    /// The largest stage at which the bumps, the faulty release and the bursts are run.
    pub bumps_up_to: usize,
    /// Sizes of the release bursts, run at the largest stage up to `bumps_up_to` that holds them.
    pub bursts: Vec<usize>,
    /// Analysis interval of every Canary, in seconds.
    pub interval_secs: u64,
    /// Weight steps of every Canary (stepWeight 10 up to maxWeight 10 × steps), 1 to 10.
    pub steps: u32,
    /// How long the idle cost is measured at each stage.
    pub idle: Duration,
    /// How long a stage may take to initialize, per canary added (plus two minutes).
    pub init_per_canary: Duration,
    /// serin only (no Flagger): the CI smoke run.
    pub smoke: bool,
    /// No stage, bump series or burst starts after this much time; what is skipped is said in
    /// the report.
    pub time_limit: Option<Duration>,
    /// Run under the CRDs Flagger's Helm chart installs, as a user switching from Flagger
    /// does, instead of the sandbox's (serin's, which declares serin's status additions too).
    pub flagger_crd: bool,
    /// Where the Markdown report goes (also printed).
    pub out: Option<PathBuf>,
    /// Where the sandbox's logs are copied when the run ends (a failed run keeps them anyway).
    pub keep_logs: Option<PathBuf>,
    /// The command line, written into the report.
    pub command: String,
}

/// The two contestants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Who {
    Serin,
    Flagger,
}

impl Who {
    fn namespace(self) -> &'static str {
        match self {
            Who::Serin => "bench-serin",
            Who::Flagger => "bench-flagger",
        }
    }
    fn user(self) -> &'static str {
        match self {
            Who::Serin => "bench-serin",
            Who::Flagger => "bench-flagger",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Who::Serin => "serin",
            Who::Flagger => "Flagger",
        }
    }
}

/// What the watches saw of one canary: each change, with the time this process received it.
/// Kept per canary (not as one list) so that waiting for thousands of canaries stays cheap.
#[derive(Debug, Default, Clone)]
struct CanaryLog {
    /// (when, phase, failedChecks), recorded when either changed.
    phases: Vec<(Instant, String, i64)>,
    /// (when, the canary route's weight), recorded when it changed.
    weights: Vec<(Instant, i64)>,
}

type Timeline = Arc<Mutex<HashMap<(Who, String), CanaryLog>>>;

fn record_phase(t: &Timeline, who: Who, name: String, at: Instant, phase: String, failed: i64) {
    if let Ok(mut m) = t.lock() {
        let log = m.entry((who, name)).or_default();
        if log
            .phases
            .last()
            .is_none_or(|(_, p, f)| *p != phase || *f != failed)
        {
            log.phases.push((at, phase, failed));
        }
    }
}

fn record_weight(t: &Timeline, who: Who, name: String, at: Instant, weight: i64) {
    if let Ok(mut m) = t.lock() {
        let log = m.entry((who, name)).or_default();
        if log.weights.last().is_none_or(|(_, w)| *w != weight) {
            log.weights.push((at, weight));
        }
    }
}

fn log_of(t: &Timeline, who: Who, name: &str) -> CanaryLog {
    t.lock()
        .ok()
        .and_then(|m| m.get(&(who, name.to_string())).cloned())
        .unwrap_or_default()
}

/// First time canary `name` was seen with a phase in `phases` at or after `since`.
fn first_phase(
    t: &Timeline,
    who: Who,
    name: &str,
    phases: &[&str],
    since: Instant,
) -> Option<Instant> {
    let m = t.lock().ok()?;
    m.get(&(who, name.to_string()))?
        .phases
        .iter()
        .find(|(at, p, _)| *at >= since && phases.contains(&p.as_str()))
        .map(|(at, _, _)| *at)
}

/// How many of `names` were last seen in one of `phases`.
fn count_in(t: &Timeline, who: Who, names: &[String], phases: &[&str]) -> usize {
    let Ok(m) = t.lock() else { return 0 };
    names
        .iter()
        .filter(|n| {
            m.get(&(who, (*n).clone()))
                .and_then(|l| l.phases.last())
                .is_some_and(|(_, p, _)| phases.contains(&p.as_str()))
        })
        .count()
}

/// How many of `names` reached one of `phases` at or after `since` and are last seen in one of them.
fn count_done_since(
    t: &Timeline,
    who: Who,
    names: &[String],
    phases: &[&str],
    since: Instant,
) -> usize {
    let Ok(m) = t.lock() else { return 0 };
    names
        .iter()
        .filter(|n| {
            m.get(&(who, (*n).clone())).is_some_and(|l| {
                l.phases
                    .iter()
                    .any(|(at, p, _)| *at >= since && phases.contains(&p.as_str()))
                    && l.phases
                        .last()
                        .is_some_and(|(_, p, _)| phases.contains(&p.as_str()))
            })
        })
        .count()
}

const SETTLED: [&str; 3] = ["Initialized", "Succeeded", "Failed"];

fn canary_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("flagger.app", "v1beta1", "Canary"),
        "canaries",
    )
}

fn vs_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
    ))
}

/// Records every Canary and VirtualService change of `who` until the tasks are aborted.
fn watch_namespace(client: Client, who: Who, t: Timeline) -> Vec<tokio::task::JoinHandle<()>> {
    let ns = who.namespace();
    let canaries: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &canary_resource());
    let routes: Api<DynamicObject> = Api::namespaced_with(client, ns, &vs_resource());
    let t2 = t.clone();
    let a = tokio::spawn(async move {
        let mut s = watcher(canaries, watcher::Config::default()).boxed();
        while let Some(ev) = s.next().await {
            let at = Instant::now();
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                let status = &o.data["status"];
                record_phase(
                    &t,
                    who,
                    o.metadata.name.clone().unwrap_or_default(),
                    at,
                    status["phase"].as_str().unwrap_or_default().to_string(),
                    status["failedChecks"].as_i64().unwrap_or(0),
                );
            }
        }
    });
    let b = tokio::spawn(async move {
        let mut s = watcher(routes, watcher::Config::default()).boxed();
        while let Some(ev) = s.next().await {
            let at = Instant::now();
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                let name = o.metadata.name.clone().unwrap_or_default();
                let host = format!("{name}-canary");
                let weight = o.data["spec"]["http"][0]["route"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["destination"]["host"] == host.as_str()))
                    .and_then(|r| r["weight"].as_i64())
                    .unwrap_or(0);
                record_weight(&t2, who, name, at, weight);
            }
        }
    });
    vec![a, b]
}

fn deployment(name: &str, release: usize, faulty: bool) -> Value {
    let mut annotations = serde_json::Map::new();
    if faulty {
        annotations.insert(
            mesh::behaviour::SIMULATE_ANNOTATION.into(),
            json!("errors=50%"),
        );
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{
                    "name": "podinfo", "image": format!("ghcr.io/stefanprodan/podinfo:6.0.{release}"),
                    "ports": [{"name": "http", "containerPort": 9898, "protocol": "TCP"}]
                }]}
            }
        }
    })
}

/// Every bench Canary asks for headless Services (`service.headless`, a Flagger field): a
/// cluster IP costs the API server more the more are allocated. Kubernetes 1.37's allocator
/// takes one IP at a time and counts every allocated IP after each (measured on the sandbox: 60
/// ms an allocation with 12,800 allocated, 16.5 a second, one at a time), so at the 5,000 stage
/// the sandbox's Service creation, not either controller, would set the pace. Both controllers
/// still create, compare and own the same three Services per Canary.
fn canary(name: &str, interval_secs: u64, steps: u32) -> Value {
    json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 600,
            "service": {"port": 9898, "targetPort": 9898, "headless": true},
            "analysis": {
                "interval": format!("{interval_secs}s"), "threshold": THRESHOLD,
                "maxWeight": 10 * steps, "stepWeight": 10,
                "metrics": [
                    {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": format!("{}s", 3 * interval_secs)}
                ]
            }
        }
    })
}

async fn apply(api: &Api<DynamicObject>, name: &str, object: &Value) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .with_context(|| format!("applying {name}"))?;
    Ok(())
}

/// Counts the query requests one controller sends to Prometheus, forwarding everything.
struct QueryCounter {
    addr: std::net::SocketAddr,
    queries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Upstream {
    http: reqwest::Client,
    base: String,
    queries: Arc<AtomicU64>,
}

async fn forward(
    State(up): State<Upstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path().starts_with("/api/v1/query") {
        up.queries.fetch_add(1, Ordering::Relaxed);
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = up.http.request(method, format!("{}{path}", up.base));
    if let Some(ct) = headers.get("content-type") {
        req = req.header("content-type", ct.clone());
    }
    match req.body(body).send().await {
        Ok(r) => {
            let status = r.status();
            let ct = r.headers().get("content-type").cloned();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut resp = (status, bytes).into_response();
            if let Some(ct) = ct {
                resp.headers_mut().insert("content-type", ct);
            }
            resp
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

impl QueryCounter {
    async fn start(prometheus: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let queries = Arc::new(AtomicU64::new(0));
        let up = Upstream {
            http: reqwest::Client::builder().no_proxy().build()?,
            base: prometheus.trim_end_matches('/').to_string(),
            queries: queries.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(up);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the Prometheus counting proxy stopped: {e}");
            }
        });
        Ok(QueryCounter {
            addr,
            queries,
            task,
        })
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn count(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for QueryCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    // Nearest rank.
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank - 1).copied()
}

fn max_of(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::max)
}

/// The weight steps of one rollout, read from the canary route's weights as the watch saw them
/// (seconds since the release, weight), up to the first return to 0.
///
/// Returns the delay from the release to the first step, and how late each later step came
/// against its schedule: step k is due one interval after step k − 1 was due, the first being
/// due when it happened. Anchoring on the schedule rather than on the previous step means a late
/// step that the next one makes up for is still counted late once, and drift accumulates.
fn step_lateness(weights: &[(f64, i64)], interval: f64) -> (Option<f64>, Vec<f64>) {
    let mut steps: Vec<f64> = Vec::new();
    let mut last = 0;
    for &(at, w) in weights {
        if w > last {
            steps.push(at);
            last = w;
        } else if w == 0 && last > 0 {
            break;
        }
    }
    let Some(&first) = steps.first() else {
        return (None, Vec::new());
    };
    let late = steps
        .iter()
        .enumerate()
        .skip(1)
        .map(|(k, at)| at - (first + k as f64 * interval))
        .collect();
    (Some(first), late)
}

/// CPU seconds (user + system) of a process so far, from /proc/PID/stat.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, man proc).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: plain libc call without pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) / hz)
}

/// A `Vm*:` line of /proc/PID/status, in MiB.
fn status_mib(pid: i32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (`clear_refs` 5, man proc), so that
/// a burst's peak is its own. False where the kernel refuses.
fn reset_peak_rss(pid: i32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// One sample of a controller process: CPU seconds so far and RSS, taken every second.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu: f64,
    rss_mib: f64,
}

type Samples = Arc<Mutex<HashMap<Who, Vec<Sample>>>>;

/// Samples every controller once a second until aborted: the peak CPU of a burst is the
/// busiest one-second window, which a before/after difference cannot show.
fn sample_processes(pids: BTreeMap<Who, i32>, out: Samples) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let at = Instant::now();
            for (w, pid) in &pids {
                if let (Some(cpu), Some(rss_mib)) = (cpu_seconds(*pid), status_mib(*pid, "VmRSS:"))
                    && let Ok(mut m) = out.lock()
                {
                    m.entry(*w).or_default().push(Sample { at, cpu, rss_mib });
                }
            }
        }
    })
}

/// The busiest one-second window between `from` and `to`, in % of one core, and the mean.
fn cpu_over(samples: &[Sample], from: Instant, to: Instant) -> (Option<f64>, Option<f64>) {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .collect();
    let peak = inside
        .windows(2)
        .filter_map(|w| {
            let secs = (w[1].at - w[0].at).as_secs_f64();
            (secs > 0.0).then(|| (w[1].cpu - w[0].cpu) / secs * 100.0)
        })
        .reduce(f64::max);
    let mean = match (inside.first(), inside.last()) {
        (Some(a), Some(b)) if b.at > a.at => {
            Some((b.cpu - a.cpu) / (b.at - a.at).as_secs_f64() * 100.0)
        }
        _ => None,
    };
    (peak, mean)
}

/// The audit log and the files the API server rotated it into (`audit-<time>.log` beside
/// `audit.log`, every 100 MB): a full run writes several, and a window that spans a rotation,
/// such as the whole run's, would otherwise count only what came after the last one.
fn audit_files(log: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![log.to_path_buf()];
    let (Some(dir), Some(stem), Some(ext)) = (
        log.parent(),
        log.file_stem().and_then(|s| s.to_str()),
        log.extension().and_then(|s| s.to_str()),
    ) else {
        return files;
    };
    let prefix = format!("{stem}-");
    let suffix = format!(".{ext}");
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut rotated: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
            })
            .collect();
        rotated.sort();
        files.extend(rotated);
    }
    files
}

/// Requests per user and verb in the audit log (rotated files included) received within
/// `[from, to]`.
fn audit_counts(
    log: &Path,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for file in audit_files(log) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        count_lines(&text, from, to, &mut out);
    }
    out
}

fn count_lines(
    text: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    out: &mut BTreeMap<(String, String), u64>,
) {
    #[derive(serde::Deserialize)]
    struct User {
        #[serde(default)]
        username: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Line {
        #[serde(default)]
        verb: String,
        user: Option<User>,
        #[serde(default)]
        stage_timestamp: String,
    }
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Line>(line) else {
            continue;
        };
        let Some(ts) = chrono::DateTime::parse_from_rfc3339(&v.stage_timestamp).ok() else {
            continue;
        };
        let ts = ts.with_timezone(&chrono::Utc);
        if ts < from || ts > to {
            continue;
        }
        let user = v.user.map(|u| u.username).unwrap_or_default();
        *out.entry((user, v.verb)).or_insert(0) += 1;
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The idle cost of one controller at one stage.
#[derive(Debug, Default, Clone)]
struct Idle {
    rss_mib: Option<f64>,
    cpu_per_min: Option<f64>,
    api_per_min: BTreeMap<String, f64>,
    queries_per_min: Option<f64>,
}

/// What was measured for one controller at one stage.
#[derive(Debug, Default, Clone)]
struct Stage {
    /// Canaries present.
    n: usize,
    /// Canaries added to reach this stage.
    added: usize,
    /// From the first manifest of the stage to the last canary Initialized.
    init_secs: Option<f64>,
    /// Canaries seen Initialized (or later) when the stage's wait ended.
    initialized: usize,
    /// CPU seconds the controller spent while the stage grew, per canary added, in ms.
    init_cpu_ms_per_canary: Option<f64>,
    idle: Idle,
    detection_ms: Vec<f64>,
    /// Bumps the controller did not report as Progressing in time.
    detection_missed: usize,
    rollout_secs: Vec<f64>,
}

/// What was measured for one controller in one burst.
#[derive(Debug, Default, Clone)]
struct Burst {
    size: usize,
    at_stage: usize,
    start_ms: Vec<f64>,
    lateness_ms: Vec<f64>,
    done: usize,
    all_done_secs: Option<f64>,
    peak_rss_mib: Option<f64>,
    peak_cpu_pct: Option<f64>,
    mean_cpu_pct: Option<f64>,
}

/// Everything measured for one controller.
#[derive(Debug, Default, Clone)]
struct Figures {
    stages: Vec<Stage>,
    bursts: Vec<Burst>,
    rollback_ms: Option<f64>,
    rollback_total_secs: Option<f64>,
    /// Highest RSS sampled over the whole run.
    peak_rss_mib: Option<f64>,
    cpu_total: Option<f64>,
    /// All requests from the controller's start to the end of the last idle window.
    api_total: Option<u64>,
    queries_total: Option<u64>,
}

/// Waits until `cond` holds, polling every `every`; false on timeout.
async fn wait_every(limit: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    cond()
}

async fn wait_for(limit: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_every(limit, Duration::from_millis(20), cond).await
}

/// Runs the benchmark and returns the Markdown report (also written to `opts.out`). A run that
/// stops early still writes what it measured, with the reason, before returning the error.
pub async fn run(opts: BenchOptions) -> anyhow::Result<String> {
    anyhow::ensure!(!opts.stages.is_empty(), "--stages needs at least one size");
    anyhow::ensure!(
        opts.stages.iter().all(|n| *n >= 1) && opts.stages.windows(2).all(|w| w[0] < w[1]),
        "--stages must be ascending sizes of at least 1, got {:?}",
        opts.stages
    );
    anyhow::ensure!(opts.bumps >= 1, "--bumps must be at least 1");
    anyhow::ensure!(
        (1..=10).contains(&opts.steps),
        "--steps must be within 1..=10 (stepWeight 10 up to maxWeight 10 × steps)"
    );
    let started = chrono::Utc::now();
    let load_start = loadavg();
    let wall = Instant::now();
    let who: Vec<Who> = if opts.smoke {
        vec![Who::Serin]
    } else {
        vec![Who::Serin, Who::Flagger]
    };
    let flagger_bins = if opts.smoke && !opts.flagger_crd {
        None
    } else {
        say!("bench: locating Flagger (built on first use)");
        Some(
            tokio::task::spawn_blocking(crate::setup::flux::ensure_flagger)
                .await?
                .context("Flagger is not available")?,
        )
    };

    say!("bench: starting the sandbox with an audit log");
    let mut sopts = SandboxOptions {
        audit: true,
        ..SandboxOptions::default()
    };
    for w in &who {
        sopts.add_user(w.user(), &["system:masters"]);
    }
    let mut sandbox = Sandbox::start(sopts).await?;
    let mut figures: BTreeMap<Who, Figures> =
        who.iter().map(|w| (*w, Figures::default())).collect();
    let mut versions = Vec::new();
    let mut skipped = Vec::new();
    let result = measure(
        &opts,
        &who,
        flagger_bins.as_ref(),
        &mut sandbox,
        &mut figures,
        &mut versions,
        &mut skipped,
    )
    .await;
    // The sandbox's directory goes with it: keep the logs when asked, and those of a failed run.
    let copy_logs = |keep: &Path| {
        let _ = std::fs::create_dir_all(keep);
        if let Ok(entries) = std::fs::read_dir(sandbox.logs_dir()) {
            for e in entries.flatten() {
                let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
            }
        }
    };
    if let Some(keep) = &opts.keep_logs {
        copy_logs(keep);
        say!("bench: the sandbox's logs are in {}", keep.display());
    }
    let result = result.map_err(|e| {
        let keep = opts.keep_logs.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("serin-bench-logs-{}", std::process::id()))
        });
        copy_logs(&keep);
        e.context(format!("the logs are in {}", keep.display()))
    });
    tokio::task::spawn_blocking(move || sandbox.stop()).await?;

    let md = report(&ReportInput {
        opts: &opts,
        who: &who,
        figures: &figures,
        versions: &versions,
        started,
        load_start,
        load_end: loadavg(),
        took: wall.elapsed(),
        stopped: result.as_ref().err().map(|e| format!("{e:#}")),
        skipped: &skipped,
    });
    if let Some(out) = &opts.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
    }
    result?;
    Ok(md)
}

async fn measure(
    opts: &BenchOptions,
    who: &[Who],
    flagger_bins: Option<&crate::setup::flux::FlaggerBinaries>,
    sandbox: &mut Sandbox,
    figures: &mut BTreeMap<Who, Figures>,
    versions: &mut Vec<(String, String)>,
    skipped: &mut Vec<String>,
) -> anyhow::Result<()> {
    let client = sandbox.client();
    let exe = crate::serin_binary()?;
    let serin_version = std::process::Command::new(&exe)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    versions.push((
        "serin".into(),
        format!(
            "{serin_version} ({}{})",
            exe.display(),
            if exe.components().any(|c| c.as_os_str() == "debug") {
                "; an unoptimized debug build, while Flagger is an optimized Go binary: set SERIN_BIN to a release build for release figures"
            } else {
                ""
            }
        ),
    ));
    if let Ok(v) = client.apiserver_version().await {
        versions.push(("Kubernetes (kube-apiserver)".to_string(), v.git_version));
    }
    let crd = match (opts.flagger_crd, flagger_bins) {
        (true, Some(bins)) => {
            crate::flagger::install_crd(&client, bins).await?;
            "Flagger's own (from its Helm chart), installed over the sandbox's"
        }
        (true, None) => anyhow::bail!("--flagger-crd needs Flagger's files"),
        (false, _) => "the sandbox's (serin's, which also declares serin's status fields)",
    };
    versions.push(("Canary CRD".into(), crd.into()));
    if who.contains(&Who::Flagger) {
        versions.push((
            "Flagger".into(),
            format!(
                "{} (built from its Go module by `serin-sandbox setup --with-flagger`), default flags (client rate limit 100 QPS, burst 250)",
                crate::setup::flux::FLAGGER_VERSION
            ),
        ));
    }
    let mesh = mesh::start(
        sandbox.config(),
        mesh::MeshOptions {
            rate_per_second: 20.0,
            split_only: true,
            ..Default::default()
        },
    )?;
    sandbox.register_scrape_target("mesh", &mesh.metrics_addr().to_string())?;

    let nss: Api<Namespace> = Api::all(client.clone());
    for w in who {
        nss.patch(
            w.namespace(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": w.namespace()}})),
        )
        .await?;
    }

    let mut counters = BTreeMap::new();
    let mut pids = BTreeMap::new();
    let mut flagger: Option<Flagger> = None;
    for w in who {
        let counter = QueryCounter::start(sandbox.prometheus_url()).await?;
        let token = sandbox
            .users()
            .iter()
            .find(|u| u.name == w.user())
            .map(|u| u.token.clone())
            .context("the bench user is missing")?;
        let kubeconfig = sandbox.dir().join(format!("{}.kubeconfig", w.user()));
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(sandbox.api_url(), w.user(), &token),
        )?;
        match w {
            Who::Serin => {
                let args: Vec<String> = [
                    "controller",
                    "--kubeconfig",
                    &kubeconfig.display().to_string(),
                    "--namespace",
                    w.namespace(),
                    "--metrics-server",
                    &counter.url(),
                    "--listen",
                    "127.0.0.1:0",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                sandbox.spawn_service("serin-controller", &exe, &args)?;
                let pid = sandbox
                    .processes()
                    .into_iter()
                    .find(|(n, _)| n == "serin-controller")
                    .map(|(_, p)| p)
                    .context("serin did not start")?;
                pids.insert(*w, pid);
            }
            Who::Flagger => {
                let bins = flagger_bins.context("Flagger is not available")?;
                let log = sandbox.logs_dir().join("flagger.log");
                let f = Flagger::start(
                    bins,
                    FlaggerOptions {
                        kubeconfig: &kubeconfig,
                        prometheus: &counter.url(),
                        namespace: w.namespace(),
                        log: &log,
                    },
                )
                .await?;
                pids.insert(*w, f.pid());
                flagger = Some(f);
            }
        }
        counters.insert(*w, counter);
    }

    let timeline: Timeline = Arc::new(Mutex::new(HashMap::new()));
    let samples: Samples = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for w in who {
        tasks.extend(watch_namespace(client.clone(), *w, timeline.clone()));
    }
    tasks.push(sample_processes(pids.clone(), samples.clone()));
    let ctx = Drive {
        opts,
        who,
        client: &client,
        t: &timeline,
        samples: &samples,
        counters: &counters,
        pids: &pids,
        sandbox,
        deadline: opts.time_limit.map(|l| Instant::now() + l),
    };
    let outcome = ctx.run(figures, skipped).await;
    for task in tasks {
        task.abort();
    }
    if let Some(mut f) = flagger {
        f.stop();
    }
    mesh.stop();
    outcome
}

fn name_of(i: usize) -> String {
    format!("podinfo-{i}")
}

/// What every step of a run needs.
struct Drive<'a> {
    opts: &'a BenchOptions,
    who: &'a [Who],
    client: &'a Client,
    t: &'a Timeline,
    samples: &'a Samples,
    counters: &'a BTreeMap<Who, QueryCounter>,
    pids: &'a BTreeMap<Who, i32>,
    sandbox: &'a Sandbox,
    deadline: Option<Instant>,
}

impl Drive<'_> {
    fn deployments(&self, w: Who) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            w.namespace(),
            &ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment")),
        )
    }

    fn canaries(&self, w: Who) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), w.namespace(), &canary_resource())
    }

    /// One figure per controller, read now.
    fn each<T>(&self, f: impl Fn(Who) -> T) -> BTreeMap<Who, T> {
        self.who.iter().map(|w| (*w, f(*w))).collect()
    }

    /// Whether every controller in `who` shows each of `names` settled.
    fn all_settled(&self, who: &[Who], names: &[String]) -> bool {
        who.iter()
            .all(|w| count_in(self.t, *w, names, &SETTLED) == names.len())
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.opts.interval_secs)
    }

    /// Upper bound for one rollout to end, however slow: three times its length plus two minutes.
    fn rollout_limit(&self) -> Duration {
        self.interval() * (3 * self.opts.steps + 6) + Duration::from_secs(120)
    }

    fn out_of_time(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    async fn run(
        &self,
        figures: &mut BTreeMap<Who, Figures>,
        skipped: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let run_from = chrono::Utc::now();
        let mut release: Vec<usize> = Vec::new();
        let burst_stage = self
            .opts
            .stages
            .iter()
            .copied()
            .filter(|n| *n <= self.opts.bumps_up_to)
            .max();
        let mut have = 0;
        let mut end = run_from;
        // A controller that did not initialize a stage in time is left out of the release
        // measures from then on: its releases would only measure its backlog.
        let mut active: Vec<Who> = self.who.to_vec();
        for (si, &n) in self.opts.stages.iter().enumerate() {
            if self.out_of_time() {
                skipped.push(format!(
                    "the stage of {n} canaries and any after it: the time limit was reached"
                ));
                break;
            }
            say!(
                "bench: stage {}: growing to {n} canaries per controller",
                si + 1
            );
            release.resize(n, 0);
            let grown = self.grow(have, n).await?;
            have = n;
            active.retain(|w| grown.get(w).is_some_and(|s| s.init_secs.is_some()));
            for w in self.who {
                let mut stage = grown.get(w).cloned().unwrap_or_default();
                stage.n = n;
                if let Some(f) = figures.get_mut(w) {
                    f.stages.push(stage);
                }
            }
            say!(
                "bench: stage {}: measuring the idle cost for {:.0} s",
                si + 1,
                self.opts.idle.as_secs_f64()
            );
            let (idle, to) = self.idle().await;
            end = to;
            for w in self.who {
                if let (Some(s), Some(i)) = (
                    figures.get_mut(w).and_then(|f| f.stages.last_mut()),
                    idle.get(w),
                ) {
                    s.idle = i.clone();
                }
            }
            if n > self.opts.bumps_up_to {
                continue;
            }
            if active.is_empty() {
                continue;
            }
            if self.out_of_time() {
                skipped.push(format!(
                    "the releases at {n} canaries: the time limit was reached"
                ));
                continue;
            }
            self.bumps(&active, n, &mut release, figures).await?;
            if si == 0 {
                self.faulty(&active, &mut release, figures).await?;
            }
            if Some(n) == burst_stage {
                for &size in &self.opts.bursts {
                    if size == 0 || size > n {
                        continue;
                    }
                    if self.out_of_time() {
                        skipped.push(format!(
                            "the burst of {size} releases: the time limit was reached"
                        ));
                        continue;
                    }
                    let b = self.burst(&active, size, n, &mut release).await?;
                    for w in self.who {
                        if let (Some(f), Some(b)) = (figures.get_mut(w), b.get(w)) {
                            f.bursts.push(b.clone());
                        }
                    }
                }
            }
        }
        // Whole-run totals: from the first manifest to the end of the last idle window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let whole = audit_counts(&self.sandbox.audit_log_path(), run_from, end);
        let samples = self.samples.lock().map(|m| m.clone()).unwrap_or_default();
        for w in self.who {
            let pid = self.pids[w];
            if let Some(f) = figures.get_mut(w) {
                f.cpu_total = cpu_seconds(pid);
                let sampled = samples
                    .get(w)
                    .and_then(|s| s.iter().map(|s| s.rss_mib).reduce(f64::max));
                f.peak_rss_mib = [sampled, status_mib(pid, "VmHWM:")]
                    .into_iter()
                    .flatten()
                    .reduce(f64::max);
                f.queries_total = Some(self.counters[w].count());
                f.api_total = Some(
                    whole
                        .iter()
                        .filter(|((user, _), _)| user == w.user())
                        .map(|(_, c)| *c)
                        .sum(),
                );
            }
        }
        Ok(())
    }

    /// Adds canaries `from..to` to every controller at the same pace, and waits until each
    /// controller has initialized them (or its time is up).
    /// Grows every controller from `from` to `to` canaries, one controller after the other (in
    /// the order of `who`): each initializes while the other is idle, so neither's figures carry
    /// the other's initialization load, and the API server serves one burst of creates at a
    /// time (both at once stalled it at 5,000).
    async fn grow(&self, from: usize, to: usize) -> anyhow::Result<BTreeMap<Who, Stage>> {
        let mut out = BTreeMap::new();
        for w in self.who {
            out.insert(*w, self.grow_one(*w, from, to).await?);
        }
        Ok(out)
    }

    /// Adds canaries `from..to` to one controller and waits until each is Initialized, or until
    /// two minutes plus `init_per_canary` for each one added have passed.
    async fn grow_one(&self, w: Who, from: usize, to: usize) -> anyhow::Result<Stage> {
        let added = to - from;
        let cpu0 = cpu_seconds(self.pids[&w]);
        let t_apply = Instant::now();
        let mut applies = futures::stream::iter(from..to)
            .map(|i| async move {
                let name = name_of(i);
                apply(&self.deployments(w), &name, &deployment(&name, 0, false)).await?;
                apply(
                    &self.canaries(w),
                    &name,
                    &canary(&name, self.opts.interval_secs, self.opts.steps),
                )
                .await
            })
            .buffer_unordered(APPLY_CONCURRENCY);
        while let Some(r) = applies.next().await {
            r?;
        }
        drop(applies);
        say!(
            "bench: {}: applied {added} Deployments and Canaries in {:.1} s",
            w.title(),
            t_apply.elapsed().as_secs_f64()
        );
        let names: Vec<String> = (from..to).map(name_of).collect();
        let limit = Duration::from_secs(120) + self.opts.init_per_canary * added as u32;
        let deadline = t_apply + limit;
        let mut stage = Stage {
            added,
            ..Stage::default()
        };
        let mut said = Instant::now();
        loop {
            let ready = count_in(self.t, w, &names, &SETTLED);
            stage.initialized = ready;
            if ready == added {
                // The time the last one was seen Initialized.
                let last = names
                    .iter()
                    .filter_map(|n| first_phase(self.t, w, n, &["Initialized"], t_apply))
                    .max();
                stage.init_secs = last.map(|l| (l - t_apply).as_secs_f64());
                if let (Some(a), Some(b)) = (cpu0, cpu_seconds(self.pids[&w])) {
                    stage.init_cpu_ms_per_canary = Some((b - a) * 1000.0 / added as f64);
                }
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            if said.elapsed() >= Duration::from_secs(30) {
                said = Instant::now();
                say!("bench: {}: initialized so far: {ready}/{added}", w.title());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        say!(
            "bench: {}: {} of {added} initialized{}",
            w.title(),
            stage.initialized,
            stage
                .init_secs
                .map(|s| format!(" in {s:.1} s"))
                .unwrap_or_else(|| format!(", time up after {:.0} s", limit.as_secs_f64()))
        );
        Ok(stage)
    }

    /// The idle cost of every controller over one window; returns it and the window's end.
    async fn idle(&self) -> (BTreeMap<Who, Idle>, chrono::DateTime<chrono::Utc>) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let from = chrono::Utc::now();
        let cpu0 = self.each(|w| cpu_seconds(self.pids[&w]));
        let q0 = self.each(|w| self.counters[&w].count());
        let t0 = Instant::now();
        tokio::time::sleep(self.opts.idle).await;
        let minutes = t0.elapsed().as_secs_f64() / 60.0;
        let to = chrono::Utc::now();
        let cpu1 = self.each(|w| cpu_seconds(self.pids[&w]));
        let q1 = self.each(|w| self.counters[&w].count());
        // The API server may write the last lines a moment later.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let audit = audit_counts(&self.sandbox.audit_log_path(), from, to);
        let mut out = BTreeMap::new();
        for w in self.who {
            let mut idle = Idle {
                rss_mib: status_mib(self.pids[w], "VmRSS:"),
                cpu_per_min: match (cpu0[w], cpu1[w]) {
                    (Some(a), Some(b)) => Some((b - a) / minutes),
                    _ => None,
                },
                queries_per_min: Some((q1[w] - q0[w]) as f64 / minutes),
                ..Idle::default()
            };
            for verb in VERBS {
                idle.api_per_min.insert(verb.to_string(), 0.0);
            }
            for ((user, verb), count) in &audit {
                if user == w.user() {
                    idle.api_per_min
                        .insert(verb.clone(), *count as f64 / minutes);
                }
            }
            out.insert(*w, idle);
        }
        (out, to)
    }

    /// Releases one canary to every controller at once; returns when each answered.
    async fn release(
        &self,
        who: &[Who],
        i: usize,
        release: &mut [usize],
        faulty: bool,
    ) -> anyhow::Result<BTreeMap<Who, Instant>> {
        release[i] += 1;
        let name = name_of(i);
        let object = deployment(&name, release[i], faulty);
        let patches = who.iter().map(|w| {
            let (api, object, name) = (self.deployments(*w), object.clone(), name.clone());
            async move {
                apply(&api, &name, &object).await?;
                Ok::<_, anyhow::Error>((*w, Instant::now()))
            }
        });
        Ok(futures::future::try_join_all(patches)
            .await?
            .into_iter()
            .collect())
    }

    /// `opts.bumps` releases, one at a time, round-robin over the stage's canaries: detection
    /// latency, then (once all ended) each rollout's wall time.
    async fn bumps(
        &self,
        who: &[Who],
        n: usize,
        release: &mut [usize],
        figures: &mut BTreeMap<Who, Figures>,
    ) -> anyhow::Result<()> {
        let interval = self.interval();
        let mut done: Vec<(usize, BTreeMap<Who, Instant>)> = Vec::new();
        for k in 0..self.opts.bumps {
            let i = k % n;
            let name = name_of(i);
            let settled = wait_for(self.rollout_limit(), || {
                self.all_settled(who, std::slice::from_ref(&name))
            })
            .await;
            if !settled {
                say!("bench: {name} had not settled before bump {k}; releasing it anyway");
            }
            let at = self.release(who, i, release, false).await?;
            // The next bump waits for every controller's detection, but no longer than one
            // interval and 10 s: a late detection is still measured below, from the watch.
            wait_for(interval + Duration::from_secs(10), || {
                who.iter()
                    .all(|w| first_phase(self.t, *w, &name, &["Progressing"], at[w]).is_some())
            })
            .await;
            say!("bench: bump {}/{} of {name} done", k + 1, self.opts.bumps);
            done.push((i, at));
            // Spread the next bump over the whole interval (a golden-ratio sequence), so that a
            // controller that polls on a timer is met at every phase of it, not just after a tick.
            let phase = (k as f64 * 0.618_034).fract();
            tokio::time::sleep(Duration::from_millis(300) + interval.mul_f64(phase)).await;
        }
        say!("bench: waiting for the rollouts to finish");
        let names: Vec<String> = (0..n.min(self.opts.bumps)).map(name_of).collect();
        wait_every(self.rollout_limit(), Duration::from_millis(200), || {
            self.all_settled(who, &names)
        })
        .await;
        for (i, at) in &done {
            for w in who {
                let seen = first_phase(self.t, *w, &name_of(*i), &["Progressing"], at[w]);
                if let Some(s) = figures.get_mut(w).and_then(|f| f.stages.last_mut()) {
                    match seen {
                        Some(p) => s.detection_ms.push((p - at[w]).as_secs_f64() * 1000.0),
                        None => s.detection_missed += 1,
                    }
                }
                let end = first_phase(self.t, *w, &name_of(*i), &["Succeeded", "Failed"], at[w]);
                if let (Some(s), Some(e)) =
                    (figures.get_mut(w).and_then(|f| f.stages.last_mut()), end)
                {
                    s.rollout_secs.push((e - at[w]).as_secs_f64());
                }
            }
        }
        Ok(())
    }

    /// A faulty release of podinfo-0: how long until Failed, and from the failing check to the
    /// route back at 100 % primary.
    async fn faulty(
        &self,
        who: &[Who],
        release: &mut [usize],
        figures: &mut BTreeMap<Who, Figures>,
    ) -> anyhow::Result<()> {
        say!("bench: a faulty release");
        let name = name_of(0);
        wait_for(self.rollout_limit(), || {
            self.all_settled(who, std::slice::from_ref(&name))
        })
        .await;
        let at = self.release(who, 0, release, true).await?;
        let fail_limit = self.interval() * 12 + Duration::from_secs(60);
        wait_for(fail_limit, || {
            who.iter()
                .all(|w| first_phase(self.t, *w, &name, &["Failed", "Succeeded"], at[w]).is_some())
        })
        .await;
        for w in who {
            let since = at[w];
            let log = log_of(self.t, *w, &name);
            let failed = first_phase(self.t, *w, &name, &["Failed"], since);
            let check = log
                .phases
                .iter()
                .find(|(t, _, f)| *t >= since && *f >= THRESHOLD)
                .map(|(t, _, _)| *t);
            let check = match (check, failed) {
                (Some(c), Some(f)) => Some(c.min(f)),
                (c, f) => c.or(f),
            };
            let raised = log
                .weights
                .iter()
                .find(|(t, w)| *t >= since && *w > 0)
                .map(|(t, _)| *t);
            let reset = raised.and_then(|r| {
                log.weights
                    .iter()
                    .find(|(t, w)| *t > r && *w == 0)
                    .map(|(t, _)| *t)
            });
            if let Some(f) = figures.get_mut(w) {
                f.rollback_total_secs = failed.map(|x| (x - since).as_secs_f64());
                if let (Some(c), Some(r)) = (check, reset) {
                    f.rollback_ms = Some(if r >= c {
                        (r - c).as_secs_f64() * 1000.0
                    } else {
                        -((c - r).as_secs_f64() * 1000.0)
                    });
                }
            }
        }
        // The errors stay in the success-rate window (three intervals) after the rollback: a
        // burst that releases canary 0 again sooner would see its first checks fail on them and
        // its steps held back, which would measure this release, not the burst.
        tokio::time::sleep(self.interval() * 3).await;
        Ok(())
    }

    /// `size` releases at once (canaries 0..size) to every controller: how late each weight step
    /// came against its schedule, how long until all ended, and the peak RSS and CPU meanwhile.
    async fn burst(
        &self,
        who: &[Who],
        size: usize,
        n: usize,
        release: &mut [usize],
    ) -> anyhow::Result<BTreeMap<Who, Burst>> {
        let names: Vec<String> = (0..size).map(name_of).collect();
        wait_every(self.rollout_limit(), Duration::from_millis(200), || {
            self.all_settled(who, &names)
        })
        .await;
        say!("bench: a burst of {size} releases at {n} canaries");
        let mut reset = BTreeMap::new();
        for w in who {
            reset.insert(*w, reset_peak_rss(self.pids[w]));
        }
        let t0 = Instant::now();
        let mut at: BTreeMap<(Who, usize), Instant> = BTreeMap::new();
        let work = (0..size).flat_map(|i| who.iter().map(move |w| (i, *w)));
        let objects: Vec<Value> = (0..size)
            .map(|i| {
                release[i] += 1;
                deployment(&name_of(i), release[i], false)
            })
            .collect();
        let objects = &objects;
        let mut applies = futures::stream::iter(work)
            .map(|(i, w)| async move {
                apply(&self.deployments(w), &name_of(i), &objects[i]).await?;
                Ok::<_, anyhow::Error>(((w, i), Instant::now()))
            })
            .buffer_unordered(APPLY_CONCURRENCY * 2);
        while let Some(r) = applies.next().await {
            let (k, when) = r?;
            at.insert(k, when);
        }
        drop(applies);
        say!(
            "bench: {size} releases applied per controller in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let limit = self.rollout_limit() + Duration::from_millis(400 * size as u64);
        let mut said = Instant::now();
        let since = at.values().copied().min().unwrap_or(t0);
        let all_done =
            |w: Who| count_done_since(self.t, w, &names, &["Succeeded", "Failed"], since);
        wait_every(limit, Duration::from_millis(500), || {
            if said.elapsed() >= Duration::from_secs(30) {
                said = Instant::now();
                let p: Vec<String> = self
                    .who
                    .iter()
                    .map(|w| format!("{} {}/{size}", w.title(), all_done(*w)))
                    .collect();
                say!("bench: burst rollouts ended so far: {}", p.join(", "));
            }
            who.iter().all(|w| all_done(*w) == size)
        })
        .await;
        let t_end = Instant::now();
        let samples = self.samples.lock().map(|m| m.clone()).unwrap_or_default();
        let interval = self.opts.interval_secs as f64;
        let mut out = BTreeMap::new();
        for w in who {
            let mut b = Burst {
                size,
                at_stage: n,
                ..Burst::default()
            };
            let mut last_end: Option<Instant> = None;
            for (i, name) in names.iter().enumerate() {
                let Some(&since) = at.get(&(*w, i)) else {
                    continue;
                };
                let log = log_of(self.t, *w, name);
                let weights: Vec<(f64, i64)> = log
                    .weights
                    .iter()
                    .filter(|(t, _)| *t >= since)
                    .map(|(t, wt)| ((*t - since).as_secs_f64(), *wt))
                    .collect();
                let (start, late) = step_lateness(&weights, interval);
                if let Some(s) = start {
                    b.start_ms.push(s * 1000.0);
                }
                b.lateness_ms.extend(late.iter().map(|l| l * 1000.0));
                if let Some(e) = first_phase(self.t, *w, name, &["Succeeded", "Failed"], since) {
                    b.done += 1;
                    last_end = Some(last_end.map_or(e, |l| l.max(e)));
                }
            }
            if b.done == size {
                b.all_done_secs = last_end.map(|e| (e - t0).as_secs_f64());
            }
            let mine = samples.get(w).map(Vec::as_slice).unwrap_or_default();
            let (peak, mean) = cpu_over(mine, t0, t_end);
            b.peak_cpu_pct = peak;
            b.mean_cpu_pct = mean;
            let sampled = mine
                .iter()
                .filter(|s| s.at >= t0 && s.at <= t_end)
                .map(|s| s.rss_mib)
                .reduce(f64::max);
            b.peak_rss_mib = if reset[w] {
                [sampled, status_mib(self.pids[w], "VmHWM:")]
                    .into_iter()
                    .flatten()
                    .reduce(f64::max)
            } else {
                sampled
            };
            out.insert(*w, b);
        }
        Ok(out)
    }
}

struct ReportInput<'a> {
    opts: &'a BenchOptions,
    who: &'a [Who],
    figures: &'a BTreeMap<Who, Figures>,
    versions: &'a [(String, String)],
    started: chrono::DateTime<chrono::Utc>,
    load_start: String,
    load_end: String,
    took: Duration,
    /// Why the run stopped early, if it did.
    stopped: Option<String>,
    /// What the time limit left out.
    skipped: &'a [String],
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("{x:.digits$}"),
        None => "not measured".to_string(),
    }
}

/// A bound as the issue writes it when it has at most one decimal (100, 1.5, 0.6), to two
/// decimals when it is derived (200 MB in MiB: 190.73).
fn fmt_bound(b: f64) -> String {
    if (b * 10.0).fract() == 0.0 {
        format!("{b}")
    } else {
        format!("{b:.2}")
    }
}

/// Idle requests per minute by verb, the verbs with none left out.
fn by_verb(idle: &Idle) -> String {
    let parts: Vec<String> = VERBS
        .iter()
        .filter_map(|v| {
            let c = idle.api_per_min.get(*v).copied().unwrap_or(0.0);
            (c > 0.0).then(|| format!("{v} {c:.1}"))
        })
        .collect();
    if idle.api_per_min.is_empty() {
        "not measured".into()
    } else if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn writes_per_min(idle: &Idle) -> Option<f64> {
    (!idle.api_per_min.is_empty()).then(|| {
        WRITES
            .iter()
            .map(|v| idle.api_per_min.get(*v).copied().unwrap_or(0.0))
            .sum()
    })
}

/// RSS added per idle canary between the first and the last stage, in KB (1,024 bytes).
/// The stages at which every canary was initialized: only there is the idle cost that of idle
/// canaries (a stage still initializing holds canaries without their generated objects, and
/// writes).
fn reached(f: &Figures) -> Vec<&Stage> {
    f.stages.iter().filter(|s| s.init_secs.is_some()).collect()
}

/// The last stage, if every canary of it was initialized.
fn last_reached(f: &Figures) -> Option<&Stage> {
    f.stages.last().filter(|s| s.init_secs.is_some())
}

fn rss_per_canary_kb(f: &Figures) -> Option<f64> {
    let r = reached(f);
    let (a, b) = (r.first()?, r.last()?);
    if b.n <= a.n {
        return None;
    }
    Some((b.idle.rss_mib? - a.idle.rss_mib?) * 1024.0 / (b.n - a.n) as f64)
}

/// The largest stage at which bumps ran.
fn detection_stage(f: &Figures) -> Option<&Stage> {
    f.stages.iter().rev().find(|s| !s.detection_ms.is_empty())
}

/// One §3 target: the figure of each controller (lower is better), and the bound.
struct Target {
    what: String,
    bound: f64,
    unit: &'static str,
    values: Vec<Option<f64>>,
}

fn targets(who: &[Who], figures: &BTreeMap<Who, Figures>, opts: &BenchOptions) -> Vec<Target> {
    let each = |f: &dyn Fn(&Figures) -> Option<f64>| -> Vec<Option<f64>> {
        who.iter().map(|w| figures.get(w).and_then(f)).collect()
    };
    let mut out = Vec::new();
    let det_n = figures
        .get(&Who::Serin)
        .and_then(detection_stage)
        .map_or(0, |s| s.n);
    out.push(Target {
        what: format!("detection latency p99 with {det_n} canaries present"),
        bound: 100.0,
        unit: "ms",
        values: each(&|f| {
            let s = f.stages.iter().find(|s| s.n == det_n)?;
            if s.detection_missed > 0 {
                // A missed detection is later than any measured one.
                return Some(f64::INFINITY);
            }
            percentile(&s.detection_ms, 99.0)
        }),
    });
    out.push(Target {
        what: "RSS per idle canary (slope from the first to the last stage reached)".into(),
        bound: 32.0,
        unit: "KB",
        values: each(&rss_per_canary_kb),
    });
    let last_n = opts.stages.last().copied().unwrap_or(0);
    out.push(Target {
        what: format!("idle RSS at {last_n} canaries (the target: 5,000 in 200 MB)"),
        bound: 200.0 * 1e6 / 1_048_576.0 * last_n as f64 / 5000.0,
        unit: "MiB",
        values: each(&|f| last_reached(f)?.idle.rss_mib),
    });
    out.push(Target {
        what: "initialization CPU per canary, largest stage ÷ smallest (flat in N: at most 1.5)"
            .into(),
        bound: 1.5,
        unit: "×",
        values: each(&|f| {
            let r = reached(f);
            let a = r.first()?.init_cpu_ms_per_canary?;
            let b = r.last()?.init_cpu_ms_per_canary?;
            (a > 0.0).then(|| b / a)
        }),
    });
    out.push(Target {
        what: format!("idle CPU at {last_n} canaries (1 % of a core = 0.6 s per minute)"),
        bound: 0.6,
        unit: "s/min",
        values: each(&|f| last_reached(f)?.idle.cpu_per_min),
    });
    out.push(Target {
        what: "idle writes and Prometheus queries per minute, worst stage reached".into(),
        bound: 0.0,
        unit: "/min",
        values: each(&|f| {
            reached(f)
                .iter()
                .map(|s| Some(writes_per_min(&s.idle)? + s.idle.queries_per_min?))
                .collect::<Option<Vec<f64>>>()?
                .into_iter()
                .reduce(f64::max)
        }),
    });
    if let Some(size) = opts.bursts.iter().copied().max() {
        out.push(Target {
            what: format!("burst of {size}: latest analysis step against its schedule"),
            bound: 1000.0,
            unit: "ms",
            values: each(&|f| {
                let b = f.bursts.iter().find(|b| b.size == size)?;
                if b.done < b.size {
                    return Some(f64::INFINITY);
                }
                max_of(&b.lateness_ms)
            }),
        });
    }
    out
}

fn report(r: &ReportInput<'_>) -> String {
    let opts = r.opts;
    let who = r.who;
    let figures = r.figures;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark: serin beside Flagger on the sandbox\n");
    let _ = writeln!(
        md,
        "Written by `serin-sandbox bench` (crates/serin-sandbox/src/bench.rs). Every figure below comes from the one run described here.\n"
    );
    if let Some(why) = &r.stopped {
        let _ = writeln!(
            md,
            "**This run stopped early**, and the figures it did not reach are missing: {why}\n"
        );
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(md, "**Not run:**\n");
        for s in r.skipped {
            let _ = writeln!(md, "- {s}");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## The run\n");
    let _ = writeln!(md, "- command: `{}`", opts.command);
    let _ = writeln!(
        md,
        "- started {} UTC, took {:.0} s",
        r.started.format("%Y-%m-%d %H:%M:%S"),
        r.took.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "- machine: {nproc} CPUs, {} memory; load average (1, 5, 15 min) {} at the start, {} at the end (the sandbox's API server, etcd, kube-controller-manager, Prometheus, simulated kubelet and mesh run on the same machine as both controllers)",
        mem_total(),
        r.load_start,
        r.load_end
    );
    for (k, v) in r.versions {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let stages: Vec<String> = opts.stages.iter().map(|n| n.to_string()).collect();
    let _ = writeln!(
        md,
        "- workload per controller, in stages of {} canaries: podinfo-like Deployments (1 replica) with a Canary each (headless Services: the API server allocates cluster IPs one at a time, at a cost growing with the number allocated; analysis interval {i} s, stepWeight 10 up to maxWeight {mw}, i.e. {steps} steps, threshold {THRESHOLD}, the built-in request-success-rate over {w} s); the mesh simulator sends 20 requests/s through each VirtualService that splits traffic (a canary with a share), none through one that sends everything to its primary (no analysis query reads those series; at thousands of canaries they would load Prometheus and the simulator more than the controllers); each controller watches only its own namespace and gets the same manifests; a stage's canaries are added to one controller after the other ({order}), each once the previous one has initialized its share (or run out of time), so that neither initializes under the other's load",
        stages.join(", "),
        i = opts.interval_secs,
        mw = 10 * opts.steps,
        steps = opts.steps,
        w = 3 * opts.interval_secs,
        order = who
            .iter()
            .map(|w| w.title())
            .collect::<Vec<_>>()
            .join(" first, then "),
    );
    let _ = writeln!(
        md,
        "- releases, at every stage up to {}: {k} image bumps, round-robin over the canaries, one at a time, the same canary in both namespaces at the same moment; the next bump waits until both controllers reported Progressing (or {} s passed; a later detection is still measured), plus 0.3 s and a fraction of the interval that goes round it in a golden-ratio sequence (so a controller polling on a timer is met at all phases of its tick); at the first stage, then a faulty release (50 % errors); at the largest of those stages, bursts of {} releases at once\n",
        opts.bumps_up_to,
        opts.interval_secs + 10,
        if opts.bursts.is_empty() {
            "no".to_string()
        } else {
            opts.bursts
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        },
        k = opts.bumps
    );

    let _ = writeln!(md, "## Figures\n");
    let mut header = String::from("| measure |");
    let mut rule = String::from("| --- |");
    for w in who {
        let _ = write!(header, " {} |", w.title());
        rule.push_str(" --- |");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let cells = |f: &dyn Fn(&Figures) -> String| -> Vec<String> {
        who.iter()
            .map(|w| figures.get(w).map_or_else(|| "not measured".into(), f))
            .collect()
    };
    let lower = f64::from(opts.steps) * opts.interval_secs as f64;
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for (si, &n) in opts.stages.iter().enumerate() {
        let stage = move |f: &Figures| f.stages.get(si).cloned();
        rows.push((
            format!("{n} canaries: initialization of the canaries added (first manifest → all Initialized), s"),
            cells(&|f| match stage(f) {
                Some(s) if s.init_secs.is_some() => fmt(s.init_secs, 1),
                Some(s) => format!("not reached: {} of {} Initialized when time was up", s.initialized, s.added),
                None => "not measured".into(),
            }),
        ));
        rows.push((
            format!("{n} canaries: CPU while initializing, per canary added, ms"),
            cells(&|f| fmt(stage(f).and_then(|s| s.init_cpu_ms_per_canary), 1)),
        ));
        rows.push((
            format!("{n} canaries: idle RSS (VmRSS), MiB"),
            cells(&|f| fmt(stage(f).and_then(|s| s.idle.rss_mib), 1)),
        ));
        rows.push((
            format!("{n} canaries: idle CPU, seconds per minute"),
            cells(&|f| fmt(stage(f).and_then(|s| s.idle.cpu_per_min), 3)),
        ));
        rows.push((
            format!("{n} canaries: idle API requests per minute, all verbs"),
            cells(&|f| {
                fmt(
                    stage(f).and_then(|s| {
                        (!s.idle.api_per_min.is_empty()).then(|| s.idle.api_per_min.values().sum())
                    }),
                    1,
                )
            }),
        ));
        rows.push((
            format!("{n} canaries: idle API requests per minute, by verb"),
            cells(&|f| stage(f).map_or_else(|| "not measured".into(), |s| by_verb(&s.idle))),
        ));
        rows.push((
            format!("{n} canaries: idle API writes per minute (create, update, patch, delete)"),
            cells(&|f| fmt(stage(f).and_then(|s| writes_per_min(&s.idle)), 1)),
        ));
        rows.push((
            format!("{n} canaries: idle Prometheus queries per minute"),
            cells(&|f| fmt(stage(f).and_then(|s| s.idle.queries_per_min), 1)),
        ));
        if n > opts.bumps_up_to {
            continue;
        }
        let missed = |f: &Figures| {
            stage(f)
                .map(|s| s.detection_missed)
                .filter(|m| *m > 0)
                .map(|m| format!(" ({m} never seen Progressing)"))
                .unwrap_or_default()
        };
        rows.push((
            format!("{n} canaries: detection latency p50 over {} bumps (target changed → Canary Progressing), ms", opts.bumps),
            cells(&|f| format!("{}{}", fmt(stage(f).and_then(|s| percentile(&s.detection_ms, 50.0)), 0), missed(f))),
        ));
        rows.push((
            format!("{n} canaries: detection latency p99, ms"),
            cells(&|f| {
                format!(
                    "{}{}",
                    fmt(stage(f).and_then(|s| percentile(&s.detection_ms, 99.0)), 0),
                    missed(f)
                )
            }),
        ));
        rows.push((
            format!("{n} canaries: rollout wall time p50 (target changed → Succeeded), s, against {lower:.0} s = {} steps × {} s", opts.steps, opts.interval_secs),
            cells(&|f| fmt(stage(f).and_then(|s| percentile(&s.rollout_secs, 50.0)), 1)),
        ));
        rows.push((
            format!("{n} canaries: rollout wall time ÷ (steps × interval), p50"),
            cells(&|f| {
                fmt(
                    stage(f)
                        .and_then(|s| percentile(&s.rollout_secs, 50.0))
                        .map(|s| s / lower),
                    2,
                )
            }),
        ));
        rows.push((
            format!("{n} canaries: rollout wall time ÷ (steps × interval), p99"),
            cells(&|f| {
                fmt(
                    stage(f)
                        .and_then(|s| percentile(&s.rollout_secs, 99.0))
                        .map(|s| s / lower),
                    2,
                )
            }),
        ));
        if si == 0 {
            rows.push((
                format!("{n} canaries: faulty release, target changed → Failed, s"),
                cells(&|f| fmt(f.rollback_total_secs, 1)),
            ));
            rows.push((
                format!("{n} canaries: rollback latency (failedChecks reached the threshold → VirtualService 100 % primary), ms"),
                cells(&|f| fmt(f.rollback_ms, 0)),
            ));
        }
    }
    for &size in &opts.bursts {
        let burst = move |f: &Figures| f.bursts.iter().find(|b| b.size == size).cloned();
        let Some(at) = figures.values().find_map(|f| burst(f).map(|b| b.at_stage)) else {
            continue;
        };
        let label = format!("burst of {size} releases at {at} canaries");
        rows.push((
            format!("{label}: rollouts ended"),
            cells(&|f| {
                burst(f).map_or_else(
                    || "not measured".into(),
                    |b| format!("{} of {size}", b.done),
                )
            }),
        ));
        rows.push((
            format!("{label}: first release → last rollout ended, s"),
            cells(&|f| fmt(burst(f).and_then(|b| b.all_done_secs), 1)),
        ));
        rows.push((
            format!("{label}: release → first weight step, p50, ms"),
            cells(&|f| fmt(burst(f).and_then(|b| percentile(&b.start_ms, 50.0)), 0)),
        ));
        rows.push((
            format!("{label}: release → first weight step, p99, ms"),
            cells(&|f| fmt(burst(f).and_then(|b| percentile(&b.start_ms, 99.0)), 0)),
        ));
        for (p, name) in [(50.0, "p50"), (99.0, "p99"), (100.0, "max")] {
            rows.push((
                format!(
                    "{label}: lateness of each later weight step against its schedule, {name}, ms"
                ),
                cells(&|f| fmt(burst(f).and_then(|b| percentile(&b.lateness_ms, p)), 0)),
            ));
        }
        rows.push((
            format!("{label}: weight steps measured"),
            cells(&|f| fmt(burst(f).map(|b| b.lateness_ms.len() as f64), 0)),
        ));
        rows.push((
            format!("{label}: weight steps more than 1 s late"),
            cells(&|f| {
                fmt(
                    burst(f).map(|b| b.lateness_ms.iter().filter(|l| **l > 1000.0).count() as f64),
                    0,
                )
            }),
        ));
        rows.push((
            format!("{label}: peak RSS, MiB"),
            cells(&|f| fmt(burst(f).and_then(|b| b.peak_rss_mib), 1)),
        ));
        rows.push((
            format!("{label}: peak CPU (busiest second), % of one core"),
            cells(&|f| fmt(burst(f).and_then(|b| b.peak_cpu_pct), 0)),
        ));
        rows.push((
            format!("{label}: mean CPU over the burst, % of one core"),
            cells(&|f| fmt(burst(f).and_then(|b| b.mean_cpu_pct), 0)),
        ));
    }
    rows.push((
        "peak RSS over the run, MiB".into(),
        cells(&|f| fmt(f.peak_rss_mib, 1)),
    ));
    rows.push((
        "CPU seconds over the whole run".into(),
        cells(&|f| fmt(f.cpu_total, 1)),
    ));
    rows.push((
        "API requests over the whole run (all verbs)".into(),
        cells(&|f| fmt(f.api_total.map(|c| c as f64), 0)),
    ));
    rows.push((
        "Prometheus queries over the whole run".into(),
        cells(&|f| fmt(f.queries_total.map(|c| c as f64), 0)),
    ));
    for (name, cells) in rows {
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }

    let _ = writeln!(md, "\n## The targets of issue 14 §3\n");
    let _ = writeln!(
        md,
        "Judged from the figures above; lower is better for each. \"Met\" compares serin's figure with the bound; the last column compares it with Flagger's from this run.\n"
    );
    let mut header = String::from("| target | bound |");
    let mut rule = String::from("| --- | --- |");
    for w in who {
        let _ = write!(header, " {} |", w.title());
        rule.push_str(" --- |");
    }
    header.push_str(" serin met it |");
    rule.push_str(" --- |");
    if who.contains(&Who::Flagger) {
        header.push_str(" serin at least as good as Flagger |");
        rule.push_str(" --- |");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let show = |v: Option<f64>| match v {
        Some(x) if x.is_infinite() => "not reached".to_string(),
        Some(x) => format!("{x:.2}"),
        None => "not measured".to_string(),
    };
    for t in targets(who, figures, opts) {
        let serin = t.values.first().copied().flatten();
        let met = match serin {
            Some(v) if v <= t.bound => "yes",
            Some(_) => "no",
            None => "not measured",
        };
        let mut line = format!("| {} | ≤ {} {} |", t.what, fmt_bound(t.bound), t.unit);
        for v in &t.values {
            let _ = write!(line, " {} |", show(*v));
        }
        let _ = write!(line, " {met} |");
        if who.contains(&Who::Flagger) {
            let flagger = t.values.get(1).copied().flatten();
            let _ = write!(
                line,
                " {} |",
                match (serin, flagger) {
                    (Some(s), Some(f)) if s <= f => "yes",
                    (Some(_), Some(_)) => "no",
                    _ => "not measured",
                }
            );
        }
        let _ = writeln!(md, "{line}");
    }

    let _ = writeln!(
        md,
        "\n## How each figure is taken\n\n\
- Times are taken in the bench process when a watch event arrives (Canaries and VirtualServices of each namespace); a release's start is when the API server answered the Deployment patch.\n\
- Percentiles are nearest-rank; with {k} bumps the p99 is the largest value.\n\
- Initialization: from the first manifest of the controller's share of the stage to the last added canary seen Initialized. The CPU per canary is the controller's CPU seconds from that first manifest to that moment, divided by the canaries added.\n\
- Idle: measured over {idle:.0} s at each stage once every canary had settled. RSS and CPU (utime + stime) from /proc/PID/status and /proc/PID/stat of the controller process. API requests from the API server's audit log (one line per request when received; policy: Metadata level for the two controllers' users only), counted by user and verb; watches are counted when opened. Prometheus queries: each controller reaches Prometheus only through a loopback proxy of its own that counts requests to /api/v1/query*.\n\
- Rollback latency: from the first Canary status seen with `failedChecks` at the threshold (or the phase Failed, if that came first) to the first VirtualService seen with the canary route back at weight 0 after it had been above 0. A negative figure means the route was reset before the status write that recorded the check.\n\
- Bursts: every release of the burst is applied at once ({c} at a time); the first weight step of each canary is taken as on schedule, and each later step k is due k intervals after it; its lateness is when the route was seen at the new weight minus when it was due (negative: early). RSS peak from VmHWM, reset at the burst's start (`clear_refs`), and 1 s samples; CPU from 1 s samples of /proc/PID/stat.\n\
- A stage's initialization may take two minutes plus {ipc} ms per canary added; a controller that had not initialized every canary by then is left out of the releases (bumps, faulty release, bursts) of that stage and the later ones, where its cells say \"not measured\": its releases would measure its backlog. Its idle figures at such a stage are those of a controller still catching up.\n\
- Flagger runs an analysis interval below 10 s as 10 s; the schedules above use the interval as written.\n",
        k = opts.bumps,
        idle = opts.idle.as_secs_f64(),
        c = APPLY_CONCURRENCY * 2,
        ipc = opts.init_per_canary.as_millis()
    );
    md
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        for (p, want) in [
            (50.0, 10.0),
            (90.0, 18.0),
            (99.0, 20.0),
            (100.0, 20.0),
            (1.0, 1.0),
        ] {
            assert_eq!(percentile(&v, p), Some(want), "p{p}");
        }
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
    }

    #[test]
    fn audit_lines_are_counted_by_user_and_verb_inside_the_window_rotated_files_too() {
        let dir = std::env::temp_dir().join(format!("serin-bench-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("audit.log");
        let line = |user: &str, verb: &str, ts: &str| {
            json!({"kind": "Event", "stage": "RequestReceived", "verb": verb,
                   "user": {"username": user}, "stageTimestamp": ts})
            .to_string()
        };
        let text = [
            line("bench-serin", "get", "2026-01-01T00:00:10.000000Z"),
            line("bench-serin", "get", "2026-01-01T00:00:20.000000Z"),
            line("bench-flagger", "get", "2026-01-01T00:00:20.000000Z"),
            line("bench-flagger", "update", "2026-01-01T00:00:30.000000Z"),
            // Outside the window, and a torn last line.
            line("bench-serin", "list", "2026-01-01T00:01:10.000000Z"),
            "{\"kind\": \"Ev".to_string(),
        ]
        .join("\n");
        std::fs::write(&log, text).unwrap();
        // What the API server rotated out earlier counts too; other files do not.
        std::fs::write(
            dir.join("audit-2026-01-01T00-00-15.000.log"),
            line("bench-serin", "patch", "2026-01-01T00:00:12.000000Z"),
        )
        .unwrap();
        std::fs::write(
            dir.join("kube-apiserver.log"),
            line("bench-serin", "delete", "2026-01-01T00:00:12.000000Z"),
        )
        .unwrap();
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let counts = audit_counts(&log, at("2026-01-01T00:00:00Z"), at("2026-01-01T00:01:00Z"));
        let _ = std::fs::remove_dir_all(&dir);
        let want: BTreeMap<(String, String), u64> = [
            (("bench-flagger".to_string(), "get".to_string()), 1),
            (("bench-flagger".to_string(), "update".to_string()), 1),
            (("bench-serin".to_string(), "get".to_string()), 2),
            (("bench-serin".to_string(), "patch".to_string()), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(counts, want);
    }

    #[test]
    fn cpu_and_memory_of_this_process_are_read() {
        let pid = std::process::id() as i32;
        assert!(cpu_seconds(pid).is_some_and(|s| s >= 0.0));
        assert!(status_mib(pid, "VmRSS:").is_some_and(|m| m > 0.0));
        assert_eq!(cpu_seconds(-1), None);
    }

    type LatenessCase = (Vec<(f64, i64)>, f64, Option<f64>, Vec<f64>);

    #[test]
    fn step_lateness_is_against_the_schedule_of_the_first_step() {
        // (weights seen as (seconds since release, weight)), interval, want (start, lateness)
        let cases: Vec<LatenessCase> = vec![
            // On time.
            (
                vec![(0.5, 10), (10.5, 20), (20.5, 30)],
                10.0,
                Some(0.5),
                vec![0.0, 0.0],
            ),
            // The second step 2 s late; the third on its own schedule again.
            (
                vec![(1.0, 10), (13.0, 20), (21.0, 30)],
                10.0,
                Some(1.0),
                vec![2.0, 0.0],
            ),
            // Drift accumulates: each step 1 s after the previous one's interval.
            (
                vec![(0.0, 10), (11.0, 20), (22.0, 30)],
                10.0,
                Some(0.0),
                vec![1.0, 2.0],
            ),
            // Back to 0 ends the rollout (promotion or rollback); what follows is not a step.
            (
                vec![(0.0, 10), (10.0, 20), (20.0, 0), (30.0, 10)],
                10.0,
                Some(0.0),
                vec![0.0],
            ),
            // A repeated weight is no step.
            (
                vec![(0.0, 10), (5.0, 10), (10.0, 20)],
                10.0,
                Some(0.0),
                vec![0.0],
            ),
            // Never raised.
            (vec![], 10.0, None, vec![]),
            (vec![(3.0, 0)], 10.0, None, vec![]),
        ];
        for (weights, interval, start, late) in cases {
            let (s, l) = step_lateness(&weights, interval);
            assert_eq!(s, start, "{weights:?}");
            assert_eq!(l.len(), late.len(), "{weights:?}");
            for (a, b) in l.iter().zip(&late) {
                assert!((a - b).abs() < 1e-9, "{weights:?}: {l:?} against {late:?}");
            }
        }
    }

    #[test]
    fn cpu_over_takes_the_busiest_second_and_the_mean() {
        let t0 = Instant::now();
        let s = |secs: u64, cpu: f64| Sample {
            at: t0 + Duration::from_secs(secs),
            cpu,
            rss_mib: 1.0,
        };
        let samples = vec![s(0, 10.0), s(1, 10.2), s(2, 11.0), s(3, 11.1), s(10, 20.0)];
        let (peak, mean) = cpu_over(&samples, t0, t0 + Duration::from_secs(3));
        assert!((peak.unwrap() - 80.0).abs() < 1e-6, "{peak:?}");
        assert!((mean.unwrap() - 1.1 / 3.0 * 100.0).abs() < 1e-6, "{mean:?}");
        assert_eq!(
            cpu_over(
                &samples,
                t0 + Duration::from_secs(4),
                t0 + Duration::from_secs(5)
            ),
            (None, None)
        );
    }

    #[test]
    fn targets_judge_serin_against_the_bound_and_flagger() {
        let stage = |n: usize, rss: f64, cpu: f64, writes: f64| Stage {
            n,
            init_secs: Some(1.0),
            init_cpu_ms_per_canary: Some(10.0),
            idle: Idle {
                rss_mib: Some(rss),
                cpu_per_min: Some(cpu),
                api_per_min: [("get".to_string(), 5.0), ("update".to_string(), writes)]
                    .into_iter()
                    .collect(),
                queries_per_min: Some(0.0),
            },
            ..Stage::default()
        };
        let mut serin = Figures {
            stages: vec![stage(100, 50.0, 0.01, 0.0), stage(1100, 80.0, 0.1, 0.0)],
            ..Figures::default()
        };
        serin.stages[0].detection_ms = vec![20.0, 40.0];
        let mut flagger = Figures {
            stages: vec![stage(100, 60.0, 0.3, 6.0), stage(1100, 160.0, 3.0, 6.0)],
            ..Figures::default()
        };
        flagger.stages[0].detection_ms = vec![5000.0];
        flagger.stages[0].detection_missed = 1;
        let figures: BTreeMap<Who, Figures> = [(Who::Serin, serin), (Who::Flagger, flagger)]
            .into_iter()
            .collect();
        let opts = BenchOptions {
            stages: vec![100, 1100],
            bumps: 2,
            bumps_up_to: 100,
            bursts: vec![],
            interval_secs: 10,
            steps: 10,
            idle: Duration::from_secs(60),
            init_per_canary: Duration::from_millis(100),
            smoke: false,
            time_limit: None,
            flagger_crd: false,
            out: None,
            keep_logs: None,
            command: "bench".into(),
        };
        let t = targets(&[Who::Serin, Who::Flagger], &figures, &opts);
        let find = |start: &str| t.iter().find(|t| t.what.starts_with(start)).unwrap();
        assert_eq!(
            find("detection").values,
            vec![Some(40.0), Some(f64::INFINITY)]
        );
        let rss = &find("RSS per idle canary").values;
        assert!((rss[0].unwrap() - 30.72).abs() < 1e-9, "{rss:?}");
        assert!((rss[1].unwrap() - 102.4).abs() < 1e-9, "{rss:?}");
        assert_eq!(find("idle writes").values, vec![Some(0.0), Some(6.0)]);
        assert_eq!(
            find("initialization CPU").values,
            vec![Some(1.0), Some(1.0)]
        );
        let md = report(&ReportInput {
            opts: &opts,
            who: &[Who::Serin, Who::Flagger],
            figures: &figures,
            versions: &[],
            started: chrono::Utc::now(),
            load_start: "0".into(),
            load_end: "0".into(),
            took: Duration::from_secs(1),
            stopped: None,
            skipped: &[],
        });
        let line = md
            .lines()
            .find(|l| l.starts_with("| detection latency p99 with 100"))
            .unwrap();
        assert!(
            line.ends_with("| 40.00 | not reached | yes | yes |"),
            "{line}"
        );
        let line = md
            .lines()
            .find(|l| l.starts_with("| 1100 canaries: idle API requests per minute, by verb"))
            .unwrap();
        assert_eq!(
            line,
            "| 1100 canaries: idle API requests per minute, by verb | get 5.0 | get 5.0, update 6.0 |"
        );

        // A last stage not reached is not judged: its idle figures are not those of idle canaries.
        let mut unreached = figures.clone();
        for f in unreached.values_mut() {
            f.stages[1].init_secs = None;
            f.stages[1].init_cpu_ms_per_canary = None;
        }
        let t = targets(&[Who::Serin, Who::Flagger], &unreached, &opts);
        let find = |start: &str| t.iter().find(|t| t.what.starts_with(start)).unwrap();
        assert_eq!(find("RSS per idle canary").values, vec![None, None]);
        assert_eq!(find("idle RSS at 1100").values, vec![None, None]);
        assert_eq!(find("idle CPU at 1100").values, vec![None, None]);
        assert_eq!(find("idle writes").values, vec![Some(0.0), Some(6.0)]);
    }
}
