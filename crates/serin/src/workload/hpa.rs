//! The primary HorizontalPodAutoscaler of a Canary with `spec.autoscalerRef`
//! (docs/flagger-contract.md §4.4): a copy of the user's HPA that scales `<target>-primary` instead
//! of the target. Pure.
//!
//! The user's HPA keeps pointing at the target, which sits at zero replicas between runs, so it
//! is inactive then. Its changes reach the primary HPA only through a run (Flagger
//! [#1308](https://github.com/fluxcd/flagger/issues/1308)).

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{CrossVersionObjectReference, HorizontalPodAutoscalerSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::{Value, json};

use crate::api::AutoscalerRef;

/// `spec.autoscalerRef.kind` of a HorizontalPodAutoscaler.
pub const KIND_HPA: &str = "HorizontalPodAutoscaler";
/// `spec.autoscalerRef.kind` of a KEDA ScaledObject.
pub const KIND_SCALED_OBJECT: &str = "ScaledObject";

/// The HPA API serin reads and writes: `autoscaling/v2`, served since Kubernetes 1.23 (every
/// version serin supports) and the only one since 1.26.
pub const HPA_API_VERSION: &str = "autoscaling/v2";
pub const HPA_VERSION: &str = "v2";

/// The user's HPA as read from the cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserHpa {
    pub metadata: ObjectMeta,
    pub spec: HorizontalPodAutoscalerSpec,
}

impl UserHpa {
    /// Reads an HPA object (JSON of any served version); `None` when it has no usable spec.
    pub fn from_json(obj: &Value) -> Option<UserHpa> {
        let metadata = serde_json::from_value(obj.get("metadata")?.clone()).ok()?;
        let spec = serde_json::from_value(obj.get("spec")?.clone()).ok()?;
        Some(UserHpa { metadata, spec })
    }
}

/// The primary HPA serin applies.
#[derive(Clone, Debug, PartialEq)]
pub struct PrimaryHpa {
    pub metadata: ObjectMeta,
    pub spec: HorizontalPodAutoscalerSpec,
}

impl PrimaryHpa {
    /// The object to apply.
    pub fn manifest(&self) -> Value {
        json!({
            "apiVersion": HPA_API_VERSION,
            "kind": KIND_HPA,
            "metadata": self.metadata,
            "spec": self.spec,
        })
    }

    /// Whether `actual` (the primary HPA as it is) lacks anything this one says: the spec
    /// exactly, and the labels, annotations and owner reference. Flagger compares the same
    /// fields but drops label and annotation changes (it updates a copy); serin applies them.
    pub fn differs_from(&self, actual: &UserHpa) -> bool {
        let norm = |m: &Option<BTreeMap<String, String>>| m.clone().unwrap_or_default();
        let owned = self.metadata.owner_references.iter().flatten().all(|want| {
            actual
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == want.uid && o.controller == want.controller)
        });
        self.spec != actual.spec
            || norm(&self.metadata.labels) != norm(&actual.metadata.labels)
            || norm(&self.metadata.annotations) != norm(&actual.metadata.annotations)
            || !owned
    }
}

/// Name of the primary HPA: `<hpaName>-primary`.
pub fn primary_name(hpa_name: &str) -> String {
    format!("{hpa_name}-primary")
}

/// Metadata keys never copied to the primary HPA: Flux's (it would prune or fight over the
/// copy), kubectl's record of the user's own apply, and the API server's internal
/// `autoscaling.alpha.kubernetes.io/` round-trip annotations of older versions.
fn copied(key: &str) -> bool {
    !key.contains("toolkit.fluxcd.io")
        && key != "kubectl.kubernetes.io/last-applied-configuration"
        && !key.starts_with("autoscaling.alpha.kubernetes.io/")
}

fn filtered(map: Option<&BTreeMap<String, String>>) -> Option<BTreeMap<String, String>> {
    let out: BTreeMap<String, String> = map
        .into_iter()
        .flatten()
        .filter(|(k, _)| copied(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Inputs to the primary HPA.
pub struct PrimaryHpaInputs<'a> {
    pub user: &'a UserHpa,
    pub autoscaler: &'a AutoscalerRef,
    /// The Canary's target Deployment; the primary HPA scales `<target>-primary`.
    pub target: &'a str,
    pub namespace: &'a str,
    pub owner: OwnerReference,
}

/// Why `spec.autoscalerRef` cannot be followed; the text names the field and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpaError {
    #[error(
        "spec.autoscalerRef.kind: KEDA ScaledObject is not supported by serin yet (ScaledObject {name}); use a HorizontalPodAutoscaler or remove spec.autoscalerRef"
    )]
    ScaledObject { name: String },
    #[error("spec.autoscalerRef.kind: {kind} is not supported; use HorizontalPodAutoscaler")]
    UnsupportedKind { kind: String },
    #[error(
        "spec.autoscalerRef.name: HorizontalPodAutoscaler {namespace}/{name} not found; create it or fix spec.autoscalerRef"
    )]
    NotFound { namespace: String, name: String },
    #[error(
        "spec.autoscalerRef.name: HorizontalPodAutoscaler {namespace}/{name} has no spec serin can read; fix the HPA"
    )]
    Unreadable { namespace: String, name: String },
    #[error(
        "spec.autoscalerRef.primaryScalerReplicas: the primary HPA would get minReplicas {min} above maxReplicas {max} (HPA {namespace}/{name} with the overrides); make minReplicas <= maxReplicas"
    )]
    CrossedBounds {
        min: i32,
        max: i32,
        namespace: String,
        name: String,
    },
}

/// The primary HPA: the user's bounds, metrics and behavior, `primaryScalerReplicas` winning
/// over the bounds, scaling `<target>-primary`. An error (naming the field and the fix) when
/// the bounds that result are unusable, which the API server would refuse less clearly.
pub fn desired_primary_hpa(inp: &PrimaryHpaInputs<'_>) -> Result<PrimaryHpa, HpaError> {
    let user = &inp.user.spec;
    let overrides = inp.autoscaler.primary_scaler_replicas.as_ref();
    let min = overrides.and_then(|r| r.min_replicas).or(user.min_replicas);
    let max = overrides
        .and_then(|r| r.max_replicas)
        .unwrap_or(user.max_replicas);
    if let Some(min) = min
        && min > max
    {
        return Err(HpaError::CrossedBounds {
            min,
            max,
            namespace: inp.namespace.to_string(),
            name: inp.autoscaler.name.clone(),
        });
    }
    Ok(PrimaryHpa {
        metadata: ObjectMeta {
            name: Some(primary_name(&inp.autoscaler.name)),
            namespace: Some(inp.namespace.to_string()),
            labels: filtered(inp.user.metadata.labels.as_ref()),
            annotations: filtered(inp.user.metadata.annotations.as_ref()),
            owner_references: Some(vec![inp.owner.clone()]),
            ..Default::default()
        },
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: format!("{}-primary", inp.target),
            },
            min_replicas: min,
            max_replicas: max,
            metrics: user.metrics.clone(),
            behavior: user.behavior.clone(),
        },
    })
}

/// Primary HPAs a Canary owns other than `keep` (its current one): left behind when
/// `spec.autoscalerRef` was removed or renamed, they would fight the current HPA, or serin, over
/// the primary's replicas. Flagger leaves them.
pub fn stale_primary_hpas<'a>(
    hpas: impl IntoIterator<Item = &'a ObjectMeta>,
    canary_uid: &str,
    keep: Option<&str>,
) -> Vec<String> {
    hpas.into_iter()
        .filter(|m| {
            m.owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == canary_uid)
        })
        .filter_map(|m| m.name.clone())
        .filter(|n| Some(n.as_str()) != keep)
        .collect()
}

/// Replicas for a primary Deployment created without them (they are left to its HPA): the
/// target's (one when unset or zero, as Flagger creates it), within the primary HPA's bounds,
/// where the HPA controller would put them at its first sync.
pub fn initial_primary_replicas(target_replicas: Option<i32>, desired: &PrimaryHpa) -> i32 {
    let current = target_replicas.filter(|r| *r > 0).unwrap_or(1);
    let min = desired.spec.min_replicas.unwrap_or(1);
    current.clamp(min, desired.spec.max_replicas.max(min))
}

/// What serin does about `spec.autoscalerRef`, or the configuration problem that holds the
/// canary (the `serin.dev/Valid` condition).
pub fn check_kind(autoscaler: &AutoscalerRef) -> Result<(), HpaError> {
    match autoscaler.kind.as_str() {
        KIND_HPA => Ok(()),
        KIND_SCALED_OBJECT => Err(HpaError::ScaledObject {
            name: autoscaler.name.clone(),
        }),
        other => Err(HpaError::UnsupportedKind {
            kind: other.to_string(),
        }),
    }
}

/// The hold for an autoscalerRef naming an HPA that does not exist.
pub fn not_found(autoscaler: &AutoscalerRef, namespace: &str) -> HpaError {
    HpaError::NotFound {
        namespace: namespace.to_string(),
        name: autoscaler.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ScalerReplicas;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "flagger.app/v1beta1".into(),
            kind: "Canary".into(),
            name: "podinfo".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// The user's HPA as the server returns it.
    fn user() -> UserHpa {
        UserHpa::from_json(&json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {
                "name": "podinfo", "namespace": "test", "uid": "hpa-uid", "resourceVersion": "7",
                "labels": {"app": "podinfo", "kustomize.toolkit.fluxcd.io/name": "apps"},
                "annotations": {
                    "team": "web",
                    "kustomize.toolkit.fluxcd.io/checksum": "abc",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "autoscaling.alpha.kubernetes.io/conditions": "[]"
                }
            },
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "minReplicas": 2,
                "maxReplicas": 4,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]}}
            },
            "status": {"currentReplicas": 0, "desiredReplicas": 0}
        }))
        .unwrap()
    }

    fn autoscaler(overrides: Option<(Option<i32>, Option<i32>)>) -> AutoscalerRef {
        AutoscalerRef {
            api_version: "autoscaling/v2".into(),
            kind: KIND_HPA.into(),
            name: "podinfo".into(),
            primary_scaler_queries: Default::default(),
            primary_scaler_replicas: overrides.map(|(min, max)| ScalerReplicas {
                min_replicas: min,
                max_replicas: max,
            }),
        }
    }

    fn build(user: &UserHpa, a: &AutoscalerRef) -> Result<PrimaryHpa, HpaError> {
        desired_primary_hpa(&PrimaryHpaInputs {
            user,
            autoscaler: a,
            target: "podinfo",
            namespace: "test",
            owner: owner(),
        })
    }

    #[test]
    fn the_copy_scales_the_primary_with_the_users_metrics_and_behavior() {
        let u = user();
        let p = build(&u, &autoscaler(None)).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("podinfo-primary"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("test"));
        assert_eq!(
            p.spec.scale_target_ref,
            CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: "podinfo-primary".into(),
            }
        );
        assert_eq!(p.spec.min_replicas, Some(2));
        assert_eq!(p.spec.max_replicas, 4);
        assert_eq!(p.spec.metrics, u.spec.metrics);
        assert_eq!(p.spec.behavior, u.spec.behavior);
        assert!(p.spec.behavior.is_some());
        // Nothing of the user's object identity leaks into the copy.
        assert_eq!(p.metadata.uid, None);
        assert_eq!(p.metadata.resource_version, None);
    }

    #[test]
    fn primary_scaler_replicas_override_the_bounds() {
        let u = user();
        let table = [
            (None, (Some(2), 4)),
            (Some((None, None)), (Some(2), 4)),
            (Some((Some(3), None)), (Some(3), 4)),
            (Some((None, Some(10))), (Some(2), 10)),
            (Some((Some(1), Some(1))), (Some(1), 1)),
            (Some((Some(5), Some(8))), (Some(5), 8)),
        ];
        for (overrides, (min, max)) in table {
            let p = build(&u, &autoscaler(overrides)).unwrap();
            assert_eq!(
                (p.spec.min_replicas, p.spec.max_replicas),
                (min, max),
                "{overrides:?}"
            );
        }
        // No minReplicas anywhere: left to the API server's default.
        let mut bare = u.clone();
        bare.spec.min_replicas = None;
        assert_eq!(
            build(&bare, &autoscaler(None)).unwrap().spec.min_replicas,
            None
        );
    }

    #[test]
    fn overrides_that_cross_the_bounds_are_a_configuration_problem() {
        let u = user();
        for overrides in [(Some(5), None), (None, Some(1))] {
            let e = build(&u, &autoscaler(Some(overrides)))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("spec.autoscalerRef.primaryScalerReplicas:")
                    && e.contains("make minReplicas <= maxReplicas"),
                "{e}"
            );
        }
    }

    #[test]
    fn metadata_is_copied_without_flux_kubectl_and_server_keys_and_owned_by_the_canary() {
        let p = build(&user(), &autoscaler(None)).unwrap();
        assert_eq!(
            p.metadata.labels,
            Some(BTreeMap::from([("app".into(), "podinfo".into())]))
        );
        assert_eq!(
            p.metadata.annotations,
            Some(BTreeMap::from([("team".into(), "web".into())]))
        );
        assert_eq!(p.metadata.owner_references, Some(vec![owner()]));
        let mut bare = user();
        bare.metadata.labels = Some(BTreeMap::from([(
            "kustomize.toolkit.fluxcd.io/namespace".into(),
            "x".into(),
        )]));
        bare.metadata.annotations = None;
        let p = build(&bare, &autoscaler(None)).unwrap();
        assert_eq!((p.metadata.labels, p.metadata.annotations), (None, None));
    }

    #[test]
    fn the_manifest_is_autoscaling_v2() {
        let p = build(&user(), &autoscaler(None)).unwrap();
        {
            let m = p.manifest();
            assert_eq!(m["apiVersion"], "autoscaling/v2");
            assert_eq!(m["kind"], "HorizontalPodAutoscaler");
            assert_eq!(m["spec"]["scaleTargetRef"]["name"], "podinfo-primary");
            assert_eq!(
                m["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
                50
            );
            assert_eq!(m["metadata"]["ownerReferences"][0]["kind"], "Canary");
            assert!(m.get("status").is_none());
            // Read back as the server would return it, it is what was applied.
            let back = UserHpa::from_json(&m).unwrap();
            assert!(!p.differs_from(&back));
        }
    }

    #[test]
    fn any_change_of_spec_labels_annotations_or_owner_is_an_update() {
        let p = build(&user(), &autoscaler(None)).unwrap();
        let same = UserHpa::from_json(&p.manifest()).unwrap();
        assert!(!p.differs_from(&same));
        let changes: [fn(&mut UserHpa); 8] = [
            |h| h.spec.max_replicas = 9,
            |h| h.spec.min_replicas = Some(1),
            |h| h.spec.behavior = None,
            |h| h.spec.metrics = Some(vec![]),
            |h| h.spec.scale_target_ref.name = "podinfo".into(),
            |h| h.metadata.labels = None,
            |h| {
                h.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert("old".into(), "x".into());
            },
            |h| h.metadata.owner_references = None,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut actual = same.clone();
            change(&mut actual);
            assert!(p.differs_from(&actual), "change {i}");
        }
    }

    #[test]
    fn a_new_primary_starts_with_the_targets_replicas_within_the_bounds() {
        let p = build(&user(), &autoscaler(None)).unwrap(); // 2..=4
        for (target, want) in [
            (None, 2),
            (Some(0), 2),
            (Some(1), 2),
            (Some(3), 3),
            (Some(4), 4),
            (Some(9), 4),
        ] {
            assert_eq!(initial_primary_replicas(target, &p), want, "{target:?}");
        }
        let mut unbounded_min = p.clone();
        unbounded_min.spec.min_replicas = None;
        assert_eq!(initial_primary_replicas(None, &unbounded_min), 1);
        assert_eq!(initial_primary_replicas(Some(3), &unbounded_min), 3);
    }

    #[test]
    fn owned_hpas_other_than_the_current_one_are_stale() {
        let meta = |name: &str, uid: &str, controller: bool| ObjectMeta {
            name: Some(name.into()),
            owner_references: Some(vec![OwnerReference {
                uid: uid.into(),
                controller: Some(controller),
                ..owner()
            }]),
            ..Default::default()
        };
        let hpas = [
            meta("podinfo-primary", "uid-1", true),
            meta("old-primary", "uid-1", true),
            meta("other-primary", "uid-2", true),
            meta("shared", "uid-1", false),
            ObjectMeta {
                name: Some("podinfo".into()),
                ..Default::default()
            },
        ];
        assert_eq!(
            stale_primary_hpas(&hpas, "uid-1", Some("podinfo-primary")),
            vec!["old-primary".to_string()]
        );
        assert_eq!(
            stale_primary_hpas(&hpas, "uid-1", None),
            vec!["podinfo-primary".to_string(), "old-primary".to_string()]
        );
        assert!(stale_primary_hpas(&hpas, "uid-3", None).is_empty());
    }

    #[test]
    fn kinds_and_missing_hpas_name_the_field_and_the_fix() {
        assert_eq!(check_kind(&autoscaler(None)), Ok(()));
        let mut keda = autoscaler(None);
        keda.kind = KIND_SCALED_OBJECT.into();
        let err = check_kind(&keda).unwrap_err();
        assert!(matches!(err, HpaError::ScaledObject { .. }));
        let message = err.to_string();
        assert!(message.contains("KEDA ScaledObject is not supported by serin yet"));
        assert!(message.starts_with("spec.autoscalerRef.kind:"));
        let err = not_found(&autoscaler(None), "test");
        assert!(matches!(err, HpaError::NotFound { .. }));
        assert_eq!(
            err.to_string(),
            "spec.autoscalerRef.name: HorizontalPodAutoscaler test/podinfo not found; create it or fix spec.autoscalerRef"
        );
    }

    #[test]
    fn an_object_without_a_spec_is_not_an_hpa() {
        assert_eq!(
            UserHpa::from_json(&json!({"metadata": {"name": "x"}})),
            None
        );
        assert_eq!(
            UserHpa::from_json(
                &json!({"metadata": {"name": "x"}, "spec": {"maxReplicas": "many"}})
            ),
            None
        );
    }
}
