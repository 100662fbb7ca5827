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
use crate::metrics::prometheus::Sample;
use crate::metrics::prometheus::{Prometheus, ProviderConfig};
use crate::metrics::{self as m, Lookups, ResolveError, Resolved};
use crate::relative::{self, Finding};
use crate::rollout::{
    self, CheckFailed, Decision, Need, NoDataHold, Observation, Plan, Progress, messages as msg,
};
use crate::telemetry::{MetricLabels, MetricSideLabels};

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
            ResolveError::CompareWithoutTarget { .. } => HoldReason::InvalidSpec,
        };
        Hold::new(reason, e)
    }
}

/// The Event of a comparison that passed: the numbers behind it.
fn compared_text(metric: &str, explained: &str) -> String {
    format!("Metric {metric} passed against the primary: {explained}")
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
                        let (result, hold) = self.analysis(progress).await?;
                        obs.results.analysis = Some(result);
                        obs.results.analysis_hold = hold;
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
    /// A metric without data holds the step instead when its `onNoData` says so (the answer's
    /// second half), from the time recorded in the status, so a restart keeps the deadline.
    /// A metric that cannot be run (a template deleted mid-run, a query Prometheus refuses) is a
    /// failed check, as in Flagger: counted towards the threshold, so a broken configuration
    /// rolls the canary back instead of leaving traffic on it.
    async fn analysis(
        &mut self,
        progress: &Progress,
    ) -> Result<(Result<(), CheckFailed>, Option<NoDataHold>), Hold> {
        if let Err(failed) = self.rollout_hooks(progress).await {
            return Ok((Err(failed), None));
        }
        let metrics = self
            .canary
            .spec
            .analysis()
            .map(|a| a.metrics.clone())
            .unwrap_or_default();
        let mut results = Vec::new();
        let target = msg::qualified(self.target_name(), &self.ns);
        let mut failure: Option<String> = None;
        let mut no_data: Option<String> = None;
        for (i, metric) in metrics.iter().enumerate() {
            let mut status = MetricCheckStatus {
                name: metric.name.clone(),
                value: None,
                query: None,
                checked_at: state::to_time(self.now),
                message: None,
                result: None,
                comparison: None,
            };
            let resolved = match self.resolve(i, metric) {
                Ok(r) => r,
                Err(hold) => {
                    status.result = Some("fail".into());
                    status.message = Some(hold.message.clone());
                    results.push(status);
                    failure = Some(hold.message);
                    break;
                }
            };
            status.query = Some(resolved.check.query.clone());
            let e = match self.provider(i, &resolved.provider).await {
                Ok(prom) => self.evaluate(i, &resolved, &prom, &target).await,
                Err(hold) => relative::Evaluation {
                    value: None,
                    instant: None,
                    finding: Finding::Fail(hold.message),
                    judgement: None,
                },
            };
            status.value = e.value;
            if let (Some(j), Some(c)) = (&e.judgement, &resolved.criteria) {
                status.comparison = Some(relative::comparison_status(j, c));
            }
            self.export(&resolved, &e);
            let (result, message) = match &e.finding {
                Finding::Pass => ("pass", None),
                Finding::Fail(text) => ("fail", Some(text.clone())),
                Finding::NoData(text) => ("noData", Some(text.clone())),
            };
            status.result = Some(result.into());
            status.message = message;
            if let (Some(j), Some(c), Finding::Pass) =
                (&e.judgement, &resolved.criteria, &e.finding)
            {
                let text = compared_text(&resolved.check.name, &relative::explain(j, c));
                self.publish(KubeEventType::Normal, text).await;
            }
            results.push(status);
            match e.finding {
                Finding::Pass => {}
                Finding::Fail(text) => {
                    failure = Some(text);
                    break;
                }
                Finding::NoData(text) => match relative::on_no_data(resolved.on_no_data, &text) {
                    Some(Ok(())) => {}
                    Some(Err(text)) => {
                        failure = Some(text);
                        break;
                    }
                    None => {
                        no_data.get_or_insert(text);
                    }
                },
            }
        }
        self.metric_results = Some(results);
        if let Some(text) = failure {
            self.no_data_since = Some(None);
            return Ok((Err(CheckFailed(text)), None));
        }
        let hold = no_data.map(|text| NoDataHold {
            since: self
                .canary
                .status
                .as_ref()
                .and_then(|s| s.serin_progress.as_ref())
                .and_then(|r| r.no_data_since.as_ref())
                .map(state::to_chrono)
                .unwrap_or(self.now),
            text,
        });
        self.no_data_since = Some(hold.as_ref().map(|h| h.since));
        Ok((Ok(()), hold))
    }

    /// Runs one resolved metric: the instant query for its fixed range, and with `compare` the
    /// canary's and the primary's range queries over the window.
    async fn evaluate(
        &self,
        i: usize,
        r: &Resolved,
        prom: &Prometheus,
        target: &str,
    ) -> relative::Evaluation {
        let instant = if relative::needs_instant(r) {
            let asked = Instant::now();
            let outcome = prom.query(&r.check.query).await;
            self.observe_query(asked);
            Some(outcome)
        } else {
            None
        };
        let compared = match (&r.primary_query, self.comparison_window(i)) {
            (Some(pq), Some((window, step))) => {
                let end = self.now.timestamp();
                let start = end - window.as_secs() as i64;
                let asked = Instant::now();
                let canary = prom.query_range(&r.check.query, start, end, step).await;
                self.observe_query(asked);
                let asked = Instant::now();
                let primary = prom.query_range(pq, start, end, step).await;
                self.observe_query(asked);
                let values = |s: Vec<Sample>| s.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
                Some(canary.and_then(|c| primary.map(|p| (values(c), values(p)))))
            }
            _ => None,
        };
        relative::evaluate(r, i, instant.as_ref(), compared, &self.qualified(), target)
    }

    fn comparison_window(&self, i: usize) -> Option<(std::time::Duration, std::time::Duration)> {
        let cmp = self
            .canary
            .spec
            .analysis()?
            .metrics
            .get(i)?
            .compare
            .as_ref()?;
        Some((cmp.window(), cmp.step()))
    }

    fn observe_query(&self, asked: Instant) {
        self.ctx
            .metrics
            .ops
            .prometheus_query_duration
            .observe(asked.elapsed().as_secs_f64());
    }

    /// Flagger's gauge (the instant query's value, unchanged) and serin's numbers of the check.
    fn export(&self, r: &Resolved, e: &relative::Evaluation) {
        let labels = MetricLabels {
            name: self.target_name().to_string(),
            namespace: self.ns.clone(),
            metric: r.check.name.clone(),
        };
        let m = &self.ctx.metrics;
        if let Some(v) = e.instant {
            m.metric_analysis
                .get_or_create(&labels)
                .set(m::gauge_value(&r.check, v));
        }
        let side = |side: &str| MetricSideLabels {
            name: labels.name.clone(),
            namespace: labels.namespace.clone(),
            metric: labels.metric.clone(),
            side: side.into(),
        };
        let checks = &m.metric_checks;
        if let Some(v) = e.value {
            checks.value.get_or_create(&side("canary")).set(v);
        }
        if let Some(p) = e.judgement.as_ref().and_then(|j| j.primary.median) {
            checks.value.get_or_create(&side("primary")).set(p);
        }
        if let Some(j) = &e.judgement {
            checks.allowed.get_or_create(&labels).set(j.allowed);
            checks.p_value.get_or_create(&labels).set(j.p_value);
        }
        let result = match e.finding {
            Finding::Pass => 0,
            Finding::NoData(_) => 1,
            Finding::Fail(_) => 2,
        };
        checks.result.get_or_create(&labels).set(result);
    }

    /// Before any release, the references of the metrics: a Canary that is not in a run (first
    /// seen, initialized, or done) and names a missing MetricTemplate or Secret, or a query that
    /// cannot be rendered, is held with the condition and a Warning Event naming the field, so
    /// the problem shows before a release rather than as failed checks during it. Only the watch
    /// caches are read: a Canary that is not analysing asks Prometheus nothing, so a query
    /// Prometheus refuses shows at the first analysis, as a failed check.
    pub(super) fn check_references(
        &self,
        settings: &rollout::Settings,
        progress: &Progress,
    ) -> Result<(), Hold> {
        use crate::rollout::Phase;
        let idle = matches!(
            progress.phase,
            None | Some(
                Phase::Initializing
                    | Phase::Initialized
                    | Phase::Waiting
                    | Phase::Succeeded
                    | Phase::Failed
            )
        );
        if !idle || settings.skip_analysis {
            return Ok(());
        }
        let Some(analysis) = self.canary.spec.analysis() else {
            return Ok(());
        };
        for (i, metric) in analysis.metrics.iter().enumerate() {
            self.resolve(i, metric)?;
        }
        Ok(())
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
