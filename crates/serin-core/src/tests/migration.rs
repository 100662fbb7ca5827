//! Taking over a Canary Flagger managed (issue 13 §2): Flagger's status carries its own
//! pod-template hashes, and the shell tells whether the primary runs the target's template
//! (`primary_revision`); the decision must neither replay what Flagger did nor swallow a revision
//! Flagger had not started.

use super::*;

/// A hash in Flagger's format (no `sha256:` prefix).
const FLAGGER_HASH: &str = "5d8b9c7f6";

/// A status as Flagger leaves it in `phase`: its hashes, no serin progress.
fn flagger_status(phase: Phase, weight: u32) -> Progress {
    Progress {
        phase: Some(phase),
        canary_weight: weight,
        last_applied_spec: Some(FLAGGER_HASH.into()),
        last_promoted_spec: Some(FLAGGER_HASH.into()),
        ..Progress::default()
    }
}

fn count(w: &World, text: &str) -> usize {
    w.messages().iter().filter(|m| **m == text).count()
}

#[test]
fn succeeded_with_the_primary_running_the_target_is_adopted_without_analysis() {
    let mut w = World::new(settings());
    w.p = flagger_status(Phase::Succeeded, 0);
    w.primary = Some(Readiness::Ready);
    w.primary_revision = Some(rev("a"));
    w.step();
    assert_eq!(w.p.phase, Some(Phase::Succeeded));
    assert_eq!(w.p.last_applied_spec, Some(rev("a")));
    assert_eq!(w.p.last_promoted_spec, Some(rev("a")));
    assert!(w.events.is_empty(), "{:?}", w.messages());
    w.revision = rev("b");
    w.step();
    assert_eq!(w.p.phase, Some(Phase::Progressing));
}

#[test]
fn initialized_with_the_primary_running_the_target_is_adopted() {
    let mut w = World::new(settings());
    w.p = flagger_status(Phase::Initialized, 0);
    w.primary = Some(Readiness::Ready);
    w.primary_revision = Some(rev("a"));
    for _ in 0..3 {
        w.tick();
    }
    assert_eq!(w.p.phase, Some(Phase::Initialized));
    assert_eq!(w.p.last_promoted_spec, Some(rev("a")));
    assert!(w.events.is_empty(), "{:?}", w.messages());
}

/// A release applied while Flagger was stopped (or right at the switch): the primary still runs
/// the old template, so the target is new and runs once, to the end.
#[test]
fn a_revision_newer_than_flaggers_primary_runs_once() {
    for phase in [Phase::Succeeded, Phase::Initialized] {
        let mut w = World::new(settings());
        w.p = flagger_status(phase, 0);
        w.primary = Some(Readiness::Ready);
        w.revision = rev("b");
        w.primary_revision = None; // Flagger's primary, of the old template
        let path = w.run_to_end(40);
        assert_eq!(path.last(), Some(&(Phase::Succeeded, 0)), "{path:?}");
        assert_eq!(w.promoted, vec![rev("b")]);
        assert_eq!(w.p.last_promoted_spec, Some(rev("b")));
        let new = msg::new_revision_scaling_up(&w.s.target);
        assert_eq!(count(&w, &new), 1, "{:?}", w.messages());
        assert_eq!(count(&w, &msg::starting_analysis(&w.s.target)), 1);
        let weights: Vec<u32> = path.iter().map(|(_, weight)| *weight).collect();
        assert!(
            weights.windows(2).all(|p| p[1] <= p[0] + 10 || p[1] == 0),
            "the weight steps: {weights:?}"
        );
        // Done: nothing more happens.
        let told = w.events.len();
        w.tick();
        assert_eq!(w.events.len(), told);
    }
}

/// Flagger waits behind a closed confirm-rollout gate: its hashes are of the primary's revision,
/// the target is newer. serin keeps asking the gate without telling the new revision, and starts
/// the run once the gate opens.
#[test]
fn waiting_behind_a_closed_confirm_rollout_gate_keeps_waiting_then_runs() {
    let mut s = settings();
    s.hooks = vec![HookType::ConfirmRollout];
    let mut w = World::new(s);
    w.p = flagger_status(Phase::Waiting, 0);
    w.primary = Some(Readiness::Ready);
    w.revision = rev("b");
    w.gates.insert(
        HookType::ConfirmRollout,
        Gate::Closed {
            hook: "approve".into(),
        },
    );
    for _ in 0..5 {
        w.tick();
        assert_eq!(w.state(), (Phase::Waiting, 0));
    }
    let asked = w
        .needs
        .iter()
        .filter(|n| **n == Need::Gate(HookType::ConfirmRollout))
        .count();
    assert_eq!(asked, 5, "asked at every interval");
    let new = msg::new_revision_scaling_up(&w.s.target);
    assert_eq!(count(&w, &new), 0);
    w.gates.insert(HookType::ConfirmRollout, Gate::Open);
    w.tick();
    assert_eq!(w.state(), (Phase::Progressing, 0));
    assert_eq!(w.p.last_applied_spec, Some(rev("b")));
    assert_eq!(count(&w, &new), 1);
    let path = w.run_to_end(40);
    assert_eq!(path.last(), Some(&(Phase::Succeeded, 0)), "{path:?}");
    assert_eq!(w.promoted, vec![rev("b")]);
}

/// While Flagger waited the target went back to what the primary runs: nothing to run.
#[test]
fn waiting_for_a_revision_reverted_to_the_primary_goes_back_to_succeeded() {
    let mut s = settings();
    s.hooks = vec![HookType::ConfirmRollout];
    let mut w = World::new(s);
    w.p = flagger_status(Phase::Waiting, 0);
    w.primary = Some(Readiness::Ready);
    w.primary_revision = Some(rev("a"));
    w.step();
    assert_eq!(w.state(), (Phase::Succeeded, 0));
    assert!(w.needs.is_empty());
    assert!(w.events.is_empty(), "{:?}", w.messages());
}

/// Flagger copied the template and switched to Promoting: the primary runs the target's template,
/// so serin shifts the traffic back without copying again.
#[test]
fn promoting_with_the_template_flagger_copied_finishes_without_a_second_copy() {
    let mut w = World::new(settings());
    w.p = flagger_status(Phase::Promoting, 50);
    w.primary = Some(Readiness::Ready);
    w.revision = rev("b");
    w.primary_revision = Some(rev("b"));
    let path = w.run_to_end(10);
    assert_eq!(
        path,
        vec![
            (Phase::Promoting, 50),
            (Phase::Finalising, 0),
            (Phase::Succeeded, 0)
        ]
    );
    assert!(w.promoted.is_empty(), "no second copy");
    assert_eq!(w.p.last_promoted_spec, Some(rev("b")));
    let copying = msg::copying_template(&w.s.target, &w.s.primary);
    assert_eq!(count(&w, &copying), 0);
}

/// Progressing at a weight with a closed confirm-traffic-increase gate: the weight holds until
/// the gate opens, then the run goes on from there.
#[test]
fn progressing_behind_a_closed_traffic_gate_holds_the_weight() {
    let mut s = settings();
    s.hooks = vec![HookType::ConfirmTrafficIncrease];
    let mut w = World::new(s);
    w.p = flagger_status(Phase::Progressing, 20);
    w.p.last_promoted_spec = Some("4a7c6b5d8".into());
    w.primary = Some(Readiness::Ready);
    w.revision = rev("b");
    w.gates.insert(
        HookType::ConfirmTrafficIncrease,
        Gate::Closed {
            hook: "approve".into(),
        },
    );
    for _ in 0..4 {
        w.tick();
        assert_eq!(w.state(), (Phase::Progressing, 20));
    }
    assert_eq!(w.p.last_applied_spec, Some(rev("b")));
    w.gates.insert(HookType::ConfirmTrafficIncrease, Gate::Open);
    let path = w.run_to_end(40);
    let weights: Vec<u32> = path.iter().map(|(_, weight)| *weight).collect();
    assert_eq!(weights.first(), Some(&20));
    assert!(weights.contains(&30), "{path:?}");
    assert_eq!(path.last(), Some(&(Phase::Succeeded, 0)), "{path:?}");
    assert_eq!(w.promoted, vec![rev("b")]);
    assert_eq!(count(&w, &msg::starting_analysis(&w.s.target)), 0);
}
