//! `serin validate`: offline checks of manifests, the schema check the API server would do plus
//! `validate()`, so mistakes show before `kubectl apply` (or before the controller reports them).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

use super::schema;
use super::validate::{Problem, validate};

/// What a run of [`run`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Problem lines written, warnings included.
    pub problems: usize,
    /// Of those, warnings: manifests Flagger runs (and serin runs too) that likely do not do
    /// what their author meant ([`Severity::Warning`](super::validate::Severity::Warning)).
    pub warnings: usize,
    /// Canaries, MetricTemplates and AlertProviders checked.
    pub objects: usize,
    /// Files read (standard input counts as one).
    pub files: usize,
    /// The paths given (as given) in which no Canary, MetricTemplate or AlertProvider was found:
    /// an empty file, `/dev/null` or only other kinds. Said out loud, because a silent exit 0 on
    /// them looked like a pass (issue 11).
    pub nothing_found: Vec<String>,
}

/// Checks every manifest in `paths` (files, directories searched recursively for *.yaml, *.yml
/// and *.json, or `-` for stdin), writes one line per problem to `out`
/// (`FILE: Kind/name: field.path: message (hint)`, with `warning: ` before the field for a
/// warning), and returns what was checked. Documents of
/// other Kubernetes kinds are skipped; a document that is not a Kubernetes object at all is a
/// problem. Errors are I/O failures only (unreadable paths).
pub fn run(paths: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    for path in paths {
        let before = summary.objects;
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            check_text("-", &text, out, &mut summary)?;
        } else if std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .is_dir()
        {
            let mut files = Vec::new();
            collect(path, &mut files)?;
            for f in files {
                check_file(&f, out, &mut summary)?;
            }
        } else {
            check_file(path, out, &mut summary)?;
        }
        if summary.objects == before {
            summary.nothing_found.push(path.display().to_string());
        }
    }
    Ok(summary)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}", dir.display()))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, files)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(p);
        }
    }
    Ok(())
}

fn check_file(path: &Path, out: &mut dyn Write, summary: &mut Summary) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    check_text(&path.display().to_string(), &text, out, summary)
}

/// The problems of a YAML (or JSON) stream and how many flagger.app objects it held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Each problem with the object it belongs to (`Kind/name`, `document N` for a document
    /// that is no Kubernetes object, or the line for parse errors).
    pub problems: Vec<(String, Problem)>,
    /// Canaries, MetricTemplates and AlertProviders checked.
    pub objects: usize,
}

/// The problems of every flagger.app document in a YAML (or JSON) stream (see [`check`]).
pub fn check_str(text: &str) -> Vec<(String, Problem)> {
    check(text).problems
}

/// Checks every document of a YAML (or JSON) stream: flagger.app objects against the CRD schema
/// and `validate()`, anything that is not a Kubernetes object as a problem, other kinds skipped.
pub fn check(text: &str) -> Checked {
    let mut checked = Checked::default();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(value) => check_document(&value, i + 1, &mut checked),
            Err(e) => {
                let at = e
                    .location()
                    .map(|l| format!("line {}, column {}", l.line(), l.column()))
                    .unwrap_or_else(|| format!("document {}", i + 1));
                checked.problems.push((
                    at,
                    Problem {
                        path: String::new(),
                        message: format!("cannot parse YAML: {e}"),
                        hint: "fix the YAML syntax (indentation, quotes, tabs)".into(),
                        severity: super::validate::Severity::Error,
                    },
                ));
                // The stream cannot be resynchronised after a syntax error.
                break;
            }
        }
    }
    checked
}

/// The kinds `serin validate` checks.
const KINDS: [&str; 3] = ["Canary", "MetricTemplate", "AlertProvider"];

/// One document of the stream (`number` counts from 1): a Kubernetes object, or a problem.
fn check_document(value: &Value, number: usize, checked: &mut Checked) {
    let not_an_object = |what: String| {
        (
            format!("document {number}"),
            Problem {
                path: String::new(),
                message: format!("not a Kubernetes object: {what}"),
                hint: "write each object as a mapping with apiVersion, kind and metadata, one \
                       per YAML document (separated by ---), or as items of a kind: List"
                    .into(),
                severity: super::validate::Severity::Error,
            },
        )
    };
    let Value::Object(map) = value else {
        let what = match value {
            Value::Array(_) => "a list".to_string(),
            Value::String(_) => "a string".to_string(),
            Value::Number(_) => "a number".to_string(),
            Value::Bool(_) => "a boolean".to_string(),
            _ => "null".to_string(),
        };
        checked
            .problems
            .push(not_an_object(format!("{what}, not a mapping")));
        return;
    };
    let kind = map.get("kind").and_then(Value::as_str);
    let api_version = map.get("apiVersion").and_then(Value::as_str);
    match (api_version, kind) {
        (Some(_), Some(_)) => check_value(value, checked),
        // A flagger.app kind without its apiVersion: say so, and check the rest.
        (None, Some(kind)) if KINDS.contains(&kind) => {
            checked.problems.push((
                object_name(value, kind),
                Problem {
                    path: "apiVersion".into(),
                    message: "Required value".into(),
                    hint: format!("add apiVersion: {}", super::API_VERSION),
                    severity: super::validate::Severity::Error,
                },
            ));
            let mut with_version = map.clone();
            with_version.insert("apiVersion".into(), Value::from(super::API_VERSION));
            check_value(&Value::Object(with_version), checked);
        }
        (None, Some(_)) => checked.problems.push(not_an_object("no apiVersion".into())),
        (Some(_), None) => checked.problems.push(not_an_object("no kind".into())),
        (None, None) => checked
            .problems
            .push(not_an_object("no apiVersion and no kind".into())),
    }
}

fn object_name(value: &Value, kind: &str) -> String {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<no name>");
    format!("{kind}/{name}")
}

fn check_value(value: &Value, checked: &mut Checked) {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List"
        && let Some(items) = value.get("items").and_then(Value::as_array)
    {
        for item in items {
            check_value(item, checked);
        }
        return;
    }
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(group) = api_version.split('/').next() else {
        return;
    };
    if group != super::GROUP || api_version.split('/').count() != 2 {
        return;
    }
    checked.objects += 1;
    let found = &mut checked.problems;
    let object = object_name(value, kind);
    if api_version != super::API_VERSION {
        found.push((
            object,
            Problem {
                path: "apiVersion".into(),
                message: format!("{api_version} is not served"),
                hint: format!("use apiVersion: {}", super::API_VERSION),
                severity: super::validate::Severity::Error,
            },
        ));
        return;
    }
    let Some(schema_problems) = schema::check_object(value) else {
        found.push((
            object,
            Problem {
                path: "kind".into(),
                message: format!("{kind:?} is not a kind of {}", super::API_VERSION),
                hint: "use Canary, MetricTemplate or AlertProvider".into(),
                severity: super::validate::Severity::Error,
            },
        ));
        return;
    };
    let unnamed = value.pointer("/metadata/name").is_none()
        && value.pointer("/metadata/generateName").is_none();
    if unnamed {
        found.push((
            object.clone(),
            Problem {
                path: "metadata.name".into(),
                message: "Required value".into(),
                hint: "name the object".into(),
                severity: super::validate::Severity::Error,
            },
        ));
    }
    // Without metadata (reported as a missing name) the typed read fails too.
    let refused_any = unnamed
        || schema_problems
            .iter()
            .any(|p| p.outcome == schema::Outcome::Refused);
    let refused_paths: Vec<String> = schema_problems
        .iter()
        .filter(|p| p.outcome == schema::Outcome::Refused)
        .map(|p| p.problem.path.clone())
        .collect();
    let mut seen: Vec<Problem> = schema_problems.into_iter().map(|p| p.problem).collect();
    for p in validate(value) {
        // Where the schema already refused a field, its report is the one the API server gives;
        // a value the schema refused usually also fails to deserialise (empty path).
        if (refused_any && p.path.is_empty()) || refused_paths.contains(&p.path) {
            continue;
        }
        seen.push(p);
    }
    for p in seen {
        found.push((object.clone(), p));
    }
}

fn check_text(
    file: &str,
    text: &str,
    out: &mut dyn Write,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let checked = check(text);
    // One buffered write per file: a line per write made large outputs slow on a pipe.
    let mut lines = String::new();
    for (object, p) in &checked.problems {
        lines.push_str(file);
        lines.push_str(": ");
        lines.push_str(object);
        lines.push_str(": ");
        if p.is_warning() {
            lines.push_str("warning: ");
        }
        if !p.path.is_empty() {
            lines.push_str(&p.path);
            lines.push_str(": ");
        }
        lines.push_str(&p.message);
        if !p.hint.is_empty() {
            lines.push_str(" (");
            lines.push_str(&p.hint);
            lines.push(')');
        }
        lines.push('\n');
    }
    out.write_all(lines.as_bytes())?;
    summary.files += 1;
    summary.objects += checked.objects;
    summary.problems += checked.problems.len();
    summary.warnings += checked
        .problems
        .iter()
        .filter(|(_, p)| p.is_warning())
        .count();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_other_kinds_and_reports_yaml_errors() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n---\nkind: Canary\napiVersion: flagger.app/v1beta1\nmetadata:\n  name: c\nspec: [\n";
        let found = check_str(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].0.starts_with("line "), "{found:?}");
        assert!(found[0].1.message.starts_with("cannot parse YAML"));
    }

    #[test]
    fn counts_objects_and_reports_non_objects() {
        let canary = "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {name: a}\nspec:\n  targetRef: {apiVersion: apps/v1, kind: Deployment, name: a}\n  service: {port: 80}\n  analysis: {interval: 1m, threshold: 1, stepWeight: 10}\n";
        let got = check(&format!(
            "{canary}---\n---\napiVersion: v1\nkind: ConfigMap\n---\n{canary}"
        ));
        assert_eq!((got.objects, got.problems.len()), (2, 0), "{got:?}");
        let list = r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate", "metadata": {"name": "m"}, "spec": {"provider": {"type": "prometheus"}, "query": "up"}}]}"#;
        assert_eq!(check(list).objects, 1);
        for text in ["", "---\n", "# only a comment\n"] {
            assert_eq!(check(text), Checked::default(), "{text:?}");
        }
        let got = check("- a\n---\n42\n---\nhello: world\n");
        let at: Vec<&str> = got.problems.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(at, ["document 1", "document 2", "document 3"]);
        assert_eq!(got.objects, 0);
    }

    #[test]
    fn old_api_version_and_unknown_kind() {
        let found = check_str(
            "apiVersion: flagger.app/v1alpha3\nkind: Canary\nmetadata: {name: a}\n---\napiVersion: flagger.app/v1beta1\nkind: Thing\nmetadata: {name: b}\n",
        );
        let lines: Vec<String> = found
            .iter()
            .map(|(o, p)| format!("{o}: {}", p.path))
            .collect();
        assert_eq!(lines, ["Canary/a: apiVersion", "Thing/b: kind"]);
    }

    #[test]
    fn output_format() {
        let mut out = Vec::new();
        let mut summary = Summary::default();
        check_text(
            "f.yaml",
            "apiVersion: flagger.app/v1beta1\nkind: AlertProvider\nmetadata: {name: ap}\nspec: {type: pager, address: 'https://x'}\n",
            &mut out,
            &mut summary,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(summary.problems >= 1);
        assert_eq!((summary.objects, summary.files), (1, 1));
        assert!(
            text.starts_with("f.yaml: AlertProvider/ap: spec.type: Unsupported value: \"pager\""),
            "{text}"
        );
    }
}
