//! The chaos suite's short version (docs/chaos.md): four releases, good and faulty, of two apps
//! from Git through real Flux, with every fault injected at least once, on a sandbox of its own.
//! It fails on any invariant violation (weights, traffic on an unready canary, a faulty revision
//! on the primary, a canary left mid-run, a panic, a planted secret or spec value in serin's
//! logs, memory, load) or on any release that did not end as it should. And its negative
//! control: the same checks on a run where the invariants are broken by hand must fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::path::PathBuf;
use std::time::Duration;

use serin_sandbox::chaos::{ChaosOptions, Fault, Report, run};

/// Two private control planes at once would starve each other on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn chaos(rollouts: usize, seed: u64, sabotage: bool) -> (Report, String) {
    let _one = ONE_AT_A_TIME.lock().await;
    let report = run(ChaosOptions {
        rollouts,
        apps: 2,
        seed,
        duration_limit: Duration::from_secs(360),
        serin: Some(PathBuf::from(env!("CARGO_BIN_EXE_serin"))),
        sabotage,
        ..ChaosOptions::default()
    })
    .await
    .expect("the chaos run could not start (run `serin-sandbox setup` first)");
    let summary = format!("{}\n{}", report.table(), report.details());
    println!("{summary}");
    (report, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_keeps_every_invariant_and_every_outcome() {
    let (report, summary) = chaos(4, 11, false).await;
    for fault in Fault::ALL {
        assert!(
            report.injections.iter().any(|i| i.fault == fault),
            "{} was never injected:\n{summary}",
            fault.name()
        );
    }
    assert!(
        report.rollouts.iter().any(|r| r.faulty.is_some())
            && report.rollouts.iter().any(|r| r.faulty.is_none()),
        "{summary}"
    );
    assert!(report.invariant_polls > 100, "{summary}");
    assert!(!report.load.is_empty(), "{summary}");
    assert!(report.ok(), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checks_fail_when_the_invariants_are_broken_by_hand() {
    let (report, summary) = chaos(2, 12, true).await;
    assert!(!report.ok(), "{summary}");
    assert!(report.injections.is_empty(), "{summary}");
    for invariant in [
        "VirtualService weights sum to 100",
        "no traffic to a canary without ready pods",
        "a faulty release never reaches the primary",
    ] {
        assert!(
            report.violations.iter().any(|v| v.invariant == invariant),
            "{invariant} not reported:\n{summary}"
        );
    }
    // Only what was broken: the releases themselves still end as they should.
    assert!(report.rollouts.iter().all(|r| r.correct), "{summary}");
}
