//! CRD generation: the schemas derived from the Rust types, then adjusted so that they are what
//! Flagger's `artifacts/flagger/crd.yaml` enforces (enums, patterns, `oneOf` rules) and what a
//! 1.20 API server accepts (no `null` in enums, no `nullable`, no `{}` schemas).
//!
//! The adjustments are a table of (path, change) below, so a reviewer can hold it against
//! Flagger's CRD line by line; a unit test checks every path still exists.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::{AlertProvider, Canary, MetricTemplate};

/// The file under `crds/` that holds [`all_yaml()`].
pub const CRDS_FILE: &str = "crds/flagger.app.yaml";

/// Go duration prefix Flagger's CRD requires on intervals and timeouts.
pub const DURATION_PATTERN: &str = "^[0-9]+(m|s)";

/// The three CRDs (Canary, MetricTemplate, AlertProvider), as `serin crds` prints them.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        finish(Canary::crd(), &canary_patches()),
        finish(MetricTemplate::crd(), &[]),
        finish(AlertProvider::crd(), &alert_provider_patches()),
    ]
}

/// All CRDs as one multi-document YAML stream (the content of [`CRDS_FILE`]).
pub fn all_yaml() -> String {
    let mut out = String::new();
    for (i, crd) in all().iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        // Serialising a k8s-openapi struct to YAML cannot fail (string keys, no foreign types).
        out.push_str(&serde_yaml_ng::to_string(crd).unwrap_or_default());
    }
    out
}

/// The `openAPIV3Schema` of the CRD for `kind` as JSON, for the offline schema check.
pub fn schema_for_kind(kind: &str) -> Option<Value> {
    all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .and_then(|c| c.spec.versions.into_iter().next())
        .and_then(|v| v.schema)
        .and_then(|s| s.open_api_v3_schema)
        .and_then(|s| serde_json::to_value(s).ok())
}

/// One adjustment: `path` addresses a schema node (`.` separated property names, `[]` for array
/// items, `{}` for map values); `change` is merged into it (keys replaced).
pub(crate) struct Patch {
    pub path: &'static str,
    pub change: Value,
}

fn patch(path: &'static str, change: Value) -> Patch {
    Patch { path, change }
}

/// `oneOf` allowing at most one of exact/prefix/regex: Flagger's rule for Istio StringMatch.
fn string_match_at_most_one() -> Value {
    json!([
        {"not": {"anyOf": [
            {"required": ["exact"]}, {"required": ["prefix"]}, {"required": ["regex"]}
        ]}},
        {"required": ["exact"]},
        {"required": ["prefix"]},
        {"required": ["regex"]}
    ])
}

/// `minimum`/`maximum` for a field whose Rust type holds more than its meaning allows.
fn range(min: i64, max: i64) -> Value {
    json!({"minimum": min, "maximum": max})
}

/// Only the lower bound; the upper one stays the type's (from [`add_integer_bounds`]).
fn at_least(min: i64) -> Value {
    json!({"minimum": min})
}

/// Bounds narrower than the Rust types' (issue 11). The rule: refuse nothing that Flagger's CRD
/// accepts and Flagger can run, so a manifest that works with Flagger keeps working. Flagger
/// clamps a canary weight at 100 but not at 0, so a negative step drives a VirtualService weight
/// below 0, which Istio refuses: steps are `>= 0`, while a step above 100 (one jump to maxWeight)
/// stays allowed. maxWeight above 100 never promotes (the weight is clamped at 100 and never
/// reaches it) and an Istio mirror percentage is 0 to 100, so both are percentages. Ports are
/// what a Service accepts. Counts Flagger reads as "unset" when ≤ 0 (threshold, iterations,
/// progressDeadlineSeconds, maxAge, retries, ready thresholds) keep the full int32 range;
/// `validate()` reports the meaningless ones.
fn canary_bounds() -> Vec<Patch> {
    vec![
        patch("spec.service.port", range(1, 65535)),
        // Applies to the integer form only; a named port is a string.
        patch("spec.service.targetPort", range(1, 65535)),
        patch("spec.analysis.maxWeight", range(0, 100)),
        patch("spec.analysis.mirrorWeight", range(0, 100)),
        patch("spec.analysis.stepWeight", at_least(0)),
        patch("spec.analysis.stepWeights[]", at_least(0)),
        patch("spec.analysis.stepWeightPromotion", at_least(0)),
        // Written by the controller only; Flagger's are within these too.
        patch("status.canaryWeight", range(0, 100)),
        patch("status.failedChecks", at_least(0)),
        patch("status.iterations", at_least(0)),
    ]
}

pub(crate) fn canary_patches() -> Vec<Patch> {
    let mut patches = canary_bounds();
    patches.extend(canary_more_patches());
    patches
}

fn canary_more_patches() -> Vec<Patch> {
    vec![
        // Flagger's CRD does not require `service` either (Knative canaries have none); the
        // controller holds a Canary without it (validate()).
        patch("spec", json!({"required": ["targetRef", "analysis"]})),
        patch(
            "spec.provider",
            json!({"enum": [
                "apisix", "appmesh", "appmesh:v1beta2", "contour", "gatewayapi:v1",
                "gatewayapi:v1beta1", "gloo", "istio", "knative", "kubernetes", "kuma", "linkerd",
                "nginx", "osm", "skipper", "smi:v1alpha1", "smi:v1alpha2", "smi:v1alpha3", "traefik"
            ]}),
        ),
        patch(
            "spec.targetRef.kind",
            json!({"enum": ["DaemonSet", "Deployment", "Service"]}),
        ),
        patch(
            "spec.autoscalerRef.kind",
            json!({"enum": ["HorizontalPodAutoscaler", "ScaledObject"]}),
        ),
        patch("spec.ingressRef.kind", json!({"enum": ["Ingress"]})),
        patch("spec.routeRef.kind", json!({"enum": ["ApisixRoute"]})),
        patch("spec.upstreamRef.kind", json!({"enum": ["Upstream"]})),
        patch(
            "spec.service.trafficDistribution",
            json!({"enum": ["PreferClose", "PreferSameZone", "PreferSameNode"]}),
        ),
        patch(
            "spec.service.corsPolicy.allowOrigins[]",
            json!({"oneOf": [
                {"required": ["exact"]}, {"required": ["prefix"]}, {"required": ["regex"]}
            ]}),
        ),
        patch(
            "spec.service.trafficPolicy.loadBalancer",
            json!({"oneOf": [
                {"required": ["simple"]},
                {
                    "properties": {"consistentHash": {"oneOf": [
                        {"required": ["httpHeaderName"]},
                        {"required": ["httpCookie"]},
                        {"required": ["useSourceIp"]},
                        {"required": ["httpQueryParameterName"]}
                    ]}},
                    "required": ["consistentHash"]
                }
            ]}),
        ),
        patch(
            "spec.analysis",
            json!({"oneOf": [
                {"required": ["interval", "threshold", "iterations"]},
                {"required": ["interval", "threshold", "stepWeight"]},
                {"required": ["interval", "threshold", "stepWeights"]}
            ]}),
        ),
        patch(
            "spec.analysis.interval",
            json!({"pattern": DURATION_PATTERN}),
        ),
        patch(
            "spec.analysis.metrics[].interval",
            json!({"pattern": DURATION_PATTERN}),
        ),
        patch(
            "spec.analysis.webhooks[].timeout",
            json!({"pattern": DURATION_PATTERN}),
        ),
        patch(
            "spec.analysis.webhooks[].type",
            json!({"enum": [
                "", "confirm-rollout", "pre-rollout", "rollout", "confirm-promotion",
                "post-rollout", "event", "rollback", "confirm-traffic-increase"
            ]}),
        ),
        patch(
            "spec.analysis.alerts[].severity",
            json!({"enum": ["", "info", "warn", "error"]}),
        ),
        patch(
            "spec.analysis.sessionAffinity.maxAge",
            json!({"default": 86400}),
        ),
        patch(
            "spec.analysis.match[].headers{}",
            json!({"oneOf": [
                {"required": ["exact"]}, {"required": ["prefix"]},
                {"required": ["suffix"]}, {"required": ["regex"]}
            ]}),
        ),
    ]
}

pub(crate) fn alert_provider_patches() -> Vec<Patch> {
    vec![patch(
        "spec",
        json!({"oneOf": [
            {"required": ["type", "address"]},
            {"required": ["type", "secretRef"]}
        ]}),
    )]
}

/// Finds the schema node for a patch path.
pub(crate) fn node_mut<'a>(root: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut node = root;
    for segment in path.split('.') {
        let (name, suffix) = match segment.find(['[', '{']) {
            Some(i) => segment.split_at(i),
            None => (segment, ""),
        };
        node = node.get_mut("properties")?.get_mut(name)?;
        let mut rest = suffix;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("[]") {
                node = node.get_mut("items")?;
                rest = r;
            } else if let Some(r) = rest.strip_prefix("{}") {
                node = node.get_mut("additionalProperties")?;
                rest = r;
            } else {
                return None;
            }
        }
    }
    Some(node)
}

fn finish(mut crd: CustomResourceDefinition, patches: &[Patch]) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let Some(schema) = version.schema.as_mut() else {
            continue;
        };
        let Some(props) = schema.open_api_v3_schema.take() else {
            continue;
        };
        let Ok(mut value) = serde_json::to_value(props) else {
            continue;
        };
        clean(&mut value);
        add_string_match_rules(&mut value);
        add_integer_bounds(&mut value);
        for p in patches {
            if let (Some(node), Value::Object(change)) = (node_mut(&mut value, p.path), &p.change)
                && let Value::Object(target) = node
            {
                for (k, v) in change {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        schema.open_api_v3_schema = serde_json::from_value(value).ok();
    }
    crd
}

/// What the 1.20 API server refuses or treats surprisingly: `null` in enums, `nullable` (null
/// values are pruned anyway), and defaults schemars derives from `#[serde(default)]`.
fn clean(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("nullable");
            map.remove("default");
            if let Some(Value::Array(values)) = map.get_mut("enum") {
                values.retain(|x| !x.is_null());
            }
            for child in map.values_mut() {
                clean(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(clean),
        _ => {}
    }
}

/// The largest `f64` below 2^63: a bound of exactly 2^63 would let through a value no `i64`
/// holds.
const I64_MAX_AS_F64: f64 = 9_223_372_036_854_774_784.0;

/// Every integer gets the range of its Rust type as `minimum`/`maximum`. `format: int32` is not
/// enforced by the API server, and a value the type cannot hold makes the object unreadable for
/// the controller (issue 11: one `stepWeight: 99999999999` stopped every canary). Unsigned 64-bit
/// values stop at 2^63, what the API server keeps as an exact integer. Narrower bounds come from
/// the patch table.
fn add_integer_bounds(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let integer = map.get("type").and_then(Value::as_str) == Some("integer")
                || map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
            if integer {
                let (min, max) = match map.get("format").and_then(Value::as_str) {
                    Some("uint8") => (json!(0), json!(u8::MAX)),
                    Some("uint16") => (json!(0), json!(u16::MAX)),
                    Some("uint32") => (json!(0), json!(u32::MAX)),
                    Some("uint64" | "uint") => (json!(0), json!(I64_MAX_AS_F64)),
                    Some("int8") => (json!(i8::MIN), json!(i8::MAX)),
                    Some("int16") => (json!(i16::MIN), json!(i16::MAX)),
                    Some("int64" | "int") => (json!(i64::MIN), json!(I64_MAX_AS_F64)),
                    // int32, and int-or-string (`IntOrString::Int` holds an i32).
                    _ => (json!(i32::MIN), json!(i32::MAX)),
                };
                // A bound the type declares itself (`#[schemars(range(...))]`) is kept when
                // it is narrower.
                let narrower = |key: &str, own: Value, keep: fn(f64, f64) -> bool| match map
                    .get(key)
                    .and_then(Value::as_f64)
                {
                    Some(declared) if own.as_f64().is_some_and(|t| keep(declared, t)) => {
                        json!(declared)
                    }
                    _ => own,
                };
                let min = narrower("minimum", min, |declared, t| declared >= t);
                let max = narrower("maximum", max, |declared, t| declared <= t);
                map.insert("minimum".into(), min);
                map.insert("maximum".into(), max);
            }
            for child in map.values_mut() {
                add_integer_bounds(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(add_integer_bounds),
        _ => {}
    }
}

/// Every Istio StringMatch object (properties exact/prefix/suffix/regex) gets Flagger's
/// "at most one of" rule; A/B header matches are tightened to "exactly one" by a patch.
fn add_string_match_rules(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let is_string_match = map
                .get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| {
                    let mut keys: Vec<&str> = p.keys().map(String::as_str).collect();
                    keys.sort_unstable();
                    keys == ["exact", "prefix", "regex", "suffix"]
                });
            if is_string_match {
                map.insert("oneOf".into(), string_match_at_most_one());
            }
            for child in map.values_mut() {
                add_string_match_rules(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(add_string_match_rules),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(kind: &str) -> Value {
        let mut s = schema_for_kind(kind).unwrap();
        // node_mut wants a mutable root; clone for reads.
        std::mem::take(&mut s)
    }

    #[test]
    fn every_patch_path_exists() {
        let raw = |crd: CustomResourceDefinition| {
            let mut v = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            clean(&mut v);
            v
        };
        let mut canary = raw(Canary::crd());
        for p in canary_patches() {
            assert!(node_mut(&mut canary, p.path).is_some(), "{}", p.path);
        }
        let mut ap = raw(AlertProvider::crd());
        for p in alert_provider_patches() {
            assert!(node_mut(&mut ap, p.path).is_some(), "{}", p.path);
        }
    }

    fn walk(v: &Value, path: &str, f: &mut dyn FnMut(&str, &serde_json::Map<String, Value>)) {
        match v {
            Value::Object(m) => {
                f(path, m);
                for (k, c) in m {
                    walk(c, &format!("{path}/{k}"), f);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    walk(c, &format!("{path}/{i}"), f);
                }
            }
            _ => {}
        }
    }

    /// Visits schema nodes only (not `oneOf`/`anyOf`/`not` branches, which need no type).
    fn visit_schema(
        v: &Value,
        path: &str,
        f: &mut dyn FnMut(&str, &serde_json::Map<String, Value>),
    ) {
        let Value::Object(m) = v else { return };
        f(path, m);
        if let Some(Value::Object(props)) = m.get("properties") {
            for (k, c) in props {
                visit_schema(c, &format!("{path}.{k}"), f);
            }
        }
        if let Some(items) = m.get("items") {
            visit_schema(items, &format!("{path}[]"), f);
        }
        if let Some(ap) = m.get("additionalProperties") {
            visit_schema(ap, &format!("{path}{{}}"), f);
        }
    }

    /// Trap 5 of rust-notes: what a 1.20 API server refuses.
    #[test]
    fn structural_and_accepted_by_1_20() {
        for crd in all() {
            let v = crd.spec.versions[0].schema.as_ref().unwrap();
            let v = serde_json::to_value(v.open_api_v3_schema.as_ref().unwrap()).unwrap();
            walk(&v, "", &mut |path, m| {
                assert!(!m.contains_key("nullable"), "nullable at {path}");
                if let Some(Value::Array(e)) = m.get("enum") {
                    assert!(!e.iter().any(Value::is_null), "null in enum at {path}");
                }
                assert!(!m.contains_key("$ref"), "$ref at {path}");
            });
            visit_schema(&v, "", &mut |path, m| {
                assert!(
                    m.contains_key("type")
                        || m.contains_key("x-kubernetes-int-or-string")
                        || m.contains_key("x-kubernetes-preserve-unknown-fields"),
                    "untyped schema at {path}: {m:?}"
                );
                if m.get("type") == Some(&json!("array")) {
                    assert!(m.contains_key("items"), "array without items at {path}");
                }
            });
        }
    }

    /// Issue 11: an integer the API server accepts but serin's types cannot hold made the object
    /// unreadable. Every integer is bounded, within the range of its Rust type.
    #[test]
    fn every_integer_is_bounded() {
        let mut seen = 0;
        for crd in all() {
            let v = crd.spec.versions[0].schema.as_ref().unwrap();
            let v = serde_json::to_value(v.open_api_v3_schema.as_ref().unwrap()).unwrap();
            visit_schema(&v, "", &mut |path, m| {
                let int_or_string = m.get("x-kubernetes-int-or-string") == Some(&json!(true));
                if m.get("type") != Some(&json!("integer")) && !int_or_string {
                    return;
                }
                seen += 1;
                let min = m.get("minimum").and_then(Value::as_f64);
                let max = m.get("maximum").and_then(Value::as_f64);
                let (Some(min), Some(max)) = (min, max) else {
                    panic!("unbounded integer at {path}: {m:?}");
                };
                let (lo, hi) = match m.get("format").and_then(Value::as_str) {
                    Some("uint32") => (0.0, f64::from(u32::MAX)),
                    Some("uint64") => (0.0, I64_MAX_AS_F64),
                    Some("int32") | None => (f64::from(i32::MIN), f64::from(i32::MAX)),
                    other => panic!("unexpected format {other:?} at {path}"),
                };
                assert!(lo <= min && min <= max && max <= hi, "{path}: {min}..{max}");
            });
        }
        assert!(seen >= 30, "{seen} integers");
    }

    #[test]
    fn flagger_semantics_bounds() {
        let mut c = schema("Canary");
        let bounds = |c: &mut Value, path: &str| {
            let n = node_mut(c, path).unwrap();
            (
                n["minimum"].as_f64().unwrap(),
                n["maximum"].as_f64().unwrap(),
            )
        };
        let int32 = (f64::from(i32::MIN), f64::from(i32::MAX));
        let positive32 = (0.0, f64::from(i32::MAX));
        for (path, want) in [
            ("spec.progressDeadlineSeconds", int32),
            ("spec.analysis.threshold", int32),
            ("spec.analysis.iterations", int32),
            ("spec.analysis.stepWeight", positive32),
            ("spec.analysis.stepWeights[]", positive32),
            ("spec.analysis.stepWeightPromotion", positive32),
            ("spec.analysis.maxWeight", (0.0, 100.0)),
            ("spec.analysis.mirrorWeight", (0.0, 100.0)),
            ("spec.service.port", (1.0, 65535.0)),
            ("spec.service.targetPort", (1.0, 65535.0)),
            (
                "spec.autoscalerRef.primaryScalerReplicas.minReplicas",
                (1.0, f64::from(i32::MAX)),
            ),
            ("status.canaryWeight", (0.0, 100.0)),
            ("status.failedChecks", positive32),
        ] {
            assert_eq!(bounds(&mut c, path), want, "{path}");
        }
    }

    #[test]
    fn crd_metadata_matches_flagger() {
        for crd in all() {
            assert_eq!(crd.spec.group, "flagger.app");
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.names.categories, Some(vec!["all".to_string()]));
            assert_eq!(crd.spec.names.short_names, None);
            assert_eq!(
                crd.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("helm.sh/resource-policy"))
                    .map(String::as_str),
                Some("keep")
            );
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, "v1beta1");
            assert!(v.served && v.storage);
            assert!(v.subresources.as_ref().unwrap().status.is_some());
        }
        let names: Vec<_> = all()
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "canaries.flagger.app",
                "metrictemplates.flagger.app",
                "alertproviders.flagger.app"
            ]
        );
    }

    #[test]
    fn canary_printer_columns() {
        let crd = &all()[0];
        let cols = crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap();
        let got: Vec<(String, String, i32)> = cols
            .iter()
            .map(|c| (c.name.clone(), c.json_path.clone(), c.priority.unwrap_or(0)))
            .collect();
        let want = [
            ("Status", ".status.phase", 0),
            ("Weight", ".status.canaryWeight", 0),
            ("Suspended", ".spec.suspend", 1),
            ("FailedChecks", ".status.failedChecks", 1),
            ("Interval", ".spec.analysis.interval", 1),
            ("Mirror", ".spec.analysis.mirror", 1),
            ("StepWeight", ".spec.analysis.stepWeight", 1),
            ("StepWeights", ".spec.analysis.stepWeights", 1),
            ("MaxWeight", ".spec.analysis.maxWeight", 1),
            ("LastTransitionTime", ".status.lastTransitionTime", 0),
        ];
        let want: Vec<(String, String, i32)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
            .collect();
        assert_eq!(got, want);
        let provider_col = &all()[1].spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap()[0];
        assert_eq!(
            (provider_col.name.as_str(), provider_col.json_path.as_str()),
            ("Provider", ".spec.provider.type")
        );
        let type_col = &all()[2].spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap()[0];
        assert_eq!(
            (type_col.name.as_str(), type_col.json_path.as_str()),
            ("Type", ".spec.type")
        );
    }

    #[test]
    fn flagger_rules_present() {
        let mut c = schema("Canary");
        let analysis = node_mut(&mut c, "spec.analysis").unwrap().clone();
        assert_eq!(
            analysis["oneOf"],
            json!([
                {"required": ["interval", "threshold", "iterations"]},
                {"required": ["interval", "threshold", "stepWeight"]},
                {"required": ["interval", "threshold", "stepWeights"]}
            ])
        );
        assert_eq!(
            node_mut(&mut c, "spec.analysis.interval").unwrap()["pattern"],
            json!("^[0-9]+(m|s)")
        );
        assert_eq!(
            node_mut(&mut c, "spec.analysis.webhooks[].timeout").unwrap()["pattern"],
            json!("^[0-9]+(m|s)")
        );
        let phase = node_mut(&mut c, "status.phase").unwrap().clone();
        assert_eq!(
            phase.get("enum"),
            None,
            "phase is not an enum in the schema"
        );
        assert_eq!(phase["type"], json!("string"));
        let sev = node_mut(&mut c, "spec.analysis.alerts[].severity")
            .unwrap()
            .clone();
        assert_eq!(sev["enum"], json!(["", "info", "warn", "error"]));
        let same_site = node_mut(&mut c, "spec.analysis.sessionAffinity.sameSite")
            .unwrap()
            .clone();
        assert_eq!(same_site["enum"], json!(["Strict", "Lax", "None"]));
        let mut required = c["properties"]["spec"]["required"].clone();
        required
            .as_array_mut()
            .unwrap()
            .sort_by_key(|v| v.to_string());
        // As Flagger's CRD: `service` is not required (issue 13).
        assert_eq!(required, json!(["analysis", "targetRef"]));
        assert_eq!(
            node_mut(&mut c, "spec.service").unwrap()["required"],
            json!(["port"])
        );
        let uri = node_mut(&mut c, "spec.service.match[].uri")
            .unwrap()
            .clone();
        assert_eq!(uri["oneOf"], string_match_at_most_one());

        let mut m = schema("MetricTemplate");
        let mut req = m["properties"]["spec"]["required"].clone();
        req.as_array_mut().unwrap().sort_by_key(|v| v.to_string());
        assert_eq!(req, json!(["provider", "query"]));
        assert_eq!(
            node_mut(&mut m, "spec.provider").unwrap()["required"],
            json!(["type"])
        );

        let a = schema("AlertProvider");
        assert_eq!(
            a["properties"]["spec"]["oneOf"],
            json!([{"required": ["type", "address"]}, {"required": ["type", "secretRef"]}])
        );
    }

    #[test]
    fn checked_in_file_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(CRDS_FILE);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == all_yaml(),
            "{} is out of date with the API types; regenerate it with `cargo run -- crds > {}`",
            path.display(),
            CRDS_FILE
        );
    }
}
