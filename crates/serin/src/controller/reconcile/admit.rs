//! Between observe and decide: may the new revision start its run now? A freeze (annotation or
//! schedule) or a full rollout queue keeps the Canary where it is, with nothing decided, applied
//! or queried; the wait is told by a condition and an Event, and since no run started, the wait
//! does not count against the progress deadline. A run in progress always finishes, unless a
//! freeze says `pause`.

use std::time::Duration;

use kube::runtime::controller::Action;

use super::observe::Observed;
use super::{KubeEventType, Reconcile};
use crate::api::PendingRun;
use crate::controller::Error;
use crate::controller::admission::{
    self, FROZEN, FROZEN_CONDITION, PAUSED, QUEUED, QUEUED_CONDITION,
};
use crate::controller::backoff;
use crate::controller::state::{self, to_chrono, to_time};
use crate::rollout::admission::{self as core, Admission, Freeze, InProgress, Waiting};
use crate::rollout::{Phase, Progress, Settings};

/// How often a queued revision looks again for a free slot (reading caches only).
const QUEUE_POLL: Duration = Duration::from_secs(3);
/// The longest wait between two looks at a frozen Canary (the schedule may change).
const FREEZE_POLL: Duration = Duration::from_secs(30);

/// Whether the target moved on from what was last analysed or promoted: what starts a run.
pub(super) fn revision_changed(p: &Progress, seen: &Observed) -> bool {
    let rev = &seen.revision;
    let spec_changed =
        p.last_applied_spec.as_ref() != Some(rev) && p.last_promoted_spec.as_ref() != Some(rev);
    spec_changed || p.tracked_configs != seen.configs
}

impl Reconcile {
    /// `Some(action)` when this reconcile stops here (frozen, queued, or not ready to say).
    pub(super) async fn admission_gate(
        &mut self,
        seen: &Observed,
        settings: &Settings,
        progress: &Progress,
    ) -> Result<Option<Action>, Error> {
        let key = backoff::key(&self.canary);
        let running = admission::in_run(progress.phase);
        let idle = matches!(
            progress.phase,
            Some(Phase::Initialized | Phase::Succeeded | Phase::Failed | Phase::Waiting)
        );
        let starting = idle && !settings.suspend && revision_changed(progress, seen);
        if !running && !starting {
            self.clear_pending(&key);
            return Ok(None);
        }
        if !self.ctx.admission.ready() {
            return Ok(Some(Action::requeue(Duration::from_secs(1))));
        }
        let freeze = self.ctx.admission.freeze(&self.canary, &self.ns, self.now);
        let target = settings.target.clone();
        if running {
            return match freeze {
                Some(f) if f.in_progress == InProgress::Pause => {
                    let text = core::paused_message(&target, &f);
                    self.wait(PAUSED, None, text, &f, progress).await.map(Some)
                }
                _ => {
                    self.clear_pending(&key);
                    Ok(None)
                }
            };
        }
        if let Some(f) = freeze {
            let text = core::frozen_message(&target, &f);
            return self.wait(FROZEN, None, text, &f, progress).await.map(Some);
        }
        let me = Waiting {
            key: key.clone(),
            namespace: self.ns.clone(),
            since: self.pending_since(),
        };
        match self.ctx.admission.admit(&self.ctx.canaries, me) {
            Admission::Start => {
                if let Some(p) = self
                    .canary
                    .status
                    .as_ref()
                    .and_then(|s| s.serin_pending.as_ref())
                {
                    let waited = (self.now - to_chrono(&p.since)).num_seconds().max(0);
                    let text = format!(
                        "New revision of {target} starts after waiting {waited}s ({})",
                        p.reason.to_lowercase()
                    );
                    self.publish(KubeEventType::Normal, text).await;
                }
                self.pending = Some(None);
                Ok(None)
            }
            Admission::Queued {
                position,
                of,
                limit,
            } => {
                let text = core::queued_message(&target, position, of, &limit);
                let pending = PendingRun {
                    since: to_time(self.pending_since()),
                    reason: QUEUED.into(),
                    position: Some(position as i32),
                    message: text.clone(),
                };
                if self.condition_absent(QUEUED_CONDITION) {
                    self.publish(KubeEventType::Normal, text).await;
                }
                self.pending = Some(Some(pending));
                self.write_status(progress, None).await?;
                Ok(Some(Action::requeue(QUEUE_POLL)))
            }
        }
    }

    /// Records a frozen (or paused) wait and looks again when the freeze should end.
    async fn wait(
        &mut self,
        reason: &str,
        position: Option<i32>,
        text: String,
        f: &Freeze,
        progress: &Progress,
    ) -> Result<Action, Error> {
        let previous_reason = self
            .canary
            .status
            .as_ref()
            .and_then(|s| s.serin_pending.as_ref())
            .map(|p| p.reason.clone());
        if previous_reason.as_deref() != Some(reason) || self.condition_absent(FROZEN_CONDITION) {
            let kind = if f.why.contains("cannot read") {
                KubeEventType::Warning
            } else {
                KubeEventType::Normal
            };
            self.publish(kind, text.clone()).await;
        }
        self.pending = Some(Some(PendingRun {
            since: to_time(self.pending_since()),
            reason: reason.into(),
            position,
            message: text,
        }));
        self.write_status(progress, None).await?;
        let until_open = f
            .until
            .and_then(|t| (t - self.now).to_std().ok())
            .map(|d| d + Duration::from_millis(200))
            .unwrap_or(FREEZE_POLL);
        Ok(Action::requeue(
            until_open.clamp(Duration::from_millis(500), FREEZE_POLL),
        ))
    }

    /// When the waiting revision was detected: kept from the status across waits and restarts.
    fn pending_since(&self) -> chrono::DateTime<chrono::Utc> {
        self.canary
            .status
            .as_ref()
            .and_then(|s| s.serin_pending.as_ref())
            .map(|p| to_chrono(&p.since))
            // Whole seconds, as the status keeps it, so that the order is the same from either.
            .unwrap_or_else(|| to_chrono(&to_time(self.now)))
    }

    fn condition_absent(&self, type_: &str) -> bool {
        !self
            .canary
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_))
    }

    fn clear_pending(&mut self, key: &str) {
        self.ctx.admission.forget(key);
        self.pending = Some(None);
    }
}

/// Sets `serin.dev/pending` and its condition on a status being written: `pending` is the gate's
/// verdict (`None`: the gate did not run in this pass, so the previous wait stays as it was).
pub(super) fn apply_pending(
    status: &mut crate::api::CanaryStatus,
    previous: Option<&crate::api::CanaryStatus>,
    pending: Option<&Option<PendingRun>>,
    now: chrono::DateTime<chrono::Utc>,
) {
    let previous_conditions = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let pending = match pending {
        Some(p) => p.clone(),
        None => previous.and_then(|p| p.serin_pending.clone()),
    };
    status.serin_pending = pending.clone();
    if let Some(p) = pending {
        let type_ = if p.reason == QUEUED {
            QUEUED_CONDITION
        } else {
            FROZEN_CONDITION
        };
        state::set_condition(
            status,
            previous_conditions,
            type_,
            "True",
            &p.reason,
            &p.message,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CanaryStatus;
    use chrono::TimeZone;

    fn pending(reason: &str, position: Option<i32>) -> PendingRun {
        PendingRun {
            since: to_time(chrono::Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()),
            reason: reason.into(),
            position,
            message: format!("{reason} message"),
        }
    }

    /// (serin.dev/pending reason, the waiting conditions) after `apply_pending`.
    fn after(
        previous: Option<&CanaryStatus>,
        verdict: Option<Option<PendingRun>>,
    ) -> (Option<String>, Vec<(String, String)>) {
        let now = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 5).unwrap();
        // As `state::status` builds it: the previous status without serin's extra conditions.
        let mut s = previous.cloned().unwrap_or_default();
        s.conditions.clear();
        apply_pending(&mut s, previous, verdict.as_ref(), now);
        (
            s.serin_pending.map(|p| p.reason),
            s.conditions
                .into_iter()
                .map(|c| (c.type_, c.reason))
                .collect(),
        )
    }

    #[test]
    fn the_wait_is_set_kept_and_cleared_with_its_condition() {
        let queued = Some(Some(pending(QUEUED, Some(2))));
        let (reason, conds) = after(None, queued.clone());
        assert_eq!(reason.as_deref(), Some(QUEUED));
        assert_eq!(conds, [(QUEUED_CONDITION.to_string(), QUEUED.to_string())]);

        let mut held = CanaryStatus::default();
        apply_pending(
            &mut held,
            None,
            Some(&Some(pending(FROZEN, None))),
            chrono::Utc::now(),
        );
        // A pass that did not reach the gate (a hold, a refused write) keeps the wait as it was.
        let (reason, conds) = after(Some(&held), None);
        assert_eq!(reason.as_deref(), Some(FROZEN));
        assert_eq!(conds, [(FROZEN_CONDITION.to_string(), FROZEN.to_string())]);
        // Paused runs show on the Frozen condition too.
        let (_, conds) = after(Some(&held), Some(Some(pending(PAUSED, None))));
        assert_eq!(conds, [(FROZEN_CONDITION.to_string(), PAUSED.to_string())]);
        // Started (or nothing to start): both go.
        assert_eq!(after(Some(&held), Some(None)), (None, vec![]));
    }
}
