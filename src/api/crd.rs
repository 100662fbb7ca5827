//! CRD generation. Placeholder until the API types land.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The three serin CRDs (Canary, MetricTemplate, AlertProvider), as `serin crds` prints them.
pub fn all() -> Vec<CustomResourceDefinition> {
    Vec::new()
}

/// All CRDs as one multi-document YAML stream (the content of `crds/`).
pub fn all_yaml() -> String {
    String::new()
}
