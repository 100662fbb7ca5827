//! Istio's VirtualService and DestinationRule (`networking.istio.io/v1beta1`) as typed resources,
//! so that the objects serin writes are checked by the compiler rather than spelt out as JSON.
//!
//! `v1beta1` is the version Flagger writes and the one serin has always watched; Istio serves the
//! same schema as `v1alpha3`, `v1beta1` and `v1`, so the choice only names the endpoint.
//!
//! Istio installs these CRDs; serin never generates or installs them (hence `schema = "disabled"`).
//!
//! A user's VirtualService that serin takes over may carry anything Istio knows (fault injection,
//! redirects, delegates, newer fields). Every object on the path from the spec to a destination
//! keeps what it does not model in `extra`, so reading such a VirtualService into these types and
//! writing it back loses nothing. The sub-objects shared with the Canary (matches, retries, CORS,
//! headers, rewrite) do the same in [`crate::istio`].

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::istio::{CorsPolicy, HTTPMatchRequest, HTTPRetry, HTTPRewrite, Headers, TrafficPolicy};

/// Istio `VirtualService` spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "networking.istio.io",
    version = "v1beta1",
    kind = "VirtualService",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HTTPRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TLSRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TCPRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Fields serin does not model, kept for the round trip.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `HTTPRoute`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<HTTPMatchRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HTTPRouteDestination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HTTPRewrite>,
    /// Go duration ("5s").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<HTTPRetry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    /// Fields serin does not model (`redirect`, `fault`, `delegate`, ...), kept for the round trip.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `HTTPRouteDestination`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteDestination {
    #[serde(default)]
    pub destination: Destination,
    /// Istio's type is int32; absent means 0 when other destinations carry weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `Destination`: a host (a Service name), optionally a subset and a port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    #[serde(default)]
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `PortSelector`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `Percent`, a double.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Percent {
    /// A whole number is written as an integer (`30`, not `30.0`), as Flagger writes
    /// `mirrorWeight`, so the object on the wire is the one serin has always written.
    #[serde(serialize_with = "whole_as_integer")]
    pub value: f64,
}

fn whole_as_integer<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    // Below 2^53 every whole f64 is an exact i64.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v.fract() == 0.0 && v.abs() < EXACT {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// Istio `TCPRoute`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TCPRoute {
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<L4MatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `TLSRoute`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TLSRoute {
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<TLSMatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `RouteDestination` (TCP and TLS routes).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    #[serde(default)]
    pub destination: Destination,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `L4MatchAttributes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `TLSMatchAttributes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TLSMatchAttributes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `DestinationRule` spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "networking.istio.io",
    version = "v1beta1",
    kind = "DestinationRule",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    #[serde(default)]
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Fields serin does not model (`workloadSelector`, ...), kept for the round trip.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Istio `Subset`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;
    use serde_json::json;

    #[test]
    fn api_versions_are_the_ones_flagger_writes() {
        assert_eq!(
            VirtualService::api_version(&()),
            "networking.istio.io/v1beta1"
        );
        assert_eq!(VirtualService::plural(&()), "virtualservices");
        assert_eq!(
            DestinationRule::api_version(&()),
            "networking.istio.io/v1beta1"
        );
        assert_eq!(DestinationRule::plural(&()), "destinationrules");
    }

    /// A user's VirtualService as `kubectl get -o json` shows it, full of fields serin does not
    /// model at every level.
    fn users_virtual_service() -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "VirtualService",
            "metadata": {
                "name": "podinfo", "namespace": "test", "resourceVersion": "7",
                "annotations": {"team": "a"}
            },
            "spec": {
                "hosts": ["podinfo", "app.example.com"],
                "gateways": ["mesh"],
                "exportTo": ["."],
                "futureSpecField": {"x": 1},
                "http": [
                    {
                        "name": "legacy",
                        "match": [{
                            "uri": {"prefix": "/old", "futureMatcher": true},
                            "headers": {"x-v": {"exact": "1"}},
                            "statPrefix": "legacy"
                        }],
                        "redirect": {"uri": "/new", "redirectCode": 301}
                    },
                    {
                        "match": [{"uri": {"prefix": "/"}}],
                        "fault": {"delay": {"percentage": {"value": 0.5}, "fixedDelay": "5s"}},
                        "retries": {"attempts": 2, "retryRemoteLocalities": true},
                        "corsPolicy": {"allowOrigins": [{"exact": "https://a"}], "unmatchedPreflights": "IGNORE"},
                        "rewrite": {"uri": "/", "uriRegexRewrite": {"match": "^/x", "rewrite": "/"}},
                        "headers": {"request": {"set": {"a": "b"}, "futureOp": 1}, "futureSide": {}},
                        "mirror": {"host": "shadow", "port": {"number": 80}},
                        "mirrorPercentage": {"value": 12.5},
                        "route": [
                            {
                                "destination": {"host": "podinfo", "subset": "v1", "port": {"number": 9898, "futurePort": 1}, "futureDest": "x"},
                                "weight": 90,
                                "headers": {"response": {"add": {"x": "y"}}},
                                "futureRouteDest": [1, 2]
                            },
                            {"destination": {"host": "podinfo-b"}, "weight": 10}
                        ]
                    }
                ],
                "tcp": [{"match": [{"port": 3306, "futureL4": "z"}], "route": [{"destination": {"host": "db"}, "futureTcp": 1}]}],
                "tls": [{"match": [{"sniHosts": ["a.example.com"], "port": 443}], "route": [{"destination": {"host": "a"}, "weight": 100}]}]
            }
        })
    }

    #[test]
    fn a_users_virtual_service_survives_the_round_trip() {
        let user = users_virtual_service();
        let typed: VirtualService = serde_json::from_value(user.clone()).unwrap();
        assert_eq!(typed.spec.http.len(), 2);
        assert_eq!(typed.spec.http[1].route[0].weight, Some(90));
        assert_eq!(
            typed.spec.http[0].extra["redirect"],
            json!({"uri": "/new", "redirectCode": 301})
        );
        assert_eq!(typed.spec.extra["futureSpecField"], json!({"x": 1}));
        assert_eq!(serde_json::to_value(&typed).unwrap(), user);
    }

    #[test]
    fn a_destination_rule_survives_the_round_trip() {
        let user = json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": {"name": "podinfo-canary", "namespace": "test"},
            "spec": {
                "host": "podinfo-canary",
                "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                "subsets": [{"name": "v1", "labels": {"version": "v1"}, "futureSubsetField": 1}],
                "exportTo": ["*"],
                "workloadSelector": {"matchLabels": {"app": "x"}}
            }
        });
        let typed: DestinationRule = serde_json::from_value(user.clone()).unwrap();
        assert_eq!(typed.spec.subsets[0].name, "v1");
        assert_eq!(serde_json::to_value(&typed).unwrap(), user);
    }

    #[test]
    fn percentages_keep_their_json_form() {
        let whole = Percent { value: 30.0 };
        assert_eq!(serde_json::to_string(&whole).unwrap(), r#"{"value":30}"#);
        let half = Percent { value: 12.5 };
        assert_eq!(serde_json::to_string(&half).unwrap(), r#"{"value":12.5}"#);
        let read: Percent = serde_json::from_value(json!({"value": 30})).unwrap();
        assert_eq!(read, whole);
    }
}
