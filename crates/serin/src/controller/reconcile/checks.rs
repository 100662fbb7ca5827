//! Decide: the rollout core's decision, and the checks it asks for before it can give a plan
//! (webhook gates and hooks in [`super::webhooks`], the metric analysis here).

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;

use super::{KubeEventType, Reconcile};
use crate::api::{MetricCheckStatus, MetricTemplate};
use crate::controller::Ctx;
use crate::controller::state::{self, Hold, HoldReason};
use crate::metrics::prometheus::{Prometheus, ProviderConfig};
use crate::metrics::{self as m, Judged, Lookups, QueryOutcome, ResolveError, Resolved};
use crate::rollout::{
    self, CheckFailed, Decision, Need, Observation, Plan, Progress, messages as msg,
};
use crate::telemetry::MetricLabels;

/// The watch caches, as the metric resolution looks things up.
struct Caches<'a>(&'a Ctx);

impl Lookups for Caches<'_> {
    fn template(&self, namespace: &str, name: &str) -> Option<Arc<MetricTemplate>> {
        self.0
            .templates
            .get(&ObjectRef::new(name).within(namespace))
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.0.secrets.get(&ObjectRef::new(name).within(namespace))
    }
}

impl From<ResolveError> for Hold {
    fn from(e: ResolveError) -> Hold {
        let reason = match &e {
            ResolveError::TemplateNotFound { .. } => HoldReason::MetricTemplateNotFound,
            ResolveError::ProviderUnsupported { .. } => HoldReason::MetricProviderUnsupported,
            ResolveError::Render { .. } => HoldReason::MetricQueryRenderError,
            ResolveError::SecretNotFound { .. } => HoldReason::MetricSecretNotFound,
            ResolveError::NoUsableMetric { .. } => HoldReason::NoUsableMetric,
        };
        Hold::new(reason, e)
    }
}

impl Reconcile {
    /// Runs the decision, answering its needs, until it gives a plan.
    pub(super) async fn decide(
        &mut self,
        settings: &rollout::Settings,
        progress: &Progress,
        mut obs: Observation,
    ) -> Result<Plan, Hold> {
        for _ in 0..8 {
            match rollout::decide(settings, progress, &obs, self.now) {
                Decision::Plan(plan) => return Ok(*plan),
                Decision::Need(need) => match need {
                    Need::Analysis => {
                        self.analysed = true;
                        obs.results.analysis = Some(self.analysis(progress).await?);
                    }
                    Need::Gate(kind) => self.gate(kind, progress, &mut obs.results).await,
                    Need::RollbackHooks => self.rollback_hooks(progress, &mut obs.results).await,
                    Need::PreRollout => self.pre_rollout(progress, &mut obs.results).await,
                },
            }
        }
        Err(Hold::new(
            HoldReason::InternalError,
            "the rollout decision kept asking for checks; please report this",
        ))
    }

    /// Rollout webhooks, then the metrics in spec order; the first failure ends the analysis.
    async fn analysis(&mut self, progress: &Progress) -> Result<Result<(), CheckFailed>, Hold> {
        if let Err(failed) = self.rollout_hooks(progress).await {
            return Ok(Err(failed));
        }
        let metrics = self
            .canary
            .spec
            .analysis()
            .map(|a| a.metrics.clone())
            .unwrap_or_default();
        let mut results = Vec::new();
        let target = msg::qualified(self.target_name(), &self.ns);
        let mut verdict_all = Ok(());
        for (i, metric) in metrics.iter().enumerate() {
            let Resolved { check, provider } = self.resolve(i, metric)?;
            let prom = self.provider(i, &provider).await?;
            let asked = Instant::now();
            let outcome = prom.query(&check.query).await;
            self.ctx
                .metrics
                .ops
                .prometheus_query_duration
                .observe(asked.elapsed().as_secs_f64());
            let mut status = MetricCheckStatus {
                name: check.name.clone(),
                value: None,
                query: Some(check.query.clone()),
                checked_at: state::to_time(self.now),
                message: None,
            };
            if let QueryOutcome::Value(v) = outcome {
                status.value = Some(v);
                self.ctx
                    .metrics
                    .metric_analysis
                    .get_or_create(&MetricLabels {
                        name: self.target_name().to_string(),
                        namespace: self.ns.clone(),
                        metric: check.name.clone(),
                    })
                    .set(m::gauge_value(&check, v));
            }
            let result = match m::judge(&check, &outcome, &self.qualified(), &target) {
                Ok(()) => Ok(()),
                Err(Judged::Failed(failed)) => Err(failed),
                Err(Judged::QueryRefused(e)) => {
                    return Err(Hold::new(
                        HoldReason::MetricQueryInvalid,
                        format!(
                            "spec.analysis.metrics[{i}] ({}): Prometheus refused the query: {e}; fix the query",
                            check.name
                        ),
                    ));
                }
            };
            if let Err(CheckFailed(text)) = &result {
                status.message = Some(text.clone());
            }
            results.push(status);
            if result.is_err() {
                verdict_all = result;
                break;
            }
        }
        self.metric_results = Some(results);
        Ok(verdict_all)
    }

    /// A metric of the spec as a query to run, or a configuration problem naming the field.
    fn resolve(&self, i: usize, metric: &crate::api::CanaryMetric) -> Result<Resolved, Hold> {
        let default = &self.ctx.opts.metrics_server;
        Ok(m::resolve(
            &self.canary,
            i,
            metric,
            default,
            &Caches(&self.ctx),
        )?)
    }

    async fn provider(&self, i: usize, cfg: &ProviderConfig) -> Result<Prometheus, Hold> {
        let mut cache = self.ctx.providers.lock().await;
        if let Some(p) = cache.get(cfg) {
            return Ok(p.clone());
        }
        let p = Prometheus::new(cfg).map_err(|e| {
            Hold::new(
                HoldReason::MetricProviderInvalid,
                format!(
                    "spec.analysis.metrics[{i}]: {}",
                    msg::prometheus_client_error(&cfg.address, &e.to_string())
                ),
            )
        })?;
        cache.insert(cfg.clone(), p.clone());
        Ok(p)
    }

    /// Flagger's start-up probe of the metric providers: an event either way, never blocking.
    pub(super) async fn check_providers(&self) {
        let Some(analysis) = self.canary.spec.analysis() else {
            return;
        };
        // Flagger does not probe the providers of a canary that skips the analysis; without
        // metrics it still tells that all (none) are available.
        if self.canary.spec.skip_analysis() {
            return;
        }
        let mut errors = Vec::new();
        // Each provider once, however many metrics share it.
        let mut probed = std::collections::HashSet::new();
        for (i, metric) in analysis.metrics.iter().enumerate() {
            let Ok(Resolved { provider: cfg, .. }) = self.resolve(i, metric) else {
                continue;
            };
            if !probed.insert(cfg.clone()) {
                continue;
            }
            let Ok(p) = self.provider(i, &cfg).await else {
                continue;
            };
            if let Err(e) = p.is_online().await {
                errors.push(format!("{}: {e}", cfg.address));
            }
        }
        if errors.is_empty() {
            self.publish(KubeEventType::Normal, msg::PROVIDERS_AVAILABLE.into())
                .await;
        } else {
            let text = msg::providers_check_failed(&errors.join("; "));
            self.publish(KubeEventType::Warning, text).await;
        }
    }
}
