//! Flagger itself, the reference serin is measured against: built at a pinned release by
//! `serin-sandbox setup --with-flagger` (or on first use, [`crate::setup::flux::ensure_flagger`]),
//! run against a sandbox's API server and Prometheus with `-mesh-provider=istio`, scoped to one
//! namespace, so that it and serin never act on the same Canary.
//!
//! Flagger's CRD is the one its release ships ([`install_crd`]): users switching to serin keep
//! the CRD their Helm chart installed, so comparisons run under that schema.
//!
//! Flagger has no listen-address flag: its HTTP server (`/healthz`, `/metrics`) binds the given
//! port on every interface (`":" + port`). The sandbox gives it a free port and never calls it
//! from elsewhere than loopback.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::process::{self, Supervised};
use crate::setup::flux::FlaggerBinaries;

/// The field manager Flagger's CRD is applied with: as Helm would own it.
pub const CRD_MANAGER: &str = "helm";

/// Applies Flagger's CRDs (Canary, MetricTemplate, AlertProvider) over whatever schema the
/// cluster has for them, and waits until they are served.
pub async fn install_crd(client: &Client, bins: &FlaggerBinaries) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(&bins.crd)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", bins.crd.display()))?;
    let crds = crate::istio::parse_crds(&text)?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(CRD_MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .map_err(|e| anyhow::anyhow!("applying Flagger's CRD {name}: {e}"))?;
        names.push(name);
    }
    for name in &names {
        let established = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(60),
            kube::runtime::wait::await_condition(api.clone(), name, established),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Flagger's CRD {name} was not established within 60 s"))??;
    }
    Ok(names)
}

/// A running Flagger; stopped when dropped.
pub struct Flagger {
    child: Supervised,
    stopping: Arc<AtomicBool>,
    port: u16,
}

/// Where and what Flagger runs against.
pub struct FlaggerOptions<'a> {
    pub kubeconfig: &'a Path,
    pub prometheus: &'a str,
    /// The one namespace it watches (`-namespace`).
    pub namespace: &'a str,
    pub log: &'a Path,
}

impl Flagger {
    /// Starts `flagger -mesh-provider=istio` and waits for its `/healthz`.
    pub async fn start(bins: &FlaggerBinaries, opts: FlaggerOptions<'_>) -> anyhow::Result<Self> {
        let port = crate::free_ports(1)?
            .first()
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no free port"))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let args = vec![
            format!("-kubeconfig={}", opts.kubeconfig.display()),
            "-mesh-provider=istio".to_string(),
            format!("-metrics-server={}", opts.prometheus),
            format!("-namespace={}", opts.namespace),
            format!("-port={port}"),
            "-log-level=info".to_string(),
            "-zap-encoding=console".to_string(),
        ];
        let name = "flagger".to_string();
        let child = Supervised::spawn(
            &name,
            &bins.flagger,
            &args,
            opts.log,
            stopping.clone(),
            Box::new(move |exit| tracing::error!("{exit}")),
        )?;
        let flagger = Flagger {
            child,
            stopping,
            port,
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://127.0.0.1:{port}/healthz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "Flagger did not answer {url} within 60 s; last lines of {}:\n{}",
                    opts.log.display(),
                    process::tail(opts.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(flagger)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    pub fn log(&self) -> &Path {
        self.child.log()
    }

    pub fn stop(&mut self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            process::stop_all(std::slice::from_ref(&self.child), Duration::from_secs(5));
        }
    }
}

impl Drop for Flagger {
    fn drop(&mut self) {
        self.stop();
    }
}
