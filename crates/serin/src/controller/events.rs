//! Kubernetes Events the way `kubectl describe canary` shows Flagger's: core/v1 Events with
//! reason `Synced`, one object per distinct message, whose `count` grows when the message repeats.
//!
//! kube's `Recorder` groups a series by type, reason and action but not by message, which would
//! fold the whole story of a rollout into one line. The name of each Event is derived from the
//! Canary's uid, the type and the message, so a restarted controller continues the same series
//! instead of adding duplicate rows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sha2::{Digest, Sha256};

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
    /// Event name → count last written and when, to patch without reading.
    counts: Mutex<Counts>,
}

/// How long the API server keeps an Event (kube-apiserver's `--event-ttl` default). A count
/// older than that describes an Event that is gone; it is forgotten so that the map does not
/// grow with every message a long-running controller ever recorded.
const EVENT_TTL: Duration = Duration::from_secs(3600);

/// The counts the recorder wrote, by Event name.
#[derive(Default)]
struct Counts {
    by_name: HashMap<String, (i32, Instant)>,
    pruned: Option<Instant>,
}

impl Counts {
    fn get(&self, name: &str, now: Instant) -> Option<i32> {
        self.by_name
            .get(name)
            .filter(|(_, at)| now.duration_since(*at) < EVENT_TTL)
            .map(|(c, _)| *c)
    }

    /// Records a count, and at most once a minute forgets those older than [`EVENT_TTL`].
    fn set(&mut self, name: String, count: i32, now: Instant) {
        self.by_name.insert(name, (count, now));
        if self
            .pruned
            .is_none_or(|p| now.duration_since(p) >= Duration::from_secs(60))
        {
            self.pruned = Some(now);
            self.by_name
                .retain(|_, (_, at)| now.duration_since(*at) < EVENT_TTL);
        }
    }
}

impl EventRecorder {
    pub fn new(client: Client, instance: String) -> Self {
        EventRecorder {
            client,
            instance,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Records `message` on the object; a repeat of the same type and message bumps the count
    /// unless `repeat` says to skip it.
    ///
    /// The lock on the counts is never held across a request: one Canary's Events would
    /// otherwise wait for every other Canary's, and with the API server slow under load the
    /// whole controller ran at the pace of one Event at a time. Two publishes of the same name
    /// do not race: an Event's name includes the Canary's uid, and the controller never
    /// reconciles one Canary twice at once.
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
        let known = lock(&self.counts).get(&name, Instant::now());
        let count = match known {
            Some(c) => c,
            None => match self.create(&api, object, &name, type_, message).await? {
                Some(existing) => existing,
                None => return Ok(()),
            },
        };
        if repeat == Repeat::Skip {
            // Only a count just read is new to the map; a known one was not written again, so
            // its time stays that of the last write (the Event's TTL runs from there).
            if known.is_none() {
                lock(&self.counts).set(name, count.max(1), Instant::now());
            }
            return Ok(());
        }
        let next = count.max(1) + 1;
        let patch = serde_json::json!({ "count": next, "lastTimestamp": now });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => lock(&self.counts).set(name, next, Instant::now()),
            // Gone (expired or deleted) since it was counted: the story starts a new Event.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                lock(&self.counts).by_name.remove(&name);
                self.create(&api, object, &name, type_, message).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Creates the Event with count 1; most Events are new, so the count is read only when
    /// one already exists (a restarted controller continuing its series). Returns that count,
    /// or `None` when this call created it.
    async fn create(
        &self,
        api: &Api<Event>,
        object: &ObjectReference,
        name: &str,
        type_: &str,
        message: &str,
    ) -> Result<Option<i32>, kube::Error> {
        let now = Time(Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: api.namespace().map(str::to_string),
                ..Default::default()
            },
            involved_object: object.clone(),
            reason: Some(REASON.into()),
            message: Some(message.chars().take(1024).collect()),
            type_: Some(type_.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
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
                lock(&self.counts).set(name.into(), 1, Instant::now());
                Ok(None)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(
                api.get_opt(name).await?.and_then(|e| e.count).unwrap_or(1),
            )),
            Err(e) => Err(e),
        }
    }
}

/// The counts stay usable after a panic elsewhere: at worst a count is written again.
fn lock(m: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

    #[test]
    fn counts_expire_with_the_events_and_are_pruned() {
        let t0 = Instant::now();
        let mut c = Counts::default();
        c.set("a".into(), 3, t0);
        assert_eq!(c.get("a", t0), Some(3));
        assert_eq!(c.get("a", t0 + EVENT_TTL - Duration::from_secs(1)), Some(3));
        // The API server has dropped it by now: unknown, so the next publish creates it again.
        assert_eq!(c.get("a", t0 + EVENT_TTL), None);
        assert_eq!(c.get("b", t0), None);

        // Pruned at most once a minute, and only what has expired.
        c.set("b".into(), 1, t0 + Duration::from_secs(30));
        assert_eq!(c.by_name.len(), 2);
        c.set("c".into(), 1, t0 + EVENT_TTL + Duration::from_secs(10));
        assert_eq!(
            c.by_name
                .keys()
                .map(String::as_str)
                .collect::<std::collections::BTreeSet<_>>(),
            ["b", "c"].into_iter().collect()
        );
        c.set("b".into(), 2, t0 + EVENT_TTL + Duration::from_secs(40));
        c.set("d".into(), 1, t0 + EVENT_TTL + Duration::from_secs(50));
        assert_eq!(c.by_name.len(), 3, "no second prune within a minute");
        assert_eq!(
            c.get("b", t0 + EVENT_TTL + Duration::from_secs(50)),
            Some(2)
        );
    }
}
