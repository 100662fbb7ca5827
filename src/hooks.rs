//! Webhook calls and their payloads (flagger-compat.md §6.1).
//!
//! This is the first cut the rollout engine needs: one POST per hook with Flagger's payload, the
//! per-hook timeout, `disableTLS`, and success meaning a status of at most 202. Retries with
//! backoff, event webhooks and the gate bookkeeping come with the webhooks issue.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::api::CanaryWebhook;

/// The JSON body Flagger sends to every webhook.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Payload {
    pub name: String,
    pub namespace: String,
    pub phase: String,
    pub checksum: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Calls one webhook. `Ok` on a status up to 202; `Err` carries the trimmed response body (or the
/// transport error), which ends up in the "Halt ... failed <err>" event.
pub async fn call(
    http: &reqwest::Client,
    insecure: &reqwest::Client,
    hook: &CanaryWebhook,
    payload: &Payload,
) -> Result<(), String> {
    let client = if hook.disable_tls() { insecure } else { http };
    let body = Payload {
        metadata: hook.metadata.clone(),
        ..payload.clone()
    };
    let timeout: Duration = hook.timeout();
    let resp = client
        .post(&hook.url)
        .timeout(timeout)
        .json(&body)
        .send()
        .await
        .map_err(|e| transport_error(&hook.url, &e))?;
    let status = resp.status();
    if status.as_u16() <= 202 && status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let text = text.trim();
    Err(if text.is_empty() {
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim()
        .to_string()
    } else {
        text.chars().take(512).collect()
    })
}

fn transport_error(url: &str, e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = format!("POST {url}: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

/// Flagger's webhook checksum: a hash of the tracked configs and the last applied spec, so a
/// receiver can tell revisions apart.
pub fn checksum(last_applied: Option<&str>, tracked: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::json!({ "TrackedConfigs": tracked, "LastAppliedSpec": last_applied.unwrap_or("") });
    let digest = Sha256::digest(json.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
