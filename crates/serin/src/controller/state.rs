//! Translation between the Canary resource and the rollout core's vocabulary: the defaulted
//! [`Settings`], and [`Progress`] read from and written back to the status. Pure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{
    Canary, CanaryCondition, CanaryStatus, GateRecord, HandledRequest, HookType, RunProgress,
};
use crate::rollout::{self, GateState, Phase, Progress, Settings, messages as msg};

/// Condition type of serin's own verdict on the spec and its references (a missing template, an
/// unknown provider, a broken query): `False` names the field and the fix.
pub const VALID_CONDITION: &str = "serin.dev/Valid";
pub const PROMOTED_CONDITION: &str = "Promoted";
/// Condition type of the last gate asked in the current run: `False` while a confirm-* webhook
/// holds the canary, `True` once it answered 2xx.
pub const GATE_CONDITION: &str = "serin.dev/Gate";
/// Condition type listing what in the spec Flagger runs but likely not as meant (an ignored
/// field, a first step beyond maxWeight): `True` naming each field, absent when there is none.
/// serin runs such a Canary as Flagger would instead of holding it (issue 13).
pub const SPEC_WARNINGS_CONDITION: &str = "serin.dev/SpecWarnings";

/// The message of the warnings of `validate_canary`, `None` without any.
pub fn spec_warnings(canary: &Canary) -> Option<String> {
    let text: Vec<String> = crate::api::validate_canary(canary)
        .into_iter()
        .filter(crate::api::Problem::is_warning)
        .map(|p| format!("{}: {} ({})", p.path, p.message, p.hint))
        .collect();
    (!text.is_empty()).then(|| text.join("; "))
}

/// Sets or removes the [`SPEC_WARNINGS_CONDITION`] on `status` (built by [`status`], which
/// keeps only its own conditions), carrying the condition of `previous` over while the message
/// stays the same, so an unchanged Canary is not written again. True when the message is news:
/// the Warning Event is recorded once per message, as for a hold.
pub fn set_spec_warnings(
    status: &mut CanaryStatus,
    previous: Option<&CanaryStatus>,
    warnings: Option<&str>,
    now: DateTime<Utc>,
) -> bool {
    let prev: Vec<CanaryCondition> = previous
        .iter()
        .flat_map(|s| s.conditions.iter())
        .filter(|c| c.type_ == SPEC_WARNINGS_CONDITION)
        .cloned()
        .collect();
    status
        .conditions
        .retain(|c| c.type_ != SPEC_WARNINGS_CONDITION);
    let Some(message) = warnings else {
        return false;
    };
    status.conditions.push(condition(
        &prev,
        SPEC_WARNINGS_CONDITION,
        "True",
        "SpecWarnings",
        message,
        now,
    ));
    prev.first().and_then(|c| c.message.as_deref()) != Some(message)
}

/// Why a Canary is held: the reason of `serin.dev/Valid=False`. Each names a configuration
/// problem only a person can fix; the condition's message names the field and the fix, and a
/// Warning Event with that message is recorded when the problem first shows. Nothing moves
/// (traffic, replicas, phase) while a Canary is held. Alerts and dashboards match on these
/// strings, so they never change; `as_str()` is the list:
///
/// | reason | the problem |
/// |---|---|
/// | `InvalidSpec` | a field the schema cannot refuse is unusable (see `serin validate`) |
/// | `TargetNotFound` | `spec.targetRef` names no Deployment |
/// | `SelectorLabelMissing` | the target's `spec.selector.matchLabels` has none of `app`, `name`, `app.kubernetes.io/name` |
/// | `ConfigNotFound` | the target refers to a ConfigMap or Secret that does not exist (and is not optional) |
/// | `AutoscalerUnsupported` | `spec.autoscalerRef.kind` is not HorizontalPodAutoscaler |
/// | `AutoscalerNotFound` | `spec.autoscalerRef` names no HPA |
/// | `AutoscalerInvalid` | the HPA is unreadable, or the primary's bounds would cross |
/// | `MetricTemplateNotFound` | a `templateRef` names no MetricTemplate |
/// | `MetricProviderUnsupported` | a MetricTemplate's provider is not prometheus |
/// | `MetricSecretNotFound` | a MetricTemplate's `secretRef` names no Secret |
/// | `MetricQueryRenderError` | a query template uses an unknown name or variable |
/// | `MetricProviderInvalid` | a provider's address, headers or credentials cannot be sent |
/// | `MetricQueryInvalid` | kept for compatibility of the list; no longer produced: a query Prometheus refuses is a failed check (issue 11, finding 5) |
/// | `NoUsableMetric` | a metric is neither built in nor has a `templateRef` or `query` |
/// | `InternalError` | serin's decision did not settle; a bug to report |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldReason {
    InvalidSpec,
    TargetNotFound,
    SelectorLabelMissing,
    ConfigNotFound,
    AutoscalerUnsupported,
    AutoscalerNotFound,
    AutoscalerInvalid,
    MetricTemplateNotFound,
    MetricProviderUnsupported,
    MetricSecretNotFound,
    MetricQueryRenderError,
    MetricProviderInvalid,
    MetricQueryInvalid,
    NoUsableMetric,
    InternalError,
}

impl HoldReason {
    pub const ALL: [HoldReason; 15] = [
        HoldReason::InvalidSpec,
        HoldReason::TargetNotFound,
        HoldReason::SelectorLabelMissing,
        HoldReason::ConfigNotFound,
        HoldReason::AutoscalerUnsupported,
        HoldReason::AutoscalerNotFound,
        HoldReason::AutoscalerInvalid,
        HoldReason::MetricTemplateNotFound,
        HoldReason::MetricProviderUnsupported,
        HoldReason::MetricSecretNotFound,
        HoldReason::MetricQueryRenderError,
        HoldReason::MetricProviderInvalid,
        HoldReason::MetricQueryInvalid,
        HoldReason::NoUsableMetric,
        HoldReason::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::InvalidSpec => "InvalidSpec",
            HoldReason::TargetNotFound => "TargetNotFound",
            HoldReason::SelectorLabelMissing => "SelectorLabelMissing",
            HoldReason::ConfigNotFound => "ConfigNotFound",
            HoldReason::AutoscalerUnsupported => "AutoscalerUnsupported",
            HoldReason::AutoscalerNotFound => "AutoscalerNotFound",
            HoldReason::AutoscalerInvalid => "AutoscalerInvalid",
            HoldReason::MetricTemplateNotFound => "MetricTemplateNotFound",
            HoldReason::MetricProviderUnsupported => "MetricProviderUnsupported",
            HoldReason::MetricSecretNotFound => "MetricSecretNotFound",
            HoldReason::MetricQueryRenderError => "MetricQueryRenderError",
            HoldReason::MetricProviderInvalid => "MetricProviderInvalid",
            HoldReason::MetricQueryInvalid => "MetricQueryInvalid",
            HoldReason::NoUsableMetric => "NoUsableMetric",
            HoldReason::InternalError => "InternalError",
        }
    }
}

impl std::fmt::Display for HoldReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configuration problem that holds a Canary: the `serin.dev/Valid=False` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub reason: HoldReason,
    /// Names the field and the fix.
    pub message: String,
}

impl Hold {
    pub fn new(reason: HoldReason, message: impl std::fmt::Display) -> Self {
        Hold {
            reason,
            message: message.to_string(),
        }
    }
}

/// Whether a hold is news: the `serin.dev/Valid` condition is not already false with the same
/// message. Only news is logged and told in a Warning Event, so a Canary held for hours warns
/// once, and again only when the problem changes.
pub fn hold_is_new(status: Option<&CanaryStatus>, hold: &Hold) -> bool {
    let valid = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == VALID_CONDITION));
    !valid
        .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(hold.message.as_str()))
}

pub fn to_chrono(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

pub fn to_time(t: DateTime<Utc>) -> Time {
    // Kubernetes serialises metav1.Time with second precision.
    Time(Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn u32_of(v: Option<i32>) -> u32 {
    v.unwrap_or(0).max(0) as u32
}

/// The rollout settings of a Canary, with Flagger's defaults applied.
pub fn settings(canary: &Canary) -> Settings {
    let ns = canary.metadata.namespace.as_deref().unwrap_or("default");
    let name = canary.metadata.name.as_deref().unwrap_or("");
    let target = &canary.spec.target_ref.name;
    let analysis = canary.spec.analysis().cloned().unwrap_or_default();
    let mut hooks: Vec<HookType> = analysis
        .webhooks
        .iter()
        .map(|w| match w.hook_type() {
            HookType::Unset => HookType::Rollout,
            t => t,
        })
        .collect();
    hooks.sort_by_key(|h| h.as_str());
    hooks.dedup();
    Settings {
        canary: format!("{name}.{ns}"),
        target: format!("{target}.{ns}"),
        primary: format!("{target}-primary.{ns}"),
        kind: canary.spec.target_ref.kind.clone(),
        strategy: analysis.strategy(),
        interval: analysis.interval(),
        threshold: analysis.threshold().max(1) as u32,
        max_weight: analysis.max_weight().clamp(0, 100) as u32,
        step_weight: analysis.step_weight().max(0) as u32,
        step_weights: analysis
            .step_weights()
            .iter()
            .map(|w| (*w).clamp(0, 100) as u32)
            .collect(),
        step_weight_promotion: analysis.step_weight_promotion().max(0) as u32,
        iterations: analysis.iterations().max(0) as u32,
        mirror: analysis.mirror(),
        // A Canary without analysis is promoted without one (Flagger's nil analysis).
        skip_analysis: canary.spec.skip_analysis() || canary.spec.analysis().is_none(),
        suspend: canary.spec.suspend(),
        progress_deadline: Duration::from_secs(
            canary.spec.progress_deadline_seconds().max(1) as u64
        ),
        hooks,
        muted_hooks: analysis
            .webhooks
            .iter()
            .filter(|w| w.mute_alert())
            .map(|w| w.name.clone())
            .collect(),
    }
}

/// Progress as stored in the status.
pub fn progress(status: Option<&CanaryStatus>) -> Progress {
    let Some(s) = status else {
        return Progress::default();
    };
    let run = s.serin_progress.clone().unwrap_or_default();
    Progress {
        phase: s.phase,
        canary_weight: u32_of(s.canary_weight),
        failed_checks: u32_of(s.failed_checks),
        iterations: u32_of(s.iterations),
        mirrored: run.mirrored,
        last_applied_spec: s.last_applied_spec.clone(),
        last_promoted_spec: s.last_promoted_spec.clone(),
        tracked_configs: s.tracked_configs.clone(),
        last_transition_time: s.last_transition_time.as_ref().map(to_chrono),
        last_step_time: run.last_step_time.as_ref().map(to_chrono),
        canary_waiting_since: run.canary_waiting_since.as_ref().map(to_chrono),
        primary_waiting_since: run.primary_waiting_since.as_ref().map(to_chrono),
        requests: rollout::RequestState {
            paused_by: run.paused_by.clone(),
            last: run.request.as_ref().map(|r| rollout::request::Handled {
                id: r.id.clone(),
                verb: r.verb.clone(),
                by: r.by.clone(),
                accepted: r.accepted,
                message: r.message.clone(),
            }),
        },
        gate: run.gate.map(|g| GateState {
            kind: g.type_,
            closed_by: g.closed_by,
        }),
    }
}

/// The status to write for a progress, keeping what serin does not decide here (cookies, the
/// Flagger revision fence, metric results) from `previous`, and setting the conditions; `hold`
/// turns `serin.dev/Valid` false.
pub fn status(
    previous: Option<&CanaryStatus>,
    p: &Progress,
    kind: &str,
    hold: Option<&Hold>,
    now: DateTime<Utc>,
) -> CanaryStatus {
    let mut s = previous.cloned().unwrap_or_default();
    s.phase = p.phase;
    s.canary_weight = Some(p.canary_weight as i32);
    s.failed_checks = Some(p.failed_checks as i32);
    s.iterations = Some(p.iterations as i32);
    s.last_applied_spec = p.last_applied_spec.clone();
    s.last_promoted_spec = p.last_promoted_spec.clone();
    s.tracked_configs = p.tracked_configs.clone();
    s.last_transition_time = p.last_transition_time.map(to_time);
    let run = RunProgress {
        last_step_time: p.last_step_time.map(to_time),
        canary_waiting_since: p.canary_waiting_since.map(to_time),
        primary_waiting_since: p.primary_waiting_since.map(to_time),
        mirrored: p.mirrored,
        paused_by: p.requests.paused_by.clone(),
        request: p.requests.last.as_ref().map(|r| HandledRequest {
            id: r.id.clone(),
            verb: r.verb.clone(),
            by: r.by.clone(),
            accepted: r.accepted,
            message: r.message.clone(),
        }),
        gate: p.gate.as_ref().map(|g| GateRecord {
            type_: g.kind,
            closed_by: g.closed_by.clone(),
        }),
        // The analysis sets it (`Reconcile::analysis`); kept while the run goes on, so the
        // deadline of `onNoData: hold` survives restarts, and forgotten with the run.
        no_data_since: (p.phase == Some(Phase::Progressing))
            .then(|| {
                s.serin_progress
                    .as_ref()
                    .and_then(|r| r.no_data_since.clone())
            })
            .flatten(),
    };
    s.serin_progress = (run != RunProgress::default()).then_some(run);

    let mut conditions = Vec::new();
    if let Some(phase) = p.phase {
        let (st, message) = rollout::promoted_condition(phase, kind);
        conditions.push(condition(
            &s.conditions,
            PROMOTED_CONDITION,
            st,
            phase.as_str(),
            &message,
            now,
        ));
    }
    let (st, reason, message) = match hold {
        None => ("True", "Valid", "The spec and its references are usable."),
        Some(h) => ("False", h.reason.as_str(), h.message.as_str()),
    };
    conditions.push(condition(
        &s.conditions,
        VALID_CONDITION,
        st,
        reason,
        message,
        now,
    ));
    if let Some(g) = &p.gate {
        let (st, message) = match &g.closed_by {
            Some(hook) => ("False", msg::gate_condition_closed(g.kind, hook)),
            None => ("True", msg::gate_condition_open(g.kind)),
        };
        let reason = msg::gate_condition_reason(g.kind, g.closed_by.is_none());
        conditions.push(condition(
            &s.conditions,
            GATE_CONDITION,
            st,
            &reason,
            &message,
            now,
        ));
    }
    s.conditions = conditions;
    s
}

/// Sets (or replaces) one of serin's conditions on a status built by [`status`], keeping its
/// transition time from `previous` when its status did not change.
pub fn set_condition(
    s: &mut CanaryStatus,
    previous: &[CanaryCondition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) {
    let c = condition(previous, type_, status, reason, message, now);
    match s.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(slot) => *slot = c,
        None => s.conditions.push(c),
    }
}

/// Whether `previous` already has the condition with this status and message: a Warning Event
/// for it was told when it appeared, so it is not told again.
pub fn condition_is_new(
    previous: Option<&CanaryStatus>,
    type_: &str,
    status: &str,
    message: &str,
) -> bool {
    !previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .is_some_and(|c| c.status == status && c.message.as_deref() == Some(message))
}

/// A condition whose transition time moves only when its status does, so that rewriting the
/// same status is a no-op.
fn condition(
    previous: &[CanaryCondition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> CanaryCondition {
    let prev = previous.iter().find(|c| c.type_ == type_);
    let unchanged = prev.is_some_and(|c| {
        c.status == status && c.reason == reason && c.message.as_deref() == Some(message)
    });
    if unchanged && let Some(c) = prev {
        return c.clone();
    }
    let transition = match prev {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(to_time(now)),
    };
    CanaryCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        last_update_time: Some(to_time(now)),
        last_transition_time: transition,
        reason: reason.to_string(),
        message: Some(message.to_string()),
    }
}

/// Whether a phase means an analysis is under way (for the `flagger_canary_status` gauge: 0).
pub fn status_gauge(phase: Option<Phase>) -> i64 {
    match phase {
        Some(Phase::Progressing) => 0,
        Some(Phase::Failed) => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn spec_warnings_are_news_once_and_leave_an_unchanged_status_alone() {
        let t0 = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let t1 = chrono::DateTime::from_timestamp(1_700_000_060, 0).unwrap();
        let p = Progress::default();
        let mut first = super::status(None, &p, "Deployment", None, t0);
        assert!(set_spec_warnings(
            &mut first,
            None,
            Some("spec.x: y (z)"),
            t0
        ));
        // The next pass rebuilds the status from the stored one: same message, no news, and
        // the same status (nothing to write).
        let mut second = super::status(Some(&first), &p, "Deployment", None, t1);
        assert!(!set_spec_warnings(
            &mut second,
            Some(&first),
            Some("spec.x: y (z)"),
            t1
        ));
        assert_eq!(second, first);
        // A new message is news; no warnings remove the condition.
        let mut third = super::status(Some(&second), &p, "Deployment", None, t1);
        assert!(set_spec_warnings(
            &mut third,
            Some(&second),
            Some("spec.x: other (z)"),
            t1
        ));
        let mut fourth = super::status(Some(&third), &p, "Deployment", None, t1);
        assert!(!set_spec_warnings(&mut fourth, Some(&third), None, t1));
        assert!(
            fourth
                .conditions
                .iter()
                .all(|c| c.type_ != SPEC_WARNINGS_CONDITION)
        );
    }
    #[test]
    fn hold_reasons_are_distinct_camel_case_words() {
        let names: std::collections::BTreeSet<&str> =
            HoldReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), HoldReason::ALL.len());
        for r in HoldReason::ALL {
            let s = r.as_str();
            assert!(
                s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && s.chars().all(|c| c.is_ascii_alphanumeric()),
                "{s}"
            );
            assert_eq!(format!("{r:?}"), s, "as_str matches the variant");
        }
    }

    use super::*;
    use chrono::TimeZone;
    use std::collections::BTreeMap;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().unwrap()
    }

    #[test]
    fn progress_round_trips_through_status() {
        let p = Progress {
            phase: Some(Phase::Progressing),
            canary_weight: 30,
            failed_checks: 1,
            iterations: 0,
            mirrored: true,
            last_applied_spec: Some("sha256:b".into()),
            last_promoted_spec: Some("sha256:a".into()),
            tracked_configs: BTreeMap::from([("configmap/x".into(), "ab".into())]),
            last_transition_time: Some(now()),
            last_step_time: Some(now() - chrono::Duration::seconds(30)),
            canary_waiting_since: None,
            primary_waiting_since: Some(now()),
            requests: rollout::RequestState {
                paused_by: Some("alice".into()),
                last: Some(rollout::request::Handled {
                    id: "2026-03-01T12:00:00.000001Z".into(),
                    verb: "pause".into(),
                    by: "alice".into(),
                    accepted: true,
                    message: "Paused".into(),
                }),
            },
            gate: Some(GateState {
                kind: HookType::ConfirmPromotion,
                closed_by: Some("approve".into()),
            }),
        };
        let s = status(None, &p, "Deployment", None, now());
        assert_eq!(progress(Some(&s)), p);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["phase"], "Progressing");
        assert_eq!(json["canaryWeight"], 30);
        assert_eq!(json["serin.dev/progress"]["mirrored"], true);
        assert_eq!(json["serin.dev/progress"]["pausedBy"], "alice");
        assert_eq!(json["serin.dev/progress"]["request"]["verb"], "pause");
        assert_eq!(json["conditions"][0]["type"], "Promoted");
        assert_eq!(json["conditions"][0]["status"], "Unknown");
        assert_eq!(json["conditions"][0]["reason"], "Progressing");
        assert_eq!(json["conditions"][1]["type"], "serin.dev/Valid");
        assert_eq!(
            json["serin.dev/progress"]["gate"],
            serde_json::json!({"type": "confirm-promotion", "closedBy": "approve"})
        );
        assert_eq!(json["conditions"][2]["type"], "serin.dev/Gate");
        assert_eq!(json["conditions"][2]["status"], "False");
        assert_eq!(json["conditions"][2]["reason"], "ConfirmPromotionClosed");
    }

    #[test]
    fn a_hold_is_news_until_the_condition_says_it() {
        let hold = Hold::new(HoldReason::TargetNotFound, "spec.targetRef.name: not found");
        let p = Progress::default();
        let valid = status(None, &p, "Deployment", None, now());
        let held = status(None, &p, "Deployment", Some(&hold), now());
        let other = Hold::new(HoldReason::TargetNotFound, "spec.targetRef.name: other");
        let other_reason = Hold::new(HoldReason::InvalidSpec, "spec.targetRef.name: not found");
        let cases = [
            (None, &hold, true),
            (Some(&valid), &hold, true),
            (Some(&held), &hold, false),
            (Some(&held), &other, true),
            // The message names the field and the fix; the same text is the same problem.
            (Some(&held), &other_reason, false),
        ];
        for (i, (st, h, want)) in cases.into_iter().enumerate() {
            assert_eq!(hold_is_new(st, h), want, "case {i}");
        }
    }

    #[test]
    fn rewriting_the_same_status_changes_nothing() {
        let p = Progress {
            phase: Some(Phase::Succeeded),
            ..Default::default()
        };
        let first = status(None, &p, "Deployment", None, now());
        let later = status(
            Some(&first),
            &p,
            "Deployment",
            None,
            now() + chrono::Duration::seconds(90),
        );
        assert_eq!(first, later);
        let invalid = status(
            Some(&first),
            &p,
            "Deployment",
            Some(&Hold::new(HoldReason::MetricTemplateNotFound, "x")),
            now() + chrono::Duration::seconds(90),
        );
        let c = &invalid.conditions[1];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "MetricTemplateNotFound")
        );
        assert_ne!(
            c.last_transition_time,
            first.conditions[1].last_transition_time
        );
    }

    #[test]
    fn the_gate_condition_follows_the_last_gate() {
        let mut p = Progress {
            phase: Some(Phase::Progressing),
            ..Default::default()
        };
        let none = status(None, &p, "Deployment", None, now());
        assert!(none.conditions.iter().all(|c| c.type_ != GATE_CONDITION));
        p.gate = Some(GateState {
            kind: HookType::ConfirmTrafficIncrease,
            closed_by: Some("approve".into()),
        });
        let closed = status(Some(&none), &p, "Deployment", None, now());
        let c = closed
            .conditions
            .iter()
            .find(|c| c.type_ == GATE_CONDITION)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ConfirmTrafficIncreaseClosed")
        );
        assert!(c.message.as_deref().unwrap().contains("webhook approve"));
        p.gate = Some(GateState {
            kind: HookType::ConfirmTrafficIncrease,
            closed_by: None,
        });
        let later = now() + chrono::Duration::seconds(30);
        let open = status(Some(&closed), &p, "Deployment", None, later);
        let c = open
            .conditions
            .iter()
            .find(|c| c.type_ == GATE_CONDITION)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "ConfirmTrafficIncreaseOpen")
        );
        assert_eq!(c.last_transition_time, Some(to_time(later)));
        assert_eq!(progress(Some(&open)).gate, p.gate);
    }

    #[test]
    fn the_start_of_a_stretch_without_data_lasts_as_long_as_the_run() {
        let previous = CanaryStatus {
            serin_progress: Some(RunProgress {
                no_data_since: Some(to_time(now())),
                ..Default::default()
            }),
            ..Default::default()
        };
        let running = Progress {
            phase: Some(Phase::Progressing),
            ..Default::default()
        };
        let s = status(Some(&previous), &running, "Deployment", None, now());
        assert_eq!(
            s.serin_progress.and_then(|r| r.no_data_since),
            Some(to_time(now()))
        );
        let over = Progress {
            phase: Some(Phase::Failed),
            ..Default::default()
        };
        let s = status(Some(&previous), &over, "Deployment", None, now());
        assert_eq!(s.serin_progress, None, "forgotten with the run");
    }
}
