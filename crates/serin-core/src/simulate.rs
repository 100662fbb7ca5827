//! A rollout run played through [`decide`] without a cluster: the shell's part (readiness,
//! promotion, the answers to gates, hooks and analysis) is simulated, so `serin plan` and
//! `serin backtest` follow the controller's own decisions and cannot drift from them.
//!
//! The simulated cluster is the best case: workloads are ready at once and the primary runs the
//! promoted revision as soon as it is asked to, so every moment is the earliest the controller
//! can reach it. The [`Oracle`] answers the checks; the controller's requeue delays set the clock.

use crate::{
    Action, CheckResults, Decision, Event, Gate, HookType, Need, NoDataHold, Observation, Outcome,
    Phase, Progress, REVISION_PREFIX, Readiness, RollbackSignal, Routes, Settings, Time, decide,
    routes,
};
use std::collections::BTreeMap;

/// Answers the checks the decision asks for. The defaults say yes to everything.
pub trait Oracle {
    fn gate(&mut self, _kind: HookType, _at: Time) -> Gate {
        Gate::Open
    }
    fn rollback(&mut self, _at: Time) -> RollbackSignal {
        RollbackSignal::None
    }
    fn pre_rollout(&mut self, _at: Time) -> Result<(), crate::CheckFailed> {
        Ok(())
    }
    /// The rollout hooks and metrics at `at`, with the progress before the step; a hold only
    /// counts with `Ok(())` (see [`CheckResults::analysis_hold`]).
    fn analysis(
        &mut self,
        _at: Time,
        _progress: &Progress,
    ) -> (Result<(), crate::CheckFailed>, Option<NoDataHold>) {
        (Ok(()), None)
    }
}

/// The oracle of a run in which every check passes.
pub struct AllPass;

impl Oracle for AllPass {}

/// One reconcile that did something: asked a check, changed the routes or phase, told an Event.
#[derive(Clone, Debug, PartialEq)]
pub struct Moment {
    pub at: Time,
    /// Phase after the reconcile.
    pub phase: Phase,
    /// Routes after the reconcile (what the VirtualService carries from this moment).
    pub routes: Routes,
    /// A/B and Blue/Green iterations done.
    pub iterations: u32,
    pub failed_checks: u32,
    /// Checks asked, in order; each runs the webhooks of its kind (and the metrics for analysis).
    pub needs: Vec<Need>,
    /// The analysis answer given at this moment, if one was asked.
    pub analysis: Option<Result<(), crate::CheckFailed>>,
    pub held: bool,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    pub outcome: Option<Outcome>,
}

/// A simulated run from `start` (the moment a new revision appears on an initialized canary)
/// until it succeeds or fails, or until `until`.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub start: Time,
    pub moments: Vec<Moment>,
    /// Succeeded or Failed, and when; `None` when `until` came first.
    pub end: Option<(Outcome, Time)>,
}

/// Reconciles at most this many times: a guard against a decision that never settles.
const MAX_RECONCILES: usize = 100_000;

/// Plays a run. `settings` come from the Canary (the controller's `state::settings`).
pub fn run(settings: &Settings, start: Time, until: Time, oracle: &mut impl Oracle) -> Run {
    let old = format!("{REVISION_PREFIX}old");
    let new = format!("{REVISION_PREFIX}new");
    let mut obs = Observation {
        revision: old.clone(),
        configs: BTreeMap::new(),
        canary: Readiness::Ready,
        primary: Some(Readiness::Ready),
        primary_revision: Some(old),
        results: CheckResults::default(),
        request: None,
    };
    // Not suspended and not skipping: a plan of a suspended canary is a plan of nothing.
    let mut progress = Progress::default();
    for _ in 0..4 {
        if let Decision::Plan(p) = decide(settings, &progress, &obs, start) {
            progress = p.progress;
        }
        if progress.phase == Some(Phase::Initialized) {
            break;
        }
    }
    obs.revision = new;
    let mut out = Run {
        start,
        moments: Vec::new(),
        end: None,
    };
    let mut now = start;
    for _ in 0..MAX_RECONCILES {
        if now > until {
            break;
        }
        obs.results = CheckResults::default();
        let mut needs = Vec::new();
        let mut analysis = None;
        let mut held = false;
        let plan = loop {
            match decide(settings, &progress, &obs, now) {
                Decision::Plan(p) => break *p,
                Decision::Need(need) => {
                    if needs.contains(&need) {
                        // The decision asked again for what it was given: stop rather than spin.
                        return out;
                    }
                    match &need {
                        Need::Gate(kind) => {
                            obs.results.gate = Some((*kind, oracle.gate(*kind, now)))
                        }
                        Need::RollbackHooks => obs.results.rollback = Some(oracle.rollback(now)),
                        Need::PreRollout => obs.results.pre_rollout = Some(oracle.pre_rollout(now)),
                        Need::Analysis => {
                            let (result, hold) = oracle.analysis(now, &progress);
                            held = result.is_ok() && hold.is_some();
                            analysis = Some(result.clone());
                            obs.results.analysis = Some(result);
                            obs.results.analysis_hold = hold;
                        }
                    }
                    needs.push(need);
                }
            }
        };
        for a in &plan.actions {
            if let Action::Promote { revision } = a {
                obs.primary_revision = Some(revision.clone());
            }
        }
        let before = (progress.phase, routes(&progress), progress.iterations);
        let changed = progress != plan.progress;
        progress = plan.progress;
        let after = (progress.phase, routes(&progress), progress.iterations);
        let phase = progress.phase.unwrap_or(Phase::Initialized);
        if before != after
            || !needs.is_empty()
            || !plan.events.is_empty()
            || !plan.actions.is_empty()
        {
            out.moments.push(Moment {
                at: now,
                phase,
                routes: routes(&progress),
                iterations: progress.iterations,
                failed_checks: progress.failed_checks,
                needs,
                analysis,
                held,
                actions: plan.actions,
                events: plan.events,
                outcome: plan.outcome,
            });
        }
        if let Some(outcome) = plan.outcome {
            out.end = Some((outcome, now));
            break;
        }
        // A status write brings the Canary back through the watch at once; without one and
        // without a requeue the controller would wait for the world to change, which it won't.
        match plan.requeue_after {
            Some(after) => now += chrono::Duration::from_std(after).unwrap_or_default(),
            None if changed => {}
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{settings, t0};

    #[test]
    fn a_passing_canary_run_reaches_each_weight_one_interval_apart() {
        let s = settings(); // step 10, max 50, interval 60 s
        let run = run(&s, t0(), t0() + chrono::Duration::hours(1), &mut AllPass);
        let weights: Vec<(i64, u32)> = run
            .moments
            .iter()
            .map(|m| ((m.at - t0()).num_seconds(), m.routes.canary))
            .collect();
        assert_eq!(
            weights,
            vec![
                (0, 0),
                (0, 10),
                (60, 20),
                (120, 30),
                (180, 40),
                (240, 50),
                (300, 50),
                (300, 0),
                (303, 0)
            ]
        );
        assert_eq!(
            run.end,
            Some((Outcome::Promoted, t0() + chrono::Duration::seconds(303)))
        );
    }
}
