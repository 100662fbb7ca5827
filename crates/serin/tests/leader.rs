//! Leader election end to end: two `serin controller --leader-elect` processes against one
//! sandbox. Exactly one holds the Lease and writes; when it dies or loses the Lease the other
//! takes over and finishes the rollout the same way, and nothing comes from the old one. Also
//! the metrics a dashboard reads, scraped from the leader after the rollout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

#[path = "support/mod.rs"]
mod support;

#[path = "support/leader.rs"]
mod elect;

use std::time::{Duration, Instant};

use elect::{Candidate, LEASE, sample, wait_holder};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use serin::rollout::messages as msg;
use serin_sandbox::testenv::eventually;
use support::*;

fn progressive() -> serde_json::Value {
    json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": builtin_metrics()})
}

/// A world whose own (non-electing) controller is stopped, with candidate `a` leading and `b`
/// standing by, and podinfo initialized.
async fn two_candidates(prefix: &str) -> (World, Candidate, Candidate) {
    let mut w = World::new(prefix).await;
    w.controller.kill();
    let a = Candidate::spawn(w.env, &w.ns, "serin-a");
    wait_holder(&w.client, &w.ns, "serin-a", Duration::from_secs(30)).await;
    let b = Candidate::spawn(w.env, &w.ns, "serin-b");
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", progressive())).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    (w, a, b)
}

/// Events on the Canary as (eventTime, reportingInstance, message).
async fn events(w: &World) -> Vec<(Timestamp, String, String)> {
    let api: Api<Event> = Api::namespaced(w.client.clone(), &w.ns);
    let lp = ListParams::default().fields("involvedObject.name=podinfo,involvedObject.kind=Canary");
    let mut list: Vec<_> = api
        .list(&lp)
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| {
            (
                e.event_time.map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH),
                e.reporting_instance.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect();
    list.sort();
    list
}

async fn metric(c: &Candidate, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(&c.get("/metrics").await.1, name, labels)
}

/// The standby waits, the leader writes; SIGKILL the leader mid-rollout and the standby takes over
/// within a lease duration and finishes with the same course; then the leader's metrics.
#[tokio::test]
async fn a_killed_leader_is_replaced_and_the_rollout_finishes_the_same_way() {
    let (w, mut a, b) = two_candidates("failover").await;
    let ns = w.ns.clone();

    // Exactly one holds the Lease, and each says so.
    assert_eq!(
        elect::holder(&w.client, &ns).await.as_deref(),
        Some("serin-a")
    );
    assert_eq!(metric(&a, "serin_leader", &[]).await, Some(1.0));
    assert_eq!(metric(&b, "serin_leader", &[]).await, Some(0.0));
    let (code, body) = b.get("/readyz").await;
    assert_eq!(code, 200, "a standby is ready: {body}");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(b.get("/healthz").await.0, 200);
    // Ready once its watches have listed: a fresh CRD's watch may answer `Expired` to the first
    // watch after the list (seen on 1.37), and the relist that follows is reported as not ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = a.get("/readyz").await;
    while ready.0 != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ready = a.get("/readyz").await;
    }
    assert_eq!(ready, (200, "OK".to_string()));
    assert!(
        !b.log_text().contains("serin controller started"),
        "the standby must not start the controller:\n{}",
        b.log_text()
    );

    let weights = w.watch_weights("podinfo");
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_weight("podinfo", 25).await;
    a.kill();
    let killed = Timestamp::now();
    let killed_at = Instant::now();
    assert!(a.exited().is_some(), "the old leader is gone");

    wait_holder(&w.client, &ns, "serin-b", Duration::from_secs(20)).await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover >= Duration::from_secs(3),
        "b waited for the lease to expire, took {takeover:?}"
    );
    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    let status = c.status.unwrap();
    assert_eq!(status.failed_checks, Some(0));
    weights.caught_up().await;
    assert_eq!(
        weights.canary_weights(),
        vec![0, 25, 50, 0],
        "weights stepped once each: {:?}",
        weights.all()
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.1"
    );

    // Every Event after the kill is b's, and the run was not started twice.
    let evs = events(&w).await;
    let after: Vec<_> = evs.iter().filter(|(t, _, _)| *t > killed).collect();
    assert!(
        after
            .iter()
            .any(|(_, _, m)| *m == msg::promotion_completed(&format!("podinfo.{ns}"))),
        "b promoted: {evs:#?}"
    );
    assert!(
        after.iter().all(|(_, who, _)| who == "serin-b"),
        "only b writes after the kill: {evs:#?}"
    );
    assert!(
        evs.iter()
            .any(|(t, who, _)| *t < killed && who == "serin-a"),
        "a wrote before: {evs:#?}"
    );
    let starts = evs
        .iter()
        .filter(|(_, _, m)| *m == msg::new_revision_scaling_up(&format!("podinfo.{ns}")))
        .count();
    assert_eq!(starts, 1, "{evs:#?}");

    // The new leader's /metrics, as a dashboard reads them.
    let text = b.get("/metrics").await.1;
    let nn = [("name", "podinfo"), ("namespace", ns.as_str())];
    assert_eq!(sample(&text, "serin_leader", &[]), Some(1.0));
    assert_eq!(sample(&text, "flagger_canary_status", &nn), Some(1.0));
    for (workload, want) in [("podinfo-primary", 100.0), ("podinfo", 0.0)] {
        assert_eq!(
            sample(
                &text,
                "flagger_canary_weight",
                &[("workload", workload), ("namespace", &ns)]
            ),
            Some(want),
            "{workload}:\n{text}"
        );
    }
    let outcome = [
        ("name", "podinfo"),
        ("namespace", ns.as_str()),
        ("deployment_strategy", "canary"),
        ("analysis_status", "completed"),
    ];
    assert_eq!(
        sample(&text, "flagger_canary_successes_total", &outcome),
        Some(1.0)
    );
    let sr = sample(
        &text,
        "flagger_canary_metric_analysis",
        &[("name", "podinfo"), ("metric", "request-success-rate")],
    )
    .expect("request-success-rate");
    assert!(sr >= 99.0, "{sr}");
    let rd = sample(
        &text,
        "flagger_canary_metric_analysis",
        &[("name", "podinfo"), ("metric", "request-duration")],
    )
    .expect("request-duration");
    assert!(rd > 0.0 && rd < 0.5, "request-duration in seconds: {rd}");
    assert!(sample(&text, "flagger_canary_duration_seconds_count", &nn).unwrap_or(0.0) >= 1.0);
    assert!(sample(&text, "serin_reconcile_duration_seconds_count", &[]).unwrap_or(0.0) >= 1.0);
    let queries =
        sample(&text, "serin_prometheus_query_duration_seconds_count", &[]).unwrap_or(0.0);
    let spent = sample(&text, "serin_prometheus_query_duration_seconds_sum", &[]).unwrap_or(0.0);
    assert!(
        queries >= 2.0 && spent > 0.0 && spent / queries < 5.0,
        "{queries} queries, {spent} s"
    );
    // A family without series prints nothing; failed requests, if any, carry verb and resource
    // (the counting itself is unit-tested in api_layer).
    for l in text
        .lines()
        .filter(|l| l.starts_with("serin_api_errors_total"))
    {
        assert!(l.contains("verb=\"") && l.contains("resource=\""), "{l}");
    }
    assert_eq!(
        sample(&text, "flagger_info", &[("mesh_provider", "istio")]),
        Some(1.0)
    );
    // Counted from the cache every 10 s.
    eventually("canaries by phase", Duration::from_secs(25), || async {
        let text = b.get("/metrics").await.1;
        let by_phase = sample(&text, "serin_canaries", &[("phase", "Succeeded")]);
        let total = sample(&text, "flagger_canary_total", &[("namespace", &ns)]);
        if by_phase == Some(1.0) && total == Some(1.0) {
            Ok(())
        } else {
            Err(format!(
                "serin_canaries {by_phase:?}, flagger_canary_total {total:?}"
            ))
        }
    })
    .await;
}

/// Someone else takes the Lease over mid-rollout: the leader stops and exits non-zero at its
/// next renewal, nothing is written while the intruder holds it, and the standby takes over once
/// the intruder's record has gone stale, finishing the rollout.
#[tokio::test]
async fn a_leader_that_loses_the_lease_stops_writing_and_exits() {
    let (w, mut a, mut b) = two_candidates("leaselost").await;
    let ns = w.ns.clone();
    let weights = w.watch_weights("podinfo");
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_weight("podinfo", 25).await;

    let api: Api<Lease> = Api::namespaced(w.client.clone(), &ns);
    // The leader renews every couple of seconds: a renewal between the read and the write
    // makes the write a conflict, so read again and retry, as any client would.
    let mut attempts = 0;
    loop {
        let mut lease = api.get(LEASE).await.unwrap();
        let spec = lease.spec.as_mut().unwrap();
        spec.holder_identity = Some("intruder".into());
        spec.lease_duration_seconds = Some(8);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match api.replace(LEASE, &PostParams::default(), &lease).await {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 10 => attempts += 1,
            Err(e) => panic!("taking the lease over: {e}"),
        }
    }
    let taken = Instant::now();

    let status = eventually("a exits", Duration::from_secs(10), || {
        let s = a.exited();
        async move { s.ok_or_else(|| "still running".to_string()) }
    })
    .await;
    let exited = taken.elapsed();
    assert!(!status.success(), "a non-zero exit: {status:?}");
    assert!(exited < Duration::from_secs(4), "a noticed in {exited:?}");
    assert!(a.log_text().contains("lost leadership"), "{}", a.log_text());
    assert!(b.exited().is_none(), "b still stands by");

    // Nothing is written while the intruder holds the Lease: a is gone and b waits.
    let canary_rv = w.canary("podinfo").await.metadata.resource_version;
    let vs = w.virtual_service("podinfo").await.unwrap();
    let frozen_at = Timestamp::now();
    let quiet_until = Duration::from_millis(7500);
    tokio::time::sleep(quiet_until.saturating_sub(taken.elapsed())).await;
    assert_eq!(
        w.canary("podinfo").await.metadata.resource_version,
        canary_rv
    );
    assert_eq!(
        w.virtual_service("podinfo").await.unwrap()["metadata"]["resourceVersion"],
        vs["metadata"]["resourceVersion"]
    );
    assert_eq!(metric(&b, "serin_leader", &[]).await, Some(0.0));

    wait_holder(&w.client, &ns, "serin-b", Duration::from_secs(20)).await;
    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert_eq!(c.status.unwrap().failed_checks, Some(0));
    weights.caught_up().await;
    assert_eq!(
        weights.canary_weights(),
        vec![0, 25, 50, 0],
        "{:?}",
        weights.all()
    );
    let evs = events(&w).await;
    assert!(
        evs.iter()
            .filter(|(t, _, _)| *t > frozen_at)
            .all(|(_, who, _)| who == "serin-b"),
        "{evs:#?}"
    );
    assert!(
        evs.iter()
            .any(|(t, who, _)| *t > frozen_at && who == "serin-b"),
        "{evs:#?}"
    );
}
