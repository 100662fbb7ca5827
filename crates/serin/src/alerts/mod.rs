//! Chat alerts (docs/flagger-contract.md §7): what the rollout core puts in `Plan.alerts` goes to
//! the Canary's `analysis.alerts[]` providers, or to the global notifier of the controller flags
//! when that list is empty.
//!
//! Delivery runs in its own task: a slow, failing or misconfigured chat service never blocks or
//! fails the analysis. Failures are logged and counted in `serin_alert_deliveries_total`.

pub mod payload;
mod resolve;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;
use tracing::{info, warn};

use crate::api::{AlertProviderType, AlertSeverity, Canary};
use crate::rollout::{Alert, Settings, Severity, Strategy};
use crate::telemetry::{AlertDeliveryLabels, Metrics};

pub use payload::Message;

/// Flagger's notification timeout.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a failed answer's body ends up in the log.
const BODY_LIMIT: usize = 512;

/// One name/value line of an alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

fn field(name: &str, value: impl Into<String>) -> Field {
    Field {
        name: name.into(),
        value: value.into(),
    }
}

/// Whether an `analysis.alerts[]` entry of severity `entry` receives an alert of `alert`:
/// info gets everything, warn gets warn and error, error only error. Flagger sends nothing to an
/// empty severity; serin treats it as info, as Flagger's docs say ([`crate::api::CanaryAlert::severity`]).
pub fn accepts(entry: AlertSeverity, alert: Severity) -> bool {
    match entry {
        AlertSeverity::Unset | AlertSeverity::Info => true,
        AlertSeverity::Warn => alert >= Severity::Warn,
        AlertSeverity::Error => alert == Severity::Error,
    }
}

/// The fields of an alert: "Cluster" when the controller has a cluster name, then Flagger's
/// metadata fields when the alert asks for them.
pub fn fields(cluster: Option<&str>, s: &Settings, with_metadata: bool) -> Vec<Field> {
    let mut out = Vec::new();
    if let Some(c) = cluster.filter(|c| !c.is_empty()) {
        out.push(field("Cluster", c));
    }
    if with_metadata {
        out.push(field("Target", format!("{}/{}", s.kind, s.target)));
        out.push(field("Failed checks threshold", s.threshold.to_string()));
        out.push(field(
            "Progress deadline",
            format!("{}s", s.progress_deadline.as_secs()),
        ));
        if let Some(r) = traffic_routing(s) {
            out.push(field("Traffic routing", r));
        }
    }
    out
}

/// Flagger's order: step weight, step weights, A/B, Blue/Green.
fn traffic_routing(s: &Settings) -> Option<String> {
    if s.step_weight > 0 {
        Some(format!(
            "Weight step: {} max: {}",
            s.step_weight, s.max_weight
        ))
    } else if !s.step_weights.is_empty() {
        let steps: Vec<String> = s.step_weights.iter().map(u32::to_string).collect();
        Some(format!(
            "Weight steps: {} max: {}",
            steps.join(","),
            s.max_weight
        ))
    } else {
        match s.strategy {
            Strategy::ABTesting => Some("A/B Testing".into()),
            Strategy::BlueGreen => Some("Blue/Green".into()),
            Strategy::Canary => None,
        }
    }
}

/// Where one alert goes, resolved from an AlertProvider or from the global flags.
#[derive(Clone, PartialEq, Eq)]
pub struct Destination {
    pub kind: AlertProviderType,
    pub address: String,
    /// Sent as `Authorization: Bearer` (a Slack bot token).
    pub token: Option<String>,
    pub proxy: Option<String>,
    pub channel: String,
    pub username: String,
    /// For logs and Events: `AlertProvider <ns>/<name>` or `--slack-url`.
    pub origin: String,
}

impl std::fmt::Debug for Destination {
    /// Without the address and token: webhook URLs are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .field("channel", &self.channel)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The global notifier of `serin controller`, used when a Canary has no `analysis.alerts`.
/// Teams wins over Slack when both are set, as in Flagger.
#[derive(clap::Args, Clone, Default, PartialEq, Eq)]
pub struct GlobalArgs {
    /// Slack incoming-webhook (or chat.postMessage) URL for Canaries without analysis.alerts.
    #[arg(long, env = "SLACK_URL", hide_env_values = true)]
    pub slack_url: Option<String>,
    /// Slack bot token, sent as a Bearer token.
    #[arg(long, env = "SLACK_TOKEN", hide_env_values = true)]
    pub slack_token: Option<String>,
    /// Slack channel (default "general").
    #[arg(long, env = "SLACK_CHANNEL")]
    pub slack_channel: Option<String>,
    /// Slack user name (default "flagger").
    #[arg(long, env = "SLACK_USER")]
    pub slack_user: Option<String>,
    /// HTTP(S) proxy for Slack.
    #[arg(long, env = "SLACK_PROXY_URL")]
    pub slack_proxy_url: Option<String>,
    /// MS Teams incoming-webhook URL (wins over --slack-url).
    #[arg(long, env = "MSTEAMS_URL", hide_env_values = true)]
    pub msteams_url: Option<String>,
    /// HTTP(S) proxy for MS Teams.
    #[arg(long, env = "MSTEAMS_PROXY_URL")]
    pub msteams_proxy_url: Option<String>,
    /// Cluster name, added to every alert as the "Cluster" field.
    #[arg(long, env = "CLUSTER_NAME")]
    pub cluster_name: Option<String>,
}

impl std::fmt::Debug for GlobalArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalArgs")
            .field("slack_url", &self.slack_url.as_ref().map(|_| "<set>"))
            .field("slack_channel", &self.slack_channel)
            .field("msteams_url", &self.msteams_url.as_ref().map(|_| "<set>"))
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

impl GlobalArgs {
    pub fn destination(&self) -> Option<Destination> {
        let channel = non_empty(&self.slack_channel).unwrap_or_else(|| "general".into());
        let username = non_empty(&self.slack_user).unwrap_or_else(|| "flagger".into());
        if let Some(address) = non_empty(&self.msteams_url) {
            return Some(Destination {
                kind: AlertProviderType::Msteams,
                address,
                token: None,
                proxy: non_empty(&self.msteams_proxy_url),
                channel,
                username,
                origin: "--msteams-url".into(),
            });
        }
        non_empty(&self.slack_url).map(|address| Destination {
            kind: AlertProviderType::Slack,
            address,
            token: non_empty(&self.slack_token),
            proxy: non_empty(&self.slack_proxy_url),
            channel,
            username,
            origin: "--slack-url".into(),
        })
    }
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("invalid address: {0}")]
    Address(payload::InvalidUrl),
    #[error("proxy {proxy}: {error}")]
    Proxy { proxy: String, error: String },
    #[error("sending notification failed: {0}")]
    Transport(String),
    #[error("sending notification bad response {code}: {body}")]
    BadResponse { code: u16, body: String },
    #[error("sending notification failed: Slack answered ok=false: {0}")]
    Slack(String),
}

/// POSTs one alert. Anything but 2xx is an error carrying the status and the (trimmed) body.
pub async fn send(
    client: &reqwest::Client,
    dest: &Destination,
    m: &Message,
) -> Result<(), DeliveryError> {
    let url = payload::url(dest.kind, &dest.address).map_err(DeliveryError::Address)?;
    let body = payload::body(dest.kind, &dest.channel, &dest.username, m);
    let mut req = client.post(url).timeout(TIMEOUT).json(&body);
    if let Some(t) = &dest.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| {
        // Without the URL (a credential); reqwest's Display hides the cause, the source says why.
        let e = e.without_url();
        let mut text = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            text = format!("{text}: {s}");
            src = s.source();
        }
        DeliveryError::Transport(text)
    })?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
        // Slack's Web API (chat.postMessage with a bot token) answers 200 with `"ok": false` on
        // errors such as `channel_not_found`; incoming webhooks answer a plain "ok".
        if dest.kind == AlertProviderType::Slack
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v.get("ok") == Some(&serde_json::Value::Bool(false))
        {
            let error = v.get("error").and_then(|e| e.as_str()).unwrap_or("unknown");
            return Err(DeliveryError::Slack(error.to_string()));
        }
        return Ok(());
    }
    let mut body = text.trim().to_string();
    if body.len() > BODY_LIMIT {
        let mut cut = BODY_LIMIT;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push('…');
    }
    Err(DeliveryError::BadResponse {
        code: status.as_u16(),
        body,
    })
}

/// What reconciles share for alerting: the global notifier, the HTTP clients and the counter.
pub struct Alerter {
    global: Option<Destination>,
    cluster: Option<String>,
    http: reqwest::Client,
    /// One client per proxy URL; alerts without a proxy use the shared client.
    proxied: Mutex<HashMap<String, reqwest::Client>>,
    metrics: Arc<Metrics>,
}

impl Alerter {
    pub fn new(args: &GlobalArgs, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        let global = args.destination();
        match &global {
            Some(d) => info!(
                "alerts for Canaries without analysis.alerts go to {} ({})",
                d.kind.as_str(),
                d.origin
            ),
            None => info!("no global notifier (--slack-url / --msteams-url unset)"),
        }
        Alerter {
            global,
            cluster: non_empty(&args.cluster_name),
            http,
            proxied: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn client_for(&self, proxy: Option<&str>) -> Result<reqwest::Client, DeliveryError> {
        let Some(p) = proxy else {
            return Ok(self.http.clone());
        };
        let err = |e: reqwest::Error| DeliveryError::Proxy {
            proxy: p.to_string(),
            error: e.to_string(),
        };
        let mut cache = self.proxied.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(p) {
            return Ok(c.clone());
        }
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(p).map_err(err)?)
            .build()
            .map_err(err)?;
        cache.insert(p.to_string(), client.clone());
        Ok(client)
    }

    /// Sends one alert of the rollout core to every destination that takes it. Returns the
    /// problems a user must fix (missing provider or secret, ...), for Warning Events; delivery
    /// itself happens in the background.
    pub async fn dispatch(
        &self,
        client: &kube::Client,
        secrets: &Store<Secret>,
        canary: &Canary,
        settings: &Settings,
        alert: &Alert,
    ) -> Vec<String> {
        let namespace = canary.metadata.namespace.clone().unwrap_or_default();
        let message = Message {
            canary: canary.metadata.name.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            text: alert.message.clone(),
            severity: alert.severity,
            fields: fields(self.cluster.as_deref(), settings, alert.with_metadata),
        };
        let entries = canary
            .spec
            .analysis()
            .map(|a| a.alerts.as_slice())
            .unwrap_or_default();
        let mut problems = Vec::new();
        if entries.is_empty() {
            if let Some(d) = &self.global {
                self.spawn(d.clone(), message);
            }
            return problems;
        }
        for (i, entry) in entries.iter().enumerate() {
            if !accepts(entry.severity(), alert.severity) {
                continue;
            }
            match resolve::destination(client, secrets, &namespace, i, entry).await {
                Ok(d) => self.spawn(d, message.clone()),
                Err(p) => problems.push(p.to_string()),
            }
        }
        problems
    }

    /// Delivers in a task of its own; the outcome is logged and counted.
    pub fn spawn(&self, dest: Destination, m: Message) {
        let client = self.client_for(dest.proxy.as_deref());
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let result = match client {
                Ok(c) => send(&c, &dest, &m).await,
                Err(e) => Err(e),
            };
            let outcome = match &result {
                Ok(()) => {
                    info!(canary = %m.qualified(), provider = dest.kind.as_str(), origin = %dest.origin, "alert sent: {}", m.text);
                    "success"
                }
                Err(e) => {
                    warn!(canary = %m.qualified(), provider = dest.kind.as_str(), origin = %dest.origin, "alert can't be sent: {e}");
                    "failure"
                }
            };
            metrics
                .alert_deliveries
                .get_or_create(&AlertDeliveryLabels {
                    provider: dest.kind.as_str().into(),
                    outcome: outcome.into(),
                })
                .inc();
        });
    }
}
