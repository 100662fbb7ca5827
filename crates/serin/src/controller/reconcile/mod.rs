//! One reconcile of one Canary, in four steps:
//! - observe ([`observe`]): the Canary, its target, primary and configs, from the watch caches;
//! - decide ([`checks`]): the rollout core's decision, answering its needs with webhook calls
//!   ([`webhooks`]) and metric queries;
//! - act ([`apply`]): idempotent applies, only where the cache differs;
//! - record ([`record`]): Events, alerts, metrics and the status.
//!
//! A configuration problem stops the steps with a hold ([`record`]); deletion with
//! `revertOnDeletion` runs [`finalizer`] instead. The domain rules live in pure functions
//! elsewhere: the decision in `serin-core`, the desired objects in [`crate::router`] and
//! [`crate::workload`], metric resolution in [`crate::metrics`].

mod admit;
mod apply;
mod checks;
mod finalizer;
mod observe;
mod record;
mod refused;
#[cfg(test)]
mod tests;
mod webhooks;

/// What the watch caches keep of managedFields depends on these (see `watches::slim`).
pub(super) use apply::{FLAGGER_MANAGERS, TAKEOVER_MARK};

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::instrument;

use super::cached::Cached;
use super::state;
use super::{Ctx, Error, backoff};
use crate::api::{Canary, MetricCheckStatus};
use crate::rollout::messages as msg;
use crate::router;
use crate::telemetry::NameNs;

/// How long to wait before looking again at a Canary that cannot progress until a person fixes
/// something; a watch event on the Canary or its objects comes sooner.
const HOLD_RETRY: Duration = Duration::from_secs(60);

/// Whether an Event is a warning.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KubeEventType {
    Normal,
    Warning,
}

/// [`Canary::with_stored_additions`], cloning only a Canary that has the annotation.
fn with_stored_additions(canary: Arc<Canary>) -> Arc<Canary> {
    if canary
        .annotations()
        .contains_key(crate::api::STATUS_ADDITIONS_ANNOTATION)
    {
        Arc::new((*canary).clone().with_stored_additions())
    } else {
        canary
    }
}

/// One reconcile, in a span naming the Canary (`name.namespace`) that every log line and
/// Event of it carries.
#[instrument(skip_all, fields(canary = %msg::qualified(&canary.name_any(), canary.namespace().as_deref().unwrap_or_default())))]
pub async fn reconcile(canary: Arc<Canary>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !ctx.caches_ready().await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if record::cache_is_behind(&canary, &ctx) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let start = Instant::now();
    let key = backoff::key(&canary);
    let mut r = Reconcile {
        retrying: ctx.backoff.retrying(&key),
        ns: canary.namespace().unwrap_or_default(),
        name: canary.name_any(),
        now: Utc::now(),
        canary: with_stored_additions(canary),
        ctx: ctx.clone(),
        metric_results: None,
        no_data_since: None,
        analysed: false,
        cookies: None,
        event_chain: Default::default(),
        refusal: Default::default(),
        pending: None,
    };
    let res = r.run().await;
    ctx.metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    if r.analysed {
        ctx.metrics
            .canary_duration
            .get_or_create(&NameNs {
                name: r.canary.spec.target_ref.name.clone(),
                namespace: r.ns.clone(),
            })
            .observe(start.elapsed().as_secs_f64());
    }
    if res.is_ok() {
        ctx.backoff.succeeded(&key);
        // Deleted Canaries that were failing leave entries; a pass a minute drops them.
        ctx.backoff.prune(Instant::now(), || {
            ctx.canaries
                .state()
                .iter()
                .map(|c| backoff::key(c))
                .collect()
        });
        ctx.metrics
            .reconciles
            .get_or_create(&crate::telemetry::ResultLabels {
                result: "ok".into(),
            })
            .inc();
    }
    res
}

struct Reconcile {
    /// The last reconcile of this Canary failed: Events it recorded are not counted again.
    retrying: bool,
    ctx: Arc<Ctx>,
    canary: Arc<Canary>,
    ns: String,
    name: String,
    now: DateTime<Utc>,
    metric_results: Option<Vec<MetricCheckStatus>>,
    /// Set when the analysis ran: since when a metric with `onNoData: hold` has had no data
    /// (`Some(None)`: it has data, the stretch is over).
    no_data_since: Option<Option<DateTime<Utc>>>,
    analysed: bool,
    /// Session-affinity cookies decided in this pass, for the VirtualService and the status.
    cookies: Option<router::AffinityCookies>,
    /// The last background delivery to the event hooks; the next one waits for it.
    event_chain: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The last write of a generated object the API server refused in this pass.
    refusal: std::sync::Mutex<Option<refused::Refusal>>,
    /// The admission gate's verdict on `status["serin.dev/pending"]`: `None` until it ran in
    /// this pass (the previous value stays), `Some(None)` when nothing waits.
    pending: Option<Option<crate::api::PendingRun>>,
}

impl Reconcile {
    fn target_name(&self) -> &str {
        &self.canary.spec.target_ref.name
    }

    fn primary_name(&self) -> String {
        format!("{}-primary", self.target_name())
    }

    fn qualified(&self) -> String {
        msg::qualified(&self.name, &self.ns)
    }

    fn uid(&self) -> Option<&str> {
        self.canary.metadata.uid.as_deref()
    }

    fn owner(&self) -> Result<OwnerReference, Error> {
        // kube's controller reference leaves blockOwnerDeletion out; Flagger sets it (and the
        // RBAC grants canaries/finalizers for it), so foreground deletion waits for the objects.
        let mut owner = self.canary.controller_owner_ref(&()).ok_or(Error::NoUid)?;
        owner.block_owner_deletion = Some(true);
        Ok(owner)
    }

    /// Flagger reports `canaryWeight` 0 in WaitingPromotion while its VirtualService still sends
    /// the maximum to the canary (flagger-contract.md §9.3). A status serin never wrote (no
    /// `serin.dev/progress`) is read with the weight the VirtualService really has, so taking
    /// over from Flagger at that phase does not move traffic.
    fn take_over_flaggers_weight(&self, progress: &mut crate::rollout::Progress) {
        let from_flagger = self
            .canary
            .status
            .as_ref()
            .is_some_and(|s| s.serin_progress.is_none());
        if !from_flagger || progress.phase != Some(crate::rollout::Phase::WaitingPromotion) {
            return;
        }
        let apex = self.canary.apex_name();
        let Some(vs) = self
            .ctx
            .virtual_services
            .get(&ObjectRef::new_with(&apex, self.ctx.vs_resource.clone()).within(&self.ns))
        else {
            return;
        };
        let typed = router::cached_json(&vs).and_then(|v| {
            serde_json::from_value::<crate::api::istio_resources::VirtualService>(v).ok()
        });
        if let Some(typed) = typed
            && let Some(routes) = router::read_routes(&typed, &apex)
        {
            progress.canary_weight = routes.canary;
        }
    }

    /// The one way to a cached Deployment (kept as text, `cached`).
    fn deployment(&self, name: &str) -> Result<Option<Arc<Deployment>>, Error> {
        self.cached(&self.ctx.deployments, name)
    }

    /// The one way to a cached Service (kept as text, `cached`).
    fn service(&self, name: &str) -> Result<Option<Arc<Service>>, Error> {
        self.cached(&self.ctx.services, name)
    }

    fn cached<K>(
        &self,
        store: &kube::runtime::reflector::Store<Cached<K>>,
        name: &str,
    ) -> Result<Option<Arc<K>>, Error>
    where
        K: Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
    {
        store
            .get(&ObjectRef::new(name).within(&self.ns))
            .map(|e| decoded(&e))
            .transpose()
    }

    /// The steps; a write the API server refused is told on the Canary before the error goes
    /// to the error policy (and its backoff).
    async fn run(&mut self) -> Result<Action, Error> {
        let res = self.steps().await;
        if res.is_err() {
            // What this pass decided is not kept: the next one decides again.
            self.cookies = None;
            self.metric_results = None;
            self.report_refusal().await;
        }
        res
    }

    async fn steps(&mut self) -> Result<Action, Error> {
        if self.canary.metadata.deletion_timestamp.is_some() {
            return self.finalize().await;
        }
        self.sync_finalizer().await?;
        let owner = self.owner()?;

        // Observe.
        let seen = match self.observe(owner) {
            Ok(seen) => seen,
            Err(hold) => return self.hold(hold).await,
        };
        let settings = state::settings(&self.canary);
        let mut progress = state::progress(self.canary.status.as_ref());
        self.take_over_flaggers_weight(&mut progress);
        if let Err(hold) = self.check_references(&settings, &progress) {
            return self.hold(hold).await;
        }
        self.ensure_primary(&seen).await?;

        // A new run may have to wait: frozen, or beyond the rollout queue's caps.
        if let Some(wait) = self.admission_gate(&seen, &settings, &progress).await? {
            return Ok(wait);
        }

        // Decide.
        let plan = match self
            .decide(&settings, &progress, self.observation(&seen))
            .await
        {
            Ok(plan) => plan,
            Err(hold) => return self.hold(hold).await,
        };
        if !super::admission::in_run(plan.progress.phase) {
            // A slot handed out for a run that did not start (a confirm-rollout gate said no)
            // goes back at once.
            self.ctx.admission.forget(&backoff::key(&self.canary));
        }

        // Act.
        self.act(&seen, &plan).await?;
        if progress.phase.is_none() {
            // Flagger probes the providers once its Services exist; a Canary whose objects
            // cannot be written is not analysing, and asks Prometheus nothing.
            self.check_providers().await;
        }

        // Record: Events before the status, so whoever sees the new phase finds its story
        // already told.
        self.record(&plan, &settings).await;
        self.write_status(&plan.progress, None).await?;
        let after = plan.requeue_after.unwrap_or(SETTLED_RESYNC);
        Ok(Action::requeue(after.max(Duration::from_millis(200))))
    }
}

/// How long a Canary with nothing scheduled waits for its next look when no watch event comes.
/// Every object it depends on wakes it when it changes (owned objects by owner reference; the
/// target, configs, templates, the apex Service and VirtualService and the user's HPA through the
/// index), so this is only a safety net, like an informer's resync: at 300 s, 5,000 idle
/// Canaries cost 1 % of a core for nothing (the benchmark).
const SETTLED_RESYNC: Duration = Duration::from_secs(3600);

/// A cache entry's object. Its text was written from the typed object it gives back, so this
/// fails only on a serin bug; then the reconcile stops with an error (and its backoff) rather
/// than take the object for absent, which would recreate a primary or take over a Service anew.
fn decoded<K>(entry: &Cached<K>) -> Result<Arc<K>, Error>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    entry.object().map(Arc::new).map_err(|error| {
        tracing::error!(?entry, "a cached object does not parse back: {error}");
        Error::Cached {
            kind: match K::kind(&()) {
                std::borrow::Cow::Borrowed(k) => k,
                std::borrow::Cow::Owned(_) => "object",
            },
            error,
        }
    })
}
