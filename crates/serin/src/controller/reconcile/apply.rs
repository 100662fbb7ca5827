//! Act: the plan's objects, applied with server-side apply only where the watch cache differs
//! from what the router and workload builders want. Routes first, then the primary, then the
//! canary's replicas, so traffic never points at pods that are going away.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

use super::observe::Observed;
use super::refused::Refusal;
use super::{Error, Reconcile};
use crate::controller::autoscaler;
use crate::rollout::{self, Action as PlanAction, Plan, Progress, Scale, messages as msg};
use crate::router::{self, RouterInputs};
use crate::telemetry::WorkloadNs;
use crate::workload::{self, PrimaryInputs, SelectorLabel};

impl Reconcile {
    /// First sight (or someone deleted it): the primary starts from the current target, and the
    /// primary HPA exists as soon as the primary does.
    pub(super) async fn ensure_primary(&self, seen: &Observed) -> Result<(), Error> {
        if seen.primary.is_none() {
            self.write_primary(seen).await?;
            if let Some(hpa) = &seen.scaler {
                autoscaler::size_new_primary(&self.ctx, &self.ns, &seen.target, hpa)
                    .await
                    .map_err(|e| self.refused("Deployment", &self.primary_name(), e))?;
            }
        }
        autoscaler::apply_primary(
            &self.ctx,
            &self.canary,
            &self.ns,
            seen.scaler.as_ref(),
            false,
        )
        .await
        .map_err(|e| self.refused("HorizontalPodAutoscaler", &primary_hpa_name(seen), e))
    }

    /// Keeps what the API server answered to a refused write of `kind` `name`, for the
    /// `serin.dev/Written` condition and its Event; errors the server did not answer (it is away)
    /// are only retried.
    pub(super) fn refused(&self, kind: &str, name: &str, e: Error) -> Error {
        if let Error::Kube(kube::Error::Api(s)) = &e
            && let Ok(mut r) = self.refusal.lock()
        {
            *r = Some(Refusal {
                kind: kind.to_string(),
                name: name.to_string(),
                namespace: self.ns.clone(),
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            });
        }
        e
    }

    /// Carries out the plan.
    pub(super) async fn act(&mut self, seen: &Observed, plan: &Plan) -> Result<(), Error> {
        let discovered = router::discover_ports(&seen.pod, self.canary.spec.service.port);
        self.apply_services(&seen.selector, &discovered, plan.route_to_primary)
            .await?;
        if plan.route_to_primary {
            self.decide_affinity_cookies(&plan.progress);
            self.apply_routes(&seen.selector, &discovered, rollout::routes(&plan.progress))
                .await?;
        }
        for action in &plan.actions {
            match action {
                PlanAction::Promote { revision } => {
                    if *revision == seen.revision {
                        self.write_primary(seen).await?;
                        let hpa = seen.scaler.as_ref();
                        autoscaler::apply_primary(&self.ctx, &self.canary, &self.ns, hpa, true)
                            .await
                            .map_err(|e| {
                                self.refused("HorizontalPodAutoscaler", &primary_hpa_name(seen), e)
                            })?;
                    } else {
                        warn!("not promoting: the target moved on to {}", seen.revision);
                    }
                }
                PlanAction::PostRollout(phase) => self.post_rollout(*phase, &plan.progress).await,
            }
        }
        self.scale(&seen.target, seen.primary.as_deref(), plan.scale)
            .await
    }

    /// Applies `obj` unless the cached copy already has everything it says.
    async fn apply<K>(&self, obj: &K, cached: Option<&K>, manager: &str) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let actual = cached.and_then(|c| serde_json::to_value(c).ok());
        self.apply_unless_current(obj, actual, manager, false).await
    }

    /// [`Self::apply`] for the Istio objects, whose caches stay untyped: one VirtualService in
    /// the cluster that does not fit the typed model must not stop the whole watch.
    async fn apply_dynamic<K>(
        &self,
        obj: &K,
        cached: Option<Arc<DynamicObject>>,
        manager: &str,
    ) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let actual = cached.and_then(|c| router::cached_json(&c));
        self.apply_unless_current(obj, actual, manager, true).await
    }

    /// The apply both [`Self::apply`] and [`Self::apply_dynamic`] make, skipped when `actual`
    /// (the cached object) already has everything `obj` says. With `owns_spec_whole`, a field
    /// serin stopped saying is a change too (issue 13: a removed trafficPolicy, timeout or retries
    /// stayed): only for the Istio objects, whose spec serin owns whole; on a Deployment, a field
    /// dropped from the apply (replicas once an autoscaler takes over) would be reset to its
    /// default.
    async fn apply_unless_current<K>(
        &self,
        obj: &K,
        actual: Option<Value>,
        manager: &str,
        owns_spec_whole: bool,
    ) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let desired = serde_json::to_value(obj)?;
        if let Some(actual) = actual
            && !self
                .take_over_from_flagger::<K>(&actual, &desired, manager)
                .await?
            && is_subset(&desired, &actual)
            && !(owns_spec_whole && router::drops_owned_fields(&desired, &actual, manager))
        {
            return Ok(());
        }
        self.send_apply(obj, manager).await
    }

    /// Moves the fields Flagger's Updates own on an object of this Canary into serin's Apply
    /// entry (`manager`), so that the apply that follows removes what serin no longer says: a
    /// label, annotation or port the target dropped after the switch would otherwise stay, owned
    /// by `flagger`, for good. This is the Kubernetes move from client-side to server-side apply
    /// (client-go's `csaupgrade`): one patch of `metadata.managedFields` only, which the API
    /// server stores as sent, guarded by the cached `resourceVersion`.
    ///
    /// Returns whether an apply must follow even when the object already has everything serin
    /// says: right after the move, or after a restart between the move and the apply (the mark
    /// [`TAKEOVER_MARK`] in serin's entry tells). Objects serin does not control (a user's Service
    /// or VirtualService taken over) and objects without a Flagger manager are left as they are.
    async fn take_over_from_flagger<K>(
        &self,
        actual: &Value,
        desired: &Value,
        manager: &str,
    ) -> Result<bool, Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let controlled = actual
            .get("metadata")
            .and_then(|m| serde_json::from_value::<ObjectMeta>(m.clone()).ok())
            .is_some_and(|m| router::controlled_by(&m, self.uid()));
        if !controlled {
            return Ok(false);
        }
        let Some(managed) = managed_fields_taken_over(actual, desired, manager) else {
            return Ok(takeover_pending(actual, manager));
        };
        let name = actual
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let patch = json!({
            "metadata": {
                "managedFields": managed,
                "resourceVersion": actual.pointer("/metadata/resourceVersion"),
            }
        });
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!("{} {name}: took over the fields Flagger set", K::kind(&())),
            // A cache behind the object (right after the move, or another writer): the apply
            // still goes, and a next reconcile with a fresh cache moves what is left.
            Err(kube::Error::Api(e)) if e.code == 409 => debug!(
                "{} {name}: not taking over the fields Flagger set yet: {}",
                K::kind(&()),
                e.message
            ),
            Err(kube::Error::Api(e)) => warn!(
                "{} {name}: taking over the fields Flagger set: {}",
                K::kind(&()),
                e.message
            ),
            Err(e) => return Err(e.into()),
        }
        Ok(true)
    }

    /// The server-side apply both [`Self::apply`] and [`Self::apply_dynamic`] end in; a refusal
    /// is told on the Canary ([`Self::refused`]).
    async fn send_apply<K>(&self, obj: &K, manager: &str) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let name = obj.name_any();
        api.patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|e| self.refused(&K::kind(&()), &name, e.into()))?;
        Ok(())
    }

    fn router_inputs<'a>(
        &'a self,
        selector: &'a SelectorLabel,
        discovered: &'a [router::DiscoveredPort],
    ) -> Result<RouterInputs<'a>, Error> {
        Ok(RouterInputs {
            canary: &self.canary,
            namespace: &self.ns,
            selector,
            owner: self.owner()?,
            discovered,
        })
    }

    /// The canary and primary Services, and the apex once traffic goes to the primary.
    async fn apply_services(
        &self,
        selector: &SelectorLabel,
        discovered: &[router::DiscoveredPort],
        with_apex: bool,
    ) -> Result<(), Error> {
        let inp = self.router_inputs(selector, discovered)?;
        let apex = self.canary.apex_name();
        let mut wanted = Vec::new();
        for svc in router::desired_services(&inp) {
            let name = svc.name_any();
            if name == apex && !with_apex {
                continue;
            }
            let cached = self.service(&name)?;
            let svc = router::taken_over_service(svc, cached.as_deref(), self.uid());
            wanted.push((svc, cached));
        }
        // All at once: creating a Service waits for its cluster IP to be allocated (about a
        // second on a busy API server, measured by the benchmark at 1,000 canaries), and the
        // three do not depend on each other.
        futures::future::try_join_all(
            wanted
                .iter()
                .map(|(svc, cached)| self.apply(svc, cached.as_deref(), "serin/router")),
        )
        .await?;
        Ok(())
    }

    async fn apply_routes(
        &self,
        selector: &SelectorLabel,
        discovered: &[router::DiscoveredPort],
        routes: rollout::Routes,
    ) -> Result<(), Error> {
        let inp = self.router_inputs(selector, discovered)?;
        let rules: Vec<_> = router::desired_destination_rules(&inp)
            .into_iter()
            .map(|dr| {
                let cached = self.ctx.destination_rules.get(
                    &ObjectRef::new_with(&dr.name_any(), self.ctx.dr_resource.clone())
                        .within(&self.ns),
                );
                (dr, cached)
            })
            .collect();
        // The two rules at once; the VirtualService that names them after both.
        futures::future::try_join_all(
            rules
                .iter()
                .map(|(dr, cached)| self.apply_dynamic(dr, cached.clone(), "serin/router")),
        )
        .await?;
        let vs = match &self.cookies {
            Some(c) => router::desired_virtual_service_with_affinity(&inp, routes, c),
            None => router::desired_virtual_service(&inp, routes),
        };
        let apex = self.canary.apex_name();
        let cached = self
            .ctx
            .virtual_services
            .get(&ObjectRef::new_with(&apex, self.ctx.vs_resource.clone()).within(&self.ns));
        let vs = router::taken_over_virtual_service(vs, cached.as_deref(), self.uid());
        self.apply_dynamic(&vs, cached, "serin/router").await?;
        let t = self.target_name().to_string();
        for (workload, weight) in [(format!("{t}-primary"), routes.primary), (t, routes.canary)] {
            self.ctx
                .metrics
                .canary_weight
                .get_or_create(&WorkloadNs {
                    workload,
                    namespace: self.ns.clone(),
                })
                .set(weight as i64);
        }
        Ok(())
    }

    /// Applies the primary Deployment from the target's current template, and the `-primary`
    /// copies of the tracked configs it refers to.
    async fn write_primary(&self, seen: &Observed) -> Result<(), Error> {
        let owner = self.owner()?;
        for key in seen.configs.keys() {
            self.copy_config(key, &owner).await?;
        }
        let primary = self.deployment(&self.primary_name())?;
        let replicas = workload::primary_replicas(
            seen.target.spec.replicas,
            primary.as_ref().and_then(|p| p.spec.replicas),
            self.canary.spec.autoscaler_ref.is_some(),
        );
        let tracked: BTreeSet<String> = seen.configs.keys().cloned().collect();
        let desired = workload::desired_primary(&PrimaryInputs {
            target: &seen.target,
            selector: &seen.selector,
            owner,
            revision: &seen.revision,
            tracked: &tracked,
            replicas,
            configs_checksum: workload::configs_checksum(&seen.configs),
        });
        self.apply(&desired, primary.as_deref(), "serin/primary")
            .await
    }

    /// A cached object of the Canary's namespace.
    fn at<K: Resource<DynamicType = ()>>(&self, name: &str) -> ObjectRef<K> {
        ObjectRef::new(name).within(&self.ns)
    }

    /// Applies the `-primary` copy of one tracked config (`configmap/<name>` or `secret/<name>`).
    async fn copy_config(&self, key: &str, owner: &OwnerReference) -> Result<(), Error> {
        if let Some(name) = key.strip_prefix("configmap/") {
            let Some(src) = self.ctx.config_maps.get(&self.at(name)) else {
                return Ok(());
            };
            let copy = workload::primary_config_map(&src, owner);
            let cached = self
                .ctx
                .config_maps
                .get(&self.at(&format!("{name}-primary")));
            self.apply(&copy, cached.as_deref(), "serin/config").await?;
        } else if let Some(name) = key.strip_prefix("secret/") {
            let Some(src) = self.ctx.secrets.get(&self.at(name)) else {
                return Ok(());
            };
            let copy = workload::primary_secret(&src, owner);
            let cached = self.ctx.secrets.get(&self.at(&format!("{name}-primary")));
            self.apply(&copy, cached.as_deref(), "serin/config").await?;
        }
        Ok(())
    }

    /// The target's replicas for the decision's `scale`; a merge patch of the user's object.
    pub(super) async fn scale(
        &self,
        target: &Deployment,
        primary: Option<&Deployment>,
        scale: Scale,
    ) -> Result<(), Error> {
        let Some(want) = workload::target_replicas(
            scale,
            target.spec.replicas,
            primary.and_then(|p| p.spec.replicas),
            autoscaler::user_min_replicas(&self.ctx, &self.canary, &self.ns),
            self.canary.spec.autoscaler_ref.is_some(),
        ) else {
            return Ok(());
        };
        if want == 0 {
            info!(
                "Scaling down Deployment {}",
                msg::qualified(self.target_name(), &self.ns)
            );
        }
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let params = PatchParams {
            field_manager: Some("serin/scale".into()),
            ..Default::default()
        };
        api.patch(
            self.target_name(),
            &params,
            &Patch::Merge(json!({ "spec": { "replicas": want } })),
        )
        .await
        .map_err(|e| self.refused("Deployment", self.target_name(), e.into()))?;
        Ok(())
    }

    /// Session affinity: the cookies for this progress, new values drawn here (the router's
    /// builders stay pure and take them as inputs).
    fn decide_affinity_cookies(&mut self, progress: &Progress) {
        let cookies = router::next_affinity_cookies(&self.canary, progress, random_cookie_value);
        self.cookies = Some(cookies);
    }
}

/// The name of the primary HPA, for a refusal's message.
fn primary_hpa_name(seen: &Observed) -> String {
    seen.scaler
        .as_ref()
        .and_then(|h| h.metadata.name.clone())
        .unwrap_or_else(|| "primary HorizontalPodAutoscaler".to_string())
}

/// A random cookie value like Flagger's: 10 ASCII letters. Not a secret (it only keeps a user on
/// one side of a canary), so std's randomly keyed hasher over the clock is enough.
fn random_cookie_value() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    let mut n = h.finish();
    let letters = router::COOKIE_LETTERS;
    (0..router::COOKIE_VALUE_LEN)
        .map(|_| {
            let c = letters[(n % letters.len() as u64) as usize];
            n /= letters.len() as u64;
            char::from(c)
        })
        .collect()
}

/// The field managers of Flagger's writes: client-go names the manager of an Update after the
/// binary, and Flagger sets no other.
pub const FLAGGER_MANAGERS: &[&str] = &["flagger"];

/// A field no object has (under the annotations, whose keys are free), kept in serin's Apply
/// entry from the move of Flagger's fields until the apply that follows it replaces the entry.
pub const TAKEOVER_MARK: &str = "f:serin.dev/flagger-fields-taken-over";

fn main_resource(e: &Value) -> bool {
    e.get("subresource")
        .is_none_or(|s| s.as_str().unwrap_or_default().is_empty())
}

fn is_flagger_update(e: &Value) -> bool {
    e.get("operation").and_then(Value::as_str) == Some("Update")
        && e.get("manager")
            .and_then(Value::as_str)
            .is_some_and(|m| FLAGGER_MANAGERS.contains(&m))
        && main_resource(e)
}

fn is_apply_of(e: &Value, manager: &str) -> bool {
    e.get("operation").and_then(Value::as_str) == Some("Apply")
        && e.get("manager").and_then(Value::as_str) == Some(manager)
        && main_resource(e)
}

/// Adds every field of `from` to `into` (a `fieldsV1` set is a tree of objects).
fn merge_fields(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge_fields(a, b),
            (Some(_), _) => {}
            (None, _) => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `actual`'s `managedFields` with the entries of Flagger's Updates folded into `manager`'s
/// Apply entry (created if serin never applied the object), or `None` without such entries.
/// `spec.replicas` is not taken when serin does not set it: an autoscaler has it, and an apply
/// leaving out a field it owns would reset it to the default.
pub fn managed_fields_taken_over(actual: &Value, desired: &Value, manager: &str) -> Option<Value> {
    let entries = actual
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)?;
    let flagger: Vec<&Value> = entries.iter().filter(|e| is_flagger_update(e)).collect();
    if flagger.is_empty() {
        return None;
    }
    let mut fields = Map::new();
    for e in &flagger {
        if let Some(f) = e.get("fieldsV1").and_then(Value::as_object) {
            merge_fields(&mut fields, f);
        }
    }
    if desired.pointer("/spec/replicas").is_none_or(Value::is_null)
        && let Some(Value::Object(spec)) = fields.get_mut("f:spec")
    {
        spec.remove("f:replicas");
    }
    let mark = json!({"f:metadata": {"f:annotations": {TAKEOVER_MARK: {}}}});
    if let Value::Object(mark) = mark {
        merge_fields(&mut fields, &mark);
    }
    let mut out: Vec<Value> = Vec::with_capacity(entries.len());
    let mut merged = false;
    for e in entries {
        if is_flagger_update(e) {
            continue;
        }
        let mut e = e.clone();
        if !merged
            && is_apply_of(&e, manager)
            && let Some(Value::Object(own)) = e.get_mut("fieldsV1")
        {
            merge_fields(own, &fields);
            merged = true;
        }
        out.push(e);
    }
    if !merged {
        out.push(json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": desired.get("apiVersion").or_else(|| actual.get("apiVersion")),
            "time": flagger.iter().filter_map(|e| e.get("time")).next_back(),
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        }));
    }
    Some(Value::Array(out))
}

/// Whether `manager`'s Apply entry still holds [`TAKEOVER_MARK`]: Flagger's fields were moved
/// but not yet pruned by an apply.
pub fn takeover_pending(actual: &Value, manager: &str) -> bool {
    actual
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| is_apply_of(e, manager))
        .any(|e| {
            e.get("fieldsV1")
                .and_then(router::fields_tree)
                .is_some_and(|f| {
                    f.pointer("/f:metadata/f:annotations")
                        .and_then(|a| a.get(TAKEOVER_MARK))
                        .is_some()
                })
        })
}

/// Whether everything `desired` says is already in `actual` (fields the server or others added
/// do not count), so that an unchanged object is never written again.
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| is_subset(v, av)) || v.is_null()),
        (Value::Array(d), Value::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(dv, av)| is_subset(dv, av))
        }
        (Value::Number(d), Value::Number(a)) => d.as_f64() == a.as_f64(),
        _ => desired == actual,
    }
}

#[cfg(test)]
mod tests {
    use super::{TAKEOVER_MARK, is_subset, managed_fields_taken_over, takeover_pending};
    use serde_json::{Value, json};

    fn object(entries: Value) -> Value {
        json!({"apiVersion": "apps/v1", "metadata": {"name": "podinfo-primary", "managedFields": entries}})
    }

    fn flagger_update() -> Value {
        json!({
            "manager": "flagger", "operation": "Update", "apiVersion": "apps/v1",
            "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:metadata": {
                "f:annotations": {"f:example.com/x": {}}}}}}
        })
    }

    #[test]
    fn flaggers_fields_move_into_serins_apply_entry_once() {
        let serin = json!({
            "manager": "serin/primary", "operation": "Apply", "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:template": {"f:metadata": {"f:labels": {"f:app": {}}}}}}
        });
        let status = json!({
            "manager": "flagger", "operation": "Update", "subresource": "status",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}
        });
        let other = json!({"manager": "kube-controller-manager", "operation": "Update",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {}}}});
        let actual = object(json!([flagger_update(), serin, status, other]));
        let desired = json!({"apiVersion": "apps/v1", "spec": {"replicas": 2}});
        let Some(Value::Array(out)) = managed_fields_taken_over(&actual, &desired, "serin/primary")
        else {
            panic!("Flagger's entry is taken over");
        };
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[1], status, "subresource entries stay");
        assert_eq!(out[2], other, "other managers stay");
        assert_eq!(
            out[0]["fieldsV1"],
            json!({
                "f:spec": {"f:replicas": {}, "f:template": {"f:metadata": {
                    "f:labels": {"f:app": {}}, "f:annotations": {"f:example.com/x": {}}}}},
                "f:metadata": {"f:annotations": {TAKEOVER_MARK: {}}}
            })
        );
        let after = object(Value::Array(out.clone()));
        assert!(takeover_pending(&after, "serin/primary"));
        // As a VirtualService's cache keeps it once Flagger's entries are gone: the mark is
        // still found in the fields kept as JSON text (`watches::slim`).
        let mut text = out.clone();
        text[0]["fieldsV1"] = Value::String(text[0]["fieldsV1"].to_string());
        assert!(takeover_pending(
            &object(Value::Array(text)),
            "serin/primary"
        ));
        assert_eq!(
            managed_fields_taken_over(&after, &desired, "serin/primary"),
            None,
            "a second pass has nothing to move"
        );
    }

    #[test]
    fn without_serins_entry_one_is_made_and_replicas_serin_leaves_stay_unowned() {
        let actual = object(json!([flagger_update()]));
        let desired = json!({"apiVersion": "apps/v1", "spec": {}});
        let out = managed_fields_taken_over(&actual, &desired, "serin/primary").unwrap();
        assert_eq!(out[0]["manager"], "serin/primary");
        assert_eq!(out[0]["operation"], "Apply");
        assert_eq!(out[0]["apiVersion"], "apps/v1");
        assert_eq!(out[0]["time"], "2026-01-01T00:00:00Z");
        assert_eq!(out[0]["fieldsV1"]["f:spec"].get("f:replicas"), None);
    }

    #[test]
    fn objects_without_flagger_are_left_alone() {
        let serin = json!({"manager": "serin/router", "operation": "Apply",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}});
        let kubectl = json!({"manager": "flagger-kubectl", "operation": "Update",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}});
        let actual = object(json!([serin, kubectl]));
        assert_eq!(
            managed_fields_taken_over(&actual, &json!({}), "serin/router"),
            None
        );
        assert!(!takeover_pending(&actual, "serin/router"));
        assert_eq!(
            managed_fields_taken_over(&json!({}), &json!({}), "serin/router"),
            None
        );
    }

    #[test]
    fn subset_ignores_fields_others_added() {
        let desired =
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": "x"}}});
        let actual = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}], "selector": {"app": "x"}, "clusterIP": "10.0.0.1"}});
        assert!(is_subset(&desired, &actual));
        let changed =
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": "y"}}});
        assert!(!is_subset(&changed, &actual));
        let extra_port = json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}});
        assert!(!is_subset(&extra_port, &actual));
    }
}
