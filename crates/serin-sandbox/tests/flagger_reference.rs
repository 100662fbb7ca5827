//! The reference works: real Flagger (built from its module at the pinned release, on first use
//! if `serin-sandbox setup --with-flagger` did not build it) runs on one namespace of the sandbox,
//! under its own CRD as its Helm chart installs it, with the mesh simulator as Istio and the
//! sandbox's Prometheus, and takes a Canary through one promotion. The differential tests and the
//! side-by-side benchmark build on this.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use serin_sandbox::flagger::{self, Flagger, FlaggerOptions};
use serin_sandbox::mesh::{self, MeshOptions};
use serin_sandbox::testenv::{eventually, shared};

fn canary_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("flagger.app", "v1beta1", "Canary"),
            "canaries",
        ),
    )
}

fn virtual_services(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "networking.istio.io",
            "v1beta1",
            "VirtualService",
        )),
    )
}

fn deployment(image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "podinfo", "labels": {"app": "podinfo"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "podinfo"}},
            "template": {
                "metadata": {"labels": {"app": "podinfo"}},
                "spec": {"containers": [{
                    "name": "podinfo", "image": image,
                    "ports": [{"name": "http", "containerPort": 9898, "protocol": "TCP"}]
                }]}
            }
        }
    })
}

/// Flagger's own tutorial Canary, with a 10 s interval.
fn canary() -> Value {
    json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo"},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "progressDeadlineSeconds": 60,
            "service": {"port": 9898, "targetPort": 9898},
            "analysis": {
                "interval": "10s", "threshold": 2, "maxWeight": 30, "stepWeight": 10,
                "metrics": [
                    {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "30s"},
                    {"name": "request-duration", "thresholdRange": {"max": 500}, "interval": "30s"}
                ]
            }
        }
    })
}

async fn apply(api: &Api<DynamicObject>, name: &str, object: &Value) {
    api.patch(
        name,
        &PatchParams::apply("flagger-reference-test").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

async fn phase(api: &Api<DynamicObject>) -> String {
    api.get_opt("podinfo")
        .await
        .ok()
        .flatten()
        .and_then(|c| c.data["status"]["phase"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The canary weight of the VirtualService Flagger wrote, if any.
async fn canary_weight(client: &Client, ns: &str) -> Option<i64> {
    let vs = virtual_services(client, ns)
        .get_opt("podinfo")
        .await
        .ok()??;
    vs.data["spec"]["http"][0]["route"]
        .as_array()?
        .iter()
        .find(|r| r["destination"]["host"] == "podinfo-canary")
        .and_then(|r| r["weight"].as_i64())
}

fn image_of(d: &Deployment) -> String {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn flagger_promotes_a_canary_on_the_sandbox() {
    let bins = tokio::task::spawn_blocking(serin_sandbox::setup::flux::ensure_flagger)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("Flagger is not available: {e:#}"));
    let env = shared();
    let client = env.client();
    let ns = env.namespace("flagger").await;

    // Flagger's CRD as its chart installs it, over the schema the sandbox installed.
    let names = flagger::install_crd(&client, &bins).await.unwrap();
    assert!(
        names.contains(&"canaries.flagger.app".to_string()),
        "{names:?}"
    );
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get("canaries.flagger.app")
        .await
        .unwrap();
    let managers: Vec<String> = crd
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&flagger::CRD_MANAGER.to_string()),
        "{managers:?}"
    );

    let mesh = mesh::start(
        env.config(),
        MeshOptions {
            namespace: Some(ns.clone()),
            rate_per_second: 20.0,
            ..Default::default()
        },
    )
    .unwrap();
    env.register_scrape_target("mesh", &mesh.metrics_addr().to_string())
        .unwrap();
    let log = env.logs_dir().join("flagger.log");
    let mut flagger = Flagger::start(
        &bins,
        FlaggerOptions {
            kubeconfig: env.kubeconfig_path(),
            prometheus: env.prometheus_url(),
            namespace: &ns,
            log: &log,
        },
    )
    .await
    .unwrap();

    let deployments: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment")),
    );
    let canaries = canary_api(&client, &ns);
    apply(&deployments, "podinfo", &deployment("podinfo:6.0.0")).await;
    apply(&canaries, "podinfo", &canary()).await;
    let limit = Duration::from_secs(120);
    let tail = || serin_sandbox_tail(&log);
    eventually("Flagger initializes podinfo", limit, || async {
        match phase(&canaries).await.as_str() {
            "Initialized" => Ok(()),
            p => Err(format!("phase {p:?}; Flagger's log:\n{}", tail())),
        }
    })
    .await;
    let typed: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let primary = typed.get("podinfo-primary").await.unwrap();
    assert_eq!(image_of(&primary), "podinfo:6.0.0");

    // A release: Flagger shifts traffic step by step, then promotes.
    apply(&deployments, "podinfo", &deployment("podinfo:6.0.1")).await;
    let mut weights: Vec<i64> = Vec::new();
    let done = Duration::from_secs(300);
    let deadline = tokio::time::Instant::now() + done;
    loop {
        if let Some(w) = canary_weight(&client, &ns).await
            && weights.last() != Some(&w)
        {
            weights.push(w);
        }
        let p = phase(&canaries).await;
        if p == "Succeeded" && weights.iter().any(|w| *w > 0) {
            break;
        }
        assert_ne!(p, "Failed", "Flagger's log:\n{}", tail());
        assert!(
            tokio::time::Instant::now() < deadline,
            "no promotion within {done:?}: phase {p:?}, weights {weights:?}; Flagger's log:\n{}",
            tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        weights,
        vec![0, 10, 20, 30, 0],
        "the VirtualService's canary weight"
    );
    let primary = typed.get("podinfo-primary").await.unwrap();
    assert_eq!(image_of(&primary), "podinfo:6.0.1");
    let events: Vec<String> = Api::<Event>::namespaced(client.clone(), &ns)
        .list(
            &ListParams::default().fields("involvedObject.kind=Canary,involvedObject.name=podinfo"),
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    for want in [
        format!("Copying podinfo.{ns} template spec to podinfo-primary.{ns}"),
        format!("Promotion completed! Scaling down podinfo.{ns}"),
    ] {
        // client-go's event aggregation may prefix "(combined from similar events): ".
        assert!(
            events.iter().any(|e| e.ends_with(&want)),
            "no {want:?} in {events:?}"
        );
    }

    let pid = flagger.pid();
    flagger.stop();
    mesh.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "Flagger (pid {pid}) still runs"
    );
}

fn serin_sandbox_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
