//! The GitOps flow of `deploy/gitops` with real Flux, as the tutorials run it: the example in a
//! repository of the sandbox's Git server, `flux bootstrap` on it (GitRepository and
//! Kustomization `flux-system`, which apply `infra`, then `apps` once `infra` is Ready), and
//! releases as commits that bump `images[0].newTag`: source-controller fetches the commit,
//! kustomize-controller applies it, serin promotes it; a faulty one is rolled back.
//!
//! The `apps` Kustomization reconciles every 5 s (the sandbox's commit shortens its interval), so
//! kustomize-controller re-applies the apps all through a release, as its interval does on a
//! cluster (Flagger [#1121](https://github.com/fluxcd/flagger/issues/1121): an apply must not
//! fight serin over the canary's replicas or restart its analysis).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::{Value, json};
use serin::rollout::messages as msg;
use serin_sandbox::flux::api::{self as flux, Kind};
use serin_sandbox::flux::bootstrap::{self, SYNC_NAME};
use serin_sandbox::flux::release::bump_tag;
use serin_sandbox::mesh::{self, MeshOptions};
use serin_sandbox::testenv::{eventually, shared};
use support::*;

const APPS: [&str; 2] = ["backend", "frontend"];

/// The namespace the example puts the apps in (infra creates it).
const NS: &str = "prod";

/// The field manager of kustomize-controller's server-side apply.
const FLUX_MANAGER: &str = "kustomize-controller";

fn repo_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_path_buf()
}

fn example() -> PathBuf {
    repo_root().join("deploy/gitops")
}

fn yaml_docs(text: &str) -> Vec<Value> {
    bootstrap::documents(text).unwrap()
}

fn read_yaml(path: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The layout Flux bootstraps: infra first, apps after it with `dependsOn` and `prune`, paths
/// that build with kustomize (kubectl's, v5), and Canaries `serin validate` finds nothing wrong
/// with.
#[test]
fn the_example_layout_is_what_flux_expects() {
    let root = example();
    let mut ks = BTreeMap::new();
    for file in ["infra.yaml", "apps.yaml"] {
        let text = std::fs::read_to_string(root.join("clusters/my-cluster").join(file)).unwrap();
        for k in yaml_docs(&text) {
            assert_eq!(k["apiVersion"], "kustomize.toolkit.fluxcd.io/v1", "{file}");
            assert_eq!(k["kind"], "Kustomization");
            assert_eq!(k["metadata"]["namespace"], "flux-system");
            assert_eq!(k["spec"]["sourceRef"]["name"], SYNC_NAME);
            assert_eq!(k["spec"]["prune"], true, "{file}");
            let path = k["spec"]["path"].as_str().unwrap();
            let dir = repo_root().join(path);
            assert!(
                dir.join("kustomization.yaml").is_file(),
                "{file}: spec.path {path} has no kustomization.yaml"
            );
            let out = Command::new(serin_sandbox::kubectl())
                .arg("kustomize")
                .arg(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kubectl kustomize {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ks.insert(k["metadata"]["name"].as_str().unwrap().to_string(), k);
        }
    }
    assert_eq!(ks.keys().collect::<Vec<_>>(), ["apps", "infra"]);
    assert!(ks["infra"]["spec"].get("dependsOn").is_none());
    assert_eq!(ks["apps"]["spec"]["dependsOn"], json!([{"name": "infra"}]));
    let infra = read_yaml(&root.join("infra/kustomization.yaml"));
    assert_eq!(
        infra["resources"],
        json!([
            "../../istio",
            "gateway.yaml",
            "namespace.yaml",
            "loadtester"
        ])
    );
    let tester = read_yaml(&root.join("infra/loadtester/kustomization.yaml"));
    assert_eq!(tester["resources"], json!(["../../../loadtester"]));
    assert_eq!(tester["namespace"], NS);
    assert_eq!(
        read_yaml(&root.join("apps/kustomization.yaml"))["resources"],
        json!(APPS)
    );
    for app in APPS {
        let canary =
            std::fs::read_to_string(root.join("apps").join(app).join("canary.yaml")).unwrap();
        assert_eq!(serin::api::lint::check_str(&canary).len(), 0, "{app}");
        for hook in yaml_docs(&canary)[0]["spec"]["analysis"]["webhooks"]
            .as_array()
            .unwrap()
        {
            assert_eq!(hook["url"], "http://flagger-loadtester.prod/");
        }
        let k = read_yaml(&root.join("apps").join(app).join("kustomization.yaml"));
        assert_eq!(k["namespace"], NS);
        assert!(k["images"][0]["newTag"].is_string(), "{app}");
    }
}

// ---- the flow on the sandbox ----

/// A stand-in for the load tester on loopback: answers 200 and counts calls per path.
struct Receiver {
    url: String,
    calls: Arc<Mutex<BTreeMap<String, usize>>>,
}

async fn receiver() -> Receiver {
    let calls: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let seen = calls.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let seen = seen.clone();
        async move {
            *seen
                .lock()
                .unwrap()
                .entry(uri.path().to_string())
                .or_default() += 1;
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, calls }
}

/// The sandbox's commit: `apps` reconciles every 5 s, and Flux patches point each Canary's
/// webhooks at the receiver (`/<canary>/<webhook>`) and analyse every 10 s.
fn localize(work: &Path, hooks: &str) {
    let mut patches = Vec::new();
    for app in APPS {
        let canary = read_yaml(&work.join(format!("deploy/gitops/apps/{app}/canary.yaml")));
        let mut local = canary.clone();
        local["spec"]["analysis"]["interval"] = json!("10s");
        for h in local["spec"]["analysis"]["webhooks"]
            .as_array_mut()
            .unwrap()
        {
            let hook = h["name"].as_str().unwrap().to_string();
            h["url"] = json!(format!("{hooks}/{app}/{hook}"));
        }
        patches.push(bootstrap::json_patch(
            "Canary",
            app,
            &bootstrap::replace_ops(&canary, &local),
        ));
    }
    bootstrap::edit_kustomization(
        &work.join("deploy/gitops/clusters/my-cluster/apps.yaml"),
        "apps",
        |k| {
            k["spec"]["interval"] = json!("5s");
            k["spec"]["patches"] = Value::Array(patches);
        },
    )
    .unwrap();
}

/// The faulty release's extra change: the pods answer half of the requests with 500.
fn add_fault(deployment: &Path) {
    let mut d = read_yaml(deployment);
    d["spec"]["template"]["metadata"]["annotations"][mesh::behaviour::SIMULATE_ANNOTATION] =
        json!("errors=50%");
    std::fs::write(deployment, serde_yaml_ng::to_string(&d).unwrap()).unwrap();
}

fn hpa_v2() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", "v2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
    )
}

/// The fields a manager owns on an object, as `managedFields` lists them.
fn owned_by(obj: &Value, manager: &str) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] == manager)
        .cloned()
        .collect()
}

/// How often an Event message was recorded on the Canary (Events are grouped by message).
async fn event_count(w: &World, canary: &str, message: &str) -> i32 {
    let api: Api<Event> = Api::namespaced(w.client.clone(), &w.ns);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.name={canary},involvedObject.kind=Canary"
    ));
    api.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.message.as_deref() == Some(message))
        .map(|e| e.count.unwrap_or(1))
        .sum()
}

/// One observation while a release runs.
#[derive(Debug, Clone)]
struct Sample {
    phase: String,
    weight: i32,
    target_replicas: i32,
    frontend_phase: String,
}

async fn phase_of(w: &World, name: &str) -> (String, i32) {
    let c = w.canary(name).await;
    let s = c.status.unwrap_or_default();
    (
        s.phase.map(|p| p.as_str().to_string()).unwrap_or_default(),
        s.canary_weight.unwrap_or(0),
    )
}

/// How many reconciliations of `apps` kustomize-controller has finished so far, from its log.
fn apps_reconciliations(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Reconciliation finished") && l.contains("\"name\": \"apps\""))
        .count()
}

/// Every Kustomization Ready at `revision` (what `kubectl get kustomizations` then shows).
async fn all_applied(w: &World, revision: &str) {
    for name in ["flux-system", "infra", "apps"] {
        flux::wait_ready(
            &w.client,
            Kind::Kustomization,
            flux::NAMESPACE,
            name,
            Some(revision),
            Duration::from_secs(180),
        )
        .await
        .unwrap();
    }
}

/// On a failure, keeps the controllers' logs where the next sandbox's sweep does not reach.
struct KeepLogsOnPanic(Vec<PathBuf>);

impl Drop for KeepLogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.0 {
                let name = log.file_name().unwrap().to_string_lossy();
                let kept = std::env::temp_dir()
                    .join(format!("serin-gitops-failed-{}-{name}", std::process::id()));
                if std::fs::copy(log, &kept).is_ok() {
                    eprintln!("log kept in {}", kept.display());
                }
            }
        }
    }
}

#[tokio::test]
async fn flux_applies_each_release_commit_serin_promotes_one_and_rolls_back_a_faulty_one() {
    let env = shared();
    let flux_running = env.flux().await;
    let client = env.client();
    // serin and the mesh (Istio's part, played by the simulator) run before Flux applies.
    let mesh = mesh::start(
        env.config(),
        MeshOptions {
            namespace: Some(NS.into()),
            rate_per_second: 20.0,
            ..Default::default()
        },
    )
    .unwrap();
    env.register_scrape_target("mesh-prod", &mesh.metrics_addr().to_string())
        .unwrap();
    let controller = ControllerProcess::spawn(env, NS, "1");
    let w = World {
        env,
        ns: NS.to_string(),
        client: client.clone(),
        mesh,
        controller,
    };
    let mut logs = flux_running.logs();
    logs.push(w.controller.log.clone());
    let _keep = KeepLogsOnPanic(logs);
    let kc_log = flux_running
        .logs()
        .into_iter()
        .find(|l| l.ends_with("kustomize-controller.log"))
        .unwrap();
    let hooks = receiver().await;

    // The repository: deploy/ (the example and the bases it refers to), then the sandbox's
    // commit, then bootstrap's.
    let content = std::env::temp_dir().join(format!("serin-gitops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&content);
    copy_dir(&repo_root().join("deploy"), &content.join("deploy"));
    let repo = flux_running
        .git()
        .create_repository("gitops", &content, "the example")
        .unwrap();
    let work = repo.work_dir().to_path_buf();
    localize(&work, &hooks.url);
    repo.commit("sandbox: webhooks to the test's receiver, short intervals")
        .unwrap();
    flux::ensure_namespace(&client, "istio-system")
        .await
        .unwrap();
    let first = bootstrap::bootstrap(&client, &repo, "deploy/gitops/clusters/my-cluster")
        .await
        .unwrap();
    all_applied(&w, &first).await;
    for app in APPS {
        w.wait_phase(app, "Initialized", LIMIT).await;
    }
    eventually("backend (the canary) scaled to zero", LIMIT, || async {
        let d = w.deployment("backend").await.ok_or("no backend")?;
        match replicas_of(&d) {
            0 => Ok(()),
            r => Err(format!("replicas {r}")),
        }
    })
    .await;
    // What Flux applied is Flux's: its field manager owns the HPA, applied server-side.
    let hpas: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &hpa_v2());
    let hpa = serde_json::to_value(hpas.get("backend").await.unwrap()).unwrap();
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    let by_flux = owned_by(&hpa, FLUX_MANAGER);
    assert_eq!(by_flux.len(), 1, "{hpa}");
    assert_eq!(by_flux[0]["operation"], "Apply");
    let weights = w.watch_weights("backend");

    // The release: a commit bumps the tag; `flux reconcile source git flux-system`.
    let kustomization = work.join("deploy/gitops/apps/backend/kustomization.yaml");
    let before = std::fs::read_to_string(&kustomization).unwrap();
    bump_tag(&kustomization, "6.0.1").unwrap();
    assert_eq!(
        std::fs::read_to_string(&kustomization).unwrap(),
        before.replace("newTag: 6.0.0", "newTag: 6.0.1")
    );
    let good = repo.commit("backend 6.0.1").unwrap();
    flux::request_reconcile(&client, Kind::GitRepository, flux::NAMESPACE, SYNC_NAME)
        .await
        .unwrap();
    let reapplies_before = apps_reconciliations(&kc_log);

    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let done = w.wait_phase("backend", "Succeeded", Duration::from_secs(240));
    let sampling = async {
        loop {
            let (phase, weight) = phase_of(&w, "backend").await;
            let target_replicas = w
                .deployment("backend")
                .await
                .map(|d| replicas_of(&d))
                .unwrap_or(-1);
            let (frontend_phase, _) = phase_of(&w, "frontend").await;
            samples.lock().unwrap().push(Sample {
                phase,
                weight,
                target_replicas,
                frontend_phase,
            });
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        _ = done => {}
        _ = sampling => {}
    }
    all_applied(&w, &good).await;

    // The outcome: the new tag runs on the primary.
    let primary = w.deployment("backend-primary").await.unwrap();
    assert_eq!(image_of(&primary), "ghcr.io/stefanprodan/podinfo:6.0.1");
    // Its course: the weights went up step by step once, then back to the primary.
    weights.caught_up().await;
    assert_eq!(weights.canary_weights(), vec![0, 10, 20, 30, 40, 50, 0]);
    let target = format!("backend.{NS}");
    // kustomize-controller reconciled apps all along (every 5 s) ...
    let reapplies = apps_reconciliations(&kc_log) - reapplies_before;
    assert!(
        reapplies >= 8,
        "apps reconciled {reapplies} times during the release"
    );
    // ... and the analysis ran once, never restarted.
    assert_eq!(
        event_count(&w, "backend", &msg::starting_analysis(&target)).await,
        1,
        "one analysis, never restarted: {:?}",
        w.events("backend").await
    );
    assert_eq!(
        event_count(&w, "backend", &msg::new_revision_restarting(&target)).await,
        0
    );
    assert_eq!(
        w.canary("backend").await.status.unwrap().failed_checks,
        Some(0)
    );
    // Nobody fought over the canary's replicas: scaled up once (to the HPA's minimum) and
    // left there while the analysis ran; frontend never started a release.
    let seen = samples.lock().unwrap().clone();
    let progressing: Vec<i32> = seen
        .iter()
        .filter(|s| s.phase == "Progressing" && s.weight > 0)
        .map(|s| s.target_replicas)
        .collect();
    assert!(progressing.len() > 10, "{seen:?}");
    assert!(
        progressing.iter().all(|r| *r == 2),
        "canary replicas while progressing: {progressing:?}"
    );
    assert!(
        seen.iter().all(|s| s.frontend_phase == "Initialized"),
        "{seen:?}"
    );
    // After the promotion the canary goes back to zero, and Flux's re-applies keep it there.
    eventually(
        "backend scaled to zero after the promotion",
        LIMIT,
        || async {
            match w.deployment("backend").await.map(|d| replicas_of(&d)) {
                Some(0) => Ok(()),
                r => Err(format!("replicas {r:?}")),
            }
        },
    )
    .await;
    let settled = apps_reconciliations(&kc_log);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let d = w.deployment("backend").await.unwrap();
        assert_eq!(replicas_of(&d), 0, "a re-apply scaled the canary back up");
        assert_eq!(phase_of(&w, "backend").await.0, "Succeeded");
    }
    assert!(
        apps_reconciliations(&kc_log) > settled,
        "no re-apply meanwhile"
    );
    // The replicas are serin's: Flux's apply does not own the field.
    let d = serde_json::to_value(w.deployment("backend").await.unwrap()).unwrap();
    let flux_fields = owned_by(&d, FLUX_MANAGER);
    assert_eq!(flux_fields.len(), 1, "{d}");
    assert!(
        flux_fields[0]["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none(),
        "{d}"
    );
    assert!(
        flux_fields[0]["fieldsV1"]["f:spec"]
            .get("f:template")
            .is_some()
    );

    // A faulty release: the next tag, whose pods fail half of the requests.
    bump_tag(&kustomization, "6.0.2").unwrap();
    add_fault(&work.join("deploy/gitops/apps/backend/deployment.yaml"));
    let faulty = repo.commit("backend 6.0.2").unwrap();
    flux::request_reconcile(&client, Kind::GitRepository, flux::NAMESPACE, SYNC_NAME)
        .await
        .unwrap();
    w.wait_phase("backend", "Failed", Duration::from_secs(240))
        .await;
    assert_eq!(
        image_of(&w.deployment("backend-primary").await.unwrap()),
        "ghcr.io/stefanprodan/podinfo:6.0.1",
        "the primary kept the good release"
    );
    assert!(
        w.has_event("backend", &msg::rolling_back_threshold(&target, 5))
            .await,
        "{:?}",
        w.events("backend").await
    );
    all_applied(&w, &faulty).await;

    // What a user sees: `kubectl get kustomizations` with all of them Ready at that commit.
    let out = Command::new(serin_sandbox::kubectl())
        .args(["-n", "flux-system", "get", "kustomizations", "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status} {.status.lastAppliedRevision}{\"\\n\"}{end}"])
        .env("KUBECONFIG", env.kubeconfig_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text,
        format!("apps True {faulty}\nflux-system True {faulty}\ninfra True {faulty}\n"),
        "{out:?}"
    );

    // The load tester's stand-in was asked for the acceptance test and the load, for backend
    // only.
    let calls = hooks.calls.lock().unwrap().clone();
    assert!(
        calls
            .get("/backend/acceptance-test")
            .is_some_and(|n| *n >= 2),
        "{calls:?}"
    );
    assert!(
        calls.get("/backend/load-test").is_some_and(|n| *n >= 5),
        "{calls:?}"
    );
    assert!(
        !calls.keys().any(|k| k.starts_with("/frontend/")),
        "{calls:?}"
    );
    let _ = std::fs::remove_dir_all(&content);
}
