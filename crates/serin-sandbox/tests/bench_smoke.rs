//! The benchmark command works: `serin-sandbox bench --smoke` (serin only, 2 canaries, 3 bumps,
//! a burst of 2, 2 steps) runs to the end and writes a report in which every measured row holds a number. The figures
//! themselves come from full runs (docs/benchmark.md); nothing here judges them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::process::Command;

/// The rows every report must hold a number in, by the start of their label.
const ROWS: [&str; 26] = [
    "2 canaries: initialization of the canaries added",
    "2 canaries: CPU while initializing, per canary added",
    "2 canaries: idle RSS",
    "2 canaries: idle CPU, seconds per minute",
    "2 canaries: idle API requests per minute, all verbs",
    "2 canaries: idle API writes per minute",
    "2 canaries: idle Prometheus queries per minute",
    "2 canaries: detection latency p50 over 3 bumps",
    "2 canaries: detection latency p99",
    "2 canaries: rollout wall time p50",
    "2 canaries: rollout wall time ÷ (steps × interval), p50",
    "2 canaries: rollout wall time ÷ (steps × interval), p99",
    "2 canaries: faulty release, target changed → Failed",
    "2 canaries: rollback latency",
    "burst of 2 releases at 2 canaries: first release → last rollout ended",
    "burst of 2 releases at 2 canaries: release → first weight step, p50",
    "burst of 2 releases at 2 canaries: lateness of each later weight step against its schedule, max",
    "burst of 2 releases at 2 canaries: weight steps measured",
    "burst of 2 releases at 2 canaries: weight steps more than 1 s late",
    "burst of 2 releases at 2 canaries: peak RSS",
    "burst of 2 releases at 2 canaries: peak CPU",
    "peak RSS over the run",
    "CPU seconds over the whole run",
    "API requests over the whole run",
    "Prometheus queries over the whole run",
    "burst of 2 releases at 2 canaries: mean CPU over the burst",
];

#[test]
fn bench_smoke_writes_every_row_with_a_number() {
    let dir = std::env::temp_dir().join(format!("serin-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("benchmark.md");
    let run = Command::new(env!("CARGO_BIN_EXE_serin-sandbox"))
        .args(["bench", "--smoke", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench --smoke failed ({}):\n{stderr}",
        run.status
    );
    let report = std::fs::read_to_string(&out).unwrap();
    assert!(
        stdout.contains(&report),
        "the printed report differs from the file"
    );
    let _ = std::fs::remove_dir_all(&dir);

    assert!(report.contains("| measure | serin |"), "{report}");
    assert!(
        !report.contains("Flagger |"),
        "smoke runs serin only:\n{report}"
    );
    for head in [
        "- command: `",
        "- machine: ",
        "load average",
        "- serin: serin ",
    ] {
        assert!(report.contains(head), "no {head:?} in:\n{report}");
    }
    for row in ROWS {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| {row}")))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{report}"));
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 2, "{line}");
        assert!(
            cells[1].parse::<f64>().is_ok(),
            "row {row:?} holds no number: {line}"
        );
    }
    let ended = report
        .lines()
        .find(|l| l.starts_with("| burst of 2 releases at 2 canaries: rollouts ended"))
        .unwrap_or_else(|| panic!("no burst row in:\n{report}"));
    assert!(ended.contains("| 2 of 2 |"), "{ended}");
    assert!(
        report.contains("## The targets of issue 14 §3"),
        "no targets section in:\n{report}"
    );
    // The audit log attributes requests to serin's own identity: it made some during the run.
    let total = report
        .lines()
        .find(|l| l.starts_with("| API requests over the whole run"))
        .and_then(|l| l.trim_matches('|').split('|').nth(1))
        .and_then(|c| c.trim().parse::<f64>().ok())
        .unwrap();
    assert!(total > 0.0, "no API request attributed to serin:\n{report}");
}
