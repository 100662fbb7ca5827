use super::*;
use serde_json::{Value, json};

fn canary(spec: Value) -> Canary {
    serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test", "uid": "u1"},
        "spec": spec,
    }))
    .unwrap()
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "flagger.app/v1beta1".into(),
        kind: "Canary".into(),
        name: "podinfo".into(),
        uid: "u1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The JSON serin sends to the API server, which the assertions look at.
fn to_json<T: serde::Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).unwrap()
}

/// [`read_routes`] on a VirtualService as the API server returns it: the JSON read back into the
/// typed object, which must give back exactly what was written.
fn read_back(vs: &Value, apex: &str) -> Option<Routes> {
    let typed: VirtualService = serde_json::from_value(vs.clone()).unwrap();
    assert_eq!(
        &to_json(&typed),
        vs,
        "the typed VirtualService loses nothing"
    );
    read_routes(&typed, apex)
}

fn sel() -> SelectorLabel {
    SelectorLabel {
        key: "app".into(),
        value: "podinfo".into(),
    }
}

fn base_spec() -> Value {
    json!({
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
        "service": {"port": 9898},
        "analysis": {"interval": "1m", "threshold": 5, "maxWeight": 50, "stepWeight": 10}
    })
}

#[test]
fn services_select_the_right_pods() {
    let mut spec = base_spec();
    spec["service"]["apex"] = json!({"labels": {"team": "a"}, "annotations": {"x": "1", "kustomize.toolkit.fluxcd.io/checksum": "z"}});
    let c = canary(spec);
    let s = sel();
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    let svcs: Vec<Value> = desired_services(&inp)
        .iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    let names: Vec<&str> = svcs
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["podinfo-canary", "podinfo-primary", "podinfo"]);
    assert_eq!(svcs[0]["spec"]["selector"], json!({"app": "podinfo"}));
    assert_eq!(
        svcs[1]["spec"]["selector"],
        json!({"app": "podinfo-primary"})
    );
    assert_eq!(
        svcs[2]["spec"]["selector"],
        json!({"app": "podinfo-primary"})
    );
    assert_eq!(
        svcs[2]["spec"]["ports"],
        json!([{"name": "http", "port": 9898, "targetPort": 9898, "protocol": "TCP"}])
    );
    assert_eq!(
        svcs[2]["metadata"]["labels"],
        json!({"app": "podinfo", "team": "a"})
    );
    // The user's Flux annotations dropped, Flagger's opt-out from Flux added.
    assert_eq!(
        svcs[2]["metadata"]["annotations"],
        json!({"x": "1", "helm.toolkit.fluxcd.io/driftDetection": "disabled",
               "kustomize.toolkit.fluxcd.io/reconcile": "disabled"})
    );
    assert_eq!(svcs[0]["metadata"]["ownerReferences"][0]["uid"], "u1");
}

#[test]
fn port_discovery_adds_ports_and_skips_sidecars() {
    let pod: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({"containers": [
        {"name": "app", "ports": [{"containerPort": 9898, "name": "http"}, {"containerPort": 9797, "name": "http-metrics"}, {"containerPort": 9999}]},
        {"name": "istio-proxy", "ports": [{"containerPort": 15090}]}
    ]}))
    .unwrap();
    let found = discover_ports(&pod, 9898);
    assert_eq!(
        found,
        vec![
            DiscoveredPort {
                name: "http-metrics".into(),
                port: 9797
            },
            DiscoveredPort {
                name: "tcp-app-2".into(),
                port: 9999
            }
        ]
    );
}

#[test]
fn virtual_service_default_route() {
    let mut spec = base_spec();
    spec["service"]["hosts"] = json!(["app.example.com"]);
    spec["service"]["gateways"] = json!(["public-gateway.istio-system.svc.cluster.local"]);
    spec["service"]["timeout"] = json!("5s");
    spec["service"]["retries"] =
        json!({"attempts": 3, "perTryTimeout": "1s", "retryOn": "gateway-error"});
    spec["service"]["match"] = json!([{"uri": {"prefix": "/"}}]);
    spec["service"]["rewrite"] = json!({"uri": "/"});
    spec["service"]["headers"] = json!({"request": {"add": {"x-some-header": "value"}}});
    spec["service"]["corsPolicy"] = json!({"allowOrigins": [{"exact": "https://example.com"}], "allowMethods": ["GET"], "maxAge": "24h"});
    let c = canary(spec);
    let s = sel();
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    let vs = to_json(&desired_virtual_service(
        &inp,
        Routes {
            primary: 70,
            canary: 30,
            mirror: false,
        },
    ));
    assert_eq!(vs["apiVersion"], "networking.istio.io/v1beta1");
    assert_eq!(
        vs["spec"],
        json!({
            "hosts": ["app.example.com", "podinfo"],
            "gateways": ["public-gateway.istio-system.svc.cluster.local"],
            "http": [{
                "match": [{"uri": {"prefix": "/"}}],
                "rewrite": {"uri": "/"},
                "timeout": "5s",
                "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "gateway-error"},
                "corsPolicy": {"allowOrigins": [{"exact": "https://example.com"}], "allowMethods": ["GET"], "maxAge": "24h"},
                "headers": {"request": {"add": {"x-some-header": "value"}}},
                "route": [
                    {"destination": {"host": "podinfo-primary"}, "weight": 70},
                    {"destination": {"host": "podinfo-canary"}, "weight": 30}
                ]
            }]
        })
    );
    assert_eq!(
        read_back(&vs, "podinfo"),
        Some(Routes {
            primary: 70,
            canary: 30,
            mirror: false
        })
    );
}

#[test]
fn virtual_service_defaults_to_mesh_gateway_and_apex_host() {
    let c = canary(base_spec());
    let s = sel();
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    let vs = to_json(&desired_virtual_service(
        &inp,
        Routes {
            primary: 100,
            canary: 0,
            mirror: false,
        },
    ));
    assert_eq!(vs["spec"]["hosts"], json!(["podinfo"]));
    assert_eq!(vs["spec"]["gateways"], json!(["mesh"]));
}

#[test]
fn ab_testing_has_a_matched_route_and_a_primary_route() {
    let mut spec = base_spec();
    spec["analysis"] = json!({"interval": "1m", "threshold": 2, "iterations": 10, "match": [
        {"headers": {"x-canary": {"exact": "insider"}}},
        {"headers": {"cookie": {"regex": "^(.*?;)?(canary=always)(;.*)?$"}}},
        {"headers": {"user-agent": {"suffix": "Firefox"}}}
    ]});
    let c = canary(spec);
    let s = sel();
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    let vs = to_json(&desired_virtual_service(
        &inp,
        Routes {
            primary: 0,
            canary: 100,
            mirror: false,
        },
    ));
    let http = vs["spec"]["http"].as_array().unwrap();
    assert_eq!(http.len(), 2);
    assert_eq!(
        http[0]["match"][0]["headers"]["x-canary"],
        json!({"exact": "insider"})
    );
    assert_eq!(
        http[0]["match"][2]["headers"]["user-agent"],
        json!({"regex": ".*Firefox"})
    );
    assert_eq!(
        http[0]["route"],
        json!([{"destination": {"host": "podinfo-primary"}, "weight": 0}, {"destination": {"host": "podinfo-canary"}, "weight": 100}])
    );
    assert_eq!(
        http[1]["route"],
        json!([{"destination": {"host": "podinfo-primary"}}])
    );
    assert!(http[1].get("match").is_none());
}

#[test]
fn ab_matches_merge_with_service_matches() {
    let a: Vec<HTTPMatchRequest> =
        serde_json::from_value(json!([{"headers": {"x": {"exact": "1"}}}])).unwrap();
    let s: Vec<HTTPMatchRequest> =
        serde_json::from_value(json!([{"uri": {"prefix": "/api"}}, {"uri": {"prefix": "/v2"}}]))
            .unwrap();
    let merged = serde_json::to_value(ab_matches(&a, &s)).unwrap();
    assert_eq!(
        merged,
        json!([
            {"uri": {"prefix": "/api"}, "headers": {"x": {"exact": "1"}}},
            {"uri": {"prefix": "/v2"}, "headers": {"x": {"exact": "1"}}}
        ])
    );
}

#[test]
fn mirroring_sets_mirror_and_percentage() {
    let mut spec = base_spec();
    spec["analysis"] = json!({"interval": "1m", "threshold": 2, "iterations": 10, "mirror": true, "mirrorWeight": 30});
    let c = canary(spec);
    let s = sel();
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    let vs = to_json(&desired_virtual_service(
        &inp,
        Routes {
            primary: 100,
            canary: 0,
            mirror: true,
        },
    ));
    assert_eq!(
        vs["spec"]["http"][0]["mirror"],
        json!({"host": "podinfo-canary"})
    );
    assert_eq!(
        vs["spec"]["http"][0]["mirrorPercentage"],
        json!({"value": 30})
    );
    assert!(read_back(&vs, "podinfo").unwrap().mirror);
}

#[test]
fn delegation_and_tcp() {
    let mut spec = base_spec();
    spec["service"]["delegation"] = json!(true);
    let c = canary(spec);
    let s = sel();
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    let vs = to_json(&desired_virtual_service(
        &inp,
        Routes {
            primary: 100,
            canary: 0,
            mirror: false,
        },
    ));
    assert!(vs["spec"].get("hosts").is_none() || vs["spec"]["hosts"] == json!([]));
    assert!(vs["spec"].get("gateways").is_none());

    let mut spec = base_spec();
    spec["service"]["appProtocol"] = json!("tcp");
    let c = canary(spec);
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    let vs = to_json(&desired_virtual_service(
        &inp,
        Routes {
            primary: 90,
            canary: 10,
            mirror: false,
        },
    ));
    assert!(vs["spec"]["tcp"][0].get("match").is_none(), "{vs}");
    assert!(vs["spec"].get("http").is_none());
    assert_eq!(
        read_back(&vs, "podinfo"),
        Some(Routes {
            primary: 90,
            canary: 10,
            mirror: false
        })
    );
}

#[test]
fn destination_rules_carry_the_traffic_policy() {
    let mut spec = base_spec();
    spec["service"]["trafficPolicy"] = json!({"tls": {"mode": "ISTIO_MUTUAL"}});
    let c = canary(spec);
    let s = sel();
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    let drs: Vec<Value> = desired_destination_rules(&inp)
        .iter()
        .map(to_json)
        .collect();
    assert_eq!(drs[0]["metadata"]["name"], "podinfo-canary");
    assert_eq!(
        drs[0]["spec"],
        json!({"host": "podinfo-canary", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}})
    );
    assert_eq!(drs[1]["spec"]["host"], "podinfo-primary");
    assert_eq!(drs[1]["apiVersion"], "networking.istio.io/v1beta1");
    assert_eq!(drs[1]["kind"], "DestinationRule");
    assert_eq!(drs[1]["metadata"]["ownerReferences"][0]["uid"], "u1");
}

#[test]
fn routes_are_read_from_a_virtual_service_with_fields_serin_does_not_model() {
    // A VirtualService as the API server returns it after someone added a redirect rule and
    // fault injection: the weights are read from the first route to both of serin's hosts.
    let vs = json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "podinfo", "namespace": "test", "resourceVersion": "12"},
        "spec": {
            "hosts": ["podinfo"],
            "http": [
                {"match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/new"}},
                {"route": [{"destination": {"host": "elsewhere"}, "weight": 100}]},
                {
                    "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 1}}},
                    "route": [
                        {"destination": {"host": "podinfo-primary"}, "weight": 75},
                        {"destination": {"host": "podinfo-canary"}, "weight": 25}
                    ],
                    "mirror": {"host": "podinfo-canary"},
                    "mirrorPercentage": {"value": 12.5}
                }
            ]
        }
    });
    assert_eq!(
        read_back(&vs, "podinfo"),
        Some(Routes {
            primary: 75,
            canary: 25,
            mirror: true
        })
    );
    assert_eq!(read_back(&vs, "other"), None);
}

// ---- session affinity ----

fn affinity_spec(sa: Value) -> Value {
    let mut spec = base_spec();
    spec["analysis"]["sessionAffinity"] = sa;
    spec
}

fn vs_with(c: &Canary, routes: Routes, cookies: &AffinityCookies) -> Value {
    let s = sel();
    let inp = RouterInputs {
        canary: c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    to_json(&desired_virtual_service_with_affinity(
        &inp, routes, cookies,
    ))
}

fn w(primary: u32, canary: u32) -> Routes {
    Routes {
        primary,
        canary,
        mirror: false,
    }
}

fn cookies(canary: Option<&str>, primary: Option<&str>, previous: Option<&str>) -> AffinityCookies {
    AffinityCookies {
        canary: canary.map(str::to_string),
        primary: primary.map(str::to_string),
        previous: previous.map(str::to_string),
    }
}

#[test]
fn sticky_rules_during_a_run_with_and_without_a_primary_cookie() {
    let plain = canary(affinity_spec(json!({"cookieName": "flagger-cookie"})));
    let with_primary = canary(affinity_spec(
        json!({"cookieName": "flagger-cookie", "primaryCookieName": "primary-cookie"}),
    ));
    let canary_rule = json!({
        "name": "sticky-route",
        "match": [{"headers": {"Cookie": {"regex": ".*flagger-cookie.*abcdeABCDE.*"}}}],
        "route": [
            {"destination": {"host": "podinfo-primary"}, "weight": 0},
            {"destination": {"host": "podinfo-canary"}, "weight": 100}
        ]
    });
    let canary_dest = json!({
        "destination": {"host": "podinfo-canary"}, "weight": 30,
        "headers": {"response": {"add": {"Set-Cookie": "flagger-cookie=abcdeABCDE; Max-Age=86400"}}}
    });
    struct Case {
        name: &'static str,
        canary: Canary,
        cookies: AffinityCookies,
        want: Value,
    }
    let cases = [
        Case {
            name: "canary cookie only",
            canary: plain.clone(),
            cookies: cookies(Some("flagger-cookie=abcdeABCDE"), None, None),
            want: json!([
                canary_rule.clone(),
                {"route": [{"destination": {"host": "podinfo-primary"}, "weight": 70}, canary_dest.clone()]}
            ]),
        },
        Case {
            name: "canary and primary cookies",
            canary: with_primary,
            cookies: cookies(
                Some("flagger-cookie=abcdeABCDE"),
                Some("primary-cookie=zyxwvZYXWV"),
                Some("flagger-cookie=olderOLDER"),
            ),
            want: json!([
                canary_rule.clone(),
                {
                    "name": "sticky-route-primary",
                    "match": [{"headers": {"Cookie": {"regex": ".*primary-cookie.*zyxwvZYXWV.*"}}}],
                    "route": [
                        {"destination": {"host": "podinfo-primary"}, "weight": 100},
                        {"destination": {"host": "podinfo-canary"}, "weight": 0}
                    ]
                },
                {"route": [
                    {
                        "destination": {"host": "podinfo-primary"}, "weight": 70,
                        // One analysis interval (1m).
                        "headers": {"response": {"add": {"Set-Cookie": "primary-cookie=zyxwvZYXWV; Max-Age=60"}}}
                    },
                    canary_dest.clone()
                ]}
            ]),
        },
        Case {
            name: "after the run: the previous cookie is expired",
            canary: plain.clone(),
            cookies: cookies(None, None, Some("flagger-cookie=abcdeABCDE")),
            want: json!([
                {
                    "name": "sticky-route",
                    "match": [{"headers": {"Cookie": {"regex": ".*flagger-cookie.*abcdeABCDE.*"}}}],
                    "headers": {"response": {"add": {"Set-Cookie": "flagger-cookie=abcdeABCDE; Max-Age=-1"}}},
                    "route": [
                        {"destination": {"host": "podinfo-primary"}, "weight": 70},
                        {"destination": {"host": "podinfo-canary"}, "weight": 30}
                    ]
                },
                {"route": [
                    {"destination": {"host": "podinfo-primary"}, "weight": 70},
                    {"destination": {"host": "podinfo-canary"}, "weight": 30}
                ]}
            ]),
        },
        Case {
            name: "no cookie yet",
            canary: plain.clone(),
            cookies: AffinityCookies::default(),
            want: json!([{"route": [
                {"destination": {"host": "podinfo-primary"}, "weight": 70},
                {"destination": {"host": "podinfo-canary"}, "weight": 30}
            ]}]),
        },
        Case {
            name: "cookies but no sessionAffinity",
            canary: canary(base_spec()),
            cookies: cookies(Some("flagger-cookie=abcdeABCDE"), None, None),
            want: json!([{"route": [
                {"destination": {"host": "podinfo-primary"}, "weight": 70},
                {"destination": {"host": "podinfo-canary"}, "weight": 30}
            ]}]),
        },
    ];
    for case in cases {
        let vs = vs_with(&case.canary, w(70, 30), &case.cookies);
        assert_eq!(vs["spec"]["http"], case.want, "{}", case.name);
        assert_eq!(
            read_back(&vs, "podinfo"),
            Some(w(70, 30)),
            "{}: the weighted route keeps its weights",
            case.name
        );
    }
}

#[test]
fn sticky_rules_carry_the_service_route_settings_and_merge_its_matches() {
    let mut spec = affinity_spec(json!({"cookieName": "c"}));
    spec["service"]["match"] = json!([
        {"uri": {"prefix": "/api"}, "queryParams": {"v": {"exact": "2"}}, "headers": {"x": {"exact": "1"}}},
        {"uri": {"prefix": "/web"}}
    ]);
    spec["service"]["timeout"] = json!("5s");
    spec["service"]["headers"] =
        json!({"request": {"add": {"x-a": "b"}}, "response": {"set": {"x-r": "1"}}});
    let c = canary(spec);

    let vs = vs_with(&c, w(90, 10), &cookies(Some("c=AAAAAbbbbb"), None, None));
    let sticky = &vs["spec"]["http"][0];
    assert_eq!(
        sticky["match"],
        json!([
            {"uri": {"prefix": "/api"}, "queryParams": {"v": {"exact": "2"}}, "headers": {"Cookie": {"regex": ".*c.*AAAAAbbbbb.*"}}},
            {"uri": {"prefix": "/web"}, "headers": {"Cookie": {"regex": ".*c.*AAAAAbbbbb.*"}}}
        ])
    );
    assert_eq!(sticky["timeout"], "5s");
    assert_eq!(sticky["headers"], vs["spec"]["http"][1]["headers"]);
    assert_eq!(
        vs["spec"]["http"][1]["match"][0]["headers"],
        json!({"x": {"exact": "1"}})
    );

    // The expiry rule adds Set-Cookie to the service's own header operations.
    let vs = vs_with(&c, w(100, 0), &cookies(None, None, Some("c=AAAAAbbbbb")));
    assert_eq!(
        vs["spec"]["http"][0]["headers"],
        json!({"request": {"add": {"x-a": "b"}}, "response": {"set": {"x-r": "1"}, "add": {"Set-Cookie": "c=AAAAAbbbbb; Max-Age=-1"}}})
    );
    assert_eq!(
        vs["spec"]["http"][1]["headers"],
        json!({"request": {"add": {"x-a": "b"}}, "response": {"set": {"x-r": "1"}}}),
        "the weighted route keeps the service's headers untouched"
    );
}

#[test]
fn set_cookie_attributes() {
    let sa = |v: Value| -> SessionAffinity { serde_json::from_value(v).unwrap() };
    let cases = [
        (json!({"cookieName": "c"}), 86400, "c=v; Max-Age=86400"),
        (
            json!({"cookieName": "c", "maxAge": 300}),
            300,
            "c=v; Max-Age=300",
        ),
        (
            json!({"cookieName": "c", "domain": "flagger.app", "httpOnly": true, "maxAge": 1200,
                   "partitioned": true, "path": "/app", "sameSite": "Strict", "secure": true}),
            1200,
            "c=v; Max-Age=1200; Domain=flagger.app; HttpOnly; Partitioned; Path=/app; SameSite=Strict; Secure",
        ),
        (
            json!({"cookieName": "c", "httpOnly": false, "secure": false, "partitioned": false, "sameSite": "None"}),
            86400,
            "c=v; Max-Age=86400; SameSite=None",
        ),
        (
            json!({"cookieName": "c", "path": "/", "sameSite": "Lax"}),
            86400,
            "c=v; Max-Age=86400; Path=/; SameSite=Lax",
        ),
    ];
    for (spec, age, want) in cases {
        let sa = sa(spec);
        assert_eq!(sa.max_age(), age);
        assert_eq!(set_cookie(&sa, "c=v", i64::from(sa.max_age())), want);
    }
    // In the VirtualService: the canary cookie and its expiry carry the attributes.
    let c = canary(affinity_spec(
        json!({"cookieName": "c", "path": "/app", "secure": true}),
    ));
    let vs = vs_with(&c, w(50, 50), &cookies(Some("c=x"), None, None));
    assert_eq!(
        vs["spec"]["http"][1]["route"][1]["headers"]["response"]["add"]["Set-Cookie"],
        "c=x; Max-Age=86400; Path=/app; Secure"
    );
    let vs = vs_with(&c, w(100, 0), &cookies(None, None, Some("c=x")));
    assert_eq!(
        vs["spec"]["http"][0]["headers"]["response"]["add"]["Set-Cookie"],
        "c=x; Max-Age=-1; Path=/app; Secure"
    );
}

#[test]
fn mirroring_with_affinity_is_on_the_weighted_route() {
    let mut spec = affinity_spec(json!({"cookieName": "c"}));
    spec["analysis"]["mirror"] = json!(true);
    let c = canary(spec);
    let routes = Routes {
        primary: 100,
        canary: 0,
        mirror: true,
    };
    let vs = vs_with(&c, routes, &cookies(Some("c=x"), None, None));
    assert!(vs["spec"]["http"][0].get("mirror").is_none());
    assert_eq!(
        vs["spec"]["http"][1]["mirror"],
        json!({"host": "podinfo-canary"})
    );
    assert_eq!(read_back(&vs, "podinfo"), Some(routes));
}

#[test]
fn affinity_is_ignored_for_other_strategies_and_tcp() {
    let mut spec = affinity_spec(json!({"cookieName": "c"}));
    spec["analysis"]["iterations"] = json!(5);
    spec["analysis"]["stepWeight"] = Value::Null;
    let c = canary(spec);
    let vs = vs_with(&c, w(100, 0), &cookies(Some("c=x"), None, None));
    assert_eq!(vs["spec"]["http"].as_array().unwrap().len(), 1);

    let mut spec = affinity_spec(json!({"cookieName": "c"}));
    spec["service"]["appProtocol"] = json!("tcp");
    let c = canary(spec);
    let vs = vs_with(&c, w(80, 20), &cookies(Some("c=x"), None, None));
    assert!(vs["spec"].get("http").is_none());
    assert_eq!(read_back(&vs, "podinfo"), Some(w(80, 20)));
}

#[test]
fn desired_virtual_service_reads_the_cookies_from_status() {
    let mut c = canary(affinity_spec(json!({"cookieName": "c"})));
    c.status = Some(CanaryStatus {
        session_affinity_cookie: Some("c=fromStatus".into()),
        primary_session_affinity_cookie: Some(String::new()),
        ..Default::default()
    });
    let s = sel();
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    let vs = to_json(&desired_virtual_service(&inp, w(60, 40)));
    assert_eq!(
        vs["spec"]["http"][0]["match"][0]["headers"]["Cookie"]["regex"],
        ".*c.*fromStatus.*"
    );
    assert_eq!(vs["spec"]["http"].as_array().unwrap().len(), 2);
}

// ---- cookie lifecycle ----

fn progress(phase: Phase, weight: u32, spec: &str) -> Progress {
    Progress {
        phase: Some(phase),
        canary_weight: weight,
        last_applied_spec: Some(spec.into()),
        ..Default::default()
    }
}

fn with_status(sa: Option<Value>, phase: Phase, spec: &str, cookies: AffinityCookies) -> Canary {
    let mut c = canary(match sa {
        Some(sa) => affinity_spec(sa),
        None => base_spec(),
    });
    let mut status = CanaryStatus {
        phase: Some(phase),
        last_applied_spec: Some(spec.into()),
        ..Default::default()
    };
    cookies.write_to(&mut status);
    c.status = Some(status);
    c
}

#[test]
fn cookie_lifecycle() {
    let sa = || Some(json!({"cookieName": "cc"}));
    let both = || Some(json!({"cookieName": "cc", "primaryCookieName": "pc"}));
    struct Case {
        name: &'static str,
        canary: Canary,
        progress: Progress,
        want: AffinityCookies,
    }
    let none = AffinityCookies::default;
    let cases = [
        Case {
            name: "a run starts: a canary cookie is drawn",
            canary: with_status(sa(), Phase::Succeeded, "a", none()),
            progress: progress(Phase::Progressing, 0, "b"),
            want: cookies(Some("cc=R1"), None, None),
        },
        Case {
            name: "a run starts with primaryCookieName: both are drawn",
            canary: with_status(
                both(),
                Phase::Initialized,
                "a",
                cookies(None, None, Some("cc=OLD")),
            ),
            progress: progress(Phase::Progressing, 0, "b"),
            want: cookies(Some("cc=R1"), Some("pc=R2"), Some("cc=OLD")),
        },
        Case {
            name: "during the run the cookies stay",
            canary: with_status(
                both(),
                Phase::Progressing,
                "b",
                cookies(Some("cc=X"), Some("pc=Y"), None),
            ),
            progress: progress(Phase::Progressing, 20, "b"),
            want: cookies(Some("cc=X"), Some("pc=Y"), None),
        },
        Case {
            name: "promotion with the canary still weighted keeps them",
            canary: with_status(
                sa(),
                Phase::Progressing,
                "b",
                cookies(Some("cc=X"), None, None),
            ),
            progress: progress(Phase::Promoting, 50, "b"),
            want: cookies(Some("cc=X"), None, None),
        },
        Case {
            name: "all traffic back to the primary: the cookie becomes the previous one",
            canary: with_status(
                both(),
                Phase::Promoting,
                "b",
                cookies(Some("cc=X"), Some("pc=Y"), Some("cc=OLD")),
            ),
            progress: progress(Phase::Finalising, 0, "b"),
            want: cookies(None, None, Some("cc=X")),
        },
        Case {
            name: "rollback",
            canary: with_status(
                sa(),
                Phase::Progressing,
                "b",
                cookies(Some("cc=X"), None, None),
            ),
            progress: progress(Phase::Failed, 0, "b"),
            want: cookies(None, None, Some("cc=X")),
        },
        Case {
            name: "after the run nothing changes",
            canary: with_status(
                sa(),
                Phase::Succeeded,
                "b",
                cookies(None, None, Some("cc=X")),
            ),
            progress: progress(Phase::Succeeded, 0, "b"),
            want: cookies(None, None, Some("cc=X")),
        },
        Case {
            name: "a failed promotion sends everything to the canary: the cookie stays",
            canary: with_status(
                sa(),
                Phase::Promoting,
                "b",
                cookies(Some("cc=X"), None, None),
            ),
            progress: progress(Phase::Failed, 100, "b"),
            want: cookies(Some("cc=X"), None, None),
        },
        Case {
            name: "a newer revision restarts the run: new cookie, the old one is previous",
            canary: with_status(
                sa(),
                Phase::Progressing,
                "b",
                cookies(Some("cc=X"), None, None),
            ),
            progress: progress(Phase::Progressing, 0, "c"),
            want: cookies(Some("cc=R1"), None, Some("cc=X")),
        },
        Case {
            name: "cookieName changed mid-run",
            canary: with_status(
                both(),
                Phase::Progressing,
                "b",
                cookies(Some("old=X"), Some("pc=Y"), None),
            ),
            progress: progress(Phase::Progressing, 30, "b"),
            want: cookies(Some("cc=R1"), Some("pc=R2"), Some("old=X")),
        },
        Case {
            name: "primaryCookieName removed mid-run",
            canary: with_status(
                sa(),
                Phase::Progressing,
                "b",
                cookies(Some("cc=X"), Some("pc=Y"), None),
            ),
            progress: progress(Phase::Progressing, 30, "b"),
            want: cookies(Some("cc=X"), None, None),
        },
        Case {
            name: "no sessionAffinity: the status is left alone",
            canary: with_status(
                None,
                Phase::Progressing,
                "b",
                cookies(Some("cc=X"), None, None),
            ),
            progress: progress(Phase::Succeeded, 0, "b"),
            want: cookies(Some("cc=X"), None, None),
        },
        Case {
            name: "a canary seen for the first time",
            canary: canary(affinity_spec(json!({"cookieName": "cc"}))),
            progress: progress(Phase::Initializing, 0, "a"),
            want: none(),
        },
    ];
    for case in cases {
        let mut n = 0;
        let got = next_affinity_cookies(&case.canary, &case.progress, || {
            n += 1;
            format!("R{n}")
        });
        assert_eq!(got, case.want, "{}", case.name);
    }
}

#[test]
fn cookies_are_never_written_as_empty_strings() {
    let mut status = CanaryStatus {
        session_affinity_cookie: Some("x=y".into()),
        previous_session_affinity_cookie: Some("x=z".into()),
        ..Default::default()
    };
    cookies(None, Some(""), Some("x=y")).write_to(&mut status);
    let v = serde_json::to_value(&status).unwrap();
    assert!(v.get("sessionAffinityCookie").is_none(), "{v}");
    assert!(v.get("primarySessionAffinityCookie").is_none(), "{v}");
    assert_eq!(v["previousSessionAffinityCookie"], "x=y");
    assert_eq!(
        AffinityCookies::from_status(Some(&CanaryStatus {
            session_affinity_cookie: Some(String::new()),
            ..Default::default()
        })),
        AffinityCookies::default()
    );
}

mod props {
    use super::*;
    use proptest::prelude::{Strategy as Gen, *};

    fn cookie() -> impl Gen<Value = Option<String>> {
        proptest::option::of("[a-zA-Z]{10}".prop_map(|v| format!("cc={v}")))
    }

    proptest! {
        /// Whatever the cookies, the weighted route carries exactly the weights asked for, the
        /// sticky rules come first, and every rule is an Istio route the simulator can split.
        #[test]
        fn affinity_never_changes_the_weighted_split(
            canary_w in 0u32..=100,
            canary_cookie in cookie(),
            primary_cookie in cookie(),
            previous in cookie(),
            with_primary_name in any::<bool>(),
        ) {
            let sa = if with_primary_name {
                json!({"cookieName": "cc", "primaryCookieName": "pc"})
            } else {
                json!({"cookieName": "cc"})
            };
            let c = canary(affinity_spec(sa));
            let routes = w(100 - canary_w, canary_w);
            let ck = AffinityCookies { canary: canary_cookie.clone(), primary: primary_cookie, previous };
            let vs = vs_with(&c, routes, &ck);
            prop_assert_eq!(read_back(&vs, "podinfo"), Some(routes));
            let http = vs["spec"]["http"].as_array().unwrap();
            let last = http.last().unwrap();
            prop_assert!(last.get("name").is_none());
            prop_assert!(last.get("match").is_none());
            for r in &http[..http.len() - 1] {
                prop_assert!(r["name"].as_str().unwrap().starts_with(STICKY_ROUTE));
                prop_assert!(r["match"].as_array().is_some_and(|m| !m.is_empty()));
            }
            let flows = serin_sandbox::mesh::routing::split(&vs["spec"], 100.0, 0.0).unwrap();
            let canary_share: f64 = flows.iter().filter(|f| f.host == "podinfo-canary").map(|f| f.requests).sum();
            prop_assert!((canary_share - f64::from(canary_w)).abs() < 1e-6);
            if canary_cookie.is_none() {
                prop_assert!(!vs.to_string().contains("Max-Age=86400"));
            }
        }
    }
}

#[test]
fn the_mesh_simulator_sends_its_match_share_to_the_sticky_rule() {
    // The simulator knows no cookies: the first rule with a match takes `match_share` of the
    // requests (all to the canary), the weighted route the rest, split by weight.
    let c = canary(affinity_spec(json!({"cookieName": "c"})));
    let vs = vs_with(&c, w(80, 20), &cookies(Some("c=x"), None, None));
    let flows = serin_sandbox::mesh::routing::split(&vs["spec"], 100.0, 0.5).unwrap();
    let to = |host: &str| -> f64 {
        flows
            .iter()
            .filter(|f| f.host == host)
            .map(|f| f.requests)
            .sum()
    };
    assert!((to("podinfo-canary") - 60.0).abs() < 1e-9, "{flows:?}");
    assert!((to("podinfo-primary") - 40.0).abs() < 1e-9, "{flows:?}");
}

// ---- issue 13: breaks found by review ----

#[test]
fn ab_merge_keeps_the_service_match_headers_the_analysis_match_leaves_out() {
    // Flagger's mergeMatchConditions replaces headers and sourceLabels only when the analysis
    // match sets them.
    let a: Vec<HTTPMatchRequest> = serde_json::from_value(json!([
        {"sourceLabels": {"app": "frontend"}},
        {"headers": {"x-canary": {"exact": "1"}}}
    ]))
    .unwrap();
    let s: Vec<HTTPMatchRequest> = serde_json::from_value(json!([
        {"uri": {"prefix": "/api"}, "headers": {"x-tenant": {"exact": "acme"}}}
    ]))
    .unwrap();
    let merged = serde_json::to_value(ab_matches(&a, &s)).unwrap();
    assert_eq!(
        merged,
        json!([
            {"uri": {"prefix": "/api"}, "headers": {"x-tenant": {"exact": "acme"}}, "sourceLabels": {"app": "frontend"}},
            {"uri": {"prefix": "/api"}, "headers": {"x-canary": {"exact": "1"}}}
        ])
    );
}

fn vs_for(spec: Value, routes: Routes) -> Value {
    let c = canary(spec);
    let s = sel();
    let inp = RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &s,
        owner: owner(),
        discovered: &[],
    };
    to_json(&desired_virtual_service(&inp, routes))
}

#[test]
fn tcp_routes_match_the_service_match_ports_and_any_case() {
    for protocol in ["tcp", "TCP", "Tcp"] {
        let mut spec = base_spec();
        spec["service"]["appProtocol"] = json!(protocol);
        let vs = vs_for(spec.clone(), w(90, 10));
        // No service match: Flagger's canaryToL4Match gives no match at all.
        assert!(vs["spec"].get("http").is_none(), "{protocol}: {vs}");
        assert!(
            vs["spec"]["tcp"][0].get("match").is_none(),
            "{protocol}: {vs}"
        );
        assert_eq!(read_back(&vs, "podinfo"), Some(w(90, 10)));

        spec["service"]["match"] = json!([{"port": 3306}, {"port": 3307}]);
        let vs = vs_for(spec, w(90, 10));
        assert_eq!(
            vs["spec"]["tcp"][0]["match"],
            json!([{"port": 3306}, {"port": 3307}]),
            "{protocol}"
        );
    }
}

#[test]
fn match_without_iterations_is_a_progressive_canary_on_the_matched_requests() {
    // Flagger runs it as the canary strategy with the A/B routes: matched requests split by
    // weight, the rest on the primary.
    let mut spec = base_spec();
    spec["analysis"]["match"] = json!([{"headers": {"x-canary": {"exact": "insider"}}}]);
    let vs = vs_for(spec, w(70, 30));
    let http = vs["spec"]["http"].as_array().unwrap();
    assert_eq!(http.len(), 2, "{vs}");
    assert_eq!(
        http[0]["match"],
        json!([{"headers": {"x-canary": {"exact": "insider"}}}])
    );
    assert_eq!(
        http[0]["route"],
        json!([{"destination": {"host": "podinfo-primary"}, "weight": 70}, {"destination": {"host": "podinfo-canary"}, "weight": 30}])
    );
    assert_eq!(
        http[1]["route"],
        json!([{"destination": {"host": "podinfo-primary"}}])
    );
    assert_eq!(read_back(&vs, "podinfo"), Some(w(70, 30)));
}

/// [`drops_owned_fields`] on `actual` as the API server sends it, checked to give the same answer
/// on `actual` as the watch cache keeps it and the controller reads it back (`slim_istio`:
/// serin's fields and the spec as JSON text, others' fields gone; [`cached_json`]).
fn drops(desired: &Value, actual: &Value, manager: &str) -> bool {
    let answer = drops_owned_fields(desired, actual, manager);
    let mut cached: kube::api::DynamicObject = serde_json::from_value(actual.clone()).unwrap();
    crate::controller::watches::slim_istio(&mut cached);
    assert!(cached.data.is_string(), "{cached:?}");
    let cached = cached_json(&cached).unwrap();
    assert_eq!(cached["spec"], actual["spec"]);
    if let Some(entries) = cached.pointer("/metadata/managedFields") {
        assert!(
            entries
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["fieldsV1"].is_string()),
            "{cached}"
        );
    }
    assert_eq!(
        drops_owned_fields(desired, &cached, manager),
        answer,
        "as cached: {cached}"
    );
    answer
}

fn managed(manager: &str, fields: Value) -> Value {
    json!([{"manager": manager, "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields}])
}

#[test]
fn a_removed_field_serin_applied_is_applied_away() {
    // serin applied a trafficPolicy; the Canary no longer has one.
    let fields = json!({"f:spec": {"f:host": {}, "f:trafficPolicy": {".": {}, "f:tls": {".": {}, "f:mode": {}}}}});
    let actual = json!({
        "metadata": {"name": "podinfo-canary", "managedFields": managed("serin/router", fields.clone())},
        "spec": {"host": "podinfo-canary", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}
    });
    let desired =
        json!({"metadata": {"name": "podinfo-canary"}, "spec": {"host": "podinfo-canary"}});
    assert!(drops(&desired, &actual, "serin/router"));
    // Another manager's fields are not serin's to remove.
    assert!(!drops(&desired, &actual, "kubectl"));
    let same = json!({"metadata": {"name": "podinfo-canary"}, "spec": {"host": "podinfo-canary", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}});
    assert!(!drops(&same, &actual, "serin/router"));
    // A key removed inside the policy.
    let fields = json!({"f:spec": {"f:trafficPolicy": {"f:tls": {"f:mode": {}}, "f:loadBalancer": {"f:simple": {}}}}});
    let actual = json!({
        "metadata": {"managedFields": managed("serin/router", fields)},
        "spec": {"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}, "loadBalancer": {"simple": "LEAST_REQUEST"}}}
    });
    let desired = json!({"spec": {"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}});
    assert!(drops(&desired, &actual, "serin/router"));
    // Without managedFields nothing counts as dropped.
    assert!(!drops(&desired, &json!({"spec": {}}), "serin/router"));
}

#[test]
fn an_atomic_list_is_compared_whole() {
    // Istio's http list is atomic: the timeout removed from its route is a difference although
    // the desired route is a subset of the stored one.
    let actual = json!({
        "metadata": {"managedFields": managed("serin/router", json!({"f:spec": {"f:hosts": {}, "f:http": {}}}))},
        "spec": {"hosts": ["podinfo"], "http": [{"timeout": "5s", "retries": {"attempts": 3}, "route": [{"destination": {"host": "podinfo-primary"}, "weight": 100}]}]}
    });
    let desired = json!({"spec": {"hosts": ["podinfo"], "http": [{"route": [{"destination": {"host": "podinfo-primary"}, "weight": 100.0}]}]}});
    assert!(drops(&desired, &actual, "serin/router"));
    let same = json!({"spec": {"hosts": ["podinfo"], "http": [{"timeout": "5s", "retries": {"attempts": 3}, "route": [{"destination": {"host": "podinfo-primary"}, "weight": 100}]}]}});
    assert!(!drops(&same, &actual, "serin/router"));
}

#[test]
fn keyed_list_items_are_matched_by_key() {
    let fields = json!({"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}}}}});
    let actual = json!({
        "metadata": {"managedFields": managed("serin/router", fields)},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}
    });
    let same = json!({"spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
    assert!(!drops(&same, &actual, "serin/router"));
    let moved = json!({"spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}});
    assert!(drops(&moved, &actual, "serin/router"));
    let renamed = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}]}});
    assert!(drops(&renamed, &actual, "serin/router"));
}
