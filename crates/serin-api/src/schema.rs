//! Offline check of an object against a CRD's `openAPIV3Schema`, the way the API server does it:
//! unknown fields and nulls are pruned (reported as dropped), then type, required, enum, pattern,
//! bounds, items, properties, additionalProperties, oneOf/anyOf/allOf/not and the Kubernetes
//! extensions (`x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`) are enforced.
//!
//! Hand-written rather than a JSON Schema crate because the Kubernetes extensions and the pruning
//! semantics are what matter here.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

use super::validate::Problem;

/// What the API server does with an object that has this problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request is refused (422).
    Refused,
    /// The request is accepted but the value is silently removed (pruning).
    Dropped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaProblem {
    pub problem: Problem,
    pub outcome: Outcome,
}

/// Checks a whole object (apiVersion, kind, metadata, spec, status) against `schema`, the CRD's
/// `openAPIV3Schema`. Paths are JSON paths without the leading dot (`spec.analysis.interval`).
pub fn check(value: &Value, schema: &JSONSchemaProps) -> Vec<SchemaProblem> {
    let mut out = Vec::new();
    node(value, schema, "", true, &mut out);
    out
}

/// Checks an object against serin's own CRD for its kind; `None` when the kind is not one of them.
pub fn check_object(value: &Value) -> Option<Vec<SchemaProblem>> {
    let kind = value.get("kind")?.as_str()?;
    Some(check(value, schema_of(kind)?))
}

/// The `openAPIV3Schema` of serin's CRD for `kind`, generated once: generating the CRDs (schemars,
/// then the patch table) costs milliseconds, which made `serin validate` take seconds per
/// megabyte when it was done for every document.
pub fn schema_of(kind: &str) -> Option<&'static JSONSchemaProps> {
    static SCHEMAS: std::sync::OnceLock<Vec<(String, JSONSchemaProps)>> =
        std::sync::OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            super::crd::all()
                .into_iter()
                .filter_map(|c| {
                    let schema = c
                        .spec
                        .versions
                        .into_iter()
                        .next()?
                        .schema?
                        .open_api_v3_schema?;
                    Some((c.spec.names.kind, schema))
                })
                .collect()
        })
        .iter()
        .find(|(k, _)| k == kind)
        .map(|(_, s)| s)
}

/// The numeric bounds (`minimum`, `maximum`, `multipleOf`) of `schema` that `value` breaks,
/// following properties, items and map values only; `path` is where `value` sits in the object
/// (`spec`). `validate()` applies them to typed objects
/// so that the controller refuses what the API server would refuse, including objects stored
/// before the CRD carried the bounds.
pub fn bound_problems(value: &Value, schema: &JSONSchemaProps, path: &str) -> Vec<Problem> {
    fn walk(v: &Value, s: &JSONSchemaProps, path: &str, out: &mut Vec<SchemaProblem>) {
        match v {
            Value::Number(n) => number_checks(n, s, path, out),
            Value::Array(items) => {
                if let Some(JSONSchemaPropsOrArray::Schema(item)) = &s.items {
                    for (i, v) in items.iter().enumerate() {
                        walk(v, item, &format!("{path}[{i}]"), out);
                    }
                }
            }
            Value::Object(map) => {
                for (key, v) in map {
                    let child = s.properties.as_ref().and_then(|p| p.get(key)).or(
                        match &s.additional_properties {
                            Some(JSONSchemaPropsOrBool::Schema(c)) => Some(c.as_ref()),
                            _ => None,
                        },
                    );
                    if let Some(child) = child {
                        walk(v, child, &join(path, key), out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, schema, path, &mut out);
    out.into_iter().map(|p| p.problem).collect()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn refused(out: &mut Vec<SchemaProblem>, path: &str, message: String, hint: String) {
    out.push(SchemaProblem {
        problem: Problem {
            path: path.to_string(),
            message,
            hint,
            severity: super::validate::Severity::Error,
        },
        outcome: Outcome::Refused,
    });
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if is_integer(n) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// go-openapi accepts a float with no fractional part where an integer is required.
fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
}

fn type_ok(want: &str, v: &Value) -> bool {
    match (want, v) {
        ("object", Value::Object(_)) => true,
        ("array", Value::Array(_)) => true,
        ("string", Value::String(_)) => true,
        ("boolean", Value::Bool(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => is_integer(n),
        _ => false,
    }
}

/// Validates `v` at `path`. `structural` is false inside oneOf/anyOf/allOf/not branches, where
/// only value validations apply and nothing is pruned.
fn node(
    v: &Value,
    s: &JSONSchemaProps,
    path: &str,
    structural: bool,
    out: &mut Vec<SchemaProblem>,
) {
    let shown = if path.is_empty() { "<root>" } else { path };

    // Type (or int-or-string).
    if s.x_kubernetes_int_or_string == Some(true) {
        let ok = matches!(v, Value::String(_)) || matches!(v, Value::Number(n) if is_integer(n));
        if !ok {
            refused(
                out,
                path,
                format!(
                    "Invalid value: {}: {shown} must be of type integer or string",
                    short(v)
                ),
                "write a port number or a port name".into(),
            );
            return;
        }
    } else if let Some(want) = s.type_.as_deref()
        && !type_ok(want, v)
    {
        refused(
            out,
            path,
            format!(
                "Invalid value: {}: {shown} must be of type {want} (got {})",
                short(v),
                type_name(v)
            ),
            format!("write {shown} as {}", article(want)),
        );
        return;
    }

    if let Some(values) = &s.enum_ {
        let allowed: Vec<&Value> = values.iter().map(|j| &j.0).collect();
        if !allowed.contains(&v) {
            let list = allowed
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            refused(
                out,
                path,
                format!("Unsupported value: {}: supported values: {list}", short(v)),
                format!("use one of {list}"),
            );
        }
    }

    match v {
        Value::String(text) => string_checks(text, s, path, out),
        Value::Number(n) => number_checks(n, s, path, out),
        Value::Array(items) => array_checks(items, s, path, structural, out),
        Value::Object(map) => object_checks(map, s, path, structural, out),
        _ => {}
    }

    logic_checks(v, s, path, out);
}

fn article(t: &str) -> String {
    match t {
        "integer" => "an integer (no quotes, no decimals)".into(),
        "object" => "a mapping (key: value lines)".into(),
        "array" => "a list (- item lines)".into(),
        "string" => "a string (quote it if it looks like a number or boolean)".into(),
        "boolean" => "true or false (no quotes)".into(),
        "number" => "a number (no quotes)".into(),
        other => format!("a {other}"),
    }
}

fn string_checks(text: &str, s: &JSONSchemaProps, path: &str, out: &mut Vec<SchemaProblem>) {
    if let Some(pattern) = &s.pattern
        && !pattern_matches(pattern, text)
    {
        let hint = if pattern == super::crd::DURATION_PATTERN {
            "write a Go duration that starts with whole seconds or minutes, e.g. 30s, 1m or 1m30s"
                .into()
        } else {
            format!("the value must match the regular expression {pattern}")
        };
        refused(
            out,
            path,
            format!("Invalid value: {text:?}: must match pattern {pattern}"),
            hint,
        );
    }
    let len = text.chars().count() as i64;
    if let Some(min) = s.min_length
        && len < min
    {
        refused(
            out,
            path,
            format!("Invalid value: {text:?}: must be at least {min} characters long"),
            "use a longer value".into(),
        );
    }
    if let Some(max) = s.max_length
        && len > max
    {
        refused(
            out,
            path,
            format!("Too long: must have at most {max} characters"),
            "use a shorter value".into(),
        );
    }
    if s.format.as_deref() == Some("date-time")
        && chrono::DateTime::parse_from_rfc3339(text).is_err()
    {
        refused(
            out,
            path,
            format!("Invalid value: {text:?}: must be a date-time (RFC 3339)"),
            "write a time like 2024-05-01T12:00:00Z".into(),
        );
    }
}

/// Whether `text` matches `pattern`, compiling each of the CRDs' few patterns once per thread
/// (compiling one per checked string dominated `serin validate`'s time). A pattern that does not
/// compile matches everything: the API server would have refused such a CRD.
fn pattern_matches(pattern: &str, text: &str) -> bool {
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<String, Option<regex::Regex>>> =
            std::cell::RefCell::default();
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let re = cache
            .entry(pattern.to_string())
            .or_insert_with(|| regex::Regex::new(pattern).ok());
        re.as_ref().is_none_or(|re| re.is_match(text))
    })
}

/// The hint for a value outside `[min, max]`: what the range means where it is a known one.
fn bound_hint(s: &JSONSchemaProps, op: &str, limit: f64) -> String {
    match (s.minimum, s.maximum) {
        (Some(lo), Some(hi)) if lo == 0.0 && hi == 100.0 => {
            "the value is a percentage: use 0 to 100".into()
        }
        (Some(lo), Some(hi)) if lo == 1.0 && hi == 65535.0 => {
            "use a port number from 1 to 65535".into()
        }
        (Some(lo), Some(hi)) if lo == f64::from(i32::MIN) && hi == f64::from(i32::MAX) => format!(
            "use a value {op} {limit} (the field is a 32-bit integer, from {} to {})",
            i32::MIN,
            i32::MAX
        ),
        (_, Some(hi)) if hi == f64::from(i32::MAX) && op == "<=" => {
            format!("use a value <= {limit} (the field is a 32-bit integer)")
        }
        _ => format!("use a value {op} {limit}"),
    }
}

fn number_checks(
    n: &serde_json::Number,
    s: &JSONSchemaProps,
    path: &str,
    out: &mut Vec<SchemaProblem>,
) {
    let Some(x) = n.as_f64() else { return };
    if let Some(min) = s.minimum {
        let exclusive = s.exclusive_minimum == Some(true);
        if x < min || (exclusive && x == min) {
            let op = if exclusive { ">" } else { ">=" };
            refused(
                out,
                path,
                format!("Invalid value: {n}: must be {op} {min}"),
                bound_hint(s, op, min),
            );
        }
    }
    if let Some(max) = s.maximum {
        let exclusive = s.exclusive_maximum == Some(true);
        if x > max || (exclusive && x == max) {
            let op = if exclusive { "<" } else { "<=" };
            refused(
                out,
                path,
                format!("Invalid value: {n}: must be {op} {max}"),
                bound_hint(s, op, max),
            );
        }
    }
    if let Some(m) = s.multiple_of
        && m != 0.0
        && (x / m).fract() != 0.0
    {
        refused(
            out,
            path,
            format!("Invalid value: {n}: must be a multiple of {m}"),
            format!("use a multiple of {m}"),
        );
    }
}

fn array_checks(
    items: &[Value],
    s: &JSONSchemaProps,
    path: &str,
    structural: bool,
    out: &mut Vec<SchemaProblem>,
) {
    let len = items.len() as i64;
    if let Some(min) = s.min_items
        && len < min
    {
        refused(
            out,
            path,
            format!("Invalid value: {len} items: must have at least {min} items"),
            format!("add items to {path}"),
        );
    }
    if let Some(max) = s.max_items
        && len > max
    {
        refused(
            out,
            path,
            format!("Too many: {len}: must have at most {max} items"),
            format!("remove items from {path}"),
        );
    }
    match &s.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if v.is_null() && structural {
                    dropped_null(out, &p);
                    continue;
                }
                node(v, item, &p, structural, out);
            }
        }
        Some(JSONSchemaPropsOrArray::Schemas(list)) => {
            for (i, (v, item)) in items.iter().zip(list).enumerate() {
                node(v, item, &format!("{path}[{i}]"), structural, out);
            }
        }
        None => {}
    }
}

fn dropped_null(out: &mut Vec<SchemaProblem>, path: &str) {
    out.push(SchemaProblem {
        problem: Problem {
            path: path.to_string(),
            message: "null value (the API server drops it)".into(),
            hint: "remove the field or give it a value".into(),
            severity: super::validate::Severity::Error,
        },
        outcome: Outcome::Dropped,
    });
}

fn object_checks(
    map: &serde_json::Map<String, Value>,
    s: &JSONSchemaProps,
    path: &str,
    structural: bool,
    out: &mut Vec<SchemaProblem>,
) {
    // Required (a null counts as absent: it is pruned first).
    for field in s.required.iter().flatten() {
        if map.get(field).is_none_or(Value::is_null) {
            let p = join(path, field);
            refused(
                out,
                &p,
                "Required value".into(),
                format!(
                    "add {field} to {}",
                    if path.is_empty() { "the object" } else { path }
                ),
            );
        }
    }
    let n = map.len() as i64;
    if let Some(min) = s.min_properties
        && n < min
    {
        refused(
            out,
            path,
            format!("must have at least {min} properties"),
            "add entries".into(),
        );
    }
    if let Some(max) = s.max_properties
        && n > max
    {
        refused(
            out,
            path,
            format!("must have at most {max} properties"),
            "remove entries".into(),
        );
    }

    let preserve = s.x_kubernetes_preserve_unknown_fields == Some(true);
    let props = s.properties.as_ref();
    for (key, v) in map {
        let p = join(path, key);
        // The API server validates metadata and the type fields itself.
        if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(child) = props.and_then(|p| p.get(key)) {
            if v.is_null() && child.nullable != Some(true) {
                if structural {
                    dropped_null(out, &p);
                }
                continue;
            }
            node(v, child, &p, structural, out);
            continue;
        }
        match &s.additional_properties {
            Some(JSONSchemaPropsOrBool::Schema(child)) => {
                if v.is_null() && child.nullable != Some(true) {
                    if structural {
                        dropped_null(out, &p);
                    }
                    continue;
                }
                node(v, child, &p, structural, out);
            }
            Some(JSONSchemaPropsOrBool::Bool(true)) => {}
            _ if preserve => {}
            // Inside a value-validation branch, properties are only declared to attach nested
            // rules; undeclared keys are fine there.
            _ if !structural => {}
            _ => out.push(SchemaProblem {
                problem: Problem {
                    path: p,
                    message: "unknown field (the API server drops it)".into(),
                    hint: unknown_field_hint(key, props.map(|p| p.keys())),
                    severity: super::validate::Severity::Error,
                },
                outcome: Outcome::Dropped,
            }),
        }
    }
}

fn unknown_field_hint<'a>(key: &str, known: Option<impl Iterator<Item = &'a String>>) -> String {
    if key == "canaryAnalysis" {
        return "canaryAnalysis is the deprecated v1alpha3 name: rename it to analysis".into();
    }
    let Some(known) = known else {
        return "remove it".into();
    };
    let lower = key.to_ascii_lowercase();
    let close: Vec<&String> = known
        .filter(|k| {
            let kl = k.to_ascii_lowercase();
            kl == lower || edit_distance(&kl, &lower) <= 2
        })
        .collect();
    match close.first() {
        Some(k) => format!("did you mean {k}? (field names are case-sensitive camelCase)"),
        None => "remove it, or check the spelling against Flagger's API".into(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Whether `v` satisfies a value-validation branch (no pruning, refusals only).
fn branch_ok(v: &Value, s: &JSONSchemaProps, path: &str) -> bool {
    let mut tmp = Vec::new();
    node(v, s, path, false, &mut tmp);
    !tmp.iter().any(|p| p.outcome == Outcome::Refused)
}

fn describe(s: &JSONSchemaProps) -> String {
    if let Some(req) = &s.required
        && s.properties.is_none()
        && s.not.is_none()
    {
        return format!("[{}]", req.join(", "));
    }
    if let Some(req) = &s.required {
        return format!("[{}]", req.join(", "));
    }
    if let Some(not) = &s.not
        && let Some(any) = &not.any_of
    {
        let names: Vec<String> = any
            .iter()
            .flat_map(|b| b.required.clone().unwrap_or_default())
            .collect();
        return format!("none of [{}]", names.join(", "));
    }
    serde_json::to_string(s).unwrap_or_default()
}

fn logic_checks(v: &Value, s: &JSONSchemaProps, path: &str, out: &mut Vec<SchemaProblem>) {
    if let Some(branches) = &s.one_of {
        let matched = branches.iter().filter(|b| branch_ok(v, b, path)).count();
        if matched != 1 {
            let options = branches
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join(" | ");
            let found = if matched == 0 {
                "found none valid".to_string()
            } else {
                format!("found {matched} valid alternatives")
            };
            refused(
                out,
                path,
                format!("must validate one and only one schema (oneOf), {found} among {options}"),
                one_of_hint(path, branches, &options),
            );
        }
    }
    if let Some(branches) = &s.any_of
        && !branches.iter().any(|b| branch_ok(v, b, path))
    {
        let options = branches
            .iter()
            .map(describe)
            .collect::<Vec<_>>()
            .join(" | ");
        refused(
            out,
            path,
            format!("must validate at least one schema (anyOf): {options}"),
            format!("set the fields of one of {options}"),
        );
    }
    if let Some(branches) = &s.all_of {
        for b in branches {
            node(v, b, path, false, out);
        }
    }
    if let Some(not) = &s.not
        && branch_ok(v, not, path)
    {
        refused(
            out,
            path,
            format!("must not validate the schema (not): {}", describe(not)),
            "remove the fields the rule forbids".into(),
        );
    }
}

fn one_of_hint(path: &str, branches: &[JSONSchemaProps], options: &str) -> String {
    if path.ends_with("spec.analysis") {
        return "set interval and threshold, plus exactly one of iterations (A/B testing, \
                Blue/Green), stepWeight or stepWeights (progressive canary)"
            .into();
    }
    if path == "spec" {
        return "set type, plus either address or secretRef (not both)".into();
    }
    // Single-field alternatives (StringMatch, hash keys): name the fields.
    let singles: Vec<String> = branches
        .iter()
        .filter(|b| b.not.is_none() && b.properties.is_none())
        .filter_map(|b| match b.required.as_deref() {
            Some([one]) => Some(one.clone()),
            _ => None,
        })
        .collect();
    if singles.len() == branches.len() {
        return format!("set exactly one of {}", singles.join(", "));
    }
    if singles.len() + 1 == branches.len() && branches.iter().any(|b| b.not.is_some()) {
        return format!("set at most one of {}", singles.join(", "));
    }
    format!("set the fields of exactly one of {options}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> JSONSchemaProps {
        serde_json::from_value(v).unwrap()
    }

    fn refusals(v: Value, s: &JSONSchemaProps) -> Vec<String> {
        check(&v, s)
            .into_iter()
            .filter(|p| p.outcome == Outcome::Refused)
            .map(|p| format!("{}: {}", p.problem.path, p.problem.message))
            .collect()
    }

    #[test]
    fn types_and_int_or_string() {
        let s = props(json!({"type": "object", "properties": {
            "a": {"type": "integer"},
            "b": {"x-kubernetes-int-or-string": true},
            "c": {"type": "number"},
            "d": {"type": "boolean"}
        }}));
        assert!(refusals(json!({"a": 3, "b": "http", "c": 1.5, "d": true}), &s).is_empty());
        assert!(refusals(json!({"a": 3.0, "b": 80}), &s).is_empty());
        let r = refusals(json!({"a": "3", "b": 1.5, "c": "x", "d": "yes"}), &s);
        assert_eq!(r.len(), 4, "{r:?}");
        assert!(r[0].starts_with("a: Invalid value"), "{r:?}");
    }

    #[test]
    fn unknown_and_null_are_dropped_not_refused() {
        let s = props(json!({"type": "object", "properties": {"a": {"type": "string"}}}));
        let got = check(&json!({"a": null, "zz": 1}), &s);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|p| p.outcome == Outcome::Dropped));
        assert!(got.iter().any(|p| p.problem.path == "zz"
            && p.problem.message == "unknown field (the API server drops it)"));
    }

    #[test]
    fn preserve_unknown_fields() {
        let s = props(
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "properties": {"a": {"type": "string"}}}),
        );
        assert!(check(&json!({"zz": 1, "a": "x"}), &s).is_empty());
        assert_eq!(refusals(json!({"a": 1}), &s).len(), 1);
    }

    #[test]
    fn one_of_any_of_not() {
        let s = props(json!({"type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "oneOf": [{"required": ["x"]}, {"required": ["y"]}]}));
        assert!(refusals(json!({"x": 1}), &s).is_empty());
        assert_eq!(refusals(json!({"x": 1, "y": 2}), &s).len(), 1);
        assert_eq!(refusals(json!({}), &s).len(), 1);
        let s = props(
            json!({"type": "object", "properties": {"x": {"type": "integer"}},
            "anyOf": [{"required": ["x"]}], "not": {"required": ["x"]}}),
        );
        let r = refusals(json!({"x": 1}), &s);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].contains("(not)"));
    }

    #[test]
    fn bounds_enum_pattern_required_items_maps() {
        let s = props(json!({"type": "object", "required": ["r"], "properties": {
            "r": {"type": "string", "enum": ["a", "b"]},
            "p": {"type": "string", "pattern": "^[0-9]+(m|s)"},
            "n": {"type": "integer", "minimum": 1, "maximum": 10},
            "l": {"type": "array", "items": {"type": "integer"}},
            "m": {"type": "object", "additionalProperties": {"type": "string"}},
            "t": {"type": "string", "format": "date-time"}
        }}));
        assert!(
            refusals(
                json!({"r": "a", "p": "10s", "n": 10, "l": [1], "m": {"k": "v"},
                       "t": "2024-01-01T00:00:00Z"}),
                &s
            )
            .is_empty()
        );
        let r = refusals(
            json!({"p": "s10", "n": 0, "l": [1, "x"], "m": {"k": 1}, "t": "yesterday"}),
            &s,
        );
        let paths: Vec<&str> = r.iter().map(|x| x.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["r", "l[1]", "m.k", "n", "p", "t"], "{r:?}");
        let r = refusals(json!({"r": "c"}), &s);
        assert_eq!(
            r,
            [r#"r: Unsupported value: "c": supported values: "a", "b""#]
        );
    }

    #[test]
    fn edit_distance_hint() {
        let known = ["stepWeight".to_string(), "maxWeight".to_string()];
        assert!(unknown_field_hint("stepweight", Some(known.iter())).contains("stepWeight"));
        assert!(unknown_field_hint("zzz", Some(known.iter())).contains("remove"));
    }
}
