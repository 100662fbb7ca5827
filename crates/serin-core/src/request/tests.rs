//! Table tests of people's requests, driving `decide` the way the shell does.

use super::super::*;
use super::text;
use crate::tests::{rev, settings, t0};

/// A cluster that answers every check with `analysis` and opens every gate.
struct World {
    s: Settings,
    p: Progress,
    now: Time,
    revision: String,
    primary_revision: String,
    canary: Readiness,
    analysis: Result<(), CheckFailed>,
    request: Option<Request>,
    plan: Option<Plan>,
    events: Vec<Event>,
    alerts: Vec<Alert>,
    promoted: Vec<String>,
}

impl World {
    /// A canary in `phase` at `weight`, analysing revision "b" (primary runs "a").
    fn at(phase: Phase, weight: u32) -> World {
        let analysing = super::super::in_run(phase) || phase == Phase::Failed;
        let idle = matches!(phase, Phase::Succeeded | Phase::Initialized);
        World {
            s: settings(),
            p: Progress {
                phase: Some(phase),
                canary_weight: weight,
                last_applied_spec: Some(rev(if analysing { "b" } else { "a" })),
                last_promoted_spec: Some(rev("a")),
                last_step_time: Some(t0()),
                ..Default::default()
            },
            now: t0() + chrono::Duration::seconds(1),
            revision: rev(if idle { "a" } else { "b" }),
            primary_revision: rev("a"),
            canary: Readiness::Ready,
            analysis: Ok(()),
            request: None,
            plan: None,
            events: vec![],
            alerts: vec![],
            promoted: vec![],
        }
    }

    fn ask(&mut self, verb: &str, id: &str) -> &mut Self {
        self.request = Some(Request {
            id: id.into(),
            verb: Verb::parse(verb),
            by: "alice".into(),
        });
        self
    }

    fn step(&mut self) -> &mut Self {
        let mut obs = Observation {
            revision: self.revision.clone(),
            configs: Default::default(),
            canary: self.canary.clone(),
            primary: Some(Readiness::Ready),
            primary_revision: Some(self.primary_revision.clone()),
            results: Default::default(),
            request: self.request.clone(),
        };
        for _ in 0..10 {
            match decide(&self.s, &self.p, &obs, self.now) {
                Decision::Need(Need::Gate(k)) => obs.results.gate = Some((k, Gate::Open)),
                Decision::Need(Need::RollbackHooks) => {
                    obs.results.rollback = Some(RollbackSignal::None)
                }
                Decision::Need(Need::PreRollout) => obs.results.pre_rollout = Some(Ok(())),
                Decision::Need(Need::Analysis) => {
                    obs.results.analysis = Some(self.analysis.clone())
                }
                Decision::Plan(plan) => {
                    self.p = plan.progress.clone();
                    for a in &plan.actions {
                        if let Action::Promote { revision } = a {
                            self.primary_revision = revision.clone();
                            self.promoted.push(revision.clone());
                        }
                    }
                    self.events.extend(plan.events.iter().cloned());
                    self.alerts.extend(plan.alerts.iter().cloned());
                    self.plan = Some(*plan);
                    return self;
                }
            }
        }
        panic!("decide kept asking for checks");
    }

    fn tick(&mut self) -> &mut Self {
        self.now += chrono::Duration::from_std(self.s.interval).unwrap();
        self.step()
    }

    fn phase(&self) -> Phase {
        self.p.phase.unwrap()
    }

    fn messages(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.message.as_str()).collect()
    }

    fn last(&self) -> &request::Handled {
        self.p.requests.last.as_ref().expect("a handled request")
    }
}

#[test]
fn requests_are_parsed_from_annotations() {
    let a = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let full = a(&[
        (request::REQUEST_ANNOTATION, "promote"),
        (request::REQUESTED_BY_ANNOTATION, "alice"),
        (
            request::REQUESTED_AT_ANNOTATION,
            "2026-01-01T00:00:00.000001Z",
        ),
    ]);
    assert_eq!(
        Request::from_annotations(&full),
        Some(Request {
            id: "2026-01-01T00:00:00.000001Z".into(),
            verb: Verb::Promote,
            by: "alice".into()
        })
    );
    let anonymous = a(&[
        (request::REQUEST_ANNOTATION, "bogus"),
        (request::REQUESTED_AT_ANNOTATION, "t"),
    ]);
    let r = Request::from_annotations(&anonymous).unwrap();
    assert_eq!(
        (r.verb, r.by.as_str()),
        (Verb::Unknown("bogus".into()), "unknown")
    );
    assert_eq!(
        Request::from_annotations(&a(&[(request::REQUEST_ANNOTATION, "abort")])),
        None,
        "no id, no request"
    );
}

/// (phase, weight, verb) → (accepted, phase afterwards).
#[test]
fn each_request_applies_only_where_it_makes_sense() {
    use Phase::*;
    let table: &[(Phase, u32, &str, bool, Phase)] = &[
        (Progressing, 20, "promote", true, Promoting),
        (WaitingPromotion, 50, "promote", true, Promoting),
        (Promoting, 50, "promote", false, Promoting),
        (Succeeded, 0, "promote", false, Succeeded),
        (Failed, 0, "promote", false, Failed),
        (Waiting, 0, "promote", false, Waiting),
        (Progressing, 20, "abort", true, Failed),
        (WaitingPromotion, 50, "abort", true, Failed),
        (Waiting, 0, "abort", true, Failed),
        (Promoting, 50, "abort", false, Promoting),
        (Finalising, 0, "abort", false, Finalising),
        (Succeeded, 0, "abort", false, Succeeded),
        (Failed, 0, "retry", true, Progressing),
        (Failed, 100, "retry", false, Failed),
        (Progressing, 20, "retry", false, Progressing),
        (Succeeded, 0, "retry", false, Succeeded),
        (Progressing, 20, "pause", true, Progressing),
        (Succeeded, 0, "pause", true, Succeeded),
        (Progressing, 20, "resume", false, Progressing),
        (Progressing, 20, "rewind", false, Progressing),
    ];
    for &(phase, weight, verb, accepted, after) in table {
        let mut w = World::at(phase, weight);
        w.ask(verb, "r1").step();
        let case = format!("{verb} in {phase:?} at {weight}");
        assert_eq!(w.last().accepted, accepted, "{case}: {:?}", w.messages());
        assert_eq!(w.last().id, "r1", "{case}");
        assert_eq!(w.phase(), after, "{case}: {:?}", w.messages());
        let answer = w.last().message.clone();
        assert!(w.messages().contains(&answer.as_str()), "{case}: {answer}");
        assert!(
            answer.contains("alice"),
            "{case}: the Event names who asked: {answer}"
        );
        if !accepted {
            assert!(
                w.events.iter().any(|e| e.kind == EventType::Warning
                    && e.message.starts_with(&format!(
                        "Request to {verb} podinfo.test by alice not carried out"
                    ))),
                "{case}: {:?}",
                w.messages()
            );
            assert!(w.alerts.is_empty(), "{case}: refusals do not alert");
        } else {
            assert!(
                w.alerts
                    .iter()
                    .any(|a| a.severity == Severity::Warn && a.message.contains("alice")),
                "{case}: accepted requests alert: {:?}",
                w.alerts
            );
        }
    }
}

#[test]
fn a_request_is_handled_once_also_when_replayed() {
    let mut w = World::at(Phase::Progressing, 20);
    w.ask("abort", "r1").step();
    assert_eq!(w.phase(), Phase::Failed);
    let n = w.events.len();
    // The same annotations seen again (a re-apply, a resync, a restarted controller).
    w.tick().tick();
    assert_eq!(w.events.len(), n, "{:?}", w.messages());
    assert_eq!(w.phase(), Phase::Failed);
    // A crash before the status write: the old progress with the same request decides the same.
    let mut again = World::at(Phase::Progressing, 20);
    again.ask("abort", "r1").step();
    assert_eq!(again.p, w.p);
}

#[test]
fn promote_skips_the_rest_of_the_analysis_and_the_promotion_gate() {
    let mut w = World::at(Phase::Progressing, 10);
    w.s.hooks = vec![HookType::ConfirmPromotion];
    w.ask("promote", "r1").step();
    assert_eq!(w.phase(), Phase::Promoting);
    assert_eq!(w.promoted, vec![rev("b")]);
    assert_eq!(
        w.messages()[..2],
        [
            text::promotion_requested("podinfo.test", "alice").as_str(),
            msg::copying_template("podinfo.test", "podinfo-primary.test").as_str()
        ]
    );
    // The primary runs "b" now: traffic moves back and the run ends without another analysis.
    for _ in 0..3 {
        w.tick();
    }
    assert_eq!(w.phase(), Phase::Succeeded);
    assert_eq!(w.p.canary_weight, 0);
    assert_eq!(w.p.last_promoted_spec, Some(rev("b")));
}

#[test]
fn promote_is_refused_when_the_target_moved_on() {
    let mut w = World::at(Phase::Progressing, 20);
    w.revision = rev("c");
    w.ask("promote", "r1").step();
    assert!(!w.last().accepted);
    assert!(w.promoted.is_empty());
    // The decision went on as usual: the new revision restarts the analysis.
    assert_eq!((w.phase(), w.p.canary_weight), (Phase::Progressing, 0));
    assert_eq!(w.p.last_applied_spec, Some(rev("c")));
}

#[test]
fn abort_rolls_back_at_once_and_the_rejected_revision_stays_rejected() {
    let mut w = World::at(Phase::Progressing, 30);
    w.ask("abort", "r1").step();
    let plan = w.plan.clone().unwrap();
    assert_eq!(w.phase(), Phase::Failed);
    assert_eq!(
        routes(&w.p),
        Routes {
            primary: 100,
            canary: 0,
            mirror: false
        }
    );
    assert_eq!(plan.scale, Scale::Zero);
    assert_eq!(plan.outcome, Some(Outcome::Failed));
    assert!(w.promoted.is_empty(), "the primary is untouched");
    assert_eq!(
        w.messages(),
        [
            text::rolling_back_requested("podinfo.test", "alice").as_str(),
            msg::canary_failed("podinfo.test").as_str()
        ]
    );
    w.tick().tick();
    assert_eq!(
        w.phase(),
        Phase::Failed,
        "revision b is not analysed again by itself"
    );
    // Waiting for approval: the waiting revision is the one rejected.
    let mut w = World::at(Phase::Waiting, 0);
    w.ask("abort", "r1").step();
    assert_eq!(w.p.last_applied_spec, Some(rev("b")));
    w.tick();
    assert_eq!(w.phase(), Phase::Failed);
}

#[test]
fn pause_holds_the_weight_and_resume_continues() {
    let mut w = World::at(Phase::Progressing, 10);
    w.ask("pause", "r1").step();
    assert_eq!(w.p.requests.paused_by.as_deref(), Some("alice"));
    for _ in 0..5 {
        w.tick();
        assert_eq!((w.phase(), w.p.canary_weight), (Phase::Progressing, 10));
        let after = w.plan.as_ref().unwrap().requeue_after.unwrap();
        assert!(after > Duration::ZERO, "a paused canary does not spin");
    }
    // Readiness deadlines do not run while paused.
    w.canary = Readiness::Waiting("0 of 2 updated replicas are available".into());
    w.now += chrono::Duration::seconds(3600);
    w.step();
    assert_eq!(w.phase(), Phase::Progressing);
    w.canary = Readiness::Ready;
    w.ask("resume", "r2").step();
    assert!(w.last().accepted);
    assert_eq!(w.p.requests.paused_by, None);
    w.tick();
    assert_eq!(w.p.canary_weight, 20);
}

#[test]
fn a_paused_canary_does_not_take_up_a_new_revision() {
    let mut w = World::at(Phase::Succeeded, 0);
    w.revision = rev("a");
    w.ask("pause", "r1").step();
    w.revision = rev("b");
    w.tick().tick();
    assert_eq!(w.phase(), Phase::Succeeded);
    w.ask("resume", "r2").step();
    assert_eq!(w.phase(), Phase::Progressing);
    assert_eq!(w.p.last_applied_spec, Some(rev("b")));
}

#[test]
fn abort_and_promote_lift_a_pause() {
    for verb in ["abort", "promote"] {
        let mut w = World::at(Phase::Progressing, 10);
        w.ask("pause", "r1").step();
        w.ask(verb, "r2").step();
        assert_eq!(w.p.requests.paused_by, None, "{verb}");
        assert!(w.last().accepted, "{verb}");
    }
}

#[test]
fn retry_analyses_the_same_revision_again() {
    let mut w = World::at(Phase::Progressing, 20);
    w.analysis = Err("Halt advancement podinfo-canary.test request-success-rate 80 < 99".into());
    w.tick().tick();
    assert_eq!(w.phase(), Phase::Failed);
    assert_eq!(w.p.last_applied_spec, Some(rev("b")));
    w.tick();
    assert_eq!(
        w.phase(),
        Phase::Failed,
        "a failed revision stays failed by itself"
    );
    w.analysis = Ok(());
    w.ask("retry", "r1").step();
    assert_eq!(
        (w.phase(), w.p.canary_weight, w.p.failed_checks),
        (Phase::Progressing, 0, 0)
    );
    assert_eq!(w.plan.as_ref().unwrap().scale, Scale::Up);
    assert_eq!(w.p.last_applied_spec, Some(rev("b")), "same revision");
    for _ in 0..12 {
        w.tick();
    }
    assert_eq!(w.phase(), Phase::Succeeded);
    assert_eq!(w.p.last_promoted_spec, Some(rev("b")));
}
