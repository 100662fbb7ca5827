//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics, so that of
//! several `serin controller --leader-elect` replicas exactly one writes.
//!
//! Why not kube-lease-manager: it renews with an unconditional patch, reports no loss while
//! renewals keep failing (it retries with backoff and the caller still believes it leads), and
//! notices a takeover only at its next renewal. serin needs a hard guarantee instead: every write
//! of the controller's client passes a [`WriteGate`] that is open only until
//! `start of the last successful renewal + renew deadline`. A candidate takes over only after it
//! has seen the same Lease record for a whole lease duration (measured on its own clock, as
//! client-go does), which is later than that, since `renew deadline < lease duration`. The
//! difference is the margin for requests already on the wire.
//!
//! Acquire and renew are a read and a `PUT` with the read's `resourceVersion`, so two candidates
//! can never both win the same record.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{debug, info, warn};

/// Flags of `serin controller --leader-elect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderOptions {
    pub namespace: String,
    /// Name of the Lease object.
    pub name: String,
    /// `holderIdentity` written into the Lease.
    pub identity: String,
    /// How long others wait, after the last renewal they saw, before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps writing without a successful renewal; then it stops.
    pub renew_deadline: Duration,
    /// Pause between acquire and renew attempts.
    pub retry_period: Duration,
}

/// Leader-election timings that would let two leaders overlap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("--leader-elect-lease-duration must be at least 1s")]
    LeaseTooShort,
    #[error(
        "--leader-elect-renew-deadline ({renew_deadline:?}) must be shorter than --leader-elect-lease-duration ({lease_duration:?})"
    )]
    RenewDeadline {
        renew_deadline: Duration,
        lease_duration: Duration,
    },
    #[error(
        "--leader-elect-retry-period ({retry_period:?}) must be above zero and shorter than --leader-elect-renew-deadline ({renew_deadline:?})"
    )]
    RetryPeriod {
        retry_period: Duration,
        renew_deadline: Duration,
    },
}

impl LeaderOptions {
    /// The timing rules client-go enforces; without them two leaders could overlap.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err(TimingError::LeaseTooShort);
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(TimingError::RenewDeadline {
                renew_deadline: self.renew_deadline,
                lease_duration: self.lease_duration,
            });
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(TimingError::RetryPeriod {
                retry_period: self.retry_period,
                renew_deadline: self.renew_deadline,
            });
        }
        Ok(())
    }
}

/// A flag value that is no duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadDuration {
    #[error("{0:?} is not a duration (examples: 15s, 500ms, 1m)")]
    NotANumber(String),
    #[error("{input:?}: unknown unit {unit:?} (use ms, s or m)")]
    UnknownUnit { input: String, unit: String },
    #[error("{input:?}: {source}")]
    OutOfRange {
        input: String,
        source: std::time::TryFromFloatSecsError,
    },
}

/// Parses `15s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, BadDuration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| BadDuration::NotANumber(s.to_string()))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => {
            return Err(BadDuration::UnknownUnit {
                input: s.to_string(),
                unit: unit.to_string(),
            });
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|source| BadDuration::OutOfRange {
        input: s.to_string(),
        source,
    })
}

/// `POD_NAMESPACE`, else the service account's namespace in a pod, else `default`.
pub fn default_namespace() -> String {
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return ns;
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// `POD_NAME` (unique per replica), else `hostname_pid`.
pub fn default_identity() -> String {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.is_empty()
    {
        return name;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "serin".into());
    format!("{host}_{}", std::process::id())
}

/// Whether the controller's client may write. Without leader election it is always open.
#[derive(Debug)]
pub struct WriteGate {
    fenced: bool,
    valid_until: Mutex<Option<Instant>>,
}

impl WriteGate {
    /// No leader election: writes are always allowed.
    pub fn open() -> Arc<Self> {
        Arc::new(WriteGate {
            fenced: false,
            valid_until: Mutex::new(None),
        })
    }

    /// Leader election: closed until the Lease is held.
    pub fn fenced() -> Arc<Self> {
        Arc::new(WriteGate {
            fenced: true,
            valid_until: Mutex::new(None),
        })
    }

    pub fn allows_writes(&self) -> bool {
        self.allows_writes_at(Instant::now())
    }

    fn allows_writes_at(&self, now: Instant) -> bool {
        if !self.fenced {
            return true;
        }
        let until = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|u| now < u)
    }

    fn extend(&self, until: Instant) {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    }

    fn close(&self) {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Who holds the Lease, as this candidate sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Nobody, or a holder whose record has not changed for its lease duration.
    Free,
    Me,
    /// Another candidate, by identity.
    Another(String),
}

/// The part of a record whose change proves the holder alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RecordKey {
    holder: Option<String>,
    renew: Option<String>,
    duration: Option<i32>,
    transitions: Option<i32>,
}

fn key_of(spec: &LeaseSpec) -> RecordKey {
    RecordKey {
        holder: spec.holder_identity.clone(),
        renew: spec.renew_time.as_ref().map(|t| t.0.to_string()),
        duration: spec.lease_duration_seconds,
        transitions: spec.lease_transitions,
    }
}

/// client-go's rule: a record held by another is expired once it has stayed the same for its
/// `leaseDurationSeconds` on our clock (never the holder's clock: nodes' clocks may disagree).
pub fn judge(
    spec: &LeaseSpec,
    me: &str,
    observed_at: Instant,
    now: Instant,
    fallback: Duration,
) -> Holder {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Holder::Free;
    }
    if holder == me {
        return Holder::Me;
    }
    let duration = spec
        .lease_duration_seconds
        .filter(|d| *d > 0)
        .map(|d| Duration::from_secs(d as u64))
        .unwrap_or(fallback);
    if now.duration_since(observed_at) < duration {
        Holder::Another(holder.to_string())
    } else {
        Holder::Free
    }
}

/// The record to write when `me` acquires or renews.
pub fn next_spec(current: &LeaseSpec, me: &str, now: Timestamp, duration: Duration) -> LeaseSpec {
    let renewing = current.holder_identity.as_deref() == Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
        acquire_time: if renewing {
            current.acquire_time.clone().or(Some(MicroTime(now)))
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if renewing {
            current.lease_transitions.unwrap_or(0)
        } else {
            current.lease_transitions.unwrap_or(0) + 1
        }),
        ..current.clone()
    }
}

/// Result of one acquire-or-renew attempt.
#[derive(Debug)]
enum Attempt {
    Leading,
    Another(String),
    Failed(String),
}

/// One candidate. Its client must not pass through the [`WriteGate`] (the Lease is how the gate
/// opens).
pub struct Elector {
    api: Api<Lease>,
    opts: LeaderOptions,
    observed: Option<(RecordKey, Instant)>,
    gate: Arc<WriteGate>,
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("the Lease {0} was taken over by {1}")]
    TakenOver(String, String),
    #[error("could not renew the Lease {0} within the renew deadline ({1:?}): {2}")]
    Deadline(String, Duration, String),
}

impl Elector {
    pub fn new(client: Client, opts: LeaderOptions, gate: Arc<WriteGate>) -> Self {
        Elector {
            api: Api::namespaced(client, &opts.namespace),
            opts,
            observed: None,
            gate,
        }
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.opts.namespace, self.opts.name)
    }

    async fn attempt(&mut self) -> Attempt {
        let lease = match self.api.get_opt(&self.opts.name).await {
            Ok(l) => l,
            Err(e) => return Attempt::Failed(format!("reading the Lease: {e}")),
        };
        let Some(lease) = lease else {
            let spec = next_spec(
                &LeaseSpec::default(),
                &self.opts.identity,
                Timestamp::now(),
                self.opts.lease_duration,
            );
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(self.opts.name.clone()),
                    namespace: Some(self.opts.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    lease_transitions: Some(0),
                    ..spec
                }),
            };
            return match self.api.create(&PostParams::default(), &new).await {
                Ok(_) => Attempt::Leading,
                Err(e) => Attempt::Failed(format!("creating the Lease: {e}")),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let now = Instant::now();
        let key = key_of(&spec);
        let observed_at = match &self.observed {
            Some((k, at)) if *k == key => *at,
            _ => {
                self.observed = Some((key, now));
                now
            }
        };
        match judge(
            &spec,
            &self.opts.identity,
            observed_at,
            now,
            self.opts.lease_duration,
        ) {
            Holder::Another(h) => return Attempt::Another(h),
            Holder::Me | Holder::Free => {}
        }
        let mut updated = lease.clone();
        updated.spec = Some(next_spec(
            &spec,
            &self.opts.identity,
            Timestamp::now(),
            self.opts.lease_duration,
        ));
        // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.opts.name, &PostParams::default(), &updated)
            .await
        {
            Ok(written) => {
                if let Some(s) = &written.spec {
                    self.observed = Some((key_of(s), Instant::now()));
                }
                Attempt::Leading
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Attempt::Failed("another candidate wrote the Lease first".into())
            }
            Err(e) => Attempt::Failed(format!("writing the Lease: {e}")),
        }
    }

    /// Returns once this process holds the Lease, with the write gate open.
    pub async fn acquire(&mut self) {
        let mut last_holder = None;
        loop {
            let start = Instant::now();
            match self.attempt().await {
                Attempt::Leading => {
                    self.gate.extend(start + self.opts.renew_deadline);
                    info!(
                        lease = %self.lease_ref(),
                        identity = %self.opts.identity,
                        "became the leader"
                    );
                    return;
                }
                Attempt::Another(h) => {
                    if last_holder.as_ref() != Some(&h) {
                        info!(lease = %self.lease_ref(), holder = %h, "standing by: the Lease is held by another");
                        last_holder = Some(h);
                    }
                }
                Attempt::Failed(e) => debug!(lease = %self.lease_ref(), "acquiring: {e}"),
            }
            tokio::time::sleep(jittered(self.opts.retry_period)).await;
        }
    }

    /// Renews every retry period while leading; returns (with the gate closed) when leadership is
    /// lost. The gate closes by itself at the renew deadline even if this task is starved.
    pub async fn hold(&mut self) -> Lost {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.opts.retry_period).await;
            let start = Instant::now();
            let deadline = last_ok + self.opts.renew_deadline;
            let left = deadline.saturating_duration_since(start);
            let outcome = match tokio::time::timeout(left, self.attempt()).await {
                Ok(a) => a,
                Err(_) => Attempt::Failed("the renewal request did not answer in time".into()),
            };
            match outcome {
                Attempt::Leading => {
                    self.gate.extend(start + self.opts.renew_deadline);
                    last_ok = start;
                }
                Attempt::Another(h) => {
                    self.gate.close();
                    return Lost::TakenOver(self.lease_ref(), h);
                }
                Attempt::Failed(e) => {
                    if Instant::now() >= deadline {
                        self.gate.close();
                        return Lost::Deadline(self.lease_ref(), self.opts.renew_deadline, e);
                    }
                    warn!(lease = %self.lease_ref(), "renewing the Lease failed, retrying: {e}");
                }
            }
        }
    }

    /// Hands the Lease over at a clean stop so that a standby takes over at once instead of
    /// after a lease duration. Only call once the controller has stopped writing.
    pub async fn release(&mut self) {
        self.gate.close();
        let Ok(Some(mut lease)) = self.api.get_opt(&self.opts.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.opts.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.opts.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.lease_ref(), "released the Lease"),
            Err(e) => warn!(lease = %self.lease_ref(), "releasing the Lease: {e}"),
        }
    }
}

/// Up to 20% more, so that candidates started together do not ask in lockstep.
fn jittered(d: Duration) -> Duration {
    use std::hash::BuildHasher;
    let r = std::hash::RandomState::new().hash_one(std::time::SystemTime::now()) % 1000;
    d + d.mul_f64(r as f64 / 5000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn another_holder_is_respected_until_its_record_is_stale_on_our_clock() {
        let t0 = Instant::now();
        let s = spec(Some("b"), 4);
        let fb = Duration::from_secs(15);
        assert_eq!(
            judge(&s, "a", t0, t0 + Duration::from_millis(3999), fb),
            Holder::Another("b".into())
        );
        assert_eq!(
            judge(&s, "a", t0, t0 + Duration::from_secs(4), fb),
            Holder::Free
        );
        assert_eq!(judge(&s, "b", t0, t0, fb), Holder::Me);
        assert_eq!(judge(&spec(None, 4), "a", t0, t0, fb), Holder::Free);
        assert_eq!(judge(&spec(Some(""), 4), "a", t0, t0, fb), Holder::Free);
        // A record without a duration falls back to ours.
        let mut s = spec(Some("b"), 0);
        s.lease_duration_seconds = None;
        assert_eq!(
            judge(&s, "a", t0, t0 + Duration::from_secs(14), fb),
            Holder::Another("b".into())
        );
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions_taking_over_counts_one() {
        let now = Timestamp::from_second(1_000).unwrap();
        let mine = LeaseSpec {
            acquire_time: Some(MicroTime(Timestamp::from_second(10).unwrap())),
            ..spec(Some("a"), 4)
        };
        let renewed = next_spec(&mine, "a", now, Duration::from_secs(4));
        assert_eq!(renewed.acquire_time, mine.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        let taken = next_spec(&spec(Some("b"), 4), "a", now, Duration::from_secs(15));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.lease_duration_seconds, Some(15));
    }

    #[test]
    fn the_gate_closes_at_the_deadline_by_itself() {
        let gate = WriteGate::fenced();
        assert!(!gate.allows_writes());
        let t0 = Instant::now();
        gate.extend(t0 + Duration::from_secs(3));
        assert!(gate.allows_writes_at(t0 + Duration::from_millis(2999)));
        assert!(!gate.allows_writes_at(t0 + Duration::from_secs(3)));
        gate.close();
        assert!(!gate.allows_writes_at(t0));
        assert!(WriteGate::open().allows_writes());
    }

    #[test]
    fn durations_parse_like_the_flags_document() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("4"), Ok(Duration::from_secs(4)));
        assert!(parse_duration("4h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn timing_rules() {
        let ok = LeaderOptions {
            namespace: "ns".into(),
            name: "serin-leader".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        assert!(ok.validate().is_ok());
        let bad = LeaderOptions {
            renew_deadline: Duration::from_secs(15),
            ..ok.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("renew-deadline")
        );
        let bad = LeaderOptions {
            retry_period: Duration::from_secs(10),
            ..ok
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("retry-period")
        );
    }
}
