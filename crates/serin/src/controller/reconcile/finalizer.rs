//! `revertOnDeletion`: Flagger's finalizer, and handing the apex Service and the VirtualService
//! back to the user before the Canary goes.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tracing::warn;

use super::{Error, KubeEventType, Reconcile};
use crate::api::Canary;
use crate::controller::state;
use crate::rollout::{Phase, Readiness, Scale, messages as msg};
use crate::router::{self, VirtualServiceRevert};
use crate::workload::{self, SelectorLabel};

/// Flagger's finalizer name, added only with `revertOnDeletion`.
pub const FINALIZER: &str = "finalizer.flagger.app";

impl Reconcile {
    fn has_finalizer(&self) -> bool {
        self.canary.finalizers().iter().any(|f| f == FINALIZER)
    }

    fn finalizers_without_ours(&self) -> Vec<String> {
        self.canary
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect()
    }

    async fn set_finalizers(&self, finalizers: Vec<String>) -> Result<(), Error> {
        let api: Api<Canary> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": self.canary.resource_version(),
            }
        });
        api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Adds or removes the finalizer as `revertOnDeletion` asks.
    pub(super) async fn sync_finalizer(&self) -> Result<(), Error> {
        let want = self.canary.spec.revert_on_deletion();
        let has = self.has_finalizer();
        if want && !has {
            let mut f = self.canary.finalizers().to_vec();
            f.push(FINALIZER.into());
            self.set_finalizers(f).await?;
        } else if !want && has {
            self.set_finalizers(self.finalizers_without_ours()).await?;
        }
        Ok(())
    }

    /// `revertOnDeletion`: the target takes the traffic back before anything serin made goes.
    pub(super) async fn finalize(&self) -> Result<Action, Error> {
        if !self.has_finalizer() {
            return Ok(Action::await_change());
        }
        let mut progress = state::progress(self.canary.status.as_ref());
        if progress.phase != Some(Phase::Terminating) {
            progress.phase = Some(Phase::Terminating);
            progress.last_transition_time = Some(self.now);
            self.write_status(&progress, None).await?;
            self.publish(KubeEventType::Normal, msg::terminating(&self.qualified()))
                .await;
        }
        if let Some(target) = self.deployment(self.target_name())? {
            let primary = self.deployment(&self.primary_name())?;
            self.scale(&target, primary.as_deref(), Scale::Up).await?;
            let threshold = self
                .canary
                .spec
                .analysis()
                .map(|a| a.canary_ready_threshold())
                .unwrap_or(100);
            if workload::readiness(&target, threshold) != Readiness::Ready {
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            if let Ok(selector) = workload::selector_label(&target) {
                self.revert_apex(&selector).await?;
            }
        }
        self.revert_virtual_service().await?;
        self.set_finalizers(self.finalizers_without_ours()).await?;
        self.publish(KubeEventType::Normal, msg::terminated(&self.qualified()))
            .await;
        Ok(Action::await_change())
    }

    /// Points the apex Service back at the target's pods and releases it from the Canary, so the
    /// garbage collector leaves it serving.
    async fn revert_apex(&self, selector: &SelectorLabel) -> Result<(), Error> {
        let apex = self.canary.apex_name();
        let Some(svc) = self.service(&apex)? else {
            return Ok(());
        };
        let patch = router::reverted_apex(&svc.metadata, selector, self.uid().unwrap_or_default());
        let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        api.patch(&apex, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Restores a VirtualService that serin took over; one serin created goes with the Canary.
    async fn revert_virtual_service(&self) -> Result<(), Error> {
        let apex = self.canary.apex_name();
        let ar = &self.ctx.vs_resource;
        let Some(vs) = self
            .ctx
            .virtual_services
            .get(&ObjectRef::new_with(&apex, ar.clone()).within(&self.ns))
        else {
            return Ok(());
        };
        let original = match router::reverted_virtual_service(&vs, self.uid()) {
            VirtualServiceRevert::Restore(original) => original,
            VirtualServiceRevert::Leave => return Ok(()),
            VirtualServiceRevert::OriginalUnknown => {
                warn!("original configuration not found, unable to revert");
                return Ok(());
            }
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), &self.ns, ar);
        api.patch(
            &apex,
            &PatchParams::apply("serin/router").force(),
            &Patch::Apply(&original),
        )
        .await?;
        Ok(())
    }
}
