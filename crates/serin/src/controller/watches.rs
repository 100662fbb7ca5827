//! Watches that survive what clusters do to them.
//!
//! **API server restarts.** With kube's watchers fed straight into its controller, a restarted
//! API server left serin logging `too old resource version … Expired` every ~40 s and never
//! reconciling again (tests/resilience.rs reproduces it). The controller applies one backoff to
//! all its watches together: any watch's error pauses every watch, for up to 30 s, growing while
//! errors keep coming. A restarted API server refuses resumes from before the restart as too
//! old, so errors kept coming, the Canary cache fell behind serin's own status writes, and the
//! stale-cache guard held every reconcile. Here each watch is [`resilient`]: after any error
//! it drops its watcher and starts a fresh one (list, then watch), as client-go's reflector
//! does, with client-go's backoff applied to that watch alone; the error never reaches the
//! controller. Each watch reports to [`Health`]: failing from its first error until it has
//! listed again, which is what `/readyz` answers from.
//!
//! **Objects serin cannot read.** A list is one response: with typed decoding, one Canary the API
//! server accepted but serin's types refuse (`stepWeight: 99999999999`, a hand-edited status)
//! fails the whole list, and no Canary in the cluster is reconciled. [`tolerant`] watches raw
//! objects and decodes each on its own; one that fails is left out of the cache and reported
//! once per distinct error ([`Report`]): a log line with its name and the error (never its
//! body), a Warning Event and, on a Canary, a `serin.dev/Readable=False` condition naming the
//! field to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
use kube::api::{Api, DynamicObject};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use prometheus_client::metrics::gauge::Gauge;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::reconcile::{FLAGGER_MANAGERS, TAKEOVER_MARK};
use crate::telemetry::ops::Health;

/// The condition an unreadable Canary gets.
pub const READABLE_CONDITION: &str = "serin.dev/Readable";

/// A watch of `api` that re-lists after any error instead of yielding it (see the module doc).
/// The stream never ends and never yields `Err`; its item type is the watcher's so that it plugs
/// into kube's reflector and controller.
pub fn resilient<K>(
    name: &'static str,
    api: Api<K>,
    wc: watcher::Config,
    health: Arc<Health>,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    struct State<K: Resource + Clone> {
        api: Api<K>,
        wc: watcher::Config,
        inner: Option<futures::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>>,
        backoff: watcher::DefaultBackoff,
        failing: bool,
        health: Arc<Health>,
    }
    let state = State {
        api,
        wc,
        inner: None,
        backoff: watcher::DefaultBackoff::default(),
        failing: false,
        health,
    };
    futures::stream::unfold(state, move |mut s| async move {
        loop {
            let inner = s
                .inner
                .get_or_insert_with(|| watcher::watcher(s.api.clone(), s.wc.clone()).boxed());
            match inner.next().await {
                Some(Ok(ev)) => {
                    if matches!(ev, Event::InitDone) {
                        if s.failing {
                            info!(watch = name, "watch listed again: following the cluster");
                        }
                        s.failing = false;
                        s.health.watch_listed(name);
                        s.backoff.reset();
                    }
                    return Some((Ok(ev), s));
                }
                Some(Err(e)) => {
                    let delay = s.backoff.next().unwrap_or(Duration::from_secs(30));
                    let error = e.to_string();
                    warn!(
                        watch = name,
                        "watch failed: {error}; listing again in {:.1} s",
                        delay.as_secs_f64()
                    );
                    s.failing = true;
                    s.health.watch_failed(name, &error);
                    // Dropping the watcher forgets its resourceVersion: the next one lists.
                    s.inner = None;
                    tokio::time::sleep(delay).await;
                }
                None => {
                    debug!(watch = name, "watch stream ended; starting again");
                    s.inner = None;
                }
            }
        }
    })
}

/// kubectl's copy of the user's last `kubectl apply`, as large as the object's spec.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the caches keep of an object: see [`slim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// VirtualServices and DestinationRules: the fields of serin's entries (the router applies
    /// again when one it owns is no longer desired, `router::drops_owned_fields`), kept as their
    /// JSON text, and kubectl's annotation (a taken-over VirtualService's original spec may live
    /// only there).
    Router,
    /// Every other kind: of serin's entries only the takeover's mark, and no kubectl annotation.
    /// Nothing reads more: Deployments and HPAs drop the annotation when copied to the primary,
    /// configs are copied by data only, and the typed applies compare desired state with the
    /// object, not with serin's fields.
    Read,
}

/// Whether serin reads the managedFields entries of `manager` (the controller's own).
fn serins(manager: &str) -> bool {
    manager == "serin" || manager.starts_with("serin/") || manager == "serin-status"
}

/// Drops from a watched object what serin never reads, before it enters a cache. managedFields
/// are often more than half of an object in memory (each `fieldsV1` is a JSON tree): 22 KB of a
/// 1-replica Deployment's 24 KB. Other managers' entries go (kube-controller-manager's status,
/// kubectl's, Flux's); serin's stay, with their fields (as JSON text) only for [`Keep::Router`] and otherwise
/// with only the mark of a Flagger takeover in progress (`takeover_pending` reads it); with
/// [`Keep::Read`], kubectl's last-applied annotation goes.
///
/// An object with an entry of Flagger's keeps all its entries whole: the takeover writes the
/// whole list back from the cache, and a list without the others' entries would take their
/// fields from them in the API server. Nothing else is written from these copies: serin's
/// writes are applies built from desired state and merge patches, which never carry
/// managedFields, so what is dropped here stays in the cluster.
pub fn slim<K: Resource>(obj: &mut K, keep: Keep) {
    let meta = obj.meta_mut();
    if let Some(entries) = meta.managed_fields.as_mut() {
        let flaggers = entries.iter().any(|e| {
            e.manager
                .as_deref()
                .is_some_and(|m| FLAGGER_MANAGERS.contains(&m))
        });
        if !flaggers {
            entries.retain(|e| e.manager.as_deref().is_some_and(serins));
            for e in entries.iter_mut() {
                e.fields_v1 = match keep {
                    Keep::Read => e.fields_v1.take().and_then(mark_only),
                    Keep::Router => e.fields_v1.take().map(as_text),
                };
            }
            entries.shrink_to_fit();
        }
        if entries.is_empty() {
            meta.managed_fields = None;
        }
    }
    if keep == Keep::Read
        && let Some(annotations) = meta.annotations.as_mut()
    {
        // An emptied map stays: a desired object's `annotations: {}` is still in the copy.
        annotations.remove(LAST_APPLIED);
    }
}

/// [`slim`] with [`Keep::Router`], then the body of a VirtualService or DestinationRule (its
/// spec) kept as JSON text, without the `status` Istio may write there and serin never reads. An
/// untyped object is a JSON tree, about six times its JSON in memory (a VirtualService's spec:
/// 6 KB); serin reads it only when it compares the object with the one it wants, once per
/// reconcile of its Canary, through `router::cached_json` and `router::cached_data`, which parse
/// it back. The metadata stays typed: the controller maps these objects to their Canaries by
/// owner reference.
pub fn slim_istio(obj: &mut DynamicObject) {
    slim(obj, Keep::Router);
    if let Value::Object(data) = &mut obj.data {
        data.remove("status");
        obj.data = Value::String(Value::Object(std::mem::take(data)).to_string());
    }
}

/// A `fieldsV1` tree as its JSON text, which `router::fields_tree` reads back: in memory a tree
/// costs about nine times its JSON (each map a B-tree node of eleven slots), and the router reads
/// it only when it compares a VirtualService or DestinationRule with what it wants, once per
/// reconcile of that Canary.
fn as_text(fields: FieldsV1) -> FieldsV1 {
    match fields.0 {
        Value::Object(_) => FieldsV1(Value::String(fields.0.to_string())),
        other => FieldsV1(other),
    }
}

/// Of a `fieldsV1` set, only the takeover's mark, if there.
fn mark_only(fields: FieldsV1) -> Option<FieldsV1> {
    fields
        .0
        .pointer("/f:metadata/f:annotations")
        .and_then(|a| a.get(TAKEOVER_MARK))
        .map(|_| FieldsV1(json!({"f:metadata": {"f:annotations": {TAKEOVER_MARK: {}}}})))
}

/// Why an object could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The JSON path of the refused value (`spec.analysis.stepWeight`), empty when unknown.
    pub field: String,
    /// serde's message with string values left out (they may hold URLs or secrets).
    pub error: String,
}

impl Unreadable {
    /// The text of the Event and condition: what is wrong, what serin does, what to fix.
    pub fn message(&self, kind: &str) -> String {
        let at = if self.field.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.field)
        };
        let fix = if self.field.is_empty() {
            "correct the object".to_string()
        } else {
            format!("correct {}", self.field)
        };
        format!(
            "serin cannot read this {kind}: {}{at}. It is skipped (no analysis, no traffic change) until fixed: {fix}",
            self.error
        )
    }
}

/// Decodes a raw object as `K`, naming the refused field.
pub fn parse<K: DeserializeOwned>(obj: &DynamicObject) -> Result<K, Unreadable> {
    let value = serde_json::to_value(obj).map_err(|e| Unreadable {
        field: String::new(),
        error: redact(&e.to_string()),
    })?;
    serde_path_to_error::deserialize::<_, K>(value).map_err(|e| {
        let field = e.path().to_string();
        Unreadable {
            field: if field == "." { String::new() } else { field },
            error: redact(&e.into_inner().to_string()),
        }
    })
}

/// serde quotes a refused string in its message (`invalid type: string "https://…", expected
/// i32`); the string may be a webhook URL or a secret, so it is left out.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let after = &rest[i + "string \"".len()..];
        let mut escaped = false;
        let mut end = after.len();
        for (j, ch) in after.char_indices() {
            match ch {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = j + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &after[end.min(after.len())..];
    }
    out.push_str(rest);
    out.chars().take(300).collect()
}

/// Something to tell about an object the decoding stage met.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// It cannot be read (newly, or with another error than before).
    Unreadable {
        object: k8s_openapi::api::core::v1::ObjectReference,
        why: Unreadable,
        /// `status.conditions` as the API server holds them, to write ours beside them.
        conditions: Vec<Value>,
    },
    /// It was unreadable and can be read again.
    Readable {
        object: k8s_openapi::api::core::v1::ObjectReference,
        conditions: Vec<Value>,
    },
}

type Key = (String, String);

fn key_of(obj: &DynamicObject) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn reference(obj: &DynamicObject) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: obj.types.as_ref().map(|t| t.api_version.clone()),
        kind: obj.types.as_ref().map(|t| t.kind.clone()),
        name: obj.metadata.name.clone(),
        namespace: obj.metadata.namespace.clone(),
        uid: obj.metadata.uid.clone(),
        resource_version: obj.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn conditions(obj: &DynamicObject) -> Vec<Value> {
    obj.data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Turns raw watch events into typed ones, one object at a time. Pure: the cache lookup is
/// passed in, reports are returned.
pub struct Decoder {
    /// Unreadable objects now → the error last reported.
    unreadable: BTreeMap<Key, Unreadable>,
    /// During a relist: every object listed so far.
    listing: Option<BTreeSet<Key>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            unreadable: BTreeMap::new(),
            listing: None,
        }
    }

    pub fn unreadable_count(&self) -> usize {
        self.unreadable.len()
    }

    /// The typed event for `ev`, if any, and what to report. An object that turns unreadable
    /// is removed from the cache (`cached` is its last readable version): acting on a stale
    /// copy would be worse than leaving it alone.
    pub fn decode<K: DeserializeOwned>(
        &mut self,
        ev: Event<DynamicObject>,
        cached: impl Fn(&Key) -> Option<K>,
        reports: &mut Vec<Report>,
    ) -> Option<Event<K>> {
        match ev {
            Event::Init => {
                self.listing = Some(BTreeSet::new());
                Some(Event::Init)
            }
            Event::InitDone => {
                if let Some(listed) = self.listing.take() {
                    self.unreadable.retain(|k, _| listed.contains(k));
                }
                Some(Event::InitDone)
            }
            Event::InitApply(obj) => {
                if let Some(l) = self.listing.as_mut() {
                    l.insert(key_of(&obj));
                }
                self.read(&obj, reports).map(Event::InitApply)
            }
            Event::Apply(obj) => match self.read(&obj, reports) {
                Some(k) => Some(Event::Apply(k)),
                None => cached(&key_of(&obj)).map(Event::Delete),
            },
            Event::Delete(obj) => {
                let key = key_of(&obj);
                self.unreadable.remove(&key);
                match parse::<K>(&obj) {
                    Ok(k) => Some(Event::Delete(k)),
                    Err(_) => cached(&key).map(Event::Delete),
                }
            }
        }
    }

    fn read<K: DeserializeOwned>(
        &mut self,
        obj: &DynamicObject,
        reports: &mut Vec<Report>,
    ) -> Option<K> {
        let key = key_of(obj);
        match parse::<K>(obj) {
            Ok(k) => {
                if self.unreadable.remove(&key).is_some() {
                    reports.push(Report::Readable {
                        object: reference(obj),
                        conditions: conditions(obj),
                    });
                }
                Some(k)
            }
            Err(why) => {
                if self.unreadable.get(&key) != Some(&why) {
                    self.unreadable.insert(key, why.clone());
                    reports.push(Report::Unreadable {
                        object: reference(obj),
                        why,
                        conditions: conditions(obj),
                    });
                }
                None
            }
        }
    }
}

/// [`resilient`] over raw objects, decoded one by one into `K` by a [`Decoder`]; reports go to
/// `reports`, the number of unreadable objects to `gauge`. `cache` is the store this stream
/// feeds, read to drop an object that turns unreadable.
pub fn tolerant<K>(
    name: &'static str,
    api: Api<DynamicObject>,
    wc: watcher::Config,
    health: Arc<Health>,
    cache: kube::runtime::reflector::Store<K>,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    gauge: Gauge,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut decoder = Decoder::new();
    resilient(name, api, wc, health).filter_map(move |ev| {
        let out = ev.ok().and_then(|ev| {
            let mut found = Vec::new();
            let out = decoder.decode(
                ev,
                |(ns, n): &Key| {
                    let r = kube::runtime::reflector::ObjectRef::<K>::new(n);
                    let r = if ns.is_empty() { r } else { r.within(ns) };
                    cache.get(&r).map(|k| (*k).clone())
                },
                &mut found,
            );
            for r in found {
                let _ = reports.send(r);
            }
            gauge.set(i64::try_from(decoder.unreadable_count()).unwrap_or(i64::MAX));
            out
        });
        futures::future::ready(out.map(Ok))
    })
}

/// Tells about unreadable objects: log, Warning Event, and on a Canary the condition. Runs until
/// the sender side is dropped.
pub async fn report_unreadable(
    ctx: Arc<super::Ctx>,
    mut reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
) {
    while let Some(report) = reports.recv().await {
        match report {
            Report::Unreadable {
                object,
                why,
                conditions,
            } => {
                let kind = object.kind.clone().unwrap_or_default();
                let (ns, name) = (
                    object.namespace.clone().unwrap_or_default(),
                    object.name.clone().unwrap_or_default(),
                );
                warn!(
                    kind = %kind,
                    namespace = %ns,
                    name = %name,
                    field = %why.field,
                    "cannot read this object; skipping it until it is fixed: {}",
                    why.error
                );
                let message = why.message(&kind);
                if let Err(e) = ctx
                    .recorder
                    .publish(
                        &object,
                        true,
                        &message,
                        crate::controller::events::Repeat::Skip,
                    )
                    .await
                {
                    warn!(kind = %kind, namespace = %ns, name = %name, "recording the Warning Event: {e}");
                }
                if kind == "Canary"
                    && let Some(conds) = with_condition(&conditions, Some(&message))
                {
                    write_conditions(&ctx.client, &object, conds).await;
                }
            }
            Report::Readable { object, conditions } => {
                let (ns, name) = (
                    object.namespace.clone().unwrap_or_default(),
                    object.name.clone().unwrap_or_default(),
                );
                info!(namespace = %ns, name = %name, "object readable again");
                if object.kind.as_deref() == Some("Canary")
                    && let Some(conds) = with_condition(&conditions, None)
                {
                    write_conditions(&ctx.client, &object, conds).await;
                }
            }
        }
    }
}

/// `conditions` with serin's Readable condition set to False with `message`, or removed
/// (`None`); `None` when that changes nothing, so that an unchanged object is not written.
pub fn with_condition(conditions: &[Value], message: Option<&str>) -> Option<Vec<Value>> {
    let ours = |c: &Value| c.get("type").and_then(Value::as_str) == Some(READABLE_CONDITION);
    let existing = conditions.iter().find(|c| ours(c));
    let mut out: Vec<Value> = conditions.iter().filter(|c| !ours(c)).cloned().collect();
    match message {
        None => existing.map(|_| out),
        Some(m) => {
            if existing
                .and_then(|c| c.get("message"))
                .and_then(Value::as_str)
                == Some(m)
            {
                return None;
            }
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            out.push(json!({
                "type": READABLE_CONDITION,
                "status": "False",
                "reason": "Unreadable",
                "message": m,
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            }));
            Some(out)
        }
    }
}

async fn write_conditions(
    client: &kube::Client,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    conditions: Vec<Value>,
) {
    let (Some(ns), Some(name)) = (object.namespace.as_deref(), object.name.as_deref()) else {
        return;
    };
    let ar = kube::api::ApiResource::erase::<crate::api::Canary>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let patch = json!({"status": {"conditions": conditions}});
    if let Err(e) = api
        .patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        warn!(namespace = %ns, name = %name, "writing the {READABLE_CONDITION} condition: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Canary;
    use k8s_openapi::api::apps::v1::Deployment;

    fn raw(name: &str, step_weight: Value, conditions: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "1"},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "service": {"port": 9898},
                "analysis": {"stepWeight": step_weight, "webhooks": [{"name": "w", "url": "http://hooks.example/secret"}]},
            },
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn none(_: &Key) -> Option<Canary> {
        None
    }

    #[test]
    fn a_value_beyond_i32_names_its_field_and_never_the_body() {
        let err = parse::<Canary>(&raw("bad", json!(99_999_999_999_i64), json!([]))).unwrap_err();
        assert_eq!(err.field, "spec.analysis.stepWeight");
        assert!(err.error.contains("99999999999"), "{}", err.error);
        let msg = err.message("Canary");
        assert!(msg.contains("spec.analysis.stepWeight"), "{msg}");
        assert!(!msg.contains("hooks.example"), "{msg}");
        assert!(parse::<Canary>(&raw("good", json!(10), json!([]))).is_ok());
    }

    #[test]
    fn refused_strings_are_left_out_of_messages() {
        let err =
            parse::<Canary>(&raw("s", json!("http://hooks.example/x\"y"), json!([]))).unwrap_err();
        assert_eq!(err.field, "spec.analysis.stepWeight");
        assert!(!err.error.contains("hooks.example"), "{}", err.error);
        assert!(err.error.contains("a string"), "{}", err.error);
        assert_eq!(
            redact(r#"invalid type: string "a\"b", expected i32 and string "c""#),
            "invalid type: a string, expected i32 and a string"
        );
        assert_eq!(redact("no strings here"), "no strings here");
        assert_eq!(redact(r#"cut: string "unterminated"#), "cut: a string");
    }

    #[test]
    fn an_unreadable_object_is_skipped_reported_once_and_the_others_pass() {
        let mut d = Decoder::new();
        let mut reports = Vec::new();
        let mut out = Vec::new();
        for ev in [
            Event::Init,
            Event::InitApply(raw("bad", json!(99_999_999_999_i64), json!([]))),
            Event::InitApply(raw("good", json!(10), json!([]))),
            Event::InitDone,
        ] {
            out.extend(d.decode::<Canary>(ev, none, &mut reports));
        }
        let names: Vec<String> = out
            .iter()
            .map(|e| match e {
                Event::InitApply(c) => c.name_any(),
                Event::Init => "<init>".into(),
                Event::InitDone => "<done>".into(),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(names, ["<init>", "good", "<done>"]);
        assert_eq!(reports.len(), 1);
        assert!(matches!(&reports[0], Report::Unreadable { object, why, .. }
                if object.name.as_deref() == Some("bad") && why.field == "spec.analysis.stepWeight"));
        assert_eq!(d.unreadable_count(), 1);

        // The same error again (our own status write, a relist): nothing new to report.
        reports.clear();
        let same = raw("bad", json!(99_999_999_999_i64), json!([]));
        assert!(
            d.decode::<Canary>(Event::Apply(same), none, &mut reports)
                .is_none()
        );
        for ev in [
            Event::Init,
            Event::InitApply(raw("bad", json!(99_999_999_999_i64), json!([]))),
            Event::InitDone,
        ] {
            d.decode::<Canary>(ev, none, &mut reports);
        }
        assert!(reports.is_empty(), "{reports:?}");

        // Fixed: it passes again and its recovery is reported.
        let fixed = d.decode::<Canary>(
            Event::Apply(raw("bad", json!(5), json!([]))),
            none,
            &mut reports,
        );
        assert!(matches!(fixed, Some(Event::Apply(c)) if c.name_any() == "bad"));
        assert!(matches!(&reports[..], [Report::Readable { .. }]));
        assert_eq!(d.unreadable_count(), 0);
    }

    #[test]
    fn a_cached_object_that_turns_unreadable_leaves_the_cache() {
        let mut d = Decoder::new();
        let mut reports = Vec::new();
        let cached: Canary = parse(&raw("c", json!(10), json!([]))).expect("a readable canary");
        let out = d.decode::<Canary>(
            Event::Apply(raw("c", json!(99_999_999_999_i64), json!([]))),
            |k: &Key| (k == &("ns".to_string(), "c".to_string())).then(|| cached.clone()),
            &mut reports,
        );
        assert!(matches!(out, Some(Event::Delete(c)) if c.name_any() == "c"));
        assert_eq!(reports.len(), 1);
        // Deleted while unreadable: forgotten.
        let out = d.decode::<Canary>(
            Event::Delete(raw("c", json!(99_999_999_999_i64), json!([]))),
            none,
            &mut reports,
        );
        assert!(out.is_none());
        assert_eq!(d.unreadable_count(), 0);
    }

    #[test]
    fn a_relist_forgets_unreadable_objects_deleted_meanwhile() {
        let mut d = Decoder::new();
        let mut reports = Vec::new();
        d.decode::<Canary>(
            Event::Apply(raw("bad", json!(99_999_999_999_i64), json!([]))),
            none,
            &mut reports,
        );
        assert_eq!(d.unreadable_count(), 1);
        for ev in [Event::Init, Event::InitDone] {
            d.decode::<Canary>(ev, none, &mut reports);
        }
        assert_eq!(d.unreadable_count(), 0);
    }

    fn entry(manager: &str, operation: &str, subresource: Option<&str>) -> Value {
        let mut e = json!({
            "manager": manager, "operation": operation, "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}},
        });
        if let Some(s) = subresource {
            e["subresource"] = json!(s);
        }
        e
    }

    fn deployment(entries: Option<Vec<Value>>, annotations: Value) -> Deployment {
        let mut meta = json!({"name": "podinfo", "namespace": "ns", "annotations": annotations});
        if let Some(e) = entries {
            meta["managedFields"] = Value::Array(e);
        }
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"selector": {"matchLabels": {"app": "podinfo"}}, "template": {}},
            "status": {"replicas": 1, "conditions": [{"type": "Available", "status": "True"}]},
        }))
        .unwrap()
    }

    fn managers(d: &Deployment) -> Option<Vec<String>> {
        d.metadata.managed_fields.as_ref().map(|es| {
            es.iter()
                .map(|e| e.manager.clone().unwrap_or_default())
                .collect()
        })
    }

    #[test]
    fn the_caches_keep_the_managed_fields_serin_reads_and_no_other() {
        let kcm = || entry("kube-controller-manager", "Update", Some("status"));
        type Case = (&'static str, Option<Vec<Value>>, Option<Vec<&'static str>>);
        let cases: Vec<Case> = vec![
            ("no managedFields", None, None),
            ("an empty list", Some(vec![]), None),
            (
                "only others' entries: none left",
                Some(vec![
                    kcm(),
                    entry("kubectl-client-side-apply", "Update", None),
                    entry("kustomize-controller", "Apply", None),
                ]),
                None,
            ),
            (
                "serin's entries stay, in order, the others go",
                Some(vec![
                    entry("serin/primary", "Apply", None),
                    kcm(),
                    entry("serin/scale", "Update", None),
                    entry("serin", "Apply", Some("status")),
                    entry("serin-status", "Apply", None),
                    entry("serin-bench", "Apply", None),
                    entry("serinx", "Apply", None),
                ]),
                Some(vec![
                    "serin/primary",
                    "serin/scale",
                    "serin",
                    "serin-status",
                ]),
            ),
            (
                "a Flagger entry keeps every entry: the takeover writes the list back whole",
                Some(vec![
                    entry("flagger", "Update", None),
                    kcm(),
                    entry("serin/primary", "Apply", None),
                ]),
                Some(vec!["flagger", "kube-controller-manager", "serin/primary"]),
            ),
        ];
        for (case, entries, want) in cases {
            for keep in [Keep::Router, Keep::Read] {
                let mut d = deployment(entries.clone(), json!({"team": "a"}));
                let before = d.clone();
                slim(&mut d, keep);
                assert_eq!(
                    managers(&d),
                    want.clone()
                        .map(|w| w.iter().map(|s| s.to_string()).collect()),
                    "{case}, {keep:?}"
                );
                // The rest of the object is untouched.
                d.metadata.managed_fields = before.metadata.managed_fields.clone();
                assert_eq!(d, before, "{case}, {keep:?}");
            }
        }
    }

    #[test]
    fn serins_fields_are_kept_whole_only_where_the_router_reads_them() {
        let routed = json!({"f:spec": {"f:http": {}}});
        let marked = json!({"f:metadata": {"f:annotations": {TAKEOVER_MARK: {}, "f:team": {}}}, "f:spec": {}});
        let mark = json!({"f:metadata": {"f:annotations": {TAKEOVER_MARK: {}}}});
        let text = |v: &Value| Value::String(v.to_string());
        let cases = [
            // The router's objects keep the fields as JSON text, which reads back the same.
            (Keep::Router, routed.clone(), Some(text(&routed))),
            (Keep::Read, routed.clone(), None),
            (Keep::Router, marked.clone(), Some(text(&marked))),
            // `takeover_pending` still finds the mark.
            (Keep::Read, marked.clone(), Some(mark)),
            // Already text (a second pass): unchanged.
            (Keep::Router, text(&routed), Some(text(&routed))),
        ];
        for (keep, fields, want) in cases {
            let mut e = entry("serin/primary", "Apply", None);
            e["fieldsV1"] = fields.clone();
            let mut d = deployment(Some(vec![e.clone()]), json!({}));
            slim(&mut d, keep);
            let kept = d.metadata.managed_fields.as_ref().unwrap();
            assert_eq!(kept.len(), 1);
            assert_eq!(kept[0].manager.as_deref(), Some("serin/primary"));
            assert_eq!(kept[0].operation.as_deref(), Some("Apply"));
            assert_eq!(
                kept[0].fields_v1.as_ref().map(|f| f.0.clone()),
                want,
                "{keep:?} {fields}"
            );
            if keep == Keep::Router {
                let kept = kept[0].fields_v1.as_ref().unwrap();
                let tree = crate::router::fields_tree(&kept.0).unwrap().into_owned();
                let original = crate::router::fields_tree(&fields).unwrap().into_owned();
                assert_eq!(tree, original, "{fields}");
            }
        }
        // With a Flagger entry, every entry stays whole whatever the kind.
        let mut d = deployment(
            Some(vec![
                entry("flagger", "Update", None),
                entry("serin/primary", "Apply", None),
            ]),
            json!({}),
        );
        let before = d.clone();
        slim(&mut d, Keep::Read);
        assert_eq!(d, before);
    }

    #[test]
    fn kubectls_last_applied_annotation_goes_only_where_nothing_reads_it() {
        let annotations = json!({
            "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
            "deployment.kubernetes.io/revision": "3",
        });
        let cases = [
            (Keep::Router, annotations.clone()),
            (
                Keep::Read,
                json!({"deployment.kubernetes.io/revision": "3"}),
            ),
        ];
        for (keep, want) in cases {
            let mut d = deployment(None, annotations.clone());
            slim(&mut d, keep);
            assert_eq!(
                serde_json::to_value(&d.metadata.annotations).unwrap(),
                want,
                "{keep:?}"
            );
        }
        // Emptied, the map stays: an applied `annotations: {}` is still found in the copy.
        let mut d = deployment(None, json!({LAST_APPLIED: "{}"}));
        slim(&mut d, Keep::Read);
        assert_eq!(d.metadata.annotations, Some(Default::default()));
        // Without annotations nothing is added.
        let mut d = deployment(None, json!(null));
        slim(&mut d, Keep::Read);
        assert_eq!(d.metadata.annotations, None);
    }

    #[test]
    fn untyped_objects_are_slimmed_alike() {
        let mut vs: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": {"name": "podinfo", "namespace": "ns",
                "annotations": {LAST_APPLIED: "{}"},
                "managedFields": [entry("serin/router", "Apply", None), entry("kubectl", "Update", None)]},
            "spec": {"hosts": ["podinfo"]},
        }))
        .unwrap();
        slim(&mut vs, Keep::Router);
        let v = serde_json::to_value(&vs).unwrap();
        let mut want = entry("serin/router", "Apply", None);
        want["fieldsV1"] = json!(r#"{"f:spec":{"f:replicas":{}}}"#);
        assert_eq!(v["metadata"]["managedFields"], json!([want]));
        assert_eq!(v["metadata"]["annotations"], json!({LAST_APPLIED: "{}"}));
        assert_eq!(v["spec"], json!({"hosts": ["podinfo"]}));
    }

    #[test]
    fn istio_objects_keep_their_spec_as_text_and_read_back_the_same() {
        let serin = entry("serin/router", "Apply", None);
        let mut serin_text = serin.clone();
        serin_text["fieldsV1"] = json!(serin["fieldsV1"].to_string());
        let spec = json!({"hosts": ["podinfo"], "http": [{"route": [
            {"destination": {"host": "podinfo-primary"}, "weight": 90},
            {"destination": {"host": "podinfo-canary"}, "weight": 10}]}]});
        let object = |data: Value, entries: Vec<Value>| {
            let mut o = json!({
                "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                "metadata": {"name": "podinfo", "namespace": "ns",
                    "annotations": {LAST_APPLIED: "{}"}, "managedFields": entries},
            });
            for (k, v) in data.as_object().unwrap() {
                o[k] = v.clone();
            }
            o
        };
        type Case = (&'static str, Value, Vec<Value>, Value, Value);
        let cases: Vec<Case> = vec![
            (
                "spec kept, Istio's status and other managers' entries dropped",
                json!({"spec": spec.clone(), "status": {"observedGeneration": 3}}),
                vec![serin.clone(), entry("kubectl", "Update", None)],
                json!({"spec": spec.clone()}).to_string().into(),
                object(json!({"spec": spec.clone()}), vec![serin_text.clone()]),
            ),
            (
                "no spec",
                json!({}),
                vec![serin.clone()],
                json!("{}"),
                object(json!({}), vec![serin_text.clone()]),
            ),
        ];
        for (case, data, entries, want_data, want_json) in cases {
            let mut o: DynamicObject =
                serde_json::from_value(object(data.clone(), entries)).unwrap();
            slim_istio(&mut o);
            assert_eq!(o.data, want_data, "{case}");
            assert_eq!(crate::router::cached_json(&o), Some(want_json), "{case}");
            // A second pass changes nothing.
            let once = o.clone();
            slim_istio(&mut o);
            assert_eq!(o, once, "{case}");
        }
    }

    #[test]
    fn the_condition_is_written_only_when_it_changes() {
        let promoted = json!({"type": "Promoted", "status": "Unknown", "reason": "Initializing"});
        let set = with_condition(std::slice::from_ref(&promoted), Some("m1")).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set[0], promoted);
        assert_eq!(set[1]["type"], READABLE_CONDITION);
        assert_eq!(set[1]["status"], "False");
        assert_eq!(set[1]["message"], "m1");
        assert_eq!(with_condition(&set, Some("m1")), None);
        let changed = with_condition(&set, Some("m2")).unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!(changed[1]["message"], "m2");
        assert_eq!(
            with_condition(&changed, None).unwrap(),
            vec![promoted.clone()]
        );
        assert_eq!(with_condition(&[promoted], None), None);
    }
}
