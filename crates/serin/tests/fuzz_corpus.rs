//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets' entry points on
//! the stable toolchain, so every input a fuzzer kept, including each crash once found and fixed,
//! runs on every `cargo test` without nightly or cargo-fuzz (docs/fuzzing.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

#[path = "../../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs every file of `target`'s corpus; fails naming each input that panicked.
fn replay(target: &str) {
    let (_, run) = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no inputs", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            failed.push(format!("fuzz/corpus/{target}/{name}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs panicked (docs/fuzzing.md: when a target crashes):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn every_target_has_a_corpus() {
    for (target, _) in harness::TARGETS {
        assert!(
            corpus_dir(target).is_dir(),
            "fuzz/corpus/{target} is missing"
        );
    }
}

#[test]
fn api_manifest() {
    replay("api_manifest");
}

#[test]
fn api_json() {
    replay("api_json");
}

#[test]
fn go_duration() {
    replay("go_duration");
}

#[test]
fn template_render() {
    replay("template_render");
}

#[test]
fn loadtester_request() {
    replay("loadtester_request");
}

#[test]
fn webhook_response() {
    replay("webhook_response");
}

#[test]
fn prometheus_response() {
    replay("prometheus_response");
}
