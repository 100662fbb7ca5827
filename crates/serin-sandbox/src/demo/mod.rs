//! `cargo demo` (serin-sandbox demo): serin's whole story on one machine, in one command. It starts
//! the sandbox with real Flux (source-controller, kustomize-controller, a local Git server), the
//! mesh simulator, `serin controller` and `serin loadtester` as their own processes, and a local
//! Slack-compatible receiver; serves the GitOps example (deploy/gitops) from a Git repository and
//! bootstraps Flux on it; then ships a good release of `backend` (promoted) and a faulty one
//! (rolled back, primary untouched), each a commit that bumps `images[0].newTag`. The
//! Kustomizations' Ready conditions show beside serin's progress, as `flux get kustomizations`
//! shows them.
//!
//! The demo changes the example only where a laptop differs from a cluster, and says so in a
//! commit of its own: webhook URLs point at the local load tester, `hey` and `curl` go through the
//! simulated ingress, and the analysis runs every 10 s so the story takes minutes. Those changes
//! are Flux `spec.patches` on the `apps` Kustomization: the example's own files stay as they are.

mod progress;
mod receiver;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client};
use serde_json::Value;

use crate::{Sandbox, SandboxOptions, mesh};
use serin_api::Canary;

pub use progress::{Release, Snapshot, bar, summary};
pub use receiver::{Message, Receiver};

/// The application the story plays on.
pub const APP: &str = "backend";

/// Options of `cargo demo` (serin-sandbox demo).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Leave everything running at the end and print how to explore it.
    pub keep: bool,
    /// The GitOps example to apply (a copy is edited, never the original).
    pub gitops: PathBuf,
}

/// Runs the demo; `Ok(true)` when the story went as it should (good release promoted, faulty one
/// rolled back with the primary untouched).
pub async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut stage = Stage::default();
    let result = tokio::select! {
        r = story(&opts, &mut stage) => r,
        _ = sigterm.recv() => Err(anyhow::anyhow!("interrupted (SIGTERM)")),
        _ = sigint.recv() => Err(anyhow::anyhow!("interrupted (Ctrl-C)")),
    };
    let ok = match result {
        Ok(ok) if opts.keep => {
            if let Some(sandbox) = &stage.sandbox {
                print_keep(sandbox, &stage);
                tokio::select! {
                    _ = sigterm.recv() => {},
                    _ = sigint.recv() => {},
                    exit = sandbox.died() => eprintln!("{exit}"),
                }
            }
            Ok(ok)
        }
        other => other,
    };
    eprintln!("tearing down the sandbox...");
    stage.teardown().await;
    eprintln!("stopped; nothing left running");
    ok
}

/// Everything the demo started, so that every exit path (including Ctrl-C) stops all of it.
#[derive(Default)]
struct Stage {
    sandbox: Option<Sandbox>,
    mesh: Option<mesh::MeshHandle>,
    receiver: Option<Receiver>,
    namespace: String,
    repository: Option<crate::flux::Repository>,
}

impl Stage {
    fn flux(&self) -> anyhow::Result<&crate::flux::Flux> {
        self.sandbox
            .as_ref()
            .and_then(|s| s.flux())
            .context("the sandbox runs no Flux")
    }

    async fn teardown(&mut self) {
        drop(self.receiver.take());
        if let Some(m) = self.mesh.take() {
            m.stop();
        }
        if let Some(s) = self.sandbox.take() {
            let _ = tokio::task::spawn_blocking(move || s.stop()).await;
        }
    }
}

fn print_keep(sandbox: &Sandbox, stage: &Stage) {
    let release = match &stage.repository {
        Some(r) => format!(
            "\n\nRelease again: edit newTag in {work}/deploy/gitops/apps/{APP}/kustomization.yaml, then\n  git -C {work} commit -am 'a release' && git -C {work} push origin main\n  kubectl -n flux-system annotate gitrepository {SYNC} --overwrite reconcile.fluxcd.io/requestedAt=\"$(date +%s)\"",
            work = r.work_dir().display()
        ),
        None => String::new(),
    };
    println!(
        "\nThe sandbox keeps running (Ctrl-C stops it). In another shell:\n\n  export KUBECONFIG={kc}\n  kubectl -n {ns} get canaries\n  kubectl -n flux-system get gitrepositories,kustomizations\n  serin status {APP} -n {ns} --kubeconfig {kc}\n  serin get -n {ns} --kubeconfig {kc}{release}\n\nLogs: {logs}",
        kc = sandbox.kubeconfig_path().display(),
        ns = stage.namespace,
        logs = sandbox.logs_dir().display(),
    );
}

async fn story(opts: &DemoOptions, stage: &mut Stage) -> anyhow::Result<bool> {
    let t0 = Instant::now();
    println!(
        "==> starting the sandbox (API server, etcd, Prometheus, simulated kubelet) with Flux (source-controller, kustomize-controller, a Git server)"
    );
    let mut sandbox = Sandbox::start(SandboxOptions {
        flux: true,
        ..SandboxOptions::default()
    })
    .await?;
    println!("    ready in {:.1} s", sandbox.startup_time().as_secs_f64());
    let mesh = mesh::start(
        sandbox.config(),
        mesh::MeshOptions {
            ingress: true,
            rate_per_second: 20.0,
            ..Default::default()
        },
    )?;
    sandbox.register_scrape_target("mesh", &mesh.metrics_addr().to_string())?;
    let ingress = mesh
        .ingress_addr()
        .context("the mesh simulator has no ingress")?;
    let receiver = Receiver::start(true).await?;
    let slack_url = receiver.url();
    stage.receiver = Some(receiver);
    stage.mesh = Some(mesh);

    let exe = crate::serin_binary()?;
    let kubeconfig = sandbox.kubeconfig_path().display().to_string();
    let prometheus = sandbox.prometheus_url().to_string();
    let tester_port = free_port()?;
    println!(
        "==> starting serin controller and serin loadtester (logs in {})",
        sandbox.logs_dir().display()
    );
    sandbox.spawn_service(
        "serin-controller",
        &exe,
        &strings(&[
            "controller",
            "--kubeconfig",
            &kubeconfig,
            "--metrics-server",
            &prometheus,
            "--listen",
            "127.0.0.1:0",
            "--slack-url",
            &slack_url,
            "--slack-channel",
            "#releases",
            "--slack-user",
            "serin",
            "--cluster-name",
            "sandbox",
        ]),
    )?;
    sandbox.spawn_service(
        "serin-loadtester",
        &exe,
        &strings(&[
            "loadtester",
            "--port",
            &tester_port.to_string(),
            "--address",
            "127.0.0.1",
            "--namespace",
            "default",
            "--kubeconfig",
            &kubeconfig,
        ]),
    )?;
    let client = sandbox.client();
    stage.sandbox = Some(sandbox);

    // The repository: the example and the bases it refers to (deploy/istio, deploy/loadtester),
    // as deploy/ in a repository of the sandbox's Git server.
    let deploy = opts
        .gitops
        .parent()
        .context("--gitops must be a directory inside deploy/")?;
    let name = opts
        .gitops
        .file_name()
        .context("--gitops has no name")?
        .to_string_lossy()
        .into_owned();
    let content = stage_dir(stage)?.join("repository");
    copy_dir(deploy, &content.join("deploy"))?;
    let flux = stage.flux()?;
    let repo =
        flux.git()
            .create_repository(REPOSITORY, &content, "deploy: serin's GitOps example")?;
    let gitops = repo.work_dir().join("deploy").join(&name);
    println!(
        "==> the GitOps repository: {} (the example, {}, as deploy/{name}; working clone {})",
        repo.url(),
        opts.gitops.display(),
        repo.work_dir().display()
    );

    let local = Localize {
        loadtester: format!("http://127.0.0.1:{tester_port}/"),
        ingress: ingress.to_string(),
    };
    let apps = gitops.join("apps");
    let canaries = canaries_in(&apps)?;
    let cluster = format!("deploy/{name}/{CLUSTER}");
    let apps_yaml = repo.work_dir().join(&cluster).join("apps.yaml");
    crate::flux::bootstrap::edit_kustomization(&apps_yaml, "apps", |k| {
        k["spec"]["patches"] = Value::Array(local.patches(&canaries));
    })?;
    let localized = repo.commit(LOCALIZE_COMMIT)?;
    println!(
        "==> commit {}: {LOCALIZE_COMMIT}\n    ({cluster}/apps.yaml: spec.patches on the Canaries; the example itself is unchanged)",
        short(&localized)
    );

    println!(
        "==> flux bootstrap: GitRepository and Kustomization flux-system (path ./{cluster}), then infra, then apps (dependsOn: infra)"
    );
    // Istio is installed before Flux on a real cluster (the example's README): the mesh
    // simulator plays it, and its namespace is where infra puts serin.
    crate::flux::api::ensure_namespace(&client, "istio-system").await?;
    let revision = crate::flux::bootstrap::bootstrap(&client, &repo, &cluster).await?;
    let ns = canary_namespace(&apps.join(APP))?;
    stage.namespace = ns.clone();
    let threshold = canaries
        .iter()
        .find(|c| c["metadata"]["name"] == APP)
        .and_then(|c| c["spec"]["analysis"]["threshold"].as_i64())
        .unwrap_or(2) as i32;
    let mut follow = progress::Follower::new(client.clone(), &ns, APP);
    follow
        .until_applied(&revision, Duration::from_secs(300))
        .await?;
    print_kustomizations(&client).await;
    wait_initialized(&client, &ns, &mut follow).await?;

    let kustomization = apps.join(APP).join("kustomization.yaml");
    let mut releases = Vec::new();
    let old_tag = current_tag(&kustomization)?;
    let mut revision = revision;
    for (tag, faulty) in [
        (next_tag(&old_tag, 1), false),
        (next_tag(&old_tag, 2), true),
    ] {
        crate::flux::release::bump_tag(&kustomization, &tag)?;
        if faulty {
            add_fault(&apps.join(APP).join("deployment.yaml"))?;
        }
        let message = format!(
            "{APP} {tag}{}",
            if faulty {
                " (faulty: its pods answer half of the requests with 500)"
            } else {
                ""
            }
        );
        revision = repo.commit(&message)?;
        println!(
            "\n==> release: commit {} \"{message}\" bumps images[0].newTag in deploy/{name}/apps/{APP}/kustomization.yaml\n    flux reconcile source git {SYNC}: source-controller fetches it, kustomize-controller applies it, serin rolls it out",
            short(&revision)
        );
        crate::flux::api::request_reconcile(
            &client,
            crate::flux::api::Kind::GitRepository,
            crate::flux::NAMESPACE,
            SYNC,
        )
        .await?;
        let started = Instant::now();
        let (snap, steps) = follow.follow(threshold, Duration::from_secs(300)).await?;
        releases.push(Release {
            tag,
            steps,
            duration: started.elapsed(),
            outcome: snap.phase.clone(),
            primary_image: primary_image(&client, &ns).await,
        });
    }
    let flux_ok = follow
        .until_applied(&revision, Duration::from_secs(120))
        .await
        .is_ok();

    println!("\n==> kubectl describe canary {APP} -n {ns}");
    describe(stage, &ns);
    if let Some(r) = &stage.receiver {
        let messages = r.messages();
        println!("\n==> {} Slack messages received", messages.len());
        for m in &messages {
            println!("  {}", m.render());
        }
    }
    println!("\n==> flux get kustomizations");
    print_kustomizations(&client).await;
    println!(
        "\n==> summary ({:.0} s in all)\n{}",
        t0.elapsed().as_secs_f64(),
        summary(&releases)
    );
    let ok = story_ok(&releases, &old_tag) && flux_ok;
    if ok {
        println!(
            "The good release was promoted; the faulty one was rolled back and the primary kept serving {}. Flux applied both commits (Kustomizations Ready at {}).",
            releases[0].tag,
            short(&revision)
        );
    } else {
        println!("The story did not go as expected; see the events above and the logs.");
    }
    stage.repository = Some(repo);
    Ok(ok)
}

/// The repository's name on the sandbox's Git server.
pub const REPOSITORY: &str = "serin";

/// Where the example keeps what `flux bootstrap --path` points at.
pub const CLUSTER: &str = "clusters/my-cluster";

/// The GitRepository and root Kustomization that bootstrap creates.
const SYNC: &str = crate::flux::bootstrap::SYNC_NAME;

/// The sandbox's own commit to its copy of the repository.
pub const LOCALIZE_COMMIT: &str = "sandbox: webhooks to the local load tester, hey and curl through the simulated ingress, 10 s analysis";

/// `main@sha1:0123456789abcdef...` → `main@sha1:0123456`.
pub fn short(revision: &str) -> String {
    match revision.split_once("@sha1:") {
        Some((branch, sha)) => format!("{branch}@sha1:{}", &sha[..sha.len().min(7)]),
        None => revision.to_string(),
    }
}

async fn print_kustomizations(client: &Client) {
    match crate::flux::api::list(
        client,
        crate::flux::api::Kind::Kustomization,
        crate::flux::NAMESPACE,
    )
    .await
    {
        Ok(rows) => print!("{}", crate::flux::api::table(&rows)),
        Err(e) => println!("(cannot list the Kustomizations: {e})"),
    }
}

/// Every Canary of a directory tree of manifests.
fn canaries_in(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(canaries_in(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?;
            for doc in crate::flux::bootstrap::documents(&text)
                .with_context(|| format!("{} is not YAML", path.display()))?
            {
                if doc["kind"] == "Canary" {
                    found.push(doc);
                }
            }
        }
    }
    found.sort_by_key(|c| {
        c["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    Ok(found)
}

/// The namespace an app's kustomization.yaml puts it in.
fn canary_namespace(app: &Path) -> anyhow::Result<String> {
    let file = app.join("kustomization.yaml");
    let k: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&file)?)?;
    k["namespace"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{} sets no namespace", file.display()))
}

/// Good release promoted, faulty release rolled back with the primary still on the good one.
fn story_ok(releases: &[Release], _old: &str) -> bool {
    match releases {
        [good, bad] => {
            good.outcome == "Succeeded"
                && good.primary_image.ends_with(&format!(":{}", good.tag))
                && bad.outcome == "Failed"
                && bad.primary_image == good.primary_image
        }
        _ => false,
    }
}

/// The demo's only departures from the example, made by Flux patches on the Canaries: the load
/// tester's cluster DNS name becomes the local process, `hey` goes through the simulated ingress
/// (which picks the Service from the Host header), and the analysis runs every 10 s.
struct Localize {
    loadtester: String,
    ingress: String,
}

/// Analysis interval of the demo.
pub const DEMO_INTERVAL: &str = "10s";

impl Localize {
    /// Flux `spec.patches` that make each Canary what [`Localize::transform`] makes of it.
    fn patches(&self, canaries: &[Value]) -> Vec<Value> {
        canaries
            .iter()
            .filter_map(|c| {
                let mut local = c.clone();
                self.transform(&mut local);
                let ops = crate::flux::bootstrap::replace_ops(c, &local);
                let name = c["metadata"]["name"].as_str()?;
                (!ops.is_empty()).then(|| crate::flux::bootstrap::json_patch("Canary", name, &ops))
            })
            .collect()
    }

    fn transform(&self, o: &mut Value) {
        if o["kind"] != "Canary" {
            return;
        }
        let analysis = &mut o["spec"]["analysis"];
        if analysis.is_object() {
            analysis["interval"] = Value::from(DEMO_INTERVAL);
        }
        if let Some(hooks) = analysis["webhooks"].as_array_mut() {
            for h in hooks {
                if let Some(url) = h["url"].as_str() {
                    h["url"] = Value::from(self.local_url(url));
                }
                if let Some(cmd) = h["metadata"]["cmd"].as_str() {
                    h["metadata"]["cmd"] = Value::from(self.local_cmd(cmd));
                }
            }
        }
    }

    /// `http://flagger-loadtester.test/gate/check` → `http://127.0.0.1:P/gate/check`.
    fn local_url(&self, url: &str) -> String {
        let Ok(u) = url::Url::parse(url) else {
            return url.to_string();
        };
        if !u.host_str().unwrap_or_default().contains("loadtester") {
            return url.to_string();
        }
        let path = u.path().trim_start_matches('/');
        format!("{}{path}", self.loadtester)
    }

    /// `hey -z 1m -q 10 -c 2 http://backend-canary.apps:9898/` →
    /// `hey -z 1m -q 10 -c 2 -host backend-canary.apps http://<ingress>/`, and the same for `curl`
    /// with `-H 'Host: ...'`: there is no cluster DNS on a laptop, the ingress reads the Host.
    fn local_cmd(&self, cmd: &str) -> String {
        let tool = cmd.split_whitespace().next().unwrap_or_default();
        if tool != "hey" && tool != "curl" {
            return cmd.to_string();
        }
        let mut out = Vec::new();
        for word in cmd.split(' ') {
            match url::Url::parse(word) {
                Ok(u) if u.scheme() == "http" && u.host_str().is_some() => {
                    let host = u.host_str().unwrap_or_default().to_string();
                    let svc = host.strip_suffix(".svc.cluster.local").unwrap_or(&host);
                    if tool == "hey" {
                        out.push(format!("-host {svc}"));
                    } else {
                        out.push(format!("-H 'Host: {svc}'"));
                    }
                    out.push(format!("http://{}{}", self.ingress, u.path()));
                }
                _ => out.push(word.to_string()),
            }
        }
        out.join(" ")
    }
}

/// The next patch version: `6.0.0` + 1 → `6.0.1`; anything else gets a `-demo.N` suffix.
fn next_tag(tag: &str, n: u32) -> String {
    let parts: Vec<&str> = tag.split('.').collect();
    if let [major, minor, patch] = parts.as_slice()
        && let Ok(p) = patch.parse::<u32>()
    {
        return format!("{major}.{minor}.{}", p + n);
    }
    format!("{tag}-demo.{n}")
}

/// The faulty release's commit: backend's pod template gets the simulator's fault profile, as if
/// the new code answered half of its requests with 500.
fn add_fault(deployment: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(deployment)?;
    let mut d: Value = serde_yaml_ng::from_str(&text)?;
    let annotations = &mut d["spec"]["template"]["metadata"]["annotations"];
    if !annotations.is_object() {
        *annotations = Value::Object(Default::default());
    }
    annotations[crate::mesh::behaviour::SIMULATE_ANNOTATION] = Value::from(FAULT);
    std::fs::write(deployment, serde_yaml_ng::to_string(&d)?)?;
    Ok(())
}

/// The faulty release's simulated behaviour.
pub const FAULT: &str = "errors=50%";

/// `images[0].newTag` of a kustomization.
fn current_tag(kustomization: &Path) -> anyhow::Result<String> {
    let k: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(kustomization)?)?;
    k["images"][0]["newTag"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{} has no images[0].newTag", kustomization.display()))
}

async fn wait_initialized(
    client: &Client,
    ns: &str,
    follow: &mut progress::Follower,
) -> anyhow::Result<()> {
    let api: Api<Canary> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    println!(
        "==> waiting for serin to initialize {APP} (primary Deployment, Services, VirtualService)"
    );
    loop {
        follow.events(true).await;
        if let Ok(Some(c)) = api.get_opt(APP).await
            && c.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p == serin_api::CanaryPhase::Initialized)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{APP} was not initialized within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn primary_image(client: &Client, ns: &str) -> String {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.get_opt(&format!("{APP}-primary"))
        .await
        .ok()
        .flatten()
        .and_then(|d| d.spec.template.spec?.containers.first()?.image.clone())
        .unwrap_or_else(|| "-".into())
}

fn describe(stage: &Stage, ns: &str) {
    let Some(sandbox) = &stage.sandbox else {
        return;
    };
    let kubectl = crate::locate()
        .ok()
        .map(|b| b.kubectl)
        .unwrap_or_else(|| PathBuf::from("kubectl"));
    match std::process::Command::new(kubectl)
        .args(["describe", "canary", APP, "-n", ns])
        .env("KUBECONFIG", sandbox.kubeconfig_path())
        .output()
    {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Err(e) => println!("(kubectl not available: {e})"),
    }
}

fn stage_dir(stage: &Stage) -> anyhow::Result<PathBuf> {
    stage
        .sandbox
        .as_ref()
        .map(|s| s.dir().to_path_buf())
        .context("the sandbox is not running")
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A port for a program to bind later; see [`crate::free_ports`] for why not `:0`.
fn free_port() -> std::io::Result<u16> {
    crate::free_ports(1)?
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("no free port"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn local() -> Localize {
        Localize {
            loadtester: "http://127.0.0.1:9999/".into(),
            ingress: "127.0.0.1:8000".into(),
        }
    }

    #[test]
    fn loadtester_urls_become_local() {
        let l = local();
        for (from, to) in [
            ("http://flagger-loadtester.test/", "http://127.0.0.1:9999/"),
            (
                "http://flagger-loadtester.test/gate/check",
                "http://127.0.0.1:9999/gate/check",
            ),
            (
                "http://loadtester.istio-system.svc.cluster.local/rollback/check",
                "http://127.0.0.1:9999/rollback/check",
            ),
            ("https://hooks.example.com/x", "https://hooks.example.com/x"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(l.local_url(from), to, "{from}");
        }
    }

    #[test]
    fn hey_goes_through_the_ingress() {
        let l = local();
        assert_eq!(
            l.local_cmd("hey -z 1m -q 10 -c 2 http://backend-canary.apps:9898/api/info"),
            "hey -z 1m -q 10 -c 2 -host backend-canary.apps http://127.0.0.1:8000/api/info"
        );
        assert_eq!(
            l.local_cmd("hey -z 1m http://backend-canary.apps.svc.cluster.local:9898/"),
            "hey -z 1m -host backend-canary.apps http://127.0.0.1:8000/"
        );
        assert_eq!(
            l.local_cmd("curl -sf http://backend-canary.apps:9898/healthz"),
            "curl -sf -H 'Host: backend-canary.apps' http://127.0.0.1:8000/healthz"
        );
        assert_eq!(l.local_cmd("wrk http://x.y/"), "wrk http://x.y/");
    }

    #[test]
    fn only_canaries_change() {
        let l = local();
        let mut c = json!({"kind": "Canary", "spec": {"analysis": {"interval": "1m", "webhooks": [
            {"name": "load-test", "url": "http://flagger-loadtester.test/", "metadata": {"cmd": "hey -z 1m http://backend-canary.apps:9898/"}}
        ]}}});
        l.transform(&mut c);
        assert_eq!(c["spec"]["analysis"]["interval"], DEMO_INTERVAL);
        assert_eq!(
            c["spec"]["analysis"]["webhooks"][0]["url"],
            "http://127.0.0.1:9999/"
        );
        assert_eq!(
            c["spec"]["analysis"]["webhooks"][0]["metadata"]["cmd"],
            "hey -z 1m -host backend-canary.apps http://127.0.0.1:8000/"
        );
        let mut d = json!({"kind": "Deployment", "spec": {"analysis": {"interval": "1m"}}});
        let before = d.clone();
        l.transform(&mut d);
        assert_eq!(d, before);
    }

    #[test]
    fn the_faulty_commit_adds_the_fault_profile_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("serin-demo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.join("deployment.yaml");
        std::fs::write(&d, "# c\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: backend\nspec:\n  template:\n    metadata:\n      labels:\n        app: backend\n    spec:\n      containers:\n        - name: backend\n          image: podinfo:6.0.0\n").unwrap();
        add_fault(&d).unwrap();
        let v: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&d).unwrap()).unwrap();
        assert_eq!(
            v["spec"]["template"]["metadata"]["annotations"]["serin.dev/simulate"],
            FAULT
        );
        assert_eq!(
            v["spec"]["template"]["metadata"]["labels"]["app"],
            "backend"
        );
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["image"],
            "podinfo:6.0.0"
        );
        let k = dir.join("kustomization.yaml");
        std::fs::write(
            &k,
            "resources: [a.yaml]\nimages:\n  - name: podinfo\n    newTag: 6.0.0\n",
        )
        .unwrap();
        assert_eq!(current_tag(&k).unwrap(), "6.0.0");
        std::fs::write(&k, "resources: [a.yaml]\n").unwrap();
        assert!(current_tag(&k).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tags_move_to_the_next_patch() {
        assert_eq!(next_tag("6.0.0", 1), "6.0.1");
        assert_eq!(next_tag("6.1.9", 2), "6.1.11");
        assert_eq!(next_tag("latest", 1), "latest-demo.1");
    }

    fn release(tag: &str, outcome: &str, primary: &str) -> Release {
        Release {
            tag: tag.into(),
            steps: vec![],
            duration: Duration::ZERO,
            outcome: outcome.into(),
            primary_image: primary.into(),
        }
    }

    #[test]
    fn the_story_needs_a_promotion_then_a_rollback_that_keeps_the_primary() {
        let good = release("6.0.1", "Succeeded", "podinfo:6.0.1");
        let bad = release("6.0.2", "Failed", "podinfo:6.0.1");
        assert!(story_ok(&[good.clone(), bad.clone()], "6.0.0"));
        assert!(!story_ok(std::slice::from_ref(&good), "6.0.0"));
        assert!(!story_ok(
            &[release("6.0.1", "Failed", "podinfo:6.0.0"), bad.clone()],
            "6.0.0"
        ));
        assert!(!story_ok(
            &[good.clone(), release("6.0.2", "Succeeded", "podinfo:6.0.2")],
            "6.0.0"
        ));
        assert!(!story_ok(
            &[good, release("6.0.2", "Failed", "podinfo:6.0.2")],
            "6.0.0"
        ));
    }
}
