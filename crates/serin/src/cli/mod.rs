//! `serin get|status|promote|abort|pause|resume|retry`: the commands for people.
//!
//! Requests go through the API server as annotations on the Canary, written by server-side apply
//! with the field manager `serin-cli`; the controller carries them out and answers in the status
//! (see [`crate::rollout::request`]). A GitOps re-apply with another field manager that never
//! listed these annotations leaves them in place (Flagger
//! [#1814](https://github.com/fluxcd/flagger/issues/1814),
//! [#724](https://github.com/fluxcd/flagger/issues/724)).

pub mod backtest;
pub mod get;
pub mod identity;
pub mod plan;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::api::{self, Canary};
use crate::rollout::Verb;
use crate::rollout::request::{
    CLI_FIELD_MANAGER, REQUEST_ANNOTATION, REQUESTED_AT_ANNOTATION, REQUESTED_BY_ANNOTATION,
};

/// Where to find the cluster and which namespace to use.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or in-cluster.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace; default: the kubeconfig context's namespace, else `default`.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// A client, the namespace to use, and the kubeconfig it came from (for the user's identity).
pub struct Session {
    pub client: Client,
    pub namespace: String,
    pub kubeconfig: Option<Kubeconfig>,
    /// The kubeconfig context in use, if any.
    pub context: Option<String>,
}

pub async fn connect(args: &ClusterArgs) -> anyhow::Result<Session> {
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Some(
            Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => Kubeconfig::read().ok(),
    };
    let config = match &kubeconfig {
        Some(kc) => Config::from_custom_kubeconfig(kc.clone(), &KubeConfigOptions::default())
            .await
            .context("loading the kubeconfig")?,
        None => Config::infer().await.context("finding a cluster")?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let context = kubeconfig
        .as_ref()
        .and_then(|kc| kc.current_context.clone());
    Ok(Session {
        client: Client::try_from(config)?,
        namespace,
        kubeconfig,
        context,
    })
}

impl Session {
    pub fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Canary with serin's status additions, wherever the CRD let serin keep them.
    pub async fn canary(&self, name: &str) -> anyhow::Result<Canary> {
        self.canaries()
            .get_opt(name)
            .await?
            .map(Canary::with_stored_additions)
            .ok_or_else(|| anyhow!("canary {}/{name} not found", self.namespace))
    }

    /// The Events on one Canary, oldest first.
    pub async fn events(&self, name: &str) -> anyhow::Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind=Canary,involvedObject.name={name}"
        ));
        let mut events = api.list(&lp).await?.items;
        events.sort_by_key(event_order);
        Ok(events)
    }
}

/// Order of Events: by when they last happened, then, within the same second (timestamps have
/// second precision), by the order the API server stored them.
pub fn event_order(e: &Event) -> (Option<chrono::DateTime<chrono::Utc>>, u64) {
    let rv = e
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (event_time(e), rv)
}

/// When an Event last happened (lastTimestamp, else eventTime, else firstTimestamp).
pub fn event_time(e: &Event) -> Option<chrono::DateTime<chrono::Utc>> {
    use crate::controller::state::to_chrono;
    e.last_timestamp
        .as_ref()
        .map(to_chrono)
        .or_else(|| {
            e.event_time
                .as_ref()
                .map(|t| to_chrono(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.0)))
        })
        .or_else(|| e.first_timestamp.as_ref().map(to_chrono))
}

/// Kubectl-style age: 45s, 12m, 3h, 5d.
pub fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Records a request on the Canary and waits for the controller's answer. Returns the exit code:
/// 0 carried out, 1 refused or not answered within `timeout`.
pub async fn request(
    session: &Session,
    name: &str,
    verb: Verb,
    timeout: Duration,
) -> anyhow::Result<u8> {
    let api = session.canaries();
    session.canary(name).await?;
    let who = identity::whoami(session).await;
    let id = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let patch = json!({
        "apiVersion": api::API_VERSION,
        "kind": "Canary",
        "metadata": {
            "name": name,
            "annotations": {
                REQUEST_ANNOTATION: verb.as_str(),
                REQUESTED_BY_ANNOTATION: who.name,
                REQUESTED_AT_ANNOTATION: id,
            }
        }
    });
    api.patch(
        name,
        &PatchParams::apply(CLI_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .with_context(|| {
        format!(
            "recording the request on canary {}/{name}",
            session.namespace
        )
    })?;
    println!(
        "{} requested for canary {}/{name} by {} ({})",
        verb.as_str(),
        session.namespace,
        who.name,
        who.source
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let c = api.get(name).await?;
        let answer = c
            .status
            .as_ref()
            .and_then(|s| s.serin_progress.as_ref())
            .and_then(|p| p.request.as_ref())
            .filter(|r| r.id == id);
        if let Some(r) = answer {
            println!("{}", r.message);
            return Ok(if r.accepted { 0 } else { 1 });
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "no answer from serin within {}s; the request stays on the Canary and is carried out when the controller sees it (is `serin controller` running?)",
                timeout.as_secs()
            );
            return Ok(1);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
