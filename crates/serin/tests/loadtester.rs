//! `serin loadtester` as its own process against the sandbox: gates that survive a restart
//! (kept in a ConfigMap), `cmd` tasks driving `hey` against the mesh simulator's ingress, and
//! blocking `bash` tasks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

#[path = "support/loadtester.rs"]
mod lt;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::PostParams;
use lt::{LoadtesterProcess, payload, require_hey};
use serde_json::json;
use serin_sandbox::mesh::{self, MeshOptions};
use serin_sandbox::testenv::{eventually, shared};

const LIMIT: Duration = Duration::from_secs(90);
const CM: &str = "serin-loadtester-gates";

async fn gate_data(api: &Api<ConfigMap>) -> std::collections::BTreeMap<String, String> {
    api.get(CM)
        .await
        .expect("gate ConfigMap")
        .data
        .unwrap_or_default()
}

#[tokio::test]
async fn an_open_gate_is_still_open_after_a_restart() {
    let env = shared();
    let ns = env.namespace("lt-gates").await;
    let kubeconfig = env.kubeconfig_path().to_str().unwrap().to_string();
    let args = ["--kubeconfig", &kubeconfig, "--namespace", &ns];
    let log1 = env.logs_dir().join(format!("loadtester-{ns}-1.log"));
    let mut first = LoadtesterProcess::spawn(&log1, &args);
    assert!(
        first
            .log_text()
            .contains(&format!("gates in ConfigMap {ns}/{CM}")),
        "{}",
        first.log_text()
    );
    let cms: Api<ConfigMap> = Api::namespaced(env.client(), &ns);
    assert!(gate_data(&cms).await.is_empty(), "created empty at start");

    let podinfo = json!({"name": "podinfo", "namespace": ns, "phase": "Progressing"});
    let other = json!({"name": "other", "namespace": ns, "phase": "Progressing"});
    assert_eq!(
        first.post("/gate/check", &podinfo).await,
        (403, "Forbidden".into())
    );
    assert_eq!(first.post("/gate/open", &podinfo).await, (202, "".into()));
    assert_eq!(first.post("/gate/open", &podinfo).await, (202, "".into()));
    assert_eq!(first.post("/rollback/open", &other).await, (202, "".into()));
    assert_eq!(
        first.post("/gate/check", &podinfo).await,
        (200, "Approved".into())
    );
    let data = gate_data(&cms).await;
    assert_eq!(
        data.get(&format!("podinfo.{ns}")).map(String::as_str),
        Some("open"),
        "{data:?}"
    );
    assert_eq!(
        data.get(&format!("rollback.other.{ns}"))
            .map(String::as_str),
        Some("open"),
        "{data:?}"
    );

    // Concurrent opens and closes of different gates lose nothing.
    let names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
    let posts = names.iter().map(|n| {
        let first = &first;
        let p = json!({"name": n, "namespace": ns});
        async move { first.post("/gate/open", &p).await }
    });
    for r in futures::future::join_all(posts).await {
        assert_eq!(r.0, 202, "{}", r.1);
    }
    let closes = names.iter().step_by(2).map(|n| {
        let first = &first;
        let p = json!({"name": n, "namespace": ns});
        async move { first.post("/gate/close", &p).await }
    });
    for r in futures::future::join_all(closes).await {
        assert_eq!(r.0, 202, "{}", r.1);
    }
    let data = gate_data(&cms).await;
    for (i, n) in names.iter().enumerate() {
        let want = if i % 2 == 0 { None } else { Some("open") };
        assert_eq!(
            data.get(&format!("{n}.{ns}")).map(String::as_str),
            want,
            "{n}: {data:?}"
        );
    }

    first.kill();
    let log2 = env.logs_dir().join(format!("loadtester-{ns}-2.log"));
    let second = LoadtesterProcess::spawn(&log2, &args);
    assert_eq!(
        second.post("/gate/check", &podinfo).await,
        (200, "Approved".into()),
        "the gate opened before the restart"
    );
    assert_eq!(
        second.post("/rollback/check", &other).await,
        (200, "Approved".into())
    );
    assert_eq!(
        second.post("/rollback/check", &podinfo).await,
        (403, "Forbidden".into())
    );
    assert_eq!(second.post("/gate/close", &podinfo).await, (202, "".into()));
    assert_eq!(
        second.post("/gate/check", &podinfo).await,
        (403, "Forbidden".into())
    );
    assert!(!gate_data(&cms).await.contains_key(&format!("podinfo.{ns}")));

    // A gate opened by hand in the ConfigMap (or by another replica) counts at the next check.
    let patch = json!({"data": {format!("podinfo.{ns}"): "open"}});
    cms.patch(
        CM,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    assert_eq!(
        second.post("/gate/check", &podinfo).await,
        (200, "Approved".into())
    );
}

#[tokio::test]
async fn without_an_api_server_it_says_gates_are_lost_on_restart() {
    let env = shared();
    let log = env.logs_dir().join("loadtester-memory.log");
    let lt = LoadtesterProcess::spawn(&log, &[]);
    let text = lt.log_text();
    assert!(
        text.contains("gates are kept in memory and do not survive a restart"),
        "{text}"
    );
    assert!(text.contains("gates in memory"), "{text}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_serin"))
        .args(["loadtester", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("closed again after a restart"), "{help}");
    assert!(help.contains("--state-configmap"), "{help}");
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "podinfo:6.0.0"}]}
            }
        }
    }))
    .unwrap()
}

fn service(name: &str, app: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"port": 9898, "protocol": "TCP"}]}
    }))
    .unwrap()
}

/// `istio_requests_total` through the ingress to the `podinfo` workload, from the simulator.
async fn direct_requests(metrics: &str) -> u64 {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains("source_workload=\"direct\""))
        .filter(|l| l.contains("destination_workload=\"podinfo\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn cmd_runs_hey_against_the_mesh_and_bash_answers_with_the_outcome() {
    require_hey();
    let env = shared();
    let client = env.client();
    let ns = env.namespace("lt-hey").await;
    let pp = PostParams::default();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&pp, &deployment("podinfo"))
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&pp, &service("podinfo-canary", "podinfo"))
        .await
        .unwrap();
    let mesh = mesh::start(
        env.config(),
        MeshOptions {
            namespace: Some(ns.clone()),
            ingress: true,
            ..MeshOptions::default()
        },
    )
    .unwrap();
    let ingress = mesh.ingress_addr().expect("ingress");
    let http = reqwest::Client::new();
    eventually("the canary answers through the ingress", LIMIT, || {
        let http = http.clone();
        let url = format!("http://{ingress}/{ns}/podinfo-canary/");
        async move {
            let r = http.get(url).send().await.map_err(|e| e.to_string())?;
            match r.status().as_u16() {
                200 => Ok(()),
                s => Err(format!("status {s}")),
            }
        }
    })
    .await;

    let log = env.logs_dir().join(format!("loadtester-{ns}.log"));
    let lt = LoadtesterProcess::spawn(&log, &[]);
    let before = direct_requests(&mesh.metrics_addr().to_string()).await;
    // As in Flagger's docs: hey against the canary's Service, named here by the Host header.
    let cmd = format!("hey -z 3s -q 10 -c 2 -host podinfo-canary.{ns} http://{ingress}/");
    assert_eq!(
        lt.post(
            "/",
            &payload(
                "podinfo",
                &ns,
                json!({"type": "cmd", "cmd": cmd, "logCmdOutput": "true"})
            )
        )
        .await,
        (202, "".into())
    );
    // The answer came while hey still ran: the load tester has not logged its end yet.
    assert!(
        !lt.log_text().contains(&format!("command finished {cmd}")),
        "cmd answers before the command ends"
    );
    // A second request while hey runs is not a second hey.
    assert_eq!(
        lt.post("/", &payload("podinfo", &ns, json!({"cmd": cmd})))
            .await
            .0,
        202
    );
    let metrics = mesh.metrics_addr().to_string();
    let sent = eventually("hey's requests in the mesh telemetry", LIMIT, || {
        let metrics = metrics.clone();
        async move {
            let n = direct_requests(&metrics).await - before;
            if n >= 30 {
                Ok(n)
            } else {
                Err(format!("{n} requests"))
            }
        }
    })
    .await;
    eventually("hey finished", LIMIT, || async {
        let text = lt.log_text();
        if text.contains(&format!("command finished {cmd}")) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    let total = direct_requests(&metrics).await - before;
    assert!(total >= sent);
    // -q 10 per worker, 2 workers, 3 s: about 60, never two heys' worth.
    assert!(
        (30..=75).contains(&total),
        "{total} requests through the ingress"
    );
    let text = lt.log_text();
    assert!(
        text.contains("Status code distribution"),
        "logCmdOutput: {text}"
    );
    assert!(
        text.contains(&format!("command skipped {cmd} is already running")),
        "{text}"
    );

    // bash: blocking, 200 with the output on request, 500 with Flagger's text on failure.
    assert_eq!(
        lt.post(
            "/",
            &payload(
                "podinfo",
                &ns,
                json!({"type": "bash", "cmd": "[[ -d / ]] && echo ready", "returnCmdOutput": "true"})
            )
        )
        .await,
        (200, "ready\n".into())
    );
    assert_eq!(
        lt.post(
            "/",
            &payload(
                "podinfo",
                &ns,
                json!({"type": "bash", "cmd": "echo checking; exit 2"})
            )
        )
        .await,
        (
            500,
            "command echo checking; exit 2 failed: checking\n: exit status 2".into()
        )
    );
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            if line.contains(needle) {
                found.push(line);
            }
        }
    }
    found
}

#[tokio::test]
async fn sigterm_stops_the_commands_it_runs() {
    let env = shared();
    let log = env.logs_dir().join("loadtester-sigterm.log");
    let lt = LoadtesterProcess::spawn(&log, &[]);
    let needle = format!("sleep 317.{}", std::process::id());
    // A background child of sh, as `hey ... &` would be.
    let cmd = format!("{needle} & {needle}");
    assert_eq!(
        lt.post("/", &payload("podinfo", "test", json!({"cmd": cmd})))
            .await
            .0,
        202
    );
    eventually("the command runs", LIMIT, || async {
        let n = processes_with(&needle).len();
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} processes"))
        }
    })
    .await;
    // Drop sends SIGTERM and waits for the load tester to exit.
    drop(lt);
    eventually("no command left behind", Duration::from_secs(5), || async {
        let left = processes_with(&needle);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("stopping the running commands"), "{text}");
}
