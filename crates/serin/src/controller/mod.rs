//! `serin controller`: the kube-rs runtime wiring. Watches feed reflector caches; a change of a
//! Canary, its target or primary Deployment, its Services, routes, or a tracked ConfigMap or
//! Secret triggers a reconcile of that Canary at once, and the rollout core's requeue time paces
//! the analysis. Reads come from the caches; writes happen only when the desired state differs.

pub mod api_layer;
pub mod autoscaler;
pub mod backoff;
mod events;
pub mod leader;
mod reconcile;
mod start;
pub mod state;

pub use start::run_with_config;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::api::{Canary, MetricTemplate};
use crate::metrics::prometheus::{Prometheus, ProviderConfig};
use crate::telemetry::Metrics;
use crate::workload;

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
        }
    }
}

/// What every reconcile shares.
pub struct Ctx {
    pub client: Client,
    pub opts: Options,
    pub canaries: Store<Canary>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
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
    /// that would make a reconcile decide from stale progress and repeat a step.
    pub written: std::sync::Mutex<HashMap<String, u64>>,
    /// HPAs, for `spec.autoscalerRef`.
    pub autoscalers: autoscaler::Autoscalers,
    /// Chat alerts.
    pub alerter: crate::alerts::Alerter,
    /// Set once every cache has listed: one initializer waits (see [`store_ready`]) and every
    /// reconcile that asks meanwhile is woken with it.
    pub ready: tokio::sync::OnceCell<bool>,
    /// Consecutive failed reconciles per Canary, for [`error_policy`]'s delay.
    pub backoff: backoff::Backoffs,
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

fn istio_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1beta1",
        kind,
    ))
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

    let (deployments, dep_w) = reflector::store::<Deployment>();
    let dep_stream = watcher(scoped::<Deployment>(&client, ns), wc.clone())
        .default_backoff()
        .reflect(dep_w)
        .touched_objects();
    let (services, svc_w) = reflector::store::<Service>();
    let svc_stream = watcher(scoped::<Service>(&client, ns), wc.clone())
        .default_backoff()
        .reflect(svc_w)
        .touched_objects();
    let (config_maps, cm_w) = reflector::store::<ConfigMap>();
    let cm_stream = watcher(scoped::<ConfigMap>(&client, ns), wc.clone())
        .default_backoff()
        .reflect(cm_w)
        .touched_objects();
    let (secrets, secret_w) = reflector::store::<Secret>();
    let secret_stream = watcher(scoped::<Secret>(&client, ns), wc.clone())
        .default_backoff()
        .reflect(secret_w)
        .touched_objects();
    let vs_resource = istio_resource("VirtualService");
    let dr_resource = istio_resource("DestinationRule");
    let vs_w = reflector::store::Writer::<DynamicObject>::new(vs_resource.clone());
    let virtual_services = vs_w.as_reader();
    let vs_stream = watcher(scoped_dyn(&client, ns, &vs_resource), wc.clone())
        .default_backoff()
        .reflect(vs_w)
        .touched_objects();
    let dr_w = reflector::store::Writer::<DynamicObject>::new(dr_resource.clone());
    let destination_rules = dr_w.as_reader();
    let dr_stream = watcher(scoped_dyn(&client, ns, &dr_resource), wc.clone())
        .default_backoff()
        .reflect(dr_w)
        .touched_objects();
    // Templates only feed a cache; nothing is reconciled when one changes.
    let (templates, tpl_w) = reflector::store::<MetricTemplate>();
    let tpl_stream = watcher(scoped::<MetricTemplate>(&client, ns), wc.clone())
        .default_backoff()
        .reflect(tpl_w)
        .touched_objects();
    // HPAs: the user's are read for `spec.autoscalerRef`; the primary ones are owned.
    let hpa_version = autoscaler::discover(&client).await?;
    let hpa_resource = autoscaler::resource(hpa_version);
    let hpa_w = reflector::store::Writer::<DynamicObject>::new(hpa_resource.clone());
    let hpa_store = hpa_w.as_reader();
    let hpa_stream = watcher(scoped_dyn(&client, ns, &hpa_resource), wc.clone())
        .default_backoff()
        .reflect(hpa_w)
        .touched_objects();
    let tpl_task = tokio::spawn(tpl_stream.for_each(|_| futures::future::ready(())));

    let controller = Controller::new(scoped::<Canary>(&client, ns), wc.clone())
        .with_config(ControllerConfig::default().concurrency(opts.concurrency));
    let canaries = controller.store();

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
        written: std::sync::Mutex::new(HashMap::new()),
        ready: tokio::sync::OnceCell::new(),
        backoff: Default::default(),
        autoscalers: autoscaler::Autoscalers {
            store: hpa_store,
            resource: hpa_resource.clone(),
            version: hpa_version,
        },
        alerter,
    });

    let totals_task = tokio::spawn(count_canaries(canaries.clone(), metrics.clone()));
    let prune_task = tokio::spawn(prune_written(ctx.clone()));
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
        let canaries = canaries.clone();
        move |d: Deployment| canaries_for_deployment(&canaries, &d)
    };
    let by_cm = {
        let (canaries, deployments) = (canaries.clone(), deployments.clone());
        move |cm: ConfigMap| {
            canaries_for_config(&canaries, &deployments, &cm.metadata, ConfigKind::ConfigMap)
        }
    };
    let by_secret = {
        let (canaries, deployments) = (canaries.clone(), deployments.clone());
        move |s: Secret| {
            canaries_for_config(&canaries, &deployments, &s.metadata, ConfigKind::Secret)
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
        .owns_stream(svc_stream)
        .owns_stream_with(vs_stream, vs_resource)
        .owns_stream_with(dr_stream, dr_resource)
        .owns_stream_with(hpa_stream, hpa_resource)
        .watches_stream(cm_stream, by_cm)
        .watches_stream(secret_stream, by_secret)
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
    tpl_task.abort();
    totals_task.abort();
    prune_task.abort();
    synced_task.abort();
    if let Some(s) = server {
        s.abort();
    }
    info!("serin controller stopped");
    Ok(())
}

/// Forgets the status versions of deleted Canaries once a minute, so that [`Ctx::written`] stays
/// as large as the set of Canaries rather than everything ever seen.
async fn prune_written(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let live: std::collections::HashSet<String> = ctx
            .canaries
            .state()
            .iter()
            .filter_map(|c| c.metadata.uid.clone())
            .collect();
        if let Ok(mut w) = ctx.written.lock() {
            w.retain(|uid, _| live.contains(uid));
        }
    }
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

fn canaries_for_deployment(canaries: &Store<Canary>, d: &Deployment) -> Vec<ObjectRef<Canary>> {
    let Some(name) = d.metadata.name.as_deref() else {
        return vec![];
    };
    let ns = d.metadata.namespace.as_deref();
    canaries
        .state()
        .iter()
        .filter(|c| c.metadata.namespace.as_deref() == ns)
        .filter(|c| {
            let t = &c.spec.target_ref.name;
            t == name || name.strip_suffix("-primary") == Some(t.as_str())
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

#[derive(Clone, Copy)]
enum ConfigKind {
    ConfigMap,
    Secret,
}

fn canaries_for_config(
    canaries: &Store<Canary>,
    deployments: &Store<Deployment>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: ConfigKind,
) -> Vec<ObjectRef<Canary>> {
    let (Some(name), Some(ns)) = (meta.name.as_deref(), meta.namespace.as_deref()) else {
        return vec![];
    };
    canaries
        .state()
        .iter()
        .filter(|c| c.metadata.namespace.as_deref() == Some(ns))
        .filter(|c| {
            let target = ObjectRef::<Deployment>::new(&c.spec.target_ref.name).within(ns);
            let Some(d) = deployments.get(&target) else {
                return false;
            };
            let Some(pod) = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
                return false;
            };
            let refs = workload::config_refs(pod);
            match kind {
                ConfigKind::ConfigMap => refs.config_maps.contains_key(name),
                ConfigKind::Secret => refs.secrets.contains_key(name),
            }
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}
