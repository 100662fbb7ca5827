//! The mesh simulator: Istio's destination-side telemetry, as if a mesh carried traffic.
//!
//! There is no Envoy here. Every tick the simulator reads each VirtualService (from a watch
//! cache), splits `rate × elapsed` synthetic requests over its routes ([`routing::split`]),
//! resolves each destination host to a Service and the Deployment its selector picks, and records
//! what that revision answers according to its pod-template annotation `serin.dev/simulate`
//! ([`behaviour::parse`]). Prometheus scrapes the result from [`MeshHandle::metrics_addr`].
//!
//! Choices a test author should know:
//! - Amounts are deterministic, not random: fractional requests and errors are carried over to
//!   the next tick, so `errors=10%` is 10% of the counter increments (to within one request).
//! - Every request to a workload takes exactly its latency. Prometheus' `histogram_quantile`
//!   then interpolates inside Istio's bucket: `latency=200ms` gives a p99 of 248.5 (bucket
//!   100–250), the default 5 ms gives 4.96.
//! - A workload with no ready replicas has no destination proxy, so nothing records its share:
//!   it is dropped, not counted as 503s (Istio's source-side 503s carry `reporter="source"`,
//!   which Flagger's queries do not read).
//! - A malformed `serin.dev/simulate` (or VirtualService annotation) is reported once per value
//!   as a Warning Event `SimulateAnnotationInvalid` plus a log line, and that workload (or
//!   VirtualService) gets no traffic: the simulator does not guess.
//! - It runs on a thread of its own with its own single-threaded tokio runtime, because tests
//!   create a runtime per `#[tokio::test]` and a simulator kept in a static must outlive them.
//!   Dropping the [`MeshHandle`] stops it.

pub mod behaviour;
mod http;
pub mod metrics;
pub mod routing;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{mpsc, oneshot, watch};

use behaviour::{Behaviour, SIMULATE_ANNOTATION};
use metrics::{Registry, Series};
use routing::{ServiceRef, parse_amount, service_ref, split};

/// VirtualService annotation: requests per second for this VirtualService.
pub const RATE_ANNOTATION: &str = "serin.dev/simulate-rate";
/// VirtualService annotation: percentage of requests matching the first (A/B) route.
pub const MATCH_SHARE_ANNOTATION: &str = "serin.dev/simulate-match-share";
/// Reason of the Warning Event for a malformed simulation annotation.
pub const INVALID_REASON: &str = "SimulateAnnotationInvalid";
/// `source_workload` of requests that came through the ingress.
pub const DIRECT_SOURCE: &str = "direct";
/// Events' reporting controller.
const REPORTER: &str = "serin-mesh-simulator";

/// Tuning of the simulator.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Requests per second sent through each VirtualService (its `serin.dev/simulate-rate`
    /// annotation overrides it).
    pub rate_per_second: f64,
    /// How often requests are generated.
    pub tick: Duration,
    /// Percentage of requests matching the first route of an A/B VirtualService (its
    /// `serin.dev/simulate-match-share` annotation overrides it).
    pub match_share_percent: f64,
    /// `source_workload` of generated requests (Flagger's load tester by default).
    pub source_workload: String,
    /// Watch only this namespace; all namespaces when `None`. Lets each test run its own
    /// simulator without counting another test's traffic twice.
    pub namespace: Option<String>,
    /// Also serve the HTTP ingress ([`MeshHandle::ingress_addr`]).
    pub ingress: bool,
    /// Send no traffic through VirtualServices that send all of it to `-primary` Services:
    /// settled canaries. Those under analysis (the canary has a share, up to all of it at
    /// `maxWeight: 100`, or a mirror) get their traffic as usual. The benchmark sets it because
    /// at thousands of settled canaries the series of their primaries cost Prometheus and the
    /// simulator more than the controllers being measured, and no analysis query reads them
    /// (both controllers query only once the canary has a share).
    pub split_only: bool,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            rate_per_second: 10.0,
            tick: Duration::from_millis(100),
            match_share_percent: 50.0,
            source_workload: "loadtester".into(),
            namespace: None,
            ingress: false,
            split_only: false,
        }
    }
}

impl MeshOptions {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rate_per_second.is_finite() && self.rate_per_second >= 0.0,
            "MeshOptions.rate_per_second must be a finite number >= 0, got {}",
            self.rate_per_second
        );
        anyhow::ensure!(
            self.tick >= Duration::from_millis(1),
            "MeshOptions.tick must be at least 1 ms, got {:?}",
            self.tick
        );
        anyhow::ensure!(
            (0.0..=100.0).contains(&self.match_share_percent),
            "MeshOptions.match_share_percent must be within 0..=100, got {}",
            self.match_share_percent
        );
        Ok(())
    }
}

/// Where the simulator finds the API server.
enum ClusterSource {
    Config(Box<kube::Config>),
    Kubeconfig(PathBuf),
}

/// A running simulator. Dropping it stops it (and waits for its thread).
pub struct MeshHandle {
    metrics_addr: SocketAddr,
    ingress_addr: Option<SocketAddr>,
    state: Arc<Mutex<State>>,
    synced: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MeshHandle {
    /// `127.0.0.1:PORT` serving `/metrics`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The ingress, when [`MeshOptions::ingress`] is set. A request names its service by its
    /// Host header (`svc.ns`, `svc.ns.svc.cluster.local`, port ignored) or by a path prefix
    /// `/ns/svc/`; it is answered with that workload's simulated behaviour (500 for its error
    /// share, after its latency) and recorded with `source_workload="direct"`. 404 when no
    /// Service is named, 503 when the Service has no ready workload (not recorded).
    pub fn ingress_addr(&self) -> Option<SocketAddr> {
        self.ingress_addr
    }

    /// What `/metrics` serves now.
    pub fn metrics_text(&self) -> String {
        lock(&self.state).registry.render()
    }

    /// Waits until the VirtualService, Service and Deployment caches hold a first full list;
    /// before that no traffic is generated. Works from any runtime.
    pub async fn synced(&self) -> anyhow::Result<()> {
        let mut rx = self.synced.clone();
        rx.wait_for(|s| *s)
            .await
            .map(|_| ())
            .map_err(|_| anyhow::anyhow!("the mesh simulator stopped before its caches synced"))
    }

    /// Stops the simulator (the same as dropping the handle).
    pub fn stop(self) {}
}

impl Drop for MeshHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the simulator against the cluster `config` points at. Returns once `/metrics` (and
/// the ingress) listen, blocking the caller for that moment; the caches sync afterwards (see
/// [`MeshHandle::synced`]).
pub fn start(config: kube::Config, opts: MeshOptions) -> anyhow::Result<MeshHandle> {
    start_from(ClusterSource::Config(Box::new(config)), opts)
}

/// Starts the simulator against the cluster of a kubeconfig file (its current context).
pub fn start_with_kubeconfig(kubeconfig: &Path, opts: MeshOptions) -> anyhow::Result<MeshHandle> {
    start_from(ClusterSource::Kubeconfig(kubeconfig.to_path_buf()), opts)
}

type Started = anyhow::Result<(SocketAddr, Option<SocketAddr>)>;

fn start_from(source: ClusterSource, opts: MeshOptions) -> anyhow::Result<MeshHandle> {
    opts.check()?;
    let state = Arc::new(Mutex::new(State::default()));
    let (init_tx, init_rx) = std::sync::mpsc::channel::<Started>();
    let (stop_tx, stop_rx) = oneshot::channel();
    let (synced_tx, synced_rx) = watch::channel(false);
    let thread_state = state.clone();
    let thread = std::thread::Builder::new()
        .name("serin-mesh".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = init_tx.send(Err(anyhow::anyhow!("cannot build a runtime: {e}")));
                    return;
                }
            };
            rt.block_on(run(source, opts, thread_state, init_tx, synced_tx, stop_rx));
        })?;
    match init_rx.recv() {
        Ok(Ok((metrics_addr, ingress_addr))) => Ok(MeshHandle {
            metrics_addr,
            ingress_addr,
            state,
            synced: synced_rx,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            anyhow::bail!("the mesh simulator thread died while starting")
        }
    }
}

/// Everything on the simulator's runtime: watches, ticker, HTTP servers, event reporter.
async fn run(
    source: ClusterSource,
    opts: MeshOptions,
    state: Arc<Mutex<State>>,
    init: std::sync::mpsc::Sender<Started>,
    synced: watch::Sender<bool>,
    stop: oneshot::Receiver<()>,
) {
    let setup = async {
        let config = match source {
            ClusterSource::Config(c) => *c,
            ClusterSource::Kubeconfig(path) => {
                let kc = kube::config::Kubeconfig::read_from(&path)
                    .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?
            }
        };
        let client = Client::try_from(config)?;
        let (metrics_listener, metrics_addr) = http::bind_loopback().await?;
        let ingress = if opts.ingress {
            Some(http::bind_loopback().await?)
        } else {
            None
        };
        anyhow::Ok((client, metrics_listener, metrics_addr, ingress))
    };
    let (client, metrics_listener, metrics_addr, ingress) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            let _ = init.send(Err(e));
            return;
        }
    };
    let _ = init.send(Ok((metrics_addr, ingress.as_ref().map(|(_, a)| *a))));

    let caches = Caches::start(&client, opts.namespace.as_deref());
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let reporter = Problems::new(report_tx);
    let mut tasks = caches.tasks;
    let caches = caches.view;
    tasks.push(tokio::spawn(report_events(client.clone(), report_rx)));
    tasks.push(tokio::spawn(http::serve(
        metrics_listener,
        metrics_handler(state.clone()),
    )));
    if let Some((listener, _)) = ingress {
        tasks.push(tokio::spawn(http::serve(
            listener,
            ingress_handler(caches.clone(), state.clone(), reporter.clone()),
        )));
    }
    tasks.push(tokio::spawn(generate(
        caches.clone(),
        state,
        reporter,
        opts,
        synced,
    )));
    let _ = stop.await;
    for t in tasks {
        t.abort();
    }
}

/// The three watch caches, and the Deployments' pod labels indexed for Service selectors.
#[derive(Clone)]
struct CacheView {
    virtual_services: Store<DynamicObject>,
    services: Store<Service>,
    deployments: Store<Deployment>,
    selectable: Arc<Mutex<LabelIndex>>,
}

/// Deployments by (namespace, pod label key, value), kept by the Deployment watch, so that
/// resolving a Service costs the Deployments sharing its first selector label, not a scan of
/// every Deployment (a scan per route ten times a second took a whole core at 1,000 canaries).
#[derive(Default)]
struct LabelIndex {
    by_label: HashMap<(String, String, String), BTreeSet<String>>,
    labels: HashMap<(String, String), BTreeMap<String, String>>,
}

impl LabelIndex {
    fn insert(&mut self, ns: &str, name: &str, labels: BTreeMap<String, String>) {
        self.remove(ns, name);
        for (k, v) in &labels {
            self.by_label
                .entry((ns.to_string(), k.clone(), v.clone()))
                .or_default()
                .insert(name.to_string());
        }
        self.labels
            .insert((ns.to_string(), name.to_string()), labels);
    }

    fn remove(&mut self, ns: &str, name: &str) {
        let Some(old) = self.labels.remove(&(ns.to_string(), name.to_string())) else {
            return;
        };
        for (k, v) in old {
            let key = (ns.to_string(), k, v);
            if let Some(names) = self.by_label.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    self.by_label.remove(&key);
                }
            }
        }
    }

    /// The first Deployment by name in `ns` whose pod labels carry all of `selector`.
    fn first_selected(&self, ns: &str, selector: &BTreeMap<String, String>) -> Option<String> {
        let (k, v) = selector.iter().next()?;
        let names = self.by_label.get(&(ns.to_string(), k.clone(), v.clone()))?;
        names
            .iter()
            .find(|n| {
                let labels = self.labels.get(&(ns.to_string(), (*n).clone()));
                selects(selector, labels)
            })
            .cloned()
    }

    /// Follows one watch event; a relist (`Init` … `InitDone`) rebuilds the index whole.
    fn follow(&mut self, pending: &mut Option<LabelIndex>, ev: &watcher::Event<Deployment>) {
        let entry = |d: &Deployment| {
            (
                d.namespace().unwrap_or_default(),
                d.name_any(),
                template_labels(d).cloned().unwrap_or_default(),
            )
        };
        match ev {
            watcher::Event::Apply(d) => {
                let (ns, name, labels) = entry(d);
                self.insert(&ns, &name, labels);
            }
            watcher::Event::Delete(d) => {
                self.remove(&d.namespace().unwrap_or_default(), &d.name_any())
            }
            watcher::Event::Init => *pending = Some(LabelIndex::default()),
            watcher::Event::InitApply(d) => {
                if let Some(p) = pending.as_mut() {
                    let (ns, name, labels) = entry(d);
                    p.insert(&ns, &name, labels);
                }
            }
            watcher::Event::InitDone => {
                if let Some(p) = pending.take() {
                    *self = p;
                }
            }
        }
    }
}

struct Caches {
    view: CacheView,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Caches {
    fn start(client: &Client, namespace: Option<&str>) -> Caches {
        let gvk = GroupVersionKind::gvk("networking.istio.io", "v1beta1", "VirtualService");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "virtualservices");
        let (vs_api, svc_api, dep_api) = match namespace {
            Some(ns) => (
                Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar),
                Api::<Service>::namespaced(client.clone(), ns),
                Api::<Deployment>::namespaced(client.clone(), ns),
            ),
            None => (
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                Api::<Service>::all(client.clone()),
                Api::<Deployment>::all(client.clone()),
            ),
        };
        let vs_writer = reflector::store::Writer::new(ar);
        let virtual_services = vs_writer.as_reader();
        let (services, svc_writer) = reflector::store();
        let (deployments, dep_writer) = reflector::store();
        let selectable = Arc::new(Mutex::new(LabelIndex::default()));
        let index = selectable.clone();
        let mut pending = None;
        let follow = move |ev: &watcher::Event<Deployment>| {
            index
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .follow(&mut pending, ev);
        };
        let tasks = vec![
            tokio::spawn(reflect("VirtualService", vs_api, vs_writer, |_| {})),
            tokio::spawn(reflect("Service", svc_api, svc_writer, |_| {})),
            tokio::spawn(reflect("Deployment", dep_api, dep_writer, follow)),
        ];
        Caches {
            view: CacheView {
                virtual_services,
                services,
                deployments,
                selectable,
            },
            tasks,
        }
    }

    async fn wait_synced(view: &CacheView) -> bool {
        view.virtual_services.wait_until_ready().await.is_ok()
            && view.services.wait_until_ready().await.is_ok()
            && view.deployments.wait_until_ready().await.is_ok()
    }
}

async fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    mut follow: impl FnMut(&watcher::Event<K>) + Send + 'static,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let events = watcher(api, watcher::Config::default().any_semantic()).map(move |ev| {
        if let Ok(e) = &ev {
            follow(e);
        }
        ev
    });
    reflector::reflector(writer, events)
        .default_backoff()
        .for_each(|ev| async move {
            if let Err(e) = ev {
                tracing::warn!("mesh simulator: watching {kind}s: {e}");
            }
        })
        .await;
}

/// Where a destination host leads.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// No such Service in the cache.
    NoService,
    /// The Service selects no Deployment (or has no selector).
    NoWorkload,
    /// The workload has no ready replica, so no destination proxy records anything.
    NotReady { workload: String },
    /// The workload answers with this behaviour.
    Ready {
        workload: String,
        behaviour: Behaviour,
    },
    /// The workload's annotation is malformed: reported, and nothing is simulated.
    Invalid,
}

impl CacheView {
    fn resolve(&self, svc: &ServiceRef, reporter: &Problems) -> Target {
        let Some(service) = self
            .services
            .get(&reflector::ObjectRef::new(&svc.name).within(&svc.namespace))
        else {
            return Target::NoService;
        };
        let selector = match service.spec.as_ref().and_then(|s| s.selector.as_ref()) {
            Some(sel) if !sel.is_empty() => sel.clone(),
            _ => return Target::NoWorkload,
        };
        let first = self
            .selectable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first_selected(&svc.namespace, &selector);
        let Some(dep) = first.and_then(|name| {
            self.deployments
                .get(&reflector::ObjectRef::new(&name).within(&svc.namespace))
        }) else {
            return Target::NoWorkload;
        };
        let workload = dep.name_any();
        let ready = dep
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready <= 0 {
            return Target::NotReady { workload };
        }
        let annotation = dep
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(SIMULATE_ANNOTATION));
        match behaviour::parse(annotation.map(String::as_str)) {
            Ok(behaviour) => Target::Ready {
                workload,
                behaviour,
            },
            Err(e) => {
                reporter.invalid(dep.object_ref(&()), dep.uid(), e.to_string());
                Target::Invalid
            }
        }
    }
}

fn template_labels(d: &Deployment) -> Option<&BTreeMap<String, String>> {
    d.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
}

/// A Service selector picks pods carrying all of its labels.
fn selects(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    let Some(labels) = labels else {
        return false;
    };
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Mutable simulation state shared by the generator, the ingress and `/metrics`.
#[derive(Default)]
struct State {
    registry: Registry,
    /// Fractional requests not yet sent, per (VirtualService, host, mirrored).
    request_carry: HashMap<(String, String, String, bool), f64>,
    /// Fractional errors not yet answered, per series without the response code.
    error_carry: HashMap<Series, f64>,
    /// Fractional requests not yet arrived, per series, for workloads with `traffic` below 100%.
    traffic_carry: HashMap<Series, f64>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves counters that are still meaningful.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whole units out of a fractional carry, leaving the remainder in it.
fn take_whole(carry: &mut f64, add: f64) -> u64 {
    *carry += add;
    // The epsilon keeps 0.1 + 0.2 + ... from losing a unit to rounding.
    let whole = (*carry + 1e-9).floor().max(0.0);
    *carry -= whole;
    whole as u64
}

impl State {
    /// Records `n` answers of a workload: its error share as 500s, the rest 200s. Only its
    /// `traffic` share of them arrives; nothing is recorded when none does.
    fn answer(&mut self, base: &Series, n: u64, b: &Behaviour) {
        let n = if b.traffic_percent >= 100.0 {
            n
        } else {
            let carry = self.traffic_carry.entry(base.clone()).or_default();
            take_whole(carry, n as f64 * b.traffic_percent / 100.0).min(n)
        };
        if n == 0 {
            return;
        }
        let carry = self.error_carry.entry(base.clone()).or_default();
        let errors = take_whole(carry, n as f64 * b.error_percent / 100.0).min(n);
        let mut s = base.clone();
        s.response_code = 500;
        self.registry.record(&s, errors, b.latency_ms);
        s.response_code = 200;
        self.registry.record(&s, n - errors, b.latency_ms);
    }
}

/// Sends reports to the event task; cheap to clone.
#[derive(Clone)]
struct Problems {
    tx: mpsc::UnboundedSender<Report>,
}

struct Report {
    object: ObjectReference,
    uid: Option<String>,
    message: String,
}

impl Problems {
    fn new(tx: mpsc::UnboundedSender<Report>) -> Self {
        Problems { tx }
    }

    fn invalid(&self, object: ObjectReference, uid: Option<String>, message: String) {
        let _ = self.tx.send(Report {
            object,
            uid,
            message,
        });
    }
}

/// Publishes each distinct problem once per object, as a log line and a Warning Event.
async fn report_events(client: Client, mut rx: mpsc::UnboundedReceiver<Report>) {
    let recorder = Recorder::new(
        client,
        kube::runtime::events::Reporter {
            controller: REPORTER.into(),
            instance: None,
        },
    );
    let mut seen: HashSet<(Option<String>, String)> = HashSet::new();
    while let Some(r) = rx.recv().await {
        if !seen.insert((r.uid.clone(), r.message.clone())) {
            continue;
        }
        let what = format!(
            "{}/{} in {}",
            r.object.kind.as_deref().unwrap_or("object"),
            r.object.name.as_deref().unwrap_or("?"),
            r.object.namespace.as_deref().unwrap_or("?")
        );
        tracing::warn!(
            "mesh simulator: {what}: {}; simulating nothing for it",
            r.message
        );
        let event = Event {
            type_: EventType::Warning,
            reason: INVALID_REASON.into(),
            note: Some(format!(
                "{}; the mesh simulator sends it no traffic",
                r.message
            )),
            action: "Simulate".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &r.object).await {
            tracing::warn!("mesh simulator: cannot record the event for {what}: {e}");
            // Let a later occurrence try again.
            seen.remove(&(r.uid, r.message));
        }
    }
}

/// The tick loop: generated traffic through every VirtualService.
async fn generate(
    caches: CacheView,
    state: Arc<Mutex<State>>,
    reporter: Problems,
    opts: MeshOptions,
    synced: watch::Sender<bool>,
) {
    if !Caches::wait_synced(&caches).await {
        return;
    }
    let _ = synced.send(true);
    let mut warned: HashSet<String> = HashSet::new();
    // With `split_only`, the VirtualServices found not splitting, by uid, with the
    // resourceVersion seen: skipped until they change (at 5,000 settled canaries, looking at each
    // ten times a second took a sixth of a core).
    let mut silent: HashMap<String, String> = HashMap::new();
    let mut ticker = tokio::time::interval(opts.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = Instant::now();
    let mut ticks: u64 = 0;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        ticks += 1;
        let all = caches.virtual_services.state();
        for vs in &all {
            let version = vs
                .metadata
                .uid
                .as_deref()
                .zip(vs.metadata.resource_version.as_deref());
            if let Some((uid, rv)) = version
                && silent.get(uid).map(String::as_str) == Some(rv)
            {
                continue;
            }
            let carried =
                tick_virtual_service(vs, dt, &caches, &state, &reporter, &opts, &mut warned);
            if let Some((uid, rv)) = version {
                if carried == Carried::NotSplit {
                    silent.insert(uid.to_string(), rv.to_string());
                } else {
                    silent.remove(uid);
                }
            }
        }
        if ticks.is_multiple_of(100) {
            let live: HashSet<&str> = all
                .iter()
                .filter_map(|v| v.metadata.uid.as_deref())
                .collect();
            silent.retain(|uid, _| live.contains(uid.as_str()));
        }
    }
}

/// Whether a route's host is a primary Service (`<apex>-primary`, short or qualified).
fn is_primary(host: &str) -> bool {
    host.split('.')
        .next()
        .is_some_and(|name| name.ends_with("-primary"))
}

/// What one tick did with a VirtualService.
#[derive(Debug, PartialEq, Eq)]
enum Carried {
    /// Traffic (or nothing, for a reason other than `split_only`: a bad annotation, no route).
    Routed,
    /// Nothing: it sends everything to primaries and `split_only` is set.
    NotSplit,
}

fn tick_virtual_service(
    vs: &DynamicObject,
    dt: f64,
    caches: &CacheView,
    state: &Mutex<State>,
    reporter: &Problems,
    opts: &MeshOptions,
    warned: &mut HashSet<String>,
) -> Carried {
    let ns = vs.namespace().unwrap_or_default();
    let name = vs.name_any();
    let annotations = vs.annotations();
    let annotation = |key: &str, default: f64, max: f64, form: &str| match annotations.get(key) {
        None => Some(default),
        Some(v) => parse_amount(v, max).or_else(|| {
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("networking.istio.io", "v1beta1", "VirtualService"),
                "virtualservices",
            );
            reporter.invalid(
                vs.object_ref(&ar),
                vs.uid(),
                format!("annotation {key}={v:?} is invalid: expected {form}"),
            );
            None
        }),
    };
    let Some(rate) = annotation(
        RATE_ANNOTATION,
        opts.rate_per_second,
        1e6,
        "requests per second, a plain number like \"50\"",
    ) else {
        return Carried::Routed;
    };
    let Some(share) = annotation(
        MATCH_SHARE_ANNOTATION,
        opts.match_share_percent,
        100.0,
        "a percentage between 0 and 100 without unit, like \"30\"",
    ) else {
        return Carried::Routed;
    };
    let spec = vs.data.get("spec").unwrap_or(&serde_json::Value::Null);
    let flows = match split(spec, rate * dt, share / 100.0) {
        Ok(f) => f,
        Err(e) => {
            let msg = format!("VirtualService {ns}/{name}: {e}; it gets no traffic");
            if warned.insert(msg.clone()) {
                tracing::warn!("mesh simulator: {msg}");
            }
            return Carried::Routed;
        }
    };
    if opts.split_only
        && flows
            .iter()
            .filter(|f| f.requests > 0.0)
            .all(|f| is_primary(&f.host))
    {
        return Carried::NotSplit;
    }
    for flow in flows {
        let key = (ns.clone(), name.clone(), flow.host.clone(), flow.mirrored);
        let n = {
            let mut st = lock(state);
            let carry = st.request_carry.entry(key).or_default();
            take_whole(carry, flow.requests)
        };
        if n == 0 {
            continue;
        }
        let Some(svc) = service_ref(&flow.host, &ns) else {
            let msg = format!(
                "VirtualService {ns}/{name}: host {:?} is not a Service of this cluster",
                flow.host
            );
            if warned.insert(msg.clone()) {
                tracing::warn!("mesh simulator: {msg}");
            }
            continue;
        };
        if let Target::Ready {
            workload,
            behaviour,
        } = caches.resolve(&svc, reporter)
        {
            let base = Series {
                source_workload: opts.source_workload.clone(),
                source_workload_namespace: ns.clone(),
                destination_workload: workload,
                destination_workload_namespace: svc.namespace.clone(),
                destination_service_name: svc.name.clone(),
                destination_service_namespace: svc.namespace.clone(),
                response_code: 0,
            };
            lock(state).answer(&base, n, &behaviour);
        }
    }
    Carried::Routed
}

fn metrics_handler(state: Arc<Mutex<State>>) -> http::Handler {
    Arc::new(move |req: http::Request| {
        let state = state.clone();
        Box::pin(async move {
            if req.path == "/metrics" || req.path.starts_with("/metrics?") {
                let mut resp = http::Response::text(200, lock(&state).registry.render());
                resp.content_type = "text/plain; version=0.0.4; charset=utf-8";
                resp
            } else {
                http::Response::text(404, "only /metrics is served here\n")
            }
        })
    })
}

/// The Service a direct request names: its Host header, else a `/ns/svc/` path prefix.
fn ingress_service(req: &http::Request) -> Option<ServiceRef> {
    let from_host = req.header("host").and_then(|h| {
        let host = h.rsplit_once(':').map_or(h, |(host, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                host
            } else {
                h
            }
        });
        // A bare name has no namespace to resolve in; loopback addresses are not Services.
        service_ref(host, "").filter(|s| !s.namespace.is_empty())
    });
    from_host.or_else(|| {
        let mut parts = req.path.trim_start_matches('/').splitn(3, '/');
        let ns = parts.next()?;
        let name = parts.next()?.split('?').next()?;
        service_ref(&format!("{name}.{ns}"), "")
    })
}

fn ingress_handler(
    caches: CacheView,
    state: Arc<Mutex<State>>,
    reporter: Problems,
) -> http::Handler {
    Arc::new(move |req: http::Request| {
        let (caches, state, reporter) = (caches.clone(), state.clone(), reporter.clone());
        Box::pin(async move {
            let Some(svc) = ingress_service(&req) else {
                return http::Response::text(
                    404,
                    "name a Service by Host header (svc.ns) or path prefix /ns/svc/\n",
                );
            };
            let (workload, behaviour) = match caches.resolve(&svc, &reporter) {
                Target::Ready {
                    workload,
                    behaviour,
                } => (workload, behaviour),
                Target::NoService => {
                    return http::Response::text(
                        404,
                        format!("no Service {}/{}\n", svc.namespace, svc.name),
                    );
                }
                other => {
                    return http::Response::text(503, format!("no healthy upstream ({other:?})\n"));
                }
            };
            let base = Series {
                source_workload: DIRECT_SOURCE.into(),
                source_workload_namespace: "unknown".into(),
                destination_workload: workload,
                destination_workload_namespace: svc.namespace.clone(),
                destination_service_name: svc.name.clone(),
                destination_service_namespace: svc.namespace.clone(),
                response_code: 0,
            };
            // Decide the answer now, so that concurrent requests share the error carry fairly.
            let failed = {
                let mut st = lock(&state);
                let carry = st.error_carry.entry(base.clone()).or_default();
                take_whole(carry, behaviour.error_percent / 100.0) == 1
            };
            tokio::time::sleep(Duration::from_secs_f64(behaviour.latency_ms / 1000.0)).await;
            let mut s = base;
            s.response_code = if failed { 500 } else { 200 };
            lock(&state).registry.record(&s, 1, behaviour.latency_ms);
            if failed {
                http::Response::text(500, "simulated error\n")
            } else {
                http::Response::text(200, format!("{}\n", s.destination_workload))
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(ns: &str, name: &str, labels: &BTreeMap<String, String>) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {}, "template": {"metadata": {"labels": labels}}}
        }))
        .unwrap()
    }

    /// What the index replaced: every Deployment of the namespace, the first by name that the
    /// selector picks.
    fn scan(
        deps: &BTreeMap<(String, String), BTreeMap<String, String>>,
        ns: &str,
        selector: &BTreeMap<String, String>,
    ) -> Option<String> {
        deps.iter()
            .filter(|((n, _), labels)| n == ns && selects(selector, Some(labels)))
            .map(|((_, name), _)| name.clone())
            .next()
    }

    fn labels_strategy() -> impl proptest::strategy::Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map("[ab]", "[xy]", 0..3)
    }

    proptest::proptest! {
        /// After any sequence of applies and deletes, and across a relist of what is left, the
        /// index answers as a full scan does.
        #[test]
        fn label_index_answers_as_a_scan(
            ops in proptest::collection::vec(
                ("[pq]", "[d-g]", labels_strategy(), proptest::bool::ANY), 0..40),
            selector in proptest::collection::btree_map("[ab]", "[xy]", 1..3),
        ) {
            let mut index = LabelIndex::default();
            let mut pending = None;
            let mut truth: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
            for (ns, name, labels, delete) in ops {
                let d = dep(&ns, &name, &labels);
                if delete {
                    index.follow(&mut pending, &watcher::Event::Delete(d));
                    truth.remove(&(ns, name));
                } else {
                    index.follow(&mut pending, &watcher::Event::Apply(d));
                    truth.insert((ns, name), labels);
                }
            }
            for ns in ["p", "q"] {
                proptest::prop_assert_eq!(index.first_selected(ns, &selector), scan(&truth, ns, &selector));
            }
            index.follow(&mut pending, &watcher::Event::Init);
            for ((ns, name), labels) in &truth {
                index.follow(&mut pending, &watcher::Event::InitApply(dep(ns, name, labels)));
            }
            index.follow(&mut pending, &watcher::Event::InitDone);
            for ns in ["p", "q"] {
                proptest::prop_assert_eq!(index.first_selected(ns, &selector), scan(&truth, ns, &selector));
            }
        }
    }

    #[test]
    fn carry_gives_exact_long_run_shares() {
        let mut carry = 0.0;
        let total: u64 = (0..1000).map(|_| take_whole(&mut carry, 0.1)).sum();
        assert_eq!(total, 100);
        let mut carry = 0.0;
        let got: Vec<u64> = (0..5).map(|_| take_whole(&mut carry, 0.5)).collect();
        assert_eq!(got, vec![0, 1, 0, 1, 0]);
    }

    #[test]
    fn error_share_is_exact() {
        let mut st = State::default();
        let base = Series {
            source_workload: "loadtester".into(),
            source_workload_namespace: "t".into(),
            destination_workload: "podinfo".into(),
            destination_workload_namespace: "t".into(),
            destination_service_name: "podinfo-canary".into(),
            destination_service_namespace: "t".into(),
            response_code: 0,
        };
        let b = Behaviour {
            error_percent: 10.0,
            latency_ms: 300.0,
            ..Default::default()
        };
        for _ in 0..333 {
            st.answer(&base, 3, &b);
        }
        let total = st.registry.requests(|_| true);
        let errors = st.registry.requests(|s| s.response_code == 500);
        assert_eq!(total, 999);
        assert!((99..=100).contains(&errors), "errors {errors}");

        // traffic=25%: a quarter arrives; traffic=0%: nothing, not even a zero series.
        let quarter = Behaviour {
            traffic_percent: 25.0,
            ..Default::default()
        };
        let mut st = State::default();
        for _ in 0..100 {
            st.answer(&base, 4, &quarter);
        }
        assert_eq!(st.registry.requests(|_| true), 100);
        let none = Behaviour {
            traffic_percent: 0.0,
            ..Default::default()
        };
        let mut st = State::default();
        st.answer(&base, 50, &none);
        assert_eq!(st.registry.requests(|_| true), 0);
        assert!(
            !st.registry.render().contains("podinfo"),
            "no series at all"
        );
    }

    #[test]
    fn primary_hosts_short_and_qualified() {
        assert!(is_primary("podinfo-primary"));
        assert!(is_primary("podinfo-primary.test.svc.cluster.local"));
        assert!(!is_primary("podinfo-canary"));
        assert!(!is_primary("podinfo"));
        assert!(!is_primary("primary.test"));
    }

    #[test]
    fn selector_matching() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let sel = m(&[("app", "podinfo")]);
        assert!(selects(&sel, Some(&m(&[("app", "podinfo"), ("x", "y")]))));
        assert!(!selects(&sel, Some(&m(&[("app", "podinfo-primary")]))));
        assert!(!selects(&sel, None));
    }

    #[test]
    fn ingress_names_services() {
        let req = |host: Option<&str>, path: &str| http::Request {
            method: "GET".into(),
            path: path.into(),
            headers: host
                .map(|h| vec![("host".to_string(), h.to_string())])
                .unwrap_or_default(),
        };
        let svc = |n: &str, ns: &str| {
            Some(ServiceRef {
                name: n.into(),
                namespace: ns.into(),
            })
        };
        let cases = [
            (
                req(Some("podinfo-canary.test"), "/"),
                svc("podinfo-canary", "test"),
            ),
            (
                req(Some("podinfo-canary.test:9898"), "/api"),
                svc("podinfo-canary", "test"),
            ),
            (
                req(Some("podinfo-canary.test.svc.cluster.local"), "/"),
                svc("podinfo-canary", "test"),
            ),
            (
                req(Some("127.0.0.1:4000"), "/test/podinfo-canary/x"),
                svc("podinfo-canary", "test"),
            ),
            (
                req(Some("localhost:4000"), "/test/podinfo-canary"),
                svc("podinfo-canary", "test"),
            ),
            (
                req(None, "/test/podinfo-canary?x=1"),
                svc("podinfo-canary", "test"),
            ),
            (req(Some("127.0.0.1:4000"), "/"), None),
            (req(Some("127.0.0.1:4000"), "/test"), None),
        ];
        for (r, want) in cases {
            assert_eq!(ingress_service(&r), want, "{r:?}");
        }
    }
}
