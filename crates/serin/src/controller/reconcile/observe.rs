//! Observe: what the caches hold about the Canary's workloads, or the configuration problem that
//! holds it (an invalid spec, a missing target, config or autoscaler).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::reflector::ObjectRef;

use super::Reconcile;
use crate::api::validate_canary;
use crate::controller::autoscaler;
use crate::controller::state::{Hold, HoldReason};
use crate::rollout::{self, Observation};
use crate::workload::hpa::{HpaError, PrimaryHpa};
use crate::workload::{
    self, CONFIGS_CHECKSUM_ANNOTATION, ConfigChecksums, MissingConfig, PrimaryInputs,
    REVISION_ANNOTATION, SelectorLabel,
};

/// The Canary's workloads as the caches hold them.
pub(super) struct Observed {
    pub target: Arc<Deployment>,
    pub selector: SelectorLabel,
    /// The target's pod spec.
    pub pod: PodSpec,
    /// Checksums of the tracked ConfigMaps and Secrets.
    pub configs: ConfigChecksums,
    /// The revision hash of the target's pod template.
    pub revision: String,
    /// The primary HPA `spec.autoscalerRef` asks for.
    pub scaler: Option<PrimaryHpa>,
    /// The primary Deployment before this reconcile.
    pub primary: Option<Arc<Deployment>>,
}

impl Reconcile {
    pub(super) fn observe(&self, owner: OwnerReference) -> Result<Observed, Hold> {
        // Warnings are manifests Flagger runs: they go on their own condition (record.rs), and
        // only errors hold the Canary.
        let problems: Vec<_> = validate_canary(&self.canary)
            .into_iter()
            .filter(|p| !p.is_warning())
            .collect();
        if !problems.is_empty() {
            let text = problems
                .iter()
                .map(|p| format!("{}: {} ({})", p.path, p.message, p.hint))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Hold::new(HoldReason::InvalidSpec, text));
        }
        let cached = |e: super::Error| Hold::new(HoldReason::InternalError, e);
        let Some(target) = self.deployment(self.target_name()).map_err(cached)? else {
            let message = format!(
                "spec.targetRef.name: Deployment {}/{} not found; create it or fix spec.targetRef",
                self.ns,
                self.target_name()
            );
            return Err(Hold::new(HoldReason::TargetNotFound, message));
        };
        let selector = workload::selector_label(&target).map_err(|e| {
            Hold::new(
                HoldReason::SelectorLabelMissing,
                format!("spec.targetRef: {e}"),
            )
        })?;
        let template = target.spec.template.clone();
        let pod = template.spec.clone().unwrap_or_default();
        let configs = self.tracked_configs(&pod).map_err(|e| {
            Hold::new(
                HoldReason::ConfigNotFound,
                format!(
                    "spec.targetRef: Deployment {}/{} references {e}; create it or mark the reference optional",
                    self.ns,
                    self.target_name()
                ),
            )
        })?;
        let revision = workload::revision_hash(&template);
        let scaler =
            autoscaler::desired(&self.ctx, &self.canary, &self.ns, owner).map_err(|e| {
                let reason = match &e {
                    HpaError::ScaledObject { .. } | HpaError::UnsupportedKind { .. } => {
                        HoldReason::AutoscalerUnsupported
                    }
                    HpaError::NotFound { .. } => HoldReason::AutoscalerNotFound,
                    HpaError::Unreadable { .. } | HpaError::CrossedBounds { .. } => {
                        HoldReason::AutoscalerInvalid
                    }
                };
                Hold::new(reason, e)
            })?;
        let primary = self.deployment(&self.primary_name()).map_err(cached)?;
        Ok(Observed {
            target,
            selector,
            pod,
            configs,
            revision,
            scaler,
            primary,
        })
    }

    /// What the rollout core is told about the workloads.
    pub(super) fn observation(&self, seen: &Observed) -> Observation {
        let analysis = self.canary.spec.analysis().cloned().unwrap_or_default();
        let primary = seen.primary.as_deref();
        Observation {
            revision: seen.revision.clone(),
            configs: seen.configs.clone(),
            canary: workload::readiness(&seen.target, analysis.canary_ready_threshold()),
            primary: primary.map(|p| workload::readiness(p, analysis.primary_ready_threshold())),
            primary_revision: primary.and_then(|p| primary_revision(seen, p)),
            results: Default::default(),
            request: self
                .canary
                .metadata
                .annotations
                .as_ref()
                .and_then(rollout::Request::from_annotations),
        }
    }

    fn tracked_configs(&self, pod: &PodSpec) -> Result<ConfigChecksums, MissingConfig> {
        let ns = self.ns.clone();
        workload::tracked_configs(
            pod,
            |n| {
                self.ctx
                    .config_maps
                    .get(&ObjectRef::new(n).within(&ns))
                    .map(|c| (*c).clone())
            },
            |n| {
                self.ctx
                    .secrets
                    .get(&ObjectRef::new(n).within(&ns))
                    .map(|s| (*s).clone())
            },
        )
    }
}

/// The revision the primary runs: serin's record on it, or, for a primary without one (Flagger
/// created or promoted it), the target's revision when the primary runs the target's template as
/// Flagger copies it. Flagger's own hashes cannot be reproduced, so this comparison is how a
/// promotion Flagger made is recognised after switching (issue 13 §2).
fn primary_revision(seen: &Observed, primary: &Deployment) -> Option<String> {
    if let Some(recorded) = primary
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
    {
        return Some(recorded.clone());
    }
    let tracked: BTreeSet<String> = seen.configs.keys().cloned().collect();
    let desired = workload::desired_primary(&PrimaryInputs {
        target: &seen.target,
        selector: &seen.selector,
        owner: OwnerReference::default(),
        revision: &seen.revision,
        tracked: &tracked,
        replicas: None,
        configs_checksum: None,
    });
    same_template(&primary.spec.template, &desired.spec.template).then(|| seen.revision.clone())
}

/// Whether two primary pod templates run the same thing, leaving out what differs between
/// Flagger's copy and serin's without changing the pods: Flagger's random `flagger-id` and
/// serin's configs checksum (annotations), Flux's toolkit keys (Flagger drops them from labels
/// too), and the anti-affinity and topology-spread selectors each rewrites to the primary's label
/// by its own rule.
fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    comparable(a) == comparable(b)
}

fn comparable(t: &PodTemplateSpec) -> serde_json::Value {
    let kept = |map: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        map.into_iter()
            .flatten()
            .filter(|(k, _)| {
                !k.contains("toolkit.fluxcd.io")
                    && k.as_str() != "flagger-id"
                    && k.as_str() != CONFIGS_CHECKSUM_ANNOTATION
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let meta = t.metadata.as_ref();
    let mut spec = serde_json::to_value(&t.spec).unwrap_or_default();
    for c in spec
        .get_mut("topologySpreadConstraints")
        .and_then(|v| v.as_array_mut())
        .into_iter()
        .flatten()
    {
        if let Some(c) = c.as_object_mut() {
            c.remove("labelSelector");
        }
    }
    if let Some(anti) = spec.pointer_mut("/affinity/podAntiAffinity") {
        for (list, term) in [
            ("requiredDuringSchedulingIgnoredDuringExecution", ""),
            (
                "preferredDuringSchedulingIgnoredDuringExecution",
                "/podAffinityTerm",
            ),
        ] {
            for t in anti
                .get_mut(list)
                .and_then(|v| v.as_array_mut())
                .into_iter()
                .flatten()
            {
                if let Some(t) = t.pointer_mut(term).and_then(|t| t.as_object_mut()) {
                    t.remove("labelSelector");
                }
            }
        }
    }
    serde_json::json!({
        "labels": kept(meta.and_then(|m| m.labels.as_ref())),
        "annotations": kept(meta.and_then(|m| m.annotations.as_ref())),
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(v: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(v).unwrap()
    }

    /// The target's template as the primary gets it from serin.
    fn serins_copy(target: &PodTemplateSpec) -> PodTemplateSpec {
        let target: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "podinfo"},
            "spec": {"selector": {"matchLabels": {"app": "podinfo"}}, "template": target},
        }))
        .unwrap();
        let tracked = BTreeSet::from(["configmap/podinfo-config".to_string()]);
        let primary = workload::desired_primary(&PrimaryInputs {
            target: &target,
            selector: &SelectorLabel {
                key: "app".into(),
                value: "podinfo".into(),
            },
            owner: OwnerReference::default(),
            revision: "sha256:0",
            tracked: &tracked,
            replicas: None,
            configs_checksum: Some("abc".into()),
        });
        primary.spec.template
    }

    fn target(image: &str) -> PodTemplateSpec {
        template(json!({
            "metadata": {
                "labels": {"app": "podinfo", "kustomize.toolkit.fluxcd.io/name": "apps"},
                "annotations": {"prometheus.io/scrape": "true"},
            },
            "spec": {
                "containers": [{
                    "name": "podinfod",
                    "image": image,
                    "envFrom": [{"configMapRef": {"name": "podinfo-config"}}],
                }],
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchExpressions": [
                            {"key": "app", "operator": "In", "values": ["podinfo"]},
                        ]},
                    },
                }]}},
            },
        }))
    }

    /// The primary's template as Flagger's promotion writes it: a random `flagger-id`, toolkit
    /// labels dropped, the tracked ConfigMap renamed, the anti-affinity expression rewritten.
    fn flaggers_copy(image: &str) -> PodTemplateSpec {
        template(json!({
            "metadata": {
                "labels": {"app": "podinfo-primary"},
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "flagger-id": "0b0a0c1e-2f7d-4a1b-9c3e-5d6f7a8b9c0d",
                },
            },
            "spec": {
                "containers": [{
                    "name": "podinfod",
                    "image": image,
                    "envFrom": [{"configMapRef": {"name": "podinfo-config-primary"}}],
                }],
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchExpressions": [
                            {"key": "app", "operator": "In", "values": ["podinfo-primary"]},
                        ]},
                    },
                }]}},
            },
        }))
    }

    #[test]
    fn a_primary_flagger_promoted_runs_the_target_it_copied() {
        let desired = serins_copy(&target("podinfo:6.0.1"));
        assert!(same_template(&flaggers_copy("podinfo:6.0.1"), &desired));
    }

    #[test]
    fn a_primary_of_another_template_does_not() {
        let desired = serins_copy(&target("podinfo:6.0.1"));
        assert!(!same_template(&flaggers_copy("podinfo:6.0.0"), &desired));
        // `kubectl rollout restart` changes only a pod annotation: a new revision too.
        let mut restarted = target("podinfo:6.0.1");
        restarted
            .metadata
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .insert(
                "kubectl.kubernetes.io/restartedAt".into(),
                "2026-12-05T06:00:00Z".into(),
            );
        assert!(!same_template(
            &flaggers_copy("podinfo:6.0.1"),
            &serins_copy(&restarted)
        ));
        // A ConfigMap reference Flagger did not rename is not the promoted pod spec.
        let mut unrenamed = flaggers_copy("podinfo:6.0.1");
        unrenamed.spec.as_mut().unwrap().containers[0].env_from = Some(vec![
            serde_json::from_value(json!({"configMapRef": {"name": "podinfo-config"}})).unwrap(),
        ]);
        assert!(!same_template(&unrenamed, &desired));
    }
}
