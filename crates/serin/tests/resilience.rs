//! What clusters do to a controller: an API server restart mid-rollout, and a Canary serin
//! cannot read beside good ones. Each test runs its own sandbox (one restarts the API server;
//! the other watches every namespace and loosens the CRD), one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use serin::api::Canary;
use serin_sandbox::mesh::{self, MeshHandle, MeshOptions};
use serin_sandbox::testenv::{eventually, namespace};
use serin_sandbox::{Sandbox, SandboxOptions, free_ports};
use support::{builtin_metrics, canary, deployment, image_of, serin_command};

const LIMIT: Duration = Duration::from_secs(180);

/// Two private control planes at once would starve each other on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `serin controller` against a private sandbox, with `/readyz` on a known port.
struct Controller {
    child: Child,
    log: PathBuf,
    addr: String,
}

impl Controller {
    fn spawn(sb: &Sandbox, namespace: Option<&str>) -> Controller {
        let port = free_ports(1).unwrap()[0];
        let log = sb.logs_dir().join("controller.log");
        let mut cmd = serin_command(&log);
        cmd.args(["controller", "--kubeconfig"])
            .arg(sb.kubeconfig_path())
            .args(["--metrics-server", sb.prometheus_url()])
            .args(["--listen", &format!("127.0.0.1:{port}")]);
        if let Some(ns) = namespace {
            cmd.args(["--namespace", ns]);
        }
        Controller {
            child: cmd.spawn().expect("starting serin controller"),
            log,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.addr, path).await
    }

    /// Records every `/readyz` answer (time, status) every 100 ms, for as long as the test runs.
    fn record_readiness(&self) -> Arc<Mutex<Vec<(Instant, u16)>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (out, addr) = (seen.clone(), self.addr.clone());
        tokio::spawn(async move {
            loop {
                if let Some((code, _)) = http_get(&addr, "/readyz").await {
                    out.lock().unwrap().push((Instant::now(), code));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        seen
    }
}

async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .no_proxy()
        .build()
        .ok()?;
    let r = http.get(format!("http://{addr}{path}")).send().await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.unwrap_or_default()))
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The sandbox directory, with this log, is removed right after: show its end now.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of the controller log ---\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// A private sandbox with a namespace and a mesh simulator in it.
async fn world(prefix: &str) -> (Sandbox, String, MeshHandle) {
    let sb = Sandbox::start(SandboxOptions::default())
        .await
        .expect("a private sandbox (run `serin-sandbox setup` first)");
    let ns = namespace(&sb, prefix).await;
    let mesh = mesh::start(
        sb.config(),
        MeshOptions {
            namespace: Some(ns.clone()),
            rate_per_second: 20.0,
            ..Default::default()
        },
    )
    .expect("mesh simulator");
    sb.register_scrape_target(&format!("mesh-{ns}"), &mesh.metrics_addr().to_string())
        .expect("scrape target");
    (sb, ns, mesh)
}

async fn apply(client: &Client, ns: &str, manifest: Value) {
    let kind = manifest["kind"].as_str().unwrap().to_string();
    let name = manifest["metadata"]["name"].as_str().unwrap().to_string();
    let (group, version) = match manifest["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            manifest["apiVersion"].as_str().unwrap().into(),
        ),
    };
    let plural = match kind.as_str() {
        "Canary" => "canaries".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &version, &kind), &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let mut m = manifest;
    m["metadata"]["namespace"] = json!(ns);
    api.patch(
        &name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&m),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind}/{name}: {e}"));
}

async fn wait_phase(client: &Client, ns: &str, name: &str, phase: &str, log: &Path) -> Canary {
    let api: Api<Canary> = Api::namespaced(client.clone(), ns);
    let what = format!(
        "canary {ns}/{name} in phase {phase} (controller log: {})",
        log.display()
    );
    eventually(&what, LIMIT, || {
        let api = api.clone();
        async move {
            let c = api.get(name).await.map_err(|e| e.to_string())?;
            let status = c.status.as_ref();
            let got = status
                .and_then(|s| s.phase)
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            if got == phase {
                Ok(c)
            } else {
                Err(format!(
                    "phase {got:?} weight {:?}",
                    status.and_then(|s| s.canary_weight)
                ))
            }
        }
    })
    .await
}

/// (primary, canary) weights of the VirtualService's first route.
async fn weights(client: &Client, ns: &str, name: &str) -> Option<(u32, u32)> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let vs = serde_json::to_value(api.get_opt(name).await.ok()??).ok()?;
    let r = support::routes_of(&vs, name)?;
    Some((r.primary, r.canary))
}

#[tokio::test]
async fn an_api_server_restart_mid_rollout_is_survived_and_readyz_tells_the_outage() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut sb, ns, _mesh) = world("restart").await;
    let client = sb.client();
    let ctl = Controller::spawn(&sb, Some(&ns));
    apply(
        &client,
        &ns,
        deployment("podinfo", "podinfo:6.0.0", json!({})),
    )
    .await;
    let analysis = json!({"interval": "5s", "threshold": 2, "maxWeight": 50, "stepWeight": 10, "metrics": builtin_metrics()});
    apply(&client, &ns, canary("podinfo", analysis)).await;
    wait_phase(&client, &ns, "podinfo", "Initialized", &ctl.log).await;
    let readiness = ctl.record_readiness();

    apply(
        &client,
        &ns,
        deployment("podinfo", "podinfo:6.0.1", json!({})),
    )
    .await;
    wait_phase(&client, &ns, "podinfo", "Progressing", &ctl.log).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = Api::<Canary>::namespaced(client.clone(), &ns)
        .get("podinfo")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        before.phase.map(|p| p.as_str().to_string()).as_deref(),
        Some("Progressing"),
        "still mid-rollout when the API server goes"
    );

    let killed = Instant::now();
    sb.restart_apiserver(Duration::from_secs(5))
        .await
        .expect("restarting the API server");
    let back = Instant::now();
    eprintln!(
        "API server down {:.1} s (killed mid-rollout at weight {:?})",
        (back - killed).as_secs_f64(),
        before.canary_weight
    );

    // The client keeps its connection pool; a new one is not needed, but a fresh one proves
    // the kubeconfig still works.
    let client = sb.client();
    let c = wait_phase(&client, &ns, "podinfo", "Succeeded", &ctl.log).await;
    assert_eq!(c.status.unwrap().canary_weight, Some(0));
    assert_eq!(
        weights(&client, &ns, "podinfo").await,
        Some((100, 0)),
        "traffic back on the primary"
    );
    let primary = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
        .get("podinfo-primary")
        .await
        .unwrap();
    assert_eq!(image_of(&primary), "podinfo:6.0.1");

    let seen = readiness.lock().unwrap().clone();
    let during: Vec<u16> = seen
        .iter()
        .filter(|(t, _)| *t > killed && *t < back)
        .map(|(_, c)| *c)
        .collect();
    let ok_again = seen
        .iter()
        .find(|(t, c)| *t > back && *c == 200)
        .map(|(t, _)| (*t - back).as_secs_f64());
    eprintln!(
        "/readyz: {} answers while down ({} of them 503); OK again {ok_again:?} s after the API server was back",
        during.len(),
        during.iter().filter(|c| **c == 503).count()
    );
    assert!(
        during.contains(&503),
        "/readyz said not ready while the API server was down: {during:?}"
    );
    assert!(
        seen.iter().any(|(t, c)| *t < killed && *c == 200),
        "/readyz was OK before the outage"
    );
    assert_eq!(
        ctl.get("/readyz").await.map(|(c, _)| c),
        Some(200),
        "/readyz OK again once the watches relisted"
    );
}

/// Removes every `minimum`, `maximum` and `format` from the Canary CRD, so that the API server
/// stores values serin's types refuse (what a CRD without bounds, or an older one, allows; since
/// Kubernetes 1.3x the API server also checks `format: int32`).
async fn loosen_canary_crd(client: &Client) {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("minimum");
                m.remove("maximum");
                if m.get("type").and_then(Value::as_str) == Some("integer") {
                    m.remove("format");
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = serin::api::crd::all()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some("canaries.flagger.app"))
        .expect("the Canary CRD");
    let mut v = serde_json::to_value(&crd).unwrap();
    strip(&mut v);
    api.patch(
        "canaries.flagger.app",
        &PatchParams::apply("serin").force(),
        &Patch::Apply(&v),
    )
    .await
    .expect("applying the loosened Canary CRD");
}

#[tokio::test]
async fn an_unreadable_canary_is_reported_and_skipped_and_the_others_promote() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (sb, good_ns, _mesh) = world("readable").await;
    let client = sb.client();
    loosen_canary_crd(&client).await;
    let bad_ns = namespace(&sb, "unreadable").await;
    const SECRET_URL: &str = "http://hooks.invalid/very-secret-token";
    let mut bad = canary(
        "broken",
        json!({"interval": "5s", "threshold": 2, "maxWeight": 50, "stepWeight": 99_999_999_999_i64,
               "webhooks": [{"name": "notify", "type": "event", "url": SECRET_URL}]}),
    );
    bad["spec"]["targetRef"]["name"] = json!("broken");
    apply(
        &client,
        &bad_ns,
        deployment("broken", "podinfo:6.0.0", json!({})),
    )
    .await;
    apply(&client, &bad_ns, bad).await;

    // Watching every namespace, and started with the unreadable Canary already there.
    let ctl = Controller::spawn(&sb, None);
    apply(
        &client,
        &good_ns,
        deployment("podinfo", "podinfo:6.0.0", json!({})),
    )
    .await;
    let analysis = json!({"interval": "5s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": builtin_metrics()});
    apply(&client, &good_ns, canary("podinfo", analysis)).await;
    wait_phase(&client, &good_ns, "podinfo", "Initialized", &ctl.log).await;
    apply(
        &client,
        &good_ns,
        deployment("podinfo", "podinfo:6.0.1", json!({})),
    )
    .await;
    wait_phase(&client, &good_ns, "podinfo", "Succeeded", &ctl.log).await;
    assert_eq!(weights(&client, &good_ns, "podinfo").await, Some((100, 0)));

    // The bad one: a Warning Event and a condition naming the field, nothing else touched.
    let events: Api<Event> = Api::namespaced(client.clone(), &bad_ns);
    let lp = ListParams::default().fields("involvedObject.name=broken,involvedObject.kind=Canary");
    let warning = eventually("a Warning Event on the unreadable Canary", LIMIT, || {
        let (events, lp) = (events.clone(), lp.clone());
        async move {
            let list = events.list(&lp).await.map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| e.type_.as_deref() == Some("Warning"))
                .and_then(|e| e.message)
                .ok_or_else(|| "no Warning Event".to_string())
        }
    })
    .await;
    assert!(
        warning.contains("spec.analysis.stepWeight"),
        "names the field: {warning}"
    );
    assert!(!warning.contains(SECRET_URL), "{warning}");
    let raw: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &bad_ns, &ApiResource::erase::<Canary>(&()));
    let condition = eventually("the serin.dev/Readable condition", LIMIT, || {
        let raw = raw.clone();
        async move {
            let o = raw.get("broken").await.map_err(|e| e.to_string())?;
            o.data["status"]["conditions"]
                .as_array()
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c["type"] == "serin.dev/Readable")
                        .cloned()
                })
                .ok_or_else(|| format!("status {}", o.data["status"]))
        }
    })
    .await;
    assert_eq!(condition["status"], "False");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("spec.analysis.stepWeight"),
        "{condition}"
    );
    assert!(
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &bad_ns)
            .get_opt("broken-primary")
            .await
            .unwrap()
            .is_none(),
        "nothing was created for the unreadable Canary"
    );

    let (code, body) = ctl.get("/readyz").await.expect("/readyz answers");
    assert_eq!((code, body.as_str()), (200, "OK"));
    let (_, metrics) = ctl.get("/metrics").await.expect("/metrics answers");
    assert!(
        metrics.contains("serin_unreadable_objects{kind=\"Canary\"} 1"),
        "{metrics}"
    );

    let log = ctl.log();
    assert!(
        log.contains(&bad_ns) && log.contains("broken") && log.contains("spec.analysis.stepWeight"),
        "the log names the object and the field:\n{log}"
    );
    for leak in [
        SECRET_URL,
        "very-secret-token",
        "\"targetRef\"",
        "\"webhooks\"",
    ] {
        assert!(
            !log.contains(leak),
            "the controller log holds {leak:?} (an object body):\n{log}"
        );
    }
}
