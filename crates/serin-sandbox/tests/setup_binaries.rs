//! The binaries `serin-sandbox setup` left in the cache are the ones the sandbox needs: found by
//! `locate()`, reporting v1.37.2 (etcd 3.6.17), and an API server that stores, serves and
//! watches a custom resource, empty strings included; Istio's CRD file is Istio's, with real
//! schemas. Needs the environment: fails, never skips, when setup has not run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serin_sandbox::setup;

fn located() -> setup::Binaries {
    match setup::locate() {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn version(binary: &Path) -> String {
    let out = Command::new(binary).arg("--version").output().unwrap();
    assert!(
        out.status.success(),
        "{} --version: {out:?}",
        binary.display()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn version_of(binary: &Path, args: &[&str]) -> String {
    let out = Command::new(binary).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {out:?}",
        binary.display()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn locate_finds_v1_37_2_binaries_in_the_cache() {
    let b = located();
    let bin_dir = setup::kube_bin_dir(&setup::cache_dir());
    assert_eq!(b.kube_apiserver, bin_dir.join("kube-apiserver"));
    assert_eq!(
        b.kube_controller_manager,
        bin_dir.join("kube-controller-manager")
    );
    assert_eq!(b.kubectl, bin_dir.join("kubectl"));
    assert_eq!(b.etcd, bin_dir.join("etcd"));
    assert_eq!(serin_sandbox::kubectl(), b.kubectl);
    assert_eq!(version(&b.kube_apiserver), "Kubernetes v1.37.2");
    assert_eq!(version(&b.kube_controller_manager), "Kubernetes v1.37.2");
    let kubectl = version_of(&b.kubectl, &["version", "--client"]);
    assert!(
        kubectl.lines().any(|l| l == "Client Version: v1.37.2"),
        "{kubectl}"
    );
    let etcd = version(&b.etcd);
    assert!(
        etcd.lines().next() == Some("etcd Version: 3.6.17"),
        "{etcd}"
    );
    // No half-built binary left behind by an interrupted build.
    let leftovers: Vec<String> = std::fs::read_dir(&bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let recipe = std::fs::read_to_string(bin_dir.join(setup::RECIPE_FILE)).unwrap();
    assert_eq!(recipe.trim_end(), setup::RECIPE);
}

/// The cached file is Istio's: the networking CRDs serve `v1` (stored) and `v1beta1`, as a
/// current Istio installs them, each version with a real schema for `spec`.
#[test]
fn istios_crds_serve_v1_and_v1beta1_with_schemas() {
    let b = located();
    let crds = serin_sandbox::istio::crds(&b.istio_crds).unwrap();
    assert!(crds.len() > 3, "{} CRDs", crds.len());
    for name in serin_sandbox::istio::REQUIRED_CRDS {
        let crd = crds
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing"));
        let vs = &crd.spec.versions;
        let served: Vec<&str> = vs
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.as_str())
            .collect();
        assert!(
            served.contains(&"v1") && served.contains(&"v1beta1"),
            "{name}: {served:?}"
        );
        let storage: Vec<&str> = vs
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(storage, ["v1"], "{name}");
        for v in &crd.spec.versions {
            let spec = v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| s.properties.as_ref())
                .and_then(|p| p.get("spec"))
                .unwrap_or_else(|| panic!("{name} {}: no spec schema", v.name));
            assert!(
                spec.properties.as_ref().is_some_and(|p| !p.is_empty()),
                "{name} {}: an open spec schema",
                v.name
            );
        }
    }
}

/// Kills its process on drop so that a failing assertion leaves nothing running.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, dir: &Path, cmd: &mut Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn assert_alive(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{what}: process exited with {status}\n{}", self.log_tail());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_api_server_stores_and_serves_a_custom_resource() {
    let b = located();
    let tmp =
        TempDir(std::env::temp_dir().join(format!("serin-setup-apiserver-{}", std::process::id())));
    let dir = &tmp.0;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();

    let ports = serin_sandbox::free_ports(3).unwrap();
    let (etcd_port, peer_port, api_port) = (ports[0], ports[1], ports[2]);
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let mut etcd = Proc::start(
        "etcd",
        dir,
        Command::new(&b.etcd)
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ]),
    );

    let key = dir.join("sa.key");
    let public = dir.join("sa.pub");
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let ok = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let token = format!("serin-test-{}", std::process::id());
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{token},admin,admin,system:masters\n"),
    )
    .unwrap();

    let mut api = Proc::start(
        "kube-apiserver",
        dir,
        Command::new(&b.kube_apiserver)
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!("--secure-port={api_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--service-account-key-file={}", public.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .args([
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
            ]),
    );

    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{api_port}");
    let get = |path: String| http.get(format!("{base}{path}")).bearer_auth(&token).send();

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        etcd.assert_alive("etcd");
        api.assert_alive("kube-apiserver before ready");
        if get("/readyz".into())
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready in 90 s\n{}",
            api.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let v: Value = get("/version".into()).await.unwrap().json().await.unwrap();
    assert_eq!(v["gitVersion"], "v1.37.2");

    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.serin.dev"},
        "spec": {
            "group": "test.serin.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "properties": {
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                                "note": {"type": "string"},
                                "tags": {"type": "array", "items": {"type": "string"}}
                            }
                        },
                        "status": {
                            "type": "object",
                            "properties": {"conditions": {"type": "array", "items": {
                                "type": "object",
                                "properties": {
                                    "type": {"type": "string"},
                                    "message": {"type": "string"}
                                }
                            }}}
                        }
                    }
                }}
            }]
        }
    });
    let r = http
        .post(format!(
            "{base}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        ))
        .bearer_auth(&token)
        .json(&crd)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c: Value = get(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.test.serin.dev".into(),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let established = c["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        });
        if established {
            break;
        }
        assert!(Instant::now() < deadline, "CRD not established: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let widget = json!({
        "apiVersion": "test.serin.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "labels": {"a": "1", "b": "2"}},
        // Empty strings where the schema says `type: string`: a real cluster accepts them, as
        // Flagger's users' Canaries rely on (`metricsServer: ""`, condition `message: ""`).
        "spec": {
            "labels": {"x": "y", "z": "w", "blank": ""},
            "free": {"nested": {"k": [1, 2, 3]}},
            "note": "",
            "tags": ["", "t"]
        }
    });
    let path = "/apis/test.serin.dev/v1/namespaces/default/widgets";
    // The CRD's discovery can lag "Established" by a moment: retry a 404 briefly.
    let deadline = Instant::now() + Duration::from_secs(15);
    let created = loop {
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&widget)
            .send()
            .await;
        api.assert_alive("kube-apiserver after writing a custom resource");
        match r {
            Ok(r) if r.status().as_u16() == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(r) => break r,
            Err(e) => panic!("writing a custom resource: {e}\n{}", api.log_tail()),
        }
    };
    assert_eq!(created.status().as_u16(), 201, "{:?}", created.text().await);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["spec"]["note"], "");
    assert_eq!(created["spec"]["tags"], json!(["", "t"]));
    assert_eq!(created["spec"]["labels"]["blank"], "");
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // Watch from the created version: the patch below must arrive as an event.
    let mut watch = get(format!(
        "{path}?watch=1&resourceVersion={rv}&timeoutSeconds=30"
    ))
    .await
    .unwrap();
    assert_eq!(watch.status().as_u16(), 200);

    let merge = http
        .patch(format!("{base}{path}/w1"))
        .bearer_auth(&token)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"spec":{"labels":{"x":"changed"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(merge.status().as_u16(), 200, "{:?}", merge.text().await);

    let mut buffered = Vec::new();
    let event: Value = loop {
        if let Some(end) = buffered.iter().position(|&b| b == b'\n') {
            break serde_json::from_slice(&buffered[..end]).unwrap();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(15), watch.chunk())
            .await
            .expect("no watch event 15 s after the patch")
            .unwrap()
            .unwrap_or_else(|| panic!("watch ended without an event\n{}", api.log_tail()));
        buffered.extend_from_slice(&chunk);
    };
    assert_eq!(event["type"], "MODIFIED", "{event}");
    assert_eq!(event["object"]["spec"]["labels"]["x"], "changed", "{event}");
    assert_eq!(event["object"]["spec"]["note"], "", "{event}");
    drop(watch);

    let status = http
        .patch(format!("{base}{path}/w1/status"))
        .bearer_auth(&token)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"status":{"conditions":[{"type":"Promoted","message":""}]}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status().as_u16(), 200, "{:?}", status.text().await);

    let got: Value = get(format!("{path}/w1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        got["spec"]["labels"],
        json!({"x": "changed", "z": "w", "blank": ""})
    );
    assert_eq!(got["spec"]["free"]["nested"]["k"], json!([1, 2, 3]));
    assert_eq!(got["spec"]["note"], "");
    assert_eq!(
        got["status"]["conditions"],
        json!([{"type": "Promoted", "message": ""}])
    );
    let list: Value = get(path.to_string()).await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    api.assert_alive("kube-apiserver at the end");
}
