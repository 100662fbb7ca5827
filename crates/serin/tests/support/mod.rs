//! Shared pieces of the end-to-end tests: a namespace with its own mesh simulator and its own
//! `serin controller` process, and observers of what a user would see.
#![allow(dead_code)]

pub mod corpus;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, ResourceQuota};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};
use serin::api::Canary;
use serin::rollout::Routes;
use serin_sandbox::mesh::{self, MeshHandle, MeshOptions};
use serin_sandbox::testenv::{SharedEnv, eventually, shared};

pub const LIMIT: Duration = Duration::from_secs(120);

const NO_SERVICES: &str = "no-services";

/// The weights in a VirtualService as the API server returns it, read through serin's typed
/// VirtualService; `None` when serin's routes are not there or the object is not a VirtualService.
pub fn routes_of(vs: &Value, apex: &str) -> Option<Routes> {
    let typed: serin::api::istio_resources::VirtualService =
        serde_json::from_value(vs.clone()).ok()?;
    serin::router::read_routes(&typed, apex)
}

/// A `serin controller` process watching one namespace; killed when dropped.
pub struct ControllerProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl ControllerProcess {
    pub fn spawn(env: &SharedEnv, ns: &str, tag: &str) -> Self {
        Self::spawn_with(env, ns, tag, &[])
    }

    /// With extra `serin controller` flags.
    pub fn spawn_with(env: &SharedEnv, ns: &str, tag: &str, extra: &[&str]) -> Self {
        let log = env.logs_dir().join(format!("controller-{ns}-{tag}.log"));
        let mut cmd = serin_command(&log);
        cmd.args(["controller", "--kubeconfig"])
            .arg(env.kubeconfig_path())
            .args(["--namespace", ns, "--metrics-server", env.prometheus_url()])
            .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
            .args(extra);
        let child = cmd.spawn().expect("starting serin controller");
        ControllerProcess {
            child: Some(child),
            log,
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `serin` as a child of the test: output to `log`, stdin closed, serin's debug logging, and killed
/// with the test process even if the test panics before any Drop runs. The caller adds the args.
pub fn serin_command(log: &Path) -> Command {
    logged_command(Path::new(env!("CARGO_BIN_EXE_serin")), log)
}

/// `program` with stdout and stderr in `log`, serin's debug log level, and SIGKILL when the test
/// process dies, even if a test panics before any Drop runs.
pub fn logged_command(program: &Path, log: &Path) -> Command {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = Command::new(program);
    cmd.env(
        "RUST_LOG",
        "info,serin=debug,kube_client::client::tls=error",
    )
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// One test's world: namespace, mesh simulator, controller.
pub struct World {
    pub env: &'static SharedEnv,
    pub ns: String,
    pub client: Client,
    pub mesh: MeshHandle,
    pub controller: ControllerProcess,
}

impl World {
    /// A ResourceQuota of zero Services in the world's namespace, returned once the API server
    /// enforces it (after the controller manager has counted its usage): a refusal serin can
    /// only learn from the server.
    pub async fn forbid_services(&self) -> Api<ResourceQuota> {
        let quotas: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &self.ns);
        let quota: ResourceQuota = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": NO_SERVICES},
            "spec": {"hard": {"services": "0"}},
        }))
        .unwrap();
        quotas.create(&PostParams::default(), &quota).await.unwrap();
        eventually("the quota in force", LIMIT, || async {
            let q = quotas.get(NO_SERVICES).await.map_err(|e| e.to_string())?;
            let counted = q
                .status
                .and_then(|s| s.hard)
                .is_some_and(|h| h.contains_key("services"));
            if counted {
                Ok(())
            } else {
                Err("no status yet".to_string())
            }
        })
        .await;
        quotas
    }

    /// Lifts [`World::forbid_services`].
    pub async fn allow_services(&self, quotas: &Api<ResourceQuota>) {
        quotas
            .delete(NO_SERVICES, &DeleteParams::default())
            .await
            .unwrap();
    }

    pub async fn new(prefix: &str) -> World {
        Self::with_controller_args(prefix, &[]).await
    }

    /// A world whose controller gets extra flags.
    pub async fn with_controller_args(prefix: &str, extra: &[&str]) -> World {
        let env = shared();
        let ns = env.namespace(prefix).await;
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
        let controller = ControllerProcess::spawn_with(env, &ns, "1", extra);
        World {
            env,
            client: env.client(),
            ns,
            mesh,
            controller,
        }
    }

    pub async fn apply(&self, manifest: Value) {
        let kind = manifest["kind"].as_str().unwrap_or_default().to_string();
        let name = manifest["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (group, version) = match manifest["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .split_once('/')
        {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                manifest["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
        };
        let plural = match kind.as_str() {
            "Deployment" => "deployments".to_string(),
            "Canary" => "canaries".to_string(),
            "ConfigMap" => "configmaps".to_string(),
            "MetricTemplate" => "metrictemplates".to_string(),
            "Service" => "services".to_string(),
            "VirtualService" => "virtualservices".to_string(),
            k => format!("{}s", k.to_lowercase()),
        };
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(&group, &version, &kind),
            &plural,
        );
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.ns, &ar);
        let mut m = manifest.clone();
        m["metadata"]["namespace"] = json!(self.ns);
        api.patch(
            &name,
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(&m),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind}/{name}: {e}"));
    }

    pub async fn canary(&self, name: &str) -> Canary {
        let api: Api<Canary> = Api::namespaced(self.client.clone(), &self.ns);
        api.get(name).await.expect("get canary")
    }

    pub async fn deployment(&self, name: &str) -> Option<Deployment> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        api.get_opt(name).await.expect("get deployment")
    }

    pub async fn virtual_service(&self, name: &str) -> Option<Value> {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "networking.istio.io",
            "v1beta1",
            "VirtualService",
        ));
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.ns, &ar);
        api.get_opt(name)
            .await
            .expect("get virtual service")
            .map(|o| serde_json::to_value(o).unwrap_or_default())
    }

    /// Waits for a phase, failing with what was seen and the controller's log.
    pub async fn wait_phase(&self, name: &str, phase: &str, limit: Duration) -> Canary {
        let api: Api<Canary> = Api::namespaced(self.client.clone(), &self.ns);
        let log = self.controller.log.clone();
        let what = format!(
            "canary {}/{name} in phase {phase} (controller log: {})",
            self.ns,
            log.display()
        );
        eventually(&what, limit, || {
            let api = api.clone();
            async move {
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
                        "phase {got:?} weight {:?} failedChecks {:?}",
                        c.status.as_ref().and_then(|s| s.canary_weight),
                        c.status.as_ref().and_then(|s| s.failed_checks)
                    ))
                }
            }
        })
        .await
    }

    /// Waits until the canary weight in status reaches at least `weight`.
    pub async fn wait_weight(&self, name: &str, weight: i32) {
        let api: Api<Canary> = Api::namespaced(self.client.clone(), &self.ns);
        eventually(&format!("canary {name} at weight {weight}"), LIMIT, || {
            let api = api.clone();
            async move {
                let c = api.get(name).await.map_err(|e| e.to_string())?;
                let got = c.status.and_then(|s| s.canary_weight).unwrap_or(0);
                if got >= weight {
                    Ok(())
                } else {
                    Err(format!("weight {got}"))
                }
            }
        })
        .await
    }

    /// The messages of the Events on the Canary, oldest first.
    pub async fn events(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.name={name},involvedObject.kind=Canary"
        ));
        let mut list = api.list(&lp).await.expect("list events").items;
        list.sort_by_key(|e| e.first_timestamp.as_ref().map(|t| t.0));
        list.into_iter()
            .map(|e| (e.type_.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }

    pub async fn has_event(&self, name: &str, text: &str) -> bool {
        self.events(name).await.iter().any(|(_, m)| m == text)
    }

    /// Records every distinct (primary, canary, mirror) of the VirtualService over time.
    pub fn watch_weights(&self, vs: &str) -> WeightLog {
        let log = WeightLog::default();
        let seen = log.0.clone();
        let polls = log.1.clone();
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "networking.istio.io",
            "v1beta1",
            "VirtualService",
        ));
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.ns, &ar);
        let (vs, apex) = (vs.to_string(), vs.to_string());
        tokio::spawn(async move {
            loop {
                if let Ok(Some(o)) = api.get_opt(&vs).await {
                    let v = serde_json::to_value(o).unwrap_or_default();
                    if let Some(r) = routes_of(&v, &apex) {
                        let mut s = seen.lock().unwrap();
                        if s.last() != Some(&r) {
                            s.push(r);
                        }
                    }
                }
                polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        log
    }
}

#[derive(Clone, Default)]
pub struct WeightLog(
    pub Arc<Mutex<Vec<Routes>>>,
    /// Looks finished by the poller.
    pub Arc<std::sync::atomic::AtomicU64>,
);

impl WeightLog {
    /// Waits until the poller has finished a look that began after this call, so that the log
    /// holds what the API server held when the caller saw, say, the final phase. Without it a
    /// test reading the log right after `wait_phase` can miss the last routes (the poller looks
    /// every 100 ms). Gives up after 10 s; the caller's assertions then tell what is missing.
    pub async fn caught_up(&self) {
        use std::sync::atomic::Ordering;
        let start = self.1.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.1.load(Ordering::SeqCst) < start + 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn canary_weights(&self) -> Vec<u32> {
        self.0.lock().unwrap().iter().map(|r| r.canary).collect()
    }
    pub fn all(&self) -> Vec<Routes> {
        self.0.lock().unwrap().clone()
    }
}

pub fn deployment(name: &str, image: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 9898, "name": "http"}]}]}
            }
        }
    })
}

pub fn canary(name: &str, analysis: Value) -> Value {
    json!({
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 60,
            "service": {"port": 9898},
            "analysis": analysis
        }
    })
}

/// The built-in checks with a short window, so the tests run in seconds.
pub fn builtin_metrics() -> Value {
    json!([
        {"name": "request-success-rate", "interval": "30s", "thresholdRange": {"min": 99}},
        {"name": "request-duration", "interval": "30s", "thresholdRange": {"max": 500}}
    ])
}

pub fn image_of(d: &Deployment) -> String {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

pub fn replicas_of(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(-1)
}

/// A process of the test: killed when dropped, and with the test (PDEATHSIG).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(program: &Path, args: &[String], log: &Path) -> Proc {
    let mut cmd = logged_command(program, log);
    cmd.args(args);
    Proc(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display())),
    )
}
