//! Breaks a review against Flagger 1.44 found (issue 13 §3), each shown on the real API server
//! with `serin controller` as its own process: what a Flagger user changes in a manifest reaches
//! the cluster, a user's Service keeps what is theirs, a manifest Flagger runs is run, and
//! Flagger's controller flags carry over.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Service};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::{Value, json};
use serin_sandbox::testenv::eventually;
use support::*;

fn destination_rule_api(w: &World) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1beta1",
        "DestinationRule",
    ));
    Api::namespaced_with(w.client.clone(), &w.ns, &ar)
}

fn progressive() -> Value {
    json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": builtin_metrics()})
}

/// A Canary whose service block is `service`.
fn canary_with_service(service: Value) -> Value {
    let mut c = canary("podinfo", progressive());
    c["spec"]["service"] = service;
    c
}

/// Removing `trafficPolicy` (or a key of it) from the Canary removes it from both
/// DestinationRules, and removing `timeout` and `retries` removes them from the VirtualService:
/// the desired state is applied whole, not only when something was added or changed.
#[tokio::test]
async fn removed_service_settings_leave_the_destination_rules_and_the_virtual_service() {
    let w = World::new("removed").await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary_with_service(json!({
        "port": 9898,
        "timeout": "5s",
        "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx"},
        "trafficPolicy": {
            "tls": {"mode": "ISTIO_MUTUAL"},
            "loadBalancer": {"simple": "LEAST_REQUEST"}
        }
    })))
    .await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let drs = destination_rule_api(&w);
    for name in ["podinfo-primary", "podinfo-canary"] {
        let dr = drs.get(name).await.unwrap();
        assert_eq!(
            dr.data["spec"]["trafficPolicy"]["loadBalancer"]["simple"], "LEAST_REQUEST",
            "{name}"
        );
    }
    let vs = w.virtual_service("podinfo").await.unwrap();
    assert_eq!(vs["spec"]["http"][0]["timeout"], "5s");
    assert_eq!(vs["spec"]["http"][0]["retries"]["attempts"], 3);

    // One key of the policy removed.
    w.apply(canary_with_service(json!({
        "port": 9898,
        "timeout": "5s",
        "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx"},
        "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}
    })))
    .await;
    for name in ["podinfo-primary", "podinfo-canary"] {
        eventually(&format!("{name} without loadBalancer"), LIMIT, || async {
            let dr = drs.get(name).await.map_err(|e| e.to_string())?;
            let tp = &dr.data["spec"]["trafficPolicy"];
            if tp.get("loadBalancer").is_none() && tp["tls"]["mode"] == "ISTIO_MUTUAL" {
                Ok(())
            } else {
                Err(format!("trafficPolicy {tp}"))
            }
        })
        .await;
    }

    // The whole policy, the timeout and the retries removed.
    w.apply(canary_with_service(json!({"port": 9898}))).await;
    for name in ["podinfo-primary", "podinfo-canary"] {
        eventually(&format!("{name} without trafficPolicy"), LIMIT, || async {
            let dr = drs.get(name).await.map_err(|e| e.to_string())?;
            match dr.data["spec"].get("trafficPolicy") {
                None => Ok(()),
                Some(tp) => Err(format!("trafficPolicy {tp}")),
            }
        })
        .await;
    }
    eventually(
        "the VirtualService without timeout and retries",
        LIMIT,
        || async {
            let vs = w.virtual_service("podinfo").await.ok_or("no vs")?;
            let route = &vs["spec"]["http"][0];
            if route.get("timeout").is_none() && route.get("retries").is_none() {
                Ok(())
            } else {
                Err(format!("route {route}"))
            }
        },
    )
    .await;
    // Still routing as before.
    let vs = w.virtual_service("podinfo").await.unwrap();
    assert_eq!(
        routes_of(&vs, "podinfo"),
        Some(serin::rollout::Routes {
            primary: 100,
            canary: 0,
            mirror: false
        })
    );
}

/// A user's NodePort apex Service keeps its type and node port: serin takes the selector and
/// the ports, as Flagger does, and nothing else.
#[tokio::test]
async fn a_users_node_port_apex_service_keeps_its_type_and_node_port() {
    let w = World::new("nodeport").await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "podinfo", "labels": {"team": "a"}},
        "spec": {
            "type": "NodePort",
            "selector": {"app": "podinfo"},
            "ports": [{"name": "http", "port": 9898, "targetPort": 9898, "protocol": "TCP", "nodePort": 30898}]
        }
    }))
    .await;
    w.apply(canary("podinfo", progressive())).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let svcs: Api<Service> = Api::namespaced(w.client.clone(), &w.ns);
    let svc = eventually("the apex selecting the primary", LIMIT, || async {
        let s = svcs.get("podinfo").await.map_err(|e| e.to_string())?;
        let spec = s.spec.clone().unwrap_or_default();
        let sel = spec.selector.clone().unwrap_or_default();
        if sel.get("app").map(String::as_str) == Some("podinfo-primary") {
            Ok(s)
        } else {
            Err(format!("selector {sel:?}"))
        }
    })
    .await;
    let spec = svc.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    let ports = spec.ports.unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].node_port, Some(30898));
    assert_eq!(ports[0].port, 9898);
    // The user's labels stay theirs; serin adds none and takes no ownership.
    let meta = svc.metadata;
    assert_eq!(
        meta.labels.unwrap_or_default(),
        [("team".to_string(), "a".to_string())].into()
    );
    assert!(meta.owner_references.unwrap_or_default().is_empty());
    // Nothing is rewritten while nothing changes.
    let version = meta.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = svcs.get("podinfo").await.unwrap();
    assert_eq!(again.metadata.resource_version, version);
}

/// A Canary Flagger runs although it likely does not mean what it says (here a first step
/// beyond maxWeight and a mirrorWeight without mirror) is run, with a condition and a Warning
/// Event naming the fields, instead of being held.
#[tokio::test]
async fn a_manifest_flagger_runs_is_run_with_a_warning() {
    let w = World::new("warned").await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(canary(
        "podinfo",
        json!({"interval": "10s", "threshold": 2, "maxWeight": 20, "stepWeight": 30, "mirrorWeight": 50, "metrics": builtin_metrics()}),
    ))
    .await;
    let c = w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let conditions = c.status.unwrap().conditions;
    let valid = conditions
        .iter()
        .find(|c| c.type_ == "serin.dev/Valid")
        .unwrap();
    assert_eq!(valid.status, "True");
    let warned = conditions
        .iter()
        .find(|c| c.type_ == "serin.dev/SpecWarnings")
        .expect("the SpecWarnings condition");
    assert_eq!(warned.status, "True");
    let message = warned.message.clone().unwrap_or_default();
    assert!(
        message.contains("spec.analysis.stepWeight")
            && message.contains("spec.analysis.mirrorWeight"),
        "{message}"
    );
    let events = w.events("podinfo").await;
    assert!(
        events.iter().any(|(t, m)| t == "Warning" && *m == message),
        "{events:?}"
    );
    // Told once, and nothing is rewritten while nothing changes.
    let canaries: Api<serin::api::Canary> = Api::namespaced(w.client.clone(), &w.ns);
    let version = canaries
        .get("podinfo")
        .await
        .unwrap()
        .metadata
        .resource_version;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = canaries.get("podinfo").await.unwrap();
    assert_eq!(
        again.metadata.resource_version, version,
        "the status was rewritten"
    );
    let events: Api<Event> = Api::namespaced(w.client.clone(), &w.ns);
    let told: Vec<Option<i32>> = events
        .list(&ListParams::default().fields("involvedObject.kind=Canary"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.message.as_deref() == Some(message.as_str()))
        .map(|e| e.count)
        .collect();
    assert_eq!(told, [Some(1)]);
    // A release runs, its first step capped at maxWeight.
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;
    w.wait_weight("podinfo", 20).await;
}

/// The arguments of Flagger's Helm chart, Go style (one dash), work for `serin controller`; the
/// Events come from the component `flagger` when asked, the primary gets the target's labels
/// with an included prefix, and the selector label is looked up in the configured order.
#[tokio::test]
async fn flaggers_controller_flags_carry_over() {
    let mut w = World::new("flags").await;
    w.controller.kill();
    let log = w
        .env
        .logs_dir()
        .join(format!("controller-{}-flagger.log", w.ns));
    let mut cmd = serin_command(&log);
    cmd.arg("controller")
        .arg(format!("-kubeconfig={}", w.env.kubeconfig_path().display()))
        .arg(format!("-namespace={}", w.ns))
        .arg(format!("-metrics-server={}", w.env.prometheus_url()))
        .args([
            "-log-level=info",
            "-mesh-provider=istio",
            "-selector-labels=app.kubernetes.io/name,app",
            "-enable-config-tracking=true",
            "-include-label-prefix=team,app.kubernetes.io",
            "-enable-leader-election=false",
            "-threadiness=2",
            "-kubeconfig-qps=100",
            "-kubeconfig-burst=250",
            "-slack-user=flagger",
            "-zap-encoding=json",
            "-event-component=flagger",
            "--listen=127.0.0.1:0",
        ]);
    let child = cmd.spawn().expect("serin controller");
    let _guard = Killed(Some(child));

    let mut d = deployment("podinfo", "podinfo:6.0.0", json!({}));
    d["metadata"]["labels"] =
        json!({"team": "a", "tier": "web", "app.kubernetes.io/part-of": "shop"});
    w.apply(d).await;
    w.apply(canary("podinfo", progressive())).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;

    let primary = w.deployment("podinfo-primary").await.unwrap();
    let labels = primary.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(
        labels.get("app.kubernetes.io/part-of").map(String::as_str),
        Some("shop")
    );
    assert!(!labels.contains_key("tier"), "{labels:?}");
    assert_eq!(
        labels.get("app").map(String::as_str),
        Some("podinfo-primary")
    );

    let events: Api<Event> = Api::namespaced(w.client.clone(), &w.ns);
    let list = events
        .list(&ListParams::default().fields("involvedObject.kind=Canary"))
        .await
        .unwrap()
        .items;
    assert!(!list.is_empty());
    for e in &list {
        assert_eq!(
            e.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("flagger"),
            "{e:?}"
        );
        assert_eq!(e.reporting_component.as_deref(), Some("flagger"));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("-kubeconfig-qps is accepted for Flagger compatibility and ignored"),
        "{text}"
    );
    // zap-encoding=json: JSON log lines.
    assert!(text.lines().any(|l| l.starts_with('{')), "{text}");
}

/// A flag neither serin nor Flagger knows is refused (exit 2, naming it), also Go style, and a
/// Flagger boolean takes Go's spellings only.
#[test]
fn unknown_or_malformed_flags_are_refused() {
    for (args, needle) in [
        (vec!["controller", "-no-such-flag=1"], "--no-such-flag"),
        (vec!["controller", "-enable-leader-election=maybe"], "maybe"),
        (vec!["controller", "-threadiness=many"], "many"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_serin"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serin"))
        .args(["controller", "-version"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("serin"));
}

/// Kills the child on drop.
struct Killed(Option<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every manifest Flagger's CRD accepts (`tests/corpus/flagger/`) is accepted by serin's CRD on
/// the real API server, and reads back as serin's Canary type, so it can never stop the watch.
#[tokio::test]
async fn manifests_flaggers_crd_accepts_are_accepted_by_serins() {
    use std::io::Write;
    let env = serin_sandbox::testenv::shared();
    let ns = env.namespace("flaggercrd").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/flagger");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5);
    let api: Api<serin::api::Canary> = Api::namespaced(env.client(), &ns);
    for file in files {
        let mut child = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(env.kubeconfig_path())
            .args([
                "apply",
                "--server-side",
                "--field-manager=flux",
                "-n",
                &ns,
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl is installed");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&std::fs::read(&file).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        api.get(name)
            .await
            .unwrap_or_else(|e| panic!("{}: reads back as a Canary: {e}", file.display()));
    }
}
