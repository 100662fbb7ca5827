use super::*;
use serde_json::json;

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
    assert_eq!(svcs[2]["metadata"]["annotations"], json!({"x": "1"}));
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
    let vs = desired_virtual_service(
        &inp,
        Routes {
            primary: 70,
            canary: 30,
            mirror: false,
        },
    );
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
        read_routes(&vs, "podinfo"),
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
    let vs = desired_virtual_service(
        &inp,
        Routes {
            primary: 100,
            canary: 0,
            mirror: false,
        },
    );
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
    let vs = desired_virtual_service(
        &inp,
        Routes {
            primary: 0,
            canary: 100,
            mirror: false,
        },
    );
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
    let vs = desired_virtual_service(
        &inp,
        Routes {
            primary: 100,
            canary: 0,
            mirror: true,
        },
    );
    assert_eq!(
        vs["spec"]["http"][0]["mirror"],
        json!({"host": "podinfo-canary"})
    );
    assert_eq!(
        vs["spec"]["http"][0]["mirrorPercentage"],
        json!({"value": 30})
    );
    assert!(read_routes(&vs, "podinfo").unwrap().mirror);
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
    let vs = desired_virtual_service(
        &inp,
        Routes {
            primary: 100,
            canary: 0,
            mirror: false,
        },
    );
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
    let vs = desired_virtual_service(
        &inp,
        Routes {
            primary: 90,
            canary: 10,
            mirror: false,
        },
    );
    assert_eq!(vs["spec"]["tcp"][0]["match"], json!([{"port": 9898}]));
    assert!(vs["spec"].get("http").is_none());
    assert_eq!(
        read_routes(&vs, "podinfo"),
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
    let drs = desired_destination_rules(&inp);
    assert_eq!(drs[0]["metadata"]["name"], "podinfo-canary");
    assert_eq!(
        drs[0]["spec"],
        json!({"host": "podinfo-canary", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}})
    );
    assert_eq!(drs[1]["spec"]["host"], "podinfo-primary");
}
