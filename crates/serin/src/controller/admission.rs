//! The rollout queue and freeze windows, as the controller sees them: the options, the caches
//! they read (the freeze ConfigMap, the Namespaces' annotations), and the slots handed out in
//! this process. The decisions are `serin_core::admission`'s pure functions; the state that must
//! survive a restart (a revision's detection time, its reason) is in each Canary's status
//! (`serin.dev/pending`), the runs going are the Canaries' phases.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use super::state::to_chrono;
use super::watches;
use crate::api::Canary;
use crate::rollout::Phase;
use crate::rollout::admission::{self as core, Admission, Caps, Freeze, Waiting};
use crate::telemetry::ops::Health;

/// The annotation on a Namespace that caps the analyses running in it at once.
pub const MAX_CONCURRENT_ANNOTATION: &str = "serin.dev/max-concurrent-rollouts";
/// `status["serin.dev/pending"].reason` and the condition reasons.
pub const QUEUED: &str = "Queued";
pub const FROZEN: &str = "Frozen";
pub const PAUSED: &str = "Paused";
/// Condition types: true while a new revision waits for a slot, or is frozen.
pub const QUEUED_CONDITION: &str = "serin.dev/Queued";
pub const FROZEN_CONDITION: &str = "serin.dev/Frozen";

/// How long a slot handed out here counts before the Canary's status shows its run (or not).
const RESERVATION: Duration = Duration::from_secs(60);

/// `serin controller` flags of the queue and the freeze windows.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct AdmissionOptions {
    /// At most this many analyses run at once in the cluster; a new revision beyond it waits in
    /// a queue, served in detection order. Unset: no limit.
    #[arg(long)]
    pub max_concurrent_rollouts: Option<u32>,
    /// At most this many analyses run at once in each namespace (a Namespace's
    /// `serin.dev/max-concurrent-rollouts` annotation overrides it). Unset: no limit.
    #[arg(long)]
    pub max_concurrent_rollouts_per_namespace: Option<u32>,
    /// `namespace/name` of a ConfigMap holding freeze windows (keys `allow`, `freeze`,
    /// `inProgress`; see docs/queue-and-freeze.md). A bare name is looked up in `--namespace`.
    #[arg(long)]
    pub freeze_config: Option<String>,
}

impl AdmissionOptions {
    fn freeze_ref(&self, watched: Option<&str>) -> Option<(String, String)> {
        let v = self.freeze_config.as_deref()?.trim();
        if v.is_empty() {
            return None;
        }
        match v.split_once('/') {
            Some((ns, name)) => Some((ns.to_string(), name.to_string())),
            None => Some((watched.unwrap_or("default").to_string(), v.to_string())),
        }
    }
}

/// The queue and freeze state of one controller process.
#[derive(Default)]
pub struct Admissions {
    opts: AdmissionOptions,
    freeze: Option<(Store<ConfigMap>, ObjectRef<ConfigMap>)>,
    namespaces: Option<Store<Namespace>>,
    slots: Mutex<Slots>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Admissions {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What this process knows before the caches do: slots handed out whose run's status is not
/// cached yet, and detection times of queued revisions whose status is not cached yet.
#[derive(Default)]
struct Slots {
    reserved: HashMap<String, (String, Instant)>,
    waiting: HashMap<String, (String, DateTime<Utc>, Instant)>,
}

/// Whether a phase is a run under way (it holds a slot).
pub fn in_run(phase: Option<Phase>) -> bool {
    matches!(
        phase,
        Some(Phase::Progressing | Phase::Promoting | Phase::Finalising | Phase::WaitingPromotion)
    )
}

impl Admissions {
    /// Starts the watches the options need: the freeze ConfigMap, and the Namespaces for their
    /// annotations unless serin may not list them (small objects, few of them).
    pub async fn start(
        client: &Client,
        opts: AdmissionOptions,
        watched: Option<&str>,
        health: Arc<Health>,
    ) -> Admissions {
        let mut a = Admissions {
            opts: opts.clone(),
            freeze: None,
            namespaces: None,
            slots: Default::default(),
            tasks: Vec::new(),
        };
        if let Some((ns, name)) = opts.freeze_ref(watched) {
            let (store, w) = reflector::store::<ConfigMap>();
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let stream = watches::resilient("freeze-configmap", api, wc, health.clone())
                .reflect(w)
                .touched_objects();
            a.tasks.push(tokio::spawn(
                stream.for_each(|_| futures::future::ready(())),
            ));
            info!("freeze windows from ConfigMap {ns}/{name}");
            a.freeze = Some((store, ObjectRef::new(&name).within(&ns)));
        }
        let api: Api<Namespace> = Api::all(client.clone());
        let wc = match watched {
            Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
            None => watcher::Config::default(),
        };
        let mut probe = ListParams::default().limit(1);
        if let Some(ns) = watched {
            probe = probe.fields(&format!("metadata.name={ns}"));
        }
        match api.list_metadata(&probe).await {
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 401 => warn!(
                "serin may not list Namespaces: their serin.dev/freeze and serin.dev/max-concurrent-rollouts annotations are ignored ({})",
                s.message
            ),
            _ => {
                let (store, w) = reflector::store::<Namespace>();
                let stream = watches::resilient("namespaces", api, wc, health)
                    .reflect(w)
                    .touched_objects();
                a.tasks.push(tokio::spawn(
                    stream.for_each(|_| futures::future::ready(())),
                ));
                a.namespaces = Some(store);
            }
        }
        a
    }

    /// Whether the caches these decisions read have listed.
    pub fn ready(&self) -> bool {
        let cm = self.freeze.as_ref().is_none_or(|(s, _)| ready(s));
        let ns = self.namespaces.as_ref().is_none_or(ready);
        cm && ns
    }

    fn namespace_annotation(&self, ns: &str, key: &str) -> Option<String> {
        let store = self.namespaces.as_ref()?;
        let meta = store.get(&ObjectRef::new(ns))?;
        meta.annotations().get(key).cloned()
    }

    /// What freezes a new run of this Canary now: its own annotation, its Namespace's, or the
    /// schedule (a schedule serin cannot read freezes everything, saying which line to fix).
    pub fn freeze(&self, canary: &Canary, ns: &str, now: DateTime<Utc>) -> Option<Freeze> {
        let name = canary.name_any();
        let own = canary
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(core::FREEZE_ANNOTATION))
            .map(String::as_str);
        if let Some(f) = core::annotation_freeze(own, &format!("Canary {name}.{ns}")) {
            return Some(f);
        }
        let on_ns = self.namespace_annotation(ns, core::FREEZE_ANNOTATION);
        if let Some(f) = core::annotation_freeze(on_ns.as_deref(), &format!("Namespace {ns}")) {
            return Some(f);
        }
        let (store, at) = self.freeze.as_ref()?;
        let cm = store.get(at)?;
        let data: BTreeMap<String, String> = cm.data.clone().unwrap_or_default();
        match core::parse_schedule(&data) {
            Ok(s) => s.frozen_at(now),
            Err(e) => Some(Freeze {
                why: format!(
                    "ConfigMap {}/{} which serin cannot read ({e}; fix that line)",
                    at.namespace.as_deref().unwrap_or_default(),
                    at.name
                ),
                until: None,
                in_progress: core::InProgress::Finish,
            }),
        }
    }

    /// The caps, with each Namespace's annotation over the per-namespace flag.
    fn caps(&self) -> Caps {
        let mut namespaces = BTreeMap::new();
        if let Some(store) = &self.namespaces {
            for ns in store.state() {
                let cap = ns
                    .annotations()
                    .get(MAX_CONCURRENT_ANNOTATION)
                    .and_then(|v| v.trim().parse::<u32>().ok());
                if let Some(cap) = cap {
                    namespaces.insert(ns.name_any(), cap);
                }
            }
        }
        Caps {
            cluster: self.opts.max_concurrent_rollouts,
            namespaces,
            default_namespace: self.opts.max_concurrent_rollouts_per_namespace,
        }
    }

    /// Forgets what this process noted about a Canary that is not waiting to start.
    pub fn forget(&self, key: &str) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.reserved.remove(key);
        s.waiting.remove(key);
    }

    /// Whether the revision of `me` may start now, against the runs going (Canaries' phases and
    /// the slots handed out here) and the other queued revisions (their `serin.dev/pending` and
    /// the ones noted here). A start takes a slot at once, so concurrent reconciles cannot both
    /// take the last one.
    pub fn admit(&self, canaries: &Store<Canary>, me: Waiting) -> Admission {
        let caps = self.caps();
        if caps.is_unlimited() {
            return Admission::Start;
        }
        let now = Instant::now();
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.reserved
            .retain(|_, (_, at)| now.duration_since(*at) < RESERVATION);
        s.waiting
            .retain(|_, (_, _, at)| now.duration_since(*at) < RESERVATION);
        let mut running: HashMap<String, String> = HashMap::new();
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        for c in canaries.state() {
            let key = super::backoff::key(&c);
            let ns = c.namespace().unwrap_or_default();
            let st = c.status.as_ref();
            if in_run(st.and_then(|s| s.phase)) {
                running.insert(key, ns);
            } else if let Some(p) = st.and_then(|s| s.serin_pending.as_ref())
                && p.reason == QUEUED
            {
                let since = to_chrono(&p.since);
                waiting.insert(
                    key.clone(),
                    Waiting {
                        key,
                        namespace: ns,
                        since,
                    },
                );
            }
        }
        for (k, (ns, _)) in &s.reserved {
            running.insert(k.clone(), ns.clone());
        }
        for (k, (ns, since, _)) in &s.waiting {
            waiting.insert(
                k.clone(),
                Waiting {
                    key: k.clone(),
                    namespace: ns.clone(),
                    since: *since,
                },
            );
        }
        running.remove(&me.key);
        waiting.retain(|k, _| !running.contains_key(k));
        waiting.insert(me.key.clone(), me.clone());
        let list: Vec<Waiting> = waiting.into_values().collect();
        let ns_of: Vec<&str> = running.values().map(String::as_str).collect();
        let decisions = core::admit(&ns_of, &list, &caps);
        let mine = list
            .iter()
            .zip(decisions)
            .find(|(w, _)| w.key == me.key)
            .map(|(_, a)| a)
            .unwrap_or(Admission::Start);
        match &mine {
            Admission::Start => {
                s.waiting.remove(&me.key);
                s.reserved.insert(me.key, (me.namespace, now));
            }
            Admission::Queued { .. } => {
                s.waiting.insert(me.key, (me.namespace, me.since, now));
            }
        }
        mine
    }
}

fn ready<K>(store: &Store<K>) -> bool
where
    K: reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok())
}
