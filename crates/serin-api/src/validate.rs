//! The checks a CRD schema cannot express. Pure: the same function backs `serin validate`, the
//! controller's status conditions and Warning events, so a user sees the same words everywhere.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::canary::{Canary, CanaryAnalysis, CanaryService, Strategy};
use super::duration::parse_go_duration;
use super::istio::StringMatch;
use super::{AlertProvider, MetricProviderType, MetricTemplate};

/// How much a problem weighs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Neither Flagger nor serin can run the manifest as written (Flagger's CRD refuses it, or
    /// what it asks for cannot work): the API server refuses it or the controller holds the
    /// Canary.
    #[default]
    Error,
    /// Flagger runs the manifest (ignoring a field, or doing something the author likely did
    /// not mean), and so does serin: the controller runs it and says what it does instead on a
    /// condition and a Warning Event. Holding it would freeze rollouts that ran under Flagger.
    Warning,
}

impl Severity {
    pub fn is_error(&self) -> bool {
        *self == Severity::Error
    }
}

/// One thing wrong with a manifest: the field, what is wrong, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// JSON path without the leading dot: `spec.analysis.stepWeight`, `spec.analysis.metrics[1].interval`.
    pub path: String,
    pub message: String,
    pub hint: String,
    #[serde(default, skip_serializing_if = "Severity::is_error")]
    pub severity: Severity,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
            hint: hint.into(),
            severity: Severity::Error,
        }
    }

    /// A problem Flagger runs anyway ([`Severity::Warning`]).
    fn warning(
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::new(path, message, hint)
        }
    }

    pub fn is_warning(&self) -> bool {
        self.severity == Severity::Warning
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if !self.hint.is_empty() {
            write!(f, " ({})", self.hint)?;
        }
        Ok(())
    }
}

/// Validates any of the three kinds given as JSON. Objects of other kinds give no problems; an
/// object that does not deserialise gives one problem (the schema check names the field).
pub fn validate(value: &Value) -> Vec<Problem> {
    fn typed<T: serde::de::DeserializeOwned>(
        value: &Value,
        f: fn(&T) -> Vec<Problem>,
    ) -> Vec<Problem> {
        match serde_json::from_value::<T>(as_stored(value)) {
            Ok(obj) => f(&obj),
            Err(e) => vec![Problem::new(
                "",
                format!("cannot be read as a flagger.app/v1beta1 object: {e}"),
                "fix the fields the schema check reports",
            )],
        }
    }
    match value.get("kind").and_then(Value::as_str) {
        Some("Canary") => typed::<Canary>(value, validate_canary),
        Some("MetricTemplate") => typed::<MetricTemplate>(value, validate_metric_template),
        Some("AlertProvider") => typed::<AlertProvider>(value, validate_alert_provider),
        _ => Vec::new(),
    }
}

/// `value` with its numbers as the API server stores and returns them: it decodes `3.0` or `1e1`
/// as a float64 and Go prints a float64 without a fraction as `3` or `10`, so an integer field
/// written that way passes the schema and reaches the controller as an integer. Without this,
/// `serin validate` called such a manifest unreadable while `kubectl apply` took it and the
/// controller ran it (found by the `api_json` fuzz target).
fn as_stored(value: &Value) -> Value {
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            // Go switches to exponent form from 1e21; below it, a whole float prints as an
            // integer literal, which serde_json reads as i64 or u64 when it fits.
            Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => {
                if f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    Value::from(f as i64)
                } else if f >= 0.0 && f < u64::MAX as f64 {
                    Value::from(f as u64)
                } else {
                    value.clone()
                }
            }
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(as_stored).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), as_stored(v))).collect())
        }
        _ => value.clone(),
    }
}

fn duration_problem(out: &mut Vec<Problem>, path: &str, value: &str, example: &str) {
    if let Err(e) = parse_go_duration(value) {
        out.push(Problem::new(
            path,
            e.to_string(),
            format!("write a Go duration such as {example} (units ns, us, ms, s, m, h)"),
        ));
    }
}

fn http_url_problem(out: &mut Vec<Problem>, path: &str, value: &str, what: &str) {
    match url::Url::parse(value) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.is_empty()) => {}
        Ok(u) => out.push(Problem::new(
            path,
            format!("{value:?} is not an http(s) URL (scheme {:?})", u.scheme()),
            format!("write {what} as http://host[:port]/path or https://..."),
        )),
        Err(e) => out.push(Problem::new(
            path,
            format!("{value:?} is not a URL: {e}"),
            format!("write {what} as http://host[:port]/path or https://..."),
        )),
    }
}

fn percent_problem(out: &mut Vec<Problem>, path: &str, v: Option<i32>, lo: i32, what: &str) {
    if let Some(v) = v
        && !(lo..=100).contains(&v)
    {
        out.push(Problem::new(
            path,
            format!("{v} is out of range {lo}..=100"),
            format!("{what} is a percentage: use a value from {lo} to 100"),
        ));
    }
}

/// The CRD's numeric bounds applied to a typed spec, for objects that never met them: stored
/// before the CRD carried them, or checked offline. A field already reported keeps its more
/// specific problem.
fn spec_bounds<T: Serialize>(kind: &str, spec: &T, out: &mut Vec<Problem>) {
    let (Ok(value), Some(schema)) = (serde_json::to_value(spec), super::schema::schema_of(kind))
    else {
        return;
    };
    let Some(spec_schema) = schema.properties.as_ref().and_then(|p| p.get("spec")) else {
        return;
    };
    for p in super::schema::bound_problems(&value, spec_schema, "spec") {
        if !out.iter().any(|o| o.path == p.path) {
            out.push(p);
        }
    }
}

/// What Kubernetes accepts as a Service name (a DNS-1035 label), at most 63 characters.
const DNS1035_LABEL_MAX: usize = 63;
/// Object names (DNS-1123 subdomains), for the primary Deployment and HPA.
const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// The longest suffix serin appends to a generated name.
const PRIMARY_SUFFIX: &str = "-primary";

fn is_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// The names serin generates from the Canary: Services `<apex>`, `<apex>-primary` and
/// `<apex>-canary` (DNS-1035 labels, also used as label values: 63 characters at most), the
/// primary Deployment `<target>-primary` and HPA `<hpa>-primary` (253). The API server refuses
/// a name beyond these, on every retry, so the Canary can never initialize (issue 11): reported
/// here, before anything is written. The primary's selector label (`<app label>-primary`) comes
/// from the Deployment's labels, which only the controller sees.
fn validate_generated_names(c: &Canary, out: &mut Vec<Problem>) {
    let spec = &c.spec;
    let target = spec.target_ref.name.as_str();
    let (field, apex) = match spec.service.name.as_deref() {
        Some(n) if !n.is_empty() => ("spec.service.name", n),
        _ => ("spec.targetRef.name", target),
    };
    if !apex.is_empty() {
        let longest = format!("{apex}{PRIMARY_SUFFIX}");
        let room = DNS1035_LABEL_MAX - PRIMARY_SUFFIX.len();
        if longest.len() > DNS1035_LABEL_MAX {
            let also = if field == "spec.targetRef.name" {
                ", or set spec.service.name to a shorter name for the Services"
            } else {
                ""
            };
            out.push(Problem::new(
                field,
                format!(
                    "the generated Service name {longest:?} is {} characters; Kubernetes allows at most {DNS1035_LABEL_MAX} for Service names and label values",
                    longest.len()
                ),
                format!("shorten {field} to at most {room} characters{also}"),
            ));
        } else if !is_dns1035_label(apex) {
            out.push(Problem::new(
                field,
                format!(
                    "{apex:?} cannot name a Service: Service names are DNS-1035 labels                      (lowercase letters, digits and '-', starting with a letter)"
                ),
                format!(
                    "rename it{}",
                    if field == "spec.targetRef.name" {
                        ", or set spec.service.name to such a name"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    for (field, name) in [
        ("spec.targetRef.name", target),
        (
            "spec.autoscalerRef.name",
            spec.autoscaler_ref.as_ref().map_or("", |a| a.name.as_str()),
        ),
    ] {
        let generated = name.len() + PRIMARY_SUFFIX.len();
        if !name.is_empty() && generated > DNS1123_SUBDOMAIN_MAX {
            out.push(Problem::new(
                field,
                format!(
                    "the generated name \"{name}{PRIMARY_SUFFIX}\" is {generated} characters; Kubernetes allows at most {DNS1123_SUBDOMAIN_MAX} for object names"
                ),
                format!(
                    "shorten {field} to at most {} characters",
                    DNS1123_SUBDOMAIN_MAX - PRIMARY_SUFFIX.len()
                ),
            ));
        }
    }
}

/// Every problem `validate()` finds in a Canary.
///
/// `interval: 0s` and `threshold: 0` (issue 11) are not problems: Flagger accepts both and runs
/// them as 10s and 1 (`GetAnalysisInterval` raises any interval below 10s to 10s,
/// `GetAnalysisThreshold` reads ≤ 0 as 1), and so does serin ([`CanaryAnalysis::interval`],
/// [`CanaryAnalysis::threshold`]). Refusing them would break manifests that work with Flagger.
pub fn validate_canary(c: &Canary) -> Vec<Problem> {
    let mut out = Vec::new();
    let spec = &c.spec;
    validate_generated_names(c, &mut out);

    if spec.target_ref.kind != "Deployment" {
        out.push(Problem::new(
            "spec.targetRef.kind",
            format!(
                "serin supports targetRef kind Deployment only, not {:?}",
                spec.target_ref.kind
            ),
            "point targetRef at a Deployment (DaemonSet and Service targets are not supported yet)",
        ));
    }
    if spec.target_ref.name.is_empty() {
        out.push(Problem::new(
            "spec.targetRef.name",
            "empty target name",
            "set the name of the Deployment to manage",
        ));
    }
    if let Some(p) = spec.provider.as_deref()
        && !p.is_empty()
        && p != "istio"
    {
        out.push(Problem::new(
            "spec.provider",
            format!("provider {p:?} is not supported"),
            "serin routes traffic with Istio only: remove provider or set it to istio",
        ));
    }
    if let Some(d) = spec.progress_deadline_seconds
        && d <= 0
    {
        out.push(Problem::new(
            "spec.progressDeadlineSeconds",
            format!("{d} is not a positive number of seconds"),
            "remove it (default 600) or set a positive number",
        ));
    }
    if let Some(url) = spec.metrics_server.as_deref() {
        http_url_problem(
            &mut out,
            "spec.metricsServer",
            url,
            "the Prometheus address",
        );
    }
    if let Some(a) = &spec.autoscaler_ref
        && let Some(r) = &a.primary_scaler_replicas
        && let (Some(min), Some(max)) = (r.min_replicas, r.max_replicas)
        && min > max
    {
        out.push(Problem::new(
            "spec.autoscalerRef.primaryScalerReplicas",
            format!("minReplicas {min} is greater than maxReplicas {max}"),
            "make minReplicas <= maxReplicas",
        ));
    }

    validate_service(&spec.service, &mut out);

    match (&spec.analysis, &spec.canary_analysis) {
        (Some(a), _) => validate_analysis(a, "spec.analysis", &mut out),
        (None, Some(a)) => {
            out.push(Problem::new(
                "spec.canaryAnalysis",
                "canaryAnalysis is deprecated and not part of the v1beta1 schema",
                "rename canaryAnalysis to analysis",
            ));
            validate_analysis(a, "spec.canaryAnalysis", &mut out);
        }
        (None, None) => out.push(Problem::new(
            "spec.analysis",
            "Required value",
            "add an analysis with interval, threshold and stepWeight (or iterations)",
        )),
    }
    spec_bounds("Canary", spec, &mut out);
    out
}

fn validate_string_match(m: &StringMatch, path: &str, allow_suffix: bool, out: &mut Vec<Problem>) {
    let set = [
        m.exact.is_some(),
        m.prefix.is_some(),
        m.suffix.is_some(),
        m.regex.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set > 1 {
        out.push(Problem::new(
            path,
            "more than one of exact, prefix, suffix, regex is set",
            "keep exactly one matcher",
        ));
    }
    if !allow_suffix && m.suffix.is_some() {
        out.push(Problem::new(
            format!("{path}.suffix"),
            "suffix is not an Istio route match (only A/B header matches support it)",
            "use regex: \".*<suffix>$\" instead",
        ));
    }
    if let Some(r) = &m.regex
        && let Err(e) = regex::Regex::new(r)
    {
        out.push(Problem::new(
            format!("{path}.regex"),
            format!(
                "invalid regular expression: {}",
                e.to_string().lines().last().unwrap_or("")
            ),
            "write an RE2 regular expression",
        ));
    }
}

fn validate_service(s: &CanaryService, out: &mut Vec<Problem>) {
    if s.port == 0 {
        // Also a missing `service`, which the schema takes as Flagger's CRD does.
        out.push(Problem::new(
            "spec.service.port",
            "Required value: the Services need a port",
            "add service: {port: <the port the Services expose>}",
        ));
    } else if !(1..=65535).contains(&s.port) {
        out.push(Problem::new(
            "spec.service.port",
            format!("port {} is out of range 1..=65535", s.port),
            "set the container port the Services expose",
        ));
    }
    if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) = &s.target_port
        && !(1..=65535).contains(p)
    {
        out.push(Problem::new(
            "spec.service.targetPort",
            format!("port {p} is out of range 1..=65535"),
            "use a container port number or name",
        ));
    }
    if let Some(t) = s.timeout.as_deref() {
        duration_problem(out, "spec.service.timeout", t, "30s");
    }
    if let Some(t) = s
        .retries
        .as_ref()
        .and_then(|r| r.per_try_timeout.as_deref())
    {
        duration_problem(out, "spec.service.retries.perTryTimeout", t, "3s");
    }
    if let Some(a) = s.retries.as_ref().and_then(|r| r.attempts)
        && a < 0
    {
        out.push(Problem::new(
            "spec.service.retries.attempts",
            format!("{a} is negative"),
            "use 0 or more attempts",
        ));
    }
    if s.delegation() {
        if !s.hosts.is_empty() {
            out.push(Problem::new(
                "spec.service.hosts",
                "hosts must be empty when delegation is true",
                "remove hosts: a delegate VirtualService takes its hosts from the root one",
            ));
        }
        if !s.gateways.is_empty() {
            out.push(Problem::new(
                "spec.service.gateways",
                "gateways must be empty when delegation is true",
                "remove gateways: a delegate VirtualService is bound through the root one",
            ));
        }
    }
    for (i, m) in s.match_.iter().enumerate() {
        let base = format!("spec.service.match[{i}]");
        for (name, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                validate_string_match(sm, &format!("{base}.{name}"), false, out);
            }
        }
        for (map_name, map) in [
            ("headers", &m.headers),
            ("queryParams", &m.query_params),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (k, sm) in map {
                validate_string_match(sm, &format!("{base}.{map_name}.{k}"), false, out);
            }
        }
    }
    if let Some(cors) = &s.cors_policy
        && let Some(age) = cors.max_age.as_deref()
    {
        duration_problem(out, "spec.service.corsPolicy.maxAge", age, "24h");
    }
    if let Some(tp) = &s.traffic_policy {
        if let Some(tls) = &tp.tls
            && tls.mode == Some(super::istio::TLSMode::Mutual)
            && (tls.client_certificate.is_none() || tls.private_key.is_none())
        {
            out.push(Problem::new(
                "spec.service.trafficPolicy.tls",
                "mode MUTUAL needs clientCertificate and privateKey",
                "add both file paths, or use ISTIO_MUTUAL for mesh certificates",
            ));
        }
        if let Some(lb) = &tp.load_balancer
            && lb.simple.is_some()
            && lb.consistent_hash.is_some()
        {
            out.push(Problem::new(
                "spec.service.trafficPolicy.loadBalancer",
                "both simple and consistentHash are set",
                "keep one of simple or consistentHash",
            ));
        }
    }
}

fn validate_analysis(a: &CanaryAnalysis, base: &str, out: &mut Vec<Problem>) {
    let p = |field: &str| format!("{base}.{field}");
    let strategy = a.strategy();

    match a.interval.as_deref() {
        // Flagger's GetAnalysisInterval runs an interval it cannot parse as 1m, and so does
        // CanaryAnalysis::interval: a warning, not a hold.
        Some(i) => {
            if let Err(e) = parse_go_duration(i) {
                out.push(Problem::warning(
                    p("interval"),
                    format!("{e}: the analysis runs every 1m (Flagger's fallback)"),
                    "write a Go duration such as 1m (units ns, us, ms, s, m, h)",
                ));
            }
        }
        None => out.push(Problem::new(
            p("interval"),
            "Required value",
            "add interval, e.g. 1m (the time between analysis steps)",
        )),
    }
    if let Some(t) = a.threshold
        && t < 0
    {
        // Flagger's GetAnalysisThreshold reads any value ≤ 0 as 1, and so does
        // CanaryAnalysis::threshold.
        out.push(Problem::warning(
            p("threshold"),
            format!("{t} is negative: one failed check rolls back (Flagger's reading of <= 0)"),
            "set the number of failed checks that triggers a rollback (1 or more)",
        ));
    }
    if let Some(n) = a.iterations
        && n < 0
    {
        out.push(Problem::new(
            p("iterations"),
            format!("{n} is negative"),
            "set a positive number of iterations",
        ));
    }
    if let Some(m) = a.max_weight
        && !(1..=100).contains(&m)
    {
        out.push(Problem::new(
            p("maxWeight"),
            format!("{m} is out of range 1..=100"),
            "maxWeight is the highest canary traffic percentage: use 1 to 100",
        ));
    }
    if let Some(sw) = a.step_weight {
        if sw <= 0 || sw > 100 {
            out.push(Problem::new(
                p("stepWeight"),
                format!("{sw} is out of range 1..=100"),
                "stepWeight is the traffic percentage added per step: use 1 to 100",
            ));
        } else if sw > a.max_weight.unwrap_or(100) && a.max_weight.is_some_and(|m| m > 0) {
            out.push(Problem::warning(
                p("stepWeight"),
                format!(
                    "stepWeight {sw} is greater than maxWeight {}: serin's first step stops at maxWeight (Flagger sends stepWeight)",
                    a.max_weight.unwrap_or(100)
                ),
                "make stepWeight <= maxWeight, or raise maxWeight",
            ));
        }
    }
    if let Some(steps) = &a.step_weights {
        if steps.is_empty() && a.step_weight.is_none() && a.iterations.is_none() {
            out.push(Problem::new(
                p("stepWeights"),
                "empty list",
                "list the canary weights in increasing order, e.g. [5, 10, 25, 50]",
            ));
        }
        for (i, w) in steps.iter().enumerate() {
            if *w <= 0 || *w > 100 {
                out.push(Problem::new(
                    format!("{base}.stepWeights[{i}]"),
                    format!("{w} is out of range 1..=100"),
                    "each step is a canary traffic percentage from 1 to 100",
                ));
            }
        }
        if let Some(i) = steps.windows(2).position(|w| w[1] <= w[0]) {
            out.push(Problem::new(
                format!("{base}.stepWeights[{}]", i + 1),
                format!(
                    "stepWeights must be strictly increasing: {} follows {}",
                    steps[i + 1],
                    steps[i]
                ),
                "list the weights in increasing order without repeats",
            ));
        }
        if a.step_weight.is_some() {
            out.push(Problem::new(
                p("stepWeights"),
                "both stepWeight and stepWeights are set",
                "keep one: stepWeight for equal steps, stepWeights for a list",
            ));
        }
        if a.max_weight.is_some() && !steps.is_empty() {
            out.push(Problem::warning(
                p("maxWeight"),
                "maxWeight is ignored when stepWeights is set (the last step is the maximum)",
                "remove maxWeight",
            ));
        }
    }
    if a.iterations.is_some_and(|n| n > 0) && (a.step_weight.is_some() || a.step_weights.is_some())
    {
        let field = if a.step_weight.is_some() {
            "stepWeight"
        } else {
            "stepWeights"
        };
        out.push(Problem::new(
            p(field),
            format!(
                "{field} is set together with iterations ({} strategy)",
                match strategy {
                    Strategy::ABTesting => "A/B testing",
                    _ => "Blue/Green",
                }
            ),
            "remove iterations for a progressive canary, or remove the weights for A/B or Blue/Green",
        ));
    }
    if a.step_weight.is_none() && a.step_weights.is_none() && a.iterations.is_none_or(|n| n == 0) {
        out.push(Problem::new(
            base,
            "no traffic strategy: none of stepWeight, stepWeights, iterations is set",
            "add stepWeight (progressive canary) or iterations (Blue/Green, A/B with match)",
        ));
    }
    if !a.match_.is_empty() && a.iterations.is_none_or(|n| n <= 0) {
        out.push(Problem::warning(
            p("match"),
            "match is set but iterations is not: this runs a progressive canary whose weights apply to the matched requests only (the others stay on the primary), as in Flagger, not A/B testing",
            "add iterations for A/B testing, or remove match",
        ));
    }
    for (i, m) in a.match_.iter().enumerate() {
        for (k, sm) in &m.headers {
            validate_string_match(sm, &format!("{base}.match[{i}].headers.{k}"), true, out);
        }
        for (k, sm) in &m.query_params {
            validate_string_match(
                sm,
                &format!("{base}.match[{i}].queryParams.{k}"),
                false,
                out,
            );
        }
    }
    percent_problem(out, &p("mirrorWeight"), a.mirror_weight, 0, "mirrorWeight");
    if a.mirror() && strategy == Strategy::ABTesting {
        out.push(Problem::warning(
            p("mirror"),
            "traffic mirroring is not available with A/B testing: mirror is ignored",
            "use mirror with Blue/Green (iterations without match) or with a progressive canary",
        ));
    }
    if a.mirror_weight.is_some() && !a.mirror() {
        out.push(Problem::warning(
            p("mirrorWeight"),
            "mirrorWeight has no effect without mirror: true",
            "set mirror: true or remove mirrorWeight",
        ));
    }
    if let Some(s) = a.step_weight_promotion
        && !(0..=100).contains(&s)
    {
        out.push(Problem::new(
            p("stepWeightPromotion"),
            format!("{s} is out of range 0..=100"),
            "use 0 (all at once) to 100",
        ));
    }
    percent_problem(
        out,
        &p("primaryReadyThreshold"),
        a.primary_ready_threshold,
        0,
        "primaryReadyThreshold",
    );
    percent_problem(
        out,
        &p("canaryReadyThreshold"),
        a.canary_ready_threshold,
        0,
        "canaryReadyThreshold",
    );

    if let Some(sa) = &a.session_affinity {
        if sa.cookie_name.is_empty() {
            out.push(Problem::new(
                p("sessionAffinity.cookieName"),
                "empty cookie name",
                "set the cookie that pins users to the canary",
            ));
        }
        if sa.primary_cookie_name.as_deref() == Some(sa.cookie_name.as_str()) {
            out.push(Problem::new(
                p("sessionAffinity.primaryCookieName"),
                "primaryCookieName equals cookieName",
                "use two different cookie names",
            ));
        }
        if let Some(age) = sa.max_age
            && age <= 0
        {
            out.push(Problem::new(
                p("sessionAffinity.maxAge"),
                format!("{age} is not a positive number of seconds"),
                "remove it (default 86400) or set a positive lifetime",
            ));
        }
        if strategy != Strategy::Canary {
            out.push(Problem::warning(
                p("sessionAffinity"),
                "session affinity only applies to the progressive canary strategy: serin ignores it here",
                "remove sessionAffinity, or use stepWeight/stepWeights instead of iterations",
            ));
        } else if !a.match_.is_empty() {
            // Flagger's SetRoutes writes the A/B routes over the sticky ones.
            out.push(Problem::warning(
                p("sessionAffinity"),
                "session affinity has no effect with analysis.match: the matched routes replace the sticky ones",
                "remove sessionAffinity or analysis.match",
            ));
        }
    }

    let mut names = BTreeSet::new();
    for (i, m) in a.metrics.iter().enumerate() {
        let mp = format!("{base}.metrics[{i}]");
        if m.name.is_empty() {
            out.push(Problem::new(
                format!("{mp}.name"),
                "empty metric name",
                "name the metric",
            ));
        } else if !names.insert(m.name.as_str()) {
            out.push(Problem::warning(
                format!("{mp}.name"),
                format!("duplicate metric name {:?}: each entry still runs, but Events, the status and alerts cannot tell them apart", m.name),
                "give every metric a unique name",
            ));
        }
        match (&m.template_ref, &m.query) {
            (Some(_), Some(_)) => out.push(Problem::warning(
                mp.clone(),
                "both templateRef and query are set: serin checks the template only (Flagger runs both queries)",
                "keep templateRef (query is the deprecated inline form), or split them into two metrics",
            )),
            (None, None) if !m.is_builtin() => out.push(Problem::new(
                mp.clone(),
                format!(
                    "metric {:?} is not built in (request-success-rate, request-duration) and has neither templateRef nor query",
                    m.name
                ),
                "add a templateRef to a MetricTemplate, or use a built-in metric name",
            )),
            _ => {}
        }
        if let Some(t) = &m.template_ref
            && t.name.is_empty()
        {
            out.push(Problem::new(
                format!("{mp}.templateRef.name"),
                "empty template name",
                "name the MetricTemplate",
            ));
        }
        if let Some(i) = m.interval.as_deref() {
            duration_problem(out, &format!("{mp}.interval"), i, "1m");
        }
        if let Some(r) = &m.threshold_range
            && let (Some(min), Some(max)) = (r.min, r.max)
            && min > max
        {
            out.push(Problem::new(
                format!("{mp}.thresholdRange"),
                format!("min {min} is greater than max {max}"),
                "swap them, or widen the range",
            ));
        }
        if m.threshold.is_some() && m.threshold_range.is_some() {
            out.push(Problem::warning(
                format!("{mp}.threshold"),
                "both threshold (deprecated) and thresholdRange are set: threshold is ignored",
                "remove threshold and keep thresholdRange",
            ));
        }
        if let Some(c) = &m.compare {
            validate_compare(m, c, &format!("{mp}.compare"), out);
        }
    }

    let mut names = BTreeSet::new();
    for (i, w) in a.webhooks.iter().enumerate() {
        let wp = format!("{base}.webhooks[{i}]");
        if w.name.is_empty() {
            out.push(Problem::new(
                format!("{wp}.name"),
                "empty webhook name",
                "name the webhook",
            ));
        } else if !names.insert(w.name.as_str()) {
            out.push(Problem::warning(
                format!("{wp}.name"),
                format!("duplicate webhook name {:?}: each entry still runs, but Events, the status and alerts cannot tell them apart", w.name),
                "give every webhook a unique name",
            ));
        }
        http_url_problem(out, &format!("{wp}.url"), &w.url, "the webhook url");
        if let Some(t) = w.timeout.as_deref() {
            duration_problem(out, &format!("{wp}.timeout"), t, "30s");
        }
        if let Some(r) = w.retries
            && r < 0
        {
            out.push(Problem::new(
                format!("{wp}.retries"),
                format!("{r} is negative"),
                "use 0 or more retries",
            ));
        }
        if w.hook_type() == super::HookType::ConfirmTrafficIncrease && strategy != Strategy::Canary
        {
            out.push(Problem::warning(
                format!("{wp}.type"),
                "confirm-traffic-increase hooks only run with the progressive canary strategy: this one is never called",
                "use confirm-promotion for A/B testing and Blue/Green",
            ));
        }
    }

    let mut names = BTreeSet::new();
    for (i, al) in a.alerts.iter().enumerate() {
        let ap = format!("{base}.alerts[{i}]");
        if al.name.is_empty() {
            out.push(Problem::new(
                format!("{ap}.name"),
                "empty alert name",
                "name the alert",
            ));
        } else if !names.insert(al.name.as_str()) {
            out.push(Problem::warning(
                format!("{ap}.name"),
                format!("duplicate alert name {:?}: each entry still runs, but Events, the status and alerts cannot tell them apart", al.name),
                "give every alert a unique name",
            ));
        }
        if al.provider_ref.name.is_empty() {
            out.push(Problem::new(
                format!("{ap}.providerRef.name"),
                "empty provider name",
                "name the AlertProvider",
            ));
        }
        if al.severity == Some(super::AlertSeverity::Unset) {
            out.push(Problem::warning(
                format!("{ap}.severity"),
                "empty severity: Flagger sends nothing to this alert, serin sends everything (info)",
                "write severity: info, warn or error",
            ));
        }
    }
}

/// Most values a side of `compare` may hold: the Hodges-Lehmann shift looks at every pair.
pub const MAX_COMPARE_SAMPLES: u64 = 1000;

/// What the schema cannot say about `compare`: a window and step that give enough values, a
/// confidence the sample size can reach, and a query that tells the primary from the canary.
fn validate_compare(
    m: &super::CanaryMetric,
    c: &super::MetricComparison,
    base: &str,
    out: &mut Vec<Problem>,
) {
    let mut parsed = true;
    for (field, value) in [("window", &c.window), ("step", &c.step)] {
        if let Some(v) = value.as_deref() {
            match parse_go_duration(v) {
                Ok(d) if d.is_zero() => {
                    parsed = false;
                    out.push(Problem::new(
                        format!("{base}.{field}"),
                        format!("{field} {v:?} is zero"),
                        "use a positive duration such as 15s or 5m",
                    ));
                }
                Ok(_) => {}
                Err(_) => {
                    parsed = false;
                    duration_problem(out, &format!("{base}.{field}"), v, "15s or 5m");
                }
            }
        }
    }
    if parsed {
        let (window, step) = (c.window().as_millis(), c.step().as_millis().max(1));
        let values = (window / step) as u64 + 1;
        if step > window {
            out.push(Problem::new(
                format!("{base}.step"),
                format!(
                    "step {} is longer than window {}: each check would see one value per side",
                    show(c.step()),
                    show(c.window())
                ),
                "make step shorter than window (step is the range query's resolution)",
            ));
        } else if values > MAX_COMPARE_SAMPLES {
            out.push(Problem::new(
                format!("{base}.step"),
                format!(
                    "window {} at step {} gives {values} values per side, more than {MAX_COMPARE_SAMPLES}",
                    show(c.window()),
                    show(c.step())
                ),
                "use a longer step or a shorter window",
            ));
        } else if values < c.min_samples() as u64 {
            out.push(Problem::new(
                format!("{base}.minSamples"),
                format!(
                    "window {} at step {} holds at most {values} values per side, fewer than minSamples {}: the check would never have data",
                    show(c.window()),
                    show(c.step()),
                    c.min_samples()
                ),
                "lengthen window, shorten step, or lower minSamples",
            ));
        }
    }
    // With n values on each side the smallest p-value the test can give is 1 / C(2n, n).
    let n = c.min_samples() as u64;
    let alpha = 1.0 - c.confidence() / 100.0;
    if smallest_p(n) >= alpha {
        out.push(Problem::new(
            format!("{base}.minSamples"),
            format!(
                "{n} values per side can never show {}% confidence, so the check could never fail",
                c.confidence()
            ),
            format!(
                "raise minSamples to at least {}, or lower confidence",
                (n..=64).find(|k| smallest_p(*k) < alpha).unwrap_or(64)
            ),
        ));
    }
    if let Some(q) = m.query.as_deref()
        && !q.contains("target")
    {
        out.push(Problem::new(
            base.to_string(),
            "the query does not use {{ target }}, so the primary's query would be the canary's",
            "select the workload with destination_workload=~\"{{ target }}\" (serin sets it to <target>-primary for the primary)",
        ));
    }
}

/// 1 / C(2n, n): the p-value of two fully separated samples of n values.
fn smallest_p(n: u64) -> f64 {
    let mut p = 1.0;
    for i in 1..=n {
        p *= i as f64 / (n + i) as f64;
    }
    p
}

fn show(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s}s")
    }
}

/// Variables Flagger's template model offers (`{{ namespace }}` etc.).
const TEMPLATE_VARIABLES: [&str; 8] = [
    "name",
    "namespace",
    "target",
    "service",
    "ingress",
    "route",
    "interval",
    "variables",
];

/// Every problem `validate()` finds in a MetricTemplate.
pub fn validate_metric_template(t: &MetricTemplate) -> Vec<Problem> {
    let mut out = Vec::new();
    let p = &t.spec.provider;
    if p.type_ != MetricProviderType::Prometheus {
        out.push(Problem::new(
            "spec.provider.type",
            format!(
                "provider type {:?} is not supported by serin yet",
                p.type_.as_str()
            ),
            "serin queries Prometheus only: use type prometheus",
        ));
    }
    if let Some(addr) = p.address.as_deref() {
        http_url_problem(
            &mut out,
            "spec.provider.address",
            addr,
            "the provider address",
        );
    }
    if let Some(s) = &p.secret_ref
        && s.name.is_empty()
    {
        out.push(Problem::new(
            "spec.provider.secretRef.name",
            "empty secret name",
            "name the Secret with the credentials",
        ));
    }
    if t.spec.query.trim().is_empty() {
        out.push(Problem::new(
            "spec.query",
            "empty query",
            "write the PromQL query, using {{ namespace }}, {{ target }} and {{ interval }}",
        ));
    }
    check_template(&t.spec.query, &mut out);
    spec_bounds("MetricTemplate", &t.spec, &mut out);
    out
}

/// The parts of Go template syntax a query can get wrong: unbalanced braces and unknown variables
/// (Flagger renders with `missingkey=error`, so those fail every check).
fn check_template(q: &str, out: &mut Vec<Problem>) {
    let mut rest = q;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push(Problem::new(
                "spec.query",
                "unclosed template action \"{{\"",
                "close it with }}",
            ));
            return;
        };
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        let first = action.split_whitespace().next().unwrap_or("");
        let root = first.split('.').next().unwrap_or("");
        if !first.is_empty() && !root.starts_with('"') && !TEMPLATE_VARIABLES.contains(&root) {
            out.push(Problem::new(
                "spec.query",
                format!("unknown template variable {first:?}"),
                format!("use one of {}", TEMPLATE_VARIABLES.join(", ")),
            ));
        }
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        out.push(Problem::new(
            "spec.query",
            "\"}}\" without an opening \"{{\"",
            "balance the template braces",
        ));
    }
}

/// Every problem `validate()` finds in an AlertProvider.
pub fn validate_alert_provider(a: &AlertProvider) -> Vec<Problem> {
    let mut out = Vec::new();
    let s = &a.spec;
    match (&s.address, &s.secret_ref) {
        (None, None) => out.push(Problem::new(
            "spec.address",
            "neither address nor secretRef is set",
            "set address (the webhook URL) or secretRef (a Secret with key address)",
        )),
        (Some(_), Some(_)) => out.push(Problem::new(
            "spec.secretRef",
            "both address and secretRef are set (the CRD allows one)",
            "keep secretRef (its address key wins) and remove address",
        )),
        _ => {}
    }
    if let Some(addr) = s.address.as_deref() {
        http_url_problem(&mut out, "spec.address", addr, "the webhook address");
    }
    if let Some(proxy) = s.proxy.as_deref() {
        http_url_problem(&mut out, "spec.proxy", proxy, "the proxy");
    }
    if let Some(r) = &s.secret_ref
        && r.name.is_empty()
    {
        out.push(Problem::new(
            "spec.secretRef.name",
            "empty secret name",
            "name the Secret that holds the address",
        ));
    }
    spec_bounds("AlertProvider", &a.spec, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::*;
    use proptest::prelude::*;

    fn canary(analysis: CanaryAnalysis) -> Canary {
        let mut c = Canary::new(
            "podinfo",
            CanarySpec {
                target_ref: TargetRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "podinfo".into(),
                },
                service: CanaryService {
                    port: 9898,
                    ..Default::default()
                },
                analysis: Some(analysis),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("test".into());
        c
    }

    fn base() -> CanaryAnalysis {
        CanaryAnalysis {
            interval: Some("1m".into()),
            threshold: Some(5),
            step_weight: Some(10),
            max_weight: Some(50),
            ..Default::default()
        }
    }

    fn paths(c: &Canary) -> Vec<String> {
        validate_canary(c).into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn valid_canary_has_no_problems() {
        assert_eq!(validate_canary(&canary(base())), vec![]);
    }

    #[test]
    fn table() {
        type Case = (&'static str, fn(&mut CanaryAnalysis), &'static str);
        let cases: Vec<Case> = vec![
            (
                "stepWeight > maxWeight",
                |a| a.step_weight = Some(60),
                "spec.analysis.stepWeight",
            ),
            (
                "maxWeight 0",
                |a| a.max_weight = Some(0),
                "spec.analysis.maxWeight",
            ),
            (
                "maxWeight 101",
                |a| a.max_weight = Some(101),
                "spec.analysis.maxWeight",
            ),
            (
                "negative threshold",
                |a| a.threshold = Some(-1),
                "spec.analysis.threshold",
            ),
            (
                "bad interval",
                |a| a.interval = Some("1mm".into()),
                "spec.analysis.interval",
            ),
            (
                "steps not increasing",
                |a| {
                    a.step_weight = None;
                    a.max_weight = None;
                    a.step_weights = Some(vec![10, 10, 20]);
                },
                "spec.analysis.stepWeights[1]",
            ),
            (
                "step > 100",
                |a| {
                    a.step_weight = None;
                    a.max_weight = None;
                    a.step_weights = Some(vec![10, 200]);
                },
                "spec.analysis.stepWeights[1]",
            ),
            (
                "iterations + stepWeight",
                |a| a.iterations = Some(5),
                "spec.analysis.stepWeight",
            ),
            (
                "mirrorWeight 101",
                |a| {
                    a.mirror = Some(true);
                    a.mirror_weight = Some(101);
                },
                "spec.analysis.mirrorWeight",
            ),
            (
                "match without iterations",
                |a| a.match_ = vec![Default::default()],
                "spec.analysis.match",
            ),
            (
                "readyThreshold",
                |a| a.primary_ready_threshold = Some(120),
                "spec.analysis.primaryReadyThreshold",
            ),
            (
                "cookie names equal",
                |a| {
                    a.session_affinity = Some(SessionAffinity {
                        cookie_name: "c".into(),
                        primary_cookie_name: Some("c".into()),
                        ..Default::default()
                    })
                },
                "spec.analysis.sessionAffinity.primaryCookieName",
            ),
            (
                "unknown metric",
                |a| {
                    a.metrics = vec![CanaryMetric {
                        name: "error-rate".into(),
                        ..Default::default()
                    }]
                },
                "spec.analysis.metrics[0]",
            ),
            (
                "threshold range inverted",
                |a| {
                    a.metrics = vec![CanaryMetric {
                        name: "request-success-rate".into(),
                        threshold_range: Some(CanaryThresholdRange {
                            min: Some(99.0),
                            max: Some(1.0),
                        }),
                        ..Default::default()
                    }]
                },
                "spec.analysis.metrics[0].thresholdRange",
            ),
            (
                "webhook url",
                |a| {
                    a.webhooks = vec![CanaryWebhook {
                        name: "x".into(),
                        url: "ftp://x/".into(),
                        ..Default::default()
                    }]
                },
                "spec.analysis.webhooks[0].url",
            ),
        ];
        for (name, mutate, want) in cases {
            let mut a = base();
            mutate(&mut a);
            let got = paths(&canary(a));
            assert!(
                got.iter().any(|p| p == want),
                "{name}: want {want}, got {got:?}"
            );
        }
    }

    #[test]
    fn compare_checks() {
        let with = |compare: MetricComparison, query: Option<&str>| {
            let mut a = base();
            a.metrics = vec![CanaryMetric {
                name: if query.is_some() {
                    "errors"
                } else {
                    "request-duration"
                }
                .into(),
                query: query.map(str::to_string),
                compare: Some(compare),
                ..Default::default()
            }];
            validate_canary(&canary(a))
        };
        assert_eq!(with(MetricComparison::default(), None), vec![]);
        let fine = MetricComparison {
            window: Some("2m".into()),
            step: Some("5s".into()),
            min_samples: Some(20),
            confidence: Some(95.0),
            ..Default::default()
        };
        assert_eq!(with(fine.clone(), None), vec![]);
        type Case = (
            &'static str,
            MetricComparison,
            Option<&'static str>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "step longer than window",
                MetricComparison {
                    window: Some("30s".into()),
                    step: Some("1m".into()),
                    ..Default::default()
                },
                None,
                "spec.analysis.metrics[0].compare.step",
            ),
            (
                "too many values",
                MetricComparison {
                    window: Some("120m".into()),
                    step: Some("1s".into()),
                    ..Default::default()
                },
                None,
                "spec.analysis.metrics[0].compare.step",
            ),
            (
                "window too short for minSamples",
                MetricComparison {
                    window: Some("1m".into()),
                    step: Some("15s".into()),
                    ..Default::default()
                },
                None,
                "spec.analysis.metrics[0].compare.minSamples",
            ),
            (
                "confidence out of reach",
                MetricComparison {
                    min_samples: Some(3),
                    ..Default::default()
                },
                None,
                "spec.analysis.metrics[0].compare.minSamples",
            ),
            (
                "unparsable window",
                MetricComparison {
                    window: Some("5mm".into()),
                    ..Default::default()
                },
                None,
                "spec.analysis.metrics[0].compare.window",
            ),
            (
                "query without target",
                MetricComparison::default(),
                Some("sum(rate(errors_total[1m]))"),
                "spec.analysis.metrics[0].compare",
            ),
        ];
        for (name, c, q, want) in cases {
            let got = with(c, q);
            assert!(
                got.iter().any(|p| p.path == want && !p.hint.is_empty()),
                "{name}: want {want}, got {got:#?}"
            );
        }
        // 4 values per side reach 98 % (1/70), 3 do not (1/20).
        assert!(smallest_p(4) < 0.02 && smallest_p(3) >= 0.02);
        let got = with(
            MetricComparison {
                min_samples: Some(3),
                ..Default::default()
            },
            None,
        );
        assert!(got[0].hint.contains("at least 4"), "{got:?}");
        let ok = with(fine, Some("rate(x{pod=~\"{{ target }}-.*\"}[1m])"));
        assert_eq!(ok, vec![]);
    }

    #[test]
    fn spec_level_checks() {
        let mut c = canary(base());
        c.spec.target_ref.kind = "DaemonSet".into();
        c.spec.provider = Some("linkerd".into());
        c.spec.progress_deadline_seconds = Some(0);
        c.spec.service.delegation = Some(true);
        c.spec.service.hosts = vec!["a".into()];
        c.spec.service.gateways = vec!["g".into()];
        c.spec.service.timeout = Some("soon".into());
        let got = paths(&c);
        for want in [
            "spec.targetRef.kind",
            "spec.provider",
            "spec.progressDeadlineSeconds",
            "spec.service.hosts",
            "spec.service.gateways",
            "spec.service.timeout",
        ] {
            assert!(got.iter().any(|p| p == want), "want {want}, got {got:?}");
        }
        let all = validate_canary(&c);
        assert!(
            all.iter()
                .all(|p| !p.hint.is_empty() && !p.message.is_empty())
        );
    }

    #[test]
    fn template_checks() {
        let mut out = Vec::new();
        check_template(
            "sum(x{ns=\"{{ namespace }}\"}[{{ interval }}]) {{ variables.a }}",
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        check_template("{{ nmespace }}", &mut out);
        check_template("{{ target ", &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }

    proptest! {
        #[test]
        fn never_panics(
            interval in proptest::option::of("\\PC{0,6}"),
            threshold in proptest::option::of(any::<i32>()),
            iterations in proptest::option::of(any::<i32>()),
            max_weight in proptest::option::of(any::<i32>()),
            step_weight in proptest::option::of(any::<i32>()),
            steps in proptest::option::of(proptest::collection::vec(any::<i32>(), 0..6)),
            mirror_weight in proptest::option::of(any::<i32>()),
            promo in proptest::option::of(any::<i32>()),
        ) {
            let a = CanaryAnalysis {
                interval, threshold, iterations, max_weight, step_weight,
                step_weights: steps, mirror_weight, step_weight_promotion: promo,
                mirror: Some(true),
                ..Default::default()
            };
            let _ = validate_canary(&canary(a.clone()));
            let _ = (a.interval(), a.threshold(), a.max_weight(), a.strategy());
        }

        #[test]
        fn increasing_steps_are_fine(mut steps in proptest::collection::btree_set(1i32..=100, 1..8)) {
            let steps: Vec<i32> = std::mem::take(&mut steps).into_iter().collect();
            let a = CanaryAnalysis {
                interval: Some("30s".into()),
                threshold: Some(2),
                step_weights: Some(steps.clone()),
                ..Default::default()
            };
            prop_assert_eq!(validate_canary(&canary(a.clone())), vec![]);
            prop_assert_eq!(a.max_weight(), *steps.last().unwrap());
        }
    }

    /// `threshold: 3.0` passes the schema and the API server stores it as `3` (checked against
    /// kube-apiserver 1.20); `serin validate` called it unreadable. Regression input:
    /// fuzz/corpus/api_json/regress-whole-float-integer.
    #[test]
    fn whole_floats_in_integer_fields_read_as_the_api_server_returns_them() {
        let manifest = |threshold: &str| {
            serde_json::from_str::<Value>(&format!(
                r#"{{"apiVersion": "flagger.app/v1beta1", "kind": "Canary",
                    "metadata": {{"name": "podinfo", "namespace": "test"}},
                    "spec": {{"targetRef": {{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": "podinfo"}}, "service": {{"port": 9898.0}},
                    "analysis": {{"interval": "1m", "threshold": {threshold}, "maxWeight": 5e1,
                    "stepWeight": 10}}}}}}"#
            ))
            .unwrap()
        };
        assert_eq!(validate(&manifest("3.0")), vec![]);
        assert_eq!(validate(&manifest("1e1")), vec![]);
        // A fraction stays a float: refused, naming why.
        let p = validate(&manifest("2.5"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("floating point `2.5`"), "{p:?}");
        // Whole floats beyond u64 stay floats; the schema's bounds refuse them first.
        assert_eq!(as_stored(&serde_json::json!(1e20)), serde_json::json!(1e20));
        assert_eq!(
            as_stored(&serde_json::json!([-0.0, 7.0, 0.5])),
            serde_json::json!([0, 7, 0.5])
        );
    }

    fn named(target: &str, service: Option<&str>) -> Canary {
        let mut c = canary(base());
        c.spec.target_ref.name = target.into();
        c.spec.service.name = service.map(str::to_string);
        c
    }

    /// Issue 11: a 60-character target name looped on 422s without a word on the Canary.
    #[test]
    fn generated_names_within_kubernetes_limits() {
        let ok = "a".repeat(55);
        assert_eq!(validate_canary(&named(&ok, None)), vec![]);

        let long = "a".repeat(56);
        let p = validate_canary(&named(&long, None));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "spec.targetRef.name");
        assert!(
            p[0].message
                .contains(&format!("\"{long}-primary\" is 64 characters")),
            "{p:?}"
        );
        assert!(p[0].message.contains("at most 63"), "{p:?}");
        assert!(p[0].hint.contains("at most 55 characters"), "{p:?}");

        // A short Service name takes the Services off the target's name.
        assert_eq!(
            validate_canary(&named(&"a".repeat(60), Some("app"))),
            vec![]
        );
        let p = validate_canary(&named("app", Some(&"s".repeat(60))));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "spec.service.name");

        let p = validate_canary(&named(&"a".repeat(250), Some("app")));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "spec.targetRef.name");
        assert!(p[0].message.contains("at most 253"), "{p:?}");

        for bad in ["1app", "my.app", "App"] {
            let p = validate_canary(&named(bad, None));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(p[0].message.contains("DNS-1035"), "{p:?}");
        }

        let mut c = named("app", None);
        c.spec.autoscaler_ref = Some(AutoscalerRef {
            api_version: "autoscaling/v2".into(),
            kind: "HorizontalPodAutoscaler".into(),
            name: "h".repeat(246),
            ..Default::default()
        });
        assert_eq!(paths(&c), ["spec.autoscalerRef.name"]);
    }

    /// The CRD's bounds hold in `validate()` too, once per field.
    #[test]
    fn schema_bounds_apply_to_typed_objects() {
        let mut c = canary(base());
        c.spec.autoscaler_ref = Some(AutoscalerRef {
            api_version: "autoscaling/v2".into(),
            kind: "HorizontalPodAutoscaler".into(),
            name: "podinfo".into(),
            primary_scaler_replicas: Some(ScalerReplicas {
                min_replicas: Some(0),
                max_replicas: Some(3),
            }),
            ..Default::default()
        });
        let p = validate_canary(&c);
        assert_eq!(
            p.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(),
            ["spec.autoscalerRef.primaryScalerReplicas.minReplicas"]
        );
        assert_eq!(p[0].message, "Invalid value: 0: must be >= 1");

        let mut a = base();
        a.step_weight = Some(-5);
        a.mirror_weight = Some(120);
        a.mirror = Some(true);
        let p = validate_canary(&canary(a));
        let mut got: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        got.sort_unstable();
        assert_eq!(
            got,
            ["spec.analysis.mirrorWeight", "spec.analysis.stepWeight"],
            "{p:?}"
        );
    }

    /// Issue 11, finding 8: Flagger runs `interval: 0s` as 10s and `threshold: 0` as 1, so serin
    /// accepts both and does the same.
    #[test]
    fn zero_interval_and_threshold_follow_flagger() {
        let mut a = base();
        a.interval = Some("0s".into());
        a.threshold = Some(0);
        assert_eq!(validate_canary(&canary(a.clone())), vec![]);
        assert_eq!(a.interval(), std::time::Duration::from_secs(10));
        assert_eq!(a.threshold(), 1);
    }
}
