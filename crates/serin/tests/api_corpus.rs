//! The manifest corpus under tests/corpus: valid manifests round-trip through the Rust types and
//! pass both checks; each invalid manifest is refused at the level its folder claims (schema: the
//! API server refuses it; semantic: the API server accepts it and `validate()` refuses it), with a
//! problem naming the field given on its `# expect:` line.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use std::path::Path;

use serde_json::Value;
use serin::api::schema::{self, Outcome};
use serin::api::{AlertProvider, Canary, MetricTemplate, validate};
use support::corpus::{corpus, documents, same};

fn round_trip(doc: &Value) -> Value {
    match doc["kind"].as_str().unwrap() {
        "Canary" => serde_json::to_value(serde_json::from_value::<Canary>(doc.clone()).unwrap()),
        "MetricTemplate" => {
            serde_json::to_value(serde_json::from_value::<MetricTemplate>(doc.clone()).unwrap())
        }
        "AlertProvider" => {
            serde_json::to_value(serde_json::from_value::<AlertProvider>(doc.clone()).unwrap())
        }
        other => panic!("unexpected kind {other}"),
    }
    .unwrap()
}

#[test]
fn valid_manifests_round_trip_and_pass_both_checks() {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for path in corpus("valid") {
        for doc in documents(&path) {
            let name = format!(
                "{}: {}/{}",
                path.display(),
                doc["kind"].as_str().unwrap(),
                doc["metadata"]["name"].as_str().unwrap()
            );
            *kinds
                .entry(doc["kind"].as_str().unwrap().to_string())
                .or_default() += 1;

            let back = round_trip(&doc);
            assert!(
                same(&doc, &back),
                "{name}: round-trip changed the document\n in: {doc:#}\nout: {back:#}"
            );

            let problems = schema::check_object(&doc).unwrap();
            assert!(problems.is_empty(), "{name}: schema: {problems:#?}");
            let problems = validate(&doc);
            assert!(problems.is_empty(), "{name}: validate: {problems:#?}");
        }
    }
    assert!(kinds["Canary"] >= 10, "{kinds:?}");
    assert_eq!(kinds["AlertProvider"], 5, "{kinds:?}");
    assert!(kinds["MetricTemplate"] >= 1, "{kinds:?}");
}

/// Every AlertProvider type is in the corpus.
#[test]
fn corpus_has_every_alert_provider_type() {
    let mut types: Vec<String> = corpus("valid")
        .iter()
        .flat_map(|p| documents(p))
        .filter(|d| d["kind"] == "AlertProvider")
        .map(|d| d["spec"]["type"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    assert_eq!(types, ["discord", "gchat", "msteams", "rocket", "slack"]);
}

fn expected_field(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{}: first line must be `# expect: <field>`", path.display()))
        .trim()
        .to_string()
}

#[test]
fn schema_level_cases_are_refused_by_the_schema() {
    let files = corpus("invalid/schema");
    for path in &files {
        let want = expected_field(path);
        let docs = documents(path);
        assert_eq!(docs.len(), 1, "{}", path.display());
        let problems = schema::check_object(&docs[0]).unwrap();
        let refused: Vec<_> = problems
            .iter()
            .filter(|p| p.outcome == Outcome::Refused)
            .collect();
        assert!(
            refused.iter().any(|p| p.problem.path == want),
            "{}: want a refusal naming {want}, got {problems:#?}",
            path.display()
        );
    }
    assert!(files.len() >= 10);
}

#[test]
fn semantic_cases_pass_the_schema_and_fail_validate() {
    let files = corpus("invalid/semantic");
    for path in &files {
        let want = expected_field(path);
        let docs = documents(path);
        assert_eq!(docs.len(), 1, "{}", path.display());
        let schema_problems = schema::check_object(&docs[0]).unwrap();
        assert!(
            schema_problems.is_empty(),
            "{}: the API server must accept this one, but the schema check says {schema_problems:#?}",
            path.display()
        );
        let problems = validate(&docs[0]);
        assert!(
            problems.iter().any(|p| p.path == want && !p.is_warning()),
            "{}: want an error naming {want}, got {problems:#?}",
            path.display()
        );
        assert!(problems.iter().all(|p| !p.hint.is_empty()));
    }
    assert!(files.len() >= 10);
}

/// What Flagger runs is a warning, never an error: the controller runs these manifests.
#[test]
fn warning_cases_pass_the_schema_and_give_only_warnings() {
    let files = corpus("warning");
    for path in &files {
        let want = expected_field(path);
        let docs = documents(path);
        assert_eq!(docs.len(), 1, "{}", path.display());
        let schema_problems = schema::check_object(&docs[0]).unwrap();
        assert!(
            schema_problems.is_empty(),
            "{}: the API server must accept this one, but the schema check says {schema_problems:#?}",
            path.display()
        );
        let problems = validate(&docs[0]);
        assert!(
            problems.iter().any(|p| p.path == want),
            "{}: want a warning naming {want}, got {problems:#?}",
            path.display()
        );
        assert!(
            problems
                .iter()
                .all(|p| p.is_warning() && !p.hint.is_empty()),
            "{}: {problems:#?}",
            path.display()
        );
    }
    assert!(files.len() >= 10);
}

#[test]
fn at_least_twenty_invalid_cases() {
    assert!(corpus("invalid/schema").len() + corpus("invalid/semantic").len() >= 20);
}

#[test]
fn unknown_fields_are_reported_as_dropped() {
    let doc: Value = serde_yaml_ng::from_str(
        "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {name: x}\nspec:\n  targetRef: {apiVersion: apps/v1, kind: Deployment, name: x}\n  service: {port: 80, portDiscovery: false}\n  analysis: {interval: 1m, threshold: 1, stepweight: 10, stepWeight: 10}\n",
    )
    .unwrap();
    let problems = schema::check_object(&doc).unwrap();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].outcome, Outcome::Dropped);
    assert_eq!(problems[0].problem.path, "spec.analysis.stepweight");
    assert_eq!(
        problems[0].problem.message,
        "unknown field (the API server drops it)"
    );
    assert!(problems[0].problem.hint.contains("stepWeight"));
}
