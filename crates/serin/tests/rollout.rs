//! The rollout engine end to end: `serin controller` as its own process against the real API
//! server, the mesh simulator's telemetry in the real Prometheus. Each test asserts what a user
//! sees: objects, VirtualService weights over time, status, conditions and Events.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use serin::api::Canary;
use serin::rollout::{Routes, messages as msg};
use serin_sandbox::testenv::eventually;
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
        routes_of(&vs, "podinfo"),
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
    weights.caught_up().await;
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
    weights.caught_up().await;
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

#[tokio::test]
async fn a_config_map_change_starts_an_analysis_and_reaches_the_primary_copy() {
    let w = World::new("config").await;
    w.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "podinfo-config"}, "data": {"color": "blue"}})).await;
    let mut d = deployment("podinfo", "podinfo:6.0.0", json!({}));
    d["spec"]["template"]["spec"]["containers"][0]["envFrom"] =
        json!([{"configMapRef": {"name": "podinfo-config"}}]);
    w.apply(d).await;
    w.apply(canary("podinfo", progressive())).await;
    let c = w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let tracked = c.status.unwrap().tracked_configs;
    assert!(
        tracked.contains_key("configmap/podinfo-config"),
        "{tracked:?}"
    );
    let primary = w.deployment("podinfo-primary").await.unwrap();
    let env_from =
        serde_json::to_value(&primary.spec.template.spec.unwrap().containers[0].env_from).unwrap();
    assert_eq!(
        env_from,
        json!([{"configMapRef": {"name": "podinfo-config-primary"}}])
    );

    w.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "podinfo-config"}, "data": {"color": "green"}})).await;
    w.wait_phase("podinfo", "Progressing", LIMIT).await;
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(w.client.clone(), &w.ns);
    let copy = cms.get("podinfo-config-primary").await.unwrap();
    assert_eq!(
        copy.data.unwrap().get("color").map(String::as_str),
        Some("green")
    );
}

#[tokio::test]
async fn ab_testing_routes_matched_traffic_then_promotes() {
    let analysis = json!({
        "interval": "10s", "threshold": 2, "iterations": 2,
        "match": [{"headers": {"x-canary": {"exact": "insider"}}}, {"headers": {"user-agent": {"suffix": "Firefox"}}}],
        "metrics": builtin_metrics()
    });
    let w = initialized("ab", analysis).await;
    let ns = w.ns.clone();
    let weights = w.watch_weights("podinfo");
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    let vs = eventually("A/B routes", LIMIT, || async {
        let vs = w.virtual_service("podinfo").await.ok_or("no vs")?;
        if vs["spec"]["http"].as_array().map(Vec::len) == Some(2)
            && vs["spec"]["http"][0]["route"][1]["weight"] == 100
        {
            Ok(vs)
        } else {
            Err(vs["spec"].to_string())
        }
    })
    .await;
    assert_eq!(
        vs["spec"]["http"][0]["match"][0]["headers"]["x-canary"],
        json!({"exact": "insider"})
    );
    assert_eq!(
        vs["spec"]["http"][0]["match"][1]["headers"]["user-agent"],
        json!({"regex": ".*Firefox"})
    );
    assert_eq!(
        vs["spec"]["http"][1]["route"],
        json!([{"destination": {"host": "podinfo-primary"}}])
    );
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    let c = format!("podinfo.{ns}");
    assert!(
        w.has_event("podinfo", &msg::advance_iteration(&c, 1, 2))
            .await
    );
    assert!(
        w.has_event("podinfo", &msg::advance_iteration(&c, 2, 2))
            .await
    );
    weights.caught_up().await;
    assert_eq!(
        weights.all().last(),
        Some(&Routes {
            primary: 100,
            canary: 0,
            mirror: false
        })
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.1"
    );
}

#[tokio::test]
async fn blue_green_with_mirroring_mirrors_then_switches_then_promotes() {
    let analysis = json!({"interval": "10s", "threshold": 2, "iterations": 2, "mirror": true, "mirrorWeight": 100, "metrics": builtin_metrics()});
    let w = initialized("bluegreen", analysis).await;
    let ns = w.ns.clone();
    let weights = w.watch_weights("podinfo");
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    weights.caught_up().await;
    let seen = weights.all();
    let mirrored = Routes {
        primary: 100,
        canary: 0,
        mirror: true,
    };
    let switched = Routes {
        primary: 0,
        canary: 100,
        mirror: false,
    };
    let i = seen
        .iter()
        .position(|r| *r == mirrored)
        .unwrap_or_else(|| panic!("never mirrored: {seen:?}"));
    let j = seen
        .iter()
        .position(|r| *r == switched)
        .unwrap_or_else(|| panic!("never switched: {seen:?}"));
    assert!(i < j, "mirroring comes before the switch: {seen:?}");
    assert_eq!(
        seen.last(),
        Some(&Routes {
            primary: 100,
            canary: 0,
            mirror: false
        })
    );
    assert!(
        w.has_event("podinfo", msg::STOP_MIRRORING_ROUTE_TO_CANARY)
            .await
    );
    assert!(
        w.has_event(
            "podinfo",
            &msg::promotion_completed(&format!("podinfo.{ns}"))
        )
        .await
    );
}

#[tokio::test]
async fn skip_analysis_promotes_without_traffic_shifting() {
    let w = initialized("skip", progressive()).await;
    let ns = w.ns.clone();
    let canaries: Api<Canary> = Api::namespaced(w.client.clone(), &ns);
    canaries
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"skipAnalysis": true}})),
        )
        .await
        .unwrap();
    let weights = w.watch_weights("podinfo");
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.1"
    );
    weights.caught_up().await;
    assert!(
        weights.canary_weights().iter().all(|w| *w == 0),
        "{:?}",
        weights.all()
    );
    assert!(
        w.has_event("podinfo", &msg::promotion_skipped(&format!("podinfo.{ns}")))
            .await
    );
    eventually("canary scaled down", LIMIT, || async {
        let d = w.deployment("podinfo").await.ok_or("gone")?;
        if replicas_of(&d) == 0 {
            Ok(())
        } else {
            Err(format!("{}", replicas_of(&d)))
        }
    })
    .await;
}

#[tokio::test]
async fn a_canary_that_never_becomes_ready_is_rolled_back_at_the_deadline() {
    let w = initialized("deadline", progressive()).await;
    let ns = w.ns.clone();
    let canaries: Api<Canary> = Api::namespaced(w.client.clone(), &ns);
    canaries
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"progressDeadlineSeconds": 15}})),
        )
        .await
        .unwrap();
    // The Deployment's own deadline (600 s) would not fire in time: serin measures its own.
    w.apply(deployment(
        "podinfo",
        "podinfo:6.0.3",
        json!({"serin.dev/simulate-unready": "true"}),
    ))
    .await;
    w.wait_phase("podinfo", "Progressing", LIMIT).await;
    let c = w.wait_phase("podinfo", "Failed", LIMIT).await;
    assert_eq!(c.status.unwrap().canary_weight, Some(0));
    let events = w.events("podinfo").await;
    let c = format!("podinfo.{ns}");
    let prefix = msg::rolling_back_deadline(&c, &msg::canary_not_ready(&c, ""));
    assert!(
        events
            .iter()
            .any(|(t, m)| t == "Warning" && m.starts_with(&prefix)),
        "{events:#?}"
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.0"
    );
    assert_eq!(replicas_of(&w.deployment("podinfo").await.unwrap()), 0);
}

#[tokio::test]
async fn a_second_revision_mid_analysis_restarts_it() {
    let w = initialized("restart", progressive()).await;
    let ns = w.ns.clone();
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_weight("podinfo", 25).await;
    w.apply(deployment("podinfo", "podinfo:6.0.2", json!({})))
        .await;
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert!(
        w.has_event(
            "podinfo",
            &msg::new_revision_restarting(&format!("podinfo.{ns}"))
        )
        .await
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.2"
    );
}

#[tokio::test]
async fn a_controller_killed_mid_analysis_resumes_to_the_same_outcome() {
    let mut w = initialized("crash", progressive()).await;
    let ns = w.ns.clone();
    let weights = w.watch_weights("podinfo");
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_weight("podinfo", 25).await;
    w.controller.kill();
    let frozen = w.canary("podinfo").await.status.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.canary("podinfo").await.status.unwrap().canary_weight,
        frozen.canary_weight,
        "nothing moves while it is down"
    );
    w.controller = ControllerProcess::spawn(w.env, &ns, "2");
    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert_eq!(c.status.unwrap().failed_checks, Some(0));
    weights.caught_up().await;
    assert_eq!(
        weights.canary_weights(),
        vec![0, 25, 50, 0],
        "the same course: {:?}",
        weights.all()
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.1"
    );
    let events = w.events("podinfo").await;
    let starts = events
        .iter()
        .filter(|(_, m)| *m == msg::new_revision_scaling_up(&format!("podinfo.{ns}")))
        .count();
    assert_eq!(starts, 1, "the run was not started twice: {events:#?}");
}

// A missing template or a query Prometheus refuses: tests/metric_config.rs.

#[tokio::test]
async fn deleting_a_canary_with_revert_on_deletion_hands_traffic_back_to_the_target() {
    let mut analysis = progressive();
    analysis["metrics"] = json!([]);
    let w = World::new("revert").await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    let mut c = canary("podinfo", analysis.clone());
    c["spec"]["revertOnDeletion"] = json!(true);
    w.apply(c).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let canaries: Api<Canary> = Api::namespaced(w.client.clone(), &w.ns);
    assert!(
        w.canary("podinfo")
            .await
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"finalizer.flagger.app".to_string())
    );
    canaries
        .delete("podinfo", &DeleteParams::default())
        .await
        .unwrap();
    eventually("canary gone", LIMIT, || async {
        match canaries.get_opt("podinfo").await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|c| c.map(|c| c.status.and_then(|s| s.phase)))
            )),
        }
    })
    .await;
    let target = w.deployment("podinfo").await.unwrap();
    assert_eq!(replicas_of(&target), 2, "the target runs again");
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(w.client.clone(), &w.ns);
    // The garbage collector removes what serin owned; the apex Service stays, pointing at the target.
    eventually("primary collected", LIMIT, || async {
        match w.deployment("podinfo-primary").await {
            None => Ok(()),
            Some(_) => Err("primary still there".to_string()),
        }
    })
    .await;
    let c = format!("podinfo.{}", w.ns);
    assert!(w.has_event("podinfo", &msg::terminating(&c)).await);
    assert!(w.has_event("podinfo", &msg::terminated(&c)).await);
    let apex = svcs
        .get("podinfo")
        .await
        .expect("the apex Service survives");
    assert_eq!(
        apex.spec
            .unwrap()
            .selector
            .unwrap()
            .get("app")
            .map(String::as_str),
        Some("podinfo")
    );
}

#[tokio::test]
async fn deleting_a_canary_without_revert_on_deletion_leaves_the_target_scaled_down() {
    let mut analysis = progressive();
    analysis["metrics"] = json!([]);
    let w = initialized("delete", analysis).await;
    let canaries: Api<Canary> = Api::namespaced(w.client.clone(), &w.ns);
    canaries
        .delete("podinfo", &DeleteParams::default())
        .await
        .unwrap();
    eventually("owned objects collected", LIMIT, || async {
        let vs = w.virtual_service("podinfo").await;
        let primary = w.deployment("podinfo-primary").await;
        if vs.is_none() && primary.is_none() {
            Ok(())
        } else {
            Err(format!("vs {} primary {}", vs.is_some(), primary.is_some()))
        }
    })
    .await;
    // Flagger's behaviour without revertOnDeletion: the target stays at zero
    // ([#388](https://github.com/fluxcd/flagger/issues/388)).
    assert_eq!(replicas_of(&w.deployment("podinfo").await.unwrap()), 0);
}

#[tokio::test]
async fn suspend_freezes_a_run_and_resume_finishes_it() {
    let w = initialized("suspend", progressive()).await;
    let ns = w.ns.clone();
    let canaries: Api<Canary> = Api::namespaced(w.client.clone(), &ns);
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_weight("podinfo", 25).await;
    canaries
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    let frozen = w.canary("podinfo").await.status.unwrap();
    let weights = w.watch_weights("podinfo");
    // Two intervals pass without a step.
    tokio::time::sleep(Duration::from_secs(22)).await;
    let still = w.canary("podinfo").await.status.unwrap();
    assert_eq!(
        (still.phase, still.canary_weight),
        (frozen.phase, frozen.canary_weight)
    );
    weights.caught_up().await;
    assert_eq!(
        weights.all().len(),
        1,
        "weights untouched while suspended: {:?}",
        weights.all()
    );
    assert!(w.has_event("podinfo", msg::SUSPENDED).await);
    canaries
        .patch(
            "podinfo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        format!("podinfo:6.0.1")
    );
    let _ = ns;
}

#[tokio::test]
async fn nothing_is_written_while_nothing_changes() {
    let w = initialized("idle", progressive()).await;
    // Let initialization settle (the target scaling down), then watch the resource versions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let versions = || async {
        let c = w.canary("podinfo").await.metadata.resource_version;
        let vs = w
            .virtual_service("podinfo")
            .await
            .map(|v| v["metadata"]["resourceVersion"].clone());
        let p = w
            .deployment("podinfo-primary")
            .await
            .and_then(|d| d.metadata.resource_version);
        let t = w
            .deployment("podinfo")
            .await
            .and_then(|d| d.metadata.resource_version);
        let svcs: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(w.client.clone(), &w.ns);
        let s = svcs.get("podinfo").await.unwrap().metadata.resource_version;
        (c, vs, p, t, s)
    };
    let before = versions().await;
    let events_before = w.events("podinfo").await.len();
    // Longer than an analysis interval, so any periodic reconcile has run.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(versions().await, before, "an idle canary caused writes");
    assert_eq!(w.events("podinfo").await.len(), events_before);
}

#[tokio::test]
async fn a_metric_template_with_variables_judges_the_canary() {
    let w = World::new("tmpl").await;
    let ns = w.ns.clone();
    w.apply(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate", "metadata": {"name": "request-rate"},
        "spec": {
            "provider": {"type": "prometheus", "address": w.env.prometheus_url()},
            "query": "sum(rate(istio_requests_total{reporter=\"{{ variables.reporter }}\",destination_workload_namespace=\"{{ namespace }}\",destination_workload=\"{{ target }}\"}[{{ interval }}]))"
        }
    }))
    .await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    let mut analysis = progressive();
    analysis["metrics"] = json!([{
        "name": "request-rate", "interval": "30s",
        "templateRef": {"name": "request-rate"},
        "templateVariables": {"reporter": "destination"},
        "thresholdRange": {"min": 1}
    }]);
    w.apply(canary("podinfo", analysis)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    let status = c.status.unwrap();
    let m = status
        .serin_metrics
        .iter()
        .find(|m| m.name == "request-rate")
        .expect("metric in status");
    assert_eq!(
        m.query.as_deref(),
        Some(format!("sum(rate(istio_requests_total{{reporter=\"destination\",destination_workload_namespace=\"{ns}\",destination_workload=\"podinfo\"}}[30s]))").as_str())
    );
    assert!(m.value.is_some_and(|v| v >= 1.0), "{m:?}");
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.1"
    );
}

/// A user's apex Service, taken over at initialization, carries no owner reference: its change
/// reaches the settled Canary through the index of names, not through a timer (the safety-net
/// pass is an hour away), and serin puts its selector back.
#[tokio::test]
async fn an_edit_of_a_taken_over_apex_service_is_undone_without_waiting_for_a_timer() {
    let w = World::new("apex-edit").await;
    w.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "podinfo"},
        "spec": {"selector": {"app": "podinfo"}, "ports": [{"name": "http", "port": 9898}]},
    }))
    .await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", progressive())).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;

    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(w.client.clone(), &w.ns);
    let selector = |s: &k8s_openapi::api::core::v1::Service| {
        s.spec.as_ref().and_then(|spec| spec.selector.clone())
    };
    let taken_over = eventually("the apex Service taken over", LIMIT, || async {
        let s = services.get("podinfo").await.map_err(|e| e.to_string())?;
        match selector(&s) {
            Some(sel) if sel.get("app").map(String::as_str) != Some("podinfo") => Ok(s),
            other => Err(format!("selector {other:?}")),
        }
    })
    .await;
    assert!(
        taken_over
            .metadata
            .owner_references
            .iter()
            .flatten()
            .all(|o| o.kind != "Canary"),
        "a taken-over apex Service stays the user's: {:?}",
        taken_over.metadata.owner_references
    );
    let wanted = selector(&taken_over);

    services
        .patch(
            "podinfo",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"selector": {"app": "elsewhere"}}})),
        )
        .await
        .unwrap();
    eventually("the apex selector put back", LIMIT, || async {
        let s = services.get("podinfo").await.map_err(|e| e.to_string())?;
        if selector(&s) == wanted {
            Ok(())
        } else {
            Err(format!("selector {:?}", selector(&s)))
        }
    })
    .await;
}
