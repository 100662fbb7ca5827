//! The chaos suite's short version (docs/chaos.md): four releases, good and faulty, of two apps
//! from Git through real Flux, with every fault injected at least once, on a sandbox of its own.
//! It fails on any invariant violation (weights, traffic on an unready canary, a faulty revision
//! on the primary, a canary left mid-run, a panic, a planted secret or spec value in serin's
//! logs, memory) or on any release that did not end as it should.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::path::PathBuf;
use std::time::Duration;

use serin_sandbox::chaos::{ChaosOptions, Fault, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_keeps_every_invariant_and_every_outcome() {
    let report = run(ChaosOptions {
        rollouts: 4,
        apps: 2,
        seed: 11,
        duration_limit: Duration::from_secs(360),
        rss_limit_mb: 256,
        max_reconciles_per_minute: 1200,
        max_queries_per_minute: 600,
        serin: Some(PathBuf::from(env!("CARGO_BIN_EXE_serin"))),
        dir: None,
    })
    .await
    .expect("the chaos run could not start (run `serin-sandbox setup` first)");
    let summary = format!("{}\n{}", report.table(), report.details());
    println!("{summary}");
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
    assert!(report.ok(), "{summary}");
}
