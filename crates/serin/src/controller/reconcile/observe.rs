//! Observe: what the caches hold about the Canary's workloads, or the configuration problem that
//! holds it (an invalid spec, a missing target, config or autoscaler).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::reflector::ObjectRef;

use super::Reconcile;
use crate::api::validate_canary;
use crate::controller::autoscaler;
use crate::controller::state::{Hold, HoldReason};
use crate::rollout::{self, Observation};
use crate::workload::hpa::{HpaError, PrimaryHpa};
use crate::workload::{self, ConfigChecksums, MissingConfig, REVISION_ANNOTATION, SelectorLabel};

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
        let Some(target) = self.deployment(self.target_name()) else {
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
        let primary = self.deployment(&self.primary_name());
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
            primary_revision: primary.and_then(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REVISION_ANNOTATION).cloned())
            }),
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
