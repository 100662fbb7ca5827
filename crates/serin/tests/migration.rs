//! Switching from Flagger to serin mid-rollout (issue 13 §2): real Flagger v1.44 runs a canary of
//! `tests/e2e/` on one namespace under its own CRD; at a chosen phase it is stopped and
//! `serin controller` is started on the same namespace. serin must continue from what it finds
//! (Flagger's status, the VirtualService's weights, the primary's template): no traffic jump, no
//! second "Starting canary analysis" or "New revision detected!", and the outcome Flagger would
//! have reached.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;
#[path = "support/user.rs"]
mod user;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;
use serin_sandbox::mesh::{self, MeshHandle, MeshOptions};
use serin_sandbox::testenv::{SharedEnv, shared};
use tokio::sync::OnceCell;

const LIMIT: Duration = Duration::from_secs(180);

use serin::rollout::messages as msg;
use support::{Proc, spawn};

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Flagger's binaries, and its CRD installed once for the binary.
async fn flagger() -> &'static serin_sandbox::setup::flux::FlaggerBinaries {
    static BINS: OnceCell<serin_sandbox::setup::flux::FlaggerBinaries> = OnceCell::const_new();
    BINS.get_or_init(|| async {
        let bins = tokio::task::spawn_blocking(serin_sandbox::setup::flux::ensure_flagger)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("Flagger is not available: {e:#}"));
        serin_sandbox::flagger::install_crd(&shared().client(), &bins)
            .await
            .unwrap();
        bins
    })
    .await
}

fn canaries(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("flagger.app", "v1beta1", "Canary"),
            "canaries",
        ),
    )
}

/// One namespace: its mesh, the controller of the moment, the weights the VirtualService went
/// through.
struct World {
    env: &'static SharedEnv,
    ns: String,
    client: Client,
    _mesh: MeshHandle,
    controller: Option<Proc>,
    log: PathBuf,
    weights: Arc<Mutex<Vec<i64>>>,
    watch: tokio::task::JoinHandle<()>,
    /// Last, so the controller is stopped before the CRDs are put back.
    _crds: Crds,
}

impl Drop for World {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl World {
    async fn new(prefix: &str) -> World {
        Self::holding(prefix, Crds::Flagger(CRDS.read().await)).await
    }

    async fn holding(prefix: &str, crds: Crds) -> World {
        flagger().await;
        let env = shared();
        let ns = env.namespace(prefix).await;
        let client = env.client();
        let mesh = mesh::start(
            env.config(),
            MeshOptions {
                namespace: Some(ns.clone()),
                rate_per_second: 20.0,
                ..Default::default()
            },
        )
        .expect("mesh simulator");
        env.register_scrape_target(&format!("mesh-{ns}"), &mesh.metrics_addr().to_string())
            .expect("scrape target");
        let weights = Arc::new(Mutex::new(Vec::new()));
        let w = weights.clone();
        let vs: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &ns,
            &ApiResource::from_gvk(&GroupVersionKind::gvk(
                "networking.istio.io",
                "v1beta1",
                "VirtualService",
            )),
        );
        let watch = tokio::spawn(async move {
            let cfg = watcher::Config::default().fields("metadata.name=podinfo");
            let mut s = watcher(vs, cfg).applied_objects().boxed();
            while let Some(v) = s.next().await {
                if let Ok(v) = v {
                    let v = serde_json::to_value(v).unwrap();
                    let weight = v["spec"]["http"][0]["route"]
                        .as_array()
                        .and_then(|r| {
                            r.iter()
                                .find(|r| r["destination"]["host"] == "podinfo-canary")
                                .and_then(|r| r["weight"].as_i64())
                        })
                        .unwrap_or(0);
                    let mut w = w.lock().unwrap();
                    if w.last() != Some(&weight) {
                        w.push(weight);
                    }
                }
            }
        });
        let log = env.logs_dir().join(format!("migration-{ns}-flagger.log"));
        World {
            env,
            ns,
            client,
            _mesh: mesh,
            controller: None,
            log,
            weights,
            watch,
            _crds: crds,
        }
    }

    async fn start_flagger(&mut self) {
        let bins = flagger().await;
        let port = serin_sandbox::free_ports(1).unwrap()[0];
        self.log = self
            .env
            .logs_dir()
            .join(format!("migration-{}-flagger.log", self.ns));
        self.controller = Some(spawn(
            &bins.flagger,
            &[
                format!("-kubeconfig={}", self.env.kubeconfig_path().display()),
                "-mesh-provider=istio".into(),
                format!("-metrics-server={}", self.env.prometheus_url()),
                format!("-namespace={}", self.ns),
                format!("-port={port}"),
                "-log-level=info".into(),
                "-zap-encoding=console".into(),
            ],
            &self.log,
        ));
    }

    /// Stops Flagger (SIGKILL, as a pod deleted without grace) and starts serin in its place.
    /// Flagger's Events are sent in the background: a second lets the last ones land, or a test
    /// would count an Event Flagger never got to write.
    async fn switch_to_serin(&mut self) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.controller = None;
        self.log = self
            .env
            .logs_dir()
            .join(format!("migration-{}-serin.log", self.ns));
        self.controller = Some(spawn(
            Path::new(env!("CARGO_BIN_EXE_serin")),
            &[
                "controller".into(),
                "--kubeconfig".into(),
                self.env.kubeconfig_path().display().to_string(),
                "--namespace".into(),
                self.ns.clone(),
                "--metrics-server".into(),
                self.env.prometheus_url().into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--log-level".into(),
                "debug".into(),
            ],
            &self.log,
        ));
    }

    async fn apply(&self, rel: &str, edits: &[(&str, &str)]) {
        user::apply(self.env.kubeconfig_path(), &self.ns, rel, edits).await;
    }

    async fn status(&self) -> Value {
        canaries(&self.client, &self.ns)
            .get_opt("podinfo")
            .await
            .ok()
            .flatten()
            .map(|o| serde_json::to_value(o).unwrap()["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Waits until `ok` holds for the status.
    async fn wait(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let s = self.status().await;
            if ok(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no {what} within {LIMIT:?}: phase {} weight {} failedChecks {}; log {}:\n{}",
                self.ns,
                s["phase"],
                s["canaryWeight"],
                s["failedChecks"],
                self.log.display(),
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_phase(&self, phase: &str) -> Value {
        self.wait(&format!("phase {phase}"), |s| s["phase"] == phase)
            .await
    }

    /// How many times each Event message was told (over Event objects and their counts), the
    /// namespace written as NS.
    async fn event_counts(&self, message: &str) -> i32 {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let lp =
            ListParams::default().fields("involvedObject.kind=Canary,involvedObject.name=podinfo");
        api.list(&lp)
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| {
                e.message
                    .as_deref()
                    .unwrap_or_default()
                    .trim_start_matches("(combined from similar events): ")
                    .replace(&self.ns, "NS")
                    == message
            })
            .map(|e| e.count.unwrap_or(1))
            .sum()
    }

    fn weights(&self) -> Vec<i64> {
        self.weights.lock().unwrap().clone()
    }

    async fn primary_image(&self) -> String {
        let api: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(self.client.clone(), &self.ns);
        support::image_of(&api.get("podinfo-primary").await.unwrap())
    }

    /// The Events a switch must not replay are still told once.
    async fn assert_told_once(&self, messages: &[String]) {
        for m in messages {
            assert_eq!(
                self.event_counts(m).await,
                1,
                "{m:?} told once; serin's log {}:\n{}",
                self.log.display(),
                tail(&self.log)
            );
        }
    }
}

const IMAGE: &str = "ghcr.io/stefanprodan/podinfo";
/// The canary as Flagger's Event texts name it, with the namespace written as NS.
const CANARY: &str = "podinfo.NS";

fn starting() -> String {
    msg::starting_analysis(CANARY)
}

fn new_revision() -> String {
    msg::new_revision_scaling_up(CANARY)
}

fn promoted() -> String {
    msg::promotion_completed(CANARY)
}

/// Flagger has shifted 25% to the canary; serin continues to 50% and promotes: the
/// VirtualService goes 0, 25, 50, 0 as under Flagger alone.
#[tokio::test]
async fn progressing_at_a_weight() {
    let mut w = World::new("mig-progress").await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply("canary/canary.yaml", &[]).await;
    w.wait_phase("Initialized").await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait("weight 25", |s| {
        s["phase"] == "Progressing" && s["canaryWeight"] == 25
    })
    .await;
    w.switch_to_serin().await;
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(
        w.weights(),
        [0, 25, 50, 0],
        "the VirtualService's canary weight"
    );
    w.assert_told_once(&[starting(), new_revision()]).await;
    assert_eq!(w.event_counts(&promoted()).await, 1);
}

/// Flagger waits at the maximum weight for a closed confirm-promotion gate; serin keeps the
/// weight while the gate stays closed, and promotes once it opens.
#[tokio::test]
async fn waiting_promotion_behind_a_closed_gate() {
    let mut w = World::new("mig-gate").await;
    let rollout = user::Gate::closed().await;
    rollout.open();
    let promotion = user::Gate::closed().await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply(
        "gates/canary.yaml",
        &[
            ("${ROLLOUT_GATE}", &rollout.url),
            ("${PROMOTION_GATE}", &promotion.url),
        ],
    )
    .await;
    w.wait_phase("Initialized").await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait_phase("WaitingPromotion").await;
    w.switch_to_serin().await;
    // Three intervals with the gate closed: no promotion, no traffic change.
    let before = w.weights();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let s = w.status().await;
    assert_eq!(s["phase"], "WaitingPromotion", "{s}");
    assert_eq!(
        w.weights(),
        before,
        "the weight held behind the closed gate"
    );
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.0"));
    promotion.open();
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(
        w.weights(),
        [0, 25, 50, 0],
        "the VirtualService's canary weight"
    );
    w.assert_told_once(&[starting(), new_revision()]).await;
}

/// Flagger promoted; serin changes nothing, then runs the next release.
#[tokio::test]
async fn succeeded() {
    let mut w = World::new("mig-done").await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply("canary/canary.yaml", &[]).await;
    w.wait_phase("Initialized").await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait_phase("Succeeded").await;
    w.switch_to_serin().await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let s = w.status().await;
    assert_eq!(s["phase"], "Succeeded", "{s}");
    assert_eq!(w.weights(), [0, 25, 50, 0]);
    w.assert_told_once(&[starting(), new_revision()]).await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.1"));
    // The next release is serin's.
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.2")])
        .await;
    w.wait("a second run", |s| {
        s["phase"] == "Progressing" && s["canaryWeight"] == 25
    })
    .await;
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.2"));
    assert_eq!(w.weights(), [0, 25, 50, 0, 25, 50, 0]);
}

/// Flagger rolled a faulty release back; serin keeps it rolled back (no new run of the same
/// revision), with the traffic on the primary.
#[tokio::test]
async fn failed() {
    let mut w = World::new("mig-failed").await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply("canary/canary.yaml", &[]).await;
    w.wait_phase("Initialized").await;
    w.apply(
        "base/deployment.yaml",
        &[(":6.0.0", ":6.0.1"), ("errors=0%", "errors=50%")],
    )
    .await;
    w.wait_phase("Failed").await;
    w.switch_to_serin().await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    let s = w.status().await;
    assert_eq!(s["phase"], "Failed", "{s}");
    assert_eq!(w.weights(), [0, 25, 0]);
    w.assert_told_once(&[starting(), new_revision()]).await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.0"));
}

/// Flagger initialized the canary; serin tells nothing again and runs the first release.
#[tokio::test]
async fn initialized() {
    let mut w = World::new("mig-init").await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply("canary/canary.yaml", &[]).await;
    w.wait_phase("Initialized").await;
    w.switch_to_serin().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(w.status().await["phase"], "Initialized");
    w.assert_told_once(&[msg::initialization_done(CANARY)])
        .await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait("a run", |s| s["canaryWeight"] == 25).await;
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(w.weights(), [0, 25, 50, 0]);
    w.assert_told_once(&[starting(), new_revision()]).await;
}

/// Flagger switches at `phase` (Promoting: the template copied; Finalising: the traffic back
/// on the primary); serin finishes the promotion without copying or shifting again.
async fn switch_during_the_promotion(prefix: &str, phase: &str) {
    let mut w = World::new(prefix).await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply("canary/canary.yaml", &[]).await;
    w.wait_phase("Initialized").await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait_phase(phase).await;
    w.switch_to_serin().await;
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(w.weights(), [0, 25, 50, 0]);
    w.assert_told_once(&[
        starting(),
        new_revision(),
        msg::copying_template(CANARY, "podinfo-primary.NS"),
    ])
    .await;
}

#[tokio::test]
async fn promoting() {
    switch_during_the_promotion("mig-promoting", "Promoting").await;
}

#[tokio::test]
async fn finalising() {
    switch_during_the_promotion("mig-finalising", "Finalising").await;
}

/// Flagger waits for a closed confirm-rollout gate at weight 0; serin keeps waiting without
/// telling "New revision detected!" again, and runs the analysis once the gate opens.
#[tokio::test]
async fn waiting_for_approval() {
    let mut w = World::new("mig-approval").await;
    let rollout = user::Gate::closed().await;
    let promotion = user::Gate::closed().await;
    promotion.open();
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    // Flagger asks the confirm-rollout gate of a new Canary too (before initializing it).
    rollout.open();
    w.apply(
        "gates/canary.yaml",
        &[
            ("${ROLLOUT_GATE}", &rollout.url),
            ("${PROMOTION_GATE}", &promotion.url),
        ],
    )
    .await;
    w.wait_phase("Initialized").await;
    rollout.close();
    let asked = rollout.calls();
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait("Flagger asking the closed gate", |_| {
        rollout.calls() > asked
    })
    .await;
    w.switch_to_serin().await;
    let asked = rollout.calls();
    w.wait("serin asking the closed gate", |_| {
        rollout.calls() > asked + 1
    })
    .await;
    let s = w.status().await;
    assert_eq!(w.weights(), [0], "no traffic while the gate is closed: {s}");
    rollout.open();
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(w.weights(), [0, 25, 50, 0]);
    w.assert_told_once(&[starting(), new_revision()]).await;
}

/// Flagger promoted 6.0.1 and was stopped; 6.0.2 is applied before serin starts. Flagger's
/// status names the promoted revision, which serin cannot hash: the primary, still running
/// 6.0.1's template, tells the target is new. serin detects it once, runs it from weight 0 and
/// promotes it.
#[tokio::test]
async fn a_new_revision_waiting() {
    let mut w = World::new("mig-newrev").await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply("canary/canary.yaml", &[]).await;
    w.wait_phase("Initialized").await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait_phase("Succeeded").await;
    // Flagger stops (its last Events land first); the release comes while no controller runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.controller = None;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.2")])
        .await;
    w.switch_to_serin().await;
    w.wait("the new revision's run", |s| {
        s["phase"] == "Progressing" && s["canaryWeight"] == 25
    })
    .await;
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.2"));
    assert_eq!(
        w.weights(),
        [0, 25, 50, 0, 25, 50, 0],
        "Flagger's run, then serin's"
    );
    for m in [starting(), new_revision()] {
        assert_eq!(w.event_counts(&m).await, 2, "{m:?}: once per revision");
    }
    assert_eq!(w.event_counts(&promoted()).await, 2);
}

/// Flagger holds the weight at 25 behind a closed confirm-traffic-increase gate; serin keeps
/// the weight, asks the gate at every interval, and goes on to 50 and the promotion once it
/// opens.
#[tokio::test]
async fn progressing_behind_a_closed_traffic_gate() {
    let mut w = World::new("mig-traffic").await;
    let rollout = user::Gate::closed().await;
    rollout.open();
    let traffic = user::Gate::closed().await;
    traffic.open();
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply(
        "gates/canary.yaml",
        &[
            ("name: confirm-promotion-gate", "name: traffic-gate"),
            ("type: confirm-promotion", "type: confirm-traffic-increase"),
            ("${ROLLOUT_GATE}", &rollout.url),
            ("${PROMOTION_GATE}", &traffic.url),
        ],
    )
    .await;
    w.wait_phase("Initialized").await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait("weight 25", |s| {
        s["phase"] == "Progressing" && s["canaryWeight"] == 25
    })
    .await;
    traffic.close();
    let asked = traffic.calls();
    w.wait("Flagger asking the closed gate", |_| {
        traffic.calls() > asked
    })
    .await;
    w.switch_to_serin().await;
    let asked = traffic.calls();
    w.wait("serin asking the closed gate twice", |_| {
        traffic.calls() > asked + 1
    })
    .await;
    let s = w.status().await;
    assert_eq!(s["phase"], "Progressing", "{s}");
    assert_eq!(s["canaryWeight"], 25, "{s}");
    assert_eq!(
        w.weights(),
        [0, 25],
        "the weight held behind the closed gate"
    );
    traffic.open();
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(w.weights(), [0, 25, 50, 0]);
    w.assert_told_once(&[starting(), new_revision()]).await;
}

/// The Service ports, each as `name:port`, of `name`.
async fn service_ports(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), ns);
    let svc = api.get(name).await.unwrap();
    svc.spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .iter()
        .map(|p| format!("{}:{}", p.name.clone().unwrap_or_default(), p.port))
        .collect()
}

/// What Flagger's Updates own on the objects it made must go when the target drops it: Flagger
/// copied a pod-template annotation and label to the primary and a discovered port to the
/// Services; the user removes them with the next release after the switch; once serin promoted
/// it, none is left (before, the fields stayed, owned by manager `flagger`).
#[tokio::test]
async fn fields_flagger_set_go_when_the_target_drops_them() {
    const EXTRAS: [(&str, &str); 2] = [
        (
            "        serin.dev/simulate-unready: \"false\"",
            "        serin.dev/simulate-unready: \"false\"\n        example.com/flagger-era: \"yes\"",
        ),
        (
            "              protocol: TCP",
            "              protocol: TCP\n            - name: metrics\n              containerPort: 9797\n              protocol: TCP",
        ),
    ];
    const LABEL: (&str, &str) = (
        "      labels:\n        app: podinfo\n      annotations:",
        "      labels:\n        app: podinfo\n        example.com/era: flagger\n      annotations:",
    );
    let mut w = World::new("mig-fields").await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[EXTRAS[0], EXTRAS[1], LABEL])
        .await;
    w.apply(
        "canary/canary.yaml",
        &[(
            "    targetPort: 9898",
            "    targetPort: 9898\n    portDiscovery: true",
        )],
    )
    .await;
    w.wait_phase("Initialized").await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(w.client.clone(), &w.ns);
    let template = |d: k8s_openapi::api::apps::v1::Deployment| {
        let t = d.spec.template;
        let m = t.metadata.unwrap_or_default();
        (
            m.annotations.unwrap_or_default(),
            m.labels.unwrap_or_default(),
            t.spec
                .unwrap()
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten().map(|p| p.container_port))
                .collect::<Vec<_>>(),
        )
    };
    let (annotations, labels, ports) = template(deployments.get("podinfo-primary").await.unwrap());
    assert!(
        annotations.contains_key("example.com/flagger-era")
            && labels.contains_key("example.com/era")
            && ports.contains(&9797),
        "Flagger copied the extras to the primary: {annotations:?} {labels:?} {ports:?}"
    );
    for svc in ["podinfo", "podinfo-primary", "podinfo-canary"] {
        let ports = service_ports(&w.client, &w.ns, svc).await;
        assert!(
            ports.contains(&"metrics:9797".to_string()),
            "Flagger's {svc} has the discovered port: {ports:?}"
        );
    }
    w.switch_to_serin().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait("a run", |s| s["canaryWeight"] == 25).await;
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.1"));
    let (annotations, labels, ports) = template(deployments.get("podinfo-primary").await.unwrap());
    assert!(
        !annotations.contains_key("example.com/flagger-era"),
        "the annotation the target dropped left the primary: {annotations:?}"
    );
    assert!(
        !labels.contains_key("example.com/era"),
        "the label the target dropped left the primary: {labels:?}"
    );
    assert_eq!(ports, [9898], "the container port the target dropped");
    for svc in ["podinfo", "podinfo-primary", "podinfo-canary"] {
        assert_eq!(
            service_ports(&w.client, &w.ns, svc).await,
            ["http:9898"],
            "{svc}'s ports"
        );
    }
    // Flagger's managers are gone from what serin wrote, and so is the mark of the move: it
    // happened once, and was followed by the apply.
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(w.client.clone(), &w.ns);
    let mut managed = vec![(
        "podinfo-primary Deployment",
        deployments
            .get("podinfo-primary")
            .await
            .unwrap()
            .metadata
            .managed_fields,
    )];
    for svc in ["podinfo", "podinfo-primary", "podinfo-canary"] {
        managed.push((
            svc,
            services.get(svc).await.unwrap().metadata.managed_fields,
        ));
    }
    for (what, entries) in managed {
        let entries = entries.unwrap_or_default();
        assert!(
            !entries
                .iter()
                .any(|m| m.manager.as_deref() == Some("flagger")
                    && m.subresource.as_deref().unwrap_or_default().is_empty()),
            "{what}: {entries:?}"
        );
        assert!(
            !serde_json::to_string(&entries)
                .unwrap()
                .contains("flagger-fields-taken-over"),
            "{what}: {entries:?}"
        );
    }
    w.assert_told_once(&[starting(), new_revision()]).await;
}

/// The Canary CRDs are the cluster's, shared by every test of this binary: the tests under
/// Flagger's hold this lock shared, a test that swaps them for serin's holds it alone.
static CRDS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[allow(dead_code)] // guards: held for what their drop does, never read
enum Crds {
    Flagger(tokio::sync::RwLockReadGuard<'static, ()>),
    Serin(SerinCrds),
}

/// serin's CRDs in place of Flagger's until dropped, when Flagger's are put back (also after a
/// failed step, so the next test runs under the CRD it expects).
struct SerinCrds {
    _alone: tokio::sync::RwLockWriteGuard<'static, ()>,
}

impl Drop for SerinCrds {
    fn drop(&mut self) {
        // Drop cannot wait on the test's runtime: a thread with its own does the writes.
        let restored = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let bins = tokio::task::spawn_blocking(serin_sandbox::setup::flux::ensure_flagger)
                    .await
                    .unwrap()
                    .unwrap();
                let text = std::fs::read_to_string(&bins.crd).unwrap();
                let crds = serin_sandbox::istio::parse_crds(&text).unwrap();
                replace_crds(&shared().client(), crds).await;
            });
        })
        .join();
        if restored.is_err() && !std::thread::panicking() {
            panic!("Flagger's CRDs could not be put back");
        }
    }
}

/// Replaces each CRD whole, as `kubectl replace` of a file carrying the current
/// resourceVersion: an apply by another field manager would keep whatever only the old schema
/// declares (Helm's fields), and the test would not run under serin's schema alone.
async fn replace_crds(
    client: &Client,
    crds: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for mut crd in crds {
        let name = crd.metadata.name.clone().unwrap();
        let live = api.get(&name).await.unwrap();
        crd.metadata.resource_version = live.metadata.resource_version;
        api.replace(&name, &Default::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("replacing the CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(60),
            kube::runtime::wait::await_condition(
                api.clone(),
                &name,
                kube::runtime::wait::conditions::is_crd_established(),
            ),
        )
        .await
        .unwrap()
        .unwrap();
    }
}

impl World {
    /// A World whose test replaces Flagger's CRDs with serin's ([`World::swap_crds`]); it waits
    /// for the tests under Flagger's CRDs to finish, and they wait for it.
    async fn alone_with_the_crds(prefix: &str) -> World {
        let alone = CRDS.write().await;
        Self::holding(prefix, Crds::Serin(SerinCrds { _alone: alone })).await
    }

    /// Stops Flagger and replaces its CRDs with serin's (`serin crds`, `crds/flagger.app.yaml`),
    /// as a user does before starting serin; returns the status before and after, which must be
    /// the same (nothing Flagger wrote pruned by serin's schema).
    async fn stop_flagger_and_swap_crds(&mut self) -> (Value, Value) {
        assert!(matches!(self._crds, Crds::Serin(_)), "alone_with_the_crds");
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.controller = None;
        let before = self.status().await;
        replace_crds(&self.client, serin::api::crd::all()).await;
        (before, self.status().await)
    }
}

impl World {
    /// Under serin's CRD serin's status additions have their place in the status: no
    /// `serin.dev/status` annotation, which only stands in for them under Flagger's CRD.
    async fn assert_additions_in_the_status(&self) {
        let canary = canaries(&self.client, &self.ns)
            .get("podinfo")
            .await
            .unwrap();
        let annotations = canary.metadata.annotations.unwrap_or_default();
        assert!(
            !annotations.contains_key("serin.dev/status"),
            "{annotations:?}; log {}:\n{}",
            self.log.display(),
            tail(&self.log)
        );
    }
}

/// The Flagger-written status as the API server serves it under serin's Canary CRD: every
/// field Flagger wrote survives the swap, and the schema the server uses is serin's.
async fn assert_swap_kept_the_status(w: &World, before: &Value, after: &Value) {
    assert_eq!(after, before, "the status across the CRD swap");
    for field in [
        "phase",
        "canaryWeight",
        "failedChecks",
        "iterations",
        "lastAppliedSpec",
        "lastTransitionTime",
        "conditions",
    ] {
        assert!(!after[field].is_null(), "{field} in {after}");
    }
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(w.client.clone());
    let live = api.get("canaries.flagger.app").await.unwrap();
    let serins = serin::api::crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "Canary")
        .unwrap();
    assert_eq!(
        serde_json::to_value(&live.spec.versions[0].schema).unwrap(),
        serde_json::to_value(&serins.spec.versions[0].schema).unwrap(),
        "the served Canary schema is serin's"
    );
}

/// Flagger has shifted 25% to the canary under its CRD; the user stops it and installs serin's
/// CRDs; serin continues to 50% and promotes, as under Flagger's CRD.
#[tokio::test]
async fn progressing_at_a_weight_under_serins_crd() {
    let mut w = World::alone_with_the_crds("mig-crd-progress").await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply("canary/canary.yaml", &[]).await;
    w.wait_phase("Initialized").await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait("weight 25", |s| {
        s["phase"] == "Progressing" && s["canaryWeight"] == 25
    })
    .await;
    let (before, after) = w.stop_flagger_and_swap_crds().await;
    assert_eq!(after["canaryWeight"], 25, "{after}");
    assert_swap_kept_the_status(&w, &before, &after).await;
    w.switch_to_serin().await;
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(
        w.weights(),
        [0, 25, 50, 0],
        "the VirtualService's canary weight"
    );
    w.assert_told_once(&[starting(), new_revision()]).await;
    w.assert_additions_in_the_status().await;
}

/// Flagger promoted under its CRD; after the swap serin changes nothing, then runs the next
/// release under serin's CRD, its additions in the status itself.
#[tokio::test]
async fn succeeded_under_serins_crd() {
    let mut w = World::alone_with_the_crds("mig-crd-done").await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply("canary/canary.yaml", &[]).await;
    w.wait_phase("Initialized").await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.1")])
        .await;
    w.wait_phase("Succeeded").await;
    let (before, after) = w.stop_flagger_and_swap_crds().await;
    assert_eq!(
        after["lastPromotedSpec"], before["lastAppliedSpec"],
        "{after}"
    );
    assert_swap_kept_the_status(&w, &before, &after).await;
    w.switch_to_serin().await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let s = w.status().await;
    assert_eq!(s["phase"], "Succeeded", "{s}");
    assert_eq!(w.weights(), [0, 25, 50, 0]);
    w.assert_told_once(&[starting(), new_revision()]).await;
    w.apply("base/deployment.yaml", &[(":6.0.0", ":6.0.2")])
        .await;
    w.wait("a second run", |s| {
        s["phase"] == "Progressing" && s["canaryWeight"] == 25
    })
    .await;
    w.wait_phase("Succeeded").await;
    assert_eq!(w.primary_image().await, format!("{IMAGE}:6.0.2"));
    assert_eq!(w.weights(), [0, 25, 50, 0, 25, 50, 0]);
    let s = w.status().await;
    assert!(
        s["lastPromotedSpec"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:")),
        "serin's revision promoted: {s}"
    );
    w.assert_additions_in_the_status().await;
}

/// serin stopped between its two writes of a takeover: Flagger's fields already moved into its
/// Apply entry (with the mark it leaves there), not yet applied. The restarted serin must still
/// apply, though the object has everything it says: a label the user removed from
/// `service.canary` while no controller ran goes.
#[tokio::test]
async fn a_restart_between_taking_over_and_applying_still_prunes() {
    const LABEL: (&str, &str) = (
        "    targetPort: 9898",
        "    targetPort: 9898\n    canary:\n      labels:\n        example.com/era: flagger",
    );
    let mut w = World::new("mig-half").await;
    w.start_flagger().await;
    w.apply("base/deployment.yaml", &[]).await;
    w.apply("canary/canary.yaml", &[LABEL]).await;
    w.wait_phase("Initialized").await;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(w.client.clone(), &w.ns);
    let label = |s: &k8s_openapi::api::core::v1::Service| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("example.com/era").cloned())
    };
    assert_eq!(
        label(&services.get("podinfo-canary").await.unwrap()).as_deref(),
        Some("flagger")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.controller = None;
    w.apply("canary/canary.yaml", &[]).await;
    // What serin's first write leaves: Flagger's Update entry become serin's Apply entry.
    let svc = services.get("podinfo-canary").await.unwrap();
    let managed: Vec<Value> = svc
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let mut e = serde_json::to_value(e).unwrap();
            if e["manager"] == "flagger" && e["operation"] == "Update" {
                e["manager"] = "serin/router".into();
                e["operation"] = "Apply".into();
                e["fieldsV1"]["f:metadata"]["f:annotations"]
                    ["f:serin.dev/flagger-fields-taken-over"] = serde_json::json!({});
            }
            e
        })
        .collect();
    services
        .patch(
            "podinfo-canary",
            &Default::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {
                    "managedFields": managed,
                    "resourceVersion": svc.metadata.resource_version,
                }
            })),
        )
        .await
        .unwrap();
    let svc = services.get("podinfo-canary").await.unwrap();
    assert!(
        serde_json::to_string(&svc.metadata.managed_fields)
            .unwrap()
            .contains("serin.dev/flagger-fields-taken-over"),
        "the API server keeps the mark: {:?}",
        svc.metadata.managed_fields
    );
    w.switch_to_serin().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let svc = services.get("podinfo-canary").await.unwrap();
        let managed = serde_json::to_string(&svc.metadata.managed_fields).unwrap();
        if label(&svc).is_none() && !managed.contains("flagger-fields-taken-over") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the label the Canary dropped stays: {:?} {managed}; log {}:\n{}",
            svc.metadata.labels,
            w.log.display(),
            tail(&w.log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(w.status().await["phase"], "Initialized");
}
