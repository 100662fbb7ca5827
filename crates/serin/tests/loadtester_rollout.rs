//! A canary driven through `serin loadtester` end to end, as Flagger users run it: a pre-rollout
//! `bash` smoke test, a `cmd` load test with `hey` against the canary through the mesh
//! simulator's ingress, a confirm-promotion gate held until `/gate/open`, and a rollback gate
//! opened mid-analysis.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

#[path = "support/mod.rs"]
mod support;

#[path = "support/loadtester.rs"]
mod lt;

use std::time::Duration;

use lt::LoadtesterProcess;
use serde_json::{Value, json};
use serin::rollout::messages as msg;
use serin_sandbox::mesh::{self, MeshOptions};
use serin_sandbox::testenv::{eventually, shared};
use support::*;

/// A World whose mesh simulator also serves the ingress, and a load tester keeping its gates in
/// the namespace's ConfigMap.
async fn world(prefix: &str) -> (World, LoadtesterProcess) {
    lt::require_hey();
    let env = shared();
    let ns = env.namespace(prefix).await;
    let mesh = mesh::start(
        env.config(),
        MeshOptions {
            namespace: Some(ns.clone()),
            rate_per_second: 20.0,
            ingress: true,
            ..Default::default()
        },
    )
    .expect("mesh simulator");
    env.register_scrape_target(&format!("mesh-{ns}"), &mesh.metrics_addr().to_string())
        .expect("scrape target");
    let controller = ControllerProcess::spawn(env, &ns, "1");
    let kubeconfig = env.kubeconfig_path().to_str().unwrap().to_string();
    let loadtester = LoadtesterProcess::spawn(
        &env.logs_dir().join(format!("loadtester-{ns}.log")),
        &["--kubeconfig", &kubeconfig, "--namespace", &ns],
    );
    let w = World {
        env,
        client: env.client(),
        ns,
        mesh,
        controller,
    };
    (w, loadtester)
}

/// Requests the ingress sent to the canary workload (`podinfo`), from the simulator's telemetry.
async fn canary_requests_through_ingress(w: &World) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", w.mesh.metrics_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains(&format!("source_workload=\"{}\"", mesh::DIRECT_SOURCE)))
        .filter(|l| l.contains("destination_workload=\"podinfo\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The webhooks of the scenario, all pointing at the load tester.
fn webhooks(w: &World, lt: &LoadtesterProcess, marker: &std::path::Path) -> Vec<Value> {
    let ingress = w.mesh.ingress_addr().expect("ingress");
    let host = format!("podinfo-canary.{}", w.ns);
    vec![
        json!({
            "name": "smoke test",
            "type": "pre-rollout",
            "url": lt.url("/"),
            "timeout": "30s",
            "metadata": {
                "type": "bash",
                "cmd": format!(
                    "hey -n 4 -c 1 -host {host} http://{ingress}/ | grep -q '\\[200\\]' && echo smoke >> {}",
                    marker.display()
                )
            }
        }),
        json!({
            "name": "load test",
            "type": "rollout",
            "url": lt.url("/"),
            "timeout": "5s",
            "metadata": {"cmd": format!("hey -z 10s -q 10 -c 2 -host {host} http://{ingress}/")}
        }),
    ]
}

#[tokio::test]
async fn load_test_and_promotion_gate_through_the_loadtester() {
    let (w, lt) = world("lt-promo").await;
    let ns = w.ns.clone();
    let marker = w.env.logs_dir().join(format!("smoke-{ns}"));
    let mut hooks = webhooks(&w, &lt, &marker);
    hooks.push(json!({"name": "promotion gate", "type": "confirm-promotion", "url": lt.url("/gate/check")}));
    let analysis = json!({
        "interval": "10s", "threshold": 3, "maxWeight": 50, "stepWeight": 25,
        "metrics": builtin_metrics(), "webhooks": hooks
    });
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", analysis)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let weights = w.watch_weights("podinfo");
    let before = canary_requests_through_ingress(&w).await;

    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_phase("podinfo", "WaitingPromotion", LIMIT * 2).await;
    let smoke = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(
        smoke.starts_with("smoke\n"),
        "the pre-rollout bash check ran and saw the canary answer: {smoke:?}\n{}",
        lt.log_text()
    );
    let load = canary_requests_through_ingress(&w).await - before;
    assert!(
        load >= 20,
        "hey's load test reached the canary through the mesh: {load} requests\n{}",
        lt.log_text()
    );
    assert!(
        lt.log_text().contains("gate check: approved false"),
        "{}",
        lt.log_text()
    );

    // The closed gate holds the canary: still waiting two intervals later, at the max weight.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let c = w.canary("podinfo").await;
    let status = c.status.unwrap();
    assert_eq!(
        status.phase.map(|p| p.as_str().to_string()).as_deref(),
        Some("WaitingPromotion")
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.0"
    );
    let c = msg::qualified("podinfo", &ns);
    assert!(
        w.has_event(
            "podinfo",
            &msg::halt_waiting_promotion(&c, "promotion gate")
        )
        .await,
        "{:#?}",
        w.events("podinfo").await
    );

    let (code, _) = lt
        .post("/gate/open", &json!({"name": "podinfo", "namespace": ns}))
        .await;
    assert_eq!(code, 202);
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.1",
        "promoted once the gate opened"
    );
    weights.caught_up().await;
    let canary_weights = weights.canary_weights();
    assert_eq!(
        canary_weights.first(),
        Some(&0),
        "weights over time: {:?}",
        weights.all()
    );
    assert!(canary_weights.contains(&50), "{:?}", weights.all());
    assert_eq!(canary_weights.last(), Some(&0), "{:?}", weights.all());
}

#[tokio::test]
async fn a_rollback_gate_opened_mid_analysis_rolls_back() {
    let (w, lt) = world("lt-rollback").await;
    let ns = w.ns.clone();
    let marker = w.env.logs_dir().join(format!("smoke-{ns}"));
    let mut hooks = webhooks(&w, &lt, &marker);
    hooks.push(
        json!({"name": "rollback gate", "type": "rollback", "url": lt.url("/rollback/check")}),
    );
    let analysis = json!({
        "interval": "10s", "threshold": 3, "maxWeight": 50, "stepWeight": 10,
        "metrics": builtin_metrics(), "webhooks": hooks
    });
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", analysis)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let weights = w.watch_weights("podinfo");

    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_weight("podinfo", 10).await;
    let c = w.canary("podinfo").await;
    let status = c.status.unwrap();
    assert_eq!(
        status.phase.map(|p| p.as_str().to_string()).as_deref(),
        Some("Progressing"),
        "mid-analysis"
    );
    assert!(status.canary_weight.unwrap_or(0) < 50);
    let (code, _) = lt
        .post(
            "/rollback/open",
            &json!({"name": "podinfo", "namespace": ns}),
        )
        .await;
    assert_eq!(code, 202);
    let c = w.wait_phase("podinfo", "Failed", LIMIT).await;
    let status = c.status.unwrap();
    assert_eq!(status.canary_weight, Some(0));
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.0",
        "the primary is untouched"
    );
    eventually("the canary scaled to zero", LIMIT, || async {
        let d = w.deployment("podinfo").await.ok_or("no target")?;
        if replicas_of(&d) == 0 {
            Ok(())
        } else {
            Err(format!("replicas {}", replicas_of(&d)))
        }
    })
    .await;
    weights.caught_up().await;
    let all = weights.all();
    assert_eq!(all.last().map(|r| r.canary), Some(0), "{all:?}");
    assert!(
        all.iter().all(|r| r.canary < 50),
        "rolled back before the max weight: {all:?}"
    );
    let qualified = msg::qualified("podinfo", &ns);
    assert!(
        w.has_event("podinfo", &msg::rolling_back_webhook(&qualified))
            .await,
        "{:#?}",
        w.events("podinfo").await
    );
    assert!(lt.log_text().contains(&format!(
        "rollback.podinfo.{ns} rollback check: approved true"
    )));
}
