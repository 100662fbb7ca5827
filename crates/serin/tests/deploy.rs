//! The install manifests under `deploy/`, on the sandbox's real API server: the kustomize bases
//! apply server-side (as Flux's kustomize-controller applies them), and `serin controller`
//! holding only the ServiceAccount token those manifests bind to their ClusterRole completes a
//! whole rollout without a single refused call, while calls outside the role are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::{Value, json};
use serin::api::Canary;
use serin_sandbox::testenv::{SharedEnv, eventually, shared};
use support::*;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Runs kubectl against the sandbox as its admin, with `stdin` piped in when given.
fn kubectl(env: &SharedEnv, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(serin_sandbox::kubectl())
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("kubectl ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `kubectl create namespace NAME`, tolerating one that exists.
fn ensure_namespace(env: &SharedEnv, name: &str) {
    let manifest = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    let (ok, out) = kubectl(env, &["apply", "--server-side", "-f", "-"], Some(&manifest));
    assert!(ok, "creating namespace {name}: {out}");
}

/// `kubectl apply --server-side -k DIR`, as Flux applies a Kustomization.
fn apply_kustomization(env: &SharedEnv, dir: &str) -> String {
    let (ok, out) = kubectl(env, &["apply", "--server-side", "-k", dir], None);
    assert!(ok, "kubectl apply --server-side -k {dir} failed:\n{out}");
    out
}

/// deploy/istio installed once per test binary (Istio installs `istio-system` before serin;
/// the sandbox has Istio's CRDs but not the namespace).
fn install_istio_base(env: &SharedEnv) -> &'static str {
    static DONE: OnceLock<String> = OnceLock::new();
    DONE.get_or_init(|| {
        ensure_namespace(env, "istio-system");
        apply_kustomization(env, "deploy/istio")
    })
}

/// The token of the ServiceAccount `istio-system/serin` the manifests create and bind: the
/// credentials serin has in the cluster.
async fn serin_token(env: &SharedEnv) -> String {
    install_istio_base(env);
    service_account_token(env, "istio-system", "serin").await
}

/// A token for a ServiceAccount, as a pod running as it gets one (TokenRequest; the token
/// controller makes no token Secrets since Kubernetes 1.24).
async fn service_account_token(env: &SharedEnv, ns: &str, name: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(env.client(), ns);
    eventually(
        &format!("a token for ServiceAccount {ns}/{name}"),
        LIMIT,
        || async {
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            };
            let made = sas
                .create_token_request(name, &PostParams::default(), &request)
                .await
                .map_err(|e| e.to_string())?;
            made.status
                .and_then(|s| s.token)
                .ok_or_else(|| "a TokenRequest without a token".to_string())
        },
    )
    .await
}

fn kubeconfig_for(env: &SharedEnv, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: sandbox
    cluster:
      server: {}
      insecure-skip-tls-verify: true
users:
  - name: serin
    user:
      token: {token}
contexts:
  - name: serin
    context:
      cluster: sandbox
      user: serin
current-context: serin
",
        env.api_url()
    )
}

async fn client_for(kubeconfig: &str) -> Client {
    let kc = Kubeconfig::from_yaml(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// The documents of a manifest file in deploy/.
fn documents(path: &str) -> Vec<Value> {
    support::corpus::documents(&repo().join(path))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} in deploy/"))
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// `serin controller` as the cluster runs it: all namespaces, leader election when this build
/// has it, and the restricted kubeconfig. Killed when dropped.
struct RestrictedController {
    child: Child,
    log: PathBuf,
}

impl RestrictedController {
    fn spawn(env: &SharedEnv, kubeconfig: &Path) -> Self {
        let log = env.logs_dir().join("controller-deploy-restricted.log");
        let mut cmd = support::serin_command(&log);
        cmd.args(["controller", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--metrics-server", env.prometheus_url()])
            .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
            .arg("--leader-elect")
            .env("POD_NAME", "serin-restricted")
            .env("POD_NAMESPACE", "istio-system");
        let child = cmd.spawn().expect("starting serin controller");
        RestrictedController { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the lines of the log that show a call the API server refused.
    fn assert_nothing_refused(&self) {
        let log = self.log_text();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("forbidden") || l.contains(" 403")
            })
            .collect();
        assert!(
            refused.is_empty(),
            "deploy/istio/rbac.yaml lacks a verb serin uses; refused calls:\n{}",
            refused.join("\n")
        );
    }
}

impl Drop for RestrictedController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a phase; on timeout the message names the restricted controller's log.
/// Fails at once when serin's log shows a refused call.
async fn wait_phase(w: &World, serin: &RestrictedController, name: &str, phase: &str) -> Canary {
    let api: Api<Canary> = Api::namespaced(w.client.clone(), &w.ns);
    let what = format!(
        "canary {}/{name} in phase {phase} (controller log: {})",
        w.ns,
        serin.log.display()
    );
    eventually(&what, LIMIT, || async {
        serin.assert_nothing_refused();
        let c = api.get(name).await.map_err(|e| e.to_string())?;
        let got = c
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        if got == phase {
            Ok(c)
        } else {
            Err(format!(
                "phase {got:?} weight {:?} conditions {:?}",
                c.status.as_ref().and_then(|s| s.canary_weight),
                c.status.as_ref().map(|s| &s.conditions)
            ))
        }
    })
    .await
}

#[test]
fn the_crds_in_the_base_are_the_generated_ones() {
    let copy = std::fs::read_to_string(repo().join("deploy/istio/crd.yaml")).unwrap();
    assert!(
        copy == serin::api::crd::all_yaml(),
        "deploy/istio/crd.yaml differs from `serin crds`; regenerate it with \
         `cargo run -- crds > deploy/istio/crd.yaml` (and crds/flagger.app.yaml)"
    );
}

#[test]
fn the_example_canary_passes_serin_validate() {
    let out = Command::new(env!("CARGO_BIN_EXE_serin"))
        .args(["validate", "-f"])
        .arg(repo().join("deploy/examples"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_deployment_is_hardened_and_runs_two_leader_elected_replicas() {
    let docs = documents("deploy/istio/deployment.yaml");
    let d = find(&docs, "Deployment", "serin");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "serin");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "controller");
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][k][r].is_string(), "resources.{k}.{r}");
        }
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    let ann = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "8080");
}

#[tokio::test]
async fn the_bases_apply_server_side_and_their_pods_become_ready() {
    let env = shared();
    install_istio_base(env);
    // Flux re-applies the same manifests every interval: a second apply must succeed too.
    apply_kustomization(env, "deploy/istio");
    let client = env.client();

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "canaries.flagger.app",
        "metrictemplates.flagger.app",
        "alertproviders.flagger.app",
    ] {
        crds.get(name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name}: {e}"));
    }
    let role: Api<ClusterRole> = Api::all(client.clone());
    role.get("serin").await.expect("ClusterRole serin");
    let binding = Api::<ClusterRoleBinding>::all(client.clone())
        .get("serin")
        .await
        .expect("ClusterRoleBinding serin");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("serin", Some("istio-system"))
    );
    let svc = Api::<Service>::namespaced(client.clone(), "istio-system")
        .get("serin")
        .await
        .expect("Service serin");
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8080);
    wait_available(&client, "istio-system", "serin", 2).await;

    ensure_namespace(env, "test");
    apply_kustomization(env, "deploy/loadtester");
    apply_kustomization(env, "deploy/loadtester");
    let svc = Api::<Service>::namespaced(client.clone(), "test")
        .get("flagger-loadtester")
        .await
        .expect("Service flagger-loadtester");
    let port = &svc.spec.unwrap().ports.unwrap()[0];
    assert_eq!(port.port, 80);
    Api::<Role>::namespaced(client.clone(), "test")
        .get("serin-loadtester")
        .await
        .expect("Role serin-loadtester");
    let d = wait_available(&client, "test", "flagger-loadtester", 1).await;
    let c = &d.spec.template.spec.unwrap().containers[0];
    assert_eq!(
        c.args.clone().unwrap(),
        vec!["loadtester".to_string(), "--port=8080".to_string()]
    );
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
}

/// The Deployment once the real Deployment controller reports `n` available replicas (the
/// simulated kubelet runs no containers but does bind the pods and report them ready).
async fn wait_available(client: &Client, ns: &str, name: &str, n: i32) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("deployment {ns}/{name} with {n} available replicas"),
        LIMIT,
        || async {
            let d = api.get(name).await.map_err(|e| e.to_string())?;
            let got = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if got == n {
                Ok(d)
            } else {
                Err(format!("{got} available: {:?}", d.status))
            }
        },
    )
    .await
}

/// Waits until serin's Event with `message` has been counted `times`.
async fn wait_event_count(w: &World, serin: &RestrictedController, message: &str, times: i32) {
    let api: Api<Event> = Api::namespaced(w.client.clone(), &w.ns);
    let what = format!(
        "event {message:?} counted {times} times (controller log: {})",
        serin.log.display()
    );
    eventually(&what, LIMIT, || async {
        serin.assert_nothing_refused();
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let count = list
            .items
            .iter()
            .find(|e| e.message.as_deref() == Some(message))
            .and_then(|e| e.count)
            .unwrap_or(0);
        if count >= times {
            Ok(())
        } else {
            Err(format!("count {count}"))
        }
    })
    .await
}

fn hpa_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", "v2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
    )
}

/// The target with a tracked ConfigMap and Secret and no replicas (its HPA owns them).
fn target(image: &str, color: &str) -> Value {
    let mut d = deployment("podinfo", image, json!({}));
    d["spec"].as_object_mut().unwrap().remove("replicas");
    d["spec"]["template"]["spec"]["containers"][0]["envFrom"] = json!([
        {"configMapRef": {"name": "podinfo-config"}},
        {"secretRef": {"name": "podinfo-secret"}}
    ]);
    d["spec"]["template"]["metadata"]["annotations"] = json!({"color": color});
    d
}

#[tokio::test]
async fn serin_with_only_its_cluster_role_completes_a_whole_rollout() {
    let env = shared();
    let token = serin_token(env).await;
    let kubeconfig = env.logs_dir().join("deploy-serin.kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_for(env, &token)).unwrap();

    let mut w = World::new("deploy").await;
    // World brings an admin controller for its namespace; this test needs serin's own.
    w.controller.kill();
    let serin = RestrictedController::spawn(env, &kubeconfig);

    w.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "podinfo-config"}, "data": {"color": "blue"}})).await;
    w.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "podinfo-secret"}, "stringData": {"password": "one"}})).await;
    w.apply(target("podinfo:6.0.0", "blue")).await;
    w.apply(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "podinfo"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "minReplicas": 2,
            "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]
        }
    }))
    .await;
    let mut c = canary(
        "podinfo",
        json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": builtin_metrics()}),
    );
    c["spec"]["revertOnDeletion"] = json!(true);
    c["spec"]["autoscalerRef"] = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": "podinfo"});
    w.apply(c).await;
    wait_phase(&w, &serin, "podinfo", "Initialized").await;

    // A changed ConfigMap starts an analysis; two new images restart it twice, so the same Event
    // is recorded twice (a count patch). Then the promotion copies the template and the config.
    w.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "podinfo-config"}, "data": {"color": "green"}})).await;
    wait_phase(&w, &serin, "podinfo", "Progressing").await;
    let restarting =
        serin::rollout::messages::new_revision_restarting(&format!("podinfo.{}", w.ns));
    for (image, times) in [("podinfo:6.0.1", 1), ("podinfo:6.0.2", 2)] {
        w.apply(target(image, "green")).await;
        wait_event_count(&w, &serin, &restarting, times).await;
    }
    let done = wait_phase(&w, &serin, "podinfo", "Succeeded").await;
    let status = done.status.unwrap();
    assert_eq!(status.last_promoted_spec, status.last_applied_spec);

    let primary = w.deployment("podinfo-primary").await.expect("primary");
    assert_eq!(image_of(&primary), "podinfo:6.0.2");
    let cm = Api::<ConfigMap>::namespaced(w.client.clone(), &w.ns)
        .get("podinfo-config-primary")
        .await
        .expect("primary ConfigMap copy");
    assert_eq!(cm.data.unwrap()["color"], "green");
    Api::<Secret>::namespaced(w.client.clone(), &w.ns)
        .get("podinfo-secret-primary")
        .await
        .expect("primary Secret copy");
    Api::<DynamicObject>::namespaced_with(w.client.clone(), &w.ns, &hpa_resource())
        .get("podinfo-primary")
        .await
        .expect("primary HPA");
    let messages: Vec<String> = w
        .events("podinfo")
        .await
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    let c = format!("podinfo.{}", w.ns);
    assert!(
        messages.contains(&serin::rollout::messages::promotion_completed(&c)),
        "{messages:#?}"
    );

    // autoscalerRef removed: serin deletes the primary HPA it no longer needs.
    let mut c = canary(
        "podinfo",
        json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "metrics": builtin_metrics()}),
    );
    c["spec"]["revertOnDeletion"] = json!(true);
    w.apply(c).await;
    let hpas: Api<DynamicObject> = Api::namespaced_with(w.client.clone(), &w.ns, &hpa_resource());
    eventually(
        &format!(
            "primary HPA deleted (controller log: {})",
            serin.log.display()
        ),
        LIMIT,
        || async {
            serin.assert_nothing_refused();
            match hpas.get_opt("podinfo-primary").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|h| h.map(|h| h.metadata.name)))),
            }
        },
    )
    .await;

    // revertOnDeletion: serin hands traffic back and removes its finalizer.
    let canaries: Api<Canary> = Api::namespaced(w.client.clone(), &w.ns);
    canaries
        .delete("podinfo", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        &format!("canary gone (controller log: {})", serin.log.display()),
        LIMIT,
        || async {
            match canaries.get_opt("podinfo").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|c| c.map(|c| c.metadata)))),
            }
        },
    )
    .await;

    let log = serin.log_text();
    assert!(
        log.contains("serin controller started"),
        "the restricted controller did not start:\n{log}"
    );
    serin.assert_nothing_refused();
}

#[tokio::test]
async fn calls_outside_the_role_are_refused() {
    let env = shared();
    let token = serin_token(env).await;
    let serin = client_for(&kubeconfig_for(env, &token)).await;
    let ns = env.namespace("deploy-refused").await;
    let admin = env.client();
    let d: Deployment =
        serde_json::from_value(deployment("podinfo", "podinfo:6.0.0", json!({}))).unwrap();
    Api::<Deployment>::namespaced(admin, &ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();

    // Allowed, so the refusals below are the role's doing, not a broken token (that is a 401).
    Api::<Canary>::all(serin.clone())
        .list(&ListParams::default())
        .await
        .expect("serin lists canaries");
    Api::<Deployment>::namespaced(serin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("serin lists deployments");

    let deployments: Api<Deployment> = Api::namespaced(serin.clone(), &ns);
    let refused = [
        (
            "delete a Deployment",
            deployments
                .delete("podinfo", &DeleteParams::default())
                .await
                .err(),
        ),
        (
            "update (PUT) a Deployment",
            deployments
                .replace("podinfo", &PostParams::default(), &d)
                .await
                .err(),
        ),
        (
            "list nodes",
            Api::<Node>::all(serin.clone())
                .list(&ListParams::default())
                .await
                .err(),
        ),
        (
            "list pods",
            Api::<Pod>::all(serin.clone())
                .list(&ListParams::default())
                .await
                .err(),
        ),
        (
            "delete a Canary",
            Api::<Canary>::namespaced(serin.clone(), &ns)
                .delete("podinfo", &DeleteParams::default())
                .await
                .err(),
        ),
        (
            "create a ClusterRoleBinding",
            Api::<ClusterRoleBinding>::all(serin.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "metadata": {"name": "serin-escalates"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                        "subjects": [{"kind": "ServiceAccount", "name": "serin", "namespace": "istio-system"}]
                    }))
                    .unwrap(),
                )
                .await
                .err(),
        ),
    ];
    for (what, err) in refused {
        let code = err.as_ref().and_then(status_code);
        assert_eq!(code, Some(403), "{what}: {err:?}");
    }
    let still = Api::<Deployment>::namespaced(env.client(), &ns)
        .get("podinfo")
        .await;
    assert!(still.is_ok(), "the Deployment survived");
}

#[tokio::test]
async fn the_load_tester_may_keep_its_gates_and_nothing_else() {
    let env = shared();
    ensure_namespace(env, "test");
    apply_kustomization(env, "deploy/loadtester");
    let token = service_account_token(env, "test", "serin-loadtester").await;
    let tester = client_for(&kubeconfig_for(env, &token)).await;
    let cms: Api<ConfigMap> = Api::namespaced(tester.clone(), "test");
    let gates: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "serin-loadtester-gates"},
        "data": {"confirm-rollout": "open"}
    }))
    .unwrap();
    // What the gates need: create once, then read and change that one ConfigMap.
    match cms.create(&PostParams::default(), &gates).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating the gate ConfigMap: {e}"),
    }
    let got = cms.get("serin-loadtester-gates").await.expect("get gates");
    cms.replace("serin-loadtester-gates", &PostParams::default(), &got)
        .await
        .expect("update gates");
    cms.patch(
        "serin-loadtester-gates",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"confirm-promotion": "open"}})),
    )
    .await
    .expect("patch gates");

    // Nothing else: other ConfigMaps, other namespaces, deleting the gates.
    let admin: Api<ConfigMap> = Api::namespaced(env.client(), "test");
    let other: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "not-the-gates"}})).unwrap();
    let _ = admin.create(&PostParams::default(), &other).await;
    let elsewhere: Api<ConfigMap> = Api::namespaced(tester.clone(), "default");
    let refused = [
        (
            "get another ConfigMap",
            cms.get("not-the-gates").await.err(),
        ),
        (
            "list ConfigMaps",
            cms.list(&ListParams::default()).await.err(),
        ),
        (
            "delete the gates",
            cms.delete("serin-loadtester-gates", &DeleteParams::default())
                .await
                .err(),
        ),
        (
            "create in another namespace",
            elsewhere.create(&PostParams::default(), &gates).await.err(),
        ),
        (
            "list secrets",
            Api::<Secret>::namespaced(tester.clone(), "test")
                .list(&ListParams::default())
                .await
                .err(),
        ),
    ];
    for (what, err) in refused {
        assert_eq!(
            err.as_ref().and_then(status_code),
            Some(403),
            "{what}: {err:?}"
        );
    }
}
