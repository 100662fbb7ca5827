//! Gates, rollback hooks, Flagger [#1248](https://github.com/fluxcd/flagger/issues/1248) and alerts
//! on every failure path, driven the way the shell drives the core, with the shell's per-hook
//! answers (`CheckResults::answered`).

use super::*;

/// The hook names the simulated shell reports per kind.
fn hook_name(kind: HookType) -> &'static str {
    match kind {
        HookType::ConfirmRollout => "approve-rollout",
        HookType::ConfirmTrafficIncrease => "approve-traffic",
        HookType::ConfirmPromotion => "approve-promotion",
        HookType::PreRollout => "smoke",
        HookType::Rollback => "rb",
        _ => "other",
    }
}

/// Like `World::step`, but the answers carry the hooks that answered, as the shell's do.
fn step(w: &mut World) -> Plan {
    let mut obs = w.obs();
    for _ in 0..10 {
        match decide(&w.s, &w.p, &obs, w.now) {
            Decision::Need(need) => {
                w.needs.push(need.clone());
                match need {
                    Need::Gate(kind) => {
                        let g = w.gates.get(&kind).cloned().unwrap_or(Gate::Open);
                        if g == Gate::Open {
                            obs.results.answered.push((kind, hook_name(kind).into()));
                        }
                        obs.results.gate = Some((kind, g));
                    }
                    Need::RollbackHooks => {
                        if w.rollback == RollbackSignal::None {
                            let rb = (HookType::Rollback, hook_name(HookType::Rollback).into());
                            obs.results.answered.push(rb);
                        }
                        obs.results.rollback = Some(w.rollback.clone());
                    }
                    Need::PreRollout => {
                        if w.pre_rollout.is_ok() {
                            let pr = (HookType::PreRollout, hook_name(HookType::PreRollout).into());
                            obs.results.answered.push(pr);
                        }
                        obs.results.pre_rollout = Some(w.pre_rollout.clone());
                    }
                    Need::Analysis => obs.results.analysis = Some(w.analysis.clone()),
                }
            }
            Decision::Plan(plan) => {
                w.p = plan.progress.clone();
                if plan.scale != Scale::Keep {
                    w.scale = plan.scale;
                }
                for a in &plan.actions {
                    if let Action::Promote { revision } = a {
                        w.primary_revision = Some(revision.clone());
                        w.promoted.push(revision.clone());
                    }
                }
                w.events.extend(plan.events.iter().cloned());
                w.alerts.extend(plan.alerts.iter().cloned());
                w.outcomes.extend(plan.outcome);
                return *plan;
            }
        }
    }
    panic!("decide kept asking for checks");
}

fn tick(w: &mut World) -> Plan {
    w.now += chrono::Duration::from_std(w.s.interval).unwrap();
    step(w)
}

fn count(w: &World, text: &str) -> usize {
    w.messages().iter().filter(|m| **m == text).count()
}

fn needs(w: &World, need: &Need) -> usize {
    w.needs.iter().filter(|n| *n == need).count()
}

fn closed(hook: &str) -> Gate {
    Gate::Closed { hook: hook.into() }
}

/// A new revision "b" taken up (Progressing at weight 0, nothing analysed yet).
fn started(s: Settings) -> World {
    let mut w = World::initialized(s);
    w.revision = rev("b");
    step(&mut w);
    assert_eq!(w.state(), (Phase::Progressing, 0));
    w.events.clear();
    w.alerts.clear();
    w.needs.clear();
    w
}

#[test]
fn closed_traffic_gate_at_weight_zero_does_not_replay_the_start_flagger_1248() {
    let mut s = settings();
    s.hooks = vec![HookType::PreRollout, HookType::ConfirmTrafficIncrease];
    let mut w = started(s);
    w.gates
        .insert(HookType::ConfirmTrafficIncrease, closed("approve-traffic"));
    tick(&mut w);
    assert_eq!(w.state(), (Phase::Progressing, 0));
    assert_eq!(
        w.messages(),
        [
            "Starting canary analysis for podinfo.test",
            "Pre-rollout check smoke passed",
            "Halt podinfo.test advancement waiting for traffic increase approval approve-traffic",
        ]
    );
    for _ in 0..4 {
        tick(&mut w);
        assert_eq!(w.state(), (Phase::Progressing, 0));
    }
    assert_eq!(
        needs(&w, &Need::PreRollout),
        1,
        "pre-rollout hooks run once"
    );
    assert_eq!(
        needs(&w, &Need::Analysis),
        0,
        "no metrics while nothing reaches the canary"
    );
    assert_eq!(needs(&w, &Need::Gate(HookType::ConfirmTrafficIncrease)), 5);
    assert_eq!(count(&w, "Starting canary analysis for podinfo.test"), 1);
    assert_eq!(
        w.events.len(),
        3,
        "nothing repeats while the gate stays closed"
    );
    assert_eq!(w.alerts.len(), 1);
    assert_eq!(
        (w.alerts[0].severity, w.alerts[0].message.as_str()),
        (Severity::Warn, msg::ALERT_WAITING_TRAFFIC)
    );
    assert_eq!(
        w.p.gate,
        Some(GateState {
            kind: HookType::ConfirmTrafficIncrease,
            closed_by: Some("approve-traffic".into())
        })
    );

    w.gates.insert(HookType::ConfirmTrafficIncrease, Gate::Open);
    tick(&mut w);
    assert_eq!(w.state(), (Phase::Progressing, 10));
    assert_eq!(
        &w.messages()[3..],
        [
            "Confirm-traffic-increase check approve-traffic passed",
            "Advance podinfo.test canary weight 10",
        ]
    );
    assert_eq!(needs(&w, &Need::PreRollout), 1);
    assert_eq!(w.p.gate.as_ref().and_then(|g| g.closed_by.clone()), None);
    // From here on every step runs the analysis first.
    tick(&mut w);
    assert_eq!(w.state(), (Phase::Progressing, 20));
    assert_eq!(needs(&w, &Need::Analysis), 1);
}

#[test]
fn a_failing_pre_rollout_check_is_retried_each_interval() {
    let mut s = settings();
    s.hooks = vec![HookType::PreRollout, HookType::ConfirmTrafficIncrease];
    s.threshold = 5;
    let mut w = started(s);
    w.pre_rollout = Err("Halt podinfo.test advancement pre-rollout check smoke failed 503".into());
    tick(&mut w);
    tick(&mut w);
    assert_eq!(needs(&w, &Need::PreRollout), 2, "a failure is retried");
    assert_eq!(w.p.failed_checks, 2);
    assert_eq!(
        needs(&w, &Need::Gate(HookType::ConfirmTrafficIncrease)),
        0,
        "the gate is asked only after the pre-rollout checks pass"
    );
    w.pre_rollout = Ok(());
    tick(&mut w);
    assert_eq!(w.state(), (Phase::Progressing, 10));
}

#[test]
fn gate_waiting_events_and_alerts_once_per_closing_hook() {
    // (gate kind, settings tweak, waiting text, alert text, phase while closed)
    type Case = (
        HookType,
        fn(&mut Settings),
        &'static str,
        &'static str,
        Phase,
    );
    let cases: [Case; 3] = [
        (
            HookType::ConfirmRollout,
            |_| {},
            "Halt podinfo.test advancement waiting for approval approve-rollout",
            msg::ALERT_WAITING_APPROVAL,
            Phase::Waiting,
        ),
        (
            HookType::ConfirmTrafficIncrease,
            |_| {},
            "Halt podinfo.test advancement waiting for traffic increase approval approve-traffic",
            msg::ALERT_WAITING_TRAFFIC,
            Phase::Progressing,
        ),
        (
            HookType::ConfirmPromotion,
            |s| s.step_weight = 50,
            "Halt podinfo.test advancement waiting for promotion approval approve-promotion",
            msg::ALERT_WAITING_PROMOTION,
            Phase::WaitingPromotion,
        ),
    ];
    for (kind, tweak, waiting, alert, phase) in cases {
        for muted in [false, true] {
            let mut s = settings();
            tweak(&mut s);
            s.hooks = vec![kind];
            if muted {
                s.muted_hooks = vec![hook_name(kind).into()];
            }
            let mut w = World::initialized(s);
            w.gates.insert(kind, closed(hook_name(kind)));
            w.revision = rev("b");
            for _ in 0..6 {
                tick(&mut w);
            }
            assert_eq!(w.p.phase, Some(phase), "{kind:?}");
            assert_eq!(count(&w, waiting), 1, "{kind:?}: {:?}", w.messages());
            let alerts = w.alerts.iter().filter(|a| a.message == alert).count();
            assert_eq!(alerts, usize::from(!muted), "{kind:?} muted={muted}");
            assert_eq!(
                w.p.gate,
                Some(GateState {
                    kind,
                    closed_by: Some(hook_name(kind).into())
                }),
                "{kind:?}"
            );

            // Another hook closing it tells again.
            w.gates.insert(kind, closed("second"));
            tick(&mut w);
            let again = w
                .messages()
                .iter()
                .filter(|m| m.ends_with(" second"))
                .count();
            assert_eq!(again, 1, "{kind:?}");

            w.gates.insert(kind, Gate::Open);
            tick(&mut w);
            let passed = msg::gate_passed(kind, hook_name(kind));
            assert_eq!(count(&w, &passed), 1, "{kind:?}: {:?}", w.messages());
            assert_eq!(
                w.p.gate.as_ref().map(|g| (g.kind, g.closed_by.clone())),
                Some((kind, None)),
                "{kind:?}: the opened gate shows in progress"
            );
            assert!(
                w.p.phase != Some(phase) || w.p.canary_weight > 0,
                "{kind:?} moved on: {:?}",
                w.state()
            );
        }
    }
}

#[test]
fn passed_event_texts_match_flagger() {
    assert_eq!(
        msg::gate_passed(HookType::ConfirmRollout, "a"),
        "Confirm-rollout check a passed"
    );
    assert_eq!(
        msg::gate_passed(HookType::ConfirmTrafficIncrease, "a"),
        "Confirm-traffic-increase check a passed"
    );
    assert_eq!(
        msg::gate_passed(HookType::ConfirmPromotion, "a"),
        "Confirm-promotion check a passed"
    );
    assert_eq!(
        msg::gate_condition_reason(HookType::ConfirmTrafficIncrease, false),
        "ConfirmTrafficIncreaseClosed"
    );
    assert_eq!(
        msg::gate_condition_reason(HookType::ConfirmRollout, true),
        "ConfirmRolloutOpen"
    );
}

#[test]
fn a_revision_reverted_while_waiting_forgets_the_gate() {
    let mut s = settings();
    s.hooks = vec![HookType::ConfirmRollout];
    let mut w = World::initialized(s);
    w.gates
        .insert(HookType::ConfirmRollout, closed("approve-rollout"));
    w.revision = rev("b");
    tick(&mut w);
    assert_eq!(w.p.phase, Some(Phase::Waiting));
    w.revision = rev("a");
    tick(&mut w);
    assert_eq!(w.p.phase, Some(Phase::Succeeded));
    assert_eq!(w.p.gate, None);
    // The next revision waits again and says so again.
    w.revision = rev("c");
    tick(&mut w);
    assert_eq!(
        count(
            &w,
            "Halt podinfo.test advancement waiting for approval approve-rollout"
        ),
        2
    );
}

#[test]
fn confirm_rollout_open_stays_visible_during_the_run() {
    let mut s = settings();
    s.hooks = vec![HookType::ConfirmRollout];
    let mut w = World::initialized(s);
    w.revision = rev("b");
    tick(&mut w);
    assert_eq!(w.state(), (Phase::Progressing, 0));
    assert_eq!(
        w.messages(),
        [
            "Confirm-rollout check approve-rollout passed",
            "New revision detected! Scaling up podinfo.test"
        ]
    );
    assert_eq!(
        w.p.gate,
        Some(GateState {
            kind: HookType::ConfirmRollout,
            closed_by: None
        })
    );
    // It does not count as "the analysis started"
    // ([#1248](https://github.com/fluxcd/flagger/issues/1248) marker).
    tick(&mut w);
    assert_eq!(count(&w, "Starting canary analysis for podinfo.test"), 1);
    assert_eq!(w.state(), (Phase::Progressing, 10));
}

#[test]
fn rollback_hooks_tell_whether_they_signal() {
    let mut s = settings();
    s.hooks = vec![HookType::Rollback];
    let mut w = started(s);
    tick(&mut w);
    tick(&mut w);
    assert_eq!(count(&w, "Rollback hook rb not signaling a rollback"), 2);
    w.rollback = RollbackSignal::Requested { hook: "rb".into() };
    tick(&mut w);
    assert_eq!(w.state(), (Phase::Failed, 0));
    let tail: Vec<(EventType, &str)> = w.events[w.events.len() - 3..]
        .iter()
        .map(|e| (e.kind, e.message.as_str()))
        .collect();
    assert_eq!(
        tail,
        [
            (EventType::Warning, "Rollback check rb passed"),
            (
                EventType::Warning,
                "Rolling back podinfo.test manual webhook invoked"
            ),
            (
                EventType::Warning,
                "Canary failed! Scaling down podinfo.test"
            ),
        ]
    );
    assert_eq!(
        w.alerts.last().map(|a| (a.severity, a.message.as_str())),
        Some((Severity::Warn, msg::ALERT_ROLLBACK_WEBHOOK))
    );
}

/// Every way a run can fail sends an alert (Flagger misses pre-rollout failures and deadline
/// rollbacks, [#1663](https://github.com/fluxcd/flagger/issues/1663)).
#[test]
fn every_failure_path_alerts() {
    type Scenario = fn() -> World;
    let cases: [(&str, Scenario, Severity, &str); 5] = [
        (
            "failed checks",
            || {
                let mut w = started(settings());
                tick(&mut w);
                w.analysis = Err("Halt podinfo.test advancement success rate 50.00% < 99%".into());
                tick(&mut w);
                tick(&mut w);
                w
            },
            Severity::Error,
            "Failed checks threshold reached 2",
        ),
        (
            "pre-rollout failure",
            || {
                let mut s = settings();
                s.hooks = vec![HookType::PreRollout];
                s.threshold = 3;
                let mut w = started(s);
                w.pre_rollout =
                    Err("Halt podinfo.test advancement pre-rollout check smoke failed 500".into());
                tick(&mut w);
                tick(&mut w);
                w
            },
            Severity::Error,
            "Halt podinfo.test advancement pre-rollout check smoke failed 500",
        ),
        (
            "deadline",
            || {
                let mut s = settings();
                s.progress_deadline = Duration::from_secs(120);
                let mut w = started(s);
                w.canary = Readiness::Waiting("0 of 2 updated replicas are available".into());
                for _ in 0..4 {
                    tick(&mut w);
                }
                w
            },
            Severity::Error,
            "Progress deadline exceeded canary deployment podinfo.test not ready",
        ),
        (
            "rollback webhook",
            || {
                let mut s = settings();
                s.hooks = vec![HookType::Rollback];
                let mut w = started(s);
                w.rollback = RollbackSignal::Requested { hook: "rb".into() };
                tick(&mut w);
                w
            },
            Severity::Warn,
            msg::ALERT_ROLLBACK_WEBHOOK,
        ),
        (
            "failed promotion",
            || {
                let mut s = settings();
                s.step_weight = 50;
                let mut w = started(s);
                tick(&mut w);
                tick(&mut w);
                w.primary = Some(Readiness::Failed("exceeded its progress deadline".into()));
                w.advance(1);
                w
            },
            Severity::Error,
            "Promotion failed, primary not ready: ",
        ),
    ];
    for (name, scenario, severity, text) in cases {
        let w = scenario();
        let hits: Vec<&Alert> = w
            .alerts
            .iter()
            .filter(|a| a.severity == severity && a.message.starts_with(text))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "{name}: expected one {severity:?} alert {text:?}, got {:?}",
            w.alerts
        );
    }
}
