//! `serin controller`: the kube-rs runtime wiring. Watches feed reflector caches; a change of a
//! Canary, its target or primary Deployment, its Services, routes, or a tracked ConfigMap or
//! Secret triggers a reconcile of that Canary at once, and the rollout core's requeue time paces
//! the analysis. Reads come from the caches; writes happen only when the desired state differs.
//!
//! Every watch re-lists after an error and tells `/readyz` while it cannot follow the cluster,
//! and Canaries are decoded one at a time so that one serin cannot read is skipped and reported
//! ([`watches`]). Which Canaries an event of a Deployment, ConfigMap or Secret concerns is
//! answered by an [`index`] the watches keep, not by scanning every cached Canary.

pub mod admission;
pub mod api_layer;
pub mod autoscaler;
pub mod backoff;
pub mod cached;
pub mod events;
pub mod index;
pub mod leader;
mod reconcile;
mod start;
pub mod state;
pub mod watches;

pub use start::run_with_config;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::api::istio_resources::{DestinationRule, VirtualService};
use crate::api::{Canary, MetricTemplate};
use crate::metrics::prometheus::{Prometheus, ProviderConfig};
use crate::telemetry::Metrics;
use crate::workload;
use cached::Cached;

/// How long in-flight reconciles may run on after the stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Flags of `serin controller`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only this namespace.
    pub namespace: Option<String>,
    /// Prometheus for the built-in metrics when a Canary has no `spec.metricsServer`.
    pub metrics_server: String,
    /// Canaries reconciled at the same time.
    pub concurrency: u16,
    /// Where `/metrics` and `/healthz` listen; `None` serves nothing.
    pub listen: Option<SocketAddr>,
    /// `--leader-elect`: only the holder of this Lease runs the controller.
    pub leader: Option<leader::LeaderOptions>,
    /// The global notifier and cluster name (`--slack-url`, `--msteams-url`, `--cluster-name`, ...).
    pub alerts: crate::alerts::GlobalArgs,
    /// `--event-webhook`: receives the Events of Canaries without `event` webhooks.
    pub event_webhook: Option<String>,
    /// The rollout queue's caps and the freeze windows' ConfigMap.
    pub admission: admission::AdmissionOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: None,
            metrics_server: "http://prometheus:9090".into(),
            concurrency: 16,
            listen: None,
            leader: None,
            alerts: Default::default(),
            event_webhook: None,
            admission: Default::default(),
        }
    }
}

/// Why a reconcile failed; it is tried again with a per-Canary backoff. (What a person must fix
/// is no error: it holds the Canary with a condition, see [`state::HoldReason`].)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Only an object the API server has not stored yet lacks one.
    #[error("the Canary has no uid yet")]
    NoUid,
    #[error("serializing an object to apply: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A cache entry whose text does not parse back (`cached`): written from the typed object,
    /// so only a serin bug gets here; the reconcile stops rather than take it for absent.
    #[error("a cached {kind} does not parse back: {error}")]
    Cached {
        kind: &'static str,
        error: serde_json::Error,
    },
}

impl Error {
    /// The `kind` label of `serin_reconcile_errors_total`: a short fixed set, so that a dashboard
    /// can tell a conflict from a refusal (invalid, forbidden: a person must look) and from an
    /// API server that is away.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) => match s.code {
                409 => "conflict",
                422 | 400 => "invalid",
                401 | 403 => "forbidden",
                404 => "not_found",
                429 => "throttled",
                500..=599 => "server_error",
                _ => "api_error",
            },
            Error::Kube(kube::Error::Service(e))
                if e.downcast_ref::<api_layer::NotLeader>().is_some() =>
            {
                "not_leader"
            }
            Error::Kube(_) => "transport",
            Error::NoUid => "no_uid",
            Error::Serialize(_) => "serialize",
            Error::Cached { .. } => "cache",
        }
    }
}

/// What every reconcile shares.
pub struct Ctx {
    pub client: Client,
    pub opts: Options,
    pub canaries: Store<Canary>,
    pub deployments: Store<Cached<Deployment>>,
    pub services: Store<Cached<Service>>,
    pub config_maps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
    pub templates: Store<MetricTemplate>,
    pub virtual_services: Store<DynamicObject>,
    pub destination_rules: Store<DynamicObject>,
    pub vs_resource: ApiResource,
    pub dr_resource: ApiResource,
    pub recorder: events::EventRecorder,
    pub http: reqwest::Client,
    pub http_insecure: reqwest::Client,
    pub providers: Mutex<HashMap<ProviderConfig, Prometheus>>,
    pub metrics: Arc<Metrics>,
    /// resourceVersion of serin's last status write per Canary uid: a cached Canary older than
    /// that would make a reconcile decide from stale progress and repeat a step. An entry goes
    /// with its Canary's Delete event (or a relist that no longer lists it).
    pub written: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    /// HPAs, for `spec.autoscalerRef`.
    pub autoscalers: autoscaler::Autoscalers,
    /// Chat alerts.
    pub alerter: crate::alerts::Alerter,
    /// Set once every cache has listed: one initializer waits (see [`store_ready`]) and every
    /// reconcile that asks meanwhile is woken with it.
    pub ready: tokio::sync::OnceCell<bool>,
    /// Consecutive failed reconciles per Canary, for [`error_policy`]'s delay.
    pub backoff: backoff::Backoffs,
    /// The rollout queue and freeze windows.
    pub admission: admission::Admissions,
}

impl Ctx {
    /// Waits until every cache has listed once, so that a reconcile never mistakes "not listed
    /// yet" for "does not exist".
    pub async fn caches_ready(&self) -> bool {
        *self.ready.get_or_init(|| self.wait_for_caches()).await
    }

    async fn wait_for_caches(&self) -> bool {
        store_ready(&self.canaries).await
            && store_ready(&self.deployments).await
            && store_ready(&self.services).await
            && store_ready(&self.config_maps).await
            && store_ready(&self.secrets).await
            && store_ready(&self.templates).await
            && store_ready(&self.virtual_services).await
            && store_ready(&self.destination_rules).await
            && store_ready(&self.autoscalers.store).await
    }
}

/// kube's `Store::wait_until_ready` is a oneshot behind a mutex: of several tasks waiting at once
/// (kube's own controller machinery waits on the same stores) only the last to poll is woken.
/// Polling again every 200 ms bounds a missed wake-up; `false` when the writer is gone.
async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(ready) =
            tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await
        {
            return ready.is_ok();
        }
    }
}

/// The caches of Istio objects stay untyped, so that one object the typed model cannot read does
/// not stop the whole watch; they watch the version serin writes.
fn istio_resource<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// Exits early, with what to do, when the CRDs serin needs are not installed: a watcher on a
/// missing resource would back off forever in silence.
pub async fn check_crds(client: &Client) -> anyhow::Result<()> {
    for (gv, plural, fix) in [
        (
            "flagger.app/v1beta1",
            "canaries",
            "kubectl apply -f crds/ (or `serin crds | kubectl apply -f -`)",
        ),
        (
            "flagger.app/v1beta1",
            "metrictemplates",
            "kubectl apply -f crds/",
        ),
        (
            "networking.istio.io/v1beta1",
            "virtualservices",
            "install Istio (its CRDs)",
        ),
        (
            "networking.istio.io/v1beta1",
            "destinationrules",
            "install Istio (its CRDs)",
        ),
    ] {
        let found = match client.list_api_group_resources(gv).await {
            Ok(list) => list.resources.iter().any(|r| r.name == plural),
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(anyhow::anyhow!("cannot reach the API server: {e}")),
        };
        if !found {
            anyhow::bail!("the API server does not serve {plural}.{gv}: {fix}");
        }
    }
    Ok(())
}

fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn scoped_dyn(client: &Client, ns: Option<&str>, ar: &ApiResource) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    run_with(client, opts, Arc::new(Metrics::new()), shutdown).await
}

/// [`run`] with the metrics registry the caller serves.
pub async fn run_with(
    client: Client,
    opts: Options,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    check_crds(&client).await?;
    let ns = opts.namespace.clone();
    let ns = ns.as_deref();
    let wc = watcher::Config::default().any_semantic();
    let health = metrics.ops.health.clone();
    let index = Arc::new(std::sync::Mutex::new(index::Index::new()));

    // Cached entries: slimmed and kept as text as they are decoded (`cached`).
    let (deployments, dep_w) = reflector::store::<Cached<Deployment>>();
    let dep_stream = watches::resilient(
        "deployments",
        scoped::<Cached<Deployment>>(&client, ns),
        wc.clone(),
        health.clone(),
    )
    .map(index_deployments(index.clone()))
    .reflect(dep_w)
    .touched_objects();
    let (services, svc_w) = reflector::store::<Cached<Service>>();
    let svc_stream = watches::resilient(
        "services",
        scoped::<Cached<Service>>(&client, ns),
        wc.clone(),
        health.clone(),
    )
    .reflect(svc_w)
    .touched_objects();
    let (config_maps, cm_w) = reflector::store::<ConfigMap>();
    let cm_stream = watches::resilient(
        "configmaps",
        scoped::<ConfigMap>(&client, ns),
        wc.clone(),
        health.clone(),
    )
    .modify(|o| watches::slim(o, watches::Keep::Read))
    .reflect(cm_w)
    .touched_objects();
    let (secrets, secret_w) = reflector::store::<Secret>();
    let secret_stream = watches::resilient(
        "secrets",
        scoped::<Secret>(&client, ns),
        wc.clone(),
        health.clone(),
    )
    .modify(|o| watches::slim(o, watches::Keep::Read))
    .reflect(secret_w)
    .touched_objects();
    let vs_resource = istio_resource::<VirtualService>();
    let dr_resource = istio_resource::<DestinationRule>();
    let vs_w = reflector::store::Writer::<DynamicObject>::new(vs_resource.clone());
    let virtual_services = vs_w.as_reader();
    let vs_stream = watches::resilient(
        "virtualservices",
        scoped_dyn(&client, ns, &vs_resource),
        wc.clone(),
        health.clone(),
    )
    .modify(watches::slim_istio)
    .reflect(vs_w)
    .touched_objects();
    let dr_w = reflector::store::Writer::<DynamicObject>::new(dr_resource.clone());
    let destination_rules = dr_w.as_reader();
    let dr_stream = watches::resilient(
        "destinationrules",
        scoped_dyn(&client, ns, &dr_resource),
        wc.clone(),
        health.clone(),
    )
    .modify(watches::slim_istio)
    .reflect(dr_w)
    .touched_objects();
    // Canaries and templates are decoded one object at a time, so that one serin cannot read is
    // skipped and reported instead of failing the whole list (see `watches`).
    let (reports_tx, reports_rx) = tokio::sync::mpsc::unbounded_channel();
    let unreadable = |kind: &str| {
        metrics
            .ops
            .unreadable
            .get_or_create(&crate::telemetry::ops::KindLabels { kind: kind.into() })
            .clone()
    };
    // A template that appears or changes reconciles the Canaries naming it (see `by_template`).
    let (templates, tpl_w) = reflector::store::<MetricTemplate>();
    let tpl_stream = watches::tolerant(
        "metrictemplates",
        scoped_dyn(&client, ns, &ApiResource::erase::<MetricTemplate>(&())),
        wc.clone(),
        health.clone(),
        templates.clone(),
        reports_tx.clone(),
        unreadable("MetricTemplate"),
    )
    .modify(|o| watches::slim(o, watches::Keep::Read))
    .reflect(tpl_w)
    .touched_objects();
    // HPAs: the user's are read for `spec.autoscalerRef`; the primary ones are owned.
    let hpa_resource = autoscaler::resource();
    let hpa_w = reflector::store::Writer::<DynamicObject>::new(hpa_resource.clone());
    let hpa_store = hpa_w.as_reader();
    let hpa_stream = watches::resilient(
        "horizontalpodautoscalers",
        scoped_dyn(&client, ns, &hpa_resource),
        wc.clone(),
        health.clone(),
    )
    .modify(|o| watches::slim(o, watches::Keep::Read))
    .reflect(hpa_w)
    .touched_objects();

    let canary_w = reflector::store::Writer::<Canary>::default();
    let canaries = canary_w.as_reader();
    let written = Arc::new(std::sync::Mutex::new(HashMap::new()));

    let (http, http_insecure) =
        crate::hooks::clients().map_err(|e| anyhow::anyhow!("HTTP client: {e}"))?;
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| "serin".into());
    let recorder = events::EventRecorder::new(client.clone(), instance);
    let alerter = crate::alerts::Alerter::new(&opts.alerts, http.clone(), metrics.clone());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        opts: opts.clone(),
        canaries: canaries.clone(),
        deployments: deployments.clone(),
        services,
        config_maps,
        secrets,
        templates,
        virtual_services,
        destination_rules,
        vs_resource: vs_resource.clone(),
        dr_resource: dr_resource.clone(),
        recorder,
        http,
        http_insecure,
        providers: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        written: written.clone(),
        ready: tokio::sync::OnceCell::new(),
        backoff: Default::default(),
        admission: admission::Admissions::start(
            &client,
            opts.admission.clone(),
            ns,
            health.clone(),
        )
        .await,
        autoscalers: autoscaler::Autoscalers {
            store: hpa_store,
            resource: hpa_resource.clone(),
        },
        alerter,
    });

    let canary_stream = watches::tolerant(
        "canaries",
        scoped_dyn(&client, ns, &ApiResource::erase::<Canary>(&())),
        wc.clone(),
        health.clone(),
        canaries.clone(),
        reports_tx,
        unreadable("Canary"),
    )
    .modify(|o| watches::slim(o, watches::Keep::Read))
    .map(index_canaries(index.clone(), written))
    .reflect(canary_w)
    .applied_objects();
    let controller = Controller::for_stream(canary_stream, canaries.clone())
        .with_config(ControllerConfig::default().concurrency(opts.concurrency));
    let report_task = tokio::spawn(watches::report_unreadable(ctx.clone(), reports_rx));
    let totals_task = tokio::spawn(count_canaries(canaries.clone(), metrics.clone()));
    let synced_task = tokio::spawn(mark_synced(ctx.clone()));
    let server = opts.listen.map(|addr| {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::telemetry::serve(addr, m).await {
                error!("serving /metrics on {addr}: {e}");
            }
        })
    });
    if let Some(addr) = opts.listen {
        info!("serving /metrics and /healthz on {addr}");
    }

    let by_target = {
        let index = index.clone();
        move |d: Cached<Deployment>| {
            let (ns, name) = namespaced_name(d.meta());
            let found = lock(&index).canaries_for_deployment(&ns, &name);
            canary_refs(&ns, found)
        }
    };
    // Owned objects map to their owner; the apex Service and VirtualService and the user's HPA
    // also to the Canaries naming them (a taken-over one has no owner reference), so that a
    // settled Canary needs no timer to see them change.
    let owned_or_named = |kind: index::Named| {
        let index = index.clone();
        move |meta: &ObjectMeta| {
            let (ns, name) = namespaced_name(meta);
            let mut refs = canary_refs(&ns, lock(&index).canaries_naming(kind, &ns, &name));
            refs.extend(
                meta.owner_references
                    .iter()
                    .flatten()
                    .filter_map(|o| ObjectRef::<Canary>::from_owner_ref(Some(&ns), o, ())),
            );
            refs
        }
    };
    let by_apex_service = owned_or_named(index::Named::Apex);
    let by_apex_vs = owned_or_named(index::Named::Apex);
    let by_autoscaler = owned_or_named(index::Named::Autoscaler);
    let by_config = |kind: index::ConfigKind| {
        let index = index.clone();
        move |meta: &ObjectMeta| {
            let (ns, name) = namespaced_name(meta);
            let found = lock(&index).canaries_for_config(kind, &ns, &name);
            canary_refs(&ns, found)
        }
    };
    let by_cm = {
        let f = by_config(index::ConfigKind::ConfigMap);
        move |cm: ConfigMap| f(&cm.metadata)
    };
    let by_secret = {
        let f = by_config(index::ConfigKind::Secret);
        move |s: Secret| f(&s.metadata)
    };

    // So that a Canary held for a missing template goes on as soon as the template is applied;
    // templates change rarely, so a scan of the cache here costs less than an index.
    let by_template = {
        let canaries = canaries.clone();
        move |t: MetricTemplate| {
            let (ns, name) = namespaced_name(&t.metadata);
            canaries
                .state()
                .iter()
                .filter(|c| names_template(c, &ns, &name))
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        }
    };

    // The shutdown trigger is shared: kube stops taking new work on it, and a bounded grace
    // period after it ends the run even when kube's applier would keep waiting.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grace = {
        let rx = stop_rx.clone();
        async move {
            stopped(rx).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    info!(
        namespace = ns.unwrap_or("(all)"),
        "serin controller started"
    );
    let running = controller
        .watches_stream(dep_stream, by_target)
        .watches_stream(svc_stream, move |s: Cached<Service>| {
            by_apex_service(s.meta())
        })
        .watches_stream_with(
            vs_stream,
            move |o: DynamicObject| by_apex_vs(&o.metadata),
            vs_resource,
        )
        .owns_stream_with(dr_stream, dr_resource)
        .watches_stream_with(
            hpa_stream,
            move |o: DynamicObject| by_autoscaler(&o.metadata),
            hpa_resource,
        )
        .watches_stream(cm_stream, by_cm)
        .watches_stream(secret_stream, by_secret)
        .watches_stream(tpl_stream, by_template)
        .graceful_shutdown_on(stopped(stop_rx))
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|res| {
            if let Err(e) = res {
                use kube::runtime::controller::Error as E;
                match e {
                    // error_policy has logged these already.
                    E::ObjectNotFound(_) | E::ReconcilerFailed(..) => {}
                    e => warn!("controller: {e}"),
                }
            }
            futures::future::ready(())
        });
    tokio::select! {
        _ = running => {}
        _ = grace => warn!("in-flight reconciles did not finish within {SHUTDOWN_GRACE:?} of the stop signal; stopping anyway"),
    }
    totals_task.abort();
    report_task.abort();
    synced_task.abort();
    if let Some(s) = server {
        s.abort();
    }
    info!("serin controller stopped");
    Ok(())
}

/// `flagger_canary_total{namespace}`, refreshed from the cache every 10 s (Flagger's control-loop
/// tick) rather than on every reconcile, where counting would cost O(canaries) each time.
async fn count_canaries(canaries: Store<Canary>, metrics: Arc<Metrics>) {
    let mut seen = std::collections::BTreeSet::new();
    let mut seen_phases = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let mut counts: std::collections::BTreeMap<String, i64> =
            seen.iter().map(|ns: &String| (ns.clone(), 0)).collect();
        for c in canaries.state() {
            *counts
                .entry(c.metadata.namespace.clone().unwrap_or_default())
                .or_default() += 1;
        }
        count_phases(&canaries, &metrics, &mut seen_phases);
        for (namespace, n) in counts {
            metrics
                .canary_total
                .get_or_create(&crate::telemetry::Ns {
                    namespace: namespace.clone(),
                })
                .set(n);
            seen.insert(namespace);
        }
    }
}

/// `serin_canaries{phase}` from the same cache pass; phases seen before and now empty drop to 0.
fn count_phases(
    canaries: &Store<Canary>,
    metrics: &Metrics,
    seen: &mut std::collections::BTreeSet<String>,
) {
    let mut by_phase: std::collections::BTreeMap<String, i64> =
        seen.iter().map(|p| (p.clone(), 0)).collect();
    for c in canaries.state() {
        let phase = c
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "Unknown".into());
        *by_phase.entry(phase).or_default() += 1;
    }
    for (phase, n) in by_phase {
        metrics
            .ops
            .canaries
            .get_or_create(&crate::telemetry::ops::PhaseLabels {
                phase: phase.clone(),
            })
            .set(n);
        seen.insert(phase);
    }
}

/// `/readyz` turns ready once every cache has listed ([`Ctx::caches_ready`] wakes every waiter).
async fn mark_synced(ctx: Arc<Ctx>) {
    if ctx.caches_ready().await {
        ctx.metrics
            .ops
            .health
            .caches_synced
            .store(true, std::sync::atomic::Ordering::Release);
        info!("caches synced: ready");
    }
}

/// Retries a failed reconcile after a per-Canary exponential backoff ([`backoff`]); a watch
/// event on the Canary or its objects still reconciles it at once.
fn error_policy(canary: Arc<Canary>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics
        .reconciles
        .get_or_create(&crate::telemetry::ResultLabels {
            result: "error".into(),
        })
        .inc();
    ctx.metrics
        .ops
        .reconcile_errors
        .get_or_create(&crate::telemetry::ops::ErrorKindLabels {
            kind: err.kind().into(),
        })
        .inc();
    let retry_in = ctx.backoff.failed(&backoff::key(&canary));
    ctx.backoff.prune(std::time::Instant::now(), || {
        ctx.canaries
            .state()
            .iter()
            .map(|c| backoff::key(c))
            .collect()
    });
    warn!(
        canary = canary.metadata.name.as_deref().unwrap_or(""),
        namespace = canary.metadata.namespace.as_deref().unwrap_or(""),
        kind = err.kind(),
        ?retry_in,
        "reconcile failed: {err}"
    );
    Action::requeue(retry_in)
}

fn namespaced_name(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether one of the Canary's metrics refers to MetricTemplate `ns/name`.
fn names_template(canary: &Canary, ns: &str, name: &str) -> bool {
    let own = canary.metadata.namespace.as_deref().unwrap_or_default();
    canary.spec.analysis().is_some_and(|a| {
        a.metrics.iter().any(|m| {
            m.template_ref
                .as_ref()
                .is_some_and(|r| r.name == name && r.namespace_or(own) == ns)
        })
    })
}

fn canary_refs(ns: &str, names: Vec<String>) -> Vec<ObjectRef<Canary>> {
    names
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(ns))
        .collect()
}

/// The index stays usable even if a panic poisoned its lock: it holds no invariant a half
/// update could break beyond one stale answer, which the next event corrects.
fn lock(index: &std::sync::Mutex<index::Index>) -> std::sync::MutexGuard<'_, index::Index> {
    index.lock().unwrap_or_else(|p| p.into_inner())
}

/// Feeds the index from the Canary watch, and forgets the stale-cache guard's entry
/// ([`Ctx::written`]) of a Canary that is gone; a relist replaces both (it reports no deletions).
fn index_canaries(
    index: Arc<std::sync::Mutex<index::Index>>,
    written: Arc<std::sync::Mutex<HashMap<String, u64>>>,
) -> impl FnMut(WatchItem<Canary>) -> WatchItem<Canary> {
    /// Namespace, name, target, uid and the objects a listed Canary names.
    type Listed = (
        String,
        String,
        String,
        Option<String>,
        Vec<(index::Named, String)>,
    );
    let mut listing: Option<Vec<Listed>> = None;
    move |item| {
        let Ok(ev) = &item else { return item };
        let entry = |c: &Canary| {
            let (ns, name) = namespaced_name(&c.metadata);
            let mut names = vec![(index::Named::Apex, c.apex_name())];
            if let Some(a) = &c.spec.autoscaler_ref {
                names.push((index::Named::Autoscaler, a.name.clone()));
            }
            (
                ns,
                name,
                c.spec.target_ref.name.clone(),
                c.metadata.uid.clone(),
                names,
            )
        };
        match ev {
            watcher::Event::Init => listing = Some(Vec::new()),
            watcher::Event::InitApply(c) => {
                if let Some(l) = listing.as_mut() {
                    l.push(entry(c));
                }
            }
            watcher::Event::InitDone => {
                let listed = listing.take().unwrap_or_default();
                let live: std::collections::HashSet<String> =
                    listed.iter().filter_map(|e| e.3.clone()).collect();
                let mut ix = lock(&index);
                ix.replace_canaries(listed.iter().map(|(ns, n, t, _, _)| (ns, n, t)));
                for (ns, n, _, _, names) in listed {
                    ix.set_names(&ns, &n, names);
                }
                drop(ix);
                if let Ok(mut w) = written.lock() {
                    w.retain(|uid, _| live.contains(uid));
                }
            }
            watcher::Event::Apply(c) => {
                let (ns, name, target, _, names) = entry(c);
                let mut ix = lock(&index);
                ix.upsert_canary(&ns, &name, &target);
                ix.set_names(&ns, &name, names);
            }
            watcher::Event::Delete(c) => {
                let (ns, name, _, uid, _) = entry(c);
                lock(&index).remove_canary(&ns, &name);
                if let (Some(uid), Ok(mut w)) = (uid, written.lock()) {
                    w.remove(&uid);
                }
            }
        }
        item
    }
}

/// Feeds the index with the configs each Deployment's pod template references.
fn index_deployments(
    index: Arc<std::sync::Mutex<index::Index>>,
) -> impl FnMut(WatchItem<Cached<Deployment>>) -> WatchItem<Cached<Deployment>> {
    let mut listing: Option<Vec<(String, String, index::Refs)>> = None;
    move |item| {
        let Ok(ev) = &item else { return item };
        let entry = |c: &Cached<Deployment>| {
            let (ns, name) = namespaced_name(c.meta());
            // The entry was just made from a typed Deployment: its text parses, or serin has a
            // bug, which the reconcile of its Canary reports (`Error::Cached`).
            let refs = c
                .object()
                .map_err(|e| error!(entry = ?c, "a cached Deployment does not parse back: {e}"))
                .ok()
                .and_then(|d| d.spec.template.spec)
                .as_ref()
                .map(|pod| {
                    let r = workload::config_refs(pod);
                    index::Refs {
                        config_maps: r.config_maps.into_keys().collect(),
                        secrets: r.secrets.into_keys().collect(),
                    }
                })
                .unwrap_or_default();
            (ns, name, refs)
        };
        match ev {
            watcher::Event::Init => listing = Some(Vec::new()),
            watcher::Event::InitApply(d) => {
                if let Some(l) = listing.as_mut() {
                    l.push(entry(d));
                }
            }
            watcher::Event::InitDone => {
                lock(&index).replace_deployments(listing.take().unwrap_or_default());
            }
            watcher::Event::Apply(d) => {
                let (ns, name, refs) = entry(d);
                lock(&index).upsert_deployment(&ns, &name, refs);
            }
            watcher::Event::Delete(d) => {
                let (ns, name, _) = entry(d);
                lock(&index).remove_deployment(&ns, &name);
            }
        }
        item
    }
}

type WatchItem<K> = Result<watcher::Event<K>, watcher::Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_maps_to_the_canaries_naming_it_in_their_namespace_or_its_own() {
        let c: Canary = serde_json::from_value(serde_json::json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "c", "namespace": "apps"},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "t"},
                "service": {"port": 80},
                "analysis": {"interval": "1m", "threshold": 1, "stepWeight": 10, "metrics": [
                    {"name": "a", "templateRef": {"name": "local"}},
                    {"name": "b", "templateRef": {"name": "shared", "namespace": "flagger"}},
                    {"name": "c", "query": "up"},
                ]},
            },
        }))
        .unwrap();
        for (ns, name, want) in [
            ("apps", "local", true),
            ("flagger", "shared", true),
            ("flagger", "local", false),
            ("apps", "shared", false),
            ("apps", "up", false),
        ] {
            assert_eq!(names_template(&c, ns, name), want, "{ns}/{name}");
        }
    }

    fn canary(name: &str, target: &str) -> Canary {
        let mut c: Canary = serde_json::from_value(serde_json::json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                "service": {"port": 9898},
            },
        }))
        .unwrap();
        c.metadata.resource_version = Some("1".into());
        c
    }

    #[test]
    fn the_canary_watch_keeps_the_index_and_prunes_the_stale_cache_guard() {
        let index = Arc::new(std::sync::Mutex::new(index::Index::new()));
        let written = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let mut feed = index_canaries(index.clone(), written.clone());
        let mut send = |ev| {
            let _ = feed(Ok(ev));
        };
        send(watcher::Event::Apply(canary("a", "app")));
        send(watcher::Event::Apply(canary("b", "other")));
        written.lock().unwrap().insert("uid-a".to_string(), 7);
        written.lock().unwrap().insert("uid-b".to_string(), 9);
        assert_eq!(
            lock(&index).canaries_for_deployment("ns", "app-primary"),
            ["a"]
        );

        send(watcher::Event::Delete(canary("a", "app")));
        assert!(lock(&index).canaries_for_deployment("ns", "app").is_empty());
        assert_eq!(
            written.lock().unwrap().keys().collect::<Vec<_>>(),
            ["uid-b"]
        );

        // A relist after an outage reports no deletions: what it does not list is forgotten.
        send(watcher::Event::Init);
        send(watcher::Event::InitApply(canary("c", "app")));
        send(watcher::Event::InitDone);
        assert!(written.lock().unwrap().is_empty());
        assert!(
            lock(&index)
                .canaries_for_deployment("ns", "other")
                .is_empty()
        );
        assert_eq!(lock(&index).canaries_for_deployment("ns", "app"), ["c"]);
    }

    #[test]
    fn the_deployment_watch_indexes_the_configs_of_pod_templates() {
        let index = Arc::new(std::sync::Mutex::new(index::Index::new()));
        lock(&index).upsert_canary("ns", "podinfo", "podinfo");
        let mut feed = index_deployments(index.clone());
        // Decoded as the watch decodes it.
        let d: Cached<Deployment> = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "podinfo", "namespace": "ns"},
            "spec": {
                "selector": {},
                "template": {"spec": {
                    "containers": [{"name": "app", "envFrom": [{"configMapRef": {"name": "settings"}}]}],
                    "volumes": [{"name": "v", "secret": {"secretName": "token"}}],
                }},
            },
        }))
        .unwrap();
        let _ = feed(Ok(watcher::Event::Apply(d.clone())));
        let ix = |kind, name: &str| lock(&index).canaries_for_config(kind, "ns", name);
        assert_eq!(ix(index::ConfigKind::ConfigMap, "settings"), ["podinfo"]);
        assert_eq!(ix(index::ConfigKind::Secret, "token"), ["podinfo"]);
        let _ = feed(Ok(watcher::Event::Delete(d)));
        assert!(ix(index::ConfigKind::ConfigMap, "settings").is_empty());
    }
}
