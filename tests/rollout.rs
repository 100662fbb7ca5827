//! The rollout engine end to end: `serin controller` as its own process against the real API
//! server, the mesh simulator's telemetry in the real Prometheus. Each test asserts what a user
//! sees: objects, VirtualService weights over time, status, conditions and Events.

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use serin::api::Canary;
use serin::rollout::{Routes, messages as msg};
use serin::sandbox::testenv::eventually;
use support::*;

/// A canary with the built-in checks, initialized on image 6.0.0.
async fn initialized(prefix: &str, analysis: serde_json::Value) -> World {
    let w = World::new(prefix).await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", analysis)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    w
}

fn progressive() -> serde_json::Value {
    json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": builtin_metrics()})
}

#[tokio::test]
async fn initialization_creates_the_objects_and_hands_traffic_to_the_primary() {
    let w = initialized("init", progressive()).await;
    let ns = w.ns.clone();
    let primary = w
        .deployment("podinfo-primary")
        .await
        .expect("primary deployment");
    assert_eq!(image_of(&primary), "podinfo:6.0.0");
    assert_eq!(replicas_of(&primary), 2);
    let target = eventually("target scaled to zero", LIMIT, || async {
        let d = w.deployment("podinfo").await.ok_or("no target")?;
        if replicas_of(&d) == 0 {
            Ok(d)
        } else {
            Err(format!("replicas {}", replicas_of(&d)))
        }
    })
    .await;
    assert_eq!(image_of(&target), "podinfo:6.0.0");

    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(w.client.clone(), &ns);
    for (name, selector) in [
        ("podinfo", "podinfo-primary"),
        ("podinfo-primary", "podinfo-primary"),
        ("podinfo-canary", "podinfo"),
    ] {
        let s = svcs
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("service {name}: {e}"));
        let sel = s.spec.unwrap().selector.unwrap();
        assert_eq!(
            sel.get("app").map(String::as_str),
            Some(selector),
            "selector of {name}"
        );
    }
    let vs = w.virtual_service("podinfo").await.expect("virtual service");
    assert_eq!(
        serin::router::read_routes(&vs, "podinfo"),
        Some(Routes {
            primary: 100,
            canary: 0,
            mirror: false
        })
    );
    assert_eq!(vs["spec"]["hosts"], json!(["podinfo"]));
    assert_eq!(vs["metadata"]["ownerReferences"][0]["kind"], "Canary");

    let c = w.canary("podinfo").await;
    let status = c.status.unwrap();
    let promoted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Promoted")
        .expect("Promoted condition");
    assert_eq!(
        (promoted.status.as_str(), promoted.reason.as_str()),
        ("True", "Initialized")
    );
    assert!(status.last_applied_spec.unwrap().starts_with("sha256:"));
    assert!(
        w.has_event(
            "podinfo",
            &msg::initialization_done(&format!("podinfo.{ns}"))
        )
        .await
    );
}

#[tokio::test]
async fn a_healthy_release_is_promoted_step_by_step() {
    let w = initialized("healthy", progressive()).await;
    let ns = w.ns.clone();
    let weights = w.watch_weights("podinfo");
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;

    let primary = w.deployment("podinfo-primary").await.unwrap();
    assert_eq!(
        image_of(&primary),
        "podinfo:6.0.1",
        "the primary runs the new template"
    );
    let target = w.deployment("podinfo").await.unwrap();
    assert_eq!(replicas_of(&target), 0, "the canary is scaled to zero");
    assert_eq!(
        weights.canary_weights(),
        vec![0, 25, 50, 0],
        "weights over time: {:?}",
        weights.all()
    );

    let status = c.status.unwrap();
    assert_eq!(status.canary_weight, Some(0));
    assert_eq!(status.failed_checks, Some(0));
    assert_eq!(status.last_promoted_spec, status.last_applied_spec);
    let sr = status
        .serin_metrics
        .iter()
        .find(|m| m.name == "request-success-rate")
        .expect("metric in status");
    assert!(sr.value.is_some_and(|v| v >= 99.0), "{sr:?}");
    assert!(
        sr.query
            .as_deref()
            .is_some_and(|q| q.contains(&format!("destination_workload_namespace=\"{ns}\"")))
    );
    let promoted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Promoted")
        .unwrap();
    assert_eq!(
        (promoted.status.as_str(), promoted.reason.as_str()),
        ("True", "Succeeded")
    );

    let c = format!("podinfo.{ns}");
    let messages: Vec<String> = w
        .events("podinfo")
        .await
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    for want in [
        msg::new_revision_scaling_up(&c),
        msg::starting_analysis(&c),
        msg::advance_canary_weight(&c, 25),
        msg::advance_canary_weight(&c, 50),
        msg::copying_template(&c, &format!("podinfo-primary.{ns}")),
        msg::ROUTING_ALL_TO_PRIMARY.to_string(),
        msg::promotion_completed(&c),
    ] {
        assert!(
            messages.contains(&want),
            "missing event {want:?} in {messages:#?}"
        );
    }
}

#[tokio::test]
async fn a_faulty_release_is_rolled_back_and_the_primary_is_untouched() {
    let w = initialized("faulty", progressive()).await;
    let ns = w.ns.clone();
    let weights = w.watch_weights("podinfo");
    w.apply(deployment(
        "podinfo",
        "podinfo:6.0.2",
        json!({"serin.dev/simulate": "errors=50%"}),
    ))
    .await;
    let c = w.wait_phase("podinfo", "Failed", LIMIT).await;

    let status = c.status.unwrap();
    assert_eq!(status.failed_checks, Some(2));
    assert_eq!(status.canary_weight, Some(0));
    let primary = w.deployment("podinfo-primary").await.unwrap();
    assert_eq!(
        image_of(&primary),
        "podinfo:6.0.0",
        "the primary is untouched"
    );
    let target = w.deployment("podinfo").await.unwrap();
    assert_eq!(replicas_of(&target), 0);
    let all = weights.all();
    assert_eq!(
        all.last(),
        Some(&Routes {
            primary: 100,
            canary: 0,
            mirror: false
        })
    );
    assert!(
        all.iter().any(|r| r.canary == 25),
        "traffic reached the canary before the rollback: {all:?}"
    );
    let promoted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Promoted")
        .unwrap();
    assert_eq!(promoted.status, "False");

    let c = format!("podinfo.{ns}");
    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Warning"
            && m.starts_with(&format!("Halt {c} advancement success rate "))),
        "{events:#?}"
    );
    assert!(
        events.contains(&("Warning".into(), msg::rolling_back_threshold(&c, 2))),
        "{events:#?}"
    );
    assert!(
        events.contains(&("Warning".into(), msg::canary_failed(&c))),
        "{events:#?}"
    );
}
