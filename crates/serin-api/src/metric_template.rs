//! `MetricTemplate` (`flagger.app/v1beta1`): a metric query shared by many canaries.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::canary::{CanaryCondition, LocalObjectReference};

/// A Go text/template query run against a metrics provider.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flagger.app",
    version = "v1beta1",
    kind = "MetricTemplate",
    plural = "metrictemplates",
    singular = "metrictemplate",
    namespaced,
    status = "MetricTemplateStatus",
    category = "all",
    annotation("helm.sh/resource-policy", "keep"),
    doc = "MetricTemplate is the Schema for the MetricTemplates API.",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name": "Provider", "type": "string", "jsonPath": ".spec.provider.type"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateSpec {
    pub provider: MetricTemplateProvider,
    /// Go text/template with the variables name, namespace, target, service, ingress, route,
    /// interval and variables.<key>, written `{{ namespace }}`.
    pub query: String,
}

/// Where the query runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateProvider {
    #[serde(rename = "type")]
    pub type_: MetricProviderType,
    /// API address (for Prometheus, the base URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Extra HTTP headers per request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Secret with credentials (Prometheus: `token`, or `username` + `password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Cloud region (CloudWatch, Stackdriver); ignored by serin's Prometheus provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// Metrics back-ends Flagger's CRD accepts. serin queries Prometheus; the others are accepted so
/// manifests apply, and reported by `serin validate`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricProviderType {
    #[default]
    Prometheus,
    Influxdb,
    Datadog,
    Externalmetrics,
    Stackdriver,
    Cloudwatch,
    Newrelic,
    Graphite,
    Dynatrace,
    Keptn,
    Splunk,
}

impl MetricProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricProviderType::Prometheus => "prometheus",
            MetricProviderType::Influxdb => "influxdb",
            MetricProviderType::Datadog => "datadog",
            MetricProviderType::Externalmetrics => "externalmetrics",
            MetricProviderType::Stackdriver => "stackdriver",
            MetricProviderType::Cloudwatch => "cloudwatch",
            MetricProviderType::Newrelic => "newrelic",
            MetricProviderType::Graphite => "graphite",
            MetricProviderType::Dynatrace => "dynatrace",
            MetricProviderType::Keptn => "keptn",
            MetricProviderType::Splunk => "splunk",
        }
    }
}

/// Unused by Flagger; serin may report template problems here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct MetricTemplateStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<CanaryCondition>,
}
