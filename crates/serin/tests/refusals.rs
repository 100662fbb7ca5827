//! A generated object the API server refuses (issue 11, finding 4): the Canary says so, with the
//! `serin.dev/Written` condition and one Warning Event naming the object, the API server's answer
//! and the fix, while serin retries with backoff and touches no traffic; once the cause is gone
//! the canary initializes and the condition turns true. A target name too long for the generated
//! names is caught before any write (`serin.dev/Valid`); a quota is what only the API server knows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use serin::api::CanaryCondition;
use serin_sandbox::testenv::eventually;
use support::*;

const WRITTEN: &str = "serin.dev/Written";

fn condition(w: &serin::api::Canary, type_: &str) -> Option<CanaryCondition> {
    w.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_).cloned())
}

/// The condition once its status is `status`, failing with what it was and the log.
async fn wait_condition(w: &World, name: &str, type_: &str, status: &str) -> CanaryCondition {
    let log = w.controller.log.display().to_string();
    eventually(
        &format!("{type_}={status} on {name} (log: {log})"),
        LIMIT,
        || async {
            match condition(&w.canary(name).await, type_) {
                Some(c) if c.status == status => Ok(c),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// The Warning Event with exactly `text`.
async fn wait_warning(w: &World, name: &str, text: &str) -> (String, String, i32) {
    eventually("the Warning Event", LIMIT, || async {
        events(w, name)
            .await
            .into_iter()
            .find(|(t, m, _)| t == "Warning" && m == text)
            .ok_or_else(|| "no Warning Event with the condition's message".to_string())
    })
    .await
}

/// (type, message, count) of the Events on a Canary.
async fn events(w: &World, name: &str) -> Vec<(String, String, i32)> {
    let api: Api<Event> = Api::namespaced(w.client.clone(), &w.ns);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.name={name},involvedObject.kind=Canary"
    ));
    api.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.message.unwrap_or_default(),
                e.count.unwrap_or(1),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_refused_service_is_told_on_the_canary_and_a_too_long_name_before_any_write() {
    let w = World::new("refused").await;
    let analysis = json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": builtin_metrics()});

    // 60 characters: a valid Deployment name and label value, but `<name>-primary` is 68 and the
    // primary's `app` label may hold at most 63. Caught before any write.
    let long = format!("podinfo-{}", "x".repeat(52));
    assert_eq!(long.len(), 60);
    w.apply(deployment(&long, "podinfo:6.0.0", json!({}))).await;
    let mut c = canary("longname", analysis.clone());
    c["spec"]["targetRef"]["name"] = json!(long);
    w.apply(c).await;
    let valid = wait_condition(&w, "longname", "serin.dev/Valid", "False").await;
    let text = valid.message.clone().unwrap_or_default();
    println!("long name: {} {text}", valid.reason);
    assert_eq!(valid.reason, "InvalidSpec");
    assert!(text.contains("68 characters"), "{text}");
    assert!(text.contains("shorten spec.targetRef.name"), "{text}");
    wait_warning(&w, "longname", &text).await;
    assert!(w.deployment(&format!("{long}-primary")).await.is_none());
    assert!(w.virtual_service(&long).await.is_none());

    // No Service may be created in the namespace: the API server refuses `podinfo-canary`.
    let quotas = w.forbid_services().await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", analysis.clone())).await;

    let cond = wait_condition(&w, "podinfo", WRITTEN, "False").await;
    let text = cond.message.clone().unwrap_or_default();
    println!("refused: {} {text}", cond.reason);
    assert_eq!(cond.reason, "ForbiddenRefused");
    assert!(
        text.contains(&format!("Service podinfo-canary.{}", w.ns)),
        "names the object: {text}"
    );
    assert!(
        text.contains("(403 Forbidden)"),
        "the API server's answer: {text}"
    );
    assert!(
        text.contains("exceeded quota: no-services"),
        "the API server's words: {text}"
    );
    assert!(
        text.contains("Fix: raise or remove the ResourceQuota"),
        "{text}"
    );

    // The same text as one Warning Event, not patched again on the retries.
    let warning = wait_warning(&w, "podinfo", &text).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later = events(&w, "podinfo").await;
    let same: Vec<_> = later.iter().filter(|(_, m, _)| *m == text).collect();
    assert_eq!(same.len(), 1, "{later:?}");
    assert_eq!(same[0].2, warning.2, "not re-patched on retries: {later:?}");

    // No traffic moved: no phase, no route.
    let c = w.canary("podinfo").await;
    assert_eq!(c.status.as_ref().and_then(|s| s.phase), None);
    assert!(w.virtual_service("podinfo").await.is_none());

    // The cause goes: the canary initializes and the condition turns true.
    w.allow_services(&quotas).await;
    let c = w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let cond = condition(&c, WRITTEN).expect("the condition stays, true");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "Written")
    );
}
