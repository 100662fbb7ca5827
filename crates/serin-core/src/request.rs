//! Requests from people (`serin promote|abort|pause|resume|retry`), carried out by the core.
//!
//! The CLI writes a request into the Canary's annotations with its own field manager, so a GitOps
//! re-apply (another manager, which never listed these keys) leaves it alone (Flagger
//! [#1814](https://github.com/fluxcd/flagger/issues/1814),
//! [#724](https://github.com/fluxcd/flagger/issues/724)).
//! The core handles each request once: the id of the last handled request, and whether the canary
//! is paused, live in [`Progress::requests`] and so in the same status write as the rest of the
//! progress. A controller killed before that write decides the same thing again; after it, a
//! replayed or re-applied request is recognised and ignored.

use super::{Cause, Draft, Phase, Scale, Severity};

/// Annotation holding the verb of the latest request.
pub const REQUEST_ANNOTATION: &str = "serin.dev/request";
/// Annotation naming who asked (the identity the CLI resolved from the kubeconfig).
pub const REQUESTED_BY_ANNOTATION: &str = "serin.dev/requested-by";
/// Annotation with the request's time (RFC 3339, microseconds); also the request's id.
pub const REQUESTED_AT_ANNOTATION: &str = "serin.dev/requested-at";
/// Field manager of the CLI's server-side applies.
pub const CLI_FIELD_MANAGER: &str = "serin-cli";

/// A person's request, read from the Canary's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Unique per request (the `requested-at` annotation).
    pub id: String,
    pub verb: Verb,
    pub by: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Skip the rest of the analysis and promote now.
    Promote,
    /// Roll back now.
    Abort,
    /// Hold where it is until resumed.
    Pause,
    Resume,
    /// Analyse the same revision again after a failed run (Flagger
    /// [#862](https://github.com/fluxcd/flagger/issues/862)).
    Retry,
    /// Anything else: refused with the list of verbs.
    Unknown(String),
}

impl Verb {
    pub fn parse(s: &str) -> Verb {
        match s {
            "promote" => Verb::Promote,
            "abort" => Verb::Abort,
            "pause" => Verb::Pause,
            "resume" => Verb::Resume,
            "retry" => Verb::Retry,
            other => Verb::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Verb::Promote => "promote",
            Verb::Abort => "abort",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::Retry => "retry",
            Verb::Unknown(s) => s,
        }
    }
}

impl Request {
    /// The request in a Canary's annotations, if there is a complete one.
    pub fn from_annotations(a: &std::collections::BTreeMap<String, String>) -> Option<Request> {
        let verb = a.get(REQUEST_ANNOTATION)?.trim();
        let id = a.get(REQUESTED_AT_ANNOTATION)?.trim();
        if verb.is_empty() || id.is_empty() {
            return None;
        }
        let by = a
            .get(REQUESTED_BY_ANNOTATION)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown");
        Some(Request {
            id: id.to_string(),
            verb: Verb::parse(verb),
            by: by.to_string(),
        })
    }
}

/// What serin remembers of requests; stored in `status["serin.dev/progress"]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestState {
    /// Who paused the canary; `None` when it is not paused.
    pub paused_by: Option<String>,
    /// The last request handled, with the answer (the CLI waits for it).
    pub last: Option<Handled>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    pub id: String,
    pub verb: String,
    pub by: String,
    /// False when the request did not apply in the phase the canary was in.
    pub accepted: bool,
    /// The Event text that answered it.
    pub message: String,
}

/// Event texts (serin's own; Flagger has no such requests).
pub mod text {
    pub fn promotion_requested(canary: &str, by: &str) -> String {
        format!("Promotion of {canary} requested by {by}: skipping the rest of the analysis")
    }
    pub fn rolling_back_requested(canary: &str, by: &str) -> String {
        format!("Rolling back {canary} on request of {by}")
    }
    pub fn paused(canary: &str, by: &str) -> String {
        format!("Paused {canary} on request of {by}: it holds where it is until `serin resume`")
    }
    pub fn resumed(canary: &str, by: &str) -> String {
        format!("Resumed {canary} on request of {by}")
    }
    pub fn retry_requested(canary: &str, target: &str, by: &str) -> String {
        format!("Retry of {canary} requested by {by}: analysing {target} again")
    }
    pub fn refused(verb: &str, canary: &str, by: &str, why: &str) -> String {
        format!("Request to {verb} {canary} by {by} not carried out: {why}")
    }
}

fn phase_name(p: Option<Phase>) -> &'static str {
    p.map(|p| p.as_str()).unwrap_or("new")
}

impl Draft<'_> {
    /// Handles a request not handled before. True when it moved the canary to another phase (the
    /// decision ends there; the next reconcile continues from the new phase).
    pub(super) fn handle_request(&mut self) -> bool {
        let Some(req) = self.o.request.clone() else {
            return false;
        };
        let seen = self.plan.progress.requests.last.as_ref().map(|h| &h.id);
        if seen == Some(&req.id) {
            return false;
        }
        let canary = self.s.canary.clone();
        let phase = self.phase();
        let ending = matches!(phase, Some(Phase::Terminating | Phase::Terminated));
        let by = req.by.as_str();
        let answer: Result<(String, bool), Refusal> = match &req.verb {
            Verb::Promote => match phase {
                Some(Phase::Progressing | Phase::WaitingPromotion) if self.revision_moved() => Err(
                    "the target changed since the analysis started; the new revision is analysed first"
                        .into(),
                ),
                Some(Phase::Progressing | Phase::WaitingPromotion) => {
                    let t = text::promotion_requested(&canary, by);
                    self.info(t.clone());
                    self.alert(Severity::Warn, t.clone(), false);
                    self.requests().paused_by = None;
                    self.plan.scale = Scale::Up;
                    self.promote();
                    Ok((t, true))
                }
                Some(Phase::Promoting | Phase::Finalising) => {
                    Err("the promotion is already under way".into())
                }
                p => Err(format!(
                    "no analysis is running (phase {}); promote applies while Progressing or WaitingPromotion",
                    phase_name(p)
                ).into()),
            },
            Verb::Abort => match phase {
                Some(Phase::Progressing | Phase::WaitingPromotion | Phase::Waiting) => {
                    let t = text::rolling_back_requested(&canary, by);
                    // The target as it is now is what was rejected: a later revision starts anew.
                    let (rev, configs) = (self.o.revision.clone(), self.o.configs.clone());
                    let p = self.p();
                    p.last_applied_spec = Some(rev);
                    p.tracked_configs = configs;
                    p.requests.paused_by = None;
                    self.rollback(Cause::Requested(by.to_string()));
                    Ok((t, true))
                }
                Some(Phase::Promoting | Phase::Finalising) => Err(
                    "the promotion is already under way; the primary runs the new revision".into(),
                ),
                p => Err(format!(
                    "nothing to roll back (phase {}); abort applies while Waiting, Progressing or WaitingPromotion",
                    phase_name(p)
                ).into()),
            },
            Verb::Retry => match phase {
                Some(Phase::Failed) if self.plan.progress.canary_weight == 0 => {
                    let t = text::retry_requested(&canary, &self.s.target, by);
                    self.info(t.clone());
                    self.alert(Severity::Warn, t.clone(), false);
                    self.requests().paused_by = None;
                    self.reset_run();
                    self.plan.scale = Scale::Up;
                    Ok((t, true))
                }
                Some(Phase::Failed) => Err(
                    "the promotion failed and the canary serves all traffic; fix the primary, or push a new revision"
                        .into(),
                ),
                p => Err(format!(
                    "retry applies after a failed analysis (phase {})",
                    phase_name(p)
                ).into()),
            },
            Verb::Pause if !ending => {
                let t = text::paused(&canary, by);
                self.info(t.clone());
                self.alert(Severity::Warn, t.clone(), false);
                self.requests().paused_by = Some(by.to_string());
                Ok((t, false))
            }
            Verb::Pause => Err(format!("the canary is {}", phase_name(phase)).into()),
            Verb::Resume => {
                if self.plan.progress.requests.paused_by.is_some() {
                    let t = text::resumed(&canary, by);
                    self.info(t.clone());
                    self.alert(Severity::Warn, t.clone(), false);
                    self.requests().paused_by = None;
                    Ok((t, false))
                } else {
                    Err("it is not paused".into())
                }
            }
            Verb::Unknown(v) => Err(format!(
                "unknown request {v:?}; serin knows promote, abort, pause, resume and retry"
            ).into()),
        };
        let (message, accepted, moved) = match answer {
            Ok((t, moved)) => (t, true, moved),
            Err(Refusal(why)) => {
                let t = text::refused(req.verb.as_str(), &canary, by, &why);
                self.warn(t.clone());
                (t, false, false)
            }
        };
        self.requests().last = Some(Handled {
            id: req.id,
            verb: req.verb.as_str().to_string(),
            by: req.by,
            accepted,
            message,
        });
        moved
    }

    /// Holds a paused canary where it is: no step, no analysis, no new revision taken up, and no
    /// readiness deadline running (they restart on resume). True when paused.
    pub(super) fn hold_paused(&mut self) -> bool {
        if self.plan.progress.requests.paused_by.is_none() {
            return false;
        }
        self.plan.scale = Scale::Keep;
        let paced = matches!(
            self.phase(),
            Some(Phase::Waiting | Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting)
        );
        // Keep the pacing anchor current so that the scheduler looks again an interval later
        // instead of at once; on resume the next step comes at most one interval later.
        if paced && self.due() {
            self.consume_step();
        }
        let p = self.p();
        p.canary_waiting_since = None;
        p.primary_waiting_since = None;
        true
    }

    fn requests(&mut self) -> &mut RequestState {
        &mut self.plan.progress.requests
    }
}

/// Why a request is refused, for the Event that answers it.
struct Refusal(String);

impl From<&str> for Refusal {
    fn from(why: &str) -> Self {
        Refusal(why.to_string())
    }
}

impl From<String> for Refusal {
    fn from(why: String) -> Self {
        Refusal(why)
    }
}

#[cfg(test)]
mod tests;
