//! The corpus against the real API server, applied the way users apply manifests (kubectl):
//! every valid manifest is accepted and reads back unchanged, every schema-level malformed
//! manifest is refused with a message naming the field, and `kubectl get -o wide` shows
//! Flagger's columns.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use serin_sandbox::testenv::{SharedEnv, shared};
use support::corpus::{corpus, documents, same};

fn kubectl(env: &SharedEnv, args: &[&str]) -> (bool, String) {
    kubectl_in(env, args, None)
}

/// The file's documents moved into `ns`, as one kubectl List on stdin.
fn in_namespace(file: &Path, ns: &str) -> String {
    let items: Vec<Value> = documents(file)
        .into_iter()
        .map(|mut d| {
            d["metadata"]["namespace"] = Value::String(ns.to_string());
            d
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn kubectl_in(env: &SharedEnv, args: &[&str], stdin: Option<String>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(serin_sandbox::kubectl())
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl is installed");
    if let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) {
        pipe.write_all(text.as_bytes()).expect("kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl ran");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn valid_manifests_are_accepted_and_read_back_unchanged() {
    let env = shared();
    let ns = env.namespace("corpus").await;
    for file in corpus("valid") {
        let (ok, out) = kubectl_in(
            env,
            &["apply", "--server-side", "--field-manager=flux", "-f", "-"],
            Some(in_namespace(&file, &ns)),
        );
        assert!(ok, "{} refused by the API server:\n{out}", file.display());
        for doc in documents(&file) {
            let kind = doc["kind"].as_str().unwrap();
            let name = doc["metadata"]["name"].as_str().unwrap();
            let (ok, out) = kubectl(
                env,
                &[
                    "get",
                    "-n",
                    &ns,
                    &format!("{}.flagger.app", kind.to_lowercase()),
                    name,
                    "-o",
                    "json",
                ],
            );
            assert!(ok, "{out}");
            let stored: Value = serde_json::from_str(&out).unwrap();
            assert!(
                same(&doc["spec"], &stored["spec"]),
                "{}: {kind}/{name} spec changed on the server (pruned or defaulted):\nsent   {}\nstored {}",
                file.display(),
                doc["spec"],
                stored["spec"]
            );
        }
    }
}

#[tokio::test]
async fn schema_level_malformed_manifests_are_refused_naming_the_field() {
    let env = shared();
    let ns = env.namespace("malformed").await;
    let files = corpus("invalid/schema");
    assert!(files.len() >= 20, "the table has at least 20 cases");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", file.display()));
        // --validate=false: the server, not kubectl's client-side check, must refuse it.
        let (ok, out) = kubectl_in(
            env,
            &["create", "--validate=false", "-f", "-"],
            Some(in_namespace(&file, &ns)),
        );
        assert!(
            !ok,
            "{} was accepted by the API server:\n{out}",
            file.display()
        );
        assert!(
            out.contains(expect),
            "{}: the refusal does not name {expect}:\n{out}",
            file.display()
        );
    }
}

#[tokio::test]
async fn kubectl_get_shows_flaggers_columns() {
    let env = shared();
    let ns = env.namespace("columns").await;
    for f in [
        "canary-progressive.yaml",
        "canary-step-weights.yaml",
        "canary-blue-green-mirror.yaml",
        "metrictemplate-prometheus.yaml",
        "alertproviders.yaml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus/valid")
            .join(f);
        let (ok, out) = kubectl_in(
            env,
            &["apply", "--server-side", "-f", "-"],
            Some(in_namespace(&path, &ns)),
        );
        assert!(ok, "{out}");
    }
    let (ok, wide) = kubectl(env, &["get", "canaries", "-n", &ns, "-o", "wide"]);
    assert!(ok, "{wide}");
    let header: Vec<&str> = wide
        .lines()
        .find(|l| l.starts_with("NAME"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "WEIGHT",
            "SUSPENDED",
            "FAILEDCHECKS",
            "INTERVAL",
            "MIRROR",
            "STEPWEIGHT",
            "STEPWEIGHTS",
            "MAXWEIGHT",
            "LASTTRANSITIONTIME"
        ]
    );
    let (_, narrow) = kubectl(env, &["get", "canaries", "-n", &ns]);
    let header: Vec<&str> = narrow
        .lines()
        .find(|l| l.starts_with("NAME"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "STATUS", "WEIGHT", "LASTTRANSITIONTIME"]);

    // The values come from the manifests: each canary's interval is in its row.
    let (_, json) = kubectl(env, &["get", "canaries", "-n", &ns, "-o", "json"]);
    let list: Value = serde_json::from_str(&json).unwrap();
    for item in list["items"].as_array().unwrap() {
        let name = item["metadata"]["name"].as_str().unwrap();
        let interval = item["spec"]["analysis"]["interval"].as_str().unwrap();
        let row = wide
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap();
        assert!(
            row.split_whitespace().any(|c| c == interval),
            "row {row:?} lacks interval {interval}"
        );
    }
    // `categories: [all]`: canaries show up in `kubectl get all`.
    let (_, all) = kubectl(env, &["get", "all", "-n", &ns]);
    assert!(all.contains("canary.flagger.app/"), "{all}");

    let (_, mt) = kubectl(env, &["get", "metrictemplates", "-n", &ns]);
    assert!(
        mt.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "PROVIDER"]),
        "{mt}"
    );
    assert!(mt.contains("prometheus"), "{mt}");
    let (_, ap) = kubectl(env, &["get", "alertproviders", "-n", &ns]);
    assert!(
        ap.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "TYPE"]),
        "{ap}"
    );
    for t in ["slack", "msteams", "discord", "rocket", "gchat"] {
        assert!(
            ap.split_whitespace().any(|c| c == t),
            "no {t} provider in:\n{ap}"
        );
    }
}
