//! The shared sandbox behaves like a cluster: real API server and controllers, the simulated
//! kubelet, and a Prometheus that scrapes what tests register.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client};
use serde_json::json;
use serin_sandbox::kubelet::{NODE_NAME, UNREADY_ANNOTATION};
use serin_sandbox::testenv::{eventually, shared};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: i32, annotations: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": 10,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [
                    {"name": "app", "image": "ghcr.io/stefanprodan/podinfo:6.0.0",
                     "ports": [{"containerPort": 9898}]},
                    {"name": "sidecar", "image": "busybox:1.36"},
                ]},
            },
        },
    }))
    .unwrap()
}

async fn pods(client: &Client, ns: &str, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn api_server_answers_and_all_crds_are_established() {
    let env = shared();
    let client = env.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (
            version.major.as_str(),
            version.minor.as_str(),
            version.git_version.as_str()
        ),
        ("1", "37", "v1.37.2")
    );

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut expected: Vec<String> = serin_api::crd::all()
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    expected.extend(
        [
            "virtualservices.networking.istio.io",
            "destinationrules.networking.istio.io",
            "gateways.networking.istio.io",
        ]
        .map(String::from),
    );
    for name in &expected {
        let crd = crds.get(name).await.unwrap();
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
    }

    // Istio objects are stored and served in every version.
    let ns = env.namespace("crds").await;
    let vs_v1beta1 = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
    ));
    let vs_v1 = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "VirtualService",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &vs_v1beta1);
    let mut vs = DynamicObject::new("podinfo", &vs_v1beta1).within(&ns);
    vs.data = json!({"spec": {"hosts": ["podinfo"], "http": [{"route": [
        {"destination": {"host": "podinfo-primary"}, "weight": 90},
        {"destination": {"host": "podinfo-canary"}, "weight": 10},
    ]}]}});
    api.create(&PostParams::default(), &vs).await.unwrap();
    let got = Api::<DynamicObject>::namespaced_with(client, &ns, &vs_v1)
        .get("podinfo")
        .await
        .unwrap();
    assert_eq!(got.data["spec"]["http"][0]["route"][1]["weight"], 10);
}

fn virtual_service(version: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        version,
        "VirtualService",
    ))
}

/// Istio's own schema is in force: the API server refuses a VirtualService Istio's CRD refuses,
/// in both served versions, and drops or refuses fields Istio does not define.
#[tokio::test]
async fn istios_schema_refuses_a_bad_virtual_service() {
    let env = shared();
    let client = env.client();
    let ns = env.namespace("istio-schema").await;
    let route = |weight: serde_json::Value| {
        json!({"hosts": ["podinfo"], "http": [{"route": [
            {"destination": {"host": "podinfo-primary"}, "weight": weight},
        ]}]})
    };
    for version in ["v1", "v1beta1"] {
        let ar = virtual_service(version);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);

        // A weight written as a string, as a hand-edited manifest might have it.
        let mut vs = DynamicObject::new(&format!("string-weight-{version}"), &ar).within(&ns);
        vs.data = json!({"spec": route(json!("90"))});
        match api.create(&PostParams::default(), &vs).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{s:?}");
                assert!(
                    s.message.contains("spec.http[0].route[0].weight")
                        && s.message.contains("integer"),
                    "{}",
                    s.message
                );
            }
            other => panic!("{version}: a string weight was not refused: {other:?}"),
        }

        // A field Istio does not define: refused under strict field validation...
        let name = format!("unknown-field-{version}");
        let mut vs = DynamicObject::new(&name, &ar).within(&ns);
        let mut spec = route(json!(100));
        spec["trafficSplit"] = json!("90/10");
        vs.data = json!({"spec": spec});
        let strict = PatchParams::apply("serin-test").validation_strict();
        match api.patch(&name, &strict, &Patch::Apply(&vs)).await {
            Err(kube::Error::Api(s)) => {
                assert!(
                    s.message
                        .contains(".spec.trafficSplit: field not declared in schema"),
                    "{}",
                    s.message
                );
            }
            other => panic!("{version}: an unknown field was accepted: {other:?}"),
        }
        // ...and pruned from a plain create: the schema is structural, not open.
        let stored = api.create(&PostParams::default(), &vs).await.unwrap();
        assert!(
            stored.data["spec"].get("trafficSplit").is_none(),
            "{}",
            stored.data
        );
        assert_eq!(stored.data["spec"]["http"][0]["route"][0]["weight"], 100);
    }
}

#[tokio::test]
async fn the_simulated_node_is_ready() {
    let env = shared();
    let node = Api::<Node>::all(env.client()).get(NODE_NAME).await.unwrap();
    let status = node.status.unwrap();
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    assert!(status.allocatable.unwrap().contains_key("pods"));
}

#[tokio::test]
async fn deployment_becomes_available_then_scales_to_zero() {
    let env = shared();
    let client = env.client();
    let ns = env.namespace("deploy").await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &deployment("web", 2, json!({})))
        .await
        .unwrap();

    eventually("web is 2/2 available", LIMIT, || {
        let api = api.clone();
        async move {
            let d = api.get("web").await.map_err(|e| e.to_string())?;
            let s = d.status.unwrap_or_default();
            match (s.ready_replicas, s.available_replicas) {
                (Some(2), Some(2)) => Ok(()),
                other => Err(format!("ready/available {other:?}")),
            }
        }
    })
    .await;

    let running = pods(&client, &ns, "web").await;
    assert_eq!(running.len(), 2);
    let mut ips = HashSet::new();
    for p in &running {
        let spec = p.spec.as_ref().unwrap();
        let st = p.status.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
        assert_eq!(st.phase.as_deref(), Some("Running"));
        let ip = st.pod_ip.clone().unwrap();
        assert!(ip.starts_with("10.244."), "{ip}");
        assert!(ips.insert(ip), "pod IPs must be unique");
        let cs = st.container_statuses.as_ref().unwrap();
        assert_eq!(cs.len(), 2);
        assert!(cs.iter().all(|c| c.ready && c.started == Some(true)));
        assert_eq!(cs[0].image, "ghcr.io/stefanprodan/podinfo:6.0.0");
    }

    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    // Bound pods are deleted gracefully: only the kubelet's final delete removes them.
    eventually("web's pods are gone", LIMIT, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let left = pods(&client, &ns, "web").await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{} pods left", left.len()))
            }
        }
    })
    .await;
    let d = api.get("web").await.unwrap();
    assert_eq!(d.status.unwrap().replicas.unwrap_or(0), 0);
}

#[tokio::test]
async fn unready_annotation_makes_the_progress_deadline_expire() {
    let env = shared();
    let client = env.client();
    let ns = env.namespace("unready").await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &deployment("broken", 1, json!({UNREADY_ANNOTATION: "true"})),
    )
    .await
    .unwrap();

    let reason = eventually("broken reports Progressing=False", LIMIT, || {
        let api = api.clone();
        async move {
            let d = api.get("broken").await.map_err(|e| e.to_string())?;
            let conds = d.status.and_then(|s| s.conditions).unwrap_or_default();
            match conds
                .iter()
                .find(|c| c.type_.as_deref() == Some("Progressing"))
            {
                Some(c) if c.status.as_deref() == Some("False") => Ok(c.reason.clone()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(reason.as_deref(), Some("ProgressDeadlineExceeded"));

    let d = api.get("broken").await.unwrap();
    assert_eq!(d.status.unwrap().available_replicas.unwrap_or(0), 0);
    let ps = pods(&client, &ns, "broken").await;
    assert_eq!(ps.len(), 1);
    let st = ps[0].status.as_ref().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let ready = st
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        st.container_statuses
            .as_ref()
            .unwrap()
            .iter()
            .all(|c| !c.ready)
    );
}

#[tokio::test]
async fn garbage_collector_removes_dependents_of_a_deleted_owner() {
    let env = shared();
    let client = env.client();
    let ns = env.namespace("gc").await;
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
    let owner = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let dependent: ConfigMap = serde_json::from_value(json!({"metadata": {
        "name": "dependent",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                             "uid": owner.metadata.uid.unwrap()}],
    }}))
    .unwrap();
    api.create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually("the dependent is collected", LIMIT, || {
        let api = api.clone();
        async move {
            match api.get_opt("dependent").await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still there".to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
}

/// Serves one counter in the Prometheus text format on a loopback port.
async fn serve_counter(body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn prometheus_scrapes_a_target_registered_at_runtime() {
    let env = shared();
    let job = format!("probe-{}", std::process::id());
    let addr = serve_counter(
        "# TYPE serin_sandbox_probe_total counter\nserin_sandbox_probe_total{path=\"/x\"} 42\n"
            .into(),
    )
    .await;
    env.register_scrape_target(&job, &addr).unwrap();

    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/query", env.prometheus_url());
    let query = format!("serin_sandbox_probe_total{{job=\"{job}\"}}");
    let (labels, value) = eventually("Prometheus has the probe's series", LIMIT, || {
        first_series(http.clone(), url.clone(), query.clone())
    })
    .await;
    assert_eq!(value, "42");
    assert_eq!(labels["path"], "/x");
    assert_eq!(labels["instance"], addr.as_str());

    // And it scrapes itself. Under load the probe's series can land before the first self-scrape
    // does (the two are separate scrape loops), so this waits too.
    let (_, up) = eventually("Prometheus has scraped itself", LIMIT, || {
        first_series(http.clone(), url.clone(), "up{job=\"prometheus\"}".into())
    })
    .await;
    assert_eq!(up, "1");
}

/// The labels and value of the first series `query` returns, or the whole answer as the error.
async fn first_series(
    http: reqwest::Client,
    url: String,
    query: String,
) -> Result<(serde_json::Value, serde_json::Value), String> {
    let v: serde_json::Value = http
        .get(&url)
        .query(&[("query", &query)])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    match v["data"]["result"].as_array().and_then(|r| r.first()) {
        Some(s) => Ok((s["metric"].clone(), s["value"][1].clone())),
        None => Err(v.to_string()),
    }
}

/// Tests of one binary register their targets at the same moment; every registration must
/// succeed and Prometheus must end up with all of them (CI once lost one to a temp-file race).
#[tokio::test]
async fn concurrent_scrape_target_registrations_all_land() {
    let env = shared();
    let jobs: Vec<String> = (0..16)
        .map(|i| format!("concurrent-{}-{i}", std::process::id()))
        .collect();
    let results: Vec<std::io::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, job)| {
                s.spawn(move || env.register_scrape_target(job, &format!("127.0.0.1:{}", 1 + i)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
            })
            .collect()
    });
    for (job, r) in jobs.iter().zip(&results) {
        assert!(r.is_ok(), "registering {job}: {r:?}");
    }

    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/targets", env.prometheus_url());
    eventually("Prometheus lists every registered job", LIMIT, || {
        let (http, url, jobs) = (http.clone(), url.clone(), jobs.clone());
        async move {
            let v: serde_json::Value = http
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let seen: std::collections::BTreeSet<String> = v["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["labels"]["job"].as_str().map(str::to_string))
                .collect();
            let missing: Vec<&String> = jobs.iter().filter(|j| !seen.contains(*j)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        }
    })
    .await;
    for job in &jobs {
        env.unregister_scrape_target(job).unwrap();
    }
}
