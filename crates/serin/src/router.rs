//! Desired Services, DestinationRules and the VirtualService of a canary (docs/flagger-contract.md
//! §4.2–4.3), built as typed objects from the Canary and its progress. The shell compares them with
//! the watch cache and applies them with server-side apply only when they differ.

use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::istio::{HTTPMatchRequest, HTTPRewrite, HeaderOperations, Headers, StringMatch};
use crate::api::istio_resources::{
    Destination, DestinationRule, DestinationRuleSpec, HTTPRoute, HTTPRouteDestination,
    L4MatchAttributes, Percent, PortSelector, RouteDestination, TCPRoute, VirtualService,
    VirtualServiceSpec,
};
use crate::api::{
    Canary, CanaryService, CanaryStatus, CustomMetadata, SameSite, SessionAffinity, Strategy,
};
use crate::rollout::{self, Phase, Progress, Routes};
use crate::workload::SelectorLabel;

/// Group and version of [`VirtualService`] and [`DestinationRule`], for code that speaks to Istio
/// untyped (the watch caches, the revert of a user's VirtualService).
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

/// The annotations that keep Flux's kustomize and helm controllers off the generated Services
/// and VirtualService, as Flagger writes them.
pub const FLUX_OPT_OUT: [(&str, &str); 2] = [
    ("helm.toolkit.fluxcd.io/driftDetection", "disabled"),
    ("kustomize.toolkit.fluxcd.io/reconcile", "disabled"),
];

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
        let mut annotations: BTreeMap<String, String> = custom
            .map(|c| c.annotations.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.contains("toolkit.fluxcd.io"))
            .collect();
        // As Flagger (`filterMetadata`): Flux must not revert what the controller routes.
        for (k, v) in FLUX_OPT_OUT {
            annotations.insert(k.to_string(), v.to_string());
        }
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
/// the primary's pods). Every port carries `protocol: TCP`: with the port it keys the ports
/// list under server-side apply, so it is spelled out rather than left to the default.
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
pub fn desired_destination_rules(inp: &RouterInputs<'_>) -> Vec<DestinationRule> {
    let apex = inp.apex();
    let policy = &inp.canary.spec.service.traffic_policy;
    ["canary", "primary"]
        .into_iter()
        .map(|which| {
            let name = format!("{apex}-{which}");
            DestinationRule {
                // Flagger's DestinationRules carry no annotations.
                metadata: ObjectMeta {
                    annotations: None,
                    ..inp.meta(name.clone(), None)
                },
                spec: DestinationRuleSpec {
                    host: name,
                    traffic_policy: policy.clone(),
                    ..Default::default()
                },
            }
        })
        .collect()
}

/// Routes carry weights as `u32`, Istio as int32; a weight is at most 100.
fn istio_weight(w: u32) -> i32 {
    i32::try_from(w).unwrap_or(i32::MAX)
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

/// A/B matches: every analysis match combined with every service match (Flagger's
/// `mergeMatchConditions`). What the analysis match sets replaces the service match's
/// headers and source labels; what it leaves out keeps the service match's, so an analysis
/// match on source labels alone still carries the service's header conditions. Query parameters
/// are merged the same way, where Flagger drops the analysis match's (it would send every request
/// of the service match to the canary).
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
            if !a.headers.is_empty() {
                m.headers = a.headers.clone();
            }
            if !a.query_params.is_empty() {
                m.query_params = a.query_params.clone();
            }
            if !a.source_labels.is_empty() {
                m.source_labels = a.source_labels.clone();
            }
            out.push(istio_match(&m));
        }
    }
    out
}

/// Whether the Services carry TCP and the VirtualService routes it with a `tcp:` route:
/// `service.appProtocol` is `tcp` in any case, as Flagger's `isTcp` reads it.
pub fn is_tcp(svc: &CanaryService) -> bool {
    svc.app_protocol
        .as_deref()
        .is_some_and(|p| p.eq_ignore_ascii_case("tcp"))
}

/// The VirtualService `<apex>` with the given routes, its session-affinity rules built from the
/// cookies in the Canary's current status.
pub fn desired_virtual_service(inp: &RouterInputs<'_>, routes: Routes) -> VirtualService {
    let cookies = AffinityCookies::from_status(inp.canary.status.as_ref());
    desired_virtual_service_with_affinity(inp, routes, &cookies)
}

/// The VirtualService `<apex>` with the given routes and, when `analysis.sessionAffinity` is set,
/// the sticky rules for `cookies` (Flagger's `SetRoutes`, docs/flagger-contract.md §4.3):
/// - with a canary cookie: a rule `sticky-route` first, matching the cookie and sending 0/100,
///   then (with a primary cookie) `sticky-route-primary` sending 100/0, then the weighted route,
///   whose canary destination sets the canary cookie (and whose primary destination sets the
///   primary cookie, living one analysis interval);
/// - without one but with a previous cookie: `sticky-route` matches the previous cookie, routes
///   like the weighted route and expires the cookie (`Max-Age=-1`);
/// - otherwise the plain weighted route.
pub fn desired_virtual_service_with_affinity(
    inp: &RouterInputs<'_>,
    routes: Routes,
    cookies: &AffinityCookies,
) -> VirtualService {
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
    // The CRD and validate() keep the port in 1..=65535.
    let port = (svc.port_discovery
        && (delegation || gateways.first().map(String::as_str) != Some("mesh")))
    .then(|| u32::try_from(svc.port).ok())
    .flatten();
    let dest = |host: &str, weight: Option<u32>| HTTPRouteDestination {
        destination: Destination {
            host: host.to_string(),
            port: port.map(|p| PortSelector {
                number: Some(p),
                ..Default::default()
            }),
            ..Default::default()
        },
        weight: weight.map(istio_weight),
        ..Default::default()
    };
    let weighted = vec![
        dest(&primary_host, Some(routes.primary)),
        dest(&canary_host, Some(routes.canary)),
    ];

    let mut spec = VirtualServiceSpec::default();
    if is_tcp(svc) {
        // One L4 match per service match, on its port (Flagger's `canaryToL4Match`): without
        // service matches the route takes every port of the hosts.
        spec.tcp = vec![TCPRoute {
            match_: svc
                .match_
                .iter()
                .map(|m| L4MatchAttributes {
                    port: m.port.filter(|p| *p > 0),
                    ..Default::default()
                })
                .collect(),
            route: weighted
                .into_iter()
                .map(|d| RouteDestination {
                    destination: d.destination,
                    weight: d.weight,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }];
    } else {
        let base = |matches: &[HTTPMatchRequest], route: Vec<HTTPRouteDestination>| HTTPRoute {
            match_: matches.to_vec(),
            rewrite: svc
                .rewrite
                .clone()
                .map(|rw| HTTPRewrite { type_: None, ..rw }),
            timeout: svc.timeout.clone(),
            retries: svc.retries.clone(),
            cors_policy: svc.cors_policy.clone(),
            headers: svc.headers.clone(),
            route,
            ..Default::default()
        };
        let service_matches: Vec<HTTPMatchRequest> = svc.match_.iter().map(istio_match).collect();
        let analysis = canary.spec.analysis();
        // Flagger writes the A/B routes whenever `analysis.match` is set, also for a
        // progressive canary (match without iterations): the matched requests are then split
        // by weight and the others stay on the primary. Those routes replace the sticky ones.
        let ab = analysis.is_some_and(|a| !a.match_.is_empty());
        let affinity = analysis
            .and_then(|a| a.session_affinity.as_ref())
            .filter(|_| canary.spec.strategy() == Strategy::Canary && !ab);
        let mut http = if ab {
            let matches = ab_matches(
                analysis.map(|a| a.match_.as_slice()).unwrap_or_default(),
                &svc.match_,
            );
            vec![
                base(&matches, weighted),
                base(&service_matches, vec![dest(&primary_host, None)]),
            ]
        } else if let Some(sa) = affinity {
            let sticky = |cookie: &str, route: Vec<HTTPRouteDestination>, name: &str| HTTPRoute {
                name: Some(name.to_string()),
                ..base(&sticky_matches(cookie, &svc.match_), route)
            };
            if let Some(canary_cookie) = &cookies.canary {
                let mut weighted = weighted;
                weighted[1].headers = Some(set_cookie_headers(&set_cookie(
                    sa,
                    canary_cookie,
                    i64::from(sa.max_age()),
                )));
                let mut http = vec![sticky(
                    canary_cookie,
                    vec![dest(&primary_host, Some(0)), dest(&canary_host, Some(100))],
                    STICKY_ROUTE,
                )];
                if let Some(primary_cookie) = &cookies.primary {
                    let interval = analysis.map(|a| a.interval()).unwrap_or_default();
                    let age = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
                    weighted[0].headers =
                        Some(set_cookie_headers(&set_cookie(sa, primary_cookie, age)));
                    http.push(sticky(
                        primary_cookie,
                        vec![dest(&primary_host, Some(100)), dest(&canary_host, Some(0))],
                        STICKY_PRIMARY_ROUTE,
                    ));
                }
                http.push(base(&service_matches, weighted));
                http
            } else if let Some(previous) = &cookies.previous {
                let mut expiry = sticky(previous, weighted.clone(), STICKY_ROUTE);
                let mut headers = svc.headers.clone().unwrap_or_default();
                headers
                    .response
                    .get_or_insert_with(HeaderOperations::default)
                    .add
                    .insert(SET_COOKIE.into(), set_cookie(sa, previous, -1));
                expiry.headers = Some(headers);
                vec![expiry, base(&service_matches, weighted)]
            } else {
                vec![base(&service_matches, weighted)]
            }
        } else {
            vec![base(&service_matches, weighted)]
        };
        // The weighted route is the last one with session affinity (Flagger mirrors on the first,
        // which then is the sticky rule: a bug), the first one otherwise.
        let mirrored_route = if affinity.is_some() {
            http.len().saturating_sub(1)
        } else {
            0
        };
        if routes.mirror
            && let Some(r) = http.get_mut(mirrored_route)
        {
            r.mirror = Some(Destination {
                host: canary_host,
                ..Default::default()
            });
            r.mirror_percentage = analysis.and_then(|a| a.mirror_weight).map(|w| Percent {
                value: f64::from(w),
            });
        }
        spec.http = http;
    }
    spec.hosts = hosts;
    spec.gateways = gateways;
    VirtualService {
        metadata: inp.meta(apex, svc.apex.as_ref()),
        spec,
    }
}

/// Reads the weights back from a VirtualService (Flagger's `GetRoutes`): the first HTTP (or TCP)
/// route that has both the primary and the canary host, session-affinity rules skipped. `None`
/// when serin's routes are not there.
pub fn read_routes(vs: &VirtualService, apex: &str) -> Option<Routes> {
    let primary_host = format!("{apex}-primary");
    let canary_host = format!("{apex}-canary");
    let weights = |dests: &[(&str, Option<i32>)]| {
        let weight_of = |host: &str| {
            dests
                .iter()
                .find(|(h, _)| *h == host)
                .map(|(_, w)| w.and_then(|w| u32::try_from(w).ok()).unwrap_or(0))
        };
        Some((weight_of(&primary_host)?, weight_of(&canary_host)?))
    };
    let found = |(primary, canary), mirror| Routes {
        primary,
        canary,
        mirror,
    };
    let spec = &vs.spec;
    if !spec.http.is_empty() {
        // Session-affinity rules route by cookie, not by weight.
        let sticky = |r: &HTTPRoute| {
            r.name
                .as_deref()
                .is_some_and(|n| n.starts_with(STICKY_ROUTE))
        };
        spec.http.iter().filter(|r| !sticky(r)).find_map(|r| {
            let dests: Vec<_> = r
                .route
                .iter()
                .map(|d| (d.destination.host.as_str(), d.weight))
                .collect();
            weights(&dests).map(|w| found(w, r.mirror.is_some()))
        })
    } else {
        spec.tcp.iter().find_map(|r| {
            let dests: Vec<_> = r
                .route
                .iter()
                .map(|d| (d.destination.host.as_str(), d.weight))
                .collect();
            weights(&dests).map(|w| found(w, false))
        })
    }
}

// ---- session affinity (docs/flagger-contract.md §4.3, §1.4, §9.17) ----
//
// Read from Flagger's `pkg/router/istio.go` (`SetRoutes`, `GetRoutes`) and, for the primary cookie
// (Flagger 1.43, [#1861](https://github.com/fluxcd/flagger/issues/1861), whose Istio code was not
// at hand), from its Gateway API router. Where serin differs, on purpose:
// - outside a run with no previous cookie, Flagger leaves a copy of the weighted route named
//   `sticky-route` in front of it; serin writes the weighted route alone;
// - Flagger's expiry rule writes `Set-Cookie` into the Canary's own `service.headers` map (shared
//   pointer), so it leaks into the weighted route; serin adds it to the expiry rule only;
// - the expiry and the primary cookie carry the cookie attributes (Domain, Path, ...) too, since a
//   browser only drops a cookie whose Domain and Path match; the primary rule is named
//   `sticky-route-primary`;
// - mirroring goes on the weighted route, not on the first (sticky) one.

/// Name of the rule that pins users holding the canary cookie (Flagger's `stickyRouteName`); the
/// cookie-expiry rule after a run has the same name.
pub const STICKY_ROUTE: &str = "sticky-route";
/// Name of the rule that pins users holding the primary cookie.
pub const STICKY_PRIMARY_ROUTE: &str = "sticky-route-primary";
const COOKIE_HEADER: &str = "Cookie";
const SET_COOKIE: &str = "Set-Cookie";
/// Letters of a cookie value (Flagger: 10 of them).
pub const COOKIE_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
pub const COOKIE_VALUE_LEN: usize = 10;

/// The session-affinity cookies of a canary, each `<cookieName>=<value>` as Flagger stores them in
/// `status.sessionAffinityCookie`, `primarySessionAffinityCookie` and
/// `previousSessionAffinityCookie`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AffinityCookies {
    pub canary: Option<String>,
    pub primary: Option<String>,
    pub previous: Option<String>,
}

impl AffinityCookies {
    /// Empty strings (Flagger's "unset") count as absent.
    pub fn from_status(status: Option<&CanaryStatus>) -> Self {
        let get = |f: fn(&CanaryStatus) -> &Option<String>| {
            status.and_then(|s| f(s).clone()).filter(|c| !c.is_empty())
        };
        AffinityCookies {
            canary: get(|s| &s.session_affinity_cookie),
            primary: get(|s| &s.primary_session_affinity_cookie),
            previous: get(|s| &s.previous_session_affinity_cookie),
        }
    }

    /// Writes the cookies into a status; an absent cookie is left unset, never `""`.
    pub fn write_to(&self, status: &mut CanaryStatus) {
        let keep = |c: &Option<String>| c.clone().filter(|c| !c.is_empty());
        status.session_affinity_cookie = keep(&self.canary);
        status.primary_session_affinity_cookie = keep(&self.primary);
        status.previous_session_affinity_cookie = keep(&self.previous);
    }
}

fn cookie_name(cookie: &str) -> &str {
    cookie.split_once('=').map_or(cookie, |(n, _)| n)
}

/// The cookies a canary needs for this progress. `fresh` gives a new random value (the shell's
/// randomness; it is only called when a cookie is created).
///
/// A canary cookie lives while the canary gets traffic or a run is progressing: it is created
/// when a run starts (Progressing for a new revision or configuration) and, when the run ends
/// (weight back to 0 outside Progressing: promoted or rolled back), it becomes the previous
/// cookie, which the VirtualService then expires. A run that restarts on a newer revision starts
/// with a new cookie. Flagger keys the same on the canary weight alone (a cookie from the first
/// step on); the primary cookie (with `primaryCookieName`) lives and dies with the canary cookie.
/// Without `sessionAffinity` the status cookies are kept as they are (as Flagger does).
pub fn next_affinity_cookies(
    canary: &Canary,
    progress: &Progress,
    mut fresh: impl FnMut() -> String,
) -> AffinityCookies {
    let status = canary.status.as_ref();
    let old = AffinityCookies::from_status(status);
    let Some(sa) = canary
        .spec
        .analysis()
        .and_then(|a| a.session_affinity.as_ref())
    else {
        return old;
    };
    let active = progress.canary_weight > 0 || progress.phase == Some(Phase::Progressing);
    if !active {
        return AffinityCookies {
            canary: None,
            primary: None,
            previous: old.canary.or(old.previous),
        };
    }
    let new_run = progress.phase == Some(Phase::Progressing)
        && status.is_none_or(|s| {
            !s.phase.is_some_and(rollout::in_run)
                || s.last_applied_spec != progress.last_applied_spec
                || s.tracked_configs != progress.tracked_configs
        });
    let mut out = old;
    let stale =
        |c: &Option<String>, name: &str| c.as_deref().is_none_or(|c| cookie_name(c) != name);
    if new_run || stale(&out.canary, &sa.cookie_name) {
        if let Some(c) = out.canary.take() {
            out.previous = Some(c);
        }
        out.primary = None;
        out.canary = Some(format!("{}={}", sa.cookie_name, fresh()));
    }
    out.primary = match sa.primary_cookie_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) if stale(&out.primary, name) => Some(format!("{name}={}", fresh())),
        Some(_) => out.primary,
        None => None,
    };
    out
}

/// The `Set-Cookie` value for `cookie` (`name=value`): `Max-Age` first (Flagger's original
/// form), then the attributes that are set, in the order of the spec's fields.
pub fn set_cookie(sa: &SessionAffinity, cookie: &str, max_age: i64) -> String {
    let mut out = format!("{cookie}; Max-Age={max_age}");
    if let Some(d) = sa.domain.as_deref().filter(|d| !d.is_empty()) {
        out.push_str(&format!("; Domain={d}"));
    }
    if sa.http_only == Some(true) {
        out.push_str("; HttpOnly");
    }
    if sa.partitioned == Some(true) {
        out.push_str("; Partitioned");
    }
    if let Some(p) = sa.path.as_deref().filter(|p| !p.is_empty()) {
        out.push_str(&format!("; Path={p}"));
    }
    if let Some(s) = sa.same_site {
        let s = match s {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        };
        out.push_str(&format!("; SameSite={s}"));
    }
    if sa.secure == Some(true) {
        out.push_str("; Secure");
    }
    out
}

/// Matches of a sticky rule: the `Cookie` header against `.*<name>.*<value>.*` (Flagger's regex,
/// unescaped), on each of the service's matches, whose own header matches it replaces (Flagger's
/// `mergeMatchConditions`).
pub fn sticky_matches(cookie: &str, service: &[HTTPMatchRequest]) -> Vec<HTTPMatchRequest> {
    let (name, value) = cookie.split_once('=').unwrap_or((cookie, ""));
    let headers = BTreeMap::from([(
        COOKIE_HEADER.to_string(),
        StringMatch {
            regex: Some(format!(".*{name}.*{value}.*")),
            ..Default::default()
        },
    )]);
    if service.is_empty() {
        return vec![HTTPMatchRequest {
            headers,
            ..Default::default()
        }];
    }
    service
        .iter()
        .map(|s| {
            let mut m = istio_match(s);
            m.headers = headers.clone();
            m
        })
        .collect()
}

fn set_cookie_headers(value: &str) -> Headers {
    Headers {
        response: Some(HeaderOperations {
            add: BTreeMap::from([(SET_COOKIE.to_string(), value.to_string())]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---- applying the desired state whole ----

/// Whether `actual` still holds a field that `manager`'s last server-side apply set and that
/// `desired` no longer says, or says differently inside a list or map the API server treats as
/// one value (Istio's `http`, `tcp`, ...). A field-by-field subset test misses both: a removed
/// `trafficPolicy`, a removed `timeout` inside the VirtualService's route, so the apply that
/// would remove them never ran (issue 13). Applying then removes exactly what serin stopped
/// saying, and nothing another manager owns.
///
/// The ownership comes from `metadata.managedFields` (`fieldsV1`) of the cached object; without
/// it nothing counts as dropped.
pub fn drops_owned_fields(desired: &Value, actual: &Value, manager: &str) -> bool {
    let Some(entries) = actual
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return false;
    };
    entries
        .iter()
        .filter(|e| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
                && e.get("subresource").is_none_or(|s| s.as_str() == Some(""))
        })
        .filter_map(|e| e.get("fieldsV1").and_then(fields_tree))
        .any(|fields| {
            fields
                .as_object()
                .is_some_and(|fields| owned_differs(fields, desired, actual))
        })
}

/// The body (spec) of a cached VirtualService or DestinationRule as a tree, whether the cache
/// keeps it as one or as its JSON text (`controller::watches::slim_istio`).
pub fn cached_data(obj: &kube::api::DynamicObject) -> Cow<'_, Value> {
    match &obj.data {
        Value::String(text) => Cow::Owned(serde_json::from_str(text).unwrap_or(Value::Null)),
        data => Cow::Borrowed(data),
    }
}

/// A cached VirtualService or DestinationRule as JSON, as the API server sent it less what the
/// cache dropped (`controller::watches::slim_istio`). `None` only if it cannot be written as
/// JSON, which a decoded object always can.
pub fn cached_json(obj: &kube::api::DynamicObject) -> Option<Value> {
    let data = cached_data(obj);
    let mut json = serde_json::to_value(&obj.metadata).ok()?;
    json = serde_json::json!({ "metadata": json });
    if let (Value::Object(out), Value::Object(data)) = (&mut json, data.as_ref()) {
        for (k, v) in data {
            out.insert(k.clone(), v.clone());
        }
    }
    if let (Value::Object(out), Some(types)) = (&mut json, &obj.types) {
        out.insert(
            "apiVersion".into(),
            Value::String(types.api_version.clone()),
        );
        out.insert("kind".into(), Value::String(types.kind.clone()));
    }
    Some(json)
}

/// A managedFields entry's `fieldsV1` as a tree, whether it is one (as the API server sends it)
/// or its JSON text (as the watch caches keep serin's own on the Istio objects, a ninth of the
/// tree's memory: `controller::watches::slim`).
pub fn fields_tree(fields: &Value) -> Option<Cow<'_, Value>> {
    match fields {
        Value::Object(_) => Some(Cow::Borrowed(fields)),
        Value::String(text) => serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_object)
            .map(Cow::Owned),
        _ => None,
    }
}

fn owned_differs(fields: &serde_json::Map<String, Value>, desired: &Value, actual: &Value) -> bool {
    fields.iter().any(|(key, sub)| {
        let sub = sub.as_object();
        let leaf = sub.is_none_or(|m| m.is_empty() || (m.len() == 1 && m.contains_key(".")));
        if let Some(name) = key.strip_prefix("f:") {
            let d = desired.get(name).filter(|v| !v.is_null());
            let a = actual.get(name).filter(|v| !v.is_null());
            match (d, a, sub) {
                (None, _, _) => true,
                (Some(_), None, _) => true,
                (Some(d), Some(a), _) if leaf => !json_eq(d, a),
                (Some(d), Some(a), Some(sub)) => owned_differs(sub, d, a),
                (Some(d), Some(a), None) => !json_eq(d, a),
            }
        } else if let Some(item_key) = key.strip_prefix("k:") {
            let Ok(Value::Object(item_key)) = serde_json::from_str::<Value>(item_key) else {
                return false;
            };
            let find = |list: &Value| -> Option<Value> {
                list.as_array()?
                    .iter()
                    .find(|item| {
                        item_key
                            .iter()
                            .all(|(k, v)| item.get(k).is_some_and(|iv| json_eq(iv, v)))
                    })
                    .cloned()
            };
            match (find(desired), find(actual), sub) {
                (None, _, _) | (Some(_), None, _) => true,
                (Some(d), Some(a), Some(sub)) if !leaf => owned_differs(sub, &d, &a),
                _ => false,
            }
        } else if let Some(v) = key.strip_prefix("v:") {
            let Ok(v) = serde_json::from_str::<Value>(v) else {
                return false;
            };
            !desired
                .as_array()
                .is_some_and(|items| items.iter().any(|i| json_eq(i, &v)))
        } else {
            false
        }
    })
}

/// JSON equality with numbers compared by value (`1` and `1.0` are the same to the API server).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            let present =
                |m: &serde_json::Map<String, Value>| m.values().filter(|v| !v.is_null()).count();
            present(x) == present(y)
                && x.iter()
                    .filter(|(_, v)| !v.is_null())
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests;

// ---- taking over the user's objects, and handing them back (docs/flagger-contract.md §4.2) ----

/// Where Flagger keeps the spec of a VirtualService it took over, for the revert.
pub const ORIGINAL_CONFIGURATION: &str = "flagger.kubernetes.io/original-configuration";
const LAST_APPLIED_CONFIGURATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether the Canary with `canary_uid` is the object's controller (it made the object, so the
/// garbage collector removes it with the Canary).
pub fn controlled_by(meta: &ObjectMeta, canary_uid: Option<&str>) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == canary_uid)
}

/// The Service to apply over `existing`. Over a Service the user made (an apex Service that
/// existed before the Canary), serin takes the selector and the ports and nothing else, as
/// Flagger's Service update does: no ownership (deleting the Canary must not delete it), none of
/// serin's labels or annotations but Flux's opt-out, and no `type`, `clusterIP` or `trafficDistribution`, so a
/// NodePort or LoadBalancer Service keeps its type; its node ports are kept by port name.
pub fn taken_over_service(
    desired: Service,
    existing: Option<&Service>,
    canary_uid: Option<&str>,
) -> Service {
    let Some(existing) = existing.filter(|e| !controlled_by(&e.metadata, canary_uid)) else {
        return desired;
    };
    let spec = desired.spec.unwrap_or_default();
    let node_ports: BTreeMap<String, i32> = existing
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, p.node_port.filter(|n| *n > 0)?)))
        .collect();
    let ports = spec.ports.map(|ports| {
        ports
            .into_iter()
            .map(|mut p| {
                if let Some(n) = p.name.as_ref().and_then(|n| node_ports.get(n)) {
                    p.node_port = Some(*n);
                }
                p
            })
            .collect()
    });
    Service {
        metadata: ObjectMeta {
            name: desired.metadata.name,
            namespace: desired.metadata.namespace,
            // Flagger marks the user's Service too: Flux applying the user's manifest again
            // would take the selector back and send live traffic to the canary's pods.
            annotations: Some(
                FLUX_OPT_OUT
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: spec.selector,
            ports,
            ..Default::default()
        }),
        status: None,
    }
}

/// The VirtualService to apply over `existing`. Over one the user made serin takes no
/// ownership, and it records the user's spec under [`ORIGINAL_CONFIGURATION`] (unless recorded
/// already, or kubectl's last-applied annotation keeps it) for [`reverted_virtual_service`].
pub fn taken_over_virtual_service(
    mut desired: VirtualService,
    existing: Option<&kube::api::DynamicObject>,
    canary_uid: Option<&str>,
) -> VirtualService {
    let Some(existing) = existing.filter(|e| !controlled_by(&e.metadata, canary_uid)) else {
        return desired;
    };
    desired.metadata.owner_references = None;
    let annotations = existing.metadata.annotations.clone().unwrap_or_default();
    let original = annotations
        .get(ORIGINAL_CONFIGURATION)
        .cloned()
        .or_else(|| {
            (!annotations.contains_key(LAST_APPLIED_CONFIGURATION)).then(|| {
                cached_data(existing)
                    .get("spec")
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            })
        });
    if let Some(original) = original {
        desired
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ORIGINAL_CONFIGURATION.into(), original);
    }
    desired
}

/// What `revertOnDeletion` does with the VirtualService.
#[derive(Clone, Debug, PartialEq)]
pub enum VirtualServiceRevert {
    /// Apply this: the user's original spec.
    Restore(Value),
    /// serin made it and no original is recorded: it goes with the Canary.
    Leave,
    /// Taken over, but the original spec is recorded nowhere: nothing can be restored.
    OriginalUnknown,
}

/// The user's VirtualService as it was before serin took it over, from
/// [`ORIGINAL_CONFIGURATION`] or else kubectl's last-applied annotation.
pub fn reverted_virtual_service(
    existing: &kube::api::DynamicObject,
    canary_uid: Option<&str>,
) -> VirtualServiceRevert {
    let annotations = existing.metadata.annotations.clone().unwrap_or_default();
    let original = annotations
        .get(ORIGINAL_CONFIGURATION)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .or_else(|| {
            annotations
                .get(LAST_APPLIED_CONFIGURATION)
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .and_then(|v| v.get("spec").cloned())
        });
    match original {
        Some(spec) => VirtualServiceRevert::Restore(json!({
            "apiVersion": format!("{ISTIO_GROUP}/{ISTIO_VERSION}"),
            "kind": "VirtualService",
            "metadata": { "name": existing.metadata.name.clone().unwrap_or_default() },
            "spec": spec,
        })),
        None if controlled_by(&existing.metadata, canary_uid) => VirtualServiceRevert::Leave,
        None => VirtualServiceRevert::OriginalUnknown,
    }
}

/// The apex Service handed back on `revertOnDeletion` (a merge patch): pointing at the target's
/// pods again and no longer owned by the Canary, so the garbage collector leaves it serving.
pub fn reverted_apex(existing: &ObjectMeta, selector: &SelectorLabel, canary_uid: &str) -> Service {
    let owners: Vec<OwnerReference> = existing
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.uid != canary_uid)
        .cloned()
        .collect();
    Service {
        metadata: ObjectMeta {
            owner_references: Some(owners),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                selector.key.clone(),
                selector.value.clone(),
            )])),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod takeover_tests;
