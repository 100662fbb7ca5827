//! `spec.autoscalerRef`, the acting side: the cache of HPAs and applying the primary HPA built
//! by [`crate::workload::hpa`].
//!
//! The primary HPA is created as soon as the primary Deployment exists and updated only when a
//! revision is promoted (also with skipAnalysis), so a change of the user's HPA reaches the
//! primary through a run, as in Flagger. A change of the user's HPA triggers nothing; a change
//! of the primary HPA (it is owned by the Canary) triggers a reconcile, so a deleted one comes
//! back at once. Primary HPAs the Canary owns but no longer names are deleted.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tracing::info;

use super::{Ctx, Error};
use crate::api::Canary;
use crate::workload::hpa::{self, HpaError, PrimaryHpa, PrimaryHpaInputs, UserHpa};

/// The HPA cache.
pub struct Autoscalers {
    pub store: Store<DynamicObject>,
    pub resource: ApiResource,
}

pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", hpa::HPA_VERSION, hpa::KIND_HPA),
        "horizontalpodautoscalers",
    )
}

/// An HPA from the cache: `None` when absent, `Some(None)` when it cannot be read as one.
fn lookup(ctx: &Ctx, ns: &str, name: &str) -> Option<Option<UserHpa>> {
    let a = &ctx.autoscalers;
    let obj = a
        .store
        .get(&ObjectRef::new_with(name, a.resource.clone()).within(ns))?;
    let value = serde_json::to_value(obj.as_ref()).ok();
    Some(value.as_ref().and_then(UserHpa::from_json))
}

fn cached(ctx: &Ctx, ns: &str, name: &str) -> Option<UserHpa> {
    lookup(ctx, ns, name).flatten()
}

/// The primary HPA the Canary asks for (`None` without an autoscalerRef), or the configuration
/// problem that holds it.
pub fn desired(
    ctx: &Ctx,
    canary: &Canary,
    ns: &str,
    owner: OwnerReference,
) -> Result<Option<PrimaryHpa>, HpaError> {
    let Some(a) = &canary.spec.autoscaler_ref else {
        return Ok(None);
    };
    hpa::check_kind(a)?;
    let user = match lookup(ctx, ns, &a.name) {
        None => return Err(hpa::not_found(a, ns)),
        Some(None) => {
            return Err(HpaError::Unreadable {
                namespace: ns.to_string(),
                name: a.name.clone(),
            });
        }
        Some(Some(user)) => user,
    };
    hpa::desired_primary_hpa(&PrimaryHpaInputs {
        user: &user,
        autoscaler: a,
        target: &canary.spec.target_ref.name,
        namespace: ns,
        owner,
    })
    .map(Some)
}

/// The user's HPA `minReplicas`, which a canary scaled up from zero starts with when above one
/// (Flagger's ScaleFromZero).
pub fn user_min_replicas(ctx: &Ctx, canary: &Canary, ns: &str) -> Option<i32> {
    let a = canary.spec.autoscaler_ref.as_ref()?;
    if a.kind != hpa::KIND_HPA {
        return None;
    }
    cached(ctx, ns, &a.name)?.spec.min_replicas
}

/// Creates the primary HPA when it is missing; with `update` (a promotion) also brings an
/// existing one in line, labels and annotations included. Deletes the primary HPAs this Canary
/// owns besides `desired` (autoscalerRef removed or renamed).
pub async fn apply_primary(
    ctx: &Ctx,
    canary: &Canary,
    ns: &str,
    desired: Option<&PrimaryHpa>,
    update: bool,
) -> Result<(), Error> {
    let a = &ctx.autoscalers;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &a.resource);
    let keep = desired.and_then(|d| d.metadata.name.as_deref());
    if let Some(uid) = canary.metadata.uid.as_deref() {
        let state = a.store.state();
        let in_ns = state
            .iter()
            .filter(|o| o.metadata.namespace.as_deref() == Some(ns))
            .map(|o| &o.metadata);
        for name in hpa::stale_primary_hpas(in_ns, uid, keep) {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            info!(
                hpa = %format!("{name}.{ns}"),
                "deleted a primary HorizontalPodAutoscaler that spec.autoscalerRef no longer names"
            );
        }
    }
    let Some(desired) = desired else {
        return Ok(());
    };
    let name = desired.metadata.name.clone().unwrap_or_default();
    match cached(ctx, ns, &name) {
        None => {}
        Some(actual) if update && desired.differs_from(&actual) => {}
        Some(_) => return Ok(()),
    }
    api.patch(
        &name,
        &PatchParams::apply("serin/autoscaler").force(),
        &Patch::Apply(desired.manifest()),
    )
    .await?;
    info!(
        hpa = %format!("{name}.{ns}"),
        target = %desired.spec.scale_target_ref.name,
        "applied the primary HorizontalPodAutoscaler"
    );
    Ok(())
}

/// Sizes a primary Deployment just created without replicas (they are left to its HPA): as
/// many as the target runs, within the primary HPA's bounds, so that traffic never moves to a
/// single pod while the HPA controller has not synced yet. A merge patch, so the field is not
/// owned by the primary's apply and later applies never reset it.
pub async fn size_new_primary(
    ctx: &Ctx,
    ns: &str,
    target: &Deployment,
    desired: &PrimaryHpa,
) -> Result<(), Error> {
    let replicas = hpa::initial_primary_replicas(target.spec.replicas, desired);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams {
        field_manager: Some("serin/scale".into()),
        ..Default::default()
    };
    let name = format!("{}-primary", target.name_any());
    api.patch(
        &name,
        &params,
        &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
    )
    .await?;
    Ok(())
}
