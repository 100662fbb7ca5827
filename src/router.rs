//! Desired Services, DestinationRules and the VirtualService of a canary (flagger-compat.md
//! §4.2–4.3), built as plain values from the Canary and its progress. The shell compares them with
//! the watch cache and applies them with server-side apply only when they differ.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::api::istio::{HTTPMatchRequest, StringMatch};
use crate::api::{Canary, CustomMetadata, Strategy};
use crate::rollout::Routes;
use crate::workload::SelectorLabel;

pub const ISTIO_GROUP: &str = "networking.istio.io";
pub const ISTIO_VERSION: &str = "v1beta1";

/// A port found on the target's containers with `portDiscovery`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredPort {
    pub name: String,
    pub port: i32,
}

/// Container ports other than the main one, named as Flagger names them; the sidecar containers
/// `istio-proxy` and `envoy` are skipped.
pub fn discover_ports(
    pod: &k8s_openapi::api::core::v1::PodSpec,
    main_port: i32,
) -> Vec<DiscoveredPort> {
    let mut out: Vec<DiscoveredPort> = Vec::new();
    for c in &pod.containers {
        if c.name == "istio-proxy" || c.name == "envoy" {
            continue;
        }
        for (i, p) in c.ports.iter().flatten().enumerate() {
            if p.container_port == main_port || out.iter().any(|d| d.port == p.container_port) {
                continue;
            }
            let name = p
                .name
                .clone()
                .unwrap_or_else(|| format!("tcp-{}-{i}", c.name));
            out.push(DiscoveredPort {
                name,
                port: p.container_port,
            });
        }
    }
    out
}

/// Everything the builders need besides the Canary.
pub struct RouterInputs<'a> {
    pub canary: &'a Canary,
    pub namespace: &'a str,
    pub selector: &'a SelectorLabel,
    pub owner: OwnerReference,
    pub discovered: &'a [DiscoveredPort],
}

impl RouterInputs<'_> {
    fn apex(&self) -> String {
        self.canary.apex_name()
    }

    fn meta(&self, name: String, custom: Option<&CustomMetadata>) -> ObjectMeta {
        let labels = custom.map(|c| c.labels.clone()).unwrap_or_default();
        let annotations: BTreeMap<String, String> = custom
            .map(|c| c.annotations.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.contains("toolkit.fluxcd.io"))
            .collect();
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_string()),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }
}

/// The three Services: `<apex>-canary` (the target's pods), `<apex>-primary` and `<apex>` (both
/// the primary's pods). Every port carries `protocol: TCP` (required by server-side apply on 1.20).
pub fn desired_services(inp: &RouterInputs<'_>) -> Vec<Service> {
    let svc = &inp.canary.spec.service;
    let apex = inp.apex();
    let primary_value = format!("{}-primary", inp.selector.value);
    let mut ports = vec![ServicePort {
        name: Some(svc.port_name().to_string()),
        port: svc.port,
        target_port: Some(svc.target_port()),
        protocol: Some("TCP".into()),
        app_protocol: svc.app_protocol.clone(),
        ..Default::default()
    }];
    if svc.port_discovery {
        for d in inp.discovered {
            ports.push(ServicePort {
                name: Some(d.name.clone()),
                port: d.port,
                target_port: Some(IntOrString::Int(d.port)),
                protocol: Some("TCP".into()),
                ..Default::default()
            });
        }
    }
    let build = |name: String, selector_value: &str, custom: Option<&CustomMetadata>| {
        let mut meta = inp.meta(name.clone(), custom);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(inp.selector.key.clone(), name);
        Service {
            metadata: meta,
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(BTreeMap::from([(
                    inp.selector.key.clone(),
                    selector_value.to_string(),
                )])),
                ports: Some(ports.clone()),
                cluster_ip: svc.headless.unwrap_or(false).then(|| "None".to_string()),
                traffic_distribution: svc.traffic_distribution.clone(),
                ..Default::default()
            }),
            status: None,
        }
    };
    vec![
        build(
            format!("{apex}-canary"),
            &inp.selector.value,
            svc.canary.as_ref(),
        ),
        build(
            format!("{apex}-primary"),
            &primary_value,
            svc.primary.as_ref(),
        ),
        build(apex, &primary_value, svc.apex.as_ref()),
    ]
}

/// The two DestinationRules, each carrying `service.trafficPolicy`.
pub fn desired_destination_rules(inp: &RouterInputs<'_>) -> Vec<Value> {
    let apex = inp.apex();
    let policy = inp
        .canary
        .spec
        .service
        .traffic_policy
        .as_ref()
        .and_then(|p| serde_json::to_value(p).ok());
    ["canary", "primary"]
        .into_iter()
        .map(|which| {
            let name = format!("{apex}-{which}");
            let mut spec = json!({ "host": name });
            if let Some(p) = &policy {
                spec["trafficPolicy"] = p.clone();
            }
            json!({
                "apiVersion": format!("{ISTIO_GROUP}/{ISTIO_VERSION}"),
                "kind": "DestinationRule",
                "metadata": meta_json(&inp.meta(name, None)),
                "spec": spec,
            })
        })
        .collect()
}

fn meta_json(meta: &ObjectMeta) -> Value {
    serde_json::to_value(meta).unwrap_or_else(|_| json!({}))
}

/// Istio has no `suffix` matcher; Flagger's A/B header suffix becomes an anchored regex.
fn istio_string_match(m: &StringMatch) -> StringMatch {
    match &m.suffix {
        Some(suffix) if m.exact.is_none() && m.prefix.is_none() && m.regex.is_none() => {
            StringMatch {
                regex: Some(format!(".*{}", regex::escape(suffix))),
                ..Default::default()
            }
        }
        _ => StringMatch {
            suffix: None,
            ..m.clone()
        },
    }
}

fn istio_match(m: &HTTPMatchRequest) -> HTTPMatchRequest {
    let mut m = m.clone();
    for v in m.headers.values_mut() {
        *v = istio_string_match(v);
    }
    for v in m.query_params.values_mut() {
        *v = istio_string_match(v);
    }
    m
}

/// A/B matches: every analysis match combined with every service match, the headers, query
/// parameters and source labels coming from the analysis match (Flagger's `mergeMatchConditions`).
pub fn ab_matches(
    analysis: &[HTTPMatchRequest],
    service: &[HTTPMatchRequest],
) -> Vec<HTTPMatchRequest> {
    if service.is_empty() {
        return analysis.iter().map(istio_match).collect();
    }
    let mut out = Vec::new();
    for a in analysis {
        for s in service {
            let mut m = s.clone();
            m.headers = a.headers.clone();
            m.query_params = a.query_params.clone();
            m.source_labels = a.source_labels.clone();
            out.push(istio_match(&m));
        }
    }
    out
}

/// The VirtualService `<apex>` with the given routes.
pub fn desired_virtual_service(inp: &RouterInputs<'_>, routes: Routes) -> Value {
    let canary = inp.canary;
    let svc = &canary.spec.service;
    let apex = inp.apex();
    let primary_host = format!("{apex}-primary");
    let canary_host = format!("{apex}-canary");
    let delegation = svc.delegation();
    let gateways: Vec<String> = if delegation {
        vec![]
    } else if svc.gateways.is_empty() {
        vec!["mesh".into()]
    } else {
        svc.gateways.clone()
    };
    let mut hosts: Vec<String> = if delegation {
        vec![]
    } else {
        svc.hosts.clone()
    };
    if !delegation && !hosts.iter().any(|h| *h == apex || h == "*") {
        hosts.push(apex.clone());
    }
    let port = (svc.port_discovery
        && (delegation || gateways.first().map(String::as_str) != Some("mesh")))
    .then_some(svc.port);
    let dest = |host: &str, weight: Option<u32>| {
        let mut d = json!({ "destination": { "host": host } });
        if let Some(p) = port {
            d["destination"]["port"] = json!({ "number": p });
        }
        if let Some(w) = weight {
            d["weight"] = json!(w);
        }
        d
    };
    let weighted = vec![
        dest(&primary_host, Some(routes.primary)),
        dest(&canary_host, Some(routes.canary)),
    ];

    let mut spec = json!({});
    if svc.app_protocol.as_deref() == Some("tcp") {
        let mut route = json!({ "route": weighted });
        route["match"] = json!([{ "port": svc.port }]);
        spec["tcp"] = json!([route]);
    } else {
        let base = |matches: &[HTTPMatchRequest], route: Vec<Value>| {
            let mut r = json!({});
            if !matches.is_empty() {
                r["match"] = serde_json::to_value(matches).unwrap_or(Value::Null);
            }
            if let Some(rw) = &svc.rewrite {
                let mut rw = rw.clone();
                rw.type_ = None;
                r["rewrite"] = serde_json::to_value(rw).unwrap_or(Value::Null);
            }
            if let Some(t) = &svc.timeout {
                r["timeout"] = json!(t);
            }
            if let Some(x) = &svc.retries {
                r["retries"] = serde_json::to_value(x).unwrap_or(Value::Null);
            }
            if let Some(x) = &svc.cors_policy {
                r["corsPolicy"] = serde_json::to_value(x).unwrap_or(Value::Null);
            }
            if let Some(x) = &svc.headers {
                r["headers"] = serde_json::to_value(x).unwrap_or(Value::Null);
            }
            r["route"] = Value::Array(route);
            r
        };
        let service_matches: Vec<HTTPMatchRequest> = svc.match_.iter().map(istio_match).collect();
        let analysis = canary.spec.analysis();
        let mut http = if canary.spec.strategy() == Strategy::ABTesting {
            let matches = ab_matches(
                analysis.map(|a| a.match_.as_slice()).unwrap_or_default(),
                &svc.match_,
            );
            vec![
                base(&matches, weighted),
                base(&service_matches, vec![dest(&primary_host, None)]),
            ]
        } else {
            vec![base(&service_matches, weighted)]
        };
        if routes.mirror
            && let Some(first) = http.first_mut()
        {
            first["mirror"] = json!({ "host": canary_host });
            if let Some(w) = analysis.and_then(|a| a.mirror_weight) {
                first["mirrorPercentage"] = json!({ "value": w });
            }
        }
        spec["http"] = Value::Array(http);
    }
    if !hosts.is_empty() || !delegation {
        spec["hosts"] = json!(hosts);
    }
    if !gateways.is_empty() {
        spec["gateways"] = json!(gateways);
    }
    json!({
        "apiVersion": format!("{ISTIO_GROUP}/{ISTIO_VERSION}"),
        "kind": "VirtualService",
        "metadata": meta_json(&inp.meta(apex, svc.apex.as_ref())),
        "spec": spec,
    })
}

/// Reads the weights back from a VirtualService (Flagger's `GetRoutes`): the first HTTP (or TCP)
/// route that has the canary host. `None` when serin's routes are not there.
pub fn read_routes(vs: &Value, apex: &str) -> Option<Routes> {
    let primary_host = format!("{apex}-primary");
    let canary_host = format!("{apex}-canary");
    let spec = vs.get("spec")?;
    let routes = spec
        .get("http")
        .or_else(|| spec.get("tcp"))
        .and_then(Value::as_array)?;
    for r in routes {
        let dests = r.get("route").and_then(Value::as_array)?;
        let weight_of = |host: &str| {
            dests
                .iter()
                .find(|d| d["destination"]["host"].as_str() == Some(host))
                .map(|d| d.get("weight").and_then(Value::as_u64).unwrap_or(0) as u32)
        };
        if let (Some(p), Some(c)) = (weight_of(&primary_host), weight_of(&canary_host)) {
            return Some(Routes {
                primary: p,
                canary: c,
                mirror: r.get("mirror").is_some(),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests;
