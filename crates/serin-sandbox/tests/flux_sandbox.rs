//! Flux in the sandbox is real Flux: the controllers `serin-sandbox setup` built fetch commits
//! from the sandbox's Git server, apply them with their own field manager, prune what a commit
//! removes, and report a broken commit on the Kustomization's Ready condition. Needs the
//! environment: fails, never skips, when setup has not run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::json;
use serin_sandbox::flux::api::{self, Kind};
use serin_sandbox::setup::flux as flux_setup;
use serin_sandbox::testenv::{eventually, shared};

#[test]
fn the_cached_flux_is_the_pinned_release() {
    let b = flux_setup::locate_flux().unwrap_or_else(|e| panic!("{e}"));
    let dir = flux_setup::flux_dir(&serin_sandbox::cache_dir());
    assert_eq!(b.source_controller, dir.join("source-controller"));
    assert_eq!(b.kustomize_controller, dir.join("kustomize-controller"));
    assert_eq!(
        std::fs::read_to_string(dir.join("recipe"))
            .unwrap()
            .trim_end(),
        flux_setup::FLUX_RECIPE
    );
    let names: Vec<String> = serin_sandbox::flux::crds(&b)
        .unwrap()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    for want in flux_setup::REQUIRED_FLUX_CRDS {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
    for binary in [&b.source_controller, &b.kustomize_controller] {
        let out = std::process::Command::new(binary)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--watch-all-namespaces"), "{help}");
    }
}

fn config_map(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  from: git\n")
}

#[tokio::test]
async fn a_kustomization_applies_prunes_and_reports_a_broken_commit() {
    let env = shared();
    let flux = env.flux().await;
    let client = env.client();
    let ns = env.namespace("flux").await;
    let content = std::env::temp_dir().join(format!("serin-flux-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&content);
    std::fs::create_dir_all(content.join("deploy")).unwrap();
    std::fs::write(content.join("deploy/one.yaml"), config_map("one")).unwrap();
    let repo = flux
        .git()
        .create_repository(&ns, &content, "one ConfigMap")
        .unwrap();
    let first = repo.revision().unwrap();
    api::apply(
        &client,
        &json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": ns, "namespace": api::NAMESPACE},
            "spec": {"interval": "1m", "url": repo.url(), "ref": {"branch": "main"}}
        }),
    )
    .await
    .unwrap();
    api::apply(
        &client,
        &json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": ns, "namespace": api::NAMESPACE},
            "spec": {
                "interval": "1m", "path": "./deploy", "prune": true, "targetNamespace": ns,
                "sourceRef": {"kind": "GitRepository", "name": ns}
            }
        }),
    )
    .await
    .unwrap();
    let limit = Duration::from_secs(90);
    let git = api::wait_ready(
        &client,
        Kind::GitRepository,
        api::NAMESPACE,
        &ns,
        Some(&first),
        limit,
    )
    .await
    .unwrap();
    assert!(git.message.contains(&first), "{git:?}");
    api::wait_ready(
        &client,
        Kind::Kustomization,
        api::NAMESPACE,
        &ns,
        Some(&first),
        limit,
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let one = cms.get("one").await.unwrap();
    let managers: Vec<String> = one
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["kustomize-controller"]);
    assert_eq!(
        one.metadata.labels.unwrap_or_default()["kustomize.toolkit.fluxcd.io/name"],
        ns
    );

    // A commit that replaces the file: Flux applies the new one and prunes the old.
    std::fs::remove_file(repo.work_dir().join("deploy/one.yaml")).unwrap();
    std::fs::write(repo.work_dir().join("deploy/two.yaml"), config_map("two")).unwrap();
    let second = repo.commit("two instead of one").unwrap();
    api::request_reconcile(&client, Kind::GitRepository, api::NAMESPACE, &ns)
        .await
        .unwrap();
    api::wait_ready(
        &client,
        Kind::Kustomization,
        api::NAMESPACE,
        &ns,
        Some(&second),
        limit,
    )
    .await
    .unwrap();
    assert!(cms.get_opt("two").await.unwrap().is_some());
    eventually("one pruned", limit, || async {
        match cms.get_opt("one").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A broken commit: the Kustomization says so and keeps what it applied.
    std::fs::write(repo.work_dir().join("deploy/two.yaml"), "kind: [\n").unwrap();
    repo.commit("broken YAML").unwrap();
    api::request_reconcile(&client, Kind::GitRepository, api::NAMESPACE, &ns)
        .await
        .unwrap();
    let row = eventually("the broken commit reported", limit, || async {
        let rows = api::list(&client, Kind::Kustomization, api::NAMESPACE)
            .await
            .map_err(|e| e.to_string())?;
        let row = rows.into_iter().find(|r| r.name == ns).ok_or("no row")?;
        if row.ready == "False" && row.current {
            Ok(row)
        } else {
            Err(format!("{row:?}"))
        }
    })
    .await;
    assert_eq!(row.revision, second, "the last applied revision stays");
    assert!(!row.message.is_empty(), "{row:?}");
    let table = api::table(std::slice::from_ref(&row));
    assert!(table.contains(&format!("{ns}   ")), "{table}");
    assert!(cms.get_opt("two").await.unwrap().is_some());
    let _ = std::fs::remove_dir_all(&content);
}
