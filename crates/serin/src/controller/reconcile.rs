//! One reconcile of one Canary: observe (caches), decide (the rollout core, answering its needs
//! with webhook calls and metric queries), act (idempotent applies, only where the cache differs),
//! record (status, Events, metrics).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::autoscaler;
use super::state::{self, VALID_CONDITION};
use super::{Ctx, Error};
use crate::api::{
    self, Canary, CanaryMetric, MetricCheckStatus, MetricProviderType, validate_canary,
};
use crate::metrics::prometheus::{Prometheus, ProviderConfig};
use crate::metrics::{
    self as m, Check, MetricKind, QueryOutcome, TemplateModel, builtin_query, render, verdict,
};
use crate::rollout::{
    self, Action as PlanAction, Decision, EventType, Need, Observation, Outcome, Phase, Plan,
    Progress, Readiness, Scale, messages as msg,
};
use crate::router::{self, RouterInputs};
use crate::telemetry::{MetricLabels, NameNs, OutcomeLabels, WorkloadNs};
use crate::workload::{self, PrimaryInputs, REVISION_ANNOTATION, SelectorLabel};

/// Flagger's finalizer name, added only with `revertOnDeletion`.
pub const FINALIZER: &str = "finalizer.flagger.app";

/// Where Flagger keeps the spec of a VirtualService it took over, for the revert.
const ORIGINAL_CONFIGURATION: &str = "flagger.kubernetes.io/original-configuration";

/// How long to wait before looking again at a Canary that cannot progress until a person fixes
/// something; a watch event on the Canary or its objects comes sooner.
const HOLD_RETRY: Duration = Duration::from_secs(60);

/// A configuration problem: no traffic moves until it is fixed.
struct Hold {
    reason: &'static str,
    message: String,
}

/// Whether an Event is a warning.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KubeEventType {
    Normal,
    Warning,
}

pub async fn reconcile(canary: Arc<Canary>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !ctx.caches_ready().await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if cache_is_behind(&canary, &ctx) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let start = Instant::now();
    let mut r = Reconcile {
        ns: canary.namespace().unwrap_or_default(),
        name: canary.name_any(),
        now: Utc::now(),
        canary,
        ctx: ctx.clone(),
        metric_results: None,
        analysed: false,
        cookies: None,
        event_chain: Default::default(),
    };
    let res = r.run().await;
    ctx.metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    if r.analysed {
        ctx.metrics
            .canary_duration
            .get_or_create(&NameNs {
                name: r.canary.spec.target_ref.name.clone(),
                namespace: r.ns.clone(),
            })
            .observe(start.elapsed().as_secs_f64());
    }
    if res.is_ok() {
        ctx.metrics
            .reconciles
            .get_or_create(&crate::telemetry::ResultLabels {
                result: "ok".into(),
            })
            .inc();
    }
    res
}

struct Reconcile {
    ctx: Arc<Ctx>,
    canary: Arc<Canary>,
    ns: String,
    name: String,
    now: DateTime<Utc>,
    metric_results: Option<Vec<MetricCheckStatus>>,
    analysed: bool,
    /// Session-affinity cookies decided in this pass, for the VirtualService and the status.
    cookies: Option<router::AffinityCookies>,
    /// The last background delivery to the event hooks; the next one waits for it.
    event_chain: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

mod webhooks;

impl Reconcile {
    fn target_name(&self) -> &str {
        &self.canary.spec.target_ref.name
    }

    fn qualified(&self) -> String {
        msg::qualified(&self.name, &self.ns)
    }

    fn owner(&self) -> Result<OwnerReference, Error> {
        self.canary
            .controller_owner_ref(&())
            .ok_or_else(|| Error::Other("the Canary has no uid yet".into()))
    }

    fn deployment(&self, name: &str) -> Option<Arc<Deployment>> {
        self.ctx
            .deployments
            .get(&ObjectRef::new(name).within(&self.ns))
    }

    async fn run(&mut self) -> Result<Action, Error> {
        if self.canary.metadata.deletion_timestamp.is_some() {
            return self.finalize().await;
        }
        self.sync_finalizer().await?;

        let problems = validate_canary(&self.canary);
        if !problems.is_empty() {
            let text = problems
                .iter()
                .map(|p| format!("{}: {} ({})", p.path, p.message, p.hint))
                .collect::<Vec<_>>()
                .join("; ");
            return self
                .hold(Hold {
                    reason: "InvalidSpec",
                    message: text,
                })
                .await;
        }
        let Some(target) = self.deployment(self.target_name()) else {
            let message = format!(
                "spec.targetRef.name: Deployment {}/{} not found; create it or fix spec.targetRef",
                self.ns,
                self.target_name()
            );
            return self
                .hold(Hold {
                    reason: "TargetNotFound",
                    message,
                })
                .await;
        };
        let selector = match workload::selector_label(&target) {
            Ok(s) => s,
            Err(e) => {
                let message = format!("spec.targetRef: {e}");
                return self
                    .hold(Hold {
                        reason: "SelectorLabelMissing",
                        message,
                    })
                    .await;
            }
        };
        let template = target
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let pod = template.spec.clone().unwrap_or_default();
        let configs = match self.tracked_configs(&pod) {
            Ok(c) => c,
            Err(e) => {
                let message = format!(
                    "spec.targetRef: Deployment {}/{} references {e}; create it or mark the reference optional",
                    self.ns,
                    self.target_name()
                );
                return self
                    .hold(Hold {
                        reason: "ConfigNotFound",
                        message,
                    })
                    .await;
            }
        };
        let revision = workload::revision_hash(&template);
        let scaler = match autoscaler::desired(&self.ctx, &self.canary, &self.ns, self.owner()?) {
            Ok(s) => s,
            Err((reason, message)) => return self.hold(Hold { reason, message }).await,
        };

        let primary_name = format!("{}-primary", self.target_name());
        let primary = self.deployment(&primary_name);
        if primary.is_none() {
            // First sight (or someone deleted it): the primary starts from the current target.
            self.write_primary(&target, &selector, &revision, &configs)
                .await?;
            if let Some(hpa) = &scaler {
                autoscaler::size_new_primary(&self.ctx, &self.ns, &target, hpa).await?;
            }
        }
        autoscaler::apply_primary(&self.ctx, &self.canary, &self.ns, scaler.as_ref(), false)
            .await?;

        let analysis = self.canary.spec.analysis().cloned().unwrap_or_default();
        let settings = state::settings(&self.canary);
        let progress = state::progress(self.canary.status.as_ref());
        let obs = Observation {
            revision: revision.clone(),
            configs: configs.clone(),
            canary: workload::readiness(&target, analysis.canary_ready_threshold()),
            primary: primary
                .as_deref()
                .map(|p| workload::readiness(p, analysis.primary_ready_threshold())),
            primary_revision: primary.as_deref().and_then(|p| {
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
        };
        if progress.phase.is_none() {
            self.check_providers().await;
        }
        let plan = match self.decide(&settings, &progress, obs).await {
            Ok(plan) => plan,
            Err(hold) => return self.hold(hold).await,
        };

        // Act: routes first, then the primary, then the canary's replicas, so traffic never
        // points at pods that are going away.
        let discovered = router::discover_ports(&pod, self.canary.spec.service.port);
        self.apply_services(&selector, &discovered, plan.route_to_primary)
            .await?;
        if plan.route_to_primary {
            self.decide_affinity_cookies(&plan.progress);
            self.apply_routes(&selector, &discovered, rollout::routes(&plan.progress))
                .await?;
        }
        for action in &plan.actions {
            match action {
                PlanAction::Promote { revision: promoted } => {
                    if *promoted == revision {
                        self.write_primary(&target, &selector, &revision, &configs)
                            .await?;
                        let hpa = scaler.as_ref();
                        autoscaler::apply_primary(&self.ctx, &self.canary, &self.ns, hpa, true)
                            .await?;
                    } else {
                        warn!(canary = %self.qualified(), "not promoting: the target moved on to {revision}");
                    }
                }
                PlanAction::PostRollout(phase) => self.post_rollout(*phase, &plan.progress).await,
            }
        }
        self.scale(&target, primary.as_deref(), plan.scale).await?;
        // Events before the status: whoever sees the new phase finds its story already told.
        self.record(&plan, &settings).await;
        self.write_status(&plan.progress, Ok(())).await?;
        let after = plan.requeue_after.unwrap_or(Duration::from_secs(300));
        Ok(Action::requeue(after.max(Duration::from_millis(200))))
    }

    /// Runs the decision, answering its needs, until it gives a plan.
    async fn decide(
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
        Err(Hold {
            reason: "InternalError",
            message: "the rollout decision kept asking for checks; please report this".into(),
        })
    }

    fn tracked_configs(
        &self,
        pod: &k8s_openapi::api::core::v1::PodSpec,
    ) -> Result<BTreeMap<String, String>, String> {
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

    // ---- checks ----

    /// Rollout webhooks, then the metrics in spec order; the first failure ends the analysis.
    async fn analysis(&mut self, progress: &Progress) -> Result<Result<(), String>, Hold> {
        if let Err(text) = self.rollout_hooks(progress).await {
            return Ok(Err(text));
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
            let (check, provider) = self.resolve(i, metric)?;
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
            let result = match outcome {
                QueryOutcome::Value(v) => {
                    status.value = Some(v);
                    let gauge_value = if check.kind == MetricKind::Duration {
                        v / 1000.0
                    } else {
                        v
                    };
                    self.ctx
                        .metrics
                        .metric_analysis
                        .get_or_create(&MetricLabels {
                            name: self.target_name().to_string(),
                            namespace: self.ns.clone(),
                            metric: check.name.clone(),
                        })
                        .set(gauge_value);
                    verdict(&check, v, &self.qualified())
                }
                QueryOutcome::NoValues => Err(m::no_values_text(&check, &target)),
                QueryOutcome::Error(e) if e.starts_with("bad_data") => {
                    return Err(Hold {
                        reason: "MetricQueryInvalid",
                        message: format!(
                            "spec.analysis.metrics[{i}] ({}): Prometheus refused the query: {e}; fix the query",
                            check.name
                        ),
                    });
                }
                QueryOutcome::Error(e) => Err(m::error_text(&check, &e)),
            };
            if let Err(text) = &result {
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

    /// Turns a metric of the spec into a query to run, or a configuration problem naming the field.
    fn resolve(&self, i: usize, metric: &CanaryMetric) -> Result<(Check, ProviderConfig), Hold> {
        let spec = &self.canary.spec;
        let target = self.target_name().to_string();
        let or_target = |r: &Option<api::TargetRef>| {
            r.as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_else(|| target.clone())
        };
        let model = TemplateModel {
            name: self.name.clone(),
            namespace: self.ns.clone(),
            target: target.clone(),
            service: spec.service.name.clone().unwrap_or_else(|| target.clone()),
            ingress: or_target(&spec.ingress_ref),
            route: or_target(&spec.route_ref),
            interval: metric.interval().to_string(),
            variables: metric.template_variables.clone(),
        };
        let default_provider = ProviderConfig {
            address: spec
                .metrics_server
                .clone()
                .unwrap_or_else(|| self.ctx.opts.metrics_server.clone()),
            ..Default::default()
        };
        let field = format!("spec.analysis.metrics[{i}]");
        if let Some(tr) = &metric.template_ref {
            let tns = tr.namespace_or(&self.ns).to_string();
            let Some(tpl) = self
                .ctx
                .templates
                .get(&ObjectRef::new(&tr.name).within(&tns))
            else {
                return Err(Hold {
                    reason: "MetricTemplateNotFound",
                    message: format!(
                        "{field}.templateRef: MetricTemplate {tns}/{} not found; create it or fix the reference",
                        tr.name
                    ),
                });
            };
            let place = format!("MetricTemplate {tns}/{}", tr.name);
            if tpl.spec.provider.type_ != MetricProviderType::Prometheus {
                return Err(Hold {
                    reason: "MetricProviderUnsupported",
                    message: format!(
                        "{place} spec.provider.type: {} is not supported by serin; use prometheus",
                        tpl.spec.provider.type_.as_str()
                    ),
                });
            }
            let query = render(&tpl.spec.query, &model).map_err(|e| Hold {
                reason: "MetricQueryRenderError",
                message: format!("{place} spec.query: {e}"),
            })?;
            let mut provider = ProviderConfig {
                address: tpl
                    .spec
                    .provider
                    .address
                    .clone()
                    .unwrap_or(default_provider.address),
                headers: tpl.spec.provider.headers.clone(),
                insecure_skip_verify: tpl.spec.provider.insecure_skip_verify.unwrap_or(false),
                ..Default::default()
            };
            if let Some(sr) = &tpl.spec.provider.secret_ref {
                let Some(secret) = self.ctx.secrets.get(&ObjectRef::new(&sr.name).within(&tns))
                else {
                    return Err(Hold {
                        reason: "MetricSecretNotFound",
                        message: format!(
                            "{place} spec.provider.secretRef: secret {tns}/{} not found; create it with the key token, or username and password",
                            sr.name
                        ),
                    });
                };
                let get = |k: &str| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(k))
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                };
                if let Some(addr) = get("address") {
                    provider.address = addr;
                }
                provider.bearer_token = get("token");
                if let (Some(u), Some(p)) = (get("username"), get("password")) {
                    provider.basic_auth = Some((u, p));
                }
            }
            let check = Check::new(metric, MetricKind::Template, &query);
            return Ok((check, provider));
        }
        if let Some(q) = &metric.query {
            let query = render(q, &model).map_err(|e| Hold {
                reason: "MetricQueryRenderError",
                message: format!("{field}.query: {e}"),
            })?;
            let check = Check::new(metric, MetricKind::Inline, &query);
            return Ok((check, default_provider));
        }
        let kind = match metric.name.as_str() {
            m::REQUEST_SUCCESS_RATE => MetricKind::SuccessRate,
            m::REQUEST_DURATION => MetricKind::Duration,
            _ => {
                return Err(Hold {
                    reason: "NoUsableMetric",
                    message: format!("{field}: {}", msg::NO_USABLE_METRIC),
                });
            }
        };
        let query = builtin_query(&metric.name, &model).unwrap_or_default();
        let check = Check::new(metric, kind, &query);
        Ok((check, default_provider))
    }

    async fn provider(&self, i: usize, cfg: &ProviderConfig) -> Result<Prometheus, Hold> {
        let mut cache = self.ctx.providers.lock().await;
        if let Some(p) = cache.get(cfg) {
            return Ok(p.clone());
        }
        let p = Prometheus::new(cfg).map_err(|e| Hold {
            reason: "MetricProviderInvalid",
            message: format!(
                "spec.analysis.metrics[{i}]: {}",
                msg::prometheus_client_error(&cfg.address, &e)
            ),
        })?;
        cache.insert(cfg.clone(), p.clone());
        Ok(p)
    }

    /// Flagger's start-up probe of the metric providers: an event either way, never blocking.
    async fn check_providers(&self) {
        let Some(analysis) = self.canary.spec.analysis() else {
            return;
        };
        if analysis.metrics.is_empty() {
            return;
        }
        let mut errors = Vec::new();
        for (i, metric) in analysis.metrics.iter().enumerate() {
            let Ok((_, cfg)) = self.resolve(i, metric) else {
                continue;
            };
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

    // ---- acting ----

    async fn apply<K>(&self, obj: &K, cached: Option<&K>, manager: &str) -> Result<(), Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let desired = serde_json::to_value(obj).map_err(|e| Error::Other(e.to_string()))?;
        if let Some(c) = cached
            && let Ok(actual) = serde_json::to_value(c)
            && is_subset(&desired, &actual)
        {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        api.patch(
            &obj.name_any(),
            &PatchParams::apply(manager).force(),
            &Patch::Apply(obj),
        )
        .await?;
        Ok(())
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
        let desired = serde_json::to_value(obj).map_err(|e| Error::Other(e.to_string()))?;
        if let Some(c) = cached
            && let Ok(actual) = serde_json::to_value(c.as_ref())
            && is_subset(&desired, &actual)
        {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        api.patch(
            &obj.name_any(),
            &PatchParams::apply(manager).force(),
            &Patch::Apply(obj),
        )
        .await?;
        Ok(())
    }

    fn owned_by_us(&self, meta: &ObjectMeta) -> bool {
        let uid = self.canary.metadata.uid.as_deref();
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
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

    async fn apply_services(
        &self,
        selector: &SelectorLabel,
        discovered: &[router::DiscoveredPort],
        with_apex: bool,
    ) -> Result<(), Error> {
        let inp = self.router_inputs(selector, discovered)?;
        let apex = self.canary.apex_name();
        for mut svc in router::desired_services(&inp) {
            let name = svc.name_any();
            if name == apex && !with_apex {
                continue;
            }
            let cached = self
                .ctx
                .services
                .get(&ObjectRef::new(&name).within(&self.ns));
            if let Some(c) = &cached
                && !self.owned_by_us(&c.metadata)
            {
                // A Service the user made: take over selector and ports, never ownership, so
                // deleting the Canary does not delete it.
                svc.metadata.owner_references = None;
            }
            self.apply(&svc, cached.as_deref(), "serin/router").await?;
        }
        Ok(())
    }

    async fn apply_routes(
        &self,
        selector: &SelectorLabel,
        discovered: &[router::DiscoveredPort],
        routes: rollout::Routes,
    ) -> Result<(), Error> {
        let inp = self.router_inputs(selector, discovered)?;
        for dr in router::desired_destination_rules(&inp) {
            let name = dr.name_any();
            let cached = self
                .ctx
                .destination_rules
                .get(&ObjectRef::new_with(&name, self.ctx.dr_resource.clone()).within(&self.ns));
            self.apply_dynamic(&dr, cached, "serin/router").await?;
        }
        let mut vs = match &self.cookies {
            Some(c) => router::desired_virtual_service_with_affinity(&inp, routes, c),
            None => router::desired_virtual_service(&inp, routes),
        };
        let apex = self.canary.apex_name();
        let cached = self
            .ctx
            .virtual_services
            .get(&ObjectRef::new_with(&apex, self.ctx.vs_resource.clone()).within(&self.ns));
        if let Some(c) = &cached
            && !self.owned_by_us(&c.metadata)
        {
            vs.metadata.owner_references = None;
            let annotations = c.metadata.annotations.clone().unwrap_or_default();
            let original = annotations
                .get(ORIGINAL_CONFIGURATION)
                .cloned()
                .or_else(|| {
                    (!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"))
                        .then(|| {
                            c.data
                                .get("spec")
                                .map(|s| s.to_string())
                                .unwrap_or_default()
                        })
                });
            if let Some(original) = original {
                vs.annotations_mut()
                    .insert(ORIGINAL_CONFIGURATION.into(), original);
            }
        }
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
    async fn write_primary(
        &self,
        target: &Deployment,
        selector: &SelectorLabel,
        revision: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let owner = self.owner()?;
        for key in configs.keys() {
            self.copy_config(key, &owner).await?;
        }
        let primary = self.deployment(&format!("{}-primary", self.target_name()));
        let has_autoscaler = self.canary.spec.autoscaler_ref.is_some();
        let replicas = (!has_autoscaler).then(|| {
            workload::scale_up_replicas(
                target.spec.as_ref().and_then(|s| s.replicas),
                primary
                    .as_ref()
                    .and_then(|p| p.spec.as_ref())
                    .and_then(|s| s.replicas),
                None,
                false,
            )
        });
        let tracked: BTreeSet<String> = configs.keys().cloned().collect();
        let desired = workload::desired_primary(&PrimaryInputs {
            target,
            selector,
            owner,
            revision,
            tracked: &tracked,
            replicas,
            configs_checksum: workload::configs_checksum(configs),
        });
        self.apply(&desired, primary.as_deref(), "serin/primary")
            .await
    }

    async fn copy_config(&self, key: &str, owner: &OwnerReference) -> Result<(), Error> {
        let meta = |name: &str| ObjectMeta {
            name: Some(format!("{name}-primary")),
            namespace: Some(self.ns.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        };
        if let Some(name) = key.strip_prefix("configmap/") {
            let Some(src) = self
                .ctx
                .config_maps
                .get(&ObjectRef::new(name).within(&self.ns))
            else {
                return Ok(());
            };
            let copy = ConfigMap {
                metadata: meta(name),
                data: src.data.clone(),
                binary_data: src.binary_data.clone(),
                immutable: None,
            };
            let cached = self
                .ctx
                .config_maps
                .get(&ObjectRef::new(&format!("{name}-primary")).within(&self.ns));
            self.apply(&copy, cached.as_deref(), "serin/config").await?;
        } else if let Some(name) = key.strip_prefix("secret/") {
            let Some(src) = self.ctx.secrets.get(&ObjectRef::new(name).within(&self.ns)) else {
                return Ok(());
            };
            let copy = Secret {
                metadata: meta(name),
                data: src.data.clone(),
                type_: src.type_.clone(),
                ..Default::default()
            };
            let cached = self
                .ctx
                .secrets
                .get(&ObjectRef::new(&format!("{name}-primary")).within(&self.ns));
            self.apply(&copy, cached.as_deref(), "serin/config").await?;
        }
        Ok(())
    }

    async fn scale(
        &self,
        target: &Deployment,
        primary: Option<&Deployment>,
        scale: Scale,
    ) -> Result<(), Error> {
        let current = target.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let want = match scale {
            Scale::Keep => return Ok(()),
            Scale::Zero if current == 0 => return Ok(()),
            Scale::Zero => 0,
            Scale::Up if current > 0 => return Ok(()),
            Scale::Up => workload::scale_up_replicas(
                Some(current),
                primary
                    .and_then(|p| p.spec.as_ref())
                    .and_then(|s| s.replicas),
                autoscaler::user_min_replicas(&self.ctx, &self.canary, &self.ns),
                self.canary.spec.autoscaler_ref.is_some(),
            ),
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
        .await?;
        Ok(())
    }

    /// Session affinity: the cookies for this progress, new values drawn here (the router's
    /// builders stay pure and take them as inputs).
    fn decide_affinity_cookies(&mut self, progress: &Progress) {
        let cookies = router::next_affinity_cookies(&self.canary, progress, random_cookie_value);
        self.cookies = Some(cookies);
    }

    // ---- recording ----

    async fn write_status(
        &self,
        progress: &Progress,
        valid: Result<(), (String, String)>,
    ) -> Result<(), Error> {
        let previous = self.canary.status.as_ref();
        let mut status = state::status(
            previous,
            progress,
            &self.canary.spec.target_ref.kind,
            valid,
            self.now,
        );
        if let Some(results) = &self.metric_results {
            status.serin_metrics = results.clone();
        }
        if let Some(cookies) = &self.cookies {
            cookies.write_to(&mut status);
        }
        if previous == Some(&status) {
            return Ok(());
        }
        let api: Api<Canary> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = json!({
            "apiVersion": api::API_VERSION,
            "kind": "Canary",
            "status": status,
        });
        let written = api
            .patch_status(
                &self.name,
                &PatchParams::apply("serin").force(),
                &Patch::Apply(&patch),
            )
            .await?;
        self.remember_written(&written);
        Ok(())
    }

    /// Records the resource version of serin's own status write, so that reconciles triggered
    /// before the cache has it (by the objects this reconcile just changed) wait for it instead
    /// of acting on the previous status ([`cache_is_behind`]).
    fn remember_written(&self, written: &Canary) {
        if let (Some(uid), Some(version)) = (
            written.metadata.uid.clone(),
            resource_version(&written.metadata),
        ) && let Ok(mut w) = self.ctx.written.lock()
        {
            w.insert(uid, version);
        }
    }

    /// Keeps everything as it is, tells why on the `serin.dev/Valid` condition, and warns once
    /// when that condition turns false (or its message changes).
    async fn hold(&self, hold: Hold) -> Result<Action, Error> {
        let previous = self
            .canary
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == VALID_CONDITION));
        let repeated = previous.is_some_and(|c| {
            c.status == "False" && c.message.as_deref() == Some(hold.message.as_str())
        });
        if !repeated {
            warn!(canary = %self.qualified(), reason = hold.reason, "{}", hold.message);
            self.publish(KubeEventType::Warning, hold.message.clone())
                .await;
        }
        let progress = state::progress(self.canary.status.as_ref());
        self.write_status(
            &progress,
            Err((hold.reason.to_string(), hold.message.clone())),
        )
        .await?;
        let interval = self
            .canary
            .spec
            .analysis()
            .map(|a| a.interval())
            .unwrap_or(HOLD_RETRY);
        Ok(Action::requeue(interval.min(HOLD_RETRY)))
    }

    async fn publish(&self, kind: KubeEventType, text: String) {
        match kind {
            KubeEventType::Normal => info!(canary = %self.qualified(), "{text}"),
            KubeEventType::Warning => warn!(canary = %self.qualified(), "{text}"),
        }
        let warning = kind == KubeEventType::Warning;
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&self.canary.object_ref(&()), warning, &text)
            .await
        {
            warn!(canary = %self.qualified(), "publishing an event: {e}");
        }
        self.send_event_hooks(warning, &text);
    }

    async fn record(&self, plan: &Plan, settings: &rollout::Settings) {
        for e in &plan.events {
            let kind = match e.kind {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            };
            self.publish(kind, e.message.clone()).await;
        }
        self.send_alerts(plan, settings).await;
        let labels = NameNs {
            name: self.target_name().to_string(),
            namespace: self.ns.clone(),
        };
        self.ctx
            .metrics
            .canary_status
            .get_or_create(&labels)
            .set(state::status_gauge(plan.progress.phase));
        if let Some(outcome) = plan.outcome {
            let strategy = settings.strategy.as_str().to_string();
            let (family, status) = match outcome {
                Outcome::Promoted => (&self.ctx.metrics.successes, "completed"),
                Outcome::Skipped => (&self.ctx.metrics.successes, "skipped"),
                Outcome::Failed => (&self.ctx.metrics.failures, "completed"),
            };
            family
                .get_or_create(&OutcomeLabels {
                    name: self.target_name().to_string(),
                    namespace: self.ns.clone(),
                    deployment_strategy: strategy,
                    analysis_status: status.into(),
                })
                .inc();
        }
    }

    /// Hands the plan's alerts to the notifiers; what only the user can fix (a missing provider or
    /// secret) becomes a Warning Event. Delivery runs in the background.
    async fn send_alerts(&self, plan: &Plan, settings: &rollout::Settings) {
        for a in &plan.alerts {
            let problems = self
                .ctx
                .alerter
                .dispatch(
                    &self.ctx.client,
                    &self.ctx.secrets,
                    &self.canary,
                    settings,
                    a,
                )
                .await;
            for p in problems {
                self.publish(KubeEventType::Warning, p).await;
            }
        }
    }

    // ---- finalizer ----

    fn has_finalizer(&self) -> bool {
        self.canary.finalizers().iter().any(|f| f == FINALIZER)
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

    async fn sync_finalizer(&self) -> Result<(), Error> {
        let want = self.canary.spec.revert_on_deletion();
        let has = self.has_finalizer();
        if want && !has {
            let mut f = self.canary.finalizers().to_vec();
            f.push(FINALIZER.into());
            self.set_finalizers(f).await?;
        } else if !want && has {
            let f = self
                .canary
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            self.set_finalizers(f).await?;
        }
        Ok(())
    }

    /// `revertOnDeletion`: the target takes the traffic back before anything serin made goes.
    async fn finalize(&self) -> Result<Action, Error> {
        if !self.has_finalizer() {
            return Ok(Action::await_change());
        }
        let mut progress = state::progress(self.canary.status.as_ref());
        if progress.phase != Some(Phase::Terminating) {
            progress.phase = Some(Phase::Terminating);
            progress.last_transition_time = Some(self.now);
            self.write_status(&progress, Ok(())).await?;
            self.publish(KubeEventType::Normal, msg::terminating(&self.qualified()))
                .await;
        }
        if let Some(target) = self.deployment(self.target_name()) {
            let primary = self.deployment(&format!("{}-primary", self.target_name()));
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
        let f = self
            .canary
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        self.set_finalizers(f).await?;
        self.publish(KubeEventType::Normal, msg::terminated(&self.qualified()))
            .await;
        Ok(Action::await_change())
    }

    /// Points the apex Service back at the target's pods and releases it from the Canary, so the
    /// garbage collector leaves it serving.
    async fn revert_apex(&self, selector: &SelectorLabel) -> Result<(), Error> {
        let apex = self.canary.apex_name();
        let Some(svc) = self
            .ctx
            .services
            .get(&ObjectRef::new(&apex).within(&self.ns))
        else {
            return Ok(());
        };
        let uid = self.canary.metadata.uid.clone().unwrap_or_default();
        let owners: Vec<OwnerReference> = svc
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.uid != uid)
            .cloned()
            .collect();
        let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = json!({
            "metadata": { "ownerReferences": owners },
            "spec": { "selector": { selector.key.clone(): selector.value.clone() } },
        });
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
        let annotations = vs.metadata.annotations.clone().unwrap_or_default();
        let original = annotations
            .get(ORIGINAL_CONFIGURATION)
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .or_else(|| {
                annotations
                    .get("kubectl.kubernetes.io/last-applied-configuration")
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .and_then(|v| v.get("spec").cloned())
            });
        let Some(spec) = original else {
            if !self.owned_by_us(&vs.metadata) {
                warn!(canary = %self.qualified(), "original configuration not found, unable to revert");
            }
            return Ok(());
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), &self.ns, ar);
        let patch = json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "VirtualService",
            "metadata": { "name": apex },
            "spec": spec,
        });
        api.patch(
            &apex,
            &PatchParams::apply("serin/router").force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }
}

fn resource_version(meta: &ObjectMeta) -> Option<u64> {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
}

/// Whether serin wrote a newer status than the cached Canary carries. Resource versions are
/// etcd revisions, increasing numbers; anything unparsable counts as current.
fn cache_is_behind(canary: &Canary, ctx: &Ctx) -> bool {
    let (Some(uid), Some(cached)) = (
        canary.metadata.uid.as_ref(),
        resource_version(&canary.metadata),
    ) else {
        return false;
    };
    let written = ctx
        .written
        .lock()
        .map(|w| w.get(uid).copied())
        .unwrap_or(None);
    written.is_some_and(|w| cached < w)
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
    use super::is_subset;
    use serde_json::json;

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
