//! `serin validate` and `serin crds` as a user runs them: the built binary on the corpus.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn serin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_serin"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn corpus(sub: &str) -> PathBuf {
    Path::new("tests/corpus").join(sub)
}

fn files(sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(corpus(sub)))
            .unwrap()
            .map(|e| corpus(sub).join(e.unwrap().file_name()))
            .collect();
    v.sort();
    v
}

#[test]
fn valid_directory_exits_zero() {
    let out = serin()
        .args(["validate", "-f"])
        .arg(corpus("valid"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn each_invalid_file_fails_with_the_expected_line() {
    for sub in ["invalid/schema", "invalid/semantic"] {
        for f in files(sub) {
            let text =
                std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&f)).unwrap();
            let field = text
                .lines()
                .next()
                .unwrap()
                .strip_prefix("# expect: ")
                .unwrap()
                .trim();
            let doc: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
            let object = format!(
                "{}/{}",
                doc["kind"].as_str().unwrap(),
                doc["metadata"]["name"].as_str().unwrap()
            );
            let out = serin().args(["validate", "-f"]).arg(&f).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(1), "{}: {stdout}", f.display());
            let want = format!("{}: {object}: {field}: ", f.display());
            assert!(
                stdout.lines().any(|l| l.starts_with(&want)),
                "{}: want a line starting {want:?}, got:\n{stdout}",
                f.display()
            );
        }
    }
}

#[test]
fn stdin_is_read_with_dash() {
    let invalid = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus/invalid/semantic/stepweight-greater-than-maxweight.yaml"),
    )
    .unwrap();
    let mut child = serin()
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(invalid.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.starts_with(
            "-: Canary/stepweight-greater-than-maxweight: spec.analysis.stepWeight: stepWeight 50 is greater than maxWeight 30"
        ),
        "{stdout}"
    );
}

#[test]
fn a_directory_of_invalid_files_reports_each_file() {
    let out = serin()
        .args(["validate", "-f"])
        .arg(corpus("invalid"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    for sub in ["invalid/schema", "invalid/semantic"] {
        for f in files(sub) {
            let prefix = format!("{}: ", f.display());
            assert!(
                stdout.lines().any(|l| l.starts_with(&prefix)),
                "{} missing:\n{stdout}",
                f.display()
            );
        }
    }
}

#[test]
fn yaml_errors_name_file_and_line() {
    let mut child = serin()
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: flagger.app/v1beta1\nkind: Canary\nspec:\n  service: {port: 80\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.starts_with("-: line "), "{stdout}");
    assert!(stdout.contains("cannot parse YAML"), "{stdout}");
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let out = serin()
        .args(["validate", "-f", "no/such/file.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.yaml"));
}

#[test]
fn crds_prints_the_checked_in_file() {
    let out = serin().arg("crds").output().unwrap();
    assert!(out.status.success());
    let on_disk = std::fs::read_to_string(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("crds/flagger.app.yaml"),
    )
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), on_disk);
    assert_eq!(on_disk.matches("kind: CustomResourceDefinition").count(), 3);
}
