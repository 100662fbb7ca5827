//! Record: Events (and the event hooks), alerts, Flagger's metrics and the status; and the hold,
//! which records a configuration problem instead of acting.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

use super::refused::{Refusal, WRITTEN_CONDITION, WRITTEN_MESSAGE, WRITTEN_REASON};
use super::{HOLD_RETRY, KubeEventType, Reconcile};
use crate::api::{self, Canary};
use crate::controller::events::Repeat;
use crate::controller::state::{self, Hold};
use crate::controller::{Ctx, Error};
use crate::rollout::{self, EventType, Outcome, Phase, Plan, Progress};
use crate::telemetry::{NameNs, OutcomeLabels};

/// Set once the API server refused serin's status additions: the Canary CRD in the cluster is
/// Flagger's, whose status schema has no `serin.dev/` fields (a CRD is cluster-wide).
static UNDECLARED_ADDITIONS: AtomicBool = AtomicBool::new(false);

fn is_undeclared_addition(message: &str) -> bool {
    message.contains(".status.serin.dev/") && message.contains("not declared in schema")
}

/// The field manager of the [`ADDITIONS_ANNOTATION`]: not `serin`, whose apply of the finalizer
/// on the same object would otherwise drop it (and the other way round).
const ADDITIONS_MANAGER: &str = "serin-status";

use api::STATUS_ADDITIONS_ANNOTATION as ADDITIONS_ANNOTATION;

impl Reconcile {
    pub(super) async fn write_status(
        &self,
        progress: &Progress,
        hold: Option<&Hold>,
    ) -> Result<(), Error> {
        let previous = self.canary.status.as_ref();
        let mut status = state::status(
            previous,
            progress,
            &self.canary.spec.target_ref.kind,
            hold,
            self.now,
        );
        if let Some(results) = &self.metric_results {
            status.serin_metrics = results.clone();
        }
        if let Some(since) = self.no_data_since
            && progress.phase == Some(rollout::Phase::Progressing)
        {
            status.serin_progress.get_or_insert_default().no_data_since = since.map(state::to_time);
            if status.serin_progress == Some(Default::default()) {
                status.serin_progress = None;
            }
        }
        if let Some(cookies) = &self.cookies {
            cookies.write_to(&mut status);
        }
        super::admit::apply_pending(&mut status, previous, self.pending.as_ref(), self.now);
        let previous_conditions = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
        match self.refusal() {
            Some(r) => state::set_condition(
                &mut status,
                previous_conditions,
                WRITTEN_CONDITION,
                "False",
                &r.condition_reason(),
                &r.message(),
                self.now,
            ),
            None if previous_conditions
                .iter()
                .any(|c| c.type_ == WRITTEN_CONDITION) =>
            {
                state::set_condition(
                    &mut status,
                    previous_conditions,
                    WRITTEN_CONDITION,
                    "True",
                    WRITTEN_REASON,
                    WRITTEN_MESSAGE,
                    self.now,
                )
            }
            None => {}
        }
        let warnings = state::spec_warnings(&self.canary);
        if state::set_spec_warnings(&mut status, previous, warnings.as_deref(), self.now)
            && let Some(text) = warnings
        {
            self.publish(KubeEventType::Warning, text).await;
        }
        if previous == Some(&status) {
            return Ok(());
        }
        if UNDECLARED_ADDITIONS.load(Ordering::Relaxed) {
            return self.write_status_under_flaggers_crd(status).await;
        }
        let api: Api<Canary> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = json!({
            "apiVersion": api::API_VERSION,
            "kind": "Canary",
            "status": status,
        });
        let written = match api
            .patch_status(
                &self.name,
                &PatchParams::apply("serin").force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Err(kube::Error::Api(e)) if is_undeclared_addition(&e.message) => {
                if !UNDECLARED_ADDITIONS.swap(true, Ordering::Relaxed) {
                    warn!(
                        "the Canary CRD declares no serin.dev/ status fields (Flagger's CRD?): \
                         serin keeps them in the annotation {ADDITIONS_ANNOTATION}"
                    );
                }
                return self.write_status_under_flaggers_crd(status).await;
            }
            other => other?,
        };
        self.remember_written(&written);
        Ok(())
    }

    fn refusal(&self) -> Option<Refusal> {
        self.refusal.lock().ok().and_then(|r| r.clone())
    }

    /// Tells a refused write on the Canary: `serin.dev/Written=False` naming the object, the API
    /// server's answer and the fix, and a Warning Event when that message is new. The progress
    /// is the stored one: nothing this pass decided is kept, so nothing moves.
    pub(super) async fn report_refusal(&self) {
        let Some(r) = self.refusal() else {
            return;
        };
        let text = r.message();
        if state::condition_is_new(
            self.canary.status.as_ref(),
            WRITTEN_CONDITION,
            "False",
            &text,
        ) {
            self.publish(KubeEventType::Warning, text).await;
        }
        let progress = state::progress(self.canary.status.as_ref());
        if let Err(e) = self.write_status(&progress, None).await {
            warn!("recording the refused write on the status: {e}");
        }
    }

    /// Flagger's CRD: the status without serin's additions, and the additions in an annotation
    /// (each written only when it changed).
    async fn write_status_under_flaggers_crd(
        &self,
        mut status: api::CanaryStatus,
    ) -> Result<(), Error> {
        let additions = api::StatusAdditions {
            progress: status.serin_progress.take(),
            metrics: std::mem::take(&mut status.serin_metrics),
            pending: status.serin_pending.take(),
        };
        let mut stored = self.canary.status.clone().unwrap_or_default();
        stored.serin_progress = None;
        stored.serin_metrics.clear();
        stored.serin_pending = None;
        let api: Api<Canary> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let mut written = None;
        if stored != status {
            let patch = json!({
                "apiVersion": api::API_VERSION,
                "kind": "Canary",
                "status": status,
            });
            written = Some(
                api.patch_status(
                    &self.name,
                    &PatchParams::apply("serin").force(),
                    &Patch::Apply(&patch),
                )
                .await?,
            );
        }
        let text = serde_json::to_string(&additions).unwrap_or_default();
        let current = self
            .canary
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADDITIONS_ANNOTATION));
        if current != Some(&text) {
            let patch = json!({
                "apiVersion": api::API_VERSION,
                "kind": "Canary",
                "metadata": {"annotations": {ADDITIONS_ANNOTATION: text}},
            });
            written = Some(
                api.patch(
                    &self.name,
                    &PatchParams::apply(ADDITIONS_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await?,
            );
        }
        if let Some(w) = written {
            self.remember_written(&w);
        }
        Ok(())
    }

    /// Records the resource version of serin's own status write, so that reconciles triggered
    /// before the cache has it (by the objects this reconcile just changed) wait for it instead
    /// of acting on the previous status ([`cache_is_behind`]).
    fn remember_written(&self, written: &Canary) {
        if let (Some(uid), Some(version)) = (
            written.metadata.uid.clone(),
            resource_version(&written.metadata),
        ) && let Ok(mut w) = self.ctx.written.lock()
        {
            w.insert(uid, version);
        }
    }

    /// Keeps everything as it is, tells why on the `serin.dev/Valid` condition, and warns once
    /// when that condition turns false (or its message changes).
    pub(super) async fn hold(&self, hold: Hold) -> Result<Action, Error> {
        if state::hold_is_new(self.canary.status.as_ref(), &hold) {
            warn!(reason = hold.reason.as_str(), "{}", hold.message);
            self.publish(KubeEventType::Warning, hold.message.clone())
                .await;
        }
        let progress = state::progress(self.canary.status.as_ref());
        self.write_status(&progress, Some(&hold)).await?;
        let interval = self
            .canary
            .spec
            .analysis()
            .map(|a| a.interval())
            .unwrap_or(HOLD_RETRY);
        Ok(Action::requeue(interval.min(HOLD_RETRY)))
    }

    pub(super) async fn publish(&self, kind: KubeEventType, text: String) {
        self.publish_in(kind, text, None).await;
    }

    /// With the phase the event hooks' payload carries: Flagger records a step's Events after
    /// its status write, so their payloads carry the step's new phase ("Promotion completed!"
    /// with Succeeded); serin records them before it, so it names that phase here.
    pub(super) async fn publish_in(&self, kind: KubeEventType, text: String, phase: Option<Phase>) {
        match kind {
            KubeEventType::Normal => info!("{text}"),
            KubeEventType::Warning => warn!("{text}"),
        }
        let warning = kind == KubeEventType::Warning;
        let repeat = if self.retrying {
            Repeat::Skip
        } else {
            Repeat::Count
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&self.canary.object_ref(&()), warning, &text, repeat)
            .await
        {
            warn!("publishing an event: {e}");
        }
        self.send_event_hooks(warning, &text, phase);
    }

    /// The plan's Events, alerts and Flagger's metrics.
    pub(super) async fn record(&self, plan: &Plan, settings: &rollout::Settings) {
        let mut phase = self.canary.status.as_ref().and_then(|s| s.phase);
        for e in &plan.events {
            let kind = match e.kind {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            };
            // Flagger writes the phase these announce before recording them, and every other
            // Event of a step before the step's status write.
            if let Some(p) = e.announces {
                phase = Some(p);
            }
            self.publish_in(kind, e.message.clone(), phase).await;
        }
        self.send_alerts(plan, settings).await;
        let labels = NameNs {
            name: self.target_name().to_string(),
            namespace: self.ns.clone(),
        };
        self.ctx
            .metrics
            .canary_status
            .get_or_create(&labels)
            .set(state::status_gauge(plan.progress.phase));
        if let Some(outcome) = plan.outcome {
            let strategy = settings.strategy.as_str().to_string();
            let (family, status) = match outcome {
                Outcome::Promoted => (&self.ctx.metrics.successes, "completed"),
                Outcome::Skipped => (&self.ctx.metrics.successes, "skipped"),
                Outcome::Failed => (&self.ctx.metrics.failures, "completed"),
            };
            family
                .get_or_create(&OutcomeLabels {
                    name: self.target_name().to_string(),
                    namespace: self.ns.clone(),
                    deployment_strategy: strategy,
                    analysis_status: status.into(),
                })
                .inc();
        }
    }

    /// Hands the plan's alerts to the notifiers; what only the user can fix (a missing provider or
    /// secret) becomes a Warning Event. Delivery runs in the background.
    async fn send_alerts(&self, plan: &Plan, settings: &rollout::Settings) {
        for a in &plan.alerts {
            let problems = self
                .ctx
                .alerter
                .dispatch(
                    &self.ctx.client,
                    &self.ctx.secrets,
                    &self.canary,
                    settings,
                    a,
                )
                .await;
            for p in problems {
                self.publish(KubeEventType::Warning, p).await;
            }
        }
    }
}

fn resource_version(meta: &ObjectMeta) -> Option<u64> {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
}

/// Whether serin wrote a newer status than the cached Canary carries. Resource versions are
/// etcd revisions, increasing numbers; anything unparsable counts as current.
pub(super) fn cache_is_behind(canary: &Canary, ctx: &Ctx) -> bool {
    let (Some(uid), Some(cached)) = (
        canary.metadata.uid.as_ref(),
        resource_version(&canary.metadata),
    ) else {
        return false;
    };
    let written = ctx
        .written
        .lock()
        .map(|w| w.get(uid).copied())
        .unwrap_or(None);
    written.is_some_and(|w| cached < w)
}
