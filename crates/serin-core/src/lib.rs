//! The life of a canary in one place: a pure decision function.
//!
//! `decide(settings, progress, observation, now)` returns either the next [`Plan`] (new progress,
//! the desired canary scale, one-off actions, events, alerts and when to look again) or a [`Need`]:
//! a check the shell must run first (a webhook gate, the analysis). The shell answers by filling
//! `observation.results` and calling again, so side-effecting checks run only when the
//! state machine really reaches them, in Flagger's order, and the whole function stays free of
//! I/O and clocks. Everything needed to resume lives in [`Progress`], which the shell stores in
//! the Canary's status: a controller killed between two writes decides the same thing again.
//!
//! Deliberate differences from Flagger (docs/flagger-contract.md §9 gives each one's reason):
//! - the canary weight is capped at `maxWeight` (Flagger overshoots: step 20, max 50 → 60);
//! - `status.canaryWeight` always equals the canary weight in the VirtualService, also in
//!   WaitingPromotion (Flagger shows 0 there while traffic stays at maxWeight);
//! - readiness deadlines are measured by serin from when it started waiting, whatever the
//!   Deployment's conditions say ([#1247](https://github.com/fluxcd/flagger/issues/1247),
//!   [#1578](https://github.com/fluxcd/flagger/issues/1578)), and a deadline rollback alerts
//!   ([#1663](https://github.com/fluxcd/flagger/issues/1663));
//! - reaching the failed-checks threshold rolls back at once instead of one interval later;
//! - Promoting moves on as soon as the primary runs the promoted revision and is ready;
//! - a failed rollback records the analysed revision in the same write that sets Failed, so a
//!   newer revision is never swallowed (docs/flagger-contract.md §3.3 step 11);
//! - during initialization the target keeps serving until the primary is ready, also with
//!   skipAnalysis ([#515](https://github.com/fluxcd/flagger/issues/515),
//!   [#1444](https://github.com/fluxcd/flagger/issues/1444)), and a primary that never becomes
//!   ready leaves the target alone.

pub mod admission;
pub mod compare;
pub mod messages;
pub mod request;
pub mod simulate;
mod weights;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use request::{Request, RequestState, Verb};
pub use weights::{max_weight, next_step_weight};

use messages as msg;

/// Wall-clock instants, always passed in: the core never reads a clock.
pub type Time = DateTime<Utc>;

/// Prefix of serin's revision hashes; a `lastAppliedSpec` without it was written by Flagger.
pub const REVISION_PREFIX: &str = "sha256:";

/// Grace between routing all traffic to the primary and scaling the canary down, so that proxies
/// have picked up the new routes before the canary pods go away.
pub const ROUTE_SETTLE: Duration = Duration::from_secs(3);

/// How soon to look again while waiting for an object serin just asked for (a primary being
/// created); watch events usually come first.
const SHORT_RETRY: Duration = Duration::from_secs(2);

mod vocabulary;
pub use vocabulary::{CanaryPhase, CanaryPhase as Phase, HookType, Strategy};

/// Phases in which an analysis run is under way (a new revision is being judged).
pub fn in_run(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting | Phase::Finalising
    )
}

/// What the decision needs to know about the Canary spec, already defaulted.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `<canary>.<ns>`
    pub canary: String,
    /// `<target>.<ns>`
    pub target: String,
    /// `<target>-primary.<ns>`
    pub primary: String,
    /// The target kind, for texts ("Deployment").
    pub kind: String,
    pub strategy: Strategy,
    pub interval: Duration,
    pub threshold: u32,
    pub max_weight: u32,
    pub step_weight: u32,
    pub step_weights: Vec<u32>,
    pub step_weight_promotion: u32,
    pub iterations: u32,
    pub mirror: bool,
    pub skip_analysis: bool,
    pub suspend: bool,
    pub progress_deadline: Duration,
    /// Webhook kinds that have at least one hook configured.
    pub hooks: Vec<HookType>,
    /// Names of the hooks with `muteAlert`: a gate they close sends no waiting alert.
    pub muted_hooks: Vec<String>,
}

impl Settings {
    fn has(&self, kind: HookType) -> bool {
        self.hooks.contains(&kind)
    }
}

/// Everything serin remembers about a rollout; stored in the Canary's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub phase: Option<Phase>,
    pub canary_weight: u32,
    pub failed_checks: u32,
    pub iterations: u32,
    /// Traffic is mirrored to the canary (Blue/Green or the first canary step with `mirror`).
    pub mirrored: bool,
    pub last_applied_spec: Option<String>,
    pub last_promoted_spec: Option<String>,
    pub tracked_configs: BTreeMap<String, String>,
    pub last_transition_time: Option<Time>,
    /// The scheduled time of the last analysis step; the next is due one interval later.
    pub last_step_time: Option<Time>,
    /// Since when serin has been waiting for the canary (target) to become ready.
    pub canary_waiting_since: Option<Time>,
    /// Since when serin has been waiting for the primary to become ready.
    pub primary_waiting_since: Option<Time>,
    /// People's requests: paused or not, and the last one handled (see [`request`]).
    pub requests: RequestState,
    /// The last gate asked in this run and its answer; tells the waiting Event once, shows in
    /// the `serin.dev/Gate` condition, and marks that the run got past its first step
    /// ([#1248](https://github.com/fluxcd/flagger/issues/1248)).
    pub gate: Option<GateState>,
}

/// A gate's last answer: `closed_by` names the hook that answered non-2xx, `None` once all of
/// its hooks answered 2xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateState {
    pub kind: HookType,
    pub closed_by: Option<String>,
}

/// Readiness of a Deployment as the shell computed it from the watch cache.
#[derive(Clone, Debug, PartialEq)]
pub enum Readiness {
    Ready,
    /// Still rolling out; the text says why (Flagger's "waiting for rollout to finish: ...").
    Waiting(String),
    /// Will not get better by itself (the Deployment reports ProgressDeadlineExceeded).
    Failed(String),
}

/// Result of a gate (confirm-* webhooks): open, or closed by the named hook.
#[derive(Clone, Debug, PartialEq)]
pub enum Gate {
    Open,
    Closed { hook: String },
}

/// Result of the rollback webhooks.
#[derive(Clone, Debug, PartialEq)]
pub enum RollbackSignal {
    None,
    Requested { hook: String },
}

/// A check that did not pass (the analysis, a pre-rollout hook, a workload that will not become
/// ready), as the Event text that tells it: Flagger's "Halt advancement ...".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

impl From<String> for CheckFailed {
    fn from(text: String) -> Self {
        CheckFailed(text)
    }
}

impl From<&str> for CheckFailed {
    fn from(text: &str) -> Self {
        CheckFailed(text.to_string())
    }
}

/// Answers to the checks the decision asked for in this reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckResults {
    pub gate: Option<(HookType, Gate)>,
    pub rollback: Option<RollbackSignal>,
    /// Pre-rollout hooks: `Err` carries the Flagger event text of the failure.
    pub pre_rollout: Option<Result<(), CheckFailed>>,
    /// Rollout hooks then metrics, in Flagger's order: `Err` carries the first failure's text.
    pub analysis: Option<Result<(), CheckFailed>>,
    /// With `analysis: Some(Ok(()))`: a metric with `onNoData: hold` found no data, so the step
    /// neither advances nor counts a failure, until the progress deadline runs out.
    pub analysis_hold: Option<NoDataHold>,
    /// Hooks that answered without holding anything up, in call order: gate and pre-rollout
    /// hooks that passed, rollback hooks that did not signal. The decision tells them in Events
    /// at Flagger's place in the story.
    pub answered: Vec<(HookType, String)>,
}

/// A hold for want of data (`onNoData: hold`). The shell keeps `since` (the first check of the
/// current stretch without data) and forgets it once data comes or a new run starts.
#[derive(Clone, Debug, PartialEq)]
pub struct NoDataHold {
    pub since: Time,
    /// The no-data text of the first metric that holds (Flagger's "no values found" wording).
    pub text: String,
}

/// What the shell saw this time.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Revision hash of the target's pod template (`REVISION_PREFIX` + hex).
    pub revision: String,
    /// Checksums of the tracked ConfigMaps and Secrets (`configmap/<name>` → checksum).
    pub configs: BTreeMap<String, String>,
    /// Readiness of the target (the canary workload).
    pub canary: Readiness,
    /// The primary Deployment: `None` when it does not exist (yet).
    pub primary: Option<Readiness>,
    /// The revision the primary runs: serin records it on the primary when promoting; for a
    /// primary without that record (Flagger promoted it), the target's revision when the primary
    /// runs the target's template as Flagger copies it, else `None`.
    pub primary_revision: Option<String>,
    pub results: CheckResults,
    /// The latest request in the Canary's annotations (handled once; see [`request`]).
    pub request: Option<Request>,
}

/// A check the shell must run before the decision can go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    Gate(HookType),
    RollbackHooks,
    PreRollout,
    Analysis,
}

/// Desired replicas of the target (the canary workload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Leave the replicas as they are.
    Keep,
    Zero,
    /// Scaled up for analysis (the shell picks the count, like Flagger's ScaleFromZero).
    Up,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventType,
    pub message: String,
    /// The phase this Event tells the canary entered, for the four Events Flagger records
    /// before writing that phase: event webhooks get the phase it announces, not the stored one.
    pub announces: Option<Phase>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warn,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub severity: Severity,
    pub message: String,
    /// Whether Flagger adds the Target / threshold / deadline / routing fields.
    pub with_metadata: bool,
}

/// One-off actions, each idempotent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Copy the target's pod template (and tracked configs) to the primary, recording the revision.
    Promote { revision: String },
    /// Call the post-rollout hooks with this phase.
    PostRollout(Phase),
}

/// How a run ended, for Flagger's success and failure counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Promoted,
    Skipped,
    Failed,
}

/// The routes the VirtualService must carry, derived from progress (see [`routes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routes {
    pub primary: u32,
    pub canary: u32,
    pub mirror: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub progress: Progress,
    /// Whether the apex Service and the VirtualService may exist and point at the primary.
    /// False only while initializing, before the primary is ready
    /// ([#515](https://github.com/fluxcd/flagger/issues/515)).
    pub route_to_primary: bool,
    pub scale: Scale,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    pub alerts: Vec<Alert>,
    pub outcome: Option<Outcome>,
    pub requeue_after: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Plan(Box<Plan>),
    Need(Need),
}

/// The weights the VirtualService must carry for this progress. The canary weight in status is
/// the single source of truth, so a crash between the route write and the status write re-applies
/// the same routes.
pub fn routes(progress: &Progress) -> Routes {
    let canary = progress.canary_weight.min(100);
    Routes {
        primary: 100 - canary,
        canary,
        mirror: progress.mirrored,
    }
}

/// Status, reason and message of Flagger's `Promoted` condition for a phase
/// (docs/flagger-contract.md §1.4).
pub fn promoted_condition(phase: Phase, kind: &str) -> (&'static str, String) {
    match phase {
        Phase::Initializing => ("Unknown", msg::condition_initializing(kind)),
        Phase::Initialized => ("True", msg::condition_initialized(kind)),
        Phase::Waiting | Phase::WaitingPromotion => ("Unknown", msg::CONDITION_WAITING.into()),
        Phase::Progressing => ("Unknown", msg::CONDITION_PROGRESSING.into()),
        Phase::Promoting => ("Unknown", msg::CONDITION_PROMOTING.into()),
        Phase::Finalising => ("Unknown", msg::CONDITION_FINALISING.into()),
        Phase::Succeeded => ("True", msg::CONDITION_SUCCEEDED.into()),
        Phase::Failed => ("False", msg::condition_failed(kind)),
        Phase::Terminating => ("Unknown", msg::CONDITION_TERMINATING.into()),
        Phase::Terminated => ("Unknown", msg::CONDITION_TERMINATED.into()),
    }
}

/// The next step of a canary. See the module documentation.
pub fn decide(settings: &Settings, progress: &Progress, obs: &Observation, now: Time) -> Decision {
    let mut draft = Draft {
        s: settings,
        o: obs,
        now,
        plan: Plan {
            progress: progress.clone(),
            route_to_primary: true,
            scale: Scale::Keep,
            actions: Vec::new(),
            events: Vec::new(),
            alerts: Vec::new(),
            outcome: None,
            requeue_after: None,
        },
    };
    match draft.run() {
        Ok(()) => {
            draft.schedule();
            Decision::Plan(Box::new(draft.plan))
        }
        Err(need) => Decision::Need(need),
    }
}

/// Short-circuits the decision when a check result is missing.
type Flow = Result<(), Need>;

struct Draft<'a> {
    s: &'a Settings,
    o: &'a Observation,
    now: Time,
    plan: Plan,
}

impl Draft<'_> {
    fn p(&mut self) -> &mut Progress {
        &mut self.plan.progress
    }

    fn phase(&self) -> Option<Phase> {
        self.plan.progress.phase
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.plan.progress.phase != Some(phase) {
            self.plan.progress.phase = Some(phase);
            self.plan.progress.last_transition_time = Some(self.now);
        }
    }

    fn event(&mut self, kind: EventType, message: impl Into<String>) {
        self.plan.events.push(Event {
            kind,
            message: message.into(),
            announces: None,
        });
    }

    /// An Event that tells the canary entered `phase` (see [`Event::announces`]).
    fn announce(&mut self, kind: EventType, message: impl Into<String>, phase: Phase) {
        self.plan.events.push(Event {
            kind,
            message: message.into(),
            announces: Some(phase),
        });
    }

    fn info(&mut self, message: impl Into<String>) {
        self.event(EventType::Normal, message);
    }

    fn warn(&mut self, message: impl Into<String>) {
        self.event(EventType::Warning, message);
    }

    fn alert(&mut self, severity: Severity, message: impl Into<String>, with_metadata: bool) {
        self.plan.alerts.push(Alert {
            severity,
            message: message.into(),
            with_metadata,
        });
    }

    fn requeue_at(&mut self, at: Time) {
        let after = (at - self.now).to_std().unwrap_or(Duration::ZERO);
        self.requeue(after);
    }

    fn requeue(&mut self, after: Duration) {
        self.plan.requeue_after = Some(match self.plan.requeue_after {
            Some(current) => current.min(after),
            None => after,
        });
    }

    fn interval(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.s.interval).unwrap_or(chrono::Duration::seconds(60))
    }

    fn deadline(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.s.progress_deadline)
            .unwrap_or(chrono::Duration::seconds(600))
    }

    /// Whether an interval-paced step is due.
    fn due(&self) -> bool {
        match self.plan.progress.last_step_time {
            None => true,
            Some(t) => self.now >= t + self.interval(),
        }
    }

    /// Consumes the due step. The anchor advances by exactly one interval so that steps do not
    /// drift; after a long stall (more than one interval late) it re-anchors on now instead of
    /// firing the missed steps back to back.
    fn consume_step(&mut self) {
        let interval = self.interval();
        let anchor = match self.plan.progress.last_step_time {
            Some(t) if t + interval + interval > self.now => t + interval,
            _ => self.now,
        };
        self.p().last_step_time = Some(anchor);
    }

    /// Requeues for the next paced step when the phase is one that steps.
    fn schedule(&mut self) {
        let paced = matches!(
            self.phase(),
            Some(Phase::Waiting | Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting)
        ) || self.s.suspend;
        if paced {
            match self.plan.progress.last_step_time {
                Some(t) => {
                    let at = t + self.interval();
                    self.requeue_at(at);
                }
                None => self.requeue(Duration::ZERO),
            }
        }
        let deadline = self.deadline();
        for since in [
            self.plan.progress.canary_waiting_since,
            self.plan.progress.primary_waiting_since,
        ]
        .into_iter()
        .flatten()
        {
            self.requeue_at(since + deadline);
        }
    }

    fn revision_changed(&self) -> bool {
        let p = &self.plan.progress;
        let rev = &self.o.revision;
        let spec_changed =
            p.last_applied_spec.as_ref() != Some(rev) && p.last_promoted_spec.as_ref() != Some(rev);
        spec_changed || p.tracked_configs != self.o.configs
    }

    /// Whether the target differs from the revision under analysis (restart mid-run,
    /// docs/flagger-contract.md §3.3 step 15).
    fn revision_moved(&self) -> bool {
        let p = &self.plan.progress;
        p.last_applied_spec.as_ref() != Some(&self.o.revision)
            || p.tracked_configs != self.o.configs
    }

    /// Asks a gate. A closed gate tells its waiting Event, and its alert unless the closing hook
    /// has `muteAlert`, once per closing hook rather than every interval; either answer is kept
    /// in `progress.gate` for the `serin.dev/Gate` condition.
    fn gate(&mut self, kind: HookType) -> Result<Gate, Need> {
        if !self.s.has(kind) {
            return Ok(Gate::Open);
        }
        let gate = match &self.o.results.gate {
            Some((k, g)) if *k == kind => g.clone(),
            _ => return Err(Need::Gate(kind)),
        };
        self.tell_answered(kind);
        let state = GateState {
            kind,
            closed_by: match &gate {
                Gate::Closed { hook } => Some(hook.clone()),
                Gate::Open => None,
            },
        };
        if let Gate::Closed { hook } = &gate
            && self.plan.progress.gate.as_ref() != Some(&state)
        {
            let canary = &self.s.canary;
            let (text, alert) = match kind {
                HookType::ConfirmRollout => (
                    msg::halt_waiting_approval(canary, hook),
                    msg::ALERT_WAITING_APPROVAL,
                ),
                HookType::ConfirmTrafficIncrease => (
                    msg::halt_waiting_traffic_increase(canary, hook),
                    msg::ALERT_WAITING_TRAFFIC,
                ),
                _ => (
                    msg::halt_waiting_promotion(canary, hook),
                    msg::ALERT_WAITING_PROMOTION,
                ),
            };
            self.warn(text);
            if !self.s.muted_hooks.contains(hook) {
                self.alert(Severity::Warn, alert, false);
            }
        }
        self.p().gate = Some(state);
        Ok(gate)
    }

    /// Flagger's per-hook Events for the hooks of `kind` that answered without holding anything up.
    fn tell_answered(&mut self, kind: HookType) {
        let hooks: Vec<String> = self
            .o
            .results
            .answered
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, h)| h.clone())
            .collect();
        for hook in hooks {
            let text = match kind {
                HookType::PreRollout => msg::pre_rollout_passed(&hook),
                HookType::Rollback => msg::rollback_not_signaling(&hook),
                HookType::ConfirmRollout
                | HookType::ConfirmTrafficIncrease
                | HookType::ConfirmPromotion => msg::gate_passed(kind, &hook),
                _ => continue,
            };
            self.info(text);
        }
    }

    fn run(&mut self) -> Flow {
        if self.handle_request() {
            return Ok(());
        }
        if self.s.suspend {
            if self.due() {
                self.consume_step();
                self.info(msg::SUSPENDED);
            }
            return Ok(());
        }
        match self.phase() {
            None | Some(Phase::Initializing) => return self.initialize(),
            Some(Phase::Terminating | Phase::Terminated) => return Ok(()),
            _ => {}
        }
        self.adopt_foreign_revision();
        if self.hold_paused() {
            return Ok(());
        }
        if self.o.primary.is_none() {
            // Someone deleted the primary: the shell re-creates it; nothing moves until then.
            self.requeue(SHORT_RETRY);
            return Ok(());
        }
        match self.phase() {
            Some(Phase::Initialized | Phase::Succeeded | Phase::Failed) => self.idle(),
            Some(Phase::Waiting) => self.waiting(),
            Some(Phase::Progressing | Phase::WaitingPromotion) => self.analysing(),
            Some(Phase::Promoting) => self.promoting(),
            Some(Phase::Finalising) => {
                self.finalising();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A Canary that Flagger managed carries Flagger's pod-template hashes, which serin cannot
    /// reproduce; they are replaced so that switching controllers neither starts nor restarts an
    /// analysis, nor swallows a revision Flagger had not started yet.
    ///
    /// In Initialized, Succeeded and Waiting Flagger's hashes name what the primary runs (Waiting:
    /// a newer target waits for its gate). The shell reports `primary_revision` as the target's
    /// revision when the primary runs the target's template as Flagger copies it; only then is
    /// the target adopted as promoted. Otherwise the foreign hashes stay: they match no revision
    /// of serin's, so the target's revision starts its run (once; the run records serin's hash),
    /// or keeps waiting for the gate. During a run and after a failure the target is the
    /// revision Flagger analysed.
    fn adopt_foreign_revision(&mut self) {
        let foreign = |h: &Option<String>| {
            h.as_deref()
                .is_some_and(|h| !h.starts_with(REVISION_PREFIX))
        };
        let applied = foreign(&self.plan.progress.last_applied_spec);
        let promoted = foreign(&self.plan.progress.last_promoted_spec);
        if !applied && !promoted {
            return;
        }
        let rev = self.o.revision.clone();
        let configs = self.o.configs.clone();
        let on_primary = self.o.primary_revision.as_ref() == Some(&rev);
        let before_run = matches!(
            self.phase(),
            Some(Phase::Initialized | Phase::Succeeded | Phase::Waiting)
        );
        let p = self.p();
        if before_run {
            if on_primary {
                p.last_applied_spec = Some(rev.clone());
                p.last_promoted_spec = Some(rev);
                p.tracked_configs = configs;
            }
            return;
        }
        if applied {
            p.last_applied_spec = Some(rev.clone());
            if p.tracked_configs.is_empty() {
                p.tracked_configs = configs;
            }
        }
        if promoted {
            p.last_promoted_spec = on_primary.then_some(rev);
        }
    }

    fn initialize(&mut self) -> Flow {
        if self.phase().is_none() {
            self.set_phase(Phase::Initializing);
        }
        self.plan.route_to_primary = false;
        let Some(primary) = self.o.primary.clone() else {
            self.requeue(SHORT_RETRY);
            return Ok(());
        };
        if let Readiness::Waiting(why) | Readiness::Failed(why) = primary {
            // The target keeps serving until the primary is ready, however long that takes.
            if self.due() {
                self.consume_step();
                let text = msg::primary_not_ready(&self.s.primary, &why);
                self.warn(text);
            }
            let next = self
                .plan
                .progress
                .last_step_time
                .map(|t| t + self.interval());
            if let Some(at) = next {
                self.requeue_at(at);
            }
            return Ok(());
        }
        self.plan.route_to_primary = true;
        self.plan.scale = Scale::Zero;
        let (rev, configs) = (self.o.revision.clone(), self.o.configs.clone());
        let p = self.p();
        p.last_applied_spec = Some(rev.clone());
        p.last_promoted_spec = Some(rev);
        p.tracked_configs = configs;
        p.canary_weight = 0;
        p.failed_checks = 0;
        p.iterations = 0;
        p.mirrored = false;
        p.last_step_time = None;
        p.primary_waiting_since = None;
        self.set_phase(Phase::Initialized);
        self.announce(
            EventType::Normal,
            msg::initialization_done(&self.s.canary),
            Phase::Initialized,
        );
        self.alert(Severity::Info, msg::alert_initialized(&self.s.kind), true);
        Ok(())
    }

    fn idle(&mut self) -> Flow {
        // After a failed promotion the canary still serves all traffic: leave it running.
        let serving = self.phase() == Some(Phase::Failed) && self.plan.progress.canary_weight > 0;
        if !self.revision_changed() {
            self.plan.scale = if serving { Scale::Keep } else { Scale::Zero };
            return Ok(());
        }
        match self.gate(HookType::ConfirmRollout)? {
            Gate::Closed { .. } => {
                self.plan.scale = if serving { Scale::Keep } else { Scale::Zero };
                self.set_phase(Phase::Waiting);
                self.consume_step();
                Ok(())
            }
            Gate::Open => {
                self.start_run();
                Ok(())
            }
        }
    }

    fn waiting(&mut self) -> Flow {
        self.plan.scale = Scale::Zero;
        if !self.revision_changed() {
            // The new revision was reverted while waiting: back to where it was.
            let back =
                if self.plan.progress.last_promoted_spec == self.plan.progress.last_applied_spec {
                    Phase::Succeeded
                } else {
                    Phase::Failed
                };
            self.set_phase(back);
            self.p().gate = None;
            return Ok(());
        }
        if !self.due() {
            return Ok(());
        }
        match self.gate(HookType::ConfirmRollout)? {
            Gate::Closed { .. } => self.consume_step(),
            Gate::Open => self.start_run(),
        }
        Ok(())
    }

    /// A new revision is taken up: the canary scales up and the run starts at weight 0.
    fn start_run(&mut self) {
        let confirmed = self.plan.progress.gate.clone();
        self.reset_run();
        // The confirm-rollout gate that let this run start stays visible.
        self.p().gate = confirmed.filter(|g| g.kind == HookType::ConfirmRollout);
        self.plan.scale = Scale::Up;
        self.announce(
            EventType::Normal,
            msg::new_revision_scaling_up(&self.s.target),
            Phase::Progressing,
        );
        self.alert(Severity::Info, msg::ALERT_NEW_REVISION, true);
    }

    fn reset_run(&mut self) {
        let (rev, configs, now) = (self.o.revision.clone(), self.o.configs.clone(), self.now);
        let p = self.p();
        p.canary_weight = 0;
        p.failed_checks = 0;
        p.iterations = 0;
        p.mirrored = false;
        p.last_applied_spec = Some(rev);
        p.tracked_configs = configs;
        p.last_step_time = None;
        p.canary_waiting_since = Some(now);
        p.primary_waiting_since = None;
        p.gate = None;
        self.set_phase(Phase::Progressing);
    }

    /// Checks a workload's readiness against serin's own deadline. `Ok(true)`: ready;
    /// `Ok(false)`: still waiting; `Err(text)`: give up (deadline passed or the Deployment
    /// reports a permanent failure).
    fn check_ready(&mut self, which: Workload) -> Result<bool, CheckFailed> {
        let readiness = match which {
            Workload::Canary => self.o.canary.clone(),
            Workload::Primary => self
                .o
                .primary
                .clone()
                .unwrap_or(Readiness::Waiting("primary deployment not found".into())),
        };
        let text = |d: &Self, why: &str| match which {
            Workload::Canary => msg::canary_not_ready(&d.s.target, why),
            Workload::Primary => msg::primary_not_ready(&d.s.primary, why),
        };
        let deadline = self.deadline();
        let now = self.now;
        let since = match which {
            Workload::Canary => &mut self.plan.progress.canary_waiting_since,
            Workload::Primary => &mut self.plan.progress.primary_waiting_since,
        };
        match readiness {
            Readiness::Ready => {
                *since = None;
                Ok(true)
            }
            Readiness::Failed(why) => Err(CheckFailed(text(self, &why))),
            Readiness::Waiting(why) => {
                let start = *since.get_or_insert(now);
                if now >= start + deadline {
                    let secs = self.s.progress_deadline.as_secs();
                    Err(CheckFailed(text(
                        self,
                        &format!("{why} (not ready within progressDeadlineSeconds {secs})"),
                    )))
                } else {
                    if self.due() {
                        self.consume_step();
                        let t = text(self, &why);
                        self.warn(t);
                    }
                    Ok(false)
                }
            }
        }
    }

    fn analysing(&mut self) -> Flow {
        if self.revision_moved() {
            self.reset_run();
            self.plan.scale = Scale::Up;
            self.announce(
                EventType::Normal,
                msg::new_revision_restarting(&self.s.target),
                Phase::Progressing,
            );
            return Ok(());
        }
        self.plan.scale = Scale::Up;
        match self.check_ready(Workload::Canary) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(CheckFailed(text)) => {
                self.warn(text.clone());
                self.rollback(Cause::Deadline(text));
                return Ok(());
            }
        }
        if !self.s.skip_analysis {
            match self.check_ready(Workload::Primary) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(CheckFailed(text)) => {
                    self.warn(text.clone());
                    self.rollback(Cause::Deadline(text));
                    return Ok(());
                }
            }
        }
        if self.s.skip_analysis {
            self.skip_to_promotion();
            return Ok(());
        }
        if !self.due() {
            return Ok(());
        }
        if self.s.has(HookType::Rollback) {
            let signal = self.o.results.rollback.clone();
            match signal {
                None => return Err(Need::RollbackHooks),
                Some(RollbackSignal::Requested { hook }) => {
                    self.tell_answered(HookType::Rollback);
                    self.warn(msg::rollback_check_passed(&hook));
                    self.rollback(Cause::Webhook);
                    return Ok(());
                }
                Some(RollbackSignal::None) => self.tell_answered(HookType::Rollback),
            }
        }
        if self.plan.progress.failed_checks >= self.s.threshold {
            self.rollback(Cause::Threshold);
            return Ok(());
        }
        let p = &self.plan.progress;
        let first_step =
            p.canary_weight == 0 && p.iterations == 0 && !(self.s.mirror && p.mirrored);
        // A gate asked at the first step means the analysis already started and its pre-rollout
        // hooks passed: a closed gate at weight 0 does not replay them (Flagger
        // [#1248](https://github.com/fluxcd/flagger/issues/1248)).
        let started = p
            .gate
            .as_ref()
            .is_some_and(|g| g.kind != HookType::ConfirmRollout);
        if first_step && !started {
            self.info(msg::starting_analysis(&self.s.target));
            if self.s.has(HookType::PreRollout) {
                match &self.o.results.pre_rollout {
                    None => return Err(Need::PreRollout),
                    Some(Err(CheckFailed(text))) => {
                        let text = text.clone();
                        self.tell_answered(HookType::PreRollout);
                        self.consume_step();
                        // Flagger sends no alert here
                        // ([#1663](https://github.com/fluxcd/flagger/issues/1663)); the first
                        // failure of a run does.
                        if self.plan.progress.failed_checks == 0 {
                            self.alert(Severity::Error, text.clone(), false);
                        }
                        self.fail_check(text);
                        return Ok(());
                    }
                    Some(Ok(())) => self.tell_answered(HookType::PreRollout),
                }
            }
        } else if !first_step {
            match &self.o.results.analysis {
                None => return Err(Need::Analysis),
                Some(Err(CheckFailed(text))) => {
                    let text = text.clone();
                    self.consume_step();
                    self.fail_check(text);
                    return Ok(());
                }
                Some(Ok(())) => {
                    if let Some(hold) = self.o.results.analysis_hold.clone() {
                        self.consume_step();
                        if self.now >= hold.since + self.deadline() {
                            let secs = self.s.progress_deadline.as_secs();
                            let text = msg::no_data_deadline(&hold.text, secs);
                            self.warn(text.clone());
                            self.rollback(Cause::Deadline(text));
                        } else {
                            self.warn(msg::holding_no_data(&hold.text));
                        }
                        return Ok(());
                    }
                }
            }
        }
        // Gates are asked before the step is consumed, so a missing answer repeats nothing.
        match self.s.strategy {
            Strategy::Canary => self.step_canary(),
            Strategy::ABTesting => self.step_ab(),
            Strategy::BlueGreen => self.step_blue_green(),
        }
    }

    fn fail_check(&mut self, text: String) {
        self.p().failed_checks += 1;
        self.warn(text);
        if self.plan.progress.failed_checks >= self.s.threshold {
            self.rollback(Cause::Threshold);
        }
    }

    fn step_canary(&mut self) -> Flow {
        let max = max_weight(self.s.max_weight, &self.s.step_weights);
        let weight = self.plan.progress.canary_weight;
        if weight < max {
            let mirroring_step = self.s.mirror && weight == 0 && !self.plan.progress.mirrored;
            if !mirroring_step
                && let Gate::Closed { .. } = self.gate(HookType::ConfirmTrafficIncrease)?
            {
                self.consume_step();
                return Ok(());
            }
            self.consume_step();
            self.set_phase(Phase::Progressing);
            if mirroring_step {
                self.p().mirrored = true;
            } else {
                let step = next_step_weight(weight, self.s.step_weight, &self.s.step_weights);
                let next = (weight + step).min(max).min(100);
                let p = self.p();
                p.mirrored = false;
                p.canary_weight = next;
            }
            let w = self.plan.progress.canary_weight;
            self.info(msg::advance_canary_weight(&self.s.canary, w));
            return Ok(());
        }
        self.promote_gate()
    }

    fn step_ab(&mut self) -> Flow {
        if self.plan.progress.iterations < self.s.iterations {
            self.consume_step();
            let p = self.p();
            p.canary_weight = 100;
            p.iterations += 1;
            let (i, n) = (p.iterations, self.s.iterations);
            self.info(msg::advance_iteration(&self.s.canary, i, n));
            return Ok(());
        }
        self.promote_gate()
    }

    fn step_blue_green(&mut self) -> Flow {
        let n = self.s.iterations;
        let i = self.plan.progress.iterations;
        if i < n {
            self.consume_step();
            let mirror = self.s.mirror;
            let p = self.p();
            p.iterations += 1;
            p.mirrored = mirror;
            let i = p.iterations;
            self.info(msg::advance_iteration(&self.s.canary, i, n));
            return Ok(());
        }
        if i == n {
            if let Gate::Closed { .. } = self.gate(HookType::ConfirmPromotion)? {
                self.wait_promotion();
                return Ok(());
            }
            self.consume_step();
            self.set_phase(Phase::Progressing);
            let text = if self.plan.progress.mirrored {
                msg::STOP_MIRRORING_ROUTE_TO_CANARY
            } else {
                msg::ROUTING_ALL_TO_CANARY
            };
            self.info(text);
            let p = self.p();
            p.mirrored = false;
            p.canary_weight = 100;
            p.iterations += 1;
            return Ok(());
        }
        // The analysis passed with all traffic on the canary: promote.
        self.consume_step();
        self.promote();
        Ok(())
    }

    fn promote_gate(&mut self) -> Flow {
        if let Gate::Closed { .. } = self.gate(HookType::ConfirmPromotion)? {
            self.wait_promotion();
            return Ok(());
        }
        self.consume_step();
        self.promote();
        Ok(())
    }

    fn wait_promotion(&mut self) {
        self.consume_step();
        self.set_phase(Phase::WaitingPromotion);
    }

    fn promote(&mut self) {
        let primary = self.s.primary.clone();
        self.info(msg::copying_template(&self.s.target, &primary));
        let revision = self
            .plan
            .progress
            .last_applied_spec
            .clone()
            .unwrap_or_default();
        self.plan.actions.push(Action::Promote { revision });
        self.set_phase(Phase::Promoting);
        let now = self.now;
        let p = self.p();
        // The first traffic shift back happens as soon as the primary is ready.
        p.last_step_time = None;
        p.primary_waiting_since = Some(now);
    }

    fn promoting(&mut self) -> Flow {
        self.plan.scale = Scale::Up;
        let runs_promoted = self.o.primary_revision.is_some()
            && self.o.primary_revision == self.plan.progress.last_applied_spec;
        let ready = match self.check_ready(Workload::Primary) {
            Ok(ready) => ready,
            Err(CheckFailed(text)) => {
                self.failed_promotion(text);
                return Ok(());
            }
        };
        if !ready {
            return Ok(());
        }
        if !runs_promoted {
            // The cache has not yet seen the promoted template; the watch event will come.
            let now = self.now;
            let since = *self.p().primary_waiting_since.get_or_insert(now);
            if self.now >= since + self.deadline() {
                self.failed_promotion(msg::primary_not_ready(
                    &self.s.primary,
                    "it does not run the promoted revision",
                ));
            }
            return Ok(());
        }
        let swp = self.s.step_weight_promotion;
        if swp == 0 || self.s.strategy != Strategy::Canary {
            self.info(msg::ROUTING_ALL_TO_PRIMARY);
            self.p().canary_weight = 0;
            self.p().mirrored = false;
            self.set_phase(Phase::Finalising);
            return Ok(());
        }
        if !self.due() {
            return Ok(());
        }
        self.consume_step();
        let primary_weight = (100 - self.plan.progress.canary_weight.min(100) + swp).min(100);
        self.p().canary_weight = 100 - primary_weight;
        self.p().mirrored = false;
        self.info(msg::advance_primary_weight(&self.s.canary, primary_weight));
        if primary_weight >= 100 {
            self.set_phase(Phase::Finalising);
        }
        Ok(())
    }

    fn finalising(&mut self) {
        self.plan.scale = Scale::Up;
        let settle = chrono::Duration::from_std(ROUTE_SETTLE).unwrap_or_default();
        let since = self.plan.progress.last_transition_time.unwrap_or(self.now);
        if self.now < since + settle {
            self.requeue_at(since + settle);
            return;
        }
        self.finish_success(Outcome::Promoted);
        self.announce(
            EventType::Normal,
            msg::promotion_completed(&self.s.target),
            Phase::Succeeded,
        );
        self.alert(Severity::Info, msg::ALERT_PROMOTED, false);
    }

    fn skip_to_promotion(&mut self) {
        self.info(msg::copying_template(&self.s.target, &self.s.primary));
        let revision = self
            .plan
            .progress
            .last_applied_spec
            .clone()
            .unwrap_or_default();
        self.plan.actions.push(Action::Promote { revision });
        self.finish_success(Outcome::Skipped);
        self.announce(
            EventType::Normal,
            msg::promotion_skipped(&self.s.target),
            Phase::Succeeded,
        );
        self.alert(Severity::Info, msg::ALERT_SKIPPED, false);
    }

    fn finish_success(&mut self, outcome: Outcome) {
        self.plan.scale = Scale::Zero;
        self.plan
            .actions
            .push(Action::PostRollout(Phase::Succeeded));
        self.plan.outcome = Some(outcome);
        let p = self.p();
        p.canary_weight = 0;
        p.mirrored = false;
        p.last_promoted_spec = p.last_applied_spec.clone();
        p.last_step_time = None;
        p.canary_waiting_since = None;
        p.primary_waiting_since = None;
        self.set_phase(Phase::Succeeded);
    }

    fn rollback(&mut self, cause: Cause) {
        let canary = self.s.canary.clone();
        match cause {
            Cause::Threshold => {
                let n = self.plan.progress.failed_checks;
                self.warn(msg::rolling_back_threshold(&canary, n));
                self.alert(Severity::Error, msg::alert_threshold(n), false);
            }
            Cause::Deadline(err) => {
                self.warn(msg::rolling_back_deadline(&canary, &err));
                self.alert(Severity::Error, msg::alert_deadline(&err), false);
            }
            Cause::Webhook => {
                self.warn(msg::rolling_back_webhook(&canary));
                self.alert(Severity::Warn, msg::ALERT_ROLLBACK_WEBHOOK, false);
            }
            Cause::Requested(by) => {
                let text = request::text::rolling_back_requested(&canary, &by);
                self.warn(text.clone());
                self.alert(Severity::Warn, text, false);
            }
        }
        self.announce(
            EventType::Warning,
            msg::canary_failed(&canary),
            Phase::Failed,
        );
        self.plan.scale = Scale::Zero;
        self.plan.actions.push(Action::PostRollout(Phase::Failed));
        self.plan.outcome = Some(Outcome::Failed);
        let p = self.p();
        p.canary_weight = 0;
        p.mirrored = false;
        p.last_step_time = None;
        p.canary_waiting_since = None;
        p.primary_waiting_since = None;
        self.set_phase(Phase::Failed);
    }

    /// The primary failed to roll out the promoted template: all traffic goes to the canary,
    /// which still runs the new revision (Flagger's fix for
    /// [#1591](https://github.com/fluxcd/flagger/issues/1591)).
    fn failed_promotion(&mut self, err: String) {
        self.warn(msg::promotion_failed(&self.s.target, &err));
        self.alert(Severity::Error, msg::alert_promotion_failed(&err), false);
        self.plan.scale = Scale::Keep;
        self.plan.actions.push(Action::PostRollout(Phase::Failed));
        self.plan.outcome = Some(Outcome::Failed);
        let p = self.p();
        p.canary_weight = 100;
        p.mirrored = false;
        p.last_step_time = None;
        p.primary_waiting_since = None;
        self.set_phase(Phase::Failed);
    }
}

#[derive(Clone, Copy)]
enum Workload {
    Canary,
    Primary,
}

enum Cause {
    Threshold,
    Deadline(String),
    Webhook,
    /// A person asked (`serin abort`); names who.
    Requested(String),
}

#[cfg(test)]
mod tests;
