//! Real Flux in the sandbox: its CRDs, source-controller and kustomize-controller (built by
//! `serin-sandbox setup`, see `setup::flux`) as processes against the sandbox's API server, and a
//! Git server on loopback ([`git::GitServer`]) for them to fetch from. The GitOps flow of the
//! tutorials then runs for real: a commit is fetched by source-controller and applied by
//! kustomize-controller with its own server-side apply, health checks, `dependsOn` and pruning.
//!
//! - [`bootstrap::bootstrap`] plays `flux bootstrap` on a repository of the Git server;
//! - [`release::bump_tag`] makes a release commit's one-line edit;
//! - [`api`] asks for reconciliations and reads Ready conditions, as the `flux` CLI does.

pub mod api;
pub mod bootstrap;
pub mod git;
pub mod release;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::environment::{Error, Sandbox, free_ports};
use crate::process::{self, Supervised};
use crate::setup::flux::{FluxBinaries, locate_flux};

pub use api::NAMESPACE;
pub use git::{GitServer, Repository};

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often kustomize-controller looks again at a Kustomization whose `dependsOn` is not
/// Ready (Flux's default is 30 s: in the sandbox that would be most of the wait).
pub const REQUEUE_DEPENDENCY: &str = "5s";

/// Flux running against a sandbox. [`Flux::stop`] (or dropping it) stops the controllers, then
/// the Git server.
pub struct Flux {
    git: GitServer,
    children: Vec<Supervised>,
    stopping: Arc<AtomicBool>,
    storage: String,
}

impl Flux {
    /// Installs Flux's CRDs and namespace, starts the Git server (repositories under
    /// `DATA/flux/git`) and both controllers, and returns once the controllers answer their
    /// readiness probes. A controller that dies later is reported through the sandbox's
    /// [`Sandbox::died`].
    pub async fn start(sandbox: &Sandbox) -> Result<Flux, Error> {
        let bins = locate_flux()?;
        let client = Client::try_from(sandbox.config()).map_err(|source| Error::Kube {
            what: "building a client".into(),
            source,
        })?;
        install_crds(&client, &bins).await?;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
        }))
        .map_err(|e| Error::Other(format!("namespace object: {e}")))?;
        Api::<Namespace>::all(client.clone())
            .patch(
                NAMESPACE,
                &PatchParams::apply(api::FIELD_MANAGER).force(),
                &Patch::Apply(&ns),
            )
            .await
            .map_err(|source| Error::Kube {
                what: format!("creating the namespace {NAMESPACE}"),
                source,
            })?;

        let data = sandbox.data_dir().join("flux");
        let git = GitServer::start(&data.join("git")).map_err(|source| Error::Io {
            what: "starting the Git server".into(),
            source,
        })?;
        let storage_dir = data.join("storage");
        std::fs::create_dir_all(&storage_dir).map_err(|source| Error::Io {
            what: format!("creating {}", storage_dir.display()),
            source,
        })?;
        let ports = free_ports(5).map_err(|source| Error::Io {
            what: "picking free loopback ports".into(),
            source,
        })?;
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let mut flux = Flux {
            git,
            children: Vec::new(),
            stopping: Arc::new(AtomicBool::new(false)),
            storage: addr(ports[0]),
        };
        let env = vec![
            (
                "KUBECONFIG".to_string(),
                sandbox.kubeconfig_path().display().to_string(),
            ),
            ("RUNTIME_NAMESPACE".to_string(), NAMESPACE.to_string()),
        ];
        let common = |metrics: u16, health: u16| {
            vec![
                format!("--metrics-addr={}", addr(metrics)),
                format!("--health-addr={}", addr(health)),
                "--enable-leader-election=false".to_string(),
                "--watch-all-namespaces=true".to_string(),
                "--log-encoding=console".to_string(),
            ]
        };
        let mut sc = common(ports[1], ports[2]);
        sc.extend([
            format!("--storage-path={}", storage_dir.display()),
            format!("--storage-addr={}", addr(ports[0])),
            // kustomize-controller downloads the artifacts from the address advertised here.
            format!("--storage-adv-addr={}", addr(ports[0])),
        ]);
        let mut kc = common(ports[3], ports[4]);
        kc.extend([
            format!("--requeue-dependency={REQUEUE_DEPENDENCY}"),
            // No network beyond loopback: a remote base would only time out.
            "--no-remote-bases=true".to_string(),
        ]);
        // Started through links in the sandbox's directory, so that their command lines name
        // the sandbox they belong to (what leak checks such as `pgrep -f serin-sandbox` look for).
        let bin = data.join("bin");
        std::fs::create_dir_all(&bin).map_err(|source| Error::Io {
            what: format!("creating {}", bin.display()),
            source,
        })?;
        for (name, program, args) in [
            ("source-controller", &bins.source_controller, sc),
            ("kustomize-controller", &bins.kustomize_controller, kc),
        ] {
            let link = bin.join(name);
            std::os::unix::fs::symlink(program, &link).map_err(|source| Error::Io {
                what: format!("linking {} to {}", link.display(), program.display()),
                source,
            })?;
            let child = Supervised::spawn_with_env(
                name,
                &link,
                &args,
                &env,
                &sandbox.logs_dir().join(format!("{name}.log")),
                flux.stopping.clone(),
                sandbox.exit_hook(),
            )
            .map_err(|source| Error::Io {
                what: format!("starting {}", program.display()),
                source,
            })?;
            flux.children.push(child);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Other(format!("building an HTTP client: {e}")))?;
        for (name, port) in [
            ("source-controller", ports[2]),
            ("kustomize-controller", ports[4]),
        ] {
            flux.until_ready(
                sandbox,
                name,
                &http,
                &format!("http://{}/readyz", addr(port)),
            )
            .await?;
        }
        Ok(flux)
    }

    async fn until_ready(
        &self,
        sandbox: &Sandbox,
        name: &str,
        http: &reqwest::Client,
        url: &str,
    ) -> Result<(), Error> {
        let poll = async {
            while !http
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            r = tokio::time::timeout(READY_TIMEOUT, poll) => r.map_err(|_| Error::Timeout {
                what: name.to_string(),
                after: READY_TIMEOUT,
                details: self.children.iter().find(|c| c.name() == name).map(|c| format!(
                    "; last lines of {}:\n{}", c.log().display(), process::tail(c.log(), 20)
                )).unwrap_or_default(),
            }),
            exit = sandbox.died() => Err(Error::ChildExited(exit)),
        }
    }

    /// The Git server the GitRepositories fetch from.
    pub fn git(&self) -> &GitServer {
        &self.git
    }

    /// source-controller's artifact server (`host:port`).
    pub fn storage_addr(&self) -> &str {
        &self.storage
    }

    /// The controllers: (name, pid).
    pub fn processes(&self) -> Vec<(String, i32)> {
        self.children
            .iter()
            .map(|c| (c.name().to_string(), c.pid()))
            .collect()
    }

    /// The controllers' log files.
    pub fn logs(&self) -> Vec<PathBuf> {
        self.children
            .iter()
            .map(|c| c.log().to_path_buf())
            .collect()
    }

    /// Stops the controllers (before the API server they talk to), then the Git server.
    pub fn stop(&mut self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        process::stop_all(&self.children, STOP_GRACE);
        self.git.stop();
    }
}

impl Drop for Flux {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Flux's CRDs from the cached files, as its install does.
pub fn crds(bins: &FluxBinaries) -> Result<Vec<CustomResourceDefinition>, Error> {
    let mut all = Vec::new();
    for file in &bins.crds {
        all.extend(read_crds(file)?);
    }
    Ok(all)
}

fn read_crds(file: &Path) -> Result<Vec<CustomResourceDefinition>, Error> {
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
        what: format!("reading {}", file.display()),
        source,
    })?;
    crate::istio::parse_crds(&text).map_err(|e| Error::Other(format!("{}: {e}", file.display())))
}

async fn install_crds(client: &Client, bins: &FluxBinaries) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = crds(bins)?;
    let pp = PatchParams::apply(api::FIELD_MANAGER).force();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &Patch::Apply(crd))
            .await
            .map_err(|source| Error::Kube {
                what: format!("applying CRD {name}"),
                source,
            })?;
    }
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let established = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            READY_TIMEOUT,
            kube::runtime::wait::await_condition(api.clone(), &name, established),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: format!("CRD {name} (Established)"),
            after: READY_TIMEOUT,
            details: String::new(),
        })?
        .map_err(|e| Error::Other(format!("waiting for CRD {name}: {e}")))?;
    }
    Ok(())
}
