//! From a metric of the spec to a query to run and the Prometheus to ask: the built-in checks,
//! the deprecated inline query, or a MetricTemplate (and its Secret). Pure: the controller passes
//! its watch caches as [`Lookups`], tests pass maps.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::prometheus::ProviderConfig;
use super::{
    Check, MetricKind, REQUEST_DURATION, REQUEST_SUCCESS_RATE, RenderError, TemplateModel,
    builtin_query, render,
};
use crate::api::{Canary, CanaryMetric, MetricProviderType, MetricTemplate, TargetRef};
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
}

/// A metric ready to run: what to ask and whom.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub check: Check,
    pub provider: ProviderConfig,
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
        let query = render(&tpl.spec.query, &model).map_err(|source| ResolveError::Render {
            place: format!("{place} spec.query"),
            source,
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
        let check = Check::new(metric, MetricKind::Template, &query);
        return Ok(Resolved { check, provider });
    }
    if let Some(q) = &metric.query {
        let query = render(q, &model).map_err(|source| ResolveError::Render {
            place: format!("spec.analysis.metrics[{index}].query"),
            source,
        })?;
        let check = Check::new(metric, MetricKind::Inline, &query);
        return Ok(Resolved {
            check,
            provider: default_provider,
        });
    }
    let kind = match metric.name.as_str() {
        REQUEST_SUCCESS_RATE => MetricKind::SuccessRate,
        REQUEST_DURATION => MetricKind::Duration,
        _ => return Err(ResolveError::NoUsableMetric { index }),
    };
    let query = builtin_query(&metric.name, &model).unwrap_or_default();
    let check = Check::new(metric, kind, &query);
    Ok(Resolved {
        check,
        provider: default_provider,
    })
}
