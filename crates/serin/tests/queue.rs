//! The rollout queue and freeze windows (issue 14 §4), on the sandbox: a ConfigMap shared by 20
//! canaries changes at once and `--max-concurrent-rollouts 3` keeps at most 3 runs going, watched
//! continuously from the Canaries' phases, until all 20 are done; a release inside a freeze
//! window waits, says so, and starts when the window opens; a Canary's `serin.dev/freeze`
//! annotation holds it until removed, and a Namespace's `pause` holds a run in progress; a
//! Namespace's cap of 1 holds across a controller restart (the queue is in the statuses).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use serin::api::Canary;
use serin_sandbox::testenv::eventually;
use support::*;

const IN_RUN: [&str; 4] = ["Progressing", "Promoting", "Finalising", "WaitingPromotion"];

fn phase(c: &Canary) -> String {
    c.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| p.as_str().to_string())
        .unwrap_or_default()
}

fn condition(c: &Canary, type_: &str) -> Option<(String, String, String)> {
    c.status.as_ref().and_then(|s| {
        s.conditions.iter().find(|x| x.type_ == type_).map(|x| {
            (
                x.status.clone(),
                x.reason.clone(),
                x.message.clone().unwrap_or_default(),
            )
        })
    })
}

/// A quick analysis: one step at 50 %, then promotion; readiness only, no metrics.
fn quick() -> Value {
    json!({"interval": "2s", "threshold": 2, "maxWeight": 50, "stepWeight": 50})
}

fn app(name: &str, image: &str) -> Value {
    let mut d = deployment(name, image, json!({}));
    d["spec"]["replicas"] = json!(1);
    d["spec"]["template"]["spec"]["containers"][0]["envFrom"] =
        json!([{"configMapRef": {"name": "shared"}}]);
    d
}

fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

async fn all_in_phase(w: &World, n: usize, want: &str, limit: Duration) {
    let api: Api<Canary> = Api::namespaced(w.client.clone(), &w.ns);
    let what = format!("{n} canaries {want} (log: {})", w.controller.log.display());
    eventually(&what, limit, || {
        let api = api.clone();
        async move {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut phases: BTreeMap<String, usize> = BTreeMap::new();
            for c in &list.items {
                *phases.entry(phase(c)).or_default() += 1;
            }
            if phases.get(want) == Some(&n) {
                Ok(())
            } else {
                Err(format!("{phases:?}"))
            }
        }
    })
    .await
}

/// `serin get` in the test's namespace.
async fn serin_get(w: &World) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_serin"))
        .arg("get")
        .arg("--kubeconfig")
        .arg(w.env.kubeconfig_path())
        .args(["-n", &w.ns])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Default)]
struct Seen {
    max_running: usize,
    polls: usize,
    /// (canary, position) of every queued condition seen.
    queued: BTreeSet<(String, i32)>,
    /// Canaries in the order their run was first seen.
    started: Vec<String>,
}

/// Watches the Canaries' phases every 100 ms until aborted.
fn watch_runs(w: &World) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api: Api<Canary> = Api::namespaced(w.client.clone(), &w.ns);
    let monitor = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(list) = api.list(&ListParams::default()).await {
                    let mut s = seen.lock().unwrap();
                    s.polls += 1;
                    let running: Vec<String> = list
                        .items
                        .iter()
                        .filter(|c| IN_RUN.contains(&phase(c).as_str()))
                        .map(|c| c.metadata.name.clone().unwrap_or_default())
                        .collect();
                    s.max_running = s.max_running.max(running.len());
                    for r in running {
                        if !s.started.contains(&r) {
                            s.started.push(r);
                        }
                    }
                    for c in &list.items {
                        let p = c
                            .status
                            .as_ref()
                            .and_then(|s| s.serin_pending.as_ref())
                            .and_then(|p| p.position);
                        if let (Some(p), Some(_)) = (p, condition(c, "serin.dev/Queued")) {
                            s.queued
                                .insert((c.metadata.name.clone().unwrap_or_default(), p));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    (seen, monitor)
}

#[tokio::test]
async fn a_shared_config_map_change_runs_at_most_three_at_once_and_all_twenty_finish() {
    const N: usize = 20;
    let w = World::with_controller_args("queue", &["--max-concurrent-rollouts", "3"]).await;
    w.apply(config_map("shared", json!({"level": "1"}))).await;
    let names: Vec<String> = (0..N).map(|i| format!("app{i:02}")).collect();
    for n in &names {
        w.apply(app(n, "podinfo:6.0.0")).await;
        w.apply(canary(n, quick())).await;
    }
    all_in_phase(&w, N, "Initialized", LIMIT * 2).await;

    // Watch the phases continuously from here on.
    let (seen, monitor) = watch_runs(&w);

    let start = std::time::Instant::now();
    w.apply(config_map("shared", json!({"level": "2"}))).await;
    // While the queue is long, `serin get` shows who waits.
    let get = eventually("serin get shows queued canaries", LIMIT, || async {
        let out = serin_get(&w).await;
        if out.contains("(queued ") {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await;
    println!("{get}");
    all_in_phase(&w, N, "Succeeded", Duration::from_secs(400)).await;
    let took = start.elapsed();
    monitor.abort();

    {
        let s = seen.lock().unwrap();
        println!(
            "{N} runs in {:.1} s; at most {} at once over {} polls; {} queued positions seen; start order {:?}",
            took.as_secs_f64(),
            s.max_running,
            s.polls,
            s.queued.len(),
            s.started
        );
        assert!(s.max_running <= 3, "{} runs at once", s.max_running);
        assert_eq!(s.max_running, 3, "the cap is used, not just respected");
        assert_eq!(s.started.len(), N, "every canary ran: {:?}", s.started);
        assert!(
            s.queued.iter().any(|(_, p)| *p > 1),
            "positions beyond the first were shown: {:?}",
            s.queued
        );
    }

    // The queue is told in an Event with the position, and the start after the wait too.
    let mut told = 0;
    for n in &names {
        let events = w.events(n).await;
        if events
            .iter()
            .any(|(_, m)| m.contains("queued at position") && m.contains("of 3 rollouts run"))
        {
            told += 1;
            assert!(
                events
                    .iter()
                    .any(|(_, m)| m.contains("starts after waiting")),
                "{n}: {events:?}"
            );
        }
        let c = w.canary(n).await;
        assert!(condition(&c, "serin.dev/Queued").is_none(), "{n} done");
        assert!(c.status.as_ref().unwrap().serin_pending.is_none(), "{n}");
    }
    assert!(told >= N - 3, "{told} canaries told their queue position");
}

#[tokio::test]
async fn a_release_inside_a_freeze_waits_and_starts_when_the_window_opens() {
    let w = World::with_controller_args("freeze", &["--freeze-config", "serin-freeze"]).await;
    w.apply(config_map("shared", json!({"level": "1"}))).await;
    w.apply(app("podinfo", "podinfo:6.0.0")).await;
    w.apply(canary("podinfo", quick())).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;

    // A freeze that ends 20 s from now.
    let now = Utc::now();
    // Whole seconds, as the window is written.
    let end = chrono::DateTime::from_timestamp(now.timestamp() + 20, 0).unwrap();
    let fmt = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let window = format!("{}/{}", fmt(now - chrono::Duration::minutes(5)), fmt(end));
    w.apply(config_map(
        "serin-freeze",
        json!({"freeze": format!("# release freeze\n{window}\n")}),
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.apply(app("podinfo", "podinfo:6.0.1")).await;

    let log = w.controller.log.display().to_string();
    let frozen = eventually(&format!("serin.dev/Frozen (log: {log})"), LIMIT, || async {
        match condition(&w.canary("podinfo").await, "serin.dev/Frozen") {
            Some(c) if c.0 == "True" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!("frozen: {frozen:?}");
    assert_eq!(frozen.1, "Frozen");
    assert!(frozen.2.contains(&window), "names the window: {}", frozen.2);
    assert!(
        frozen.2.contains(&format!("until {}", fmt(end))),
        "says when it opens: {}",
        frozen.2
    );
    assert!(w.has_event("podinfo", &frozen.2).await, "told in an Event");
    let get = serin_get(&w).await;
    assert!(get.contains("Initialized (frozen)"), "{get}");

    // Nothing starts before the window opens; the run starts soon after.
    let mut started = None;
    while started.is_none() {
        let c = w.canary("podinfo").await;
        let p = phase(&c);
        let t = Utc::now();
        if IN_RUN.contains(&p.as_str()) || p == "Succeeded" {
            started = Some(t);
        } else {
            assert_eq!(p, "Initialized");
            assert!(
                t < end + chrono::Duration::seconds(15),
                "still frozen at {t}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = started.unwrap();
    println!("window opened at {end}, run seen at {started}");
    assert!(started >= end, "started at {started}, before {end}");
    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert!(condition(&c, "serin.dev/Frozen").is_none());
    assert!(
        w.events("podinfo")
            .await
            .iter()
            .any(|(_, m)| m.contains("starts after waiting") && m.contains("(frozen)"))
    );

    // The Canary's own annotation freezes it until removed.
    let api: Api<Canary> = Api::namespaced(w.client.clone(), &w.ns);
    let annotate = |v: Value| {
        let api = api.clone();
        async move {
            api.patch(
                "podinfo",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"serin.dev/freeze": v}}})),
            )
            .await
            .unwrap();
        }
    };
    annotate(json!("incident 4711")).await;
    w.apply(app("podinfo", "podinfo:6.0.2")).await;
    let frozen = eventually("frozen by the annotation", LIMIT, || async {
        match condition(&w.canary("podinfo").await, "serin.dev/Frozen") {
            Some(c) if c.0 == "True" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        frozen.2.contains("serin.dev/freeze=\"incident 4711\"")
            && frozen.2.contains("until it is lifted"),
        "{}",
        frozen.2
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(phase(&w.canary("podinfo").await), "Succeeded");
    annotate(Value::Null).await;
    eventually(
        "the primary on 6.0.2 once the annotation is gone",
        LIMIT,
        || async {
            let p = w.deployment("podinfo-primary").await.ok_or("no primary")?;
            let c = w.canary("podinfo").await;
            if image_of(&p) == "podinfo:6.0.2" && phase(&c) == "Succeeded" {
                Ok(())
            } else {
                Err(format!("{} {}", image_of(&p), phase(&c)))
            }
        },
    )
    .await;

    // A Namespace's `serin.dev/freeze: pause` holds a run in progress where it is.
    w.apply(canary(
        "podinfo",
        json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25}),
    ))
    .await;
    w.apply(app("podinfo", "podinfo:6.0.3")).await;
    w.wait_phase("podinfo", "Progressing", LIMIT).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.client.clone());
    let annotate_ns = |v: Value| {
        let namespaces = namespaces.clone();
        let ns = w.ns.clone();
        async move {
            namespaces
                .patch(
                    &ns,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"serin.dev/freeze": v}}})),
                )
                .await
                .unwrap();
        }
    };
    annotate_ns(json!("pause")).await;
    let paused = eventually("paused by the Namespace", LIMIT, || async {
        match condition(&w.canary("podinfo").await, "serin.dev/Frozen") {
            Some(c) if c.1 == "Paused" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!("paused: {paused:?}");
    assert!(
        paused.2.contains(&format!("on Namespace {}", w.ns)),
        "{}",
        paused.2
    );
    let held = w.canary("podinfo").await;
    let weight = held.status.as_ref().and_then(|s| s.canary_weight);
    // Longer than an interval: no step is taken.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let later = w.canary("podinfo").await;
    assert_eq!(phase(&later), "Progressing");
    assert_eq!(
        later.status.as_ref().and_then(|s| s.canary_weight),
        weight,
        "no step while paused"
    );
    assert!(serin_get(&w).await.contains("Progressing (paused)"));
    annotate_ns(Value::Null).await;
    eventually(
        "the run finishes once the pause is lifted",
        LIMIT,
        || async {
            let p = w.deployment("podinfo-primary").await.ok_or("no primary")?;
            let c = w.canary("podinfo").await;
            if image_of(&p) == "podinfo:6.0.3" && phase(&c) == "Succeeded" {
                Ok(())
            } else {
                Err(format!("{} {}", image_of(&p), phase(&c)))
            }
        },
    )
    .await;
    assert!(condition(&w.canary("podinfo").await, "serin.dev/Frozen").is_none());
}

#[tokio::test]
async fn a_namespace_cap_holds_across_a_controller_restart() {
    let mut w = World::new("nscap").await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.client.clone());
    namespaces
        .patch(
            &w.ns,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"serin.dev/max-concurrent-rollouts": "1"}}}),
            ),
        )
        .await
        .unwrap();
    w.apply(config_map("shared", json!({"level": "1"}))).await;
    let names = ["one", "two", "three"];
    let analysis = json!({"interval": "5s", "threshold": 2, "maxWeight": 50, "stepWeight": 25});
    for n in names {
        w.apply(app(n, "podinfo:6.0.0")).await;
        w.apply(canary(n, analysis.clone())).await;
    }
    all_in_phase(&w, names.len(), "Initialized", LIMIT).await;
    let (seen, monitor) = watch_runs(&w);
    w.apply(config_map("shared", json!({"level": "2"}))).await;

    // One runs, two wait; then the controller is killed and a new one takes over.
    eventually("a queue of two", LIMIT, || async {
        let s = seen.lock().unwrap();
        let positions: BTreeSet<i32> = s.queued.iter().map(|(_, p)| *p).collect();
        if positions.contains(&2) && !s.started.is_empty() {
            Ok(())
        } else {
            Err(format!("{:?} started {:?}", s.queued, s.started))
        }
    })
    .await;
    w.controller.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.controller = ControllerProcess::spawn(w.env, &w.ns, "2");
    all_in_phase(&w, names.len(), "Succeeded", Duration::from_secs(300)).await;
    monitor.abort();
    {
        let s = seen.lock().unwrap();
        println!(
            "namespace cap 1: at most {} at once over {} polls, start order {:?}",
            s.max_running, s.polls, s.started
        );
        assert_eq!(s.max_running, 1, "{:?}", s.started);
        assert_eq!(s.started.len(), names.len());
    }
    let queued = w
        .events("two")
        .await
        .into_iter()
        .chain(w.events("three").await)
        .chain(w.events("one").await)
        .any(|(_, m)| {
            m.contains("rollouts run in this namespace (serin.dev/max-concurrent-rollouts)")
        });
    assert!(queued, "the namespace's cap is named");
}
