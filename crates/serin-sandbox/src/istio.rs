//! Istio's own CRDs, as Istio publishes them: the generated file of the `istio.io/api` module
//! (every CRD with its OpenAPI schema and CEL validation rules), fetched into the cache by
//! `serin-sandbox setup`. Installed as they are, so the API server judges every VirtualService
//! and DestinationRule serin writes exactly as a cluster with Istio does.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;

/// The CRDs the sandbox, the mesh simulator and serin need from the file.
pub const REQUIRED_CRDS: [&str; 3] = [
    "virtualservices.networking.istio.io",
    "destinationrules.networking.istio.io",
    "gateways.networking.istio.io",
];

/// Every CRD of the file; empty documents (between `---` separators) are skipped.
pub fn parse_crds(text: &str) -> Result<Vec<CustomResourceDefinition>, serde_yaml_ng::Error> {
    let mut crds = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_yaml_ng::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        crds.push(serde_yaml_ng::from_value(value)?);
    }
    Ok(crds)
}

/// The CRDs of the cached file (`setup::locate()`'s `istio_crds`).
pub fn crds(path: &Path) -> Result<Vec<CustomResourceDefinition>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read Istio's CRDs at {}: {e}", path.display()))?;
    parse_crds(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_documents_are_skipped() {
        let text = "# generated\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: a.x.io\nspec:\n  group: x.io\n  scope: Namespaced\n  names: {plural: a, kind: A}\n  versions: []\n---\n";
        let crds = parse_crds(text).unwrap();
        assert_eq!(crds.len(), 1);
        assert_eq!(crds[0].metadata.name.as_deref(), Some("a.x.io"));
        assert!(parse_crds("kind: [").is_err());
    }
}
