//! Measures `serin validate`'s offline check on a generated stream of small valid Canaries, the
//! case issue 11 timed at 5 s per MB. Run it in a release build:
//!
//! ```text
//! cargo run --release -p serin-api --example validate_speed -- [MEGABYTES]
//! ```
//!
//! It writes the stream to a temporary file, checks it the way `serin validate -f FILE` does and
//! prints the size, the time and the rate. No assertion: timing depends on the machine.
#![allow(clippy::print_stdout)]

use std::time::Instant;

fn canary(i: usize) -> String {
    format!(
        "---\napiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata:\n  name: app-{i}\n  namespace: team-{ns}\nspec:\n  targetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: app-{i}\n  service:\n    port: 9898\n  analysis:\n    interval: 1m\n    threshold: 5\n    maxWeight: 50\n    stepWeight: 10\n    metrics:\n    - name: request-success-rate\n      thresholdRange:\n        min: 99\n      interval: 1m\n",
        ns = i % 7
    )
}

fn main() -> anyhow::Result<()> {
    let megabytes: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let mut text = String::new();
    let mut n = 0;
    while text.len() < megabytes * 1024 * 1024 {
        text.push_str(&canary(n));
        n += 1;
    }
    let path =
        std::env::temp_dir().join(format!("serin-validate-speed-{}.yaml", std::process::id()));
    std::fs::write(&path, &text)?;
    let start = Instant::now();
    let mut out = Vec::new();
    let summary = serin_api::lint::run(std::slice::from_ref(&path), &mut out);
    let elapsed = start.elapsed();
    std::fs::remove_file(&path)?;
    let summary = summary?;
    let mb = text.len() as f64 / (1024.0 * 1024.0);
    println!(
        "{n} Canaries, {mb:.1} MB: {:.2} s ({:.3} s per MB); {} objects checked, {} problems",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / mb,
        summary.objects,
        summary.problems
    );
    Ok(())
}
