//! Kubernetes Events the way `kubectl describe canary` shows Flagger's: core/v1 Events with
//! reason `Synced`, one object per distinct message, whose `count` grows when the message repeats.
//!
//! kube's `Recorder` groups a series by type, reason and action but not by message, which would
//! fold the whole story of a rollout into one line. The name of each Event is derived from the
//! Canary's uid, the type and the message, so a restarted controller continues the same series
//! instead of adding duplicate rows.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// The component name shown in the FROM column, unless [`set_component`] chose another.
pub const COMPONENT: &str = "serin";

static COMPONENT_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the Events' source component for this process (`--event-component`): `flagger` keeps
/// event filters and dashboards written for Flagger's Events working. The first call wins.
pub fn set_component(name: &str) -> bool {
    COMPONENT_NAME.set(name.to_string()).is_ok()
}

/// The component Events are recorded from.
pub fn component() -> &'static str {
    COMPONENT_NAME.get().map_or(COMPONENT, String::as_str)
}
pub const REASON: &str = "Synced";

/// What a repeat of an Event already recorded does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Bumps its count and last timestamp: the thing happened again.
    Count,
    /// Nothing: a reconcile retried after a failure tells the same story again, and patching
    /// the Event on every retry would only load the API server.
    Skip,
}

pub struct EventRecorder {
    client: Client,
    instance: String,
    /// Event name → count last written, to patch without reading.
    counts: Mutex<HashMap<String, i32>>,
}

impl EventRecorder {
    pub fn new(client: Client, instance: String) -> Self {
        EventRecorder {
            client,
            instance,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Records `message` on the object; a repeat of the same type and message bumps the count
    /// unless `repeat` says to skip it.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        warning: bool,
        message: &str,
        repeat: Repeat,
    ) -> Result<(), kube::Error> {
        let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
        let type_ = if warning { "Warning" } else { "Normal" };
        let name = event_name(object, type_, message);
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = Time(Timestamp::now());
        let mut counts = self.counts.lock().await;
        let known = counts.get(&name).copied();
        let count = match known {
            Some(c) => c,
            None => match api.get_opt(&name).await? {
                Some(e) => e.count.unwrap_or(1),
                None => 0,
            },
        };
        if count == 0 {
            let event = Event {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns),
                    ..Default::default()
                },
                involved_object: object.clone(),
                reason: Some(REASON.into()),
                message: Some(message.chars().take(1024).collect()),
                type_: Some(type_.into()),
                count: Some(1),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now.clone()),
                event_time: Some(MicroTime(Timestamp::now())),
                action: Some("Analysis".into()),
                source: Some(EventSource {
                    component: Some(component().into()),
                    host: None,
                }),
                reporting_component: Some(component().into()),
                reporting_instance: Some(self.instance.clone()),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => {
                    counts.insert(name, 1);
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        if repeat == Repeat::Skip {
            counts.insert(name, count.max(1));
            return Ok(());
        }
        let next = count.max(1) + 1;
        let patch = serde_json::json!({ "count": next, "lastTimestamp": now });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        counts.insert(name, next);
        Ok(())
    }
}

fn event_name(object: &ObjectReference, type_: &str, message: &str) -> String {
    let mut h = Sha256::new();
    h.update(object.uid.as_deref().unwrap_or_default());
    h.update(type_);
    h.update(message);
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}.{hex}", object.name.as_deref().unwrap_or("canary"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinct() {
        let obj = ObjectReference {
            name: Some("podinfo".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let a = event_name(&obj, "Normal", "Advance podinfo.test canary weight 10");
        assert_eq!(
            a,
            event_name(&obj, "Normal", "Advance podinfo.test canary weight 10")
        );
        assert_ne!(
            a,
            event_name(&obj, "Normal", "Advance podinfo.test canary weight 20")
        );
        assert_ne!(
            a,
            event_name(&obj, "Warning", "Advance podinfo.test canary weight 10")
        );
        assert!(a.starts_with("podinfo.") && a.len() == "podinfo.".len() + 16);
    }
}
