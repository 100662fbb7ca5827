//! Webhook calls and their payloads (docs/flagger-contract.md §6.1).
//!
//! One call is a POST of Flagger's JSON payload; a status of at most 202 is success. `retries`
//! repeats an attempt that could succeed next time (no answer, 5xx except 501, 429) with
//! go-retryablehttp's backoff (1 s doubling up to 30 s, or the server's `Retry-After`). Unlike
//! Flagger, a call is bounded: no attempt starts more than [`RetryPolicy::budget`] after the first
//! one and at most [`RetryPolicy::max_retries`] retries are made, so a gate, a pre-rollout check
//! or a rollback check can hold one reconcile for at most the budget plus one timeout. And the
//! response body survives the last retry, so the "Halt ... failed <err>" Event shows why.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

/// The payload for `hook`: the canary's fields with the hook's own metadata.
pub fn hook_payload(base: &Payload, hook: &CanaryWebhook) -> Payload {
    Payload {
        metadata: hook.metadata.clone(),
        ..base.clone()
    }
}

/// The payload of an `event` hook: the hook's metadata under `eventMessage`, `eventType`
/// (`Normal`/`Warning`) and `timestamp` (Unix milliseconds as a string), which the user's keys
/// cannot override.
pub fn event_payload(
    base: &Payload,
    hook: &CanaryWebhook,
    message: &str,
    warning: bool,
    unix_ms: i64,
) -> Payload {
    let mut metadata = hook.metadata.clone();
    metadata.insert("eventMessage".into(), message.into());
    metadata.insert(
        "eventType".into(),
        if warning { "Warning" } else { "Normal" }.into(),
    );
    metadata.insert("timestamp".into(), unix_ms.to_string());
    Payload {
        metadata,
        ..base.clone()
    }
}

/// Where an Event goes: the Canary's own `event` webhooks, or else the global `--event-webhook`
/// as a hook named `events` (Flagger's `sendEventToWebhook`: the Canary's hooks override it).
pub fn event_targets(own: Vec<CanaryWebhook>, global: Option<&str>) -> Vec<CanaryWebhook> {
    match global {
        Some(url) if own.is_empty() => vec![CanaryWebhook {
            name: "events".into(),
            type_: Some(crate::api::HookType::Event),
            url: url.into(),
            ..Default::default()
        }],
        _ => own,
    }
}

/// How retries are paced and bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First wait; it doubles per retry (go-retryablehttp's `RetryWaitMin`).
    pub wait_min: Duration,
    /// Longest wait, also for a server's `Retry-After` (`RetryWaitMax`).
    pub wait_max: Duration,
    /// No attempt starts later than this after the first one.
    pub budget: Duration,
    /// `retries` above this are treated as this.
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            wait_min: Duration::from_secs(1),
            wait_max: Duration::from_secs(30),
            budget: Duration::from_secs(120),
            max_retries: 10,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based): `wait_min * 2^retry`, or the server's
    /// `Retry-After`, at most `wait_max`.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let wait = match retry_after {
            Some(d) => d,
            None => self
                .wait_min
                .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
                .unwrap_or(self.wait_max),
        };
        wait.min(self.wait_max)
    }
}

/// How a call ended, for `serin_webhook_calls_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with a status of at most 202.
    Success,
    /// Answered with another status.
    Failure,
    /// No answer: connection refused, timeout, TLS, a malformed URL.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
        }
    }
}

/// A failed call: the text goes into Flagger's "... failed <err>" Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub outcome: Outcome,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why an attempt got no answer, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The request could not be built (a malformed URL): retrying cannot help.
    Invalid,
    /// Too many redirects.
    Redirects,
    /// The server's certificate was refused: retrying cannot help.
    Certificate,
    /// Connection refused or reset, DNS, timeout: may work next time.
    Transient,
}

/// What one attempt got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Answered {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    NoAnswer {
        kind: Transport,
        message: String,
    },
}

impl Attempt {
    fn succeeded(&self) -> bool {
        matches!(self, Attempt::Answered { status, .. } if (200..=202).contains(status))
    }

    /// go-retryablehttp's default policy: no answer (unless it cannot get better), 5xx other
    /// than 501, and 429.
    pub fn retryable(&self) -> bool {
        match self {
            Attempt::Answered { status, .. } => {
                *status == 429 || (*status >= 500 && *status != 501)
            }
            Attempt::NoAnswer { kind, .. } => *kind == Transport::Transient,
        }
    }
}

/// The longest part of a response body that goes into an Event.
const BODY_LIMIT: usize = 512;

/// The error text of a final attempt: the trimmed body, or the status when the body is empty.
fn error_of(attempt: Attempt, attempts: u32) -> CallError {
    let (outcome, mut message) = match attempt {
        Attempt::Answered { status, body, .. } => {
            let body = body.trim();
            let text = if body.is_empty() {
                let reason = reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                format!("{status} {reason}").trim().to_string()
            } else {
                body.chars().take(BODY_LIMIT).collect()
            };
            (Outcome::Failure, text)
        }
        Attempt::NoAnswer { message, .. } => (Outcome::Error, message),
    };
    if attempts > 1 {
        message.push_str(&format!(" (giving up after {attempts} attempts)"));
    }
    CallError { outcome, message }
}

/// Calls one webhook with its timeout, TLS setting and retries. `Ok` on a status up to 202.
pub async fn call(
    http: &reqwest::Client,
    insecure: &reqwest::Client,
    hook: &CanaryWebhook,
    payload: &Payload,
) -> Result<(), CallError> {
    call_with(http, insecure, hook, payload, RetryPolicy::default()).await
}

/// The shared client, and the one for `disableTLS` hooks that skips certificate checks. Built
/// once, so that every call reuses their connection pools.
pub fn clients() -> Result<(reqwest::Client, reqwest::Client), reqwest::Error> {
    let http = reqwest::Client::builder().build()?;
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()?;
    Ok((http, insecure))
}

pub async fn call_with(
    http: &reqwest::Client,
    insecure: &reqwest::Client,
    hook: &CanaryWebhook,
    payload: &Payload,
    policy: RetryPolicy,
) -> Result<(), CallError> {
    let client = if hook.disable_tls() { insecure } else { http };
    let retries = (hook.retries().max(0) as u32).min(policy.max_retries);
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        let attempt = attempt(client, &hook.url, hook.timeout(), payload).await;
        attempts += 1;
        if attempt.succeeded() {
            return Ok(());
        }
        if !attempt.retryable() || attempts > retries {
            return Err(error_of(attempt, attempts));
        }
        let retry_after = match &attempt {
            Attempt::Answered { retry_after, .. } => *retry_after,
            Attempt::NoAnswer { .. } => None,
        };
        let wait = policy.backoff(attempts - 1, retry_after);
        if start.elapsed() + wait > policy.budget {
            return Err(error_of(attempt, attempts));
        }
        tracing::debug!(url = %hook.url, attempt = attempts, "webhook retry in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

async fn attempt(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    payload: &Payload,
) -> Attempt {
    let resp = match client.post(url).timeout(timeout).json(payload).send().await {
        Ok(r) => r,
        Err(e) => return no_answer(url, &e),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // A body cut off by the timeout still tells the status.
    let body = resp.text().await.unwrap_or_default();
    Attempt::Answered {
        status,
        body,
        retry_after,
    }
}

fn no_answer(url: &str, e: &reqwest::Error) -> Attempt {
    use std::error::Error as _;
    let mut message = format!("POST {url}: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !message.contains(&t) {
            message.push_str(": ");
            message.push_str(&t);
        }
        src = s.source();
    }
    let kind = if e.is_builder() {
        Transport::Invalid
    } else if e.is_redirect() {
        Transport::Redirects
    } else if message.to_ascii_lowercase().contains("certificate") {
        Transport::Certificate
    } else {
        Transport::Transient
    };
    Attempt::NoAnswer { kind, message }
}

/// Flagger's webhook checksum: a hash of the tracked configs and the last applied spec, so a
/// receiver can tell revisions apart.
pub fn checksum(last_applied: Option<&str>, tracked: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::json!({ "TrackedConfigs": tracked, "LastAppliedSpec": last_applied.unwrap_or("") });
    let digest = Sha256::digest(json.to_string().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
