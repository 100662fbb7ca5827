//! Table tests against Flagger's phase sequences (docs/flagger-contract.md §3.3–3.5) and property
//! tests of the invariants, driving `decide` the way the shell does.

use super::*;
use chrono::TimeZone;
use proptest::prelude::{
    ProptestConfig, any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
use proptest::strategy::Strategy as _;
use std::collections::HashMap;

pub(super) fn t0() -> Time {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap()
}

/// Shared with the request tests (`rollout::request::tests`).
pub(super) fn settings() -> Settings {
    Settings {
        canary: "podinfo.test".into(),
        target: "podinfo.test".into(),
        primary: "podinfo-primary.test".into(),
        kind: "Deployment".into(),
        strategy: Strategy::Canary,
        interval: Duration::from_secs(60),
        threshold: 2,
        max_weight: 50,
        step_weight: 10,
        step_weights: vec![],
        step_weight_promotion: 0,
        iterations: 0,
        mirror: false,
        skip_analysis: false,
        suspend: false,
        progress_deadline: Duration::from_secs(600),
        hooks: vec![],
        muted_hooks: vec![],
    }
}

pub(super) fn rev(s: &str) -> String {
    format!("{REVISION_PREFIX}{s}")
}

/// A simulated cluster answering the decision's needs, the way the shell would.
struct World {
    s: Settings,
    p: Progress,
    now: Time,
    revision: String,
    configs: BTreeMap<String, String>,
    canary: Readiness,
    primary: Option<Readiness>,
    primary_revision: Option<String>,
    analysis: Result<(), CheckFailed>,
    hold: Option<NoDataHold>,
    pre_rollout: Result<(), CheckFailed>,
    gates: HashMap<HookType, Gate>,
    rollback: RollbackSignal,
    needs: Vec<Need>,
    scale: Scale,
    events: Vec<Event>,
    alerts: Vec<Alert>,
    outcomes: Vec<Outcome>,
    promoted: Vec<String>,
}

impl World {
    fn new(s: Settings) -> Self {
        World {
            s,
            p: Progress::default(),
            now: t0(),
            revision: rev("a"),
            configs: BTreeMap::new(),
            canary: Readiness::Ready,
            primary: None,
            primary_revision: None,
            analysis: Ok(()),
            hold: None,
            pre_rollout: Ok(()),
            gates: HashMap::new(),
            rollback: RollbackSignal::None,
            needs: vec![],
            scale: Scale::Keep,
            events: vec![],
            alerts: vec![],
            outcomes: vec![],
            promoted: vec![],
        }
    }

    /// A canary that finished initialization on revision "a".
    fn initialized(s: Settings) -> Self {
        let mut w = World::new(s);
        w.step();
        w.primary = Some(Readiness::Ready);
        w.primary_revision = Some(rev("a"));
        w.step();
        assert_eq!(w.p.phase, Some(Phase::Initialized));
        w.events.clear();
        w.alerts.clear();
        w
    }

    fn obs(&self) -> Observation {
        Observation {
            revision: self.revision.clone(),
            configs: self.configs.clone(),
            canary: self.canary.clone(),
            primary: self.primary.clone(),
            primary_revision: self.primary_revision.clone(),
            results: CheckResults::default(),
            request: None,
        }
    }

    fn step(&mut self) -> Plan {
        let mut obs = self.obs();
        for _ in 0..10 {
            match decide(&self.s, &self.p, &obs, self.now) {
                Decision::Need(need) => {
                    self.needs.push(need.clone());
                    match need {
                        Need::Gate(kind) => {
                            let g = self.gates.get(&kind).cloned().unwrap_or(Gate::Open);
                            obs.results.gate = Some((kind, g));
                        }
                        Need::RollbackHooks => obs.results.rollback = Some(self.rollback.clone()),
                        Need::PreRollout => {
                            obs.results.pre_rollout = Some(self.pre_rollout.clone())
                        }
                        Need::Analysis => {
                            obs.results.analysis = Some(self.analysis.clone());
                            obs.results.analysis_hold = self.hold.clone();
                        }
                    }
                }
                Decision::Plan(plan) => {
                    self.p = plan.progress.clone();
                    if plan.scale != Scale::Keep {
                        self.scale = plan.scale;
                    }
                    for a in &plan.actions {
                        if let Action::Promote { revision } = a {
                            self.primary_revision = Some(revision.clone());
                            self.promoted.push(revision.clone());
                        }
                    }
                    self.events.extend(plan.events.iter().cloned());
                    self.alerts.extend(plan.alerts.iter().cloned());
                    self.outcomes.extend(plan.outcome);
                    return *plan;
                }
            }
        }
        panic!("decide kept asking for checks");
    }

    fn tick(&mut self) -> Plan {
        self.now += chrono::Duration::from_std(self.s.interval).unwrap();
        self.step()
    }

    fn advance(&mut self, secs: i64) -> Plan {
        self.now += chrono::Duration::seconds(secs);
        self.step()
    }

    fn state(&self) -> (Phase, u32) {
        (self.p.phase.unwrap(), self.p.canary_weight)
    }

    fn messages(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.message.as_str()).collect()
    }

    /// Steps until the phase is final or `max` reconciles passed, recording (phase, weight).
    fn run_to_end(&mut self, max: usize) -> Vec<(Phase, u32)> {
        let mut seen = vec![self.state()];
        for _ in 0..max {
            let plan = self.step();
            let after = plan.requeue_after.unwrap_or(self.s.interval);
            if seen.last() != Some(&self.state()) {
                seen.push(self.state());
            }
            if matches!(self.p.phase, Some(Phase::Succeeded | Phase::Failed)) {
                break;
            }
            self.now += chrono::Duration::from_std(after).unwrap();
        }
        seen
    }
}

#[test]
fn initialization_waits_for_primary_then_routes_and_scales_target_down() {
    let mut w = World::new(settings());
    let plan = w.step();
    assert_eq!(w.p.phase, Some(Phase::Initializing));
    assert!(
        !plan.route_to_primary,
        "apex must not switch before the primary exists"
    );
    assert_eq!(plan.scale, Scale::Keep);

    w.primary = Some(Readiness::Waiting(
        "0 of 2 updated replicas are available".into(),
    ));
    let plan = w.step();
    assert!(!plan.route_to_primary);
    assert_eq!(
        plan.scale,
        Scale::Keep,
        "the target keeps serving while the primary starts"
    );
    assert_eq!(
        w.messages(),
        vec!["podinfo-primary.test not ready: 0 of 2 updated replicas are available"]
    );

    w.primary = Some(Readiness::Ready);
    let plan = w.step();
    assert!(plan.route_to_primary);
    assert_eq!(plan.scale, Scale::Zero);
    assert_eq!(w.p.phase, Some(Phase::Initialized));
    assert_eq!(w.p.last_applied_spec, Some(rev("a")));
    assert_eq!(w.p.last_promoted_spec, Some(rev("a")));
    assert_eq!(
        w.messages().last(),
        Some(&"Initialization done! podinfo.test")
    );
    assert_eq!(
        w.alerts,
        vec![Alert {
            severity: Severity::Info,
            message: "New Deployment detected, initialization completed.".into(),
            with_metadata: true
        }]
    );
}

#[test]
fn flagger_sequence_step_100_promotion_50() {
    // TestScheduler_DeploymentAnalysisPhases: Initialized → Progressing 0 → Progressing 100 →
    // Promoting 100 → Promoting 50 → Finalising 0 → Succeeded.
    let mut s = settings();
    s.step_weight = 100;
    s.max_weight = 100;
    s.step_weight_promotion = 50;
    let mut w = World::initialized(s);
    w.revision = rev("b");
    let seen = w.run_to_end(40);
    use Phase::*;
    assert_eq!(
        seen,
        vec![
            (Initialized, 0),
            (Progressing, 0),
            (Progressing, 100),
            (Promoting, 100),
            (Promoting, 50),
            (Finalising, 0),
            (Succeeded, 0),
        ]
    );
    assert_eq!(w.scale, Scale::Zero);
    assert_eq!(w.promoted, vec![rev("b")]);
    assert_eq!(w.p.last_promoted_spec, Some(rev("b")));
    assert_eq!(w.outcomes, vec![Outcome::Promoted]);
    assert_eq!(
        w.messages(),
        vec![
            "New revision detected! Scaling up podinfo.test",
            "Starting canary analysis for podinfo.test",
            "Advance podinfo.test canary weight 100",
            "Copying podinfo.test template spec to podinfo-primary.test",
            "Advance podinfo.test primary weight 50",
            "Advance podinfo.test primary weight 100",
            "Promotion completed! Scaling down podinfo.test",
        ]
    );
}

#[test]
fn progressive_steps_are_capped_at_max_weight() {
    let mut s = settings();
    s.step_weight = 20;
    s.max_weight = 50;
    let mut w = World::initialized(s);
    w.revision = rev("b");
    let seen = w.run_to_end(40);
    let weights: Vec<u32> = seen
        .iter()
        .filter(|(p, _)| *p == Phase::Progressing)
        .map(|(_, w)| *w)
        .collect();
    // Flagger would go 20 → 40 → 60; serin stops at maxWeight.
    assert_eq!(weights, vec![0, 20, 40, 50]);
    assert_eq!(w.p.phase, Some(Phase::Succeeded));
}

#[test]
fn step_weights_follow_the_list() {
    let mut s = settings();
    s.step_weight = 0;
    s.step_weights = vec![1, 5, 20, 50, 80];
    let mut w = World::initialized(s);
    w.revision = rev("b");
    let seen = w.run_to_end(40);
    let weights: Vec<u32> = seen
        .iter()
        .filter(|(p, _)| *p == Phase::Progressing)
        .map(|(_, w)| *w)
        .collect();
    assert_eq!(weights, vec![0, 1, 5, 20, 50, 80]);
}

#[test]
fn failed_checks_roll_back_at_threshold_and_leave_primary_alone() {
    let mut w = World::initialized(settings());
    w.revision = rev("b");
    w.step(); // Progressing 0
    w.tick(); // starting analysis, weight 10
    assert_eq!(w.state(), (Phase::Progressing, 10));
    w.analysis = Err("Halt podinfo.test advancement success rate 50.00% < 99%".into());
    w.tick();
    assert_eq!(w.p.failed_checks, 1);
    assert_eq!(
        w.state(),
        (Phase::Progressing, 10),
        "weight holds on a failed check"
    );
    w.tick();
    assert_eq!(w.state(), (Phase::Failed, 0));
    assert_eq!(w.p.failed_checks, 2);
    assert_eq!(w.scale, Scale::Zero);
    assert!(
        w.promoted.is_empty(),
        "the primary is never touched by a rollback"
    );
    assert_eq!(w.p.last_applied_spec, Some(rev("b")));
    assert_eq!(w.p.last_promoted_spec, Some(rev("a")));
    let tail: Vec<&str> = w.messages().into_iter().rev().take(3).collect();
    assert_eq!(
        tail,
        vec![
            "Canary failed! Scaling down podinfo.test",
            "Rolling back podinfo.test failed checks threshold reached 2",
            "Halt podinfo.test advancement success rate 50.00% < 99%",
        ]
    );
    assert_eq!(
        w.alerts.last().unwrap(),
        &Alert {
            severity: Severity::Error,
            message: "Failed checks threshold reached 2".into(),
            with_metadata: false
        }
    );
    assert_eq!(w.outcomes, vec![Outcome::Failed]);

    // The same bad revision does not start again ...
    w.tick();
    assert_eq!(w.state(), (Phase::Failed, 0));
    // ... but a newer one is never swallowed (docs/flagger-contract.md §3.3 step 11, §9.5).
    w.revision = rev("c");
    w.analysis = Ok(());
    w.step();
    assert_eq!(w.state(), (Phase::Progressing, 0));
    assert_eq!(w.p.failed_checks, 0);
}

#[test]
fn reverting_to_the_promoted_revision_is_not_a_new_revision() {
    let mut w = World::initialized(settings());
    w.revision = rev("b");
    w.step();
    w.tick();
    w.analysis = Err("bad".into());
    w.tick();
    w.tick();
    assert_eq!(w.p.phase, Some(Phase::Failed));
    w.revision = rev("a");
    w.tick();
    assert_eq!(w.p.phase, Some(Phase::Failed));
    assert_eq!(w.scale, Scale::Zero);
}

#[test]
fn config_change_starts_an_analysis() {
    let mut w = World::initialized(settings());
    w.configs
        .insert("configmap/podinfo-config".into(), "0a1b2c3d".into());
    w.step();
    assert_eq!(w.state(), (Phase::Progressing, 0));
    assert_eq!(w.p.tracked_configs, w.configs);
}

#[test]
fn new_revision_mid_analysis_restarts() {
    let mut w = World::initialized(settings());
    w.revision = rev("b");
    w.step();
    w.tick();
    w.tick();
    assert_eq!(w.state(), (Phase::Progressing, 20));
    w.revision = rev("c");
    w.advance(1);
    assert_eq!(w.state(), (Phase::Progressing, 0));
    assert_eq!(w.p.last_applied_spec, Some(rev("c")));
    assert_eq!(
        w.messages().last(),
        Some(&"New revision detected! Restarting analysis for podinfo.test")
    );
    assert_eq!(
        routes(&w.p),
        Routes {
            primary: 100,
            canary: 0,
            mirror: false
        }
    );
}

#[test]
fn canary_never_ready_rolls_back_at_serins_deadline() {
    let mut s = settings();
    s.progress_deadline = Duration::from_secs(120);
    let mut w = World::initialized(s);
    w.revision = rev("b");
    w.canary =
        Readiness::Waiting("0 of 1 (readyThreshold 100%) updated replicas are available".into());
    let plan = w.step();
    assert_eq!(w.state(), (Phase::Progressing, 0));
    assert!(plan.requeue_after.unwrap() <= Duration::from_secs(120));
    w.advance(60);
    assert_eq!(w.p.phase, Some(Phase::Progressing));
    w.advance(61);
    assert_eq!(w.state(), (Phase::Failed, 0));
    assert_eq!(w.scale, Scale::Zero);
    let msgs = w.messages();
    assert!(msgs.iter().any(|m| m.starts_with("Rolling back podinfo.test progress deadline exceeded canary deployment podinfo.test not ready")), "{msgs:?}");
    assert!(
        w.alerts.iter().any(|a| a.severity == Severity::Error
            && a.message.starts_with("Progress deadline exceeded"))
    );
}

#[test]
fn permanent_canary_failure_rolls_back_at_once() {
    let mut w = World::initialized(settings());
    w.revision = rev("b");
    w.step();
    w.canary = Readiness::Failed("deployment \"podinfo\" exceeded its progress deadline".into());
    w.advance(1);
    assert_eq!(w.state(), (Phase::Failed, 0));
}

#[test]
fn skip_analysis_promotes_once_the_canary_is_ready() {
    let mut s = settings();
    s.skip_analysis = true;
    let mut w = World::initialized(s);
    w.revision = rev("b");
    w.canary = Readiness::Waiting("starting".into());
    w.step();
    assert_eq!(w.p.phase, Some(Phase::Progressing));
    assert!(w.promoted.is_empty());
    w.canary = Readiness::Ready;
    w.advance(1);
    assert_eq!(w.state(), (Phase::Succeeded, 0));
    assert_eq!(w.promoted, vec![rev("b")]);
    assert_eq!(w.outcomes, vec![Outcome::Skipped]);
    assert_eq!(
        w.messages().last(),
        Some(&"Promotion completed! Canary analysis was skipped for podinfo.test")
    );
}

#[test]
fn ab_testing_iterations_then_promotion() {
    let mut s = settings();
    s.strategy = Strategy::ABTesting;
    s.iterations = 3;
    s.step_weight = 0;
    let mut w = World::initialized(s);
    w.revision = rev("b");
    w.run_to_end(40);
    assert_eq!(w.p.phase, Some(Phase::Succeeded));
    let msgs = w.messages();
    for i in 1..=3 {
        let want = format!("Advance podinfo.test canary iteration {i}/3");
        assert!(msgs.contains(&want.as_str()), "{msgs:?}");
    }
    assert!(msgs.contains(&"Routing all traffic to primary"));
}

#[test]
fn blue_green_with_mirroring() {
    let mut s = settings();
    s.strategy = Strategy::BlueGreen;
    s.iterations = 2;
    s.mirror = true;
    let mut w = World::initialized(s);
    w.revision = rev("b");
    w.step();
    w.tick();
    assert_eq!(
        routes(&w.p),
        Routes {
            primary: 100,
            canary: 0,
            mirror: true
        }
    );
    assert_eq!(w.p.iterations, 1);
    w.tick();
    assert_eq!(w.p.iterations, 2);
    w.tick();
    assert_eq!(
        routes(&w.p),
        Routes {
            primary: 0,
            canary: 100,
            mirror: false
        }
    );
    assert_eq!(
        w.messages().last(),
        Some(&"Stop traffic mirroring and route all traffic to canary")
    );
    w.tick();
    assert_eq!(w.p.phase, Some(Phase::Promoting));
    w.run_to_end(10);
    assert_eq!(w.state(), (Phase::Succeeded, 0));
}

#[test]
fn mirror_with_canary_strategy_mirrors_first_then_steps() {
    let mut s = settings();
    s.mirror = true;
    let mut w = World::initialized(s);
    w.revision = rev("b");
    w.step();
    w.tick();
    assert_eq!(
        routes(&w.p),
        Routes {
            primary: 100,
            canary: 0,
            mirror: true
        }
    );
    assert_eq!(
        w.messages()[w.messages().len() - 2..],
        [
            "Starting canary analysis for podinfo.test",
            "Advance podinfo.test canary weight 0"
        ]
    );
    w.tick();
    assert_eq!(
        routes(&w.p),
        Routes {
            primary: 90,
            canary: 10,
            mirror: false
        }
    );
    assert!(
        !w.messages()[2..].contains(&"Starting canary analysis for podinfo.test"),
        "the mirrored step is not mistaken for the first step"
    );
}

#[test]
fn confirm_promotion_gate_holds_in_waiting_promotion_with_real_weight() {
    let mut s = settings();
    s.step_weight = 50;
    s.hooks = vec![HookType::ConfirmPromotion];
    let mut w = World::initialized(s);
    w.gates.insert(
        HookType::ConfirmPromotion,
        Gate::Closed {
            hook: "approve".into(),
        },
    );
    w.revision = rev("b");
    w.step();
    w.tick();
    w.tick();
    assert_eq!(w.state(), (Phase::WaitingPromotion, 50));
    w.tick();
    assert_eq!(w.state(), (Phase::WaitingPromotion, 50));
    assert_eq!(
        w.alerts
            .iter()
            .filter(|a| a.message == msg::ALERT_WAITING_PROMOTION)
            .count(),
        1,
        "the waiting alert is sent once, not every interval"
    );
    w.gates.insert(HookType::ConfirmPromotion, Gate::Open);
    w.tick();
    assert_eq!(w.state(), (Phase::Promoting, 50));
}

#[test]
fn confirm_rollout_gate_waits_before_scaling_up() {
    let mut s = settings();
    s.hooks = vec![HookType::ConfirmRollout];
    let mut w = World::initialized(s);
    w.gates.insert(
        HookType::ConfirmRollout,
        Gate::Closed {
            hook: "gate".into(),
        },
    );
    w.revision = rev("b");
    w.step();
    assert_eq!(w.p.phase, Some(Phase::Waiting));
    assert_eq!(w.scale, Scale::Zero);
    assert_eq!(
        w.messages().last(),
        Some(&"Halt podinfo.test advancement waiting for approval gate")
    );
    w.gates.insert(HookType::ConfirmRollout, Gate::Open);
    w.tick();
    assert_eq!(w.state(), (Phase::Progressing, 0));
    assert_eq!(w.scale, Scale::Up);
}

#[test]
fn rollback_webhook_rolls_back() {
    let mut s = settings();
    s.hooks = vec![HookType::Rollback];
    let mut w = World::initialized(s);
    w.revision = rev("b");
    w.step();
    w.tick();
    w.rollback = RollbackSignal::Requested { hook: "rb".into() };
    w.tick();
    assert_eq!(w.state(), (Phase::Failed, 0));
    assert!(
        w.messages()
            .contains(&"Rolling back podinfo.test manual webhook invoked")
    );
}

#[test]
fn pre_rollout_failure_counts_and_retries() {
    let mut s = settings();
    s.hooks = vec![HookType::PreRollout];
    s.threshold = 3;
    let mut w = World::initialized(s);
    w.pre_rollout = Err("Halt podinfo.test advancement pre-rollout check smoke failed boom".into());
    w.revision = rev("b");
    w.step();
    w.tick();
    assert_eq!(w.state(), (Phase::Progressing, 0));
    assert_eq!(w.p.failed_checks, 1);
    w.pre_rollout = Ok(());
    w.tick();
    assert_eq!(w.state(), (Phase::Progressing, 10));
}

#[test]
fn failed_promotion_routes_everything_to_the_canary() {
    let mut s = settings();
    s.step_weight = 50;
    let mut w = World::initialized(s);
    w.revision = rev("b");
    w.step();
    w.tick();
    w.tick();
    assert_eq!(w.p.phase, Some(Phase::Promoting));
    w.primary = Some(Readiness::Failed(
        "deployment \"podinfo-primary\" exceeded its progress deadline".into(),
    ));
    w.advance(1);
    assert_eq!(w.state(), (Phase::Failed, 100));
    assert_eq!(
        routes(&w.p),
        Routes {
            primary: 0,
            canary: 100,
            mirror: false
        }
    );
    assert_ne!(w.scale, Scale::Zero, "the canary keeps serving");
    assert!(
        w.messages()
            .last()
            .unwrap()
            .starts_with("Promotion of podinfo.test failed, primary not ready:")
    );
}

#[test]
fn promotion_waits_for_the_primary_to_run_the_promoted_revision() {
    let mut s = settings();
    s.step_weight = 50;
    let mut w = World::initialized(s);
    w.revision = rev("b");
    w.step();
    w.tick();
    w.tick();
    assert_eq!(w.p.phase, Some(Phase::Promoting));
    // A stale cache still shows the old primary template as ready.
    w.primary_revision = Some(rev("a"));
    w.advance(1);
    assert_eq!(w.state(), (Phase::Promoting, 50));
    w.primary_revision = Some(rev("b"));
    w.advance(1);
    assert_eq!(w.state(), (Phase::Finalising, 0));
    w.advance(1);
    assert_eq!(
        w.p.phase,
        Some(Phase::Finalising),
        "routes settle before the canary goes away"
    );
    w.advance(3);
    assert_eq!(w.state(), (Phase::Succeeded, 0));
}

#[test]
fn steps_are_paced_without_drift() {
    let mut w = World::initialized(settings());
    w.revision = rev("b");
    w.step();
    let start = w.now;
    w.step(); // first step at once (canary ready)
    assert_eq!(w.p.last_step_time, Some(start));
    // A watch event 10 s later changes nothing.
    w.advance(10);
    assert_eq!(w.p.canary_weight, 10);
    // The reconcile runs 7 s late; the next anchor still is start + 2 intervals.
    w.advance(57);
    assert_eq!(w.p.canary_weight, 20);
    assert_eq!(
        w.p.last_step_time,
        Some(start + chrono::Duration::seconds(60))
    );
    let plan = w.step();
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(53)));
}

#[test]
fn suspend_freezes_everything() {
    let mut w = World::initialized(settings());
    w.revision = rev("b");
    w.step();
    w.tick();
    let frozen = w.p.clone();
    w.s.suspend = true;
    w.revision = rev("c");
    w.tick();
    assert_eq!(w.p.canary_weight, frozen.canary_weight);
    assert_eq!(w.p.phase, frozen.phase);
    assert_eq!(w.messages().last(), Some(&msg::SUSPENDED));
}

#[test]
fn conditions_follow_flagger() {
    assert_eq!(promoted_condition(Phase::Succeeded, "Deployment").0, "True");
    assert_eq!(
        promoted_condition(Phase::Failed, "Deployment"),
        (
            "False",
            "Canary analysis failed, Deployment scaled to zero.".to_string()
        )
    );
    assert_eq!(
        promoted_condition(Phase::WaitingPromotion, "Deployment").1,
        "Waiting for approval."
    );
}

// ---- property tests ----

#[derive(Clone, Debug)]
enum Op {
    Wait(u16),
    NewRevision(u8),
    CanaryReady(bool),
    PrimaryReady(bool),
    Analysis(bool),
    Gate(bool),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        4 => (1u16..200).prop_map(Op::Wait),
        1 => (0u8..4).prop_map(Op::NewRevision),
        1 => any::<bool>().prop_map(Op::CanaryReady),
        1 => any::<bool>().prop_map(Op::PrimaryReady),
        2 => any::<bool>().prop_map(Op::Analysis),
        1 => any::<bool>().prop_map(Op::Gate),
    ]
}

fn arb_settings() -> impl proptest::strategy::Strategy<Value = Settings> {
    (
        0usize..3,
        1u32..60,
        prop::collection::btree_set(1u32..=100, 0..4),
        1u32..=100,
        0u32..60,
        1u32..5,
        1u32..4,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(strategy, step, steps, max, swp, threshold, iterations, mirror, gates)| {
                let mut s = settings();
                s.strategy = [Strategy::Canary, Strategy::BlueGreen, Strategy::ABTesting][strategy];
                s.step_weights = steps.into_iter().collect();
                s.step_weight = if s.step_weights.is_empty() { step } else { 0 };
                s.max_weight = max;
                s.step_weight_promotion = swp;
                s.threshold = threshold;
                s.iterations = if s.strategy == Strategy::Canary {
                    0
                } else {
                    iterations
                };
                s.mirror = mirror && s.strategy != Strategy::ABTesting;
                s.progress_deadline = Duration::from_secs(300);
                if gates {
                    s.hooks = vec![HookType::ConfirmPromotion, HookType::ConfirmTrafficIncrease];
                }
                s
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_under_any_sequence(s in arb_settings(), ops in prop::collection::vec(op(), 1..80)) {
        let max = max_weight(s.max_weight, &s.step_weights);
        let strategy = s.strategy;
        let mut w = World::initialized(s);
        for op in ops {
            let before = w.p.clone();
            match op {
                Op::Wait(secs) => { w.now += chrono::Duration::seconds(secs as i64); }
                Op::NewRevision(r) => { w.revision = rev(&format!("r{r}")); }
                Op::CanaryReady(ok) => {
                    w.canary = if ok { Readiness::Ready } else { Readiness::Waiting("rolling".into()) };
                }
                Op::PrimaryReady(ok) => {
                    w.primary = Some(if ok { Readiness::Ready } else { Readiness::Waiting("rolling".into()) });
                }
                Op::Analysis(ok) => { w.analysis = if ok { Ok(()) } else { Err("halt".into()) }; }
                Op::Gate(open) => {
                    let g = if open { Gate::Open } else { Gate::Closed { hook: "g".into() } };
                    w.gates.insert(HookType::ConfirmPromotion, g.clone());
                    w.gates.insert(HookType::ConfirmTrafficIncrease, g);
                }
            }
            let events_before = w.events.len();
            w.step();
            let r = routes(&w.p);
            prop_assert_eq!(r.primary + r.canary, 100);
            let phase = w.p.phase.unwrap();
            if strategy == Strategy::Canary && matches!(phase, Phase::Progressing | Phase::WaitingPromotion) {
                prop_assert!(w.p.canary_weight <= max, "weight {} above max {}", w.p.canary_weight, max);
            }
            let same_run = before.last_applied_spec == w.p.last_applied_spec
                && before.phase.is_some_and(in_run)
                && in_run(phase);
            if same_run {
                prop_assert!(w.p.failed_checks >= before.failed_checks, "failedChecks decreased");
            }
            if let Some(prev @ (Phase::Failed | Phase::Succeeded)) = before.phase
                && phase != prev
            {
                prop_assert!(
                    Some(&w.revision) != before.last_applied_spec.as_ref()
                        && Some(&w.revision) != before.last_promoted_spec.as_ref(),
                    "left {:?} without a new revision", prev
                );
                prop_assert!(matches!(phase, Phase::Progressing | Phase::Waiting));
            }
            // The four Events that announce a phase (event webhooks carry it) announce the
            // phase the step wrote; no other Event announces one.
            for e in &w.events[events_before..] {
                let expected = [
                    (msg::INITIALIZATION_DONE, Phase::Initialized),
                    (msg::NEW_REVISION, Phase::Progressing),
                    (msg::PROMOTION_COMPLETED, Phase::Succeeded),
                    (msg::CANARY_FAILED, Phase::Failed),
                ]
                .into_iter()
                .find(|(opening, _)| e.message.starts_with(opening))
                .map(|(_, p)| p);
                prop_assert_eq!(e.announces, expected, "{}", e.message);
                if let Some(p) = e.announces {
                    prop_assert_eq!(p, phase, "{} announces {:?}", e.message, p);
                }
            }
            let rolled_back = w.events[events_before..].iter().any(|e| e.message.starts_with("Canary failed!"));
            if rolled_back {
                prop_assert_eq!(w.state(), (Phase::Failed, 0));
                prop_assert_eq!(w.scale, Scale::Zero);
                prop_assert_eq!(routes(&w.p), Routes { primary: 100, canary: 0, mirror: false });
            }
        }
    }
}

mod hooks;
mod migration;

#[test]
fn on_no_data_hold_waits_without_failing_then_rolls_back_at_the_deadline() {
    let mut w = World::initialized(settings());
    w.revision = rev("b");
    w.step(); // new revision: Progressing at 0
    w.step(); // first step: weight 10
    assert_eq!(w.state(), (Phase::Progressing, 10));
    let since = w.now + chrono::Duration::seconds(60);
    let text = "Halt advancement no values found for metric: errors".to_string();
    w.hold = Some(NoDataHold {
        since,
        text: text.clone(),
    });
    w.events.clear();
    for _ in 0..5 {
        w.tick();
        assert_eq!(w.state(), (Phase::Progressing, 10), "held, not advanced");
        assert_eq!(w.p.failed_checks, 0, "a hold is not a failed check");
    }
    assert_eq!(w.events.len(), 5);
    assert!(
        w.events
            .iter()
            .all(|e| e.kind == EventType::Warning && e.message == msg::holding_no_data(&text))
    );
    // Data comes back: the run goes on.
    w.hold = None;
    w.tick();
    assert_eq!(w.state(), (Phase::Progressing, 20));
    // A new stretch without data that outlasts the deadline (600 s) rolls back.
    w.hold = Some(NoDataHold {
        since: w.now + chrono::Duration::seconds(60),
        text: text.clone(),
    });
    let mut ticks = 0;
    while w.p.phase == Some(Phase::Progressing) && ticks < 30 {
        w.tick();
        ticks += 1;
    }
    assert_eq!(w.p.phase, Some(Phase::Failed));
    assert_eq!(
        ticks, 11,
        "held at 60..=540 s after the stretch began, failed at 600 s"
    );
    assert_eq!(w.p.failed_checks, 0);
    let deadline = msg::no_data_deadline(&text, 600);
    assert!(
        w.messages().contains(&deadline.as_str()),
        "{:?}",
        w.messages()
    );
    assert!(
        w.messages()
            .contains(&msg::rolling_back_deadline("podinfo.test", &deadline).as_str())
    );
    assert_eq!(w.outcomes.last(), Some(&Outcome::Failed));
}

#[test]
fn a_failure_wins_over_a_hold() {
    let mut w = World::initialized(settings());
    w.revision = rev("b");
    w.step();
    w.step();
    w.hold = Some(NoDataHold {
        since: w.now,
        text: "no values".into(),
    });
    w.analysis = Err("Halt advancement".into());
    w.tick();
    assert_eq!(w.p.failed_checks, 1);
}
