//! Every Flagger-compatible event and alert text, in one place (docs/flagger-contract.md §3.8
//! and §7).
//!
//! Users grep their event streams and chat channels for these strings, so they are the contract:
//! tests refer to these functions rather than repeating the literals.

/// `<name>.<namespace>`, the way Flagger names a canary or a workload in its texts.
pub fn qualified(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

/// The openings of the four Events Flagger tells after writing the phase they announce
/// (`Event::announces` names it, and event webhook payloads carry it).
pub const INITIALIZATION_DONE: &str = "Initialization done!";
pub const NEW_REVISION: &str = "New revision detected!";
pub const PROMOTION_COMPLETED: &str = "Promotion completed!";
pub const CANARY_FAILED: &str = "Canary failed!";

pub fn initialization_done(canary: &str) -> String {
    format!("{INITIALIZATION_DONE} {canary}")
}

pub fn new_revision_scaling_up(target: &str) -> String {
    format!("{NEW_REVISION} Scaling up {target}")
}

pub fn new_revision_restarting(target: &str) -> String {
    format!("{NEW_REVISION} Restarting analysis for {target}")
}

pub fn starting_analysis(target: &str) -> String {
    format!("Starting canary analysis for {target}")
}

pub fn advance_canary_weight(canary: &str, weight: u32) -> String {
    format!("Advance {canary} canary weight {weight}")
}

pub fn advance_iteration(canary: &str, iteration: u32, of: u32) -> String {
    format!("Advance {canary} canary iteration {iteration}/{of}")
}

pub fn advance_primary_weight(canary: &str, weight: u32) -> String {
    format!("Advance {canary} primary weight {weight}")
}

pub fn copying_template(target: &str, primary: &str) -> String {
    format!("Copying {target} template spec to {primary}")
}

pub const ROUTING_ALL_TO_PRIMARY: &str = "Routing all traffic to primary";
pub const ROUTING_ALL_TO_CANARY: &str = "Routing all traffic to canary";
pub const STOP_MIRRORING_ROUTE_TO_CANARY: &str =
    "Stop traffic mirroring and route all traffic to canary";
pub const SUSPENDED: &str = "skipping canary run as object is suspended";

pub fn promotion_completed(target: &str) -> String {
    format!("{PROMOTION_COMPLETED} Scaling down {target}")
}

pub fn promotion_skipped(target: &str) -> String {
    format!("{PROMOTION_COMPLETED} Canary analysis was skipped for {target}")
}

pub fn rolling_back_threshold(canary: &str, failed: u32) -> String {
    format!("Rolling back {canary} failed checks threshold reached {failed}")
}

pub fn rolling_back_deadline(canary: &str, err: &str) -> String {
    format!("Rolling back {canary} progress deadline exceeded {err}")
}

pub fn rolling_back_webhook(canary: &str) -> String {
    format!("Rolling back {canary} manual webhook invoked")
}

pub fn canary_failed(canary: &str) -> String {
    format!("{CANARY_FAILED} Scaling down {canary}")
}

pub fn promotion_failed(target: &str, err: &str) -> String {
    format!("Promotion of {target} failed, primary not ready: {err}")
}

pub fn primary_not_ready(primary: &str, reason: &str) -> String {
    format!("{primary} not ready: {reason}")
}

pub fn canary_not_ready(target: &str, reason: &str) -> String {
    format!("canary deployment {target} not ready: {reason}")
}

pub fn halt_waiting_approval(canary: &str, hook: &str) -> String {
    format!("Halt {canary} advancement waiting for approval {hook}")
}

pub fn halt_waiting_traffic_increase(canary: &str, hook: &str) -> String {
    format!("Halt {canary} advancement waiting for traffic increase approval {hook}")
}

pub fn halt_waiting_promotion(canary: &str, hook: &str) -> String {
    format!("Halt {canary} advancement waiting for promotion approval {hook}")
}

pub fn halt_pre_rollout(canary: &str, hook: &str, err: &str) -> String {
    format!("Halt {canary} advancement pre-rollout check {hook} failed {err}")
}

pub fn halt_external_check(canary: &str, hook: &str, err: &str) -> String {
    format!("Halt {canary} advancement external check {hook} failed {err}")
}

pub fn pre_rollout_passed(hook: &str) -> String {
    format!("Pre-rollout check {hook} passed")
}

pub fn post_rollout_passed(hook: &str) -> String {
    format!("Post-rollout check {hook} passed")
}

pub fn post_rollout_failed(hook: &str, err: &str) -> String {
    format!("Post-rollout hook {hook} failed {err}")
}

pub fn rollback_check_passed(hook: &str) -> String {
    format!("Rollback check {hook} passed")
}

pub fn rollback_not_signaling(hook: &str) -> String {
    format!("Rollback hook {hook} not signaling a rollback")
}

pub fn confirm_passed(kind: &str, hook: &str) -> String {
    format!("{kind} check {hook} passed")
}

/// "Confirm-rollout check <hook> passed" and its two siblings.
pub fn gate_passed(kind: crate::HookType, hook: &str) -> String {
    confirm_passed(&capitalized(kind.as_str()), hook)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

// The `serin.dev/Gate` condition (serin's own; Flagger shows gates only in Events).
/// Reason of the condition: `ConfirmTrafficIncreaseClosed`, `ConfirmPromotionOpen`, ...
pub fn gate_condition_reason(kind: crate::HookType, open: bool) -> String {
    let camel: String = kind.as_str().split('-').map(capitalized).collect();
    format!("{camel}{}", if open { "Open" } else { "Closed" })
}

pub fn gate_condition_closed(kind: crate::HookType, hook: &str) -> String {
    format!(
        "The {} gate is closed: webhook {hook} did not answer 2xx; it is asked again at every interval.",
        kind.as_str()
    )
}

pub fn gate_condition_open(kind: crate::HookType) -> String {
    format!(
        "The {} gate is open: its webhooks answered 2xx.",
        kind.as_str()
    )
}

/// Success-rate halt; Flagger prints the value with two decimals and the bound as given.
pub fn halt_success_rate(canary: &str, value: f64, op: char, bound: f64) -> String {
    format!(
        "Halt {canary} advancement success rate {value:.2}% {op} {}%",
        fmt_bound(bound)
    )
}

/// Duration halt; both sides are Go-style durations such as `523ms` or `1.5s`.
pub fn halt_request_duration(canary: &str, value: &str, op: char, bound: &str) -> String {
    format!("Halt {canary} advancement request duration {value} {op} {bound}")
}

pub fn halt_custom_metric(canary: &str, metric: &str, value: f64, op: char, bound: f64) -> String {
    format!(
        "Halt {canary} advancement {metric} {value:.2} {op} {}",
        fmt_bound(bound)
    )
}

pub fn no_values_builtin(provider: &str, metric: &str, target: &str, err: Option<&str>) -> String {
    let base = format!(
        "Halt advancement no values found for {provider} metric {metric} probably {target} is not receiving traffic"
    );
    match err {
        Some(e) if !e.is_empty() => format!("{base}: {e}"),
        _ => base,
    }
}

pub fn no_values_custom(metric: &str, err: &str) -> String {
    format!("Halt advancement no values found for custom metric: {metric}: {err}")
}

pub fn no_values_inline(metric: &str) -> String {
    format!("Halt advancement no values found for metric: {metric}")
}

/// serin's: a metric with `onNoData: hold` found no data; the step waits (not a failed check).
pub fn holding_no_data(no_values: &str) -> String {
    format!("{no_values} (onNoData: hold, not counted as a failed check)")
}

/// serin's: the hold for want of data outlasted the progress deadline.
pub fn no_data_deadline(no_values: &str, deadline_secs: u64) -> String {
    format!("{no_values} for longer than progressDeadlineSeconds {deadline_secs} (onNoData: hold)")
}

pub fn prometheus_query_failed(metric: &str, err: &str) -> String {
    format!("Prometheus query failed for {metric}: {err}")
}

pub fn metric_template_error(template: &str, err: &str) -> String {
    format!("Metric template {template} error: {err}")
}

pub fn metric_query_failed(metric: &str, err: &str) -> String {
    format!("Metric query failed for {metric}: {err}")
}

pub const PROVIDERS_AVAILABLE: &str = "all the metrics providers are available!";

pub fn providers_check_failed(err: &str) -> String {
    format!("Error checking metric providers: {err}")
}

pub fn prometheus_client_error(url: &str, err: &str) -> String {
    format!("Error building Prometheus client for {url} {err}")
}

pub fn terminating(canary: &str) -> String {
    format!("Terminating canary {canary}")
}

pub fn terminated(canary: &str) -> String {
    format!("Terminated canary {canary}")
}

pub const NO_USABLE_METRIC: &str =
    "Metric query failed for no usable metrics template and query were configured";

/// Go's `%v` of a float64 bound: integral values without a decimal point.
fn fmt_bound(bound: f64) -> String {
    if bound.fract() == 0.0 && bound.abs() < 1e15 {
        format!("{}", bound as i64)
    } else {
        format!("{bound}")
    }
}

// Alert texts (docs/flagger-contract.md §7).
pub fn alert_initialized(kind: &str) -> String {
    format!("New {kind} detected, initialization completed.")
}
pub const ALERT_NEW_REVISION: &str = "New revision detected, progressing canary analysis.";
pub const ALERT_PROMOTED: &str = "Canary analysis completed successfully, promotion finished.";
pub const ALERT_SKIPPED: &str = "Canary analysis was skipped, promotion finished.";
pub const ALERT_WAITING_APPROVAL: &str = "Canary is waiting for approval.";
pub const ALERT_WAITING_TRAFFIC: &str = "Canary traffic increase is waiting for approval.";
pub const ALERT_WAITING_PROMOTION: &str = "Canary promotion is waiting for approval.";
pub const ALERT_ROLLBACK_WEBHOOK: &str = "Rolling back manual webhook invoked";

pub fn alert_threshold(failed: u32) -> String {
    format!("Failed checks threshold reached {failed}")
}

pub fn alert_deadline(err: &str) -> String {
    format!("Progress deadline exceeded {err}")
}

pub fn alert_promotion_failed(err: &str) -> String {
    format!("Promotion failed, primary not ready: {err}")
}

// Promoted condition messages (docs/flagger-contract.md §1.4).
pub fn condition_initializing(kind: &str) -> String {
    format!("New {kind} detected, starting initialization.")
}
pub fn condition_initialized(kind: &str) -> String {
    format!("{kind} initialization completed.")
}
pub const CONDITION_WAITING: &str = "Waiting for approval.";
pub const CONDITION_PROGRESSING: &str = "New revision detected, progressing canary analysis.";
pub const CONDITION_PROMOTING: &str = "Canary analysis completed, starting primary rolling update.";
pub const CONDITION_FINALISING: &str = "Canary analysis completed, routing all traffic to primary.";
pub const CONDITION_SUCCEEDED: &str = "Canary analysis completed successfully, promotion finished.";
/// serin's own texts: Flagger leaves the condition message of these phases as it was.
pub const CONDITION_TERMINATING: &str = "Canary is being deleted, reverting the target.";
pub const CONDITION_TERMINATED: &str = "Canary deleted, the target serves the traffic.";
pub fn condition_failed(kind: &str) -> String {
    format!("Canary analysis failed, {kind} scaled to zero.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_print_like_go() {
        assert_eq!(
            halt_success_rate("podinfo.test", 93.456, '<', 99.0),
            "Halt podinfo.test advancement success rate 93.46% < 99%"
        );
        assert_eq!(
            halt_custom_metric("podinfo.test", "error-rate", 1.5, '>', 0.5),
            "Halt podinfo.test advancement error-rate 1.50 > 0.5"
        );
    }

    #[test]
    fn no_values_text_matches_flagger() {
        assert_eq!(
            no_values_builtin("istio", "request-success-rate", "podinfo.test", None),
            "Halt advancement no values found for istio metric request-success-rate probably podinfo.test is not receiving traffic"
        );
        assert_eq!(
            no_values_builtin(
                "istio",
                "request-duration",
                "podinfo.test",
                Some("no values")
            ),
            "Halt advancement no values found for istio metric request-duration probably podinfo.test is not receiving traffic: no values"
        );
    }
}
