//! `Canary` (`flagger.app/v1beta1`): the types, wire-compatible with Flagger's
//! `pkg/apis/flagger/v1beta1/canary.go` and `status.go`.
//!
//! Options are `None` when the user left a field out, so a manifest round-trips unchanged; the
//! defaults Flagger applies live in methods (`CanaryAnalysis::interval()` etc.), not in the data.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::duration::parse_go_duration;
use super::istio;
pub use serin_core::{CanaryPhase, HookType, Strategy};

/// Canary analysis tick when `analysis.interval` is missing or unparsable (Flagger's `AnalysisInterval`).
pub const DEFAULT_ANALYSIS_INTERVAL: Duration = Duration::from_secs(60);
/// Flagger clamps shorter analysis intervals to this.
pub const MIN_ANALYSIS_INTERVAL: Duration = Duration::from_secs(10);
/// `spec.progressDeadlineSeconds` default.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// `metrics[].interval` default (a PromQL range).
pub const DEFAULT_METRIC_INTERVAL: &str = "1m";
/// Webhook HTTP timeout per attempt when `timeout` is missing or shorter than 2 characters.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// `sessionAffinity.maxAge` default, in seconds.
pub const DEFAULT_SESSION_AFFINITY_MAX_AGE: i32 = 86400;
/// Built-in Istio metrics that need neither a template nor a query.
pub const BUILTIN_METRICS: [&str; 2] = ["request-success-rate", "request-duration"];

/// A canary release: bootstrap, analysis, traffic shifting, promotion or rollback of a workload.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flagger.app",
    version = "v1beta1",
    kind = "Canary",
    plural = "canaries",
    singular = "canary",
    namespaced,
    status = "CanaryStatus",
    category = "all",
    annotation("helm.sh/resource-policy", "keep"),
    doc = "Canary is the Schema for the Canary API.",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name": "Status", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Weight", "type": "string", "jsonPath": ".status.canaryWeight"}"#,
    printcolumn = r#"{"name": "Suspended", "type": "boolean", "jsonPath": ".spec.suspend", "priority": 1}"#,
    printcolumn = r#"{"name": "FailedChecks", "type": "string", "jsonPath": ".status.failedChecks", "priority": 1}"#,
    printcolumn = r#"{"name": "Interval", "type": "string", "jsonPath": ".spec.analysis.interval", "priority": 1}"#,
    printcolumn = r#"{"name": "Mirror", "type": "boolean", "jsonPath": ".spec.analysis.mirror", "priority": 1}"#,
    printcolumn = r#"{"name": "StepWeight", "type": "string", "jsonPath": ".spec.analysis.stepWeight", "priority": 1}"#,
    printcolumn = r#"{"name": "StepWeights", "type": "string", "jsonPath": ".spec.analysis.stepWeights", "priority": 1}"#,
    printcolumn = r#"{"name": "MaxWeight", "type": "string", "jsonPath": ".spec.analysis.maxWeight", "priority": 1}"#,
    printcolumn = r#"{"name": "LastTransitionTime", "type": "string", "jsonPath": ".status.lastTransitionTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// Traffic provider; overrides the controller default. serin routes with Istio only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Prometheus URL for the built-in metrics of this canary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_server: Option<String>,
    pub target_ref: TargetRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaler_ref: Option<AutoscalerRef>,
    /// NGINX only; kept on round-trip, ignored by serin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_ref: Option<TargetRef>,
    /// APISIX only; kept on round-trip, ignored by serin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_ref: Option<TargetRef>,
    /// Gloo only; kept on round-trip, ignored by serin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ref: Option<UpstreamRef>,
    /// Not required by the schema, as in Flagger's CRD, so every Canary Flagger's CRD takes is
    /// taken; the controller holds a Canary without it, since no Service can be made without a
    /// port.
    #[serde(default)]
    pub service: CanaryService,
    /// Required by the CRD; use [`CanarySpec::analysis()`], which also honours `canaryAnalysis`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,
    /// Deprecated alias of `analysis` (v1alpha3). Not in the CRD schema (the API server prunes it,
    /// as with Flagger's CRD); read for objects that still carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub canary_analysis: Option<CanaryAnalysis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
    /// Promote without analysis (still rolls back if the canary never becomes ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_analysis: Option<bool>,
    /// Revert the target, apex Service and VirtualService when the Canary is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_on_deletion: Option<bool>,
    /// Freeze the canary: no step is taken and no weight is touched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

/// The workload the canary manages (`spec.targetRef`); also the shape of `ingressRef`/`routeRef`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub api_version: String,
    /// Deployment, DaemonSet or Service in Flagger; serin supports Deployment.
    pub kind: String,
    pub name: String,
}

/// Gloo `spec.upstreamRef` (may point to another namespace). Ignored by serin.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A reference by name to an object in the same namespace (secrets).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectReference {
    pub name: String,
}

/// A reference to a MetricTemplate or AlertProvider; `namespace` defaults to the Canary's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct CrossNamespaceObjectReference {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl CrossNamespaceObjectReference {
    /// The namespace to look in: the reference's own, else the Canary's.
    pub fn namespace_or<'a>(&'a self, canary_namespace: &'a str) -> &'a str {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => canary_namespace,
        }
    }
}

/// `spec.autoscalerRef`: the user's HPA (or KEDA ScaledObject) that gets a `-primary` copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerRef {
    pub api_version: String,
    /// HorizontalPodAutoscaler or ScaledObject.
    pub kind: String,
    pub name: String,
    /// KEDA only; kept on round-trip, ignored by serin.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub primary_scaler_queries: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_scaler_replicas: Option<ScalerReplicas>,
}

/// Overrides of the primary scaler's bounds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalerReplicas {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
}

/// Labels and annotations for a generated object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct CustomMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Metadata keys on generated Services that serin leaves to others.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct UnmanagedMetadata {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<String>,
}

/// `spec.service`: the generated Services, VirtualService and DestinationRules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryService {
    /// Apex name; defaults to `targetRef.name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Defaults to `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// `tcp` switches the VirtualService to a TCP route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// PreferClose, PreferSameZone or PreferSameNode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
    /// Always serialised: Flagger's Go field has no `omitempty`.
    #[serde(default)]
    pub port_discovery: bool,
    /// ClusterIP None on the generated Services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headless: Option<bool>,
    /// HTTP route timeout (Go duration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Gateway API only; kept on round-trip, ignored by serin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_timeout: Option<String>,
    /// App Mesh only; kept on round-trip, ignored by serin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_name: Option<String>,
    /// App Mesh only; kept on round-trip, ignored by serin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// VirtualService hosts; the apex name is always added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// VirtualService gateways; `mesh` only when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Make the VirtualService a delegate (hosts and gateways must be empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation: Option<bool>,
    /// Gateway API parent refs; kept on round-trip, ignored by serin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema_helpers::preserve_object_list")]
    pub gateway_refs: Vec<serde_json::Value>,
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<istio::HTTPMatchRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<istio::HTTPRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<istio::HTTPRetry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<istio::Headers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<istio::CorsPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<istio::TrafficPolicy>,
    /// Gateway API request-mirror filters (not Istio mirroring, which is `analysis.mirror`);
    /// kept on round-trip, ignored by serin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema_helpers::preserve_object_list")]
    pub mirror: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apex: Option<CustomMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<CustomMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CustomMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmanaged_metadata: Option<UnmanagedMetadata>,
}

/// `spec.analysis`: how the new revision is judged and how traffic moves.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAnalysis {
    /// Tick period, Go duration; see [`CanaryAnalysis::interval()`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Number of failed checks before rollback; see [`CanaryAnalysis::threshold()`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<i32>,
    /// Checks to run for A/B testing and Blue/Green.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_weights: Option<Vec<i32>>,
    /// Weight step when shifting traffic back to the primary; 0 or absent means all at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_weight_promotion: Option<i32>,
    /// Mirror traffic to the canary (Blue/Green, or the first canary step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<bool>,
    /// Percentage of mirrored requests (written as VirtualService `mirrorPercentage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_weight: Option<i32>,
    /// Percentage of primary replicas that must be available; default 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_ready_threshold: Option<i32>,
    /// Percentage of canary replicas that must be available; default 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_ready_threshold: Option<i32>,
    /// A/B testing match conditions.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<istio::HTTPMatchRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<CanaryMetric>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<CanaryWebhook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<CanaryAlert>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

/// One metric check (`spec.analysis.metrics[]`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryMetric {
    pub name: String,
    /// PromQL range window; see [`CanaryMetric::interval()`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Deprecated: minimum for request-success-rate, maximum otherwise. Prefer `thresholdRange`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<CanaryThresholdRange>,
    /// Deprecated inline Prometheus query. Prefer `templateRef`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<CrossNamespaceObjectReference>,
    /// Values for `{{ variables.<key> }}` in the template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub template_variables: BTreeMap<String, String>,
    /// serin's addition: also judge this metric against the primary, statistically. The same
    /// query runs for the canary and, with `{{ target }}` set to `<target>-primary`, for the
    /// primary; the check fails when the canary is worse by more than the allowed degradation.
    /// A `thresholdRange` still applies when both are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<MetricComparison>,
    /// serin's addition: what a check without data means: `fail` (Flagger's behaviour, the
    /// default), `hold` (neither advance nor count a failure, up to the progress deadline) or
    /// `pass`. For `compare` "without data" includes fewer than `minSamples` values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_no_data: Option<OnNoData>,
}

/// `analysis.metrics[].compare`: the canary against the primary (serin's addition). Every field
/// is optional; see the methods for the defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricComparison {
    /// What the canary is compared with: `primary` (the default and only value for now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<CompareBaseline>,
    /// `higherIsWorse` or `lowerIsWorse`; default `lowerIsWorse` for request-success-rate,
    /// `higherIsWorse` otherwise (error rates, latencies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<CompareDirection>,
    /// How much worse than the primary's median the canary may be, in percent (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_degradation: Option<f64>,
    /// The same allowance in the metric's unit (default 0); the larger of the two applies. Use it
    /// when the primary's value is often 0, as for error counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tolerance: Option<f64>,
    /// Confidence, in percent, needed to fail the canary (default 98).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 99.99))]
    pub confidence: Option<f64>,
    /// Values needed on each side; with fewer the check has no data (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3, max = 1000))]
    pub min_samples: Option<i32>,
    /// How far back the values of each check go, Go duration (default 5m).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::crd::DURATION_PATTERN))]
    pub window: Option<String>,
    /// Resolution of the range query: one value per step, Go duration (default 15s). Keep it at
    /// or above Prometheus' scrape interval, or values repeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::crd::DURATION_PATTERN))]
    pub step: Option<String>,
}

/// What the canary is compared with: `primary` (the default), the workload that serves the
/// current release.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CompareBaseline {
    #[serde(rename = "primary")]
    Primary,
}

/// Which way the metric gets worse: `higherIsWorse` (error rates, latencies) or `lowerIsWorse`
/// (success rates, throughput). Default: `lowerIsWorse` for request-success-rate, else
/// `higherIsWorse`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CompareDirection {
    #[serde(rename = "higherIsWorse")]
    HigherIsWorse,
    #[serde(rename = "lowerIsWorse")]
    LowerIsWorse,
}

/// serin's addition: what a check without data means: `fail` (Flagger's behaviour, the default),
/// `hold` (neither advance nor count a failure, up to the progress deadline) or `pass`. For
/// `compare`, fewer than `minSamples` values count as no data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnNoData {
    /// A failed check, as in Flagger.
    #[default]
    #[serde(rename = "fail")]
    Fail,
    /// Neither advance nor count a failure, up to the progress deadline.
    #[serde(rename = "hold")]
    Hold,
    /// Treat as a passed check.
    #[serde(rename = "pass")]
    Pass,
}

impl OnNoData {
    pub fn as_str(self) -> &'static str {
        match self {
            OnNoData::Fail => "fail",
            OnNoData::Hold => "hold",
            OnNoData::Pass => "pass",
        }
    }
}

/// Accepted range of a metric value; either bound may be open.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CanaryThresholdRange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// One webhook (`spec.analysis.webhooks[]`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryWebhook {
    pub name: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<HookType>,
    pub url: String,
    /// Go duration; see [`CanaryWebhook::timeout()`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Extra attempts on connection errors, 5xx and 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    /// Skip TLS certificate verification.
    #[serde(rename = "disableTLS", skip_serializing_if = "Option::is_none")]
    pub disable_tls: Option<bool>,
    /// Suppress the gate-waiting alerts of this hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mute_alert: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Which alerts an `analysis.alerts[]` entry receives.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AlertSeverity {
    /// `severity: ""`. Flagger sends nothing to such an entry (a bug: its docs say "default info");
    /// serin treats it as `info`.
    #[serde(rename = "")]
    Unset,
    #[serde(rename = "info")]
    Info,
    #[serde(rename = "warn")]
    Warn,
    #[serde(rename = "error")]
    Error,
}

/// One alert route (`spec.analysis.alerts[]`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAlert {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<AlertSeverity>,
    pub provider_ref: CrossNamespaceObjectReference,
}

/// Cookie-based stickiness during a canary run (`spec.analysis.sessionAffinity`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    pub cookie_name: String,
    /// Must differ from `cookieName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_cookie_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    /// Seconds; see [`SessionAffinity::max_age()`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_site: Option<SameSite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// Observed state. Everything serin knows about a run lives here (and in the VirtualService).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// `""` (Flagger's zero value) reads as `None`.
    #[serde(
        default,
        deserialize_with = "empty_phase_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub phase: Option<CanaryPhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_checks: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<i32>,
    /// `configmap/<name>` or `secret/<name>` → checksum of its data.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tracked_configs: BTreeMap<String, String>,
    /// Hash of the pod template last analysed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_applied_spec: Option<String>,
    /// Hash of the pod template last promoted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_promoted_spec: Option<String>,
    /// Flagger ≥1.44 change fence; kept on round-trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_tracked_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity_cookie: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_session_affinity_cookie: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_session_affinity_cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<CanaryCondition>,
    // Flagger issue: https://github.com/fluxcd/flagger/issues/1810 (doc comments become the
    // CRD's descriptions, so the link stays out of them).
    /// serin's addition (Flagger #1810): the last value of each metric check.
    #[serde(
        rename = "serin.dev/metrics",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub serin_metrics: Vec<MetricCheckStatus>,
    /// serin's addition: the clocks of the current run, so that a restarted controller keeps the
    /// pace and the readiness deadlines where they were.
    #[serde(rename = "serin.dev/progress", skip_serializing_if = "Option::is_none")]
    pub serin_progress: Option<RunProgress>,
    /// serin's addition: a new revision that waits to start, in the rollout queue or frozen; its
    /// detection time keeps the queue's order across controller restarts.
    #[serde(rename = "serin.dev/pending", skip_serializing_if = "Option::is_none")]
    pub serin_pending: Option<PendingRun>,
}

/// `status["serin.dev/pending"]`: why a detected revision has not started its run yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingRun {
    /// When serin detected the revision; the queue serves the earliest first.
    pub since: Time,
    /// `Queued` (a concurrency cap holds it) or `Frozen` (a freeze window or annotation), or
    /// `Paused` (a run in progress held by a freeze with inProgress pause).
    pub reason: String,
    /// Its place in the queue, 1 being next; absent when frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i32>,
    /// The same text as the condition: the position and the limit, or the freeze and its end.
    pub message: String,
}

/// `status["serin.dev/progress"]`: timing state of the current run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunProgress {
    /// Scheduled time of the last analysis step; the next one is due an interval later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_step_time: Option<Time>,
    /// Since when serin has waited for the canary workload to become ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_waiting_since: Option<Time>,
    /// Since when serin has waited for the primary workload to become ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_waiting_since: Option<Time>,
    /// Traffic is mirrored to the canary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirrored: bool,
    /// Who paused the canary (`serin pause`); absent when it is not paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    /// The last request from `serin promote|abort|pause|resume|retry` that serin handled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<HandledRequest>,
    /// The last gate asked in this run and its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateRecord>,
    /// Since when a metric with `onNoData: hold` has found no data (the first analysis of the
    /// current stretch); the canary is rolled back once the stretch outlasts
    /// progressDeadlineSeconds, counted from here across restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_data_since: Option<Time>,
}

/// `status["serin.dev/progress"].request`: a person's request and serin's answer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandledRequest {
    /// The request's `serin.dev/requested-at` annotation.
    pub id: String,
    pub verb: String,
    pub by: String,
    /// False when the request did not apply in the canary's phase (the message says why).
    pub accepted: bool,
    pub message: String,
}

/// A gate's last answer (`status["serin.dev/progress"].gate`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateRecord {
    /// confirm-rollout, confirm-traffic-increase or confirm-promotion.
    #[serde(rename = "type")]
    pub type_: HookType,
    /// The webhook that answered non-2xx; absent once the gate opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
}

fn empty_phase_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CanaryPhase>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(other) => {
            CanaryPhase::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(other))
                .map(Some)
        }
    }
}

/// A status condition; Flagger writes one, of type `Promoted`, with the phase as reason.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The last observation of one metric check (`status["serin.dev/metrics"][]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricCheckStatus {
    pub name: String,
    /// Absent when the query returned no value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The rendered query that was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub checked_at: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The verdict: `pass`, `fail` or `noData` (then `onNoData` decided).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// With `compare`: the canary against the primary, as judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<MetricComparisonStatus>,
}

/// The last comparison of one metric with the primary (`compare`): the numbers that explain it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricComparisonStatus {
    /// The canary's median over the window; absent without values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<f64>,
    /// The primary's median over the window; absent without values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<f64>,
    /// Values used on each side (NaN and infinite values left out).
    pub canary_samples: u32,
    pub primary_samples: u32,
    /// How much worse the canary is, in percent of the primary's median (Hodges-Lehmann shift);
    /// negative when better. Absent when the primary's median is 0 or there are no values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degradation_percent: Option<f64>,
    /// The threshold: how much worse the canary may be, in the metric's unit.
    pub allowed: f64,
    /// One-sided p-value of "worse by more than allowed"; the check fails below `alpha`.
    /// Absent when there were too few values to test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// 1 − confidence.
    pub alpha: f64,
    /// `pass`, `fail` or `notEnoughData`.
    pub result: String,
}

impl Canary {
    /// Apex Service / VirtualService name.
    pub fn apex_name(&self) -> String {
        self.spec.service.apex_name(&self.spec.target_ref.name)
    }

    /// The Canary with the additions kept in [`STATUS_ADDITIONS_ANNOTATION`] put back into its
    /// status, so that the controller and the CLI read them the same under either CRD. Status
    /// fields win over the annotation: under serin's CRD the annotation is a leftover.
    pub fn with_stored_additions(mut self) -> Canary {
        let Some(additions) = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(STATUS_ADDITIONS_ANNOTATION))
            .and_then(|text| serde_json::from_str::<StatusAdditions>(text).ok())
        else {
            return self;
        };
        let status = self.status.get_or_insert_with(Default::default);
        if status.serin_progress.is_none()
            && status.serin_metrics.is_empty()
            && status.serin_pending.is_none()
        {
            status.serin_progress = additions.progress;
            status.serin_metrics = additions.metrics;
            status.serin_pending = additions.pending;
        }
        self
    }
}

/// Where serin keeps its status additions when the Canary CRD is Flagger's, whose status schema
/// prunes fields it does not know.
pub const STATUS_ADDITIONS_ANNOTATION: &str = "serin.dev/status";

/// serin's status additions as [`STATUS_ADDITIONS_ANNOTATION`] holds them (JSON).
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
pub struct StatusAdditions {
    #[serde(rename = "serin.dev/progress", skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunProgress>,
    #[serde(
        rename = "serin.dev/metrics",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub metrics: Vec<MetricCheckStatus>,
    #[serde(rename = "serin.dev/pending", skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRun>,
}

impl CanarySpec {
    /// `analysis`, else the deprecated `canaryAnalysis` (Flagger's `GetAnalysis()`).
    pub fn analysis(&self) -> Option<&CanaryAnalysis> {
        self.analysis.as_ref().or(self.canary_analysis.as_ref())
    }

    /// Deadline for the canary and primary to become ready (default 600).
    pub fn progress_deadline_seconds(&self) -> i32 {
        self.progress_deadline_seconds
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS)
    }

    /// Strategy of the analysis; a missing analysis counts as the canary strategy.
    pub fn strategy(&self) -> Strategy {
        self.analysis()
            .map(CanaryAnalysis::strategy)
            .unwrap_or(Strategy::Canary)
    }

    pub fn skip_analysis(&self) -> bool {
        self.skip_analysis.unwrap_or(false)
    }

    pub fn revert_on_deletion(&self) -> bool {
        self.revert_on_deletion.unwrap_or(false)
    }

    pub fn suspend(&self) -> bool {
        self.suspend.unwrap_or(false)
    }
}

impl CanaryAnalysis {
    /// Tick period: 60s when absent or unparsable, at least 10s (`GetAnalysisInterval`).
    pub fn interval(&self) -> Duration {
        match self.interval.as_deref().map(parse_go_duration) {
            Some(Ok(d)) if d < MIN_ANALYSIS_INTERVAL => MIN_ANALYSIS_INTERVAL,
            Some(Ok(d)) => d,
            _ => DEFAULT_ANALYSIS_INTERVAL,
        }
    }

    /// Failed checks before rollback; values ≤ 0 mean 1.
    pub fn threshold(&self) -> i32 {
        match self.threshold {
            Some(t) if t > 0 => t,
            _ => 1,
        }
    }

    pub fn iterations(&self) -> i32 {
        self.iterations.unwrap_or(0)
    }

    /// With stepWeights: min(100, last step); else maxWeight, or 100 when unset or 0.
    pub fn max_weight(&self) -> i32 {
        if let Some(last) = self.step_weights.as_ref().and_then(|s| s.last()) {
            return (*last).min(100);
        }
        match self.max_weight {
            Some(w) if w > 0 => w,
            _ => 100,
        }
    }

    pub fn step_weight(&self) -> i32 {
        self.step_weight.unwrap_or(0)
    }

    pub fn step_weights(&self) -> &[i32] {
        self.step_weights.as_deref().unwrap_or(&[])
    }

    /// 0 means "route everything back to the primary at once".
    pub fn step_weight_promotion(&self) -> i32 {
        self.step_weight_promotion.unwrap_or(0)
    }

    pub fn mirror(&self) -> bool {
        self.mirror.unwrap_or(false)
    }

    pub fn primary_ready_threshold(&self) -> i32 {
        self.primary_ready_threshold.unwrap_or(100)
    }

    pub fn canary_ready_threshold(&self) -> i32 {
        self.canary_ready_threshold.unwrap_or(100)
    }

    /// match + iterations → A/B; iterations → Blue/Green; otherwise canary (`DeploymentStrategy()`).
    pub fn strategy(&self) -> Strategy {
        let iterations = self.iterations() > 0;
        if iterations && !self.match_.is_empty() {
            Strategy::ABTesting
        } else if iterations {
            Strategy::BlueGreen
        } else {
            Strategy::Canary
        }
    }
}

impl CanaryService {
    /// Apex Service and VirtualService name: `service.name`, else the target's name.
    pub fn apex_name(&self, target: &str) -> String {
        match self.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => target.to_string(),
        }
    }

    pub fn primary_name(&self, target: &str) -> String {
        format!("{}-primary", self.apex_name(target))
    }

    pub fn canary_name(&self, target: &str) -> String {
        format!("{}-canary", self.apex_name(target))
    }

    /// Service port name (default `http`).
    pub fn port_name(&self) -> &str {
        match self.port_name.as_deref() {
            Some(n) if !n.is_empty() => n,
            _ => "http",
        }
    }

    /// Container port the Services target (default: `port`).
    pub fn target_port(&self) -> IntOrString {
        self.target_port
            .clone()
            .unwrap_or(IntOrString::Int(self.port))
    }

    pub fn delegation(&self) -> bool {
        self.delegation.unwrap_or(false)
    }
}

impl CanaryMetric {
    /// PromQL range window (default "1m").
    pub fn interval(&self) -> &str {
        match self.interval.as_deref() {
            Some(i) if !i.is_empty() => i,
            _ => DEFAULT_METRIC_INTERVAL,
        }
    }

    /// request-success-rate or request-duration, evaluated with serin's Istio queries.
    pub fn is_builtin(&self) -> bool {
        BUILTIN_METRICS.contains(&self.name.as_str())
    }

    /// What a check without data means (default `fail`).
    pub fn on_no_data(&self) -> OnNoData {
        self.on_no_data.unwrap_or_default()
    }

    /// The statistical criteria of `compare`, defaulted; `None` without `compare`.
    pub fn compare_criteria(&self) -> Option<serin_core::compare::Criteria> {
        self.compare.as_ref().map(|c| c.criteria(&self.name))
    }
}

/// `compare.maxDegradation` default, in percent.
pub const DEFAULT_COMPARE_MAX_DEGRADATION: f64 = 10.0;
/// `compare.confidence` default, in percent (Kayenta's default confidence level).
pub const DEFAULT_COMPARE_CONFIDENCE: f64 = 98.0;
/// `compare.minSamples` default.
pub const DEFAULT_COMPARE_MIN_SAMPLES: usize = 10;
/// `compare.window` default.
pub const DEFAULT_COMPARE_WINDOW: Duration = Duration::from_secs(300);
/// `compare.step` default: Prometheus' usual scrape interval, so that values do not repeat.
pub const DEFAULT_COMPARE_STEP: Duration = Duration::from_secs(15);

impl MetricComparison {
    /// The direction given, else the one that fits the metric: a success rate gets worse as it
    /// falls, everything else (errors, latency) as it rises.
    pub fn direction(&self, metric: &str) -> serin_core::compare::Direction {
        use serin_core::compare::Direction;
        match self.direction {
            Some(CompareDirection::HigherIsWorse) => Direction::HigherIsWorse,
            Some(CompareDirection::LowerIsWorse) => Direction::LowerIsWorse,
            None if metric == BUILTIN_METRICS[0] => Direction::LowerIsWorse,
            None => Direction::HigherIsWorse,
        }
    }

    pub fn max_degradation(&self) -> f64 {
        self.max_degradation
            .filter(|v| v.is_finite() && *v >= 0.0)
            .unwrap_or(DEFAULT_COMPARE_MAX_DEGRADATION)
    }

    pub fn tolerance(&self) -> f64 {
        self.tolerance
            .filter(|v| v.is_finite() && *v >= 0.0)
            .unwrap_or(0.0)
    }

    /// In percent; values outside 50..100 fall back to the default.
    pub fn confidence(&self) -> f64 {
        self.confidence
            .filter(|v| (50.0..100.0).contains(v))
            .unwrap_or(DEFAULT_COMPARE_CONFIDENCE)
    }

    pub fn min_samples(&self) -> usize {
        match self.min_samples {
            Some(n) if n >= 1 => n as usize,
            _ => DEFAULT_COMPARE_MIN_SAMPLES,
        }
    }

    /// Absent or unparsable: 5m (`validate()` reports unparsable values).
    pub fn window(&self) -> Duration {
        positive_duration(self.window.as_deref()).unwrap_or(DEFAULT_COMPARE_WINDOW)
    }

    /// Absent or unparsable: 15s.
    pub fn step(&self) -> Duration {
        positive_duration(self.step.as_deref()).unwrap_or(DEFAULT_COMPARE_STEP)
    }

    /// The defaulted criteria for the metric named `metric`.
    pub fn criteria(&self, metric: &str) -> serin_core::compare::Criteria {
        serin_core::compare::Criteria {
            direction: self.direction(metric),
            max_degradation: self.max_degradation() / 100.0,
            tolerance: self.tolerance(),
            alpha: 1.0 - self.confidence() / 100.0,
            min_samples: self.min_samples(),
        }
    }
}

fn positive_duration(text: Option<&str>) -> Option<Duration> {
    text.and_then(|t| parse_go_duration(t).ok())
        .filter(|d| !d.is_zero())
}

impl CanaryWebhook {
    /// Per-attempt HTTP timeout: 10s when absent, shorter than 2 characters, or unparsable
    /// (Flagger errors on unparsable values; `validate()` reports them).
    pub fn timeout(&self) -> Duration {
        match self.timeout.as_deref() {
            Some(t) if t.len() >= 2 => parse_go_duration(t).unwrap_or(DEFAULT_WEBHOOK_TIMEOUT),
            _ => DEFAULT_WEBHOOK_TIMEOUT,
        }
    }

    /// The hook type; absent and `""` both mean `rollout`.
    pub fn hook_type(&self) -> HookType {
        match self.type_ {
            None | Some(HookType::Unset) => HookType::Rollout,
            Some(t) => t,
        }
    }

    pub fn retries(&self) -> i32 {
        self.retries.unwrap_or(0).max(0)
    }

    pub fn disable_tls(&self) -> bool {
        self.disable_tls.unwrap_or(false)
    }

    pub fn mute_alert(&self) -> bool {
        self.mute_alert.unwrap_or(false)
    }
}

impl CanaryAlert {
    /// Absent and `""` mean `info` (Flagger documents that; its code sends nothing instead).
    pub fn severity(&self) -> AlertSeverity {
        match self.severity {
            None | Some(AlertSeverity::Unset) => AlertSeverity::Info,
            Some(s) => s,
        }
    }
}

impl SessionAffinity {
    /// Cookie lifetime in seconds (default 86400).
    pub fn max_age(&self) -> i32 {
        self.max_age.unwrap_or(DEFAULT_SESSION_AFFINITY_MAX_AGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_annotation(status: serde_json::Value, text: &str) -> Canary {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "annotations": {STATUS_ADDITIONS_ANNOTATION: text}},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn stored_additions_fill_a_status_without_them_and_never_override_it() {
        let text = r#"{"serin.dev/progress": {"pausedBy": "alice"},
                       "serin.dev/pending": {"since": "2026-01-01T00:00:00Z", "reason": "Queued",
                                             "message": "queued"}}"#;
        // Flagger's CRD: the status has no additions, the annotation fills them in.
        let c = with_annotation(serde_json::json!({"phase": "Succeeded"}), text)
            .with_stored_additions();
        let st = c.status.unwrap();
        assert_eq!(
            st.serin_progress.unwrap().paused_by.as_deref(),
            Some("alice")
        );
        assert_eq!(st.serin_pending.unwrap().reason, "Queued");
        // serin's CRD: the status has them and a leftover annotation does not win.
        let c = with_annotation(
            serde_json::json!({"phase": "Progressing",
                               "serin.dev/progress": {"pausedBy": "bob"}}),
            text,
        )
        .with_stored_additions();
        let st = c.status.unwrap();
        assert_eq!(st.serin_progress.unwrap().paused_by.as_deref(), Some("bob"));
        assert!(st.serin_pending.is_none());
        // An unreadable annotation changes nothing.
        let c = with_annotation(serde_json::json!({"phase": "Succeeded"}), "{not json")
            .with_stored_additions();
        assert!(c.status.unwrap().serin_progress.is_none());
    }

    fn analysis() -> CanaryAnalysis {
        CanaryAnalysis::default()
    }

    #[test]
    fn analysis_interval_defaults_and_clamps() {
        let cases: &[(Option<&str>, u64)] = &[
            (None, 60),
            (Some(""), 60),
            (Some("nonsense"), 60),
            (Some("1m"), 60),
            (Some("2m30s"), 150),
            (Some("5s"), 10),
            (Some("0"), 10),
            (Some("10s"), 10),
            (Some("11s"), 11),
        ];
        for (input, want) in cases {
            let a = CanaryAnalysis {
                interval: input.map(str::to_string),
                ..analysis()
            };
            assert_eq!(a.interval(), Duration::from_secs(*want), "{input:?}");
        }
    }

    #[test]
    fn threshold_and_weights() {
        for (t, want) in [(None, 1), (Some(-3), 1), (Some(0), 1), (Some(4), 4)] {
            let a = CanaryAnalysis {
                threshold: t,
                ..analysis()
            };
            assert_eq!(a.threshold(), want, "{t:?}");
        }
        type Case = (Option<i32>, Option<Vec<i32>>, i32);
        let cases: &[Case] = &[
            (None, None, 100),
            (Some(0), None, 100),
            (Some(50), None, 50),
            (Some(50), Some(vec![10, 20, 30]), 30),
            (None, Some(vec![10, 150]), 100),
            (Some(40), Some(vec![]), 40),
        ];
        for (max, steps, want) in cases {
            let a = CanaryAnalysis {
                max_weight: *max,
                step_weights: steps.clone(),
                ..analysis()
            };
            assert_eq!(a.max_weight(), *want, "{max:?} {steps:?}");
        }
        let a = analysis();
        assert_eq!(
            (
                a.primary_ready_threshold(),
                a.canary_ready_threshold(),
                a.step_weight_promotion(),
                a.mirror()
            ),
            (100, 100, 0, false)
        );
    }

    #[test]
    fn strategy_follows_flagger() {
        let with = |iterations: Option<i32>, matched: bool| CanaryAnalysis {
            iterations,
            match_: if matched {
                vec![istio::HTTPMatchRequest::default()]
            } else {
                vec![]
            },
            ..analysis()
        };
        assert_eq!(with(Some(5), true).strategy(), Strategy::ABTesting);
        assert_eq!(with(Some(5), false).strategy(), Strategy::BlueGreen);
        assert_eq!(with(None, true).strategy(), Strategy::Canary);
        assert_eq!(with(Some(0), false).strategy(), Strategy::Canary);
        assert_eq!(Strategy::ABTesting.as_str(), "ab-testing");
        assert_eq!(Strategy::BlueGreen.as_str(), "blue-green");
        assert_eq!(CanarySpec::default().strategy(), Strategy::Canary);
    }

    #[test]
    fn spec_defaults_and_deprecated_alias() {
        let mut spec = CanarySpec::default();
        assert_eq!(spec.progress_deadline_seconds(), 600);
        assert!(spec.analysis().is_none());
        spec.canary_analysis = Some(CanaryAnalysis {
            threshold: Some(7),
            ..analysis()
        });
        assert_eq!(spec.analysis().map(|a| a.threshold()), Some(7));
        spec.analysis = Some(CanaryAnalysis {
            threshold: Some(2),
            ..analysis()
        });
        assert_eq!(
            spec.analysis().map(|a| a.threshold()),
            Some(2),
            "analysis wins"
        );
        spec.progress_deadline_seconds = Some(30);
        assert_eq!(spec.progress_deadline_seconds(), 30);
        assert!(!spec.skip_analysis() && !spec.suspend() && !spec.revert_on_deletion());
    }

    #[test]
    fn service_names_and_ports() {
        let mut s = CanaryService {
            port: 9898,
            ..Default::default()
        };
        assert_eq!(s.apex_name("podinfo"), "podinfo");
        assert_eq!(s.primary_name("podinfo"), "podinfo-primary");
        assert_eq!(s.canary_name("podinfo"), "podinfo-canary");
        assert_eq!(s.port_name(), "http");
        assert_eq!(s.target_port(), IntOrString::Int(9898));
        s.name = Some("frontend".into());
        s.port_name = Some("grpc".into());
        s.target_port = Some(IntOrString::String("web".into()));
        assert_eq!(s.apex_name("podinfo"), "frontend");
        assert_eq!(s.canary_name("podinfo"), "frontend-canary");
        assert_eq!(s.port_name(), "grpc");
        assert_eq!(s.target_port(), IntOrString::String("web".into()));
        s.name = Some(String::new());
        assert_eq!(s.apex_name("podinfo"), "podinfo");
    }

    #[test]
    fn metric_webhook_alert_affinity_defaults() {
        let m = CanaryMetric {
            name: "request-duration".into(),
            ..Default::default()
        };
        assert_eq!(m.interval(), "1m");
        assert!(m.is_builtin());
        let m = CanaryMetric {
            name: "custom".into(),
            interval: Some("30s".into()),
            ..Default::default()
        };
        assert_eq!((m.interval(), m.is_builtin()), ("30s", false));

        let hook = |t: Option<&str>| CanaryWebhook {
            timeout: t.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(hook(None).timeout(), Duration::from_secs(10));
        assert_eq!(
            hook(Some("5")).timeout(),
            Duration::from_secs(10),
            "< 2 chars"
        );
        assert_eq!(hook(Some("5s")).timeout(), Duration::from_secs(5));
        assert_eq!(hook(Some("1m")).timeout(), Duration::from_secs(60));
        assert_eq!(hook(Some("xx")).timeout(), Duration::from_secs(10));
        assert_eq!(hook(None).hook_type(), HookType::Rollout);
        let mut h = hook(None);
        h.type_ = Some(HookType::Unset);
        assert_eq!(h.hook_type(), HookType::Rollout);
        h.type_ = Some(HookType::PreRollout);
        assert_eq!(h.hook_type(), HookType::PreRollout);
        h.retries = Some(-2);
        assert_eq!(h.retries(), 0);

        let mut alert = CanaryAlert::default();
        assert_eq!(alert.severity(), AlertSeverity::Info);
        alert.severity = Some(AlertSeverity::Unset);
        assert_eq!(alert.severity(), AlertSeverity::Info);
        alert.severity = Some(AlertSeverity::Error);
        assert_eq!(alert.severity(), AlertSeverity::Error);

        assert_eq!(SessionAffinity::default().max_age(), 86400);
        let r = CrossNamespaceObjectReference {
            name: "t".into(),
            namespace: None,
        };
        assert_eq!(r.namespace_or("test"), "test");
    }

    #[test]
    fn compare_defaults_and_wire_names() {
        use serin_core::compare::Direction;
        let m: CanaryMetric = serde_json::from_value(serde_json::json!({
            "name": "request-success-rate", "compare": {}, "onNoData": "hold"
        }))
        .unwrap();
        assert_eq!(m.on_no_data(), OnNoData::Hold);
        let c = m.compare_criteria().unwrap();
        assert_eq!(c.direction, Direction::LowerIsWorse, "a success rate falls");
        assert_eq!(
            (c.max_degradation, c.tolerance, c.min_samples),
            (0.1, 0.0, 10)
        );
        assert!((c.alpha - 0.02).abs() < 1e-12);
        let cmp = m.compare.clone().unwrap();
        assert_eq!(
            (cmp.window(), cmp.step()),
            (Duration::from_secs(300), Duration::from_secs(15))
        );
        assert_eq!(CanaryMetric::default().on_no_data(), OnNoData::Fail);
        assert_eq!(CanaryMetric::default().compare_criteria(), None);

        let m: CanaryMetric = serde_json::from_value(serde_json::json!({
            "name": "request-duration",
            "compare": {"baseline": "primary", "direction": "lowerIsWorse", "maxDegradation": 5,
                        "tolerance": 2.5, "confidence": 95, "minSamples": 20,
                        "window": "2m", "step": "5s"},
            "onNoData": "pass"
        }))
        .unwrap();
        let c = m.compare_criteria().unwrap();
        assert_eq!(c.direction, Direction::LowerIsWorse);
        assert_eq!(
            (c.max_degradation, c.tolerance, c.min_samples),
            (0.05, 2.5, 20)
        );
        assert!((c.alpha - 0.05).abs() < 1e-12);
        let cmp = m.compare.clone().unwrap();
        assert_eq!(
            (cmp.window(), cmp.step()),
            (Duration::from_secs(120), Duration::from_secs(5))
        );
        let back = serde_json::to_value(&m).unwrap();
        assert_eq!(back["compare"]["direction"], "lowerIsWorse");
        assert_eq!(back["onNoData"], "pass");
        // Absent fields stay absent: a Flagger manifest round-trips unchanged.
        let plain = serde_json::to_value(CanaryMetric {
            name: "x".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(plain, serde_json::json!({"name": "x"}));
        let dur = MetricComparison::default();
        assert_eq!(dur.direction("request-duration"), Direction::HigherIsWorse);
        assert_eq!(dur.direction("my-template"), Direction::HigherIsWorse);
        let bad = MetricComparison {
            window: Some("soon".into()),
            confidence: Some(120.0),
            min_samples: Some(0),
            ..Default::default()
        };
        assert_eq!(bad.window(), Duration::from_secs(300));
        assert_eq!(bad.confidence(), 98.0);
        assert_eq!(bad.min_samples(), 10);
    }

    #[test]
    fn wire_names_and_phase() {
        let status: CanaryStatus = serde_json::from_value(serde_json::json!({
            "phase": "", "canaryWeight": 10,
            "serin.dev/metrics": [{"name": "m", "checkedAt": "2024-01-01T00:00:00Z"}]
        }))
        .unwrap();
        assert_eq!(status.phase, None);
        assert_eq!(status.serin_metrics.len(), 1);
        let status: CanaryStatus =
            serde_json::from_value(serde_json::json!({"phase": "WaitingPromotion"})).unwrap();
        assert_eq!(status.phase, Some(CanaryPhase::WaitingPromotion));
        assert!(
            serde_json::from_value::<CanaryStatus>(serde_json::json!({"phase": "Nope"})).is_err()
        );

        let svc = serde_json::to_value(CanaryService {
            port: 80,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(svc, serde_json::json!({"port": 80, "portDiscovery": false}));
        let hook = serde_json::to_value(CanaryWebhook {
            name: "a".into(),
            url: "http://x".into(),
            disable_tls: Some(true),
            type_: Some(HookType::ConfirmTrafficIncrease),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            hook,
            serde_json::json!({"name": "a", "url": "http://x", "disableTLS": true,
                               "type": "confirm-traffic-increase"})
        );
    }
}
