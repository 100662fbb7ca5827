//! `serin validate`: offline checks of manifests, the schema check the API server would do plus
//! `validate()`, so mistakes show before `kubectl apply` (or before the controller reports them).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

use super::schema;
use super::validate::{Problem, validate};

/// Checks every manifest in `paths` (files, directories searched recursively for *.yaml, *.yml
/// and *.json, or `-` for stdin), writes one line per problem to `out`
/// (`FILE: Kind/name: field.path: message (hint)`), and returns the number of problems.
/// Documents of other kinds are skipped. Errors are I/O failures only (unreadable paths).
pub fn run(paths: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<usize> {
    let mut count = 0;
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            count += check_text("-", &text, out)?;
            continue;
        }
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect(path, &mut files)?;
            for f in files {
                count += check_file(&f, out)?;
            }
        } else {
            count += check_file(path, out)?;
        }
    }
    Ok(count)
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

fn check_file(path: &Path, out: &mut dyn Write) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    check_text(&path.display().to_string(), &text, out)
}

/// The problems of every flagger.app document in a YAML (or JSON) stream, with the object each
/// belongs to (`Kind/name`, or the document number for parse errors).
pub fn check_str(text: &str) -> Vec<(String, Problem)> {
    let mut found = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(value) => check_value(&value, &mut found),
            Err(e) => {
                let at = e
                    .location()
                    .map(|l| format!("line {}, column {}", l.line(), l.column()))
                    .unwrap_or_else(|| format!("document {}", i + 1));
                found.push((
                    at,
                    Problem {
                        path: String::new(),
                        message: format!("cannot parse YAML: {e}"),
                        hint: "fix the YAML syntax (indentation, quotes, tabs)".into(),
                    },
                ));
                // The stream cannot be resynchronised after a syntax error.
                break;
            }
        }
    }
    found
}

fn check_value(value: &Value, found: &mut Vec<(String, Problem)>) {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List"
        && let Some(items) = value.get("items").and_then(Value::as_array)
    {
        for item in items {
            check_value(item, found);
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
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<no name>");
    let object = format!("{kind}/{name}");
    if api_version != super::API_VERSION {
        found.push((
            object,
            Problem {
                path: "apiVersion".into(),
                message: format!("{api_version} is not served"),
                hint: format!("use apiVersion: {}", super::API_VERSION),
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
            },
        ));
        return;
    };
    if value.pointer("/metadata/name").is_none()
        && value.pointer("/metadata/generateName").is_none()
    {
        found.push((
            object.clone(),
            Problem {
                path: "metadata.name".into(),
                message: "Required value".into(),
                hint: "name the object".into(),
            },
        ));
    }
    let refused_paths: Vec<String> = schema_problems
        .iter()
        .filter(|p| p.outcome == schema::Outcome::Refused)
        .map(|p| p.problem.path.clone())
        .collect();
    let mut seen: Vec<Problem> = schema_problems.into_iter().map(|p| p.problem).collect();
    for p in validate(value) {
        // Where the schema already refused a field, its report is the one the API server gives;
        // a value the schema refused usually also fails to deserialise (empty path).
        if (!refused_paths.is_empty() && p.path.is_empty()) || refused_paths.contains(&p.path) {
            continue;
        }
        seen.push(p);
    }
    for p in seen {
        found.push((object.clone(), p));
    }
}

fn check_text(file: &str, text: &str, out: &mut dyn Write) -> anyhow::Result<usize> {
    let found = check_str(text);
    for (object, p) in &found {
        let mut line = format!("{file}: {object}: ");
        if !p.path.is_empty() {
            line.push_str(&p.path);
            line.push_str(": ");
        }
        line.push_str(&p.message);
        if !p.hint.is_empty() {
            line.push_str(&format!(" ({})", p.hint));
        }
        writeln!(out, "{line}")?;
    }
    Ok(found.len())
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
        let n = check_text(
            "f.yaml",
            "apiVersion: flagger.app/v1beta1\nkind: AlertProvider\nmetadata: {name: ap}\nspec: {type: pager, address: 'https://x'}\n",
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(n >= 1);
        assert!(
            text.starts_with("f.yaml: AlertProvider/ap: spec.type: Unsupported value: \"pager\""),
            "{text}"
        );
    }
}
