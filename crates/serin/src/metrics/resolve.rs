//! From a metric of the spec to a query to run and the Prometheus to ask: the built-in checks,
//! the deprecated inline query, or a MetricTemplate (and its Secret). Pure: the controller passes
//! its watch caches as [`Lookups`], tests pass maps.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::prometheus::ProviderConfig;
use super::{
    Check, MetricKind, REQUEST_DURATION, REQUEST_SUCCESS_RATE, RenderError, TemplateModel,
    builtin_query, render, trim_query,
};
use crate::api::{Canary, CanaryMetric, MetricProviderType, MetricTemplate, OnNoData, TargetRef};
use crate::rollout::compare::Criteria;
use crate::rollout::messages as msg;

/// The objects a metric may refer to, by namespace and name.
pub trait Lookups {
    fn template(&self, namespace: &str, name: &str) -> Option<Arc<MetricTemplate>>;
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
}

/// A metric serin cannot run until someone fixes the spec or its references. The text names the
/// field and the fix; it becomes the message of the `serin.dev/Valid` condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "spec.analysis.metrics[{index}].templateRef: MetricTemplate {namespace}/{name} not found; create it or fix the reference"
    )]
    TemplateNotFound {
        index: usize,
        namespace: String,
        name: String,
    },
    #[error(
        "MetricTemplate {namespace}/{name} spec.provider.type: {provider} is not supported by serin; use prometheus"
    )]
    ProviderUnsupported {
        namespace: String,
        name: String,
        provider: String,
    },
    /// `place` is the field: `MetricTemplate ns/name spec.query` or `spec.analysis.metrics[i].query`.
    #[error("{place}: {source}")]
    Render { place: String, source: RenderError },
    #[error(
        "MetricTemplate {namespace}/{template} spec.provider.secretRef: secret {namespace}/{name} not found; create it with the key token, or username and password"
    )]
    SecretNotFound {
        namespace: String,
        template: String,
        name: String,
    },
    #[error("spec.analysis.metrics[{index}]: {text}", text = msg::NO_USABLE_METRIC)]
    NoUsableMetric { index: usize },
    #[error(
        "spec.analysis.metrics[{index}].compare: the query does not depend on {{{{ target }}}}, so the primary's query is the canary's; select the workload with {{{{ target }}}}"
    )]
    CompareWithoutTarget { index: usize },
}

/// A metric ready to run: what to ask and whom.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub check: Check,
    pub provider: ProviderConfig,
    /// With `compare`: the same query for the primary (`{{ target }}` = `<target>-primary`).
    pub primary_query: Option<String>,
    /// With `compare`: the statistical criteria, defaulted.
    pub criteria: Option<Criteria>,
    pub on_no_data: OnNoData,
}

/// The model for the primary's side: `{{ target }}` names `<target>-primary`, the workload the
/// built-in queries (and templates written like them) select with `destination_workload`.
pub fn primary_model(model: &TemplateModel) -> TemplateModel {
    TemplateModel {
        target: format!("{}-primary", model.target),
        ..model.clone()
    }
}

/// Renders `template` for the canary and, with `compare`, for the primary. A compared query that
/// reads the same for both sides cannot tell them apart, so it is refused.
fn render_both(
    metric: &CanaryMetric,
    index: usize,
    kind: MetricKind,
    template: &str,
    model: &TemplateModel,
    place: &str,
) -> Result<(Check, Option<String>), ResolveError> {
    let err = |source| ResolveError::Render {
        place: place.to_string(),
        source,
    };
    let query = render(template, model).map_err(err)?;
    let check = Check::new(metric, kind, &query);
    let primary = match &metric.compare {
        None => None,
        Some(_) => {
            let q = trim_query(&render(template, &primary_model(model)).map_err(err)?);
            if q == check.query {
                return Err(ResolveError::CompareWithoutTarget { index });
            }
            Some(q)
        }
    };
    Ok((check, primary))
}

/// Resolves `metric` (the `index`-th of the Canary's analysis). `default_address` is the
/// Prometheus of `--metrics-server`, used unless the Canary names its own `metricsServer`.
pub fn resolve(
    canary: &Canary,
    index: usize,
    metric: &CanaryMetric,
    default_address: &str,
    lookups: &impl Lookups,
) -> Result<Resolved, ResolveError> {
    let spec = &canary.spec;
    let ns = canary.namespace().unwrap_or_default();
    let target = spec.target_ref.name.clone();
    let or_target = |r: &Option<TargetRef>| {
        r.as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| target.clone())
    };
    let model = TemplateModel {
        name: canary.name_any(),
        namespace: ns.clone(),
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
            .unwrap_or_else(|| default_address.to_string()),
        ..Default::default()
    };
    if let Some(tr) = &metric.template_ref {
        let tns = tr.namespace_or(&ns).to_string();
        let Some(tpl) = lookups.template(&tns, &tr.name) else {
            return Err(ResolveError::TemplateNotFound {
                index,
                namespace: tns,
                name: tr.name.clone(),
            });
        };
        let place = format!("MetricTemplate {tns}/{}", tr.name);
        if tpl.spec.provider.type_ != MetricProviderType::Prometheus {
            return Err(ResolveError::ProviderUnsupported {
                namespace: tns,
                name: tr.name.clone(),
                provider: tpl.spec.provider.type_.as_str().to_string(),
            });
        }
        let (check, primary_query) = render_both(
            metric,
            index,
            MetricKind::Template,
            &tpl.spec.query,
            &model,
            &format!("{place} spec.query"),
        )?;
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
            let Some(secret) = lookups.secret(&tns, &sr.name) else {
                return Err(ResolveError::SecretNotFound {
                    namespace: tns,
                    template: tr.name.clone(),
                    name: sr.name.clone(),
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
        return Ok(Resolved {
            check,
            provider,
            primary_query,
            criteria: metric.compare_criteria(),
            on_no_data: metric.on_no_data(),
        });
    }
    if let Some(q) = &metric.query {
        let (check, primary_query) = render_both(
            metric,
            index,
            MetricKind::Inline,
            q,
            &model,
            &format!("spec.analysis.metrics[{index}].query"),
        )?;
        return Ok(Resolved {
            check,
            provider: default_provider,
            primary_query,
            criteria: metric.compare_criteria(),
            on_no_data: metric.on_no_data(),
        });
    }
    let kind = match metric.name.as_str() {
        REQUEST_SUCCESS_RATE => MetricKind::SuccessRate,
        REQUEST_DURATION => MetricKind::Duration,
        _ => return Err(ResolveError::NoUsableMetric { index }),
    };
    let query = builtin_query(&metric.name, &model).unwrap_or_default();
    let check = Check::new(metric, kind, &query);
    let primary_query = metric
        .compare
        .as_ref()
        .and_then(|_| builtin_query(&metric.name, &primary_model(&model)));
    Ok(Resolved {
        check,
        provider: default_provider,
        primary_query,
        criteria: metric.compare_criteria(),
        on_no_data: metric.on_no_data(),
    })
}
