//! `serin controller` as a process: it serves /healthz, logs JSON when asked, stops cleanly on
//! SIGTERM, and refuses to start, saying what to do, when the CRDs are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::DeleteParams;
use serin_sandbox::{Sandbox, SandboxOptions};

fn free_port() -> u16 {
    serin_sandbox::free_ports(1).unwrap()[0]
}

fn controller(sandbox: &Sandbox, listen: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_serin"));
    cmd.args(["controller", "--kubeconfig"])
        .arg(sandbox.kubeconfig_path())
        .args([
            "--metrics-server",
            sandbox.prometheus_url(),
            "--listen",
            listen,
            "--log-format",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Dies with the test process, whatever happens to the test.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

#[tokio::test]
async fn the_controller_process_serves_health_stops_on_sigterm_and_checks_crds() {
    let sandbox = Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox (run `serin-sandbox setup` first)");

    // Health endpoint and a clean stop on SIGTERM.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = controller(&sandbox, &listen)
        .spawn()
        .expect("serin controller");
    let pid = child.id() as i32;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("http://{listen}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = http
        .get(format!("http://{listen}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flagger_info{version=") && metrics.contains("mesh_provider=\"istio\""),
        "{metrics}"
    );
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "exit after SIGTERM: {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    let first = log.lines().next().expect("some log");
    let line: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert_eq!(line["level"], "INFO");
    assert!(log.contains("serin controller stopped"), "{log}");

    // Without the Canary CRD it refuses to start and says what to do.
    let crds: Api<CustomResourceDefinition> = Api::all(sandbox.client());
    crds.delete("canaries.flagger.app", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while crds
        .get_opt("canaries.flagger.app")
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "CRD not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = controller(&sandbox, &format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the API server does not serve canaries.flagger.app/v1beta1")
            && err.contains("kubectl apply -f crds/"),
        "{err}"
    );
    sandbox.stop();
}
