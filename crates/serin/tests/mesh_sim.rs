//! The mesh simulator against the real sandbox: its telemetry, scraped by the sandbox's real
//! Prometheus, answers Flagger's exact built-in Istio queries as a mesh would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};
use serin_sandbox::mesh::{self, MeshHandle, MeshOptions};
use serin_sandbox::testenv::{eventually, shared};

const LIMIT: Duration = Duration::from_secs(90);

/// Flagger's built-in queries, from the one place serin keeps them.
fn builtin(name: &str, namespace: &str, target: &str, interval: &str) -> String {
    let model = serin::metrics::TemplateModel {
        namespace: namespace.into(),
        target: target.into(),
        interval: interval.into(),
        ..Default::default()
    };
    serin::metrics::builtin_query(name, &model).expect("a built-in metric")
}

fn success_rate_query(namespace: &str, target: &str, interval: &str) -> String {
    builtin(
        serin::metrics::REQUEST_SUCCESS_RATE,
        namespace,
        target,
        interval,
    )
}

fn duration_query(namespace: &str, target: &str, interval: &str) -> String {
    builtin(
        serin::metrics::REQUEST_DURATION,
        namespace,
        target,
        interval,
    )
}

/// One instant query. `Ok(None)` is Flagger's "no values" (empty vector or NaN).
async fn query(prometheus: &str, promql: &str) -> Result<Option<f64>, String> {
    let resp = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("query failed: {e:?}"))?;
    let body: Value = resp.json().await.map_err(|e| format!("bad body: {e}"))?;
    if body["status"] != "success" {
        return Err(format!("Prometheus refused {promql}: {body}"));
    }
    let result = body["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("not a vector: {body}"))?;
    let Some(last) = result.last() else {
        return Ok(None);
    };
    let value: f64 = last["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no sample value in {body}"))?;
    Ok(if value.is_nan() { None } else { Some(value) })
}

fn deployment(name: &str, annotations: Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "podinfo",
                    "image": "ghcr.io/stefanprodan/podinfo:6.0.0",
                    "ports": [{"containerPort": 9898}]}]},
            },
        },
    }))
    .unwrap()
}

fn service(name: &str, app: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": app},
            "ports": [{"name": "http", "port": 9898, "protocol": "TCP", "targetPort": 9898}],
        },
    }))
    .unwrap()
}

fn vs_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
    ))
}

fn weighted_routes(primary: i64, canary: i64) -> Value {
    json!({"hosts": ["podinfo"], "gateways": ["mesh"], "http": [{"route": [
        {"destination": {"host": "podinfo-primary"}, "weight": primary},
        {"destination": {"host": "podinfo-canary"}, "weight": canary},
    ]}]})
}

async fn create_virtual_service(
    client: &Client,
    ns: &str,
    name: &str,
    annotations: Value,
    spec: Value,
) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &vs_resource());
    let mut vs = DynamicObject::new(name, &vs_resource()).within(ns);
    vs.metadata.annotations = serde_json::from_value(annotations).unwrap();
    vs.data = json!({ "spec": spec });
    api.create(&PostParams::default(), &vs).await.unwrap();
}

/// Flagger's objects for podinfo: the canary (target) and primary Deployments with different
/// selector labels, and the two Services the VirtualService routes to.
async fn podinfo(client: &Client, ns: &str, canary_annotations: Value) {
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    deps.create(&pp, &deployment("podinfo", canary_annotations))
        .await
        .unwrap();
    deps.create(&pp, &deployment("podinfo-primary", json!({})))
        .await
        .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    svcs.create(&pp, &service("podinfo-primary", "podinfo-primary"))
        .await
        .unwrap();
    svcs.create(&pp, &service("podinfo-canary", "podinfo"))
        .await
        .unwrap();
}

/// Starts a simulator for one test namespace and has the sandbox's Prometheus scrape it. With
/// the ingress it reads the sandbox's kubeconfig file, so that both ways in are exercised.
async fn simulator(ns: &str, ingress: bool) -> MeshHandle {
    simulator_with(
        ns,
        MeshOptions {
            ingress,
            ..MeshOptions::default()
        },
    )
    .await
}

/// [`simulator`] with options of the test's own (its namespace is set here).
async fn simulator_with(ns: &str, opts: MeshOptions) -> MeshHandle {
    let env = shared();
    let ingress = opts.ingress;
    let opts = MeshOptions {
        namespace: Some(ns.to_string()),
        ..opts
    };
    let handle = if ingress {
        mesh::start_with_kubeconfig(env.kubeconfig_path(), opts)
    } else {
        mesh::start(env.config(), opts)
    }
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), handle.synced())
        .await
        .expect("the simulator's caches did not sync within 30 s")
        .unwrap();
    env.register_scrape_target(&format!("mesh-{ns}"), &handle.metrics_addr().to_string())
        .unwrap();
    handle
}

/// The value of one `istio_requests_total` series family from `/metrics`, summed over the lines
/// containing every fragment.
async fn scraped_requests(handle: &MeshHandle, fragments: &[&str]) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", handle.metrics_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| fragments.iter().all(|f| l.contains(f)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn flagger_queries_see_the_weighted_split_and_each_revisions_behaviour() {
    let env = shared();
    let client = env.client();
    let ns = env.namespace("mesh").await;
    podinfo(
        &client,
        &ns,
        json!({"serin.dev/simulate": "errors=50%,latency=200ms"}),
    )
    .await;
    // A workload no route leads to.
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment("idle", json!({})))
        .await
        .unwrap();
    create_virtual_service(
        &client,
        &ns,
        "podinfo",
        json!({"serin.dev/simulate-rate": "50"}),
        weighted_routes(80, 20),
    )
    .await;
    let handle = simulator(&ns, false).await;
    let prom = env.prometheus_url().to_string();

    let canary_rate = eventually("canary success rate about 50", LIMIT, || {
        let q = success_rate_query(&ns, "podinfo", "1m");
        let prom = prom.clone();
        async move {
            match query(&prom, &q).await? {
                Some(v) if (40.0..=60.0).contains(&v) => Ok(v),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let primary_rate = eventually("primary success rate 100", LIMIT, || {
        let q = success_rate_query(&ns, "podinfo-primary", "1m");
        let prom = prom.clone();
        async move {
            match query(&prom, &q).await? {
                Some(v) if v > 99.99 => Ok(v),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    // 200 ms lies in Istio's 100–250 bucket; histogram_quantile interpolates inside it.
    let canary_p99 = eventually("canary p99 about 200 ms", LIMIT, || {
        let q = duration_query(&ns, "podinfo", "1m");
        let prom = prom.clone();
        async move {
            match query(&prom, &q).await? {
                Some(v) if (150.0..=250.0).contains(&v) => Ok(v),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let primary_p99 = query(&prom, &duration_query(&ns, "podinfo-primary", "1m"))
        .await
        .unwrap()
        .expect("the primary has a request duration");
    assert!(primary_p99 <= 10.0, "primary p99 {primary_p99}");
    eprintln!(
        "success rate canary {canary_rate:.2} primary {primary_rate:.2}; \
         p99 canary {canary_p99:.1} ms primary {primary_p99:.2} ms"
    );

    // The shares follow the weights: 80/20 of the counter increments over a few seconds.
    let canary_sel = [
        "source_workload=\"loadtester\"",
        "destination_workload=\"podinfo\"",
    ];
    let primary_sel = [
        "source_workload=\"loadtester\"",
        "destination_workload=\"podinfo-primary\"",
    ];
    let (c0, p0) = (
        scraped_requests(&handle, &canary_sel).await,
        scraped_requests(&handle, &primary_sel).await,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (c1, p1) = (
        scraped_requests(&handle, &canary_sel).await,
        scraped_requests(&handle, &primary_sel).await,
    );
    let share = (c1 - c0) as f64 / ((c1 - c0) + (p1 - p0)) as f64;
    assert!(
        (0.18..=0.22).contains(&share),
        "canary share {share} ({} canary, {} primary requests)",
        c1 - c0,
        p1 - p0
    );

    // A workload that never got traffic has no series at all: Flagger's "no values".
    assert_eq!(
        query(&prom, &success_rate_query(&ns, "idle", "1m"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        query(&prom, &duration_query(&ns, "idle", "1m"))
            .await
            .unwrap(),
        None
    );

    // All traffic to the primary: the canary's counters stop, the primary's keep growing.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &vs_resource());
    api.patch(
        "podinfo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": weighted_routes(100, 0)})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let canary_before = scraped_requests(&handle, &["destination_workload=\"podinfo\""]).await;
    let primary_before =
        scraped_requests(&handle, &["destination_workload=\"podinfo-primary\""]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let canary_after = scraped_requests(&handle, &["destination_workload=\"podinfo\""]).await;
    let primary_after =
        scraped_requests(&handle, &["destination_workload=\"podinfo-primary\""]).await;
    assert_eq!(canary_after, canary_before, "the canary still gets traffic");
    // 50 requests/s for 2 s.
    assert!(
        (80..=120).contains(&(primary_after - primary_before)),
        "primary got {} requests in 2 s",
        primary_after - primary_before
    );
    env.unregister_scrape_target(&format!("mesh-{ns}")).unwrap();
}

#[tokio::test]
async fn ab_match_share_and_mirroring() {
    let env = shared();
    let client = env.client();
    let ns = env.namespace("mesh-ab").await;
    podinfo(&client, &ns, json!({})).await;
    // Flagger's A/B shape, with the canary also mirrored at 40% from the default route.
    create_virtual_service(
        &client,
        &ns,
        "podinfo",
        json!({"serin.dev/simulate-rate": "100", "serin.dev/simulate-match-share": "30"}),
        json!({"hosts": ["podinfo"], "http": [
            {"match": [{"headers": {"x-canary": {"exact": "insider"}}}], "route": [
                {"destination": {"host": "podinfo-primary"}, "weight": 0},
                {"destination": {"host": "podinfo-canary"}, "weight": 100}]},
            {"route": [{"destination": {"host": "podinfo-primary"}, "weight": 0}],
             "mirror": {"host": "podinfo-canary"}, "mirrorPercentage": {"value": 40.0}},
        ]}),
    )
    .await;
    let handle = simulator(&ns, false).await;
    let h = &handle;
    let canary_sel = ["destination_workload=\"podinfo\""];
    let primary_sel = ["destination_workload=\"podinfo-primary\""];
    eventually("both revisions get traffic", LIMIT, move || async move {
        let c = scraped_requests(h, &canary_sel).await;
        let p = scraped_requests(h, &primary_sel).await;
        if c > 0 && p > 0 {
            Ok(())
        } else {
            Err(format!("canary {c}, primary {p}"))
        }
    })
    .await;
    let (c0, p0) = (
        scraped_requests(h, &canary_sel).await,
        scraped_requests(h, &primary_sel).await,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (c1, p1) = (
        scraped_requests(h, &canary_sel).await,
        scraped_requests(h, &primary_sel).await,
    );
    // Primary: the 70% that do not match. Canary: the 30% that match, plus a 40% mirror of
    // the default route (28%).
    let ratio = (c1 - c0) as f64 / (p1 - p0) as f64;
    let want = 0.58 / 0.70;
    assert!(
        (want - 0.04..=want + 0.04).contains(&ratio),
        "canary/primary {ratio}, want {want} ({} canary, {} primary requests)",
        c1 - c0,
        p1 - p0
    );
}

#[tokio::test]
async fn a_malformed_annotation_is_reported_and_simulates_nothing() {
    let env = shared();
    let client = env.client();
    let ns = env.namespace("mesh-bad").await;
    podinfo(&client, &ns, json!({"serin.dev/simulate": "errors=abc"})).await;
    create_virtual_service(&client, &ns, "podinfo", json!({}), weighted_routes(50, 50)).await;
    let handle = simulator(&ns, false).await;

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let event = eventually("a SimulateAnnotationInvalid Warning", LIMIT, || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(mesh::INVALID_REASON))
                .ok_or_else(|| "no such event yet".to_string())
        }
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.involved_object.kind.as_deref(), Some("Deployment"));
    assert_eq!(event.involved_object.name.as_deref(), Some("podinfo"));
    let message = event.message.unwrap_or_default();
    assert!(message.contains("errors=\"abc\""), "{message}");

    // The healthy primary gets its half; the malformed canary gets nothing recorded.
    let h = &handle;
    eventually("primary traffic", LIMIT, move || async move {
        match scraped_requests(h, &["destination_workload=\"podinfo-primary\""]).await {
            n if n >= 20 => Ok(()),
            n => Err(format!("{n} requests")),
        }
    })
    .await;
    assert_eq!(
        scraped_requests(&handle, &["destination_workload=\"podinfo\""]).await,
        0
    );
}

#[tokio::test]
async fn the_ingress_answers_with_the_simulated_behaviour() {
    let env = shared();
    let client = env.client();
    let ns = env.namespace("mesh-in").await;
    podinfo(
        &client,
        &ns,
        json!({"serin.dev/simulate": "errors=50%,latency=100ms"}),
    )
    .await;
    let handle = simulator(&ns, true).await;
    let ingress = handle.ingress_addr().expect("ingress requested");
    let http = reqwest::Client::new();

    // The workloads become ready through the simulated kubelet; until then: 503.
    for (what, url, host) in [
        (
            "the canary",
            format!("http://{ingress}/"),
            Some(format!("podinfo-canary.{ns}")),
        ),
        (
            "the primary",
            format!("http://{ingress}/{ns}/podinfo-primary/"),
            None,
        ),
    ] {
        let http = &http;
        eventually(
            &format!("{what} answers through the ingress"),
            LIMIT,
            move || {
                let (url, host) = (url.clone(), host.clone());
                async move {
                    let mut req = http.get(url);
                    if let Some(h) = host {
                        req = req.header("Host", h);
                    }
                    let r = req.send().await.map_err(|e| e.to_string())?;
                    match r.status().as_u16() {
                        200 | 500 => Ok(()),
                        s => Err(format!("status {s}")),
                    }
                }
            },
        )
        .await;
    }
    let direct = [
        "source_workload=\"direct\"",
        "destination_workload=\"podinfo\"",
    ];
    let before = scraped_requests(&handle, &direct).await;
    let mut codes = Vec::new();
    let t0 = std::time::Instant::now();
    for _ in 0..10 {
        let r = http
            .get(format!("http://{ingress}/"))
            .header("Host", format!("podinfo-canary.{ns}:9898"))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    let elapsed = t0.elapsed();
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 5, "{codes:?}");
    assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
    assert_eq!(scraped_requests(&handle, &direct).await - before, 10);

    // The path form reaches the primary: healthy.
    let r = http
        .get(format!("http://{ingress}/{ns}/podinfo-primary/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "podinfo-primary\n");
    // No such Service.
    let r = http
        .get(format!("http://{ingress}/{ns}/nothing/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// The benchmark's setting: a route that sends everything to the primary is silent, a split one
/// carries traffic to both sides, one sending everything to the canary carries it there, and
/// settling again silences it.
#[tokio::test]
async fn split_only_carries_traffic_only_while_a_route_splits_it() {
    let env = shared();
    let client = env.client();
    let ns = env.namespace("mesh-split").await;
    podinfo(&client, &ns, json!({})).await;
    create_virtual_service(
        &client,
        &ns,
        "podinfo",
        json!({"serin.dev/simulate-rate": "100"}),
        weighted_routes(100, 0),
    )
    .await;
    let handle = simulator_with(
        &ns,
        MeshOptions {
            split_only: true,
            ..MeshOptions::default()
        },
    )
    .await;
    // At 100 requests a second, 1.5 s would have recorded about 150 at the primary.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        scraped_requests(&handle, &["destination_workload="]).await,
        0
    );

    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &vs_resource());
    let set_weights = |primary: i64, canary: i64| {
        let api = api.clone();
        async move {
            api.patch(
                "podinfo",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": weighted_routes(primary, canary)})),
            )
            .await
            .unwrap();
        }
    };
    set_weights(90, 10).await;
    let h = &handle;
    for workload in ["podinfo-primary", "podinfo"] {
        let fragment = format!("destination_workload=\"{workload}\"");
        eventually(&format!("traffic to {workload}"), LIMIT, || {
            let fragment = fragment.clone();
            async move {
                match scraped_requests(h, &[&fragment]).await {
                    n if n >= 5 => Ok(()),
                    n => Err(format!("{n} requests")),
                }
            }
        })
        .await;
    }

    // All of it to the canary (the last step at maxWeight 100): still carried.
    set_weights(0, 100).await;
    let canary = "destination_workload=\"podinfo\"";
    let before = scraped_requests(h, &[canary]).await;
    eventually("traffic to the canary at 100 %", LIMIT, || async move {
        match scraped_requests(h, &[canary]).await {
            n if n >= before + 20 => Ok(()),
            n => Err(format!("{before} then {n} requests")),
        }
    })
    .await;

    set_weights(100, 0).await;
    eventually("the settled route goes silent", LIMIT, || async move {
        let before = scraped_requests(h, &["destination_workload="]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        match scraped_requests(h, &["destination_workload="]).await {
            after if after == before => Ok(()),
            after => Err(format!("{before} then {after} requests")),
        }
    })
    .await;
    env.unregister_scrape_target(&format!("mesh-{ns}")).unwrap();
}
