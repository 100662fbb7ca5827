//! `serin-sandbox chaos`: serin under what clusters do to controllers, with the outcome checked.
//!
//! One private sandbox with real Flux runs N releases of a few apps (good ones and faulty ones,
//! the mesh simulator's `serin.dev/simulate` annotation making a release answer 500s or answer
//! slowly), each a Git commit that kustomize-controller applies, while faults are injected at
//! random moments drawn from a printed seed: SIGKILL of every controller replica or of the leader
//! alone (two replicas with leader election), an API server kill and restart, Prometheus frozen
//! and resumed, event-webhook and alert receivers that refuse, hang or answer 500, bursts of Flux
//! reconciliations on top of a 5 s interval, and bursts of malformed Canaries in other namespaces.
//!
//! Invariants are polled every 200 ms while it runs, not only judged at the end, because the
//! dangerous states (traffic on a canary with no pods, a faulty revision on the primary) can be
//! transient and a final snapshot would not see them. Each violation is attributed to the faults
//! injected in the 30 s before it, so the table says which fault broke what.
//!
//! Faults are kept within what a correct controller must ride out without changing an outcome:
//! outages shorter than the analysis' failure budget (`threshold` × `interval`), and webhooks that
//! do not gate (event webhooks and alerts), since a gating webhook that fails is *supposed* to
//! roll a good release back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::flux::api::Kind;
use crate::process::Supervised;
use crate::{Sandbox, SandboxOptions, mesh};

/// The namespace of the apps under test.
pub const NAMESPACE: &str = "chaos";
/// Prefix of the namespaces the malformed Canaries go to.
const BAD_PREFIX: &str = "chaos-bad-";
const LEASE: &str = "serin-leader";
const REPLICAS: [&str; 2] = ["serin-a", "serin-b"];
const GIT_SOURCE: &str = "chaos";
const KUSTOMIZATION: &str = "chaos-apps";
const FIELD_MANAGER: &str = "serin-chaos";
/// Analysis of every app: a faulty release fails after `THRESHOLD` checks `INTERVAL` apart; an
/// outage shorter than that budget must not fail a good one.
const INTERVAL: &str = "5s";
const THRESHOLD: i64 = 4;
/// How long a Deployment may take to become ready. Not the 600 s default, so that a release whose
/// pods cannot start still ends within the run; not less than 300 s, because after an API server
/// restart kube-controller-manager's ReplicaSet controller can refuse to sync for over a minute
/// ("read version ... is not as new as written version"), and a primary that could not roll out
/// within a 120 s deadline once failed a good release's promotion (docs/chaos.md).
const PROGRESS_DEADLINE: i64 = 300;
/// The metrics' range: after a faulty release the next one of the same app waits this long plus a
/// margin, so its checks do not read the previous revision's errors.
const METRIC_WINDOW: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(200);
/// A violation is charged to the faults injected this long before it.
const BLAME_WINDOW: Duration = Duration::from_secs(30);
/// A fault's load is what serin did from its injection until a minute after it ended.
const LOAD_WINDOW: Duration = Duration::from_secs(60);

/// What a faulty release does, as the mesh simulator's annotation.
const FAULT_PROFILES: [&str; 2] = ["errors=50%", "latency=900ms"];

/// The injected faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    KillController,
    KillLeader,
    ApiServerRestart,
    PrometheusPause,
    Webhooks,
    GitopsReapply,
    MalformedCanaries,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::KillController,
        Fault::KillLeader,
        Fault::ApiServerRestart,
        Fault::PrometheusPause,
        Fault::Webhooks,
        Fault::GitopsReapply,
        Fault::MalformedCanaries,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillController => "SIGKILL all replicas",
            Fault::KillLeader => "SIGKILL the leader",
            Fault::ApiServerRestart => "API server kill+restart",
            Fault::PrometheusPause => "Prometheus stop+resume",
            Fault::Webhooks => "webhooks refuse/hang/500",
            Fault::GitopsReapply => "Flux re-apply burst",
            Fault::MalformedCanaries => "malformed Canaries",
        }
    }
}

/// Options of `serin-sandbox chaos`.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub rollouts: usize,
    pub seed: u64,
    /// The whole run (set-up included) ends by then; rollouts not finished count as incorrect.
    pub duration_limit: Duration,
    /// Apps released concurrently (each releases one after the other).
    pub apps: usize,
    /// Peak resident memory of one serin process above which the run fails.
    pub rss_limit_mb: u64,
    /// Reconciles a minute (all replicas, any 60 s window) above which the run fails: a
    /// repeating failure must back off, not become a hot loop.
    pub max_reconciles_per_minute: u64,
    /// Prometheus queries a minute (the same way) above which the run fails.
    pub max_queries_per_minute: u64,
    /// The `serin` binary (default: [`crate::serin_binary`]).
    pub serin: Option<PathBuf>,
    /// Keep kubeconfig and logs in this directory (data is removed at the end).
    pub dir: Option<PathBuf>,
    /// The negative control: inject no fault but break three invariants by hand (a
    /// VirtualService's weights, traffic to a canary without pods, a primary on a faulty image,
    /// all on a made-up app beside the real ones), so that a run shows its checks can fail.
    pub sabotage: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            rollouts: 6,
            seed: 1,
            duration_limit: Duration::from_secs(3600),
            apps: 4,
            rss_limit_mb: 256,
            max_reconciles_per_minute: 1200,
            max_queries_per_minute: 600,
            serin: None,
            dir: None,
            sabotage: false,
        }
    }
}

/// A seed from the clock, for runs that do not name one.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        % 1_000_000
}

/// SplitMix64: small, deterministic from the seed, and no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi` (`lo` when empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The releases of a run: per app, `None` for a good release or the fault profile of a faulty
/// one. At least one of each when there are two releases or more.
pub fn plan(rng: &mut Rng, rollouts: usize, apps: usize) -> Vec<Vec<Option<&'static str>>> {
    let apps = apps.clamp(1, rollouts.max(1));
    let mut kinds: Vec<Option<&'static str>> = (0..rollouts)
        .map(|_| {
            rng.chance(35)
                .then(|| FAULT_PROFILES[rng.range(0, FAULT_PROFILES.len() as u64) as usize])
        })
        .collect();
    if rollouts >= 2 {
        if kinds.iter().all(Option::is_some) {
            kinds[0] = None;
        }
        if kinds.iter().all(Option::is_none) {
            kinds[1] = Some(FAULT_PROFILES[0]);
        }
    }
    let mut out = vec![Vec::new(); apps];
    for (i, k) in kinds.into_iter().enumerate() {
        out[i % apps].push(k);
    }
    out
}

/// One injection.
#[derive(Clone, Debug)]
pub struct Injection {
    pub fault: Fault,
    pub start: Instant,
    pub end: Instant,
    pub detail: String,
}

/// One release and how it ended.
#[derive(Clone, Debug)]
pub struct Rollout {
    pub app: String,
    pub image: String,
    pub faulty: Option<&'static str>,
    pub start: Instant,
    /// When the Deployment carried the new image (Flux's share of the rollout's time).
    pub applied: Option<Instant>,
    pub end: Instant,
    pub phase: String,
    pub primary_image: String,
    pub correct: bool,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub at: Instant,
    pub invariant: &'static str,
    pub what: String,
}

/// What a run saw.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub started: Instant,
    pub duration: Duration,
    pub injections: Vec<Injection>,
    pub rollouts: Vec<Rollout>,
    pub planned: usize,
    pub violations: Vec<Violation>,
    /// Peak VmRSS of any serin process, in kB.
    pub peak_rss_kb: u64,
    /// serin's own counters, summed over the replicas, every 5 s: (when, reconciles, queries)
    /// since the previous sample.
    pub load: Vec<(Instant, u64, u64)>,
    /// serin processes that ended without being killed (a lost Lease, a crash), with status.
    pub own_exits: Vec<String>,
    /// The Lease's holder each time it changed (read every second).
    pub leaders: Vec<String>,
    pub serin_starts: u64,
    pub webhook_requests: BTreeMap<&'static str, u64>,
    pub malformed_refused: u64,
    pub malformed_accepted: u64,
    pub invariant_polls: u64,
    /// Why the run ended early, if it did.
    pub aborted: Option<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.aborted.is_none()
            && self.violations.is_empty()
            && self.rollouts.len() == self.planned
            && self.rollouts.iter().all(|r| r.correct)
    }

    fn blamed(&self, v: &Violation) -> Vec<Fault> {
        let mut f: Vec<Fault> = self
            .injections
            .iter()
            .filter(|i| v.at >= i.start && v.at <= i.end + BLAME_WINDOW)
            .map(|i| i.fault)
            .collect();
        f.sort();
        f.dedup();
        f
    }

    fn overlaps(r: &Rollout, i: &Injection) -> bool {
        i.start <= r.end && i.end >= r.start
    }

    /// The table: per fault, injections, the rollouts it hit, how many of those ended correctly,
    /// and the violations charged to it.
    pub fn table(&self) -> String {
        let mut rows = Vec::new();
        for f in Fault::ALL {
            let inj: Vec<&Injection> = self.injections.iter().filter(|i| i.fault == f).collect();
            let hit: Vec<&Rollout> = self
                .rollouts
                .iter()
                .filter(|r| inj.iter().any(|i| Self::overlaps(r, i)))
                .collect();
            let violations = self
                .violations
                .iter()
                .filter(|v| self.blamed(v).contains(&f))
                .count();
            let load = inj
                .iter()
                .map(|i| peak_per_minute(&self.load, i.start, i.end + LOAD_WINDOW))
                .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
            rows.push((
                f.name().to_string(),
                inj.len(),
                hit.len(),
                hit.iter().filter(|r| r.correct).count(),
                violations,
                Some(load),
            ));
        }
        let calm: Vec<&Rollout> = self
            .rollouts
            .iter()
            .filter(|r| !self.injections.iter().any(|i| Self::overlaps(r, i)))
            .collect();
        rows.push((
            "(no fault during the rollout)".into(),
            0,
            calm.len(),
            calm.iter().filter(|r| r.correct).count(),
            self.violations
                .iter()
                .filter(|v| self.blamed(v).is_empty())
                .count(),
            None,
        ));
        rows.push((
            "all".into(),
            self.injections.len(),
            self.rollouts.len(),
            self.rollouts.iter().filter(|r| r.correct).count(),
            self.violations.len(),
            self.load
                .first()
                .map(|(t, _, _)| peak_per_minute(&self.load, *t, self.started + self.duration)),
        ));
        let mut out = format!(
            "| {:<30} | {:>10} | {:>8} | {:>7} | {:>20} | {:>19} | {:>16} |\n|{:-<32}|{:->12}|{:->10}|{:->9}|{:->22}|{:->21}|{:->18}|\n",
            "fault",
            "injections",
            "rollouts",
            "correct",
            "invariant violations",
            "peak reconciles/min",
            "peak queries/min",
            "",
            "",
            "",
            "",
            "",
            "",
            ""
        );
        for (name, inj, hit, correct, v, load) in rows {
            let (r, q) = match load {
                Some((r, q)) => (r.to_string(), q.to_string()),
                None => ("-".into(), "-".into()),
            };
            out.push_str(&format!(
                "| {name:<30} | {inj:>10} | {hit:>8} | {correct:>7} | {v:>20} | {r:>19} | {q:>16} |\n"
            ));
        }
        out
    }

    /// Everything after the table: the numbers behind it and each violation in full.
    pub fn details(&self) -> String {
        let faulty = self.rollouts.iter().filter(|r| r.faulty.is_some()).count();
        let mut out = format!(
            "seed {}; {:.0} s; {} of {} rollouts finished ({} good, {} faulty), {} correct; {} invariant polls\n",
            self.seed,
            self.duration.as_secs_f64(),
            self.rollouts.len(),
            self.planned,
            self.rollouts.len() - faulty,
            faulty,
            self.rollouts.iter().filter(|r| r.correct).count(),
            self.invariant_polls,
        );
        out.push_str(&format!(
            "serin: {} process starts, {} exits on their own{}; peak RSS {:.1} MB\n",
            self.serin_starts,
            self.own_exits.len(),
            if self.own_exits.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.own_exits.join("; "))
            },
            self.peak_rss_kb as f64 / 1024.0
        ));
        let mut led: BTreeMap<&str, usize> = BTreeMap::new();
        for l in &self.leaders {
            *led.entry(l.as_str()).or_default() += 1;
        }
        out.push_str(&format!(
            "Lease: {} changes of holder ({})\n",
            self.leaders.len().saturating_sub(1),
            led.iter()
                .map(|(who, n)| format!("{who} took it {n} times"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.push_str(&format!(
            "webhook receiver: {}; malformed Canaries: {} refused by the API server, {} accepted\n",
            self.webhook_requests
                .iter()
                .map(|(k, v)| format!("{v} answered {k}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.malformed_refused,
            self.malformed_accepted
        ));
        for r in self.rollouts.iter().filter(|r| !r.correct) {
            out.push_str(&format!(
                "INCORRECT: {} {} ({}) ended {} after {:.0} s, primary on {}\n",
                r.app,
                r.image,
                r.faulty.unwrap_or("good"),
                r.phase,
                (r.end - r.start).as_secs_f64(),
                r.primary_image
            ));
        }
        for v in &self.violations {
            let blamed: Vec<&str> = self.blamed(v).iter().map(|f| f.name()).collect();
            out.push_str(&format!(
                "VIOLATION at {:.1} s [{}] {} (faults in the 30 s before: {})\n",
                (v.at - self.started).as_secs_f64(),
                v.invariant,
                v.what,
                if blamed.is_empty() {
                    "none".to_string()
                } else {
                    blamed.join(", ")
                }
            ));
        }
        if let Some(a) = &self.aborted {
            out.push_str(&format!("ABORTED: {a}\n"));
        }
        out
    }
}

/// State shared by the tasks of a run.
struct Shared {
    started: Instant,
    injections: Mutex<Vec<Injection>>,
    rollouts: Mutex<Vec<Rollout>>,
    violations: Mutex<Vec<Violation>>,
    /// Images of faulty releases: none may ever reach a primary.
    faulty_images: Mutex<BTreeSet<String>>,
    peak_rss_kb: AtomicU64,
    leaders: Mutex<Vec<String>>,
    /// Malformed Canaries (refused by the API server, accepted).
    malformed: (AtomicU64, AtomicU64),
    load: Mutex<Vec<(Instant, u64, u64)>>,
    polls: AtomicU64,
    stop: AtomicBool,
    /// Set while the apps' releases are still running.
    releasing: AtomicBool,
}

impl Shared {
    fn violation(&self, invariant: &'static str, what: String) {
        eprintln!(
            "  !! {:.1} s {invariant}: {what}",
            self.started.elapsed().as_secs_f64()
        );
        if let Ok(mut v) = self.violations.lock() {
            v.push(Violation {
                at: Instant::now(),
                invariant,
                what,
            });
        }
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the suite on a sandbox of its own and tears it down.
pub async fn run(opts: ChaosOptions) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        started: Instant::now(),
        injections: Mutex::new(Vec::new()),
        rollouts: Mutex::new(Vec::new()),
        violations: Mutex::new(Vec::new()),
        faulty_images: Mutex::new(BTreeSet::new()),
        peak_rss_kb: AtomicU64::new(0),
        leaders: Mutex::new(Vec::new()),
        malformed: (AtomicU64::new(0), AtomicU64::new(0)),
        load: Mutex::new(Vec::new()),
        polls: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        releasing: AtomicBool::new(true),
    });
    let serin = match &opts.serin {
        Some(p) => p.clone(),
        None => crate::serin_binary()?,
    };
    println!(
        "==> chaos: {} rollouts over {} apps, seed {} (replay: serin-sandbox chaos --rollouts {} --seed {})",
        opts.rollouts,
        opts.apps.clamp(1, opts.rollouts.max(1)),
        opts.seed,
        opts.rollouts,
        opts.seed
    );
    let mut sandbox = Sandbox::start(SandboxOptions {
        dir: opts.dir.clone(),
        flux: true,
        ..SandboxOptions::default()
    })
    .await?;
    println!(
        "    sandbox with Flux ready in {:.1} s; logs in {}",
        sandbox.startup_time().as_secs_f64(),
        sandbox.logs_dir().display()
    );
    let mesh = mesh::start(
        sandbox.config(),
        mesh::MeshOptions {
            rate_per_second: 20.0,
            ..Default::default()
        },
    )?;
    sandbox.register_scrape_target("mesh", &mesh.metrics_addr().to_string())?;
    let receiver = Receiver::start().await?;
    let replicas = Arc::new(Replicas::new(&sandbox, &serin));

    let markers = Markers::new(opts.seed);
    let outcome = tokio::time::timeout(
        opts.duration_limit,
        drive(&opts, &mut sandbox, &shared, &replicas, &receiver, &markers),
    )
    .await;
    shared.stop.store(true, Ordering::SeqCst);
    // Whatever happened, nothing stays frozen or refused for the teardown.
    let _ = sandbox.resume_prometheus();
    receiver.set(Mode::Ok);
    let aborted = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some(format!(
            "the duration limit ({:.0} s) ran out",
            opts.duration_limit.as_secs_f64()
        )),
    };
    let logs = replicas.logs();
    replicas.stop_all();
    // The logs are judged after the last process is gone, so that nothing is written after.
    scan_logs(&shared, &logs, &markers);
    let peak = shared.peak_rss_kb.load(Ordering::SeqCst);
    if peak > opts.rss_limit_mb * 1024 {
        shared.violation(
            "memory stays bounded",
            format!(
                "a serin process reached {:.1} MB (limit {} MB)",
                peak as f64 / 1024.0,
                opts.rss_limit_mb
            ),
        );
    }
    let load = lock(&shared.load).clone();
    type Pick = fn((u64, u64)) -> u64;
    let picks: [(&str, u64, Pick); 2] = [
        ("reconciles", opts.max_reconciles_per_minute, |p| p.0),
        ("Prometheus queries", opts.max_queries_per_minute, |p| p.1),
    ];
    for (what, limit, pick) in picks {
        if let Some((at, n)) = load
            .iter()
            .map(|(t, _, _)| (*t, pick(peak_per_minute(&load, *t, *t))))
            .find(|(_, n)| *n > limit)
        {
            lock(&shared.violations).push(Violation {
                at,
                invariant: "load stays bounded",
                what: format!("{n} {what} in the minute before (limit {limit})"),
            });
        }
    }
    let report = Report {
        seed: opts.seed,
        started: shared.started,
        duration: shared.started.elapsed(),
        injections: lock(&shared.injections).clone(),
        rollouts: lock(&shared.rollouts).clone(),
        planned: opts.rollouts,
        violations: lock(&shared.violations).clone(),
        peak_rss_kb: peak,
        load,
        own_exits: lock(&replicas.own_exits).clone(),
        leaders: lock(&shared.leaders).clone(),
        serin_starts: replicas.starts.load(Ordering::SeqCst),
        webhook_requests: receiver.counts(),
        malformed_refused: shared.malformed.0.load(Ordering::SeqCst),
        malformed_accepted: shared.malformed.1.load(Ordering::SeqCst),
        invariant_polls: shared.polls.load(Ordering::SeqCst),
        aborted,
    };
    drop(receiver);
    mesh.stop();
    tokio::task::spawn_blocking(move || sandbox.stop()).await?;
    Ok(report)
}

/// Markers planted where only a leak could carry them into serin's logs: an alert provider's
/// Secret (its address and token) and a webhook's metadata in every Canary's spec.
struct Markers {
    secret: String,
    spec: String,
}

impl Markers {
    fn new(seed: u64) -> Markers {
        let mut rng = Rng::new(seed ^ 0x005E_C2E7);
        Markers {
            secret: format!("chaos-secret-{:016x}", rng.next_u64()),
            spec: format!("chaos-spec-body-{:016x}", rng.next_u64()),
        }
    }
}

async fn drive(
    opts: &ChaosOptions,
    sandbox: &mut Sandbox,
    shared: &Arc<Shared>,
    replicas: &Arc<Replicas>,
    receiver: &Receiver,
    markers: &Markers,
) -> anyhow::Result<()> {
    let mut rng = Rng::new(opts.seed);
    let plan = plan(&mut rng, opts.rollouts, opts.apps);
    let client = sandbox.client();
    let apps: Vec<String> = (0..plan.len()).map(|i| format!("app{i}")).collect();

    crate::flux::api::ensure_namespace(&client, NAMESPACE).await?;
    setup_alerts(&client, receiver.port, markers).await?;

    // The apps, from Git, applied by kustomize-controller every 5 s.
    let content = sandbox.dir().join("chaos-repository");
    std::fs::create_dir_all(content.join("apps"))?;
    for app in &apps {
        write_app(
            &content,
            app,
            &image(app, 0),
            None,
            receiver.port,
            &markers.spec,
        )?;
    }
    write_apps_kustomization(&content, &apps)?;
    let flux = sandbox.flux().context("the sandbox runs no Flux")?;
    let repo = flux
        .git()
        .create_repository(GIT_SOURCE, &content, "chaos: the apps")?;
    for object in flux_objects(repo.url()) {
        crate::flux::api::apply(&client, &object).await?;
    }
    let repo = Arc::new(Mutex::new(repo));

    replicas.ensure_running();
    let supervisor = tokio::spawn(supervise(replicas.clone(), shared.clone(), client.clone()));
    println!(
        "==> {} apps from Git (GitRepository every 3 s, Kustomization every 5 s); serin {} with leader election",
        apps.len(),
        REPLICAS.join(" and ")
    );
    wait_initialized(&client, &apps, Duration::from_secs(300)).await?;
    println!(
        "    every Canary Initialized at {:.0} s",
        shared.started.elapsed().as_secs_f64()
    );

    let sampler = tokio::spawn(sample_load(replicas.clone(), shared.clone()));
    let mut checked = apps.clone();
    if opts.sabotage {
        checked.push(GHOST.to_string());
    }
    let checker = tokio::spawn(check_invariants(client.clone(), checked, shared.clone()));
    let mut releases = Vec::new();
    for (app, kinds) in apps.iter().zip(plan) {
        let ctx = AppCtx {
            client: client.clone(),
            repo: repo.clone(),
            app: app.clone(),
            receiver_port: receiver.port,
            spec_marker: markers.spec.clone(),
            shared: shared.clone(),
        };
        releases.push(tokio::spawn(release_all(ctx, kinds)));
    }
    let all_done = {
        let shared = shared.clone();
        async move {
            for r in releases {
                let _ = r.await;
            }
            shared.releasing.store(false, Ordering::SeqCst);
        }
    };
    let waiter = tokio::spawn(all_done);

    if opts.sabotage {
        sabotage(&client, shared).await?;
        while shared.releasing.load(Ordering::SeqCst) && !shared.stopped() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    } else {
        inject(sandbox, shared, replicas, receiver, &mut rng, markers).await?;
    }
    println!(
        "==> faults stopped at {:.0} s; waiting for the last rollouts",
        shared.started.elapsed().as_secs_f64()
    );
    receiver.set(Mode::Ok);
    let _ = sandbox.resume_prometheus();
    let _ = waiter.await;

    // Faults have stopped and every release has ended: nothing may be left mid-run.
    cleanup_malformed(&client).await;
    settled(&client, &apps, shared).await;
    shared.stop.store(true, Ordering::SeqCst);
    let _ = checker.await;
    supervisor.abort();
    sampler.abort();
    Ok(())
}

fn image(app: &str, k: usize) -> String {
    format!("ghcr.io/serin-chaos/{app}:1.0.{k}")
}

fn flux_objects(url: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": GIT_SOURCE, "namespace": crate::flux::NAMESPACE},
            "spec": {"interval": "3s", "ref": {"branch": crate::flux::git::BRANCH}, "url": url}
        }),
        json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {"name": KUSTOMIZATION, "namespace": crate::flux::NAMESPACE},
            "spec": {
                "interval": "5s",
                "path": "./apps",
                "prune": true,
                "timeout": "1m",
                "sourceRef": {"kind": "GitRepository", "name": GIT_SOURCE}
            }
        }),
    ]
}

/// An app as a user would commit it: a Deployment without `replicas` (serin scales it, and a
/// GitOps re-apply must not fight that) and its Canary.
pub fn app_manifests(
    app: &str,
    image: &str,
    fault: Option<&str>,
    receiver_port: u16,
    spec_marker: &str,
) -> Vec<Value> {
    let mut annotations = json!({});
    if let Some(f) = fault {
        annotations[crate::mesh::behaviour::SIMULATE_ANNOTATION] = json!(f);
    }
    vec![
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": app, "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": app}},
                "template": {
                    "metadata": {"labels": {"app": app}, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 9898, "name": "http"}]}]}
                }
            }
        }),
        json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {"name": app, "namespace": NAMESPACE},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                "progressDeadlineSeconds": PROGRESS_DEADLINE,
                "service": {"port": 9898},
                "analysis": {
                    "interval": INTERVAL,
                    "threshold": THRESHOLD,
                    "maxWeight": 50,
                    "stepWeight": 25,
                    "metrics": [
                        {"name": "request-success-rate", "interval": "15s", "thresholdRange": {"min": 99}},
                        {"name": "request-duration", "interval": "15s", "thresholdRange": {"max": 500}}
                    ],
                    "webhooks": [{
                        "name": "chaos-events",
                        "type": "event",
                        "url": format!("http://127.0.0.1:{receiver_port}/event"),
                        "timeout": "3s",
                        "metadata": {"note": spec_marker}
                    }],
                    "alerts": [{"name": "chaos", "severity": "info", "providerRef": {"name": "chaos-alerts"}}]
                }
            }
        }),
    ]
}

fn write_app(
    content: &Path,
    app: &str,
    image: &str,
    fault: Option<&str>,
    receiver_port: u16,
    spec_marker: &str,
) -> anyhow::Result<()> {
    let mut text = String::new();
    for doc in app_manifests(app, image, fault, receiver_port, spec_marker) {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&doc)?);
    }
    std::fs::write(content.join("apps").join(format!("{app}.yaml")), text)?;
    Ok(())
}

fn write_apps_kustomization(content: &Path, apps: &[String]) -> anyhow::Result<()> {
    let mut text = String::from(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for app in apps {
        text.push_str(&format!("- {app}.yaml\n"));
    }
    std::fs::write(content.join("apps").join("kustomization.yaml"), text)?;
    Ok(())
}

/// The Secret with the planted value and the AlertProvider that reads it.
async fn setup_alerts(client: &Client, port: u16, markers: &Markers) -> anyhow::Result<()> {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "chaos-alerts", "namespace": NAMESPACE},
        "stringData": {
            "address": format!("http://127.0.0.1:{port}/alert/{}", markers.secret),
            "token": markers.secret,
        }
    });
    let provider = json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider",
        "metadata": {"name": "chaos-alerts", "namespace": NAMESPACE},
        "spec": {"type": "slack", "channel": "chaos", "secretRef": {"name": "chaos-alerts"}}
    });
    apply(client, NAMESPACE, &secret).await?;
    apply(client, NAMESPACE, &provider).await?;
    Ok(())
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Canary" => "canaries".to_string(),
        "VirtualService" => "virtualservices".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

fn dynamic(client: &Client, ns: &str, api_version: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource(api_version, kind))
}

async fn apply(client: &Client, ns: &str, object: &Value) -> Result<(), kube::Error> {
    let api = dynamic(
        client,
        ns,
        object["apiVersion"].as_str().unwrap_or_default(),
        object["kind"].as_str().unwrap_or_default(),
    );
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map(|_| ())
}

async fn get_json(api: &Api<DynamicObject>, name: &str) -> Option<Value> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|o| serde_json::to_value(o).ok())
}

fn phase_of(canary: &Value) -> String {
    canary["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn image_of(deployment: &Value) -> String {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn wait_initialized(client: &Client, apps: &[String], limit: Duration) -> anyhow::Result<()> {
    let api = dynamic(client, NAMESPACE, "flagger.app/v1beta1", "Canary");
    let deadline = Instant::now() + limit;
    loop {
        let mut waiting = Vec::new();
        for app in apps {
            let phase = get_json(&api, app)
                .await
                .map(|c| phase_of(&c))
                .unwrap_or_default();
            if phase != "Initialized" {
                waiting.push(format!("{app}: {phase:?}"));
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Canaries not Initialized within {} s: {}",
            limit.as_secs(),
            waiting.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct AppCtx {
    client: Client,
    repo: Arc<Mutex<crate::flux::Repository>>,
    app: String,
    receiver_port: u16,
    spec_marker: String,
    shared: Arc<Shared>,
}

const RUNNING: [&str; 5] = [
    "Progressing",
    "Promoting",
    "Finalising",
    "Waiting",
    "WaitingPromotion",
];
const TERMINAL: [&str; 2] = ["Succeeded", "Failed"];

async fn release_all(ctx: AppCtx, kinds: Vec<Option<&'static str>>) {
    let mut good_image = image(&ctx.app, 0);
    for (i, fault) in kinds.into_iter().enumerate() {
        if ctx.shared.stopped() {
            return;
        }
        let r = release(&ctx, i + 1, fault, &good_image).await;
        println!(
            "    {:>5.0} s  {} {} ({}) -> {} in {:.0} s (applied by Flux after {:.0} s), primary on {}{}",
            ctx.shared.started.elapsed().as_secs_f64(),
            r.app,
            r.image.rsplit(':').next().unwrap_or_default(),
            r.faulty.unwrap_or("good"),
            if r.phase.is_empty() { "?" } else { &r.phase },
            (r.end - r.start).as_secs_f64(),
            r.applied
                .map(|a| (a - r.start).as_secs_f64())
                .unwrap_or(f64::NAN),
            r.primary_image.rsplit(':').next().unwrap_or_default(),
            if r.correct { "" } else { "  INCORRECT" }
        );
        if r.correct && fault.is_none() {
            good_image = r.image.clone();
        } else if !r.correct {
            // The app's state is unknown from here: what the primary runs is the baseline.
            good_image = r.primary_image.clone();
        }
        lock(&ctx.shared.rollouts).push(r);
        // The next release's checks must not read this one's errors (the metrics' window).
        let pause = if fault.is_some() {
            METRIC_WINDOW + Duration::from_secs(5)
        } else {
            Duration::from_secs(2)
        };
        tokio::time::sleep(pause).await;
    }
}

async fn release(ctx: &AppCtx, k: usize, fault: Option<&'static str>, good: &str) -> Rollout {
    let new_image = image(&ctx.app, k);
    let start = Instant::now();
    let mut rollout = Rollout {
        app: ctx.app.clone(),
        image: new_image.clone(),
        faulty: fault,
        start,
        applied: None,
        end: start,
        phase: String::new(),
        primary_image: String::new(),
        correct: false,
    };
    if fault.is_some() {
        lock(&ctx.shared.faulty_images).insert(new_image.clone());
    }
    let commit = {
        let (repo, app, img) = (ctx.repo.clone(), ctx.app.clone(), new_image.clone());
        let (port, marker) = (ctx.receiver_port, ctx.spec_marker.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let repo = lock(&repo);
            write_app(repo.work_dir(), &app, &img, fault, port, &marker)?;
            repo.commit(&format!(
                "{app} {img}{}",
                if fault.is_some() { " (faulty)" } else { "" }
            ))
        })
        .await
    };
    let failed = match commit {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(e) => Some(e.to_string()),
    };
    if let Some(e) = failed {
        rollout.phase = format!("commit failed: {e}");
        rollout.end = Instant::now();
        return rollout;
    }
    let _ = crate::flux::api::request_reconcile(
        &ctx.client,
        Kind::GitRepository,
        crate::flux::NAMESPACE,
        GIT_SOURCE,
    )
    .await;
    let deployments = dynamic(&ctx.client, NAMESPACE, "apps/v1", "Deployment");
    let canaries = dynamic(&ctx.client, NAMESPACE, "flagger.app/v1beta1", "Canary");
    // Flux applies the commit...
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if get_json(&deployments, &ctx.app)
            .await
            .is_some_and(|d| image_of(&d) == new_image)
        {
            rollout.applied = Some(Instant::now());
            break;
        }
        if Instant::now() > deadline || ctx.shared.stopped() {
            rollout.phase = "not applied by Flux".into();
            rollout.end = Instant::now();
            return rollout;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // ...then serin runs it to an end.
    let deadline = Instant::now() + Duration::from_secs(420);
    let mut running = false;
    loop {
        if let Some(c) = get_json(&canaries, &ctx.app).await {
            let phase = phase_of(&c);
            running |= RUNNING.contains(&phase.as_str());
            if running && TERMINAL.contains(&phase.as_str()) {
                rollout.phase = phase;
                break;
            }
            rollout.phase = phase;
        }
        if Instant::now() > deadline || ctx.shared.stopped() {
            rollout.phase = format!("{} (no end within 420 s)", rollout.phase);
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    rollout.end = Instant::now();
    // The primary after a promotion is in place before Succeeded; read it (retrying through an
    // API outage) once.
    for _ in 0..60 {
        if let Some(d) = get_json(&deployments, &format!("{}-primary", ctx.app)).await {
            rollout.primary_image = image_of(&d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rollout.correct = match fault {
        None => rollout.phase == "Succeeded" && rollout.primary_image == new_image,
        Some(_) => rollout.phase == "Failed" && rollout.primary_image == good,
    };
    rollout
}

/// The controller replicas, run as a kubelet would: SIGKILLed on demand, restarted after a hold.
struct Replicas {
    serin: PathBuf,
    kubeconfig: PathBuf,
    prometheus: String,
    logs_dir: PathBuf,
    slots: Mutex<Vec<Slot>>,
    own_exits: Arc<Mutex<Vec<String>>>,
    starts: AtomicU64,
}

struct Slot {
    identity: &'static str,
    child: Option<Supervised>,
    /// Set before a deliberate kill, so the exit is not reported as the process's own.
    killing: Arc<AtomicBool>,
    exited: Arc<AtomicBool>,
    hold_until: Instant,
    /// Where this incarnation's lines start in the (appended) log.
    log_offset: u64,
}

impl Replicas {
    fn new(sandbox: &Sandbox, serin: &Path) -> Replicas {
        Replicas {
            serin: serin.to_path_buf(),
            kubeconfig: sandbox.kubeconfig_path().to_path_buf(),
            prometheus: sandbox.prometheus_url().to_string(),
            logs_dir: sandbox.logs_dir().to_path_buf(),
            slots: Mutex::new(
                REPLICAS
                    .iter()
                    .map(|identity| Slot {
                        identity,
                        child: None,
                        killing: Arc::new(AtomicBool::new(false)),
                        exited: Arc::new(AtomicBool::new(true)),
                        hold_until: Instant::now(),
                        log_offset: 0,
                    })
                    .collect(),
            ),
            own_exits: Arc::new(Mutex::new(Vec::new())),
            starts: AtomicU64::new(0),
        }
    }

    fn log_of(&self, identity: &str) -> PathBuf {
        self.logs_dir.join(format!("{identity}.log"))
    }

    fn logs(&self) -> Vec<PathBuf> {
        REPLICAS.iter().map(|i| self.log_of(i)).collect()
    }

    fn args(&self) -> Vec<String> {
        [
            "controller",
            "--kubeconfig",
            &self.kubeconfig.display().to_string(),
            "--metrics-server",
            &self.prometheus,
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "debug",
            "--leader-elect",
            "--leader-elect-namespace",
            NAMESPACE,
            "--leader-elect-lease-duration",
            "4s",
            "--leader-elect-renew-deadline",
            "3s",
            "--leader-elect-retry-period",
            "500ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts every replica that is down and not held.
    fn ensure_running(&self) {
        let mut slots = lock(&self.slots);
        for slot in slots.iter_mut() {
            let down = slot.child.is_none() || slot.exited.load(Ordering::SeqCst);
            if !down || Instant::now() < slot.hold_until {
                continue;
            }
            let killing = Arc::new(AtomicBool::new(false));
            let exited = Arc::new(AtomicBool::new(false));
            let (k, e, own) = (killing.clone(), exited.clone(), self.own_exits.clone());
            let identity = slot.identity;
            let env = [
                ("POD_NAME".to_string(), identity.to_string()),
                ("NO_COLOR".to_string(), "1".to_string()),
                (
                    "RUST_LOG".to_string(),
                    "info,serin=debug,kube_client::client::tls=error".to_string(),
                ),
            ];
            let log_offset = std::fs::metadata(self.log_of(identity))
                .map(|m| m.len())
                .unwrap_or(0);
            let started = Supervised::spawn_with_env(
                identity,
                &self.serin,
                &self.args(),
                &env,
                &self.log_of(identity),
                // Never the sandbox's business: this run watches its own replicas.
                Arc::new(AtomicBool::new(false)),
                Box::new(move |exit| {
                    e.store(true, Ordering::SeqCst);
                    if !k.load(Ordering::SeqCst) {
                        lock(&own).push(format!("{} {}", exit.name, exit.status));
                    }
                }),
            );
            match started {
                Ok(child) => {
                    self.starts.fetch_add(1, Ordering::SeqCst);
                    slot.child = Some(child);
                    slot.killing = killing;
                    slot.exited = exited;
                    slot.log_offset = log_offset;
                }
                Err(e) => {
                    eprintln!("  could not start {identity}: {e}");
                    slot.hold_until = Instant::now() + Duration::from_secs(1);
                }
            }
        }
    }

    /// SIGKILLs the replicas `pick` chooses and keeps them down for `hold`.
    fn kill(&self, pick: impl Fn(&str) -> bool, hold: Duration) -> Vec<String> {
        let mut killed = Vec::new();
        let mut slots = lock(&self.slots);
        for slot in slots.iter_mut().filter(|s| pick(s.identity)) {
            slot.hold_until = Instant::now() + hold;
            if let Some(child) = slot.child.take() {
                slot.killing.store(true, Ordering::SeqCst);
                child.signal(libc::SIGKILL);
                child.wait_until(Instant::now() + Duration::from_secs(5));
                killed.push(format!("{} (pid {})", slot.identity, child.pid()));
            }
        }
        killed
    }

    /// (pid, /metrics address) of each live replica that has logged where it listens.
    fn metrics_addrs(&self) -> Vec<(i32, String)> {
        let slots: Vec<(i32, PathBuf, u64)> = lock(&self.slots)
            .iter()
            .filter(|s| !s.exited.load(Ordering::SeqCst))
            .filter_map(|s| {
                let pid = s.child.as_ref()?.pid();
                Some((pid, self.log_of(s.identity), s.log_offset))
            })
            .collect();
        slots
            .into_iter()
            .filter_map(|(pid, log, offset)| {
                let text = std::fs::read(&log).ok()?;
                let tail = text.get(offset as usize..)?;
                let addr = listen_addr(&String::from_utf8_lossy(tail))?;
                Some((pid, addr))
            })
            .collect()
    }

    fn pids(&self) -> Vec<i32> {
        lock(&self.slots)
            .iter()
            .filter(|s| !s.exited.load(Ordering::SeqCst))
            .filter_map(|s| s.child.as_ref().map(Supervised::pid))
            .collect()
    }

    fn stop_all(&self) {
        let mut slots = lock(&self.slots);
        for slot in slots.iter_mut() {
            slot.hold_until = Instant::now() + Duration::from_secs(3600);
            if let Some(child) = slot.child.take() {
                slot.killing.store(true, Ordering::SeqCst);
                child.signal(libc::SIGTERM);
                if !child.wait_until(Instant::now() + Duration::from_secs(5)) {
                    child.signal(libc::SIGKILL);
                    child.wait_until(Instant::now() + Duration::from_secs(5));
                }
            }
        }
    }
}

/// Restarts dead replicas (as a kubelet would, after a short back-off) and samples their memory.
async fn supervise(replicas: Arc<Replicas>, shared: Arc<Shared>, client: Client) {
    let mut tick = 0u64;
    while !shared.stopped() {
        replicas.ensure_running();
        if tick.is_multiple_of(4) {
            if let Some(holder) = lease_holder(&client).await {
                let mut leaders = lock(&shared.leaders);
                if leaders.last() != Some(&holder) {
                    leaders.push(holder);
                }
            }
            for pid in replicas.pids() {
                if let Some(kb) = rss_kb(pid) {
                    shared.peak_rss_kb.fetch_max(kb, Ordering::SeqCst);
                }
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// VmRSS of a process, in kB.
pub fn rss_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kb(&status)
}

pub fn parse_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The address serin logs when its /metrics server is up.
pub fn listen_addr(log: &str) -> Option<String> {
    const MARKER: &str = "serving /metrics, /healthz and /readyz on ";
    log.lines()
        .filter_map(|l| l.split_once(MARKER))
        .map(|(_, a)| a.trim().to_string())
        .next_back()
}

/// (reconciles, Prometheus queries) from serin's /metrics text.
pub fn load_counters(metrics: &str) -> (u64, u64) {
    let mut reconciles = 0.0;
    let mut queries = 0.0;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        let v: f64 = value.parse().unwrap_or(0.0);
        match name {
            "serin_reconciles_total" => reconciles += v,
            "serin_prometheus_query_duration_seconds_count" => queries += v,
            _ => {}
        }
    }
    (reconciles as u64, queries as u64)
}

/// Every 5 s, how many reconciles and Prometheus queries the replicas made since the last
/// sample (a restarted process starts its counters again from zero).
async fn sample_load(replicas: Arc<Replicas>, shared: Arc<Shared>) {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    else {
        return;
    };
    let mut last: HashMap<i32, (u64, u64)> = HashMap::new();
    while !shared.stopped() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (mut dr, mut dq) = (0, 0);
        for (pid, addr) in replicas.metrics_addrs() {
            let Ok(resp) = http.get(format!("http://{addr}/metrics")).send().await else {
                continue;
            };
            let Ok(text) = resp.text().await else {
                continue;
            };
            let (r, q) = load_counters(&text);
            let (lr, lq) = last.get(&pid).copied().unwrap_or((0, 0));
            dr += r.checked_sub(lr).unwrap_or(r);
            dq += q.checked_sub(lq).unwrap_or(q);
            last.insert(pid, (r, q));
        }
        lock(&shared.load).push((Instant::now(), dr, dq));
    }
}

/// The largest number of (reconciles, queries) in any 60 s window ending at a sample taken
/// within `[from, to]`.
pub fn peak_per_minute(load: &[(Instant, u64, u64)], from: Instant, to: Instant) -> (u64, u64) {
    let mut peak = (0, 0);
    for (t, _, _) in load.iter().filter(|(t, _, _)| *t >= from && *t <= to) {
        let window = load
            .iter()
            .filter(|(u, _, _)| *u <= *t && *u + Duration::from_secs(60) > *t);
        let (r, q) = window.fold((0, 0), |(r, q), (_, dr, dq)| (r + dr, q + dq));
        peak = (peak.0.max(r), peak.1.max(q));
    }
    peak
}

async fn lease_holder(client: &Client) -> Option<String> {
    let api = dynamic(client, NAMESPACE, "coordination.k8s.io/v1", "Lease");
    get_json(&api, LEASE)
        .await
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

/// The fault loop: every fault once in a shuffled order first (so a short run covers them all),
/// then at random, until every release has ended.
async fn inject(
    sandbox: &mut Sandbox,
    shared: &Arc<Shared>,
    replicas: &Arc<Replicas>,
    receiver: &Receiver,
    rng: &mut Rng,
    markers: &Markers,
) -> anyhow::Result<()> {
    let client = sandbox.client();
    let mut first: Vec<Fault> = Fault::ALL.to_vec();
    rng.shuffle(&mut first);
    let mut first: std::collections::VecDeque<Fault> = first.into();
    let mut burst = 0u32;
    loop {
        let gap = rng.millis(3_000, 12_000);
        tokio::time::sleep(gap).await;
        if !shared.releasing.load(Ordering::SeqCst) && first.is_empty() {
            return Ok(());
        }
        if shared.stopped() {
            return Ok(());
        }
        let fault = match first.pop_front() {
            Some(f) => f,
            None => Fault::ALL[rng.range(0, Fault::ALL.len() as u64) as usize],
        };
        let start = Instant::now();
        let detail = match fault {
            Fault::KillController => {
                let hold = rng.millis(500, 4_000);
                let killed = replicas.kill(|_| true, hold);
                format!("{} down {:.1} s", killed.join(", "), hold.as_secs_f64())
            }
            Fault::KillLeader => {
                let holder = lease_holder(&client).await;
                // Below the 4 s lease the same identity takes its Lease back at once (a
                // container restarted in its pod); above it the standby takes over (a pod lost
                // with its node).
                let hold = rng.millis(500, 8_000);
                let target = holder.clone().unwrap_or_else(|| REPLICAS[0].to_string());
                let killed = replicas.kill(|id| id == target, hold);
                format!(
                    "leader {} -> killed {}, down {:.1} s",
                    holder.as_deref().unwrap_or("(no holder)"),
                    killed.join(", "),
                    hold.as_secs_f64()
                )
            }
            Fault::ApiServerRestart => {
                let down = rng.millis(1_000, 8_000);
                sandbox
                    .restart_apiserver(down)
                    .await
                    .context("restarting the API server")?;
                format!("down {:.1} s", down.as_secs_f64())
            }
            Fault::PrometheusPause => {
                let down = rng.millis(2_000, 10_000);
                sandbox.pause_prometheus()?;
                tokio::time::sleep(down).await;
                sandbox.resume_prometheus()?;
                format!("frozen {:.1} s", down.as_secs_f64())
            }
            Fault::Webhooks => {
                let mode = [Mode::Refuse, Mode::Hang, Mode::Fail][rng.range(0, 3) as usize];
                let len = rng.millis(5_000, 20_000);
                receiver.set(mode);
                tokio::time::sleep(len).await;
                receiver.set(Mode::Ok);
                format!("{} for {:.1} s", mode.name(), len.as_secs_f64())
            }
            Fault::GitopsReapply => {
                let len = rng.millis(5_000, 15_000);
                let until = Instant::now() + len;
                let mut n = 0;
                while Instant::now() < until {
                    for (kind, name) in [
                        (Kind::GitRepository, GIT_SOURCE),
                        (Kind::Kustomization, KUSTOMIZATION),
                    ] {
                        if crate::flux::api::request_reconcile(
                            &client,
                            kind,
                            crate::flux::NAMESPACE,
                            name,
                        )
                        .await
                        .is_ok()
                        {
                            n += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                format!(
                    "{n} reconcile requests in {:.1} s (on top of the 5 s interval)",
                    len.as_secs_f64()
                )
            }
            Fault::MalformedCanaries => {
                burst += 1;
                let ns = format!("{BAD_PREFIX}{burst}");
                let keep = rng.millis(10_000, 40_000);
                let (refused, accepted) = malformed_burst(&client, &ns, &markers.spec).await?;
                shared.malformed.0.fetch_add(refused, Ordering::SeqCst);
                shared.malformed.1.fetch_add(accepted, Ordering::SeqCst);
                let c = client.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(keep).await;
                    delete_namespace(&c, &ns).await;
                });
                format!(
                    "{accepted} accepted, {refused} refused by the API server; namespace deleted after {:.0} s",
                    keep.as_secs_f64()
                )
            }
        };
        let end = Instant::now();
        println!(
            "  ** {:>5.0} s  {}: {detail}",
            shared.started.elapsed().as_secs_f64(),
            fault.name()
        );
        lock(&shared.injections).push(Injection {
            fault,
            start,
            end,
            detail,
        });
    }
}

/// The app `--sabotage` makes up beside the real ones.
const GHOST: &str = "ghost";

/// What `--sabotage` does: in the apps' namespace, a Deployment `ghost` with no pod, a
/// `ghost-primary` whose image is marked faulty, and a VirtualService `ghost` sending 60 % to the
/// primary and 60 % to the canary, all checked like the apps' own. They are not serin's (no
/// Canary), so they stay broken until deleted 5 s later: sabotaging serin's own objects would race
/// serin, which puts its weights back within a poll.
async fn sabotage(client: &Client, shared: &Shared) -> anyhow::Result<()> {
    let deployment = |name: &str, replicas: i64, image: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": image}]}
                }
            }
        })
    };
    let faulty = image(GHOST, 666);
    lock(&shared.faulty_images).insert(faulty.clone());
    let vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": GHOST, "namespace": NAMESPACE},
        "spec": {
            "hosts": [GHOST],
            "http": [{"route": [
                {"destination": {"host": format!("{GHOST}-primary")}, "weight": 60},
                {"destination": {"host": format!("{GHOST}-canary")}, "weight": 60}
            ]}]
        }
    });
    for object in [
        deployment(GHOST, 0, &image(GHOST, 1)),
        deployment(&format!("{GHOST}-primary"), 0, &faulty),
        vs,
    ] {
        apply(client, NAMESPACE, &object)
            .await
            .context("creating the sabotage")?;
    }
    println!(
        "  ** sabotage: VirtualService {GHOST} at 60/60 on a canary without pods, {GHOST}-primary on a faulty image"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let dp = DeleteParams::default();
    let _ = dynamic(
        client,
        NAMESPACE,
        "networking.istio.io/v1",
        "VirtualService",
    )
    .delete(GHOST, &dp)
    .await;
    let deployments = dynamic(client, NAMESPACE, "apps/v1", "Deployment");
    for name in [GHOST.to_string(), format!("{GHOST}-primary")] {
        let _ = deployments.delete(&name, &dp).await;
    }
    Ok(())
}

/// Canaries the API server may accept but the controller must judge, each in the same namespace
/// beside a Deployment they can target; each carries the spec marker, which must never reach the
/// logs however the object fails.
pub fn malformed_canaries(marker: &str) -> Vec<Value> {
    let long = "l".repeat(60);
    let hook = json!([{"name": "leak", "type": "event", "url": "http://127.0.0.1:9/", "metadata": {"note": marker}}]);
    let base = |name: &str, target: &str, analysis: Value| {
        json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {"name": name},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                "service": {"port": 9898},
                "analysis": analysis
            }
        })
    };
    let ok = |extra: Value| {
        let mut a = json!({"interval": "5s", "threshold": 2, "maxWeight": 50, "stepWeight": 25, "webhooks": hook});
        if let (Some(a), Some(e)) = (a.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                a.insert(k.clone(), v.clone());
            }
        }
        a
    };
    let mut out = vec![
        base("missing-target", "does-not-exist", ok(json!({}))),
        base("long-names", &long, ok(json!({}))),
        base(
            "missing-template",
            "bad-app",
            ok(
                json!({"metrics": [{"name": "x", "templateRef": {"name": "nope"}, "thresholdRange": {"max": 1}}]}),
            ),
        ),
        base(
            "huge-step",
            "bad-app",
            ok(json!({"stepWeight": 99_999_999_999i64})),
        ),
        base(
            "huge-threshold",
            "bad-app",
            ok(json!({"threshold": 99_999_999_999i64})),
        ),
        base(
            "zero-interval",
            "bad-app",
            ok(json!({"interval": "0s", "threshold": 0})),
        ),
        base(
            "bad-duration",
            "bad-app",
            ok(json!({"interval": "five seconds"})),
        ),
        base("no-analysis", "bad-app", Value::Null),
        base("bad-port", "bad-app", ok(json!({}))),
        base("negative-deadline", "bad-app", ok(json!({}))),
    ];
    out[8]["spec"]["service"]["port"] = json!(70000);
    out[9]["spec"]["progressDeadlineSeconds"] = json!(-5);
    if let Some(spec) = out[7]["spec"].as_object_mut() {
        spec.remove("analysis");
    }
    out
}

async fn malformed_burst(client: &Client, ns: &str, marker: &str) -> anyhow::Result<(u64, u64)> {
    crate::flux::api::ensure_namespace(client, ns).await?;
    for name in ["bad-app".to_string(), "l".repeat(60)] {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "ghcr.io/serin-chaos/bad:1"}]}
                }
            }
        });
        let _ = apply(client, ns, &d).await;
    }
    let (mut refused, mut accepted) = (0, 0);
    for mut c in malformed_canaries(marker) {
        c["metadata"]["namespace"] = json!(ns);
        match apply(client, ns, &c).await {
            Ok(()) => accepted += 1,
            Err(kube::Error::Api(_)) => refused += 1,
            Err(e) => return Err(anyhow::anyhow!("applying a malformed Canary: {e}")),
        }
    }
    Ok((refused, accepted))
}

async fn delete_namespace(client: &Client, ns: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for _ in 0..20 {
        match api.delete(ns, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => return,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn cleanup_malformed(client: &Client) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if let Ok(list) = api.list(&ListParams::default()).await {
        for ns in list.items {
            if let Some(name) = ns.metadata.name
                && name.starts_with(BAD_PREFIX)
            {
                delete_namespace(client, &name).await;
            }
        }
    }
}

/// Once faults have stopped and every release has ended: every app's Canary rests (Succeeded,
/// Failed or Initialized) with no traffic on its canary, within two minutes.
async fn settled(client: &Client, apps: &[String], shared: &Shared) {
    let canaries = dynamic(client, NAMESPACE, "flagger.app/v1beta1", "Canary");
    let vss = dynamic(
        client,
        NAMESPACE,
        "networking.istio.io/v1",
        "VirtualService",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut busy = Vec::new();
        for app in apps {
            let phase = get_json(&canaries, app)
                .await
                .map(|c| phase_of(&c))
                .unwrap_or_default();
            let weight = get_json(&vss, app)
                .await
                .map(|v| canary_weight(&v, app))
                .unwrap_or(-1);
            let rests = TERMINAL.contains(&phase.as_str()) || phase == "Initialized";
            if !rests || weight != 0 {
                busy.push(format!("{app}: phase {phase:?}, canary weight {weight}"));
            }
        }
        if busy.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            shared.violation("no canary left mid-run once faults stop", busy.join("; "));
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The weights of a VirtualService's routes: for each HTTP route, (host, weight) pairs.
pub fn routes(vs: &Value) -> Vec<Vec<(String, Option<i64>)>> {
    vs["spec"]["http"]
        .as_array()
        .map(|http| {
            http.iter()
                .map(|r| {
                    r["route"]
                        .as_array()
                        .map(|dests| {
                            dests
                                .iter()
                                .map(|d| {
                                    (
                                        d["destination"]["host"]
                                            .as_str()
                                            .unwrap_or_default()
                                            .to_string(),
                                        d["weight"].as_i64(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A route's weights sum to 100 (a single destination without a weight takes all).
pub fn weights_sum_to_100(route: &[(String, Option<i64>)]) -> bool {
    match route {
        [] => true,
        [(_, None)] => true,
        _ => route.iter().map(|(_, w)| w.unwrap_or(0)).sum::<i64>() == 100,
    }
}

fn is_canary_host(host: &str, app: &str) -> bool {
    let canary = format!("{app}-canary");
    host == canary || host.starts_with(&format!("{canary}."))
}

/// The largest weight any route of the VirtualService gives `app`'s canary.
pub fn canary_weight(vs: &Value, app: &str) -> i64 {
    routes(vs)
        .iter()
        .flatten()
        .filter(|(h, _)| is_canary_host(h, app))
        .map(|(_, w)| w.unwrap_or(100))
        .max()
        .unwrap_or(0)
}

async fn list_json(api: &Api<DynamicObject>) -> Option<HashMap<String, Value>> {
    let list = api.list(&ListParams::default()).await.ok()?;
    Some(
        list.items
            .into_iter()
            .filter_map(|o| {
                let name = o.metadata.name.clone()?;
                Some((name, serde_json::to_value(o).ok()?))
            })
            .collect(),
    )
}

/// The continuous invariants, every 200 ms. A condition that holds across several polls is one
/// violation, not one per poll.
async fn check_invariants(client: Client, apps: Vec<String>, shared: Arc<Shared>) {
    let vss = dynamic(
        &client,
        NAMESPACE,
        "networking.istio.io/v1",
        "VirtualService",
    );
    let deployments = dynamic(&client, NAMESPACE, "apps/v1", "Deployment");
    let mut active: BTreeSet<String> = BTreeSet::new();
    while !shared.stopped() {
        tokio::time::sleep(POLL).await;
        // VirtualServices, Deployments, VirtualServices again: traffic that was on the canary both
        // before and after a Deployment read that shows no ready pod was really there then.
        let Some(before) = list_json(&vss).await else {
            continue;
        };
        let Some(deps) = list_json(&deployments).await else {
            continue;
        };
        let Some(after) = list_json(&vss).await else {
            continue;
        };
        shared.polls.fetch_add(1, Ordering::SeqCst);
        let mut now: BTreeMap<String, (&'static str, String)> = BTreeMap::new();
        for (name, vs) in &before {
            for (i, route) in routes(vs).iter().enumerate() {
                if !weights_sum_to_100(route) {
                    now.insert(
                        format!("sum/{name}/{i}"),
                        (
                            "VirtualService weights sum to 100",
                            format!("{name} route {i}: {route:?}"),
                        ),
                    );
                }
            }
        }
        let faulty = lock(&shared.faulty_images).clone();
        for app in &apps {
            let w1 = before.get(app).map(|v| canary_weight(v, app)).unwrap_or(0);
            let w2 = after.get(app).map(|v| canary_weight(v, app)).unwrap_or(0);
            if w1 > 0 && w2 > 0 {
                let ready = deps
                    .get(app)
                    .and_then(|d| d["status"]["readyReplicas"].as_i64())
                    .unwrap_or(0);
                if ready == 0 {
                    now.insert(
                        format!("unready/{app}"),
                        (
                            "no traffic to a canary without ready pods",
                            format!(
                                "{app}-canary has weight {w1}/{w2} while Deployment {app} has no ready replica"
                            ),
                        ),
                    );
                }
            }
            if let Some(primary) = deps.get(&format!("{app}-primary")) {
                let img = image_of(primary);
                let simulated = primary["spec"]["template"]["metadata"]["annotations"]
                    [crate::mesh::behaviour::SIMULATE_ANNOTATION]
                    .as_str()
                    .map(str::to_string);
                if faulty.contains(&img) || simulated.is_some() {
                    now.insert(
                        format!("primary/{app}/{img}"),
                        (
                            "a faulty release never reaches the primary",
                            format!("{app}-primary runs {img} (simulate: {simulated:?})"),
                        ),
                    );
                }
            }
        }
        for (key, (invariant, what)) in &now {
            if !active.contains(key) {
                shared.violation(invariant, what.clone());
            }
        }
        active = now.into_keys().collect();
    }
}

/// serin's logs, once every replica has stopped: no panic, and neither planted marker.
fn scan_logs(shared: &Shared, logs: &[PathBuf], markers: &Markers) {
    let leaks = [
        (&markers.secret, "no secret value in the logs"),
        (&markers.spec, "no spec body in the logs"),
    ];
    for log in logs {
        let Ok(text) = std::fs::read_to_string(log) else {
            continue;
        };
        let name = log
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (needle, invariant) in [
            ("panicked at", "no panic in serin's logs"),
            ("RUST_BACKTRACE", "no panic in serin's logs"),
        ] {
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                shared.violation(invariant, format!("{name}: {}", clip(line)));
            }
        }
        for (needle, invariant) in leaks {
            let hits: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
            if let Some(first) = hits.first() {
                shared.violation(
                    invariant,
                    format!("{name}: {} lines, first: {}", hits.len(), clip(first)),
                );
            }
        }
    }
}

fn clip(line: &str) -> String {
    let mut s: String = line.chars().take(300).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    s
}

/// How the webhook receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok = 0,
    Fail = 1,
    Hang = 2,
    Refuse = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Fail,
            2 => Mode::Hang,
            3 => Mode::Refuse,
            _ => Mode::Ok,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ok => "200",
            Mode::Fail => "500",
            Mode::Hang => "hang",
            Mode::Refuse => "refuse",
        }
    }
}

/// The event-webhook and alert receiver on a loopback port. Every connection gets one answer and
/// is closed, so that refusing (closing the listening socket) reaches every sender, pooled
/// connections or not.
struct Receiver {
    port: u16,
    mode: Arc<AtomicU8>,
    counts: Arc<[AtomicU64; 4]>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(AtomicU8::new(Mode::Ok as u8));
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let task = tokio::spawn(receive(listener, port, mode.clone(), counts.clone()));
        Ok(Receiver {
            port,
            mode,
            counts,
            task,
        })
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn counts(&self) -> BTreeMap<&'static str, u64> {
        // Refused connections never reach it, so they are not counted.
        [Mode::Ok, Mode::Fail, Mode::Hang]
            .iter()
            .map(|m| (m.name(), self.counts[*m as usize].load(Ordering::SeqCst)))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    first: tokio::net::TcpListener,
    port: u16,
    mode: Arc<AtomicU8>,
    counts: Arc<[AtomicU64; 4]>,
) {
    let mut listener = Some(first);
    loop {
        let refusing = Mode::from_u8(mode.load(Ordering::SeqCst)) == Mode::Refuse;
        match (&listener, refusing) {
            (Some(_), true) => {
                // Closing the socket: connections are refused until it is bound again.
                listener = None;
            }
            (None, false) => {
                listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .ok();
                if listener.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            (None, true) => tokio::time::sleep(Duration::from_millis(100)).await,
            (Some(l), false) => {
                tokio::select! {
                    accepted = l.accept() => {
                        if let Ok((sock, _)) = accepted {
                            tokio::spawn(answer(sock, mode.clone(), counts.clone()));
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

async fn answer(mut sock: tokio::net::TcpStream, mode: Arc<AtomicU8>, counts: Arc<[AtomicU64; 4]>) {
    let read = tokio::time::timeout(Duration::from_secs(10), read_request(&mut sock)).await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let m = Mode::from_u8(mode.load(Ordering::SeqCst));
    counts[m as usize].fetch_add(1, Ordering::SeqCst);
    let status = match m {
        Mode::Ok => "200 OK",
        Mode::Fail => "500 Internal Server Error",
        Mode::Hang => {
            // No answer while hanging (at most two minutes), then the connection is dropped.
            let until = Instant::now() + Duration::from_secs(120);
            while Mode::from_u8(mode.load(Ordering::SeqCst)) == Mode::Hang && Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return;
        }
        Mode::Refuse => return,
    };
    let body = "chaos receiver";
    let _ = sock
        .write_all(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    let _ = sock.shutdown().await;
}

/// Reads one HTTP/1.1 request (headers and a `content-length` body).
async fn read_request(sock: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length.min(1 << 20) {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plan_with_both_kinds() {
        for seed in 0..200 {
            let a = plan(&mut Rng::new(seed), 5, 2);
            let b = plan(&mut Rng::new(seed), 5, 2);
            assert_eq!(a, b);
            let all: Vec<_> = a.iter().flatten().collect();
            assert_eq!(all.len(), 5);
            assert!(all.iter().any(|k| k.is_some()), "seed {seed}: {a:?}");
            assert!(all.iter().any(|k| k.is_none()), "seed {seed}: {a:?}");
        }
        assert_eq!(plan(&mut Rng::new(3), 1, 4).len(), 1);
    }

    #[test]
    fn weights_must_sum_to_100() {
        let vs = json!({"spec": {"http": [
            {"route": [{"destination": {"host": "a-primary"}, "weight": 75}, {"destination": {"host": "a-canary"}, "weight": 25}]},
            {"route": [{"destination": {"host": "a-primary"}}]},
            {"route": [{"destination": {"host": "a-primary"}, "weight": 80}, {"destination": {"host": "a-canary"}, "weight": 10}]}
        ]}});
        let r = routes(&vs);
        assert!(weights_sum_to_100(&r[0]));
        assert!(weights_sum_to_100(&r[1]));
        assert!(!weights_sum_to_100(&r[2]));
        assert_eq!(canary_weight(&vs, "a"), 25);
        assert_eq!(canary_weight(&vs, "b"), 0);
        assert_eq!(canary_weight(&json!({}), "a"), 0);
    }

    #[test]
    fn rss_from_proc_status() {
        assert_eq!(
            parse_rss_kb("Name:\tserin\nVmRSS:\t   51234 kB\nThreads: 9\n"),
            Some(51234)
        );
        assert_eq!(parse_rss_kb("Name:\tserin\n"), None);
        assert!(rss_kb(std::process::id() as i32).is_some_and(|kb| kb > 0));
    }

    fn report(violations: Vec<Violation>, correct: bool) -> Report {
        let t = Instant::now();
        let inj = |f, s: u64| Injection {
            fault: f,
            start: t + Duration::from_secs(s),
            end: t + Duration::from_secs(s + 2),
            detail: String::new(),
        };
        Report {
            seed: 7,
            started: t,
            duration: Duration::from_secs(100),
            injections: vec![inj(Fault::KillLeader, 10), inj(Fault::PrometheusPause, 60)],
            rollouts: vec![Rollout {
                app: "app0".into(),
                image: "x:1".into(),
                faulty: None,
                start: t + Duration::from_secs(5),
                applied: None,
                end: t + Duration::from_secs(30),
                phase: "Succeeded".into(),
                primary_image: "x:1".into(),
                correct,
            }],
            planned: 1,
            violations,
            peak_rss_kb: 1000,
            load: vec![],
            own_exits: vec![],
            leaders: vec![],
            serin_starts: 2,
            webhook_requests: BTreeMap::new(),
            malformed_refused: 0,
            malformed_accepted: 0,
            invariant_polls: 10,
            aborted: None,
        }
    }

    #[test]
    fn the_table_charges_violations_to_the_faults_before_them() {
        let t0 = Instant::now();
        let r = report(vec![], true);
        assert!(r.ok());
        let table = r.table();
        let leader = table
            .lines()
            .find(|l| l.contains("SIGKILL the leader"))
            .unwrap();
        assert!(
            leader.contains("|          1 |        1 |       1 |                    0 |"),
            "{table}"
        );
        let mut v = report(
            vec![Violation {
                at: r.started + Duration::from_secs(20),
                invariant: "x",
                what: "y".into(),
            }],
            false,
        );
        v.started = r.started;
        assert!(!v.ok());
        let table = v.table();
        let leader = table
            .lines()
            .find(|l| l.contains("SIGKILL the leader"))
            .unwrap();
        assert!(leader.contains("|                    1 |"), "{table}");
        let prom = table.lines().find(|l| l.contains("Prometheus")).unwrap();
        assert!(prom.contains("|                    0 |"), "{table}");
        assert!(v.details().contains("INCORRECT"));
        let _ = t0;
    }

    #[test]
    fn load_from_serins_metrics_and_its_log() {
        let metrics = "# HELP serin_reconciles Reconciles\nserin_reconciles_total{result=\"ok\"} 70\nserin_reconciles_total{result=\"error\"} 3\nserin_prometheus_query_duration_seconds_count 8\nserin_prometheus_query_duration_seconds_sum 0.4\n";
        assert_eq!(load_counters(metrics), (73, 8));
        assert_eq!(load_counters(""), (0, 0));
        let log = "x INFO serin::telemetry: serving /metrics, /healthz and /readyz on 127.0.0.1:1111\ny\nz INFO serin::telemetry: serving /metrics, /healthz and /readyz on 127.0.0.1:2222\n";
        assert_eq!(listen_addr(log).as_deref(), Some("127.0.0.1:2222"));
        assert_eq!(listen_addr("nothing"), None);
    }

    #[test]
    fn load_peaks_over_any_minute() {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let load: Vec<(Instant, u64, u64)> = (1..=30)
            .map(|i| (at(i * 5), if i == 20 { 500 } else { 10 }, 2))
            .collect();
        // The burst at 100 s counts in every window that ends 100..155 s.
        assert_eq!(peak_per_minute(&load, at(0), at(200)), (500 + 11 * 10, 24));
        assert_eq!(peak_per_minute(&load, at(0), at(90)), (120, 24));
        // No sample in the range.
        assert_eq!(peak_per_minute(&load, at(160), at(200)), (0, 0));
        assert_eq!(peak_per_minute(&[], at(0), at(10)), (0, 0));
    }

    #[test]
    fn malformed_canaries_carry_the_marker() {
        let all = malformed_canaries("MARK");
        assert!(all.len() >= 8);
        for c in &all {
            let text = c.to_string();
            if c["metadata"]["name"] != "no-analysis" {
                assert!(text.contains("MARK"), "{text}");
            }
        }
    }
}
