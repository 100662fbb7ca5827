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
            .join("tests/corpus/warning/stepweight-greater-than-maxweight.yaml"),
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
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout.starts_with(
            "-: Canary/stepweight-greater-than-maxweight: warning: spec.analysis.stepWeight: stepWeight 50 is greater than maxWeight 30"
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

/// `serin validate -f -` with `text` on standard input.
fn validate_stdin(text: &str) -> std::process::Output {
    let mut child = serin()
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn texts(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const NOTHING: &str = "no Canary, MetricTemplate or AlertProvider found in";

/// Issue 11: an empty file and /dev/null exited 0 without a word, as if they had passed.
#[test]
fn nothing_to_check_says_so_and_fails() {
    let empty =
        std::env::temp_dir().join(format!("serin-api-cli-empty-{}.yaml", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    for path in [empty.as_path(), Path::new("/dev/null")] {
        let out = serin().args(["validate", "-f"]).arg(path).output().unwrap();
        let (stdout, stderr) = texts(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {stdout}{stderr}",
            path.display()
        );
        assert!(
            stderr.contains(&format!("{NOTHING} {}", path.display())),
            "{}: {stderr}",
            path.display()
        );
        assert!(stderr.contains("0 objects checked in 1 file"), "{stderr}");
    }
    std::fs::remove_file(&empty).unwrap();

    // Only other kinds: nothing of serin's was checked.
    let out = validate_stdin("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("{NOTHING} standard input")),
        "{stderr}"
    );
}

/// A path with nothing to check next to one that has objects: said, but not a failure.
#[test]
fn a_path_without_objects_next_to_valid_ones_is_named() {
    let out = serin()
        .args(["validate", "-f"])
        .arg(corpus("valid"))
        .args(["-f", "/dev/null"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("{NOTHING} /dev/null")), "{stderr}");
    assert!(
        !stderr.contains(&format!("{NOTHING} tests/corpus/valid")),
        "{stderr}"
    );
    assert!(stderr.contains("objects checked in"), "{stderr}");
    assert!(stderr.contains(": no problems"), "{stderr}");
}

/// Issue 11: `hello: world` and a JSON list of objects passed silently.
#[test]
fn a_document_that_is_not_a_kubernetes_object_is_a_problem() {
    for (text, what) in [
        ("hello: world\n", "no apiVersion and no kind"),
        (r#"[{"kind":"Canary"}]"#, "a list, not a mapping"),
        ("just a string\n", "a string, not a mapping"),
        (
            "apiVersion: flagger.app/v1beta1\nmetadata: {name: x}\n",
            "no kind",
        ),
    ] {
        let out = validate_stdin(text);
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(1), "{text}: {stdout}{stderr}");
        assert!(
            stdout.starts_with(&format!("-: document 1: not a Kubernetes object: {what} (")),
            "{text}: {stdout}"
        );
    }
}

/// A Canary without apiVersion or metadata is reported with the field, and its other fields
/// are still checked.
#[test]
fn a_canary_without_api_version_or_metadata_names_the_field() {
    let spec = "spec:\n  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}\n  service: {port: 9898}\n  analysis: {interval: 1m, threshold: 5, stepWeight: 10}\n";
    let out = validate_stdin(&format!(
        "kind: Canary\nmetadata: {{name: podinfo}}\n{spec}"
    ));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "-: Canary/podinfo: apiVersion: Required value (add apiVersion: flagger.app/v1beta1)\n"
    );

    let out = validate_stdin(&format!(
        "apiVersion: flagger.app/v1beta1\nkind: Canary\n{spec}"
    ));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "-: Canary/<no name>: metadata.name: Required value (name the object)\n"
    );
    assert!(
        stderr.contains("1 object checked in 1 file: 1 problem"),
        "{stderr}"
    );

    let out = validate_stdin("kind: Canary\nspec:\n  service: {port: 99999999999}\n");
    let (stdout, _) = texts(&out);
    for field in [
        "apiVersion",
        "metadata.name",
        "spec.service.port",
        "spec.targetRef",
    ] {
        assert!(
            stdout.contains(&format!("-: Canary/<no name>: {field}: ")),
            "{field}: {stdout}"
        );
    }
}

/// Issue 11: a 60-character target name made every generated Service and label invalid.
#[test]
fn generated_names_beyond_kubernetes_limits_are_flagged() {
    let name = "a".repeat(60);
    let out = validate_stdin(&format!(
        "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {{name: long}}\nspec:\n  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}\n  service: {{port: 9898}}\n  analysis: {{interval: 1m, threshold: 5, stepWeight: 10}}\n"
    ));
    let (stdout, _) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "-: Canary/long: spec.targetRef.name: the generated Service name \"{name}-primary\" is 68 characters; Kubernetes allows at most 63 for Service names and label values (shorten spec.targetRef.name to at most 55 characters, or set spec.service.name to a shorter name for the Services)\n"
        )
    );
}

/// Issue 11, finding 8: Flagger runs `interval: 0s` as 10s and `threshold: 0` as 1; both pass.
#[test]
fn zero_interval_and_threshold_pass_as_with_flagger() {
    let out = serin()
        .args(["validate", "-f"])
        .arg(corpus("valid").join("canary-zero-interval-threshold.yaml"))
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("1 object checked in 1 file: no problems"),
        "{stderr}"
    );
}

/// Manifests Flagger runs are warnings: reported, exit code 3 (not 1), so CI can tell them
/// from manifests the API server refuses or the controller holds.
#[test]
fn each_warning_file_exits_three_with_a_warning_line() {
    for f in files("warning") {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&f)).unwrap();
        let field = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .unwrap()
            .trim();
        let doc: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        let object = format!("Canary/{}", doc["metadata"]["name"].as_str().unwrap());
        let out = serin().args(["validate", "-f"]).arg(&f).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}: {stdout}{stderr}",
            f.display()
        );
        let want = format!("{}: {object}: warning: {field}: ", f.display());
        assert!(
            stdout.lines().any(|l| l.starts_with(&want)),
            "{}: want a line starting {want:?}, got:\n{stdout}",
            f.display()
        );
        assert!(
            stdout.lines().all(|l| l.contains(": warning: ")),
            "{}: only warnings expected:\n{stdout}",
            f.display()
        );
        assert!(stderr.contains("(all warnings)"), "{stderr}");
    }
    assert!(files("warning").len() >= 10);
}

#[test]
fn an_error_next_to_a_warning_exits_one() {
    let out = serin()
        .args(["validate", "-f"])
        .arg(corpus("warning/mirrorweight-without-mirror.yaml"))
        .arg("-f")
        .arg(corpus("invalid/semantic/progress-deadline-zero.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 error, 1 warning"), "{stderr}");
}
