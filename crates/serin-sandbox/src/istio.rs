//! Istio's networking API as CRDs (VirtualService, DestinationRule, Gateway), written for the
//! project since no Istio can be installed here. Names, versions, short names, categories and
//! printer columns follow Istio's own CRDs; the schemas are open, as serin only stores and reads
//! these objects and the mesh simulator plays Envoy's part.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;

/// The CRDs as YAML, one document each.
pub const CRDS_YAML: &str = include_str!("istio-crds.yaml");

/// The parsed CRDs.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, serde_yaml_ng::Error> {
    serde_yaml_ng::Deserializer::from_str(CRDS_YAML)
        .map(CustomResourceDefinition::deserialize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_networking_crds_like_istios() {
        let crds = crds().unwrap();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "virtualservices.networking.istio.io",
                "destinationrules.networking.istio.io",
                "gateways.networking.istio.io"
            ]
        );
        for crd in &crds {
            let s = &crd.spec;
            assert_eq!(s.group, "networking.istio.io");
            assert_eq!(s.scope, "Namespaced");
            assert_eq!(
                s.names.categories.as_deref().unwrap(),
                ["istio-io", "networking-istio-io"]
            );
            let served: Vec<_> = s
                .versions
                .iter()
                .filter(|v| v.served)
                .map(|v| v.name.as_str())
                .collect();
            assert!(
                served.contains(&"v1beta1") && served.contains(&"v1"),
                "{served:?}"
            );
            assert_eq!(s.versions.iter().filter(|v| v.storage).count(), 1);
            for v in &s.versions {
                let schema = v
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap();
                let props = schema.properties.as_ref().unwrap();
                for field in ["spec", "status"] {
                    assert_eq!(
                        props[field].x_kubernetes_preserve_unknown_fields,
                        Some(true),
                        "{field}"
                    );
                }
                assert!(v.subresources.as_ref().unwrap().status.is_some());
            }
        }
        let columns = |i: usize| -> Vec<(String, String)> {
            crds[i].spec.versions[0]
                .additional_printer_columns
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|c| (c.name.clone(), c.json_path.clone()))
                .collect()
        };
        assert_eq!(
            columns(0)[..2],
            [
                ("Gateways".to_string(), ".spec.gateways".to_string()),
                ("Hosts".to_string(), ".spec.hosts".to_string())
            ]
        );
        assert_eq!(
            columns(1)[0],
            ("Host".to_string(), ".spec.host".to_string())
        );
        assert_eq!(crds[0].spec.names.short_names.as_deref().unwrap(), ["vs"]);
        assert_eq!(crds[1].spec.names.short_names.as_deref().unwrap(), ["dr"]);
        assert_eq!(crds[2].spec.names.short_names.as_deref().unwrap(), ["gw"]);
    }
}
