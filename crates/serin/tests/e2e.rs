//! The end-to-end suite: every strategy and option of docs/flagger-contract.md the way a user
//! drives them. Manifests are the YAML files under `tests/e2e/<scenario>/`, applied with
//! `kubectl apply --server-side`; a release is the same Deployment file with a new image tag,
//! applied again; `serin controller` runs as its own process; the mesh simulator plays Istio.
//!
//! Each test asserts the outcome (phase, primary image, Events) and the traffic: the exact
//! VirtualService weights over time (`watch_weights`) and what the simulated mesh really carried,
//! sampled every second from its `istio_requests_total` counters ([`traffic::TrafficLog`]).
//! The scenarios run concurrently, one namespace, mesh and controller each. They wait on clocks
//! (10 s analysis intervals), not on CPUs, so this binary is its own harness (`harness = false`
//! in Cargo.toml): libtest would run only as many at once as there are cores, which on a 2-core
//! CI machine turns two minutes into six. `cargo test --test e2e [-- FILTER...]` runs the
//! scenarios whose names contain a filter; `-- --list` lists them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;
#[path = "support/traffic.rs"]
mod traffic;
#[path = "support/user.rs"]
mod user;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use serde_json::Value;
use serin::rollout::{Routes, messages as msg};
use serin_sandbox::testenv::eventually;
use support::{WeightLog, World, image_of, replicas_of};
use traffic::{TrafficLog, assert_plateaus, show};

/// Longer than `support::LIMIT`: the whole binary's tests share two cores.
const LIMIT: Duration = Duration::from_secs(180);
const IMAGE: &str = "ghcr.io/stefanprodan/podinfo";
/// The Services live traffic reaches the two revisions through.
const APEX_ROUTES: [&str; 2] = ["podinfo-primary", "podinfo-canary"];
/// Tolerance on a sampled share, in percentage points: a one-second sample of 20 requests per
/// second is 5 points per request, and a sample can straddle a weight change.
const TOL: f64 = 8.0;
/// Consecutive samples that make a plateau (a step lasts an interval: 10 samples).
const RUN: usize = 3;

/// A test's world as a user sees it: kubectl, the Canary `podinfo`, the traffic log.
struct E2e {
    w: World,
    kubeconfig: PathBuf,
    traffic: TrafficLog,
    started: std::time::Instant,
}

impl Drop for E2e {
    fn drop(&mut self) {
        // Shown with `--show-output`: where the binary's wall time goes.
        eprintln!(
            "{}: {:.1} s",
            self.w.ns,
            self.started.elapsed().as_secs_f64()
        );
    }
}

impl E2e {
    async fn new(prefix: &str) -> E2e {
        let started = std::time::Instant::now();
        let w = World::new(prefix).await;
        let kubeconfig = w.env.kubeconfig_path().to_path_buf();
        let traffic = TrafficLog::start(w.mesh.metrics_addr());
        E2e {
            w,
            kubeconfig,
            traffic,
            started,
        }
    }

    fn ns(&self) -> &str {
        &self.w.ns
    }

    /// `podinfo.<ns>`: how Flagger's texts name the canary and its target.
    fn c(&self) -> String {
        msg::qualified("podinfo", &self.w.ns)
    }

    async fn apply(&self, rel: &str, edits: &[(&str, &str)]) {
        user::apply(&self.kubeconfig, &self.w.ns, rel, edits).await;
    }

    async fn kubectl(&self, args: &[&str]) -> String {
        user::kubectl(&self.kubeconfig, &self.w.ns, args, None).await
    }

    /// Applies the app and its Canary and waits for the initialization.
    async fn onboard(&self, canary: &str) {
        self.apply("base/deployment.yaml", &[]).await;
        self.apply(canary, &[]).await;
        self.w.wait_phase("podinfo", "Initialized", LIMIT).await;
    }

    /// A release: the Deployment file with image tag `tag` (and `extra` edits), applied again.
    /// Returns the traffic log's clock at that moment.
    async fn release(&self, tag: &str, extra: &[(&str, &str)]) -> f64 {
        let at = self.traffic.now();
        let image = format!("{IMAGE}:{tag}");
        let mut edits = vec![(":6.0.0", image.strip_prefix(IMAGE).unwrap())];
        edits.extend_from_slice(extra);
        self.apply("base/deployment.yaml", &edits).await;
        at
    }

    async fn primary_image(&self) -> String {
        image_of(&self.w.deployment("podinfo-primary").await.expect("primary"))
    }

    async fn messages(&self) -> Vec<(String, String)> {
        self.w.events("podinfo").await
    }

    async fn assert_events(&self, wanted: &[String]) {
        let events = self.messages().await;
        for want in wanted {
            assert!(
                events.iter().any(|(_, m)| m == want),
                "missing event {want:?} in {events:#?}"
            );
        }
    }

    /// The canary's share of live traffic (in %) per sample taken after `since`.
    /// How many times an Event was recorded (repeats are counted on one Event object).
    async fn event_count(&self, message: &str) -> i32 {
        let api: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.w.client.clone(), self.ns());
        let lp = kube::api::ListParams::default()
            .fields("involvedObject.name=podinfo,involvedObject.kind=Canary");
        api.list(&lp)
            .await
            .expect("list events")
            .items
            .iter()
            .filter(|e| e.message.as_deref() == Some(message))
            .map(|e| e.count.unwrap_or(1))
            .sum()
    }

    /// Waits for Events that may land just after what the test waited for (serin records
    /// "Terminated" once the finalizer is gone, so after `kubectl delete` returns).
    async fn wait_events(&self, wanted: &[String]) {
        eventually("events", Duration::from_secs(20), || async {
            let events = self.messages().await;
            match wanted.iter().find(|w| !events.iter().any(|(_, m)| m == *w)) {
                None => Ok(()),
                Some(w) => Err(format!("missing {w:?} in {events:#?}")),
            }
        })
        .await;
    }

    fn shares_since(&self, since: f64) -> Vec<(f64, f64)> {
        self.traffic
            .shares(&APEX_ROUTES, "podinfo", 10)
            .into_iter()
            .filter(|(t, _)| *t > since)
            .collect()
    }

    /// The share samples before `until` (the baseline: all live traffic on the primary).
    fn assert_no_canary_traffic_before(&self, until: f64) {
        let before: Vec<_> = self
            .traffic
            .shares(&APEX_ROUTES, "podinfo", 10)
            .into_iter()
            .filter(|(t, _)| *t < until)
            .collect();
        assert!(
            before.iter().all(|(_, s)| *s <= TOL),
            "canary traffic before the release: {}",
            show(&before)
        );
    }
}

fn routes(primary: u32, canary: u32, mirror: bool) -> Routes {
    Routes {
        primary,
        canary,
        mirror,
    }
}

/// Asserts the exact canary weights the VirtualService went through.
fn assert_weights(weights: &WeightLog, want: &[u32]) {
    assert_eq!(
        weights.canary_weights(),
        want,
        "VirtualService weights over time: {:?}",
        weights.all()
    );
}

fn max_share(shares: &[(f64, f64)]) -> f64 {
    shares.iter().map(|(_, s)| *s).fold(0.0, f64::max)
}

/// Progressive canary, built-in metrics: 25% → 50% → promoted; the mesh carried each step.
async fn progressive_canary_with_builtin_metrics_is_promoted_step_by_step() {
    let t = E2e::new("e2e-canary").await;
    t.onboard("canary/canary.yaml").await;
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[]).await;
    let c = t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;

    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(
        replicas_of(&t.w.deployment("podinfo").await.unwrap()),
        0,
        "the canary is scaled to zero"
    );
    let status = c.status.unwrap();
    assert_eq!(
        (status.canary_weight, status.failed_checks),
        (Some(0), Some(0))
    );
    assert_weights(&weights, &[0, 25, 50, 0]);

    t.assert_no_canary_traffic_before(t0);
    let shares = t.shares_since(t0);
    assert_plateaus("live traffic", &shares, &[25.0, 50.0, 0.0], TOL, RUN);
    assert!(max_share(&shares) <= 50.0 + TOL, "{}", show(&shares));
    let last = shares.last().expect("samples");
    assert!(
        last.1 <= TOL,
        "all traffic back on the primary: {}",
        show(&shares)
    );

    let c = t.c();
    t.assert_events(&[
        msg::new_revision_scaling_up(&c),
        msg::starting_analysis(&c),
        msg::advance_canary_weight(&c, 25),
        msg::advance_canary_weight(&c, 50),
        msg::copying_template(&c, &msg::qualified("podinfo-primary", t.ns())),
        msg::ROUTING_ALL_TO_PRIMARY.to_string(),
        msg::promotion_completed(&c),
    ])
    .await;
    for once in [
        msg::new_revision_scaling_up(&c),
        msg::starting_analysis(&c),
        msg::promotion_completed(&c),
    ] {
        assert_eq!(t.event_count(&once).await, 1, "{once:?} once per release");
    }
}

/// A MetricTemplate judges the canary: a release answering 50% errors is rolled back after the
/// first analysed step (traffic back to 0, the primary untouched); the next, healthy release is
/// promoted (the failed one does not block it).
async fn metric_template_rolls_back_a_faulty_release_and_promotes_a_healthy_one() {
    let t = E2e::new("e2e-template").await;
    t.apply(
        "metric-template/metric-template.yaml",
        &[("${PROMETHEUS_URL}", t.w.env.prometheus_url())],
    )
    .await;
    t.onboard("metric-template/canary.yaml").await;
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[("errors=0%", "errors=50%")]).await;
    let c = t.w.wait_phase("podinfo", "Failed", LIMIT).await;
    t.traffic.settle(5).await;
    let status = c.status.unwrap();
    assert_eq!(
        (status.failed_checks, status.canary_weight),
        (Some(2), Some(0))
    );
    assert_eq!(
        t.primary_image().await,
        format!("{IMAGE}:6.0.0"),
        "the primary is untouched"
    );
    let target = t.w.deployment("podinfo").await.unwrap();
    assert_eq!(
        replicas_of(&target),
        0,
        "the canary is scaled to zero before the status says Failed; who wrote the target: \
         {}\ncontroller log: {}",
        serde_json::to_string(&target.metadata.managed_fields).unwrap(),
        t.w.controller.log_tail()
    );
    assert_weights(&weights, &[0, 25, 0]);
    let t1 = t.traffic.now();
    let shares = t.shares_since(t0);
    assert_plateaus("faulty release", &shares, &[25.0, 0.0], TOL, RUN);
    t.assert_no_canary_traffic_before(t0);
    assert!(
        max_share(&shares) <= 25.0 + TOL,
        "the canary never got more than the analysed step: {}",
        show(&shares)
    );
    let c = t.c();
    let events = t.messages().await;
    assert!(
        events.iter().any(|(k, m)| k == "Warning"
            && m.starts_with(&format!("Halt {c} advancement error-rate "))
            && m.ends_with(" > 1")),
        "{events:#?}"
    );
    for want in [msg::rolling_back_threshold(&c, 2), msg::canary_failed(&c)] {
        assert!(
            events.contains(&("Warning".to_string(), want.clone())),
            "missing {want:?} in {events:#?}"
        );
    }

    // The fix: a healthy release after the failed one.
    t.release("6.0.2", &[]).await;
    let c = t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.2"));
    assert_weights(&weights, &[0, 25, 0, 25, 50, 0]);
    let shares = t.shares_since(t1);
    assert_plateaus("healthy release", &shares, &[25.0, 50.0, 0.0], TOL, RUN);
    let status = c.status.unwrap();
    let m = status
        .serin_metrics
        .iter()
        .find(|m| m.name == "error-rate")
        .expect("the template's last value in status");
    assert!(m.value.is_some_and(|v| v <= 1.0), "{m:?}");
    let query = m.query.clone().unwrap_or_default();
    assert!(
        query.contains("reporter=\"destination\"")
            && query.contains(&format!("destination_workload_namespace=\"{}\"", t.ns()))
            && query.contains("[30s]"),
        "the rendered template: {query}"
    );
}

/// `stepWeights: [5, 20, 50]`: exactly these weights, and the mesh carried each of them.
async fn step_weights_follow_the_schedule() {
    let t = E2e::new("e2e-steps").await;
    t.onboard("step-weights/canary.yaml").await;
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[]).await;
    t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_weights(&weights, &[0, 5, 20, 50, 0]);
    // At 20 requests per sample, 5% is one request a second: average over three samples.
    let shares = smooth(&t.shares_since(t0), 3);
    assert_plateaus("stepWeights", &shares, &[5.0, 20.0, 50.0, 0.0], 3.5, RUN);
    t.assert_no_canary_traffic_before(t0);
    let c = t.c();
    t.assert_events(&[
        msg::advance_canary_weight(&c, 5),
        msg::advance_canary_weight(&c, 20),
        msg::advance_canary_weight(&c, 50),
        msg::promotion_completed(&c),
    ])
    .await;
}

/// Moving average over `n` samples (each point is the mean of itself and the `n-1` before).
fn smooth(shares: &[(f64, f64)], n: usize) -> Vec<(f64, f64)> {
    shares
        .windows(n)
        .map(|w| (w[n - 1].0, w.iter().map(|(_, s)| s).sum::<f64>() / n as f64))
        .collect()
}

/// The A/B run shared by the header and cookie scenarios: during the iterations exactly the
/// matching requests (`matched`% of them) reach the canary, then the release is promoted.
async fn ab_run(t: &E2e, matched: f64) -> Value {
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[]).await;
    let vs = eventually("A/B routes", LIMIT, || async {
        let vs = t.w.virtual_service("podinfo").await.ok_or("no vs")?;
        if vs["spec"]["http"].as_array().map(Vec::len) == Some(2)
            && vs["spec"]["http"][0]["route"][1]["weight"] == 100
        {
            Ok(vs)
        } else {
            Err(vs["spec"].to_string())
        }
    })
    .await;
    t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(
        weights.all(),
        vec![
            routes(100, 0, false),
            routes(0, 100, false),
            routes(100, 0, false)
        ]
    );
    let shares = t.shares_since(t0);
    assert_plateaus("A/B", &shares, &[matched, 0.0], TOL, RUN);
    t.assert_no_canary_traffic_before(t0);
    assert!(
        max_share(&shares) <= matched + TOL,
        "only matching requests reach the canary: {}",
        show(&shares)
    );
    let c = t.c();
    t.assert_events(&[
        msg::advance_iteration(&c, 1, 2),
        msg::advance_iteration(&c, 2, 2),
        msg::promotion_completed(&c),
    ])
    .await;
    vs
}

async fn ab_testing_with_a_header_match_sends_only_matching_requests_to_the_canary() {
    let t = E2e::new("e2e-ab-header").await;
    t.onboard("ab-header/canary.yaml").await;
    let vs = ab_run(&t, 30.0).await;
    assert_eq!(
        vs["spec"]["http"][0]["match"],
        serde_json::json!([
            {"headers": {"x-canary": {"exact": "insider"}}},
            {"headers": {"user-agent": {"regex": ".*Firefox.*"}}}
        ])
    );
    assert_eq!(
        vs["spec"]["http"][1]["route"],
        serde_json::json!([{"destination": {"host": "podinfo-primary"}}])
    );
}

async fn ab_testing_with_a_cookie_match_sends_only_cookie_holders_to_the_canary() {
    let t = E2e::new("e2e-ab-cookie").await;
    t.onboard("ab-cookie/canary.yaml").await;
    let vs = ab_run(&t, 20.0).await;
    assert_eq!(
        vs["spec"]["http"][0]["match"],
        serde_json::json!([{"headers": {"cookie": {"regex": "^(.*?;)?(canary=always)(;.*)?$"}}}])
    );
}

/// Blue/Green with mirroring at 50%: the canary first gets copies of half the live requests
/// (the primary still answers all of them), then all traffic, then it is promoted.
async fn blue_green_with_mirroring_mirrors_then_switches_then_promotes() {
    let t = E2e::new("e2e-bg-mirror").await;
    t.onboard("blue-green-mirror/canary.yaml").await;
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[]).await;
    t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(
        weights.all(),
        vec![
            routes(100, 0, false),
            routes(100, 0, true),
            routes(0, 100, false),
            routes(100, 0, false)
        ]
    );
    let vs_mirror = t.w.virtual_service("podinfo").await.unwrap();
    assert!(vs_mirror["spec"]["http"][0].get("mirror").is_none());

    // Mirrored copies are recorded by the canary's proxy like live requests: with the primary
    // answering 100% and the canary a 50% copy, the canary holds a third of the records.
    let shares = t.shares_since(t0);
    assert_plateaus(
        "mirroring, then the switch",
        &shares,
        &[100.0 / 3.0, 100.0, 0.0],
        TOL,
        RUN,
    );
    t.assert_no_canary_traffic_before(t0);
    // A third is also what a 67/33 split would give; mirroring adds copies instead: the primary
    // still answers the whole 20 requests a second and the canary records 10 more on top.
    let samples = t.traffic.samples();
    let (mut primary, mut copies, mut seconds, mut n) = (0u64, 0u64, 0.0, 0);
    for w in samples.windows(2).filter(|w| w[1].at > t0) {
        let (p, c) = (
            w[1].to(&APEX_ROUTES, "podinfo-primary"),
            w[1].to(&APEX_ROUTES, "podinfo"),
        );
        let share = 100.0 * c as f64 / (p + c).max(1) as f64;
        if p + c >= 10 && (share - 100.0 / 3.0).abs() <= TOL {
            primary += p;
            copies += c;
            seconds += w[1].at - w[0].at;
            n += 1;
        }
    }
    assert!(n >= 10, "two iterations of mirroring: {n} samples");
    let (p_rate, c_rate) = (primary as f64 / seconds, copies as f64 / seconds);
    assert!(
        (17.0..=23.0).contains(&p_rate) && (7.0..=13.0).contains(&c_rate),
        "while mirroring the primary answers all 20 requests/s and the canary gets 10/s of copies: \
         primary {p_rate:.1}/s, canary {c_rate:.1}/s"
    );
    let c = t.c();
    t.assert_events(&[
        msg::advance_iteration(&c, 1, 2),
        msg::advance_iteration(&c, 2, 2),
        msg::STOP_MIRRORING_ROUTE_TO_CANARY.to_string(),
        msg::promotion_completed(&c),
    ])
    .await;
}

/// Blue/Green without mirroring: live traffic stays on the primary while the load tester
/// exercises the canary, then everything switches to the canary, then back to the promoted
/// primary.
async fn blue_green_without_mirroring_keeps_live_traffic_on_the_primary_until_the_switch() {
    let t = E2e::new("e2e-bg").await;
    t.apply("blue-green/loadtest.yaml", &[]).await;
    t.onboard("blue-green/canary.yaml").await;
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[]).await;
    t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_eq!(
        weights.all(),
        vec![
            routes(100, 0, false),
            routes(0, 100, false),
            routes(100, 0, false)
        ]
    );
    let shares = t.shares_since(t0);
    assert_plateaus("the switch", &shares, &[100.0, 0.0], TOL, RUN);
    t.assert_no_canary_traffic_before(t0);
    // Before the switch: load-tester requests reach the canary, live ones do not.
    let tested_alone = t
        .traffic
        .samples()
        .into_iter()
        .filter(|s| s.at > t0)
        .take_while(|s| s.to(&APEX_ROUTES, "podinfo") == 0)
        .filter(|s| s.to(&["podinfo-loadtest"], "podinfo") > 0)
        .count();
    assert!(
        tested_alone >= 10,
        "the canary was tested by the load tester alone for two iterations ({tested_alone} samples)"
    );
    let c = t.c();
    t.assert_events(&[
        msg::advance_iteration(&c, 1, 2),
        msg::advance_iteration(&c, 2, 2),
        msg::ROUTING_ALL_TO_CANARY.to_string(),
        msg::promotion_completed(&c),
    ])
    .await;
}

/// Session affinity: the weighted route steps as usual, and users holding the canary cookie
/// (20% of requests) stay on the canary on top of its weight: 20 + 80 × weight. The simulated
/// clients present the cookie from the start of the run, and serin puts the sticky rule up with
/// the run (at weight 0), so they are on the canary from then on; before and after, nobody is.
async fn session_affinity_keeps_cookie_holders_on_the_canary() {
    let t = E2e::new("e2e-affinity").await;
    t.onboard("session-affinity/canary.yaml").await;
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[]).await;
    let c = t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_weights(&weights, &[0, 25, 50, 0]);
    let shares = t.shares_since(t0);
    assert_plateaus(
        "sticky users plus the weight",
        &shares,
        &[40.0, 60.0, 0.0],
        TOL,
        RUN,
    );
    assert!(max_share(&shares) <= 60.0 + TOL, "{}", show(&shares));
    t.assert_no_canary_traffic_before(t0);
    let status = c.status.unwrap();
    let previous = status
        .previous_session_affinity_cookie
        .expect("the run's cookie is kept as the previous one");
    assert!(previous.starts_with("flagger-cookie="), "{previous}");
    let vs = t.w.virtual_service("podinfo").await.unwrap();
    assert_eq!(
        vs["spec"]["http"][0]["headers"]["response"]["add"]["Set-Cookie"],
        Value::String(format!("{previous}; Max-Age=-1")),
        "the cookie expires after the run: {vs}"
    );
}

/// skipAnalysis: a ready release is promoted without any traffic shifting; a release that never
/// becomes ready is rolled back at the progress deadline, and live traffic never sees either.
async fn skip_analysis_promotes_without_traffic_and_rolls_back_a_release_that_never_gets_ready() {
    let t = E2e::new("e2e-skip").await;
    t.onboard("skip-analysis/canary.yaml").await;
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[]).await;
    t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    let c = t.c();
    t.assert_events(&[
        msg::copying_template(&c, &msg::qualified("podinfo-primary", t.ns())),
        msg::promotion_skipped(&c),
    ])
    .await;
    eventually("canary scaled down", LIMIT, || async {
        let d = t.w.deployment("podinfo").await.ok_or("gone")?;
        (replicas_of(&d) == 0)
            .then_some(())
            .ok_or(format!("replicas {}", replicas_of(&d)))
    })
    .await;

    t.release(
        "6.0.2",
        &[(
            "serin.dev/simulate-unready: \"false\"",
            "serin.dev/simulate-unready: \"true\"",
        )],
    )
    .await;
    let status =
        t.w.wait_phase("podinfo", "Failed", LIMIT)
            .await
            .status
            .unwrap();
    t.traffic.settle(5).await;
    assert_eq!(status.canary_weight, Some(0));
    assert_eq!(
        t.primary_image().await,
        format!("{IMAGE}:6.0.1"),
        "the unready release never reaches the primary"
    );
    assert_eq!(replicas_of(&t.w.deployment("podinfo").await.unwrap()), 0);
    let events = t.messages().await;
    let prefix = msg::rolling_back_deadline(&c, &msg::canary_not_ready(&c, ""));
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "Warning" && m.starts_with(&prefix)),
        "{events:#?}"
    );
    assert!(
        weights.canary_weights().iter().all(|w| *w == 0),
        "{:?}",
        weights.all()
    );
    let shares = t.shares_since(t0);
    assert!(shares.len() >= 10, "{}", show(&shares));
    assert!(
        max_share(&shares) <= TOL,
        "live traffic never reached a skipped canary: {}",
        show(&shares)
    );
}

/// confirm-rollout and confirm-promotion gates: nothing moves until the rollout gate opens; the
/// canary holds its maximum weight (with its traffic) until the promotion gate opens.
async fn confirm_rollout_and_confirm_promotion_gates_hold_the_release() {
    let t = E2e::new("e2e-gates").await;
    let rollout = user::Gate::closed().await;
    let promotion = user::Gate::closed().await;
    t.apply("base/deployment.yaml", &[]).await;
    t.apply(
        "gates/canary.yaml",
        &[
            ("${ROLLOUT_GATE}", &rollout.url),
            ("${PROMOTION_GATE}", &promotion.url),
        ],
    )
    .await;
    t.w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let weights = t.w.watch_weights("podinfo");
    let c = t.c();
    let t0 = t.release("6.0.1", &[]).await;
    t.w.wait_phase("podinfo", "Waiting", LIMIT).await;
    t.assert_events(&[msg::halt_waiting_approval(&c, "confirm-rollout-gate")])
        .await;
    // Held for more than an interval: the canary is not even scaled up.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let held = t.w.canary("podinfo").await.status.unwrap();
    assert_eq!(
        held.phase.map(|p| p.as_str().to_string()),
        Some("Waiting".into())
    );
    assert_eq!(replicas_of(&t.w.deployment("podinfo").await.unwrap()), 0);
    assert!(rollout.calls() >= 2, "the gate is asked every interval");
    let t_open = t.traffic.now();
    rollout.open();

    t.w.wait_phase("podinfo", "WaitingPromotion", LIMIT).await;
    t.assert_events(&[msg::halt_waiting_promotion(&c, "confirm-promotion-gate")])
        .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let held = t.w.canary("podinfo").await.status.unwrap();
    assert_eq!(
        held.phase.map(|p| p.as_str().to_string()),
        Some("WaitingPromotion".into())
    );
    assert_eq!(
        held.canary_weight,
        Some(50),
        "the status shows the weight the mesh holds"
    );
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.0"));
    let t_promote = t.traffic.now();
    promotion.open();
    t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_weights(&weights, &[0, 25, 50, 0]);

    let shares = t.shares_since(t0);
    let waiting: Vec<_> = shares
        .iter()
        .filter(|(at, _)| *at < t_open)
        .cloned()
        .collect();
    assert!(
        waiting.len() >= 12 && max_share(&waiting) <= TOL,
        "no canary traffic while waiting for approval: {}",
        show(&waiting)
    );
    assert_plateaus("gated run", &shares, &[25.0, 50.0, 0.0], TOL, RUN);
    // The maximum weight was held from before the promotion gate was asked until it opened.
    let held: Vec<_> = shares
        .iter()
        .filter(|(at, _)| *at > t_promote - 12.0 && *at < t_promote)
        .cloned()
        .collect();
    assert!(
        held.len() >= 10 && held.iter().all(|(_, s)| (s - 50.0).abs() <= TOL),
        "50% held while waiting for promotion: {}",
        show(&held)
    );
    // Flagger's record that each gate let the release through.
    t.assert_events(&[
        msg::confirm_passed("Confirm-rollout", "confirm-rollout-gate"),
        msg::confirm_passed("Confirm-promotion", "confirm-promotion-gate"),
    ])
    .await;
}

/// revertOnDeletion, mid-run: `kubectl delete canary` returns once serin has handed the app back:
/// the target runs, the apex Service selects it, serin's objects are collected.
async fn revert_on_deletion_hands_a_running_release_back_to_the_target() {
    let t = E2e::new("e2e-revert").await;
    t.onboard("revert-on-deletion/canary.yaml").await;
    let canary = t.w.canary("podinfo").await;
    assert!(
        canary
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"finalizer.flagger.app".to_string())
    );
    let t0 = t.release("6.0.1", &[]).await;
    t.w.wait_weight("podinfo", 25).await;
    // Let the mesh carry the step for a few samples.
    t.traffic.settle(5).await;
    let t_delete = t.traffic.now();
    t.kubectl(&["delete", "canary", "podinfo", "--timeout=120s"])
        .await;
    let c = t.c();
    t.wait_events(&[msg::terminating(&c), msg::terminated(&c)])
        .await;
    let target = t.w.deployment("podinfo").await.unwrap();
    assert_eq!(replicas_of(&target), 1, "the target runs again");
    assert_eq!(
        image_of(&target),
        format!("{IMAGE}:6.0.1"),
        "the user's latest"
    );
    let svcs: Api<Service> = Api::namespaced(t.w.client.clone(), t.ns());
    let apex = svcs.get("podinfo").await.expect("the apex Service stays");
    assert_eq!(
        apex.spec
            .unwrap()
            .selector
            .unwrap()
            .get("app")
            .map(String::as_str),
        Some("podinfo")
    );
    eventually("serin's objects collected", LIMIT, || async {
        let primary = t.w.deployment("podinfo-primary").await;
        let vs = t.w.virtual_service("podinfo").await;
        if primary.is_none() && vs.is_none() {
            Ok(())
        } else {
            Err(format!("primary {} vs {}", primary.is_some(), vs.is_some()))
        }
    })
    .await;
    t.traffic.settle(5).await;
    let shares: Vec<_> = t
        .shares_since(t0)
        .into_iter()
        .filter(|(at, _)| *at < t_delete)
        .collect();
    assert_plateaus("before the deletion", &shares, &[25.0], TOL, RUN);
    t.assert_no_canary_traffic_before(t0);
    let last = t.traffic.samples().pop().unwrap();
    assert_eq!(
        last.to(&["podinfo-primary"], "podinfo-primary"),
        0,
        "nothing reaches a primary that is gone: {last:?}"
    );
}

/// Onboarding an app with its own Service and VirtualService: serin takes both over without a
/// gap in traffic, and `kubectl delete canary` reverts both, again without a gap.
async fn a_user_apex_service_and_virtual_service_are_taken_over_and_reverted() {
    let t = E2e::new("e2e-takeover").await;
    t.apply("base/deployment.yaml", &[]).await;
    t.apply("takeover/service.yaml", &[]).await;
    eventually(
        "the app serving through its own VirtualService",
        LIMIT,
        || async {
            let s = t.traffic.samples();
            let n = s
                .iter()
                .rev()
                .take(3)
                .filter(|s| s.to(&["podinfo"], "podinfo") >= 10)
                .count();
            (n == 3).then_some(()).ok_or(format!("{:?}", s.last()))
        },
    )
    .await;
    let t_onboard = t.traffic.now();
    t.apply("takeover/canary.yaml", &[]).await;
    t.w.wait_phase("podinfo", "Initialized", LIMIT).await;
    let svcs: Api<Service> = Api::namespaced(t.w.client.clone(), t.ns());
    let apex = svcs.get("podinfo").await.unwrap();
    assert_eq!(
        apex.spec
            .unwrap()
            .selector
            .unwrap()
            .get("app")
            .map(String::as_str),
        Some("podinfo-primary")
    );
    let vs = t.w.virtual_service("podinfo").await.unwrap();
    assert_eq!(
        support::routes_of(&vs, "podinfo"),
        Some(routes(100, 0, false)),
        "{vs}"
    );
    eventually("traffic on the primary", LIMIT, || async {
        let s = t.traffic.samples();
        let n = s
            .iter()
            .rev()
            .take(3)
            .filter(|s| s.to(&["podinfo-primary"], "podinfo-primary") >= 10)
            .count();
        (n == 3).then_some(()).ok_or(format!("{:?}", s.last()))
    })
    .await;
    // A few whole samples on the primary (the one above may straddle the switch).
    t.traffic.settle(RUN).await;
    let t_delete = t.traffic.now();
    t.kubectl(&["delete", "canary", "podinfo", "--timeout=120s"])
        .await;
    let vs =
        t.w.virtual_service("podinfo")
            .await
            .expect("the user's VirtualService stays");
    assert_eq!(
        vs["spec"]["http"],
        serde_json::json!([{"timeout": "5s", "route": [{"destination": {"host": "podinfo"}}]}]),
        "the user's routes are back: {vs}"
    );
    let apex = svcs.get("podinfo").await.expect("the user's Service stays");
    assert_eq!(
        apex.spec
            .unwrap()
            .selector
            .unwrap()
            .get("app")
            .map(String::as_str),
        Some("podinfo")
    );
    eventually("traffic back on the target", LIMIT, || async {
        let s = t.traffic.samples();
        let n = s
            .iter()
            .rev()
            .take(3)
            .filter(|s| s.to(&["podinfo"], "podinfo") >= 10)
            .count();
        (n == 3).then_some(()).ok_or(format!("{:?}", s.last()))
    })
    .await;
    t.traffic.settle(RUN).await;

    // Who served, sample by sample: the app itself, then the primary, then the app again.
    let samples: Vec<_> = t
        .traffic
        .samples()
        .into_iter()
        .skip_while(|s| s.through(&["podinfo"]) == 0)
        .collect();
    let mut phases: Vec<(String, usize)> = Vec::new();
    for s in &samples {
        let total: u64 = s.requests.values().sum();
        let top = s
            .requests
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|((svc, w), n)| (format!("{svc}/{w}"), *n));
        let label = match top {
            Some((k, n)) if n * 10 >= total * 9 => k,
            _ => "mixed".to_string(),
        };
        match phases.last_mut() {
            Some((l, n)) if *l == label => *n += 1,
            _ => phases.push((label, 1)),
        }
    }
    let stable: Vec<&str> = phases
        .iter()
        .filter(|(_, n)| *n >= RUN)
        .map(|(l, _)| l.as_str())
        .collect();
    assert_eq!(
        dedup(&stable),
        vec![
            "podinfo/podinfo",
            "podinfo-primary/podinfo-primary",
            "podinfo/podinfo"
        ],
        "who served over time: {phases:?}"
    );
    let gaps: Vec<f64> = samples
        .windows(2)
        .filter(|w| w[0].requests.is_empty() && w[1].requests.is_empty())
        .map(|w| w[0].at)
        .collect();
    assert!(
        gaps.is_empty(),
        "no gap in traffic while onboarding ({t_onboard:.0}s) or reverting ({t_delete:.0}s): \
         empty samples at {gaps:?}; phases {phases:?}"
    );
    let c = t.c();
    t.wait_events(&[msg::terminating(&c), msg::terminated(&c)])
        .await;
}

fn dedup<'a>(v: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for s in v {
        if out.last() != Some(s) {
            out.push(s);
        }
    }
    out
}

/// Delegation: serin's VirtualService carries no hosts and no gateways (the user's root one
/// delegates to it) and steps the weights as usual.
async fn delegation_writes_a_delegate_virtual_service_and_steps_through_it() {
    let t = E2e::new("e2e-delegation").await;
    t.apply("delegation/root.yaml", &[]).await;
    t.onboard("delegation/canary.yaml").await;
    let vs = t.w.virtual_service("podinfo").await.unwrap();
    let spec = &vs["spec"];
    assert!(
        spec.get("hosts")
            .is_none_or(|h| h.as_array().is_some_and(Vec::is_empty)),
        "{spec}"
    );
    assert!(
        spec.get("gateways")
            .is_none_or(|h| h.as_array().is_some_and(Vec::is_empty)),
        "{spec}"
    );
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[]).await;
    t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_weights(&weights, &[0, 25, 50, 0]);
    let shares = t.shares_since(t0);
    assert_plateaus("delegate routes", &shares, &[25.0, 50.0, 0.0], TOL, RUN);
    t.assert_no_canary_traffic_before(t0);
    let root = user::kubectl(
        &t.kubeconfig,
        t.ns(),
        &[
            "get",
            "virtualservice.networking.istio.io",
            "root",
            "-o",
            "json",
        ],
        None,
    )
    .await;
    let root: Value = serde_json::from_str(&root).unwrap();
    assert_eq!(
        root["spec"]["http"][0]["delegate"]["name"], "podinfo",
        "the user's root VirtualService is left alone"
    );
}

/// A ConfigMap-only release: the Deployment file is unchanged, the tracked ConfigMap changes;
/// serin runs the analysis and the primary gets the new configuration.
async fn a_config_map_change_alone_is_released_progressively() {
    let t = E2e::new("e2e-config").await;
    t.apply("config-map/configmap.yaml", &[]).await;
    t.apply("config-map/deployment.yaml", &[]).await;
    t.apply("config-map/canary.yaml", &[]).await;
    let c0 = t.w.wait_phase("podinfo", "Initialized", LIMIT).await;
    assert!(
        c0.status
            .unwrap()
            .tracked_configs
            .contains_key("configmap/podinfo-config")
    );
    let primary_template =
        t.w.deployment("podinfo-primary")
            .await
            .unwrap()
            .spec
            .template;
    let pods_before = primary_pods(&t).await;
    assert!(!pods_before.is_empty());
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.traffic.now();
    t.apply(
        "config-map/configmap.yaml",
        &[("color: blue", "color: green")],
    )
    .await;
    t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    let cms: Api<ConfigMap> = Api::namespaced(t.w.client.clone(), t.ns());
    let copy = cms.get("podinfo-config-primary").await.unwrap();
    assert_eq!(
        copy.data
            .unwrap_or_default()
            .get("color")
            .map(String::as_str),
        Some("green")
    );
    let primary = t.w.deployment("podinfo-primary").await.unwrap();
    assert_eq!(image_of(&primary), format!("{IMAGE}:6.0.0"));
    let containers = &primary.spec.template.spec.as_ref().unwrap().containers;
    assert_eq!(
        serde_json::to_value(&containers[0].env_from).unwrap(),
        serde_json::json!([{"configMapRef": {"name": "podinfo-config-primary"}}])
    );
    assert_eq!(
        serde_json::to_value(&primary.spec.template.spec).unwrap(),
        serde_json::to_value(&primary_template.spec).unwrap(),
        "the pod spec is unchanged: only the configuration moved"
    );
    // The primary's pods read the configuration at start (envFrom): they must be replaced, as
    // Flagger's promotion replaces them, or the promoted configuration never runs.
    eventually(
        "the primary's pods replaced after a configuration promotion",
        Duration::from_secs(30),
        || async {
            let now = primary_pods(&t).await;
            if !now.is_empty() && now.iter().all(|p| !pods_before.contains(p)) {
                Ok(())
            } else {
                Err(format!("before {pods_before:?}, now {now:?}"))
            }
        },
    )
    .await;
    // The release is the ConfigMap alone: the target's template is as the user applied it.
    let target = t.w.deployment("podinfo").await.unwrap();
    assert_eq!(image_of(&target), format!("{IMAGE}:6.0.0"));
    assert_weights(&weights, &[0, 25, 50, 0]);
    let shares = t.shares_since(t0);
    assert_plateaus("config release", &shares, &[25.0, 50.0, 0.0], TOL, RUN);
    t.assert_no_canary_traffic_before(t0);
    let c = t.c();
    t.assert_events(&[
        msg::new_revision_scaling_up(&c),
        msg::advance_canary_weight(&c, 50),
        msg::promotion_completed(&c),
    ])
    .await;
}

/// The uids of the primary's pods.
async fn primary_pods(t: &E2e) -> Vec<String> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(t.w.client.clone(), t.ns());
    let lp = kube::api::ListParams::default().labels("app=podinfo-primary");
    pods.list(&lp)
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.uid)
        .collect()
}

/// suspend: true (the Canary file applied again) freezes a run at its weight, with its traffic;
/// suspend: false lets it finish.
async fn suspend_freezes_a_run_with_its_traffic_and_resume_finishes_it() {
    let t = E2e::new("e2e-suspend").await;
    t.onboard("suspend/canary.yaml").await;
    let weights = t.w.watch_weights("podinfo");
    let t0 = t.release("6.0.1", &[]).await;
    t.w.wait_weight("podinfo", 25).await;
    t.apply(
        "suspend/canary.yaml",
        &[("suspend: false", "suspend: true")],
    )
    .await;
    let frozen = t.w.canary("podinfo").await.status.unwrap();
    let t_suspend = t.traffic.now();
    // More than an interval: a step would have happened.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let still = t.w.canary("podinfo").await.status.unwrap();
    assert_eq!(
        (still.phase, still.canary_weight),
        (frozen.phase, frozen.canary_weight),
        "nothing moves while suspended"
    );
    assert_eq!(still.canary_weight, Some(25));
    assert!(t.w.has_event("podinfo", msg::SUSPENDED).await);
    let t_resume = t.traffic.now();
    t.apply("suspend/canary.yaml", &[]).await;
    t.w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    t.traffic.settle(5).await;
    assert_eq!(t.primary_image().await, format!("{IMAGE}:6.0.1"));
    assert_weights(&weights, &[0, 25, 50, 0]);
    let shares = t.shares_since(t0);
    assert_plateaus("suspended run", &shares, &[25.0, 50.0, 0.0], TOL, RUN);
    t.assert_no_canary_traffic_before(t0);
    let frozen: Vec<_> = shares
        .iter()
        .filter(|(at, _)| *at > t_suspend + 1.0 && *at < t_resume)
        .cloned()
        .collect();
    assert!(
        frozen.len() >= 10 && frozen.iter().all(|(_, s)| (s - 25.0).abs() <= TOL),
        "25% held while suspended: {}",
        show(&frozen)
    );
}

// ---- the harness ----

type Scenario = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), || Box::pin($name()))),*]
    };
}

const SCENARIOS: &[(&str, Scenario)] = scenarios![
    progressive_canary_with_builtin_metrics_is_promoted_step_by_step,
    metric_template_rolls_back_a_faulty_release_and_promotes_a_healthy_one,
    step_weights_follow_the_schedule,
    ab_testing_with_a_header_match_sends_only_matching_requests_to_the_canary,
    ab_testing_with_a_cookie_match_sends_only_cookie_holders_to_the_canary,
    blue_green_with_mirroring_mirrors_then_switches_then_promotes,
    blue_green_without_mirroring_keeps_live_traffic_on_the_primary_until_the_switch,
    session_affinity_keeps_cookie_holders_on_the_canary,
    skip_analysis_promotes_without_traffic_and_rolls_back_a_release_that_never_gets_ready,
    confirm_rollout_and_confirm_promotion_gates_hold_the_release,
    revert_on_deletion_hands_a_running_release_back_to_the_target,
    a_user_apex_service_and_virtual_service_are_taken_over_and_reverted,
    delegation_writes_a_delegate_virtual_service_and_steps_through_it,
    a_config_map_change_alone_is_released_progressively,
    suspend_freezes_a_run_with_its_traffic_and_resume_finishes_it,
    traffic_log_helpers,
];

async fn traffic_log_helpers() {
    traffic::self_check();
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()),
        Err(e) => e.to_string(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in SCENARIOS {
            println!("{name}: test");
        }
        return;
    }
    // libtest's flags (--nocapture, --test-threads=N, ...) mean nothing here; other words filter.
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let chosen: Vec<&(&str, Scenario)> = SCENARIOS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = std::time::Instant::now();
    println!("\nrunning {} tests", chosen.len());
    let failed = runtime.block_on(async {
        let tasks: Vec<_> = chosen
            .iter()
            .map(|(name, run)| (*name, tokio::spawn(run())))
            .collect();
        let mut failed = Vec::new();
        // Report in completion order, as libtest does.
        let mut pending: futures::stream::FuturesUnordered<_> = tasks
            .into_iter()
            .map(|(name, task)| async move { (name, task.await) })
            .collect();
        use futures::StreamExt;
        while let Some((name, result)) = pending.next().await {
            match result {
                Ok(()) => println!("test {name} ... ok"),
                Err(e) => {
                    println!("test {name} ... FAILED");
                    failed.push((name, panic_text(e)));
                }
            }
        }
        failed
    });
    if !failed.is_empty() {
        println!("\nfailures:\n");
        for (name, text) in &failed {
            println!("---- {name} ----\n{text}\n");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        chosen.len() - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    // The sandbox lives in a static and is never dropped: its processes die with this one.
    std::process::exit(if failed.is_empty() { 0 } else { 101 });
}
