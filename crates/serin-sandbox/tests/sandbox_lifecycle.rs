//! A sandbox of its own: extra users in the token file, files written, and a stop that leaves
//! nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serin_sandbox::{Sandbox, SandboxOptions};

#[tokio::test]
async fn start_with_extra_user_then_stop_leaves_nothing() {
    let mut opts = SandboxOptions::default();
    let token = opts.add_user("alice", &["dev"]);
    let sb = Sandbox::start(opts).await.unwrap();
    eprintln!(
        "sandbox_start_seconds={:.2}",
        sb.startup_time().as_secs_f64()
    );

    // The admin may list pods; alice is authenticated but RBAC grants her nothing.
    Api::<Pod>::namespaced(sb.client(), "default")
        .list(&Default::default())
        .await
        .unwrap();
    let alice = sb.client_as("alice").unwrap();
    match Api::<Pod>::namespaced(alice, "default")
        .list(&Default::default())
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(s.message.contains("\"alice\""), "{}", s.message);
        }
        other => panic!("alice should be forbidden, got {other:?}"),
    }
    assert_eq!(sb.users()[0].token, token);
    // A wrong token is rejected outright.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let resp = http
        .get(format!("{}/api/v1/namespaces", sb.api_url()))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // The files to reach it.
    let env = std::fs::read_to_string(sb.env_path()).unwrap();
    assert!(env.contains(&format!(
        "export KUBECONFIG='{}'",
        sb.kubeconfig_path().display()
    )));
    assert!(env.contains(&format!("export PROMETHEUS_URL='{}'", sb.prometheus_url())));
    let kubeconfig = std::fs::read_to_string(sb.kubeconfig_path()).unwrap();
    assert!(kubeconfig.contains(sb.api_url()));
    assert!(kubeconfig.contains(sb.admin_token()));
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "prometheus",
    ] {
        assert!(
            sb.logs_dir().join(format!("{name}.log")).exists(),
            "{name}.log"
        );
    }

    let procs = sb.processes();
    let names: Vec<&str> = procs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "etcd",
            "prometheus",
            "kube-apiserver",
            "kube-controller-manager"
        ]
    );
    for (name, pid) in &procs {
        assert!(alive(*pid), "{name} should be running");
    }
    let dir = sb.dir().to_path_buf();
    assert!(dir.exists());

    let t0 = std::time::Instant::now();
    tokio::task::spawn_blocking(move || sb.stop())
        .await
        .unwrap();
    eprintln!("sandbox_stop_seconds={:.2}", t0.elapsed().as_secs_f64());
    for (name, pid) in &procs {
        assert!(!alive(*pid), "{name} (pid {pid}) survived stop");
    }
    assert!(!dir.exists(), "{} should be removed", dir.display());
}

/// Running and not a zombie (a zombie has released everything).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn dropping_a_sandbox_stops_it_too() {
    // A second, independent sandbox side by side: ports are picked per environment.
    let sb = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let procs = sb.processes();
    let dir = sb.dir().to_path_buf();
    drop(sb);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for (name, pid) in &procs {
        assert!(!alive(*pid), "{name} (pid {pid}) survived drop");
    }
    assert!(!dir.exists());
}
