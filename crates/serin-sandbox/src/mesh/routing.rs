//! What a mesh does with a VirtualService: which hosts get which share of the requests.

use serde_json::Value;

/// A Kubernetes Service named by a destination host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
}

impl ServiceRef {
    /// The form Istio puts in `destination_service`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// Reads a destination host the way Istio resolves short names: `name` is in `namespace` (the
/// VirtualService's), `name.ns`, `name.ns.svc` and `name.ns.svc.<domain>` name their own
/// namespace. Anything else (an external host, a wildcard) is not a Service: `None`.
pub fn service_ref(host: &str, namespace: &str) -> Option<ServiceRef> {
    let host = host.trim().trim_end_matches('.');
    let parts: Vec<&str> = host.split('.').collect();
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if !parts.iter().all(|p| valid(p)) {
        return None;
    }
    let svc = |name: &str, ns: &str| {
        Some(ServiceRef {
            name: name.to_string(),
            namespace: ns.to_string(),
        })
    };
    match parts.as_slice() {
        [name] => svc(name, namespace),
        [name, ns] => svc(name, ns),
        [name, ns, "svc", ..] => svc(name, ns),
        _ => None,
    }
}

/// Requests (a fractional amount; the caller carries the remainder) sent to one host.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub host: String,
    pub requests: f64,
    /// A copy made by `mirror`; its answer is discarded, but the destination still records it.
    pub mirrored: bool,
}

/// A VirtualService the simulator cannot route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.http[{route}]: {problem}")]
pub struct RouteError {
    pub route: usize,
    pub problem: String,
}

/// Splits `requests` over the VirtualService `spec` the way Istio routes them.
///
/// Routes are tried in order, as in Istio. A route without `match` takes every request that
/// reaches it. When the first route has a `match`, `match_share` (0..=1) of the requests is taken
/// to match it and the rest goes to the first later route without `match`; when no such route
/// exists, that rest has no route (Istio's source proxy answers 404; no destination records it).
/// A single route takes everything whatever its match: the simulated clients send what it wants.
/// Only `http` routes carry requests; `tcp` and `tls` ones are ignored.
pub fn split(spec: &Value, requests: f64, match_share: f64) -> Result<Vec<Flow>, RouteError> {
    let routes = match spec.get("http").and_then(Value::as_array) {
        Some(r) if !r.is_empty() => r,
        _ => return Ok(Vec::new()),
    };
    let has_match = |r: &Value| {
        r.get("match")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty())
    };
    let mut shares: Vec<(usize, f64)> = Vec::new();
    if routes.len() == 1 || !has_match(&routes[0]) {
        shares.push((0, requests));
    } else {
        let share = match_share.clamp(0.0, 1.0);
        shares.push((0, requests * share));
        if let Some(i) = routes.iter().skip(1).position(|r| !has_match(r)) {
            shares.push((i + 1, requests * (1.0 - share)));
        }
    }
    let mut flows: Vec<Flow> = Vec::new();
    let mut add = |host: &str, requests: f64, mirrored: bool| match flows
        .iter_mut()
        .find(|f| f.host == host && f.mirrored == mirrored)
    {
        Some(f) => f.requests += requests,
        None => flows.push(Flow {
            host: host.to_string(),
            requests,
            mirrored,
        }),
    };
    for (index, amount) in shares {
        let route = &routes[index];
        for (host, share) in destination_shares(route, index)? {
            add(&host, amount * share, false);
        }
        if let Some(host) = route.pointer("/mirror/host").and_then(Value::as_str) {
            let percent = mirror_percent(route, index)?;
            add(host, amount * percent / 100.0, true);
        }
    }
    Ok(flows)
}

/// Each destination host with its share (0..=1) of the route's requests.
fn destination_shares(route: &Value, index: usize) -> Result<Vec<(String, f64)>, RouteError> {
    let err = |problem: String| RouteError {
        route: index,
        problem,
    };
    let dests = route
        .get("route")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| err("no route[] destinations".into()))?;
    let mut hosts = Vec::with_capacity(dests.len());
    for (i, d) in dests.iter().enumerate() {
        let host = d
            .pointer("/destination/host")
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("route[{i}].destination.host is missing")))?;
        let weight = match d.get("weight") {
            None | Some(Value::Null) => 0.0,
            Some(w) => w
                .as_f64()
                .filter(|w| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| err(format!("route[{i}].weight {w} is not a weight")))?,
        };
        hosts.push((host.to_string(), weight));
    }
    // Istio sends everything to a lone destination whatever its weight; Flagger's A/B default
    // route relies on it (a single primary destination with weight 0).
    if let [(host, _)] = hosts.as_slice() {
        return Ok(vec![(host.clone(), 1.0)]);
    }
    let total: f64 = hosts.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return Err(err(
            "several destinations and no positive weight: Istio rejects this route".into(),
        ));
    }
    Ok(hosts.into_iter().map(|(h, w)| (h, w / total)).collect())
}

/// `mirrorPercentage.value`, else the old integer `mirrorPercent`, else 100 as in Istio.
fn mirror_percent(route: &Value, index: usize) -> Result<f64, RouteError> {
    let raw = route
        .pointer("/mirrorPercentage/value")
        .or_else(|| route.get("mirrorPercent"));
    match raw {
        None | Some(Value::Null) => Ok(100.0),
        Some(v) => v
            .as_f64()
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or_else(|| RouteError {
                route: index,
                problem: format!("mirror percentage {v} is not between 0 and 100"),
            }),
    }
}

/// A plain non-negative decimal in an annotation (`"50"`, `"2.5"`); `max` bounds it.
pub fn parse_amount(value: &str, max: f64) -> Option<f64> {
    let v = value.trim();
    if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    v.parse::<f64>().ok().filter(|x| x.is_finite() && *x <= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flows(spec: Value, requests: f64, match_share: f64) -> Vec<(String, f64, bool)> {
        split(&spec, requests, match_share)
            .unwrap()
            .into_iter()
            .map(|f| (f.host, (f.requests * 1e6).round() / 1e6, f.mirrored))
            .collect()
    }

    fn f(host: &str, n: f64, mirrored: bool) -> (String, f64, bool) {
        (host.to_string(), n, mirrored)
    }

    #[test]
    fn weighted() {
        let spec = json!({"hosts": ["podinfo"], "http": [{"route": [
            {"destination": {"host": "podinfo-primary"}, "weight": 80},
            {"destination": {"host": "podinfo-canary"}, "weight": 20},
        ]}]});
        assert_eq!(
            flows(spec, 100.0, 0.5),
            vec![
                f("podinfo-primary", 80.0, false),
                f("podinfo-canary", 20.0, false)
            ]
        );
    }

    #[test]
    fn weights_are_normalised_when_they_do_not_sum_to_100() {
        let spec = json!({"http": [{"route": [
            {"destination": {"host": "a"}, "weight": 1},
            {"destination": {"host": "b"}, "weight": 3},
        ]}]});
        assert_eq!(
            flows(spec, 100.0, 0.5),
            vec![f("a", 25.0, false), f("b", 75.0, false)]
        );
    }

    #[test]
    fn single_destination_without_weight_takes_all() {
        let spec = json!({"http": [{"route": [{"destination": {"host": "podinfo-primary"}}]}]});
        assert_eq!(
            flows(spec, 10.0, 0.5),
            vec![f("podinfo-primary", 10.0, false)]
        );
    }

    #[test]
    fn single_destination_with_weight_zero_still_takes_all() {
        let spec = json!({"http": [{"route": [{"destination": {"host": "p"}, "weight": 0}]}]});
        assert_eq!(flows(spec, 10.0, 0.5), vec![f("p", 10.0, false)]);
    }

    #[test]
    fn zero_weight_canary_gets_nothing() {
        let spec = json!({"http": [{"route": [
            {"destination": {"host": "podinfo-primary"}, "weight": 100},
            {"destination": {"host": "podinfo-canary"}, "weight": 0},
        ]}]});
        let got = flows(spec, 10.0, 0.5);
        assert_eq!(
            got,
            vec![
                f("podinfo-primary", 10.0, false),
                f("podinfo-canary", 0.0, false)
            ]
        );
    }

    #[test]
    fn ab_two_routes() {
        // Flagger's A/B shape: route 0 matches a header and goes to the canary (weight 100), the
        // default route carries only the primary with weight 0.
        let spec = json!({"http": [
            {"match": [{"headers": {"x-canary": {"exact": "insider"}}}], "route": [
                {"destination": {"host": "podinfo-primary"}, "weight": 0},
                {"destination": {"host": "podinfo-canary"}, "weight": 100},
            ]},
            {"route": [{"destination": {"host": "podinfo-primary"}, "weight": 0}]},
        ]});
        assert_eq!(
            flows(spec, 100.0, 0.3),
            vec![
                f("podinfo-primary", 70.0, false),
                f("podinfo-canary", 30.0, false)
            ]
        );
    }

    #[test]
    fn ab_without_a_default_route_leaves_the_rest_unrouted() {
        let spec = json!({"http": [
            {"match": [{"uri": {"prefix": "/a"}}], "route": [{"destination": {"host": "a"}}]},
            {"match": [{"uri": {"prefix": "/b"}}], "route": [{"destination": {"host": "b"}}]},
        ]});
        assert_eq!(flows(spec, 10.0, 0.5), vec![f("a", 5.0, false)]);
    }

    #[test]
    fn single_route_with_match_takes_everything() {
        let spec = json!({"http": [{"match": [{"uri": {"prefix": "/"}}],
            "route": [{"destination": {"host": "a"}}]}]});
        assert_eq!(flows(spec, 10.0, 0.3), vec![f("a", 10.0, false)]);
    }

    #[test]
    fn first_route_without_match_shadows_the_rest() {
        let spec = json!({"http": [
            {"route": [{"destination": {"host": "a"}}]},
            {"route": [{"destination": {"host": "b"}}]},
        ]});
        assert_eq!(flows(spec, 10.0, 0.3), vec![f("a", 10.0, false)]);
    }

    #[test]
    fn mirror_with_percentage() {
        let spec = json!({"http": [{
            "route": [
                {"destination": {"host": "podinfo-primary"}, "weight": 100},
                {"destination": {"host": "podinfo-canary"}, "weight": 0},
            ],
            "mirror": {"host": "podinfo-canary"},
            "mirrorPercentage": {"value": 40.0},
        }]});
        assert_eq!(
            flows(spec, 50.0, 0.5),
            vec![
                f("podinfo-primary", 50.0, false),
                f("podinfo-canary", 0.0, false),
                f("podinfo-canary", 20.0, true)
            ]
        );
    }

    #[test]
    fn mirror_without_percentage_copies_everything() {
        let spec = json!({"http": [{
            "route": [{"destination": {"host": "p"}}],
            "mirror": {"host": "c"},
        }]});
        assert_eq!(
            flows(spec, 10.0, 0.5),
            vec![f("p", 10.0, false), f("c", 10.0, true)]
        );
    }

    #[test]
    fn no_http_routes_means_no_requests() {
        assert_eq!(flows(json!({"hosts": ["x"]}), 10.0, 0.5), vec![]);
        assert_eq!(
            flows(
                json!({"tcp": [{"route": [{"destination": {"host": "x"}}]}]}),
                10.0,
                0.5
            ),
            vec![]
        );
    }

    #[test]
    fn unroutable_routes_are_errors_naming_the_route() {
        let cases = [
            (
                json!({"http": [{"route": [
                    {"destination": {"host": "a"}}, {"destination": {"host": "b"}}]}]}),
                "spec.http[0]: several destinations and no positive weight",
            ),
            (
                json!({"http": [{"route": []}]}),
                "spec.http[0]: no route[] destinations",
            ),
            (
                json!({"http": [{"route": [{"destination": {}}]}]}),
                "spec.http[0]: route[0].destination.host is missing",
            ),
            (
                json!({"http": [{"route": [{"destination": {"host": "a"}, "weight": "x"},
                    {"destination": {"host": "b"}, "weight": 1}]}]}),
                "spec.http[0]: route[0].weight \"x\" is not a weight",
            ),
            (
                json!({"http": [{"route": [{"destination": {"host": "a"}}],
                    "mirror": {"host": "b"}, "mirrorPercentage": {"value": 150}}]}),
                "spec.http[0]: mirror percentage 150 is not between 0 and 100",
            ),
        ];
        for (spec, want) in cases {
            let e = split(&spec, 10.0, 0.5).unwrap_err();
            assert!(e.to_string().starts_with(want), "{e} vs {want}");
        }
    }

    #[test]
    fn host_normalisation() {
        let r = |n: &str, ns: &str| {
            Some(ServiceRef {
                name: n.into(),
                namespace: ns.into(),
            })
        };
        let cases = [
            ("podinfo-canary", r("podinfo-canary", "test")),
            ("podinfo-canary.other", r("podinfo-canary", "other")),
            ("podinfo-canary.other.svc", r("podinfo-canary", "other")),
            (
                "podinfo-canary.other.svc.cluster.local",
                r("podinfo-canary", "other"),
            ),
            (
                "podinfo-canary.other.svc.cluster.local.",
                r("podinfo-canary", "other"),
            ),
            ("podinfo.example.com", None),
            ("*", None),
            ("*.test.svc.cluster.local", None),
            ("", None),
            ("Podinfo", None),
        ];
        for (host, want) in cases {
            assert_eq!(service_ref(host, "test"), want, "host {host:?}");
        }
        assert_eq!(
            service_ref("podinfo-canary", "test").map(|s| s.fqdn()),
            Some("podinfo-canary.test.svc.cluster.local".into())
        );
    }

    #[test]
    fn amounts() {
        assert_eq!(parse_amount("50", 1e6), Some(50.0));
        assert_eq!(parse_amount(" 2.5 ", 1e6), Some(2.5));
        assert_eq!(parse_amount("30", 100.0), Some(30.0));
        assert_eq!(parse_amount("130", 100.0), None);
        assert_eq!(parse_amount("-1", 100.0), None);
        assert_eq!(parse_amount("fast", 100.0), None);
        assert_eq!(parse_amount("", 100.0), None);
        assert_eq!(parse_amount("1e3", 1e6), None);
    }

    proptest::proptest! {
        /// Routed requests never exceed what was sent (mirrors aside), and with a default route
        /// nothing is lost.
        #[test]
        fn split_conserves_requests(w1 in 0u32..=100, w2 in 0u32..=100, share in 0.0f64..=1.0,
                                    n in 0.0f64..1000.0, ab in proptest::bool::ANY) {
            proptest::prop_assume!(w1 + w2 > 0);
            let weighted = json!({"route": [
                {"destination": {"host": "p"}, "weight": w1},
                {"destination": {"host": "c"}, "weight": w2}]});
            let spec = if ab {
                let mut first = weighted.clone();
                first["match"] = json!([{"headers": {"x": {"exact": "y"}}}]);
                json!({"http": [first, {"route": [{"destination": {"host": "p"}}]}]})
            } else {
                json!({"http": [weighted]})
            };
            let total: f64 = split(&spec, n, share).unwrap().iter().map(|f| f.requests).sum();
            proptest::prop_assert!((total - n).abs() < 1e-6 * n.max(1.0));
        }
    }
}
