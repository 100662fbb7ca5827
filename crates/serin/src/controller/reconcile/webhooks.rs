//! The webhook side of a reconcile: which hooks run for a check, with which payload phase
//! (docs/flagger-contract.md §6.1), and what their answers tell the rollout core. Event hooks get
//! every recorded Event, delivered in the background so that a slow receiver never holds the
//! rollout.

use std::collections::BTreeMap;

use tracing::{debug, warn};

use super::{KubeEventType, Reconcile};
use crate::api::{CanaryWebhook, HookType};
use crate::hooks::{self, CallError, Outcome, Payload};
use crate::rollout::{
    CheckFailed, CheckResults, Gate, Phase, Progress, RollbackSignal, messages as msg,
};
use crate::telemetry::WebhookLabels;

impl Reconcile {
    pub(super) fn webhooks(&self, kind: HookType) -> Vec<CanaryWebhook> {
        self.canary
            .spec
            .analysis()
            .map(|a| {
                a.webhooks
                    .iter()
                    .filter(|w| w.hook_type() == kind)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Flagger's payload without metadata; `phase` overrides the status phase.
    pub(super) fn payload(&self, progress: &Progress, phase: Option<Phase>) -> Payload {
        Payload {
            name: self.name.clone(),
            namespace: self.ns.clone(),
            phase: phase
                .or(progress.phase)
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            checksum: hooks::checksum(
                progress.last_applied_spec.as_deref(),
                &progress.tracked_configs,
            ),
            metadata: BTreeMap::new(),
        }
    }

    /// One call, counted in `serin_webhook_calls_total`.
    pub(super) async fn call(
        &self,
        kind: HookType,
        hook: &CanaryWebhook,
        base: &Payload,
    ) -> Result<(), CallError> {
        let payload = hooks::hook_payload(base, hook);
        let res = hooks::call(&self.ctx.http, &self.ctx.http_insecure, hook, &payload).await;
        count(
            &self.ctx,
            kind,
            res.as_ref().map(|_| ()).map_err(|e| e.outcome),
        );
        if let Err(e) = &res {
            debug!(hook = %hook.name, "{} webhook: {e}", kind.as_str());
        }
        res
    }

    /// A gate: open when every hook of the kind answers 2xx, closed by the first that does not
    /// (later hooks are not asked, as in Flagger).
    pub(super) async fn gate(
        &self,
        kind: HookType,
        progress: &Progress,
        results: &mut CheckResults,
    ) {
        // Flagger sends the status phase to confirm-rollout, Progressing to the other two.
        let phase = (kind != HookType::ConfirmRollout).then_some(Phase::Progressing);
        let payload = self.payload(progress, phase);
        let mut gate = Gate::Open;
        for hook in self.webhooks(kind) {
            if self.call(kind, &hook, &payload).await.is_err() {
                gate = Gate::Closed { hook: hook.name };
                break;
            }
            results.answered.push((kind, hook.name));
        }
        results.gate = Some((kind, gate));
    }

    /// A 2xx from any rollback hook asks for a rollback.
    pub(super) async fn rollback_hooks(&self, progress: &Progress, results: &mut CheckResults) {
        let payload = self.payload(progress, None);
        let mut signal = RollbackSignal::None;
        for hook in self.webhooks(HookType::Rollback) {
            if self.call(HookType::Rollback, &hook, &payload).await.is_ok() {
                signal = RollbackSignal::Requested { hook: hook.name };
                break;
            }
            results.answered.push((HookType::Rollback, hook.name));
        }
        results.rollback = Some(signal);
    }

    pub(super) async fn pre_rollout(&self, progress: &Progress, results: &mut CheckResults) {
        let payload = self.payload(progress, Some(Phase::Progressing));
        let mut outcome = Ok(());
        for hook in self.webhooks(HookType::PreRollout) {
            if let Err(e) = self.call(HookType::PreRollout, &hook, &payload).await {
                outcome = Err(CheckFailed(msg::halt_pre_rollout(
                    &self.qualified(),
                    &hook.name,
                    &e.message,
                )));
                break;
            }
            results.answered.push((HookType::PreRollout, hook.name));
        }
        results.pre_rollout = Some(outcome);
    }

    /// Rollout hooks (type `rollout` or none): the first failure is the analysis' verdict.
    pub(super) async fn rollout_hooks(&self, progress: &Progress) -> Result<(), CheckFailed> {
        let payload = self.payload(progress, Some(Phase::Progressing));
        for hook in self.webhooks(HookType::Rollout) {
            if let Err(e) = self.call(HookType::Rollout, &hook, &payload).await {
                return Err(CheckFailed(msg::halt_external_check(
                    &self.qualified(),
                    &hook.name,
                    &e.message,
                )));
            }
        }
        Ok(())
    }

    pub(super) async fn post_rollout(&self, phase: Phase, progress: &Progress) {
        let payload = self.payload(progress, Some(phase));
        for hook in self.webhooks(HookType::PostRollout) {
            let (kind, text) = match self.call(HookType::PostRollout, &hook, &payload).await {
                Ok(()) => (KubeEventType::Normal, msg::post_rollout_passed(&hook.name)),
                Err(e) => (
                    KubeEventType::Warning,
                    msg::post_rollout_failed(&hook.name, &e.message),
                ),
            };
            self.publish(kind, text).await;
        }
    }

    /// Sends a recorded Event to the `event` hooks without waiting for them. The Events of one
    /// reconcile reach each receiver in the order they were recorded.
    /// `phase` overrides the status phase; a Canary without one is Initializing, as Flagger
    /// writes that phase before anything else.
    pub(super) fn send_event_hooks(&self, warning: bool, message: &str, phase: Option<Phase>) {
        let hooks = hooks::event_targets(
            self.webhooks(HookType::Event),
            self.ctx.opts.event_webhook.as_deref(),
        );
        if hooks.is_empty() {
            return;
        }
        let progress = crate::controller::state::progress(self.canary.status.as_ref());
        let phase = phase.or(progress.phase).or(Some(Phase::Initializing));
        let base = self.payload(&progress, phase);
        let unix_ms = chrono::Utc::now().timestamp_millis();
        let payloads: Vec<(CanaryWebhook, Payload)> = hooks
            .into_iter()
            .map(|h| {
                let p = hooks::event_payload(&base, &h, message, warning, unix_ms);
                (h, p)
            })
            .collect();
        let ctx = self.ctx.clone();
        let mut chain = match self.event_chain.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let previous = chain.take();
        // The delivery outlives the reconcile; it keeps the reconcile's span, and so the canary.
        let span = tracing::Span::current();
        *chain = Some(tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Some(p) = previous {
                    let _ = p.await;
                }
                for (hook, payload) in payloads {
                    let res = hooks::call(&ctx.http, &ctx.http_insecure, &hook, &payload).await;
                    count(
                        &ctx,
                        HookType::Event,
                        res.as_ref().map(|_| ()).map_err(|e| e.outcome),
                    );
                    if let Err(e) = res {
                        warn!(hook = %hook.name, "error sending event to webhook: {e}");
                    }
                }
            },
            span,
        )));
    }
}

fn count(ctx: &crate::controller::Ctx, kind: HookType, res: Result<(), Outcome>) {
    let outcome = match res {
        Ok(()) => Outcome::Success,
        Err(o) => o,
    };
    ctx.metrics
        .webhook_calls
        .get_or_create(&WebhookLabels {
            r#type: kind.as_str().to_string(),
            outcome: outcome.as_str().to_string(),
        })
        .inc();
}
