//! A write the API server refused (a generated name too long, a full Service IP range, a quota,
//! an admission webhook): what the Canary's `serin.dev/Written` condition and Warning Event say.
//! Without it the reconcile fails and retries with backoff while the Canary shows nothing, and
//! the user cannot tell why the canary never initializes. Pure.

/// Condition type: `False` while the API server refuses an object serin generates for the Canary;
/// `True` once every write succeeds again (absent on Canaries that never had a refusal).
pub const WRITTEN_CONDITION: &str = "serin.dev/Written";
/// The reason of `serin.dev/Written=True`.
pub const WRITTEN_REASON: &str = "Written";
pub const WRITTEN_MESSAGE: &str =
    "The API server accepted every object serin generates for this canary.";

/// One refused write: the object and what the API server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The object's kind (`Deployment`, `Service`, `VirtualService`, ...).
    pub kind: String,
    pub name: String,
    pub namespace: String,
    /// The HTTP status the API server answered.
    pub code: u16,
    /// The API server's reason (`Invalid`, `Forbidden`, `InternalError`, ...).
    pub reason: String,
    pub message: String,
}

impl Refusal {
    /// The condition's reason: the API server's reason when it is a word, else `Refused`.
    pub fn condition_reason(&self) -> String {
        let word = !self.reason.is_empty()
            && self.reason.starts_with(|c: char| c.is_ascii_uppercase())
            && self.reason.chars().all(|c| c.is_ascii_alphanumeric());
        if word {
            format!("{}Refused", self.reason)
        } else {
            "Refused".to_string()
        }
    }

    /// The condition's message and the Event's text: the object, the API server's answer and
    /// the fix.
    pub fn message(&self) -> String {
        let reason = if self.reason.is_empty() {
            String::new()
        } else {
            format!(" {}", self.reason)
        };
        format!(
            "The API server refused {} {}.{} ({}{}): {}. Fix: {}. serin retries with backoff; traffic is unchanged.",
            self.kind,
            self.name,
            self.namespace,
            self.code,
            reason,
            self.message.trim_end_matches('.'),
            self.fix()
        )
    }

    /// What a person can do about it, from the shape of the API server's message.
    pub fn fix(&self) -> String {
        let m = self.message.to_ascii_lowercase();
        if m.contains("63 characters") || m.contains("no more than 63") {
            format!(
                "shorten spec.targetRef.name (and the Deployment's name) so that the generated names such as {} and their label values stay within 63 characters",
                self.name
            )
        } else if m.contains("no more than 253") || m.contains("too long") {
            "shorten spec.targetRef.name or spec.service.name so that the generated names stay within the Kubernetes limits".to_string()
        } else if m.contains("allocate a serviceip") || m.contains("range is full") {
            "the cluster's Service IP range is full: delete unused Services or widen the API server's --service-cluster-ip-range".to_string()
        } else if m.contains("exceeded quota") {
            "raise or remove the ResourceQuota named in the message for this namespace".to_string()
        } else if m.contains("admission webhook") || m.contains("denied the request") {
            "change the object or the admission policy named in the message so that it is admitted"
                .to_string()
        } else if self.code == 401 || self.code == 403 {
            format!(
                "grant serin's service account permission to create and patch {} in namespace {}",
                self.kind, self.namespace
            )
        } else if self.code == 422 || self.code == 400 {
            "fix the field of the Canary or its target that the message names".to_string()
        } else {
            "resolve what the message names; nothing is needed on the Canary if the cause is temporary".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(kind: &str, name: &str, code: u16, reason: &str, message: &str) -> Refusal {
        Refusal {
            kind: kind.into(),
            name: name.into(),
            namespace: "apps".into(),
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn messages_name_the_object_the_answer_and_the_fix() {
        let long = "a".repeat(60);
        let cases = [
            (
                refusal(
                    "Deployment",
                    &format!("{long}-primary"),
                    422,
                    "Invalid",
                    "Deployment.apps \"x\" is invalid: spec.template.labels: Invalid value: \"x\": must be no more than 63 characters",
                ),
                "InvalidRefused",
                "within 63 characters",
            ),
            (
                refusal(
                    "Service",
                    "podinfo-canary",
                    500,
                    "InternalError",
                    "Internal error occurred: failed to allocate a serviceIP: range is full",
                ),
                "InternalErrorRefused",
                "--service-cluster-ip-range",
            ),
            (
                refusal(
                    "Service",
                    "podinfo-canary",
                    403,
                    "Forbidden",
                    "services \"podinfo-canary\" is forbidden: exceeded quota: no-services",
                ),
                "ForbiddenRefused",
                "ResourceQuota",
            ),
            (
                refusal(
                    "VirtualService",
                    "podinfo",
                    403,
                    "Forbidden",
                    "virtualservices is forbidden: User cannot patch",
                ),
                "ForbiddenRefused",
                "permission to create and patch VirtualService in namespace apps",
            ),
            (
                refusal(
                    "ConfigMap",
                    "settings-primary",
                    400,
                    "BadRequest",
                    "admission webhook \"policy\" denied the request: no",
                ),
                "BadRequestRefused",
                "admission policy",
            ),
            (
                refusal("DestinationRule", "podinfo-canary", 500, "", "etcd timeout"),
                "Refused",
                "temporary",
            ),
        ];
        for (r, reason, fix) in cases {
            let m = r.message();
            assert_eq!(r.condition_reason(), reason, "{m}");
            assert!(m.contains(&format!("{} {}.apps", r.kind, r.name)), "{m}");
            assert!(m.contains(&format!("({}", r.code)), "{m}");
            assert!(
                m.contains(r.message.trim_end_matches('.')),
                "the API server's words: {m}"
            );
            assert!(m.contains(fix), "fix {fix:?} in {m}");
            assert!(m.contains("traffic is unchanged"), "{m}");
        }
    }

    #[test]
    fn the_message_is_stable_so_the_event_is_told_once() {
        let r = refusal("Service", "s", 500, "InternalError", "range is full");
        assert_eq!(r.message(), r.clone().message());
    }
}
