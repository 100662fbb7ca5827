//! The CLI for people end to end: `serin get|status|promote|abort|pause|resume|retry` run as
//! processes with the sandbox's kubeconfig against a `serin controller` process, asserting what
//! the user sees (output, exit codes) and what the cluster shows (status, routes, Events).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serin::rollout::request::text;
use serin_sandbox::testenv::eventually;
use support::*;

/// Ten steps of 10 s before promotion unless someone intervenes.
fn slow() -> Value {
    json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 10, "metrics": builtin_metrics()})
}

async fn initialized(prefix: &str, analysis: Value) -> World {
    let w = World::new(prefix).await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary("podinfo", analysis)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    w
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `serin ARGS --kubeconfig <sandbox> -n <ns>` to completion.
async fn serin(w: &World, args: &[&str]) -> Run {
    serin_with(w, w.env.kubeconfig_path(), args).await
}

async fn serin_with(w: &World, kubeconfig: &std::path::Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_serin"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", &w.ns])
        .kill_on_drop(true)
        .output()
        .await
        .expect("running serin");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `serin status NAME --watch` in the background.
fn watch_status(w: &World, name: &str) -> tokio::task::JoinHandle<Run> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_serin"));
    cmd.args(["status", name, "--watch", "--timeout", "170"])
        .arg("--kubeconfig")
        .arg(w.env.kubeconfig_path())
        .args(["-n", &w.ns])
        .kill_on_drop(true);
    tokio::spawn(async move {
        let out = cmd.output().await.expect("running serin status --watch");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
}

fn qualified(w: &World) -> String {
    format!("podinfo.{}", w.ns)
}

/// The cells of the `serin get` row of `name` (split on runs of 3+ spaces).
fn row(table: &str, name: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"));
    line.split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

async fn status_weight(w: &World) -> i32 {
    w.canary("podinfo")
        .await
        .status
        .and_then(|s| s.canary_weight)
        .unwrap_or(-1)
}

async fn vs_canary_weight(w: &World) -> Option<u32> {
    let vs = w.virtual_service("podinfo").await?;
    routes_of(&vs, "podinfo").map(|r| r.canary)
}

#[tokio::test]
async fn get_and_status_show_the_run_and_promote_ends_it_early() {
    let w = initialized("cli-promote", slow()).await;
    let q = qualified(&w);

    let get = serin(&w, &["get"]).await;
    assert_eq!(get.code, 0, "{}{}", get.stdout, get.stderr);
    assert!(get.stdout.starts_with("NAME"), "{}", get.stdout);
    let r = row(&get.stdout, "podinfo");
    assert_eq!(r[1..4], ["Initialized", "0", "0"], "{}", get.stdout);
    assert_eq!(r[5], serin::rollout::messages::initialization_done(&q));
    let st = serin(&w, &["status", "podinfo"]).await;
    assert_eq!(st.code, 0, "Initialized counts as promoted:\n{}", st.stdout);

    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    let watcher = watch_status(&w, "podinfo");
    let weights = w.watch_weights("podinfo");
    w.wait_weight("podinfo", 10).await;

    let get = serin(&w, &["get"]).await;
    let r = row(&get.stdout, "podinfo");
    assert_eq!(r[1], "Progressing", "{}", get.stdout);
    let weight: u32 = r[2].parse().unwrap();
    assert!((10..50).contains(&weight), "{}", get.stdout);
    let all = serin(&w, &["get", "-A"]).await;
    assert!(
        all.stdout
            .lines()
            .any(|l| l.starts_with(&w.ns) && l.contains("podinfo") && l.contains("Progressing")),
        "{}",
        all.stdout
    );

    // Wait for a checked metric so the status view has values to show.
    eventually("metrics in status", LIMIT, || async {
        let c = w.canary("podinfo").await;
        let n = c.status.map(|s| s.serin_metrics.len()).unwrap_or(0);
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} metrics"))
        }
    })
    .await;
    let st = serin(&w, &["status", "podinfo"]).await;
    assert_eq!(st.code, 2, "still running:\n{}{}", st.stdout, st.stderr);
    assert!(st.stdout.contains("Progressing"), "{}", st.stdout);
    assert!(st.stdout.contains("% (max 50%)   step "), "{}", st.stdout);
    assert!(st.stdout.contains("/5"), "{}", st.stdout);
    for metric in ["request-success-rate", "request-duration"] {
        let line = st
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(metric))
            .unwrap_or_else(|| panic!("no {metric} line:\n{}", st.stdout));
        assert!(line.contains(" ok "), "{line}");
    }
    assert!(st.stdout.contains(">= 99"), "{}", st.stdout);
    assert!(st.stdout.contains("<= 500"), "{}", st.stdout);
    assert!(st.stdout.contains("Advance podinfo"), "{}", st.stdout);

    let asked = Instant::now();
    let p = serin(&w, &["promote", "podinfo"]).await;
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    assert!(
        p.stdout.contains("by admin (SelfSubjectReview)"),
        "{}",
        p.stdout
    );
    assert!(
        p.stdout.contains(&text::promotion_requested(&q, "admin")),
        "{}",
        p.stdout
    );
    w.wait_phase("podinfo", "Succeeded", Duration::from_secs(40))
        .await;
    let took = asked.elapsed();
    // The rest of the analysis (to 50 % and the promotion step) would take 30 s and more.
    assert!(took < Duration::from_secs(25), "promotion took {took:?}");
    weights.caught_up().await;
    let max_seen = weights.canary_weights().into_iter().max().unwrap_or(0);
    assert!(
        max_seen < 50,
        "the analysis was not skipped: {:?}",
        weights.all()
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.1"
    );
    assert!(
        w.has_event("podinfo", &text::promotion_requested(&q, "admin"))
            .await
    );

    let watched = watcher.await.unwrap();
    assert_eq!(watched.code, 0, "{}{}", watched.stdout, watched.stderr);
    assert!(watched.stdout.contains("Progressing"), "{}", watched.stdout);
    assert!(watched.stdout.contains("Succeeded"), "{}", watched.stdout);
    let st = serin(&w, &["status", "podinfo"]).await;
    assert_eq!(st.code, 0, "{}", st.stdout);

    // Nothing left to promote: refused, with the reason, in the output and as an Event.
    let again = serin(&w, &["promote", "podinfo"]).await;
    assert_eq!(again.code, 1, "{}{}", again.stdout, again.stderr);
    let refused = format!("Request to promote {q} by admin not carried out");
    assert!(again.stdout.contains(&refused), "{}", again.stdout);
    let events = w.events("podinfo").await;
    assert!(
        events
            .iter()
            .any(|(t, m)| t == "Warning" && m.starts_with(&refused)),
        "{events:?}"
    );
}

#[tokio::test]
async fn abort_rolls_back_at_once_and_leaves_the_primary_alone() {
    let w = initialized("cli-abort", slow()).await;
    let q = qualified(&w);
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    let watcher = watch_status(&w, "podinfo");
    w.wait_weight("podinfo", 10).await;
    // The kubeconfig's user entry is only a label: who asked is what the API server says.
    let relabelled = w.env.logs_dir().join(format!("kubeconfig-{}", w.ns));
    let text = std::fs::read_to_string(w.env.kubeconfig_path()).unwrap();
    let text = text
        .replace("name: admin", "name: some-label")
        .replace("user: admin", "user: some-label");
    std::fs::write(&relabelled, text).unwrap();
    let a = serin_with(&w, &relabelled, &["abort", "podinfo"]).await;
    assert_eq!(a.code, 0, "{}{}", a.stdout, a.stderr);
    assert!(
        a.stdout.contains("by admin (SelfSubjectReview)"),
        "{}",
        a.stdout
    );
    assert!(
        a.stdout
            .contains(&text::rolling_back_requested(&q, "admin")),
        "{}",
        a.stdout
    );
    let c = w
        .wait_phase("podinfo", "Failed", Duration::from_secs(20))
        .await;
    assert_eq!(c.status.unwrap().canary_weight, Some(0));
    assert_eq!(vs_canary_weight(&w).await, Some(0));
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.0",
        "the primary still runs the old release"
    );
    eventually("canary scaled to zero", LIMIT, || async {
        let d = w.deployment("podinfo").await.ok_or("no target")?;
        if replicas_of(&d) == 0 {
            Ok(())
        } else {
            Err(format!("{}", replicas_of(&d)))
        }
    })
    .await;
    let events = w.events("podinfo").await;
    assert!(
        events
            .iter()
            .any(|(t, m)| t == "Warning" && *m == text::rolling_back_requested(&q, "admin")),
        "{events:?}"
    );
    let watched = watcher.await.unwrap();
    assert_eq!(watched.code, 1, "{}{}", watched.stdout, watched.stderr);
    assert!(watched.stdout.contains("Failed"), "{}", watched.stdout);
    let st = serin(&w, &["status", "podinfo"]).await;
    assert_eq!(st.code, 1, "{}", st.stdout);
    let missing = serin(&w, &["status", "no-such-canary"]).await;
    assert_eq!(missing.code, 3, "{}{}", missing.stdout, missing.stderr);
    assert!(
        missing.stderr.contains("no-such-canary"),
        "{}",
        missing.stderr
    );
    // The rejected revision is not analysed again by itself.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = w.canary("podinfo").await;
    assert_eq!(
        c.status.and_then(|s| s.phase).map(|p| p.as_str()),
        Some("Failed")
    );
}

/// The Canary under real Flux: committed to a repository of the sandbox's Git server and applied
/// into the test's namespace by a Kustomization that reconciles every 5 s, as Flux's interval
/// re-applies on a cluster. Returns the repository, to commit changes to the Canary.
async fn under_flux(w: &World, manifest: &Value) -> serin_sandbox::flux::Repository {
    use serin_sandbox::flux::api::{self, Kind};
    let flux = w.env.flux().await;
    let content = std::env::temp_dir().join(format!("serin-cli-flux-{}", w.ns));
    let _ = std::fs::remove_dir_all(&content);
    std::fs::create_dir_all(content.join("apps")).unwrap();
    std::fs::write(
        content.join("apps/canary.yaml"),
        serde_yaml_ng::to_string(manifest).unwrap(),
    )
    .unwrap();
    let repo = flux
        .git()
        .create_repository(&w.ns, &content, "the canary")
        .unwrap();
    let _ = std::fs::remove_dir_all(&content);
    for object in [
        json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": w.ns, "namespace": api::NAMESPACE},
            "spec": {"interval": "5s", "url": repo.url(), "ref": {"branch": "main"}}
        }),
        json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": w.ns, "namespace": api::NAMESPACE},
            "spec": {"interval": "5s", "path": "./apps", "prune": true, "targetNamespace": w.ns,
                     "sourceRef": {"kind": "GitRepository", "name": w.ns}}
        }),
    ] {
        api::apply(&w.client, &object).await.unwrap();
    }
    let revision = repo.revision().unwrap();
    api::wait_ready(
        &w.client,
        Kind::Kustomization,
        api::NAMESPACE,
        &w.ns,
        Some(&revision),
        LIMIT,
    )
    .await
    .unwrap();
    repo
}

/// Commits a change to the Canary's labels and waits until Flux applied it.
async fn commit_label(w: &World, repo: &serin_sandbox::flux::Repository, value: &str) {
    use serin_sandbox::flux::api::{self, Kind};
    let file = repo.work_dir().join("apps/canary.yaml");
    let mut c: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    c["metadata"]["labels"]["commit"] = json!(value);
    std::fs::write(&file, serde_yaml_ng::to_string(&c).unwrap()).unwrap();
    let revision = repo.commit(&format!("commit {value}")).unwrap();
    api::request_reconcile(&w.client, Kind::GitRepository, api::NAMESPACE, &w.ns)
        .await
        .unwrap();
    api::wait_ready(
        &w.client,
        Kind::Kustomization,
        api::NAMESPACE,
        &w.ns,
        Some(&revision),
        LIMIT,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn pause_holds_the_weight_through_a_gitops_reapply_and_resume_continues() {
    let w = initialized("cli-pause", slow()).await;
    let q = qualified(&w);
    let repo = under_flux(&w, &canary("podinfo", slow())).await;
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_weight("podinfo", 10).await;
    let p = serin(&w, &["pause", "podinfo"]).await;
    assert_eq!(p.code, 0, "{}{}", p.stdout, p.stderr);
    let held = status_weight(&w).await;
    assert!(held >= 10, "{held}");
    let weights = w.watch_weights("podinfo");
    // Three and a half intervals, with Flux reconciling the Canary every 5 s and applying a
    // commit that changes it every other time.
    for i in 0..7 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if i % 2 == 0 {
            commit_label(&w, &repo, &i.to_string()).await;
        }
        assert_eq!(status_weight(&w).await, held);
    }
    assert_eq!(vs_canary_weight(&w).await, Some(held as u32));
    weights.caught_up().await;
    assert!(
        weights.canary_weights().iter().all(|x| *x == held as u32),
        "weights moved while paused: {:?}",
        weights.all()
    );
    let c = w.canary("podinfo").await;
    let ann = c.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("serin.dev/request").map(String::as_str),
        Some("pause"),
        "the re-apply kept the request"
    );
    assert_eq!(
        c.metadata
            .labels
            .clone()
            .unwrap_or_default()
            .get("commit")
            .map(String::as_str),
        Some("6"),
        "Flux applied the last commit"
    );
    let st = c.status.unwrap();
    assert_eq!(st.phase.map(|p| p.as_str()), Some("Progressing"));
    assert_eq!(
        st.serin_progress.and_then(|p| p.paused_by).as_deref(),
        Some("admin")
    );
    let get = serin(&w, &["get"]).await;
    assert_eq!(
        row(&get.stdout, "podinfo")[1],
        "Progressing (paused)",
        "{}",
        get.stdout
    );
    let st = serin(&w, &["status", "podinfo"]).await;
    assert!(st.stdout.contains("PAUSED by admin"), "{}", st.stdout);

    let r = serin(&w, &["resume", "podinfo"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    w.wait_weight("podinfo", held + 10).await;
    w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    for text in [text::paused(&q, "admin"), text::resumed(&q, "admin")] {
        assert!(w.has_event("podinfo", &text).await, "no event {text:?}");
    }
    // Resuming what is not paused is refused.
    let again = serin(&w, &["resume", "podinfo"]).await;
    assert_eq!(again.code, 1, "{}", again.stdout);
}

#[tokio::test]
async fn retry_analyses_the_same_revision_again_once_the_fault_is_gone() {
    let w = World::new("cli-retry").await;
    let q = qualified(&w);
    let template = |query: &str| {
        json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "dependency-errors"},
            "spec": {"provider": {"type": "prometheus", "address": w.env.prometheus_url()}, "query": query}
        })
    };
    // The fault lives outside the pod template: a dependency whose error count is too high.
    w.apply(template("vector(5)")).await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    let analysis = json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": [
        {"name": "dependency-errors", "interval": "30s", "templateRef": {"name": "dependency-errors"}, "thresholdRange": {"max": 1}}
    ]});
    w.apply(canary("podinfo", analysis)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    let failed = w.wait_phase("podinfo", "Failed", LIMIT).await;
    let revision = failed.status.unwrap().last_applied_spec;
    let target = w.deployment("podinfo").await.unwrap();
    let template_before = target.spec.template;

    // Removing the fault alone changes nothing: the revision stays failed.
    w.apply(template("vector(0)")).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = w.canary("podinfo").await;
    assert_eq!(
        c.status.and_then(|s| s.phase).map(|p| p.as_str()),
        Some("Failed")
    );

    let r = serin(&w, &["retry", "podinfo"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&text::retry_requested(&q, &q, "admin")),
        "{}",
        r.stdout
    );
    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    let status = c.status.unwrap();
    assert_eq!(status.last_applied_spec, revision, "the same revision");
    assert_eq!(status.last_promoted_spec, revision);
    let target = w.deployment("podinfo").await.unwrap();
    assert_eq!(
        target.spec.template, template_before,
        "the pod template was not touched"
    );
    assert_eq!(
        image_of(&w.deployment("podinfo-primary").await.unwrap()),
        "podinfo:6.0.1"
    );
    assert!(
        w.has_event("podinfo", &text::retry_requested(&q, &q, "admin"))
            .await
    );
    let m = status
        .serin_metrics
        .iter()
        .find(|m| m.name == "dependency-errors")
        .expect("metric in status");
    assert_eq!(m.value, Some(0.0));
}
