//! A simulated kubelet: one Node, and pods that "run" the moment they are scheduled.
//!
//! The sandbox has no scheduler and no kubelet, so without this every pod stays Pending and every
//! deleted pod stays Terminating. Like kwok, this binds each unbound pod to the node
//! [`NODE_NAME`], reports it Running and Ready with one running container status per container,
//! and finishes deletions (grace period 0). The real Deployment, ReplicaSet and garbage-collector
//! controllers then behave as on a real cluster.
//!
//! # Unready pods on demand
//! A pod annotated `serin.dev/simulate-unready: "true"` ([`UNREADY_ANNOTATION`]) is bound and
//! Running, but kept `Ready=False` / `ContainersReady=False` with non-ready container statuses.
//! Put the annotation on a Deployment's pod template to make a release that never becomes
//! available: its `progressDeadlineSeconds` then really expires (`Progressing=False`,
//! `ProgressDeadlineExceeded`). Removing the annotation from a running pod makes it Ready.
//!
//! It runs on its own thread with its own tokio runtime, so that its client never outlives the
//! runtime that made it, whatever runtime the caller (a test) uses.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The one node of the sandbox.
pub const NODE_NAME: &str = "serin-sandbox-node";

/// Pod annotation that keeps a pod Running but not Ready.
pub const UNREADY_ANNOTATION: &str = "serin.dev/simulate-unready";

/// The address every simulated pod reports as its host.
pub const HOST_IP: &str = "127.0.0.1";

/// A running simulated kubelet; dropping it stops it and waits for its thread.
pub struct Kubelet {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Kubelet {
    /// Starts the kubelet thread; the receiver reports once the Node is registered and Ready
    /// (or why it could not be).
    pub fn start(
        config: kube::Config,
    ) -> std::io::Result<(Kubelet, oneshot::Receiver<Result<(), String>>)> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("serin-kubelet".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ =
                            ready_tx.send(Err(format!("cannot build the kubelet runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(run(config, ready_tx, stop_rx));
            })?;
        Ok((
            Kubelet {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            ready_rx,
        ))
    }

    /// Stops watching and waits for the thread to end.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the simulated kubelet thread panicked");
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run(
    config: kube::Config,
    ready: oneshot::Sender<Result<(), String>>,
    mut stop: oneshot::Receiver<()>,
) {
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot build a client: {e}")));
            return;
        }
    };
    tokio::select! {
        _ = &mut stop => return,
        r = register_node(&client) => {
            let failed = r.is_err();
            let _ = ready.send(r.map_err(|e| format!("cannot register node {NODE_NAME}: {e}")));
            if failed {
                return;
            }
        }
    }
    let mut kubelet = PodSync::new(client.clone());
    let pods: Api<Pod> = Api::all(client);
    let stream = watcher(pods, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            Some(done) = kubelet.tasks.join_next(), if !kubelet.tasks.is_empty() => {
                if let Ok(uid) = done {
                    kubelet.finished(uid);
                }
            }
            ev = stream.next(), if kubelet.tasks.len() < IN_FLIGHT => match ev {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                    kubelet.submit(pod);
                }
                Some(Ok(watcher::Event::Delete(pod))) => kubelet.forget(&pod),
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                Some(Err(e)) => tracing::warn!("simulated kubelet: pod watch failed, retrying: {e}"),
                None => {
                    tracing::error!("simulated kubelet: pod watch ended");
                    return;
                }
            }
        }
    }
}

/// Pods the kubelet works on at once. One at a time, a burst of thousands of pods (the
/// benchmark's 5,000 canaries are 10,000 pods) waited minutes in Pending behind each other's
/// round trips while the API server had CPU to spare.
const IN_FLIGHT: usize = 64;

/// The Node object: Ready, with room for plenty of pods.
pub fn node_object() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "serin.dev/simulated": "true",
            },
        },
        "spec": {},
    })
}

/// The Node status the kubelet reports.
pub fn node_status(now: &str) -> Value {
    let resources =
        json!({"cpu": "32", "memory": "128Gi", "pods": "500", "ephemeral-storage": "100Gi"});
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "serin's simulated kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "serin-sandbox",
                "systemUUID": "serin-sandbox",
                "bootID": "serin-sandbox",
                "kernelVersion": "",
                "osImage": "serin-sandbox",
                "containerRuntimeVersion": "serin-sandbox://0.1.0",
                "kubeletVersion": crate::setup::KUBERNETES_VERSION,
                "kubeProxyVersion": crate::setup::KUBERNETES_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
    })
}

async fn register_node(client: &Client) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(node_object()).map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    nodes
        .patch_status(
            NODE_NAME,
            &PatchParams::default(),
            &Patch::Merge(node_status(&now())),
        )
        .await?;
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Hands out unique pod IPs from 10.244.0.0/16.
#[derive(Default)]
struct IpPool {
    by_uid: HashMap<String, Ipv4Addr>,
    used: HashSet<Ipv4Addr>,
    next: u32,
}

impl IpPool {
    fn get(&mut self, uid: &str, current: Option<&str>) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_uid.get(uid) {
            return Some(*ip);
        }
        // A pod that already has an address (a watch restart) keeps it.
        if let Some(ip) = current.and_then(|c| c.parse::<Ipv4Addr>().ok()) {
            self.by_uid.insert(uid.to_string(), ip);
            self.used.insert(ip);
            return Some(ip);
        }
        for _ in 0..65_534 {
            self.next = self.next % 65_534 + 1;
            let n = self.next + 1; // skip .0.0 and .0.1
            let ip = Ipv4Addr::new(10, 244, (n >> 8) as u8, (n & 0xff) as u8);
            if ip.octets()[3] != 0 && ip.octets()[3] != 255 && !self.used.contains(&ip) {
                self.by_uid.insert(uid.to_string(), ip);
                self.used.insert(ip);
                return Some(ip);
            }
        }
        None
    }

    fn release(&mut self, uid: &str) {
        if let Some(ip) = self.by_uid.remove(uid) {
            self.used.remove(&ip);
        }
    }
}

struct PodSync {
    client: Client,
    ips: IpPool,
    /// Pods with work in flight, by uid, with the newest event that came meanwhile: a pod's
    /// events are handled one after the other, only different pods at once.
    inflight: HashMap<String, Option<Pod>>,
    tasks: tokio::task::JoinSet<String>,
}

/// What the kubelet should do with a pod as it is now.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Not ours (bound elsewhere, or finished).
    Ignore,
    /// Finish its deletion.
    Delete,
    /// Bind it to the node, then report its status.
    BindAndReport,
    /// Report its status (it is ours but shows something else).
    Report,
    /// Its status already is what we would report.
    UpToDate,
}

/// Decides from the pod alone, so that a replayed or repeated event changes nothing.
pub fn decide(pod: &Pod) -> Action {
    if pod.metadata.deletion_timestamp.is_some() {
        return match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if n != NODE_NAME => Action::Ignore,
            _ => Action::Delete,
        };
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Action::Ignore;
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Action::Ignore;
    }
    match spec.node_name.as_deref() {
        None | Some("") => Action::BindAndReport,
        Some(NODE_NAME) if status_is_current(pod) => Action::UpToDate,
        Some(NODE_NAME) => Action::Report,
        Some(_) => Action::Ignore,
    }
}

/// Whether the pod asks to be kept unready.
pub fn wants_unready(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(UNREADY_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn status_is_current(pod: &Pod) -> bool {
    let ready = !wants_unready(pod);
    let want = if ready { "True" } else { "False" };
    let Some(st) = pod.status.as_ref() else {
        return false;
    };
    let containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let statuses = st.container_statuses.as_deref().unwrap_or_default();
    st.phase.as_deref() == Some("Running")
        && st.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && st.host_ip.as_deref() == Some(HOST_IP)
        && st
            .conditions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == want)
        && statuses.len() == containers
        && statuses.iter().all(|c| c.ready == ready)
}

/// The status subresource patch that makes `pod` Running (and Ready unless it asks not to be).
pub fn desired_status(pod: &Pod, pod_ip: Ipv4Addr, now: &str) -> Value {
    let ready = !wants_unready(pod);
    let uid = pod.metadata.uid.as_deref().unwrap_or("0");
    let short: String = uid.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let init_containers = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let start = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| now.to_string());
    let image_id = |image: &str| format!("serin-sandbox://{image}");
    let container_id = |name: &str| format!("serin-sandbox://{short}-{name}");
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({
                "name": c.name,
                "image": image,
                "imageID": image_id(&image),
                "containerID": container_id(&c.name),
                "ready": ready,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": start}},
                "lastState": {},
            })
        })
        .collect();
    let init_statuses: Vec<Value> = init_containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({
                "name": c.name,
                "image": image,
                "imageID": image_id(&image),
                "containerID": container_id(&c.name),
                "ready": true,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "startedAt": start, "finishedAt": start}},
                "lastState": {},
            })
        })
        .collect();
    let (ready_s, reason) = if ready {
        ("True", Value::Null)
    } else {
        ("False", json!("ContainersNotReady"))
    };
    let existing = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let cond = |type_: &str, status: &str, reason: &Value| {
        // An unchanged condition keeps its transition time, so repeating a report is a no-op.
        let since = existing
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_else(|| now.to_string());
        let mut c = json!({"type": type_, "status": status, "lastProbeTime": null,
                           "lastTransitionTime": since});
        if !reason.is_null() {
            c["reason"] = reason.clone();
            c["message"] = json!(format!(
                "containers kept unready by the {UNREADY_ANNOTATION} annotation"
            ));
        }
        c
    };
    let mut status = json!({
        "phase": "Running",
        "hostIP": HOST_IP,
        "podIP": pod_ip.to_string(),
        "podIPs": [{"ip": pod_ip.to_string()}],
        "startTime": start,
        "qosClass": pod.status.as_ref().and_then(|s| s.qos_class.clone()).unwrap_or_else(|| "BestEffort".into()),
        "conditions": [
            cond("Initialized", "True", &Value::Null),
            cond("Ready", ready_s, &reason),
            cond("ContainersReady", ready_s, &reason),
            cond("PodScheduled", "True", &Value::Null),
        ],
        "containerStatuses": statuses,
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    json!({ "status": status })
}

impl PodSync {
    fn new(client: Client) -> Self {
        PodSync {
            client,
            ips: IpPool::default(),
            inflight: HashMap::new(),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    fn forget(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.ips.release(uid);
        }
    }

    /// Starts the pod's work, or keeps the event for when its work in flight ends.
    fn submit(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(next) = self.inflight.get_mut(&uid) {
            *next = Some(pod);
            return;
        }
        if let Some(work) = self.work(pod) {
            self.inflight.insert(uid.clone(), None);
            self.tasks.spawn(async move {
                work.await;
                uid
            });
        }
    }

    fn finished(&mut self, uid: String) {
        if let Some(Some(next)) = self.inflight.remove(&uid) {
            self.submit(next);
        }
    }

    /// What to do with the pod as it is now, as a task that needs nothing of the kubelet's
    /// state (its address is taken here, before the task starts).
    fn work(&mut self, pod: Pod) -> Option<futures::future::BoxFuture<'static, ()>> {
        let (Some(name), Some(ns), Some(uid)) = (
            pod.metadata.name.clone(),
            pod.metadata.namespace.clone(),
            pod.metadata.uid.clone(),
        ) else {
            return None;
        };
        let action = decide(&pod);
        if matches!(action, Action::Ignore | Action::UpToDate) {
            return None;
        }
        let ip = if matches!(action, Action::BindAndReport | Action::Report) {
            let current = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
            let Some(ip) = self.ips.get(&uid, current) else {
                tracing::error!("simulated kubelet: no pod IP left for {name}");
                return None;
            };
            Some(ip)
        } else {
            None
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        Some(Box::pin(async move {
            let report = |ip: Option<Ipv4Addr>| {
                let patch = ip.map(|ip| desired_status(&pod, ip, &now()));
                let (api, name) = (api.clone(), name.clone());
                async move {
                    match patch {
                        Some(p) => api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(p))
                            .await
                            .map(|_| ()),
                        None => Ok(()),
                    }
                }
            };
            let result = match action {
                Action::Ignore | Action::UpToDate => Ok(()),
                Action::Delete => {
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions {
                            uid: Some(uid.clone()),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match api.delete(&name, &dp).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                Action::BindAndReport => match bind(&api, &name, &ns).await {
                    Ok(()) => report(ip).await,
                    // Already bound: the watch brings the bound pod next.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(e),
                },
                Action::Report => report(ip).await,
            };
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!("simulated kubelet: {action:?} of pod {ns}/{name} failed: {e}")
                }
            }
        }))
    }
}

async fn bind(api: &Api<Pod>, name: &str, ns: &str) -> Result<(), kube::Error> {
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
    });
    let _: Value = tokio::time::timeout(
        Duration::from_secs(30),
        api.create_subresource("binding", name, &PostParams::default(), &binding),
    )
    .await
    .map_err(|_| kube::Error::Service("binding timed out".into()))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "0a1b-2c"},
            "spec": {"containers": [{"name": "app", "image": "nginx:1"}, {"name": "side", "image": "envoy"}]},
            "status": {"phase": "Pending"},
        })
    }

    #[test]
    fn decisions() {
        let mut bound = base();
        bound["spec"]["nodeName"] = json!(NODE_NAME);
        let mut elsewhere = base();
        elsewhere["spec"]["nodeName"] = json!("other");
        let mut deleting = bound.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let mut deleting_elsewhere = elsewhere.clone();
        deleting_elsewhere["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let mut done = bound.clone();
        done["status"]["phase"] = json!("Succeeded");
        let mut running = bound.clone();
        running["status"] = desired_status(
            &pod(bound.clone()),
            Ipv4Addr::new(10, 244, 0, 2),
            "2024-01-01T00:00:00Z",
        )["status"]
            .clone();
        let mut running_now_unready = running.clone();
        running_now_unready["metadata"]["annotations"] = json!({UNREADY_ANNOTATION: "true"});

        let table = [
            (base(), Action::BindAndReport),
            (bound, Action::Report),
            (elsewhere, Action::Ignore),
            (deleting, Action::Delete),
            (deleting_elsewhere, Action::Ignore),
            (done, Action::Ignore),
            (running, Action::UpToDate),
            (running_now_unready, Action::Report),
        ];
        for (i, (p, want)) in table.into_iter().enumerate() {
            assert_eq!(decide(&pod(p)), want, "case {i}");
        }
    }

    #[test]
    fn ready_status_has_every_container_running_and_ready() {
        let p = pod(base());
        let s = desired_status(&p, Ipv4Addr::new(10, 244, 1, 7), "2024-01-01T00:00:00Z");
        let st = &s["status"];
        assert_eq!(st["phase"], "Running");
        assert_eq!(st["podIP"], "10.244.1.7");
        assert_eq!(st["hostIP"], HOST_IP);
        for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            let c = st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap();
            assert_eq!(c["status"], "True", "{t}");
        }
        let cs = st["containerStatuses"].as_array().unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["name"], "app");
        assert_eq!(cs[0]["image"], "nginx:1");
        assert_eq!(cs[0]["ready"], true);
        assert_eq!(cs[0]["started"], true);
        assert!(cs[0]["state"]["running"]["startedAt"].is_string());
        assert_ne!(cs[0]["containerID"], cs[1]["containerID"]);
        // The patched pod parses and counts as up to date.
        let mut v = base();
        v["spec"]["nodeName"] = json!(NODE_NAME);
        v["status"] = st.clone();
        assert_eq!(decide(&pod(v)), Action::UpToDate);
    }

    #[test]
    fn unready_annotation_keeps_pod_running_but_not_ready() {
        let mut v = base();
        v["metadata"]["annotations"] = json!({UNREADY_ANNOTATION: "true"});
        let s = desired_status(
            &pod(v),
            Ipv4Addr::new(10, 244, 0, 2),
            "2024-01-01T00:00:00Z",
        );
        let st = &s["status"];
        assert_eq!(st["phase"], "Running");
        for t in ["ContainersReady", "Ready"] {
            let c = st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap();
            assert_eq!(c["status"], "False", "{t}");
            assert_eq!(c["reason"], "ContainersNotReady");
        }
        assert!(
            st["containerStatuses"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["ready"] == false)
        );
    }

    #[test]
    fn unready_annotation_values() {
        for (value, unready) in [
            ("true", true),
            ("True", true),
            (" true ", true),
            ("false", false),
            ("", false),
        ] {
            let mut v = base();
            v["metadata"]["annotations"] = json!({UNREADY_ANNOTATION: value});
            assert_eq!(wants_unready(&pod(v)), unready, "{value:?}");
        }
        assert!(!wants_unready(&pod(base())));
    }

    #[test]
    fn pod_ips_are_unique_stable_and_reusable() {
        let mut pool = IpPool::default();
        let a = pool.get("a", None).unwrap();
        let b = pool.get("b", None).unwrap();
        assert_ne!(a, b);
        assert_eq!(pool.get("a", None), Some(a));
        assert_eq!(
            pool.get("c", Some("10.244.9.9")),
            Some(Ipv4Addr::new(10, 244, 9, 9))
        );
        let mut seen = HashSet::new();
        for i in 0..2000 {
            let ip = pool.get(&format!("p{i}"), None).unwrap();
            assert_eq!(ip.octets()[..2], [10, 244]);
            assert!(ip.octets()[3] != 0 && ip.octets()[3] != 255);
            assert!(seen.insert(ip), "{ip} handed out twice");
            assert!(ip != a && ip != b && ip != Ipv4Addr::new(10, 244, 9, 9));
        }
        pool.release("a");
        assert!(!pool.used.contains(&a));
    }

    #[test]
    fn a_repeated_report_keeps_transition_times_and_a_change_updates_them() {
        let mut v = base();
        v["spec"]["nodeName"] = json!(NODE_NAME);
        let ip = Ipv4Addr::new(10, 244, 0, 2);
        let first = desired_status(&pod(v.clone()), ip, "2024-01-01T00:00:00Z");
        v["status"] = first["status"].clone();
        assert_eq!(
            desired_status(&pod(v.clone()), ip, "2024-01-01T00:05:00Z"),
            first
        );
        v["metadata"]["annotations"] = json!({UNREADY_ANNOTATION: "true"});
        let changed = desired_status(&pod(v), ip, "2024-01-01T00:05:00Z");
        let time = |s: &Value, t: &str| {
            s["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()["lastTransitionTime"]
                .clone()
        };
        assert_eq!(time(&changed, "Ready"), "2024-01-01T00:05:00Z");
        assert_eq!(time(&changed, "PodScheduled"), "2024-01-01T00:00:00Z");
    }
}
