//! The target and primary Deployments: revision hashes, config tracking, the primary's desired
//! spec, readiness, and how many replicas a canary gets when scaled up. All pure.
//!
//! The revision hash is the SHA-256 of the pod template's canonical JSON (object keys sorted,
//! no whitespace, absent optional fields omitted), so it changes only when the template does: not
//! when serin or its Kubernetes client library is upgraded (Flagger
//! [#1673](https://github.com/fluxcd/flagger/issues/1673),
//! [#1799](https://github.com/fluxcd/flagger/issues/1799),
//! [#1201](https://github.com/fluxcd/flagger/issues/1201)).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, Secret, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};

use crate::rollout::{REVISION_PREFIX, Readiness, Scale};

pub mod hpa;

/// Annotation on the primary Deployment recording the revision it was promoted from, so that
/// "the primary runs the promoted revision" can be checked from the watch cache.
pub const REVISION_ANNOTATION: &str = "serin.dev/revision";

/// Annotation that opts a ConfigMap or Secret out of tracking (Flagger's name, prefix "disable").
pub const CONFIG_TRACKING_ANNOTATION: &str = "flagger.app/config-tracking";

/// Label keys looked for, in order, in the target's selector (Flagger's `-selector-labels`
/// default).
pub const SELECTOR_LABELS: [&str; 3] = ["app", "name", "app.kubernetes.io/name"];

/// The controller's process-wide workload options, Flagger's flags of the same names. Set once
/// at start ([`configure`]); a process runs one controller, so they need no plumbing through
/// every call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadOptions {
    /// `-selector-labels`: label keys looked for, in order, in the target's selector.
    pub selector_labels: Vec<String>,
    /// `-include-label-prefix`: target labels copied to the primary Deployment (`*` = all;
    /// empty = none, Flagger's default).
    pub include_label_prefixes: Vec<String>,
    /// `-enable-config-tracking`: ConfigMaps and Secrets of the pod spec start runs and get
    /// `-primary` copies.
    pub config_tracking: bool,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            selector_labels: SELECTOR_LABELS.iter().map(|s| s.to_string()).collect(),
            include_label_prefixes: Vec::new(),
            config_tracking: true,
        }
    }
}

static OPTIONS: std::sync::OnceLock<WorkloadOptions> = std::sync::OnceLock::new();

/// Sets the options for this process; the first call wins (false when they were set already).
pub fn configure(options: WorkloadOptions) -> bool {
    OPTIONS.set(options).is_ok()
}

pub fn options() -> &'static WorkloadOptions {
    static DEFAULT: std::sync::OnceLock<WorkloadOptions> = std::sync::OnceLock::new();
    OPTIONS
        .get()
        .unwrap_or_else(|| DEFAULT.get_or_init(WorkloadOptions::default))
}

/// Flagger's `includeLabelsByPrefix`: keys with a listed prefix (all with `*`), never Flux's
/// `toolkit.fluxcd.io` ones.
pub fn include_label(key: &str, prefixes: &[String]) -> bool {
    !key.contains("toolkit.fluxcd.io")
        && prefixes
            .iter()
            .any(|p| p == "*" || (!p.is_empty() && key.starts_with(p.as_str())))
}

/// The revision of a pod template: `sha256:` and the first 16 hex digits of its canonical JSON.
pub fn revision_hash(template: &PodTemplateSpec) -> String {
    let json = canonical_json(template);
    let digest = Sha256::digest(json.as_bytes());
    format!("{REVISION_PREFIX}{}", hex(&digest[..8]))
}

/// serde_json without `preserve_order` keeps object keys in a BTreeMap, so a round trip through
/// `Value` sorts them at every level.
fn canonical_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The selector label the canary machinery keys on and its value on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorLabel {
    pub key: String,
    pub value: String,
}

/// A target without a selector label serin can key on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "deployment {deployment} spec.selector.matchLabels must contain one of [{}]",
    options().selector_labels.join(", ")
)]
pub struct NoSelectorLabel {
    pub deployment: String,
}

/// Finds the selector label as Flagger does; the error names the field and the accepted keys.
pub fn selector_label(target: &Deployment) -> Result<SelectorLabel, NoSelectorLabel> {
    let labels = target.spec.selector.match_labels.as_ref();
    for key in &options().selector_labels {
        if let Some(value) = labels.and_then(|l| l.get(key)) {
            return Ok(SelectorLabel {
                key: key.to_string(),
                value: value.clone(),
            });
        }
    }
    Err(NoSelectorLabel {
        deployment: target.metadata.name.clone().unwrap_or_default(),
    })
}

/// ConfigMaps and Secrets a pod spec refers to; `true` when every reference is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigRefs {
    pub config_maps: BTreeMap<String, bool>,
    pub secrets: BTreeMap<String, bool>,
}

impl ConfigRefs {
    fn add(map: &mut BTreeMap<String, bool>, name: &str, optional: Option<bool>) {
        let optional = optional.unwrap_or(false);
        map.entry(name.to_string())
            .and_modify(|o| *o = *o && optional)
            .or_insert(optional);
    }
}

/// Every ConfigMap and Secret referenced from volumes (also projected), `env.valueFrom` and
/// `envFrom`, in containers and init containers (docs/flagger-contract.md §3.2).
pub fn config_refs(spec: &PodSpec) -> ConfigRefs {
    let mut refs = ConfigRefs::default();
    for v in spec.volumes.iter().flatten() {
        volume_refs(v, &mut refs);
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(k) = &from.config_map_key_ref {
                    ConfigRefs::add(&mut refs.config_maps, &k.name, k.optional);
                }
                if let Some(k) = &from.secret_key_ref {
                    ConfigRefs::add(&mut refs.secrets, &k.name, k.optional);
                }
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(cm) = &from.config_map_ref {
                ConfigRefs::add(&mut refs.config_maps, &cm.name, cm.optional);
            }
            if let Some(s) = &from.secret_ref {
                ConfigRefs::add(&mut refs.secrets, &s.name, s.optional);
            }
        }
    }
    refs
}

fn volume_refs(v: &Volume, refs: &mut ConfigRefs) {
    if let Some(cm) = &v.config_map {
        ConfigRefs::add(&mut refs.config_maps, &cm.name, cm.optional);
    }
    if let Some(s) = &v.secret
        && let Some(name) = &s.secret_name
    {
        ConfigRefs::add(&mut refs.secrets, name, s.optional);
    }
    if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                ConfigRefs::add(&mut refs.config_maps, &cm.name, cm.optional);
            }
            if let Some(s) = &src.secret {
                ConfigRefs::add(&mut refs.secrets, &s.name, s.optional);
            }
        }
    }
}

fn tracking_disabled(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_TRACKING_ANNOTATION))
        .is_some_and(|v| v.starts_with("disable"))
}

/// Checksum of a ConfigMap's data: the first 8 bytes of SHA-256 over its JSON, as hex (Flagger's
/// scheme). `None` when tracking is disabled for it.
pub fn config_map_checksum(cm: &ConfigMap) -> Option<String> {
    if tracking_disabled(&cm.metadata) {
        return None;
    }
    let data = cm.data.clone().unwrap_or_default();
    let binary = cm.binary_data.clone().unwrap_or_default();
    let json = if binary.is_empty() {
        canonical_json(&data)
    } else {
        canonical_json(&(data, binary))
    };
    Some(hex(&Sha256::digest(json.as_bytes())[..8]))
}

/// Checksum of a Secret's data; `None` for types Flagger does not track (service-account tokens,
/// docker configs, ...) and when tracking is disabled.
pub fn secret_checksum(secret: &Secret) -> Option<String> {
    const TRACKED: [&str; 4] = [
        "Opaque",
        "kubernetes.io/basic-auth",
        "kubernetes.io/ssh-auth",
        "kubernetes.io/tls",
    ];
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if !TRACKED.contains(&kind) || tracking_disabled(&secret.metadata) {
        return None;
    }
    let json = canonical_json(&secret.data.clone().unwrap_or_default());
    Some(hex(&Sha256::digest(json.as_bytes())[..8]))
}

/// A mandatory reference of the pod spec to a ConfigMap or Secret that does not exist.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MissingConfig {
    #[error("configmap {0} not found")]
    ConfigMap(String),
    #[error("secret {0} not found")]
    Secret(String),
}

/// Checksums of tracked configs by key (`configmap/<name>`, `secret/<name>`).
pub type ConfigChecksums = BTreeMap<String, String>;

/// The tracked configs of a pod spec (`configmap/<name>` → checksum), looked up through `get_cm`
/// and `get_secret` (the watch caches). A missing mandatory reference is an error naming it.
pub fn tracked_configs(
    spec: &PodSpec,
    get_cm: impl Fn(&str) -> Option<ConfigMap>,
    get_secret: impl Fn(&str) -> Option<Secret>,
) -> Result<ConfigChecksums, MissingConfig> {
    if !options().config_tracking {
        return Ok(BTreeMap::new());
    }
    let refs = config_refs(spec);
    let mut out = BTreeMap::new();
    for (name, optional) in &refs.config_maps {
        match get_cm(name) {
            Some(cm) => {
                if let Some(sum) = config_map_checksum(&cm) {
                    out.insert(format!("configmap/{name}"), sum);
                }
            }
            None if *optional => {}
            None => return Err(MissingConfig::ConfigMap(name.clone())),
        }
    }
    for (name, optional) in &refs.secrets {
        match get_secret(name) {
            Some(s) => {
                if let Some(sum) = secret_checksum(&s) {
                    out.insert(format!("secret/{name}"), sum);
                }
            }
            None if *optional => {}
            None => return Err(MissingConfig::Secret(name.clone())),
        }
    }
    Ok(out)
}

/// The primary's copy of a tracked ConfigMap: `<name>-primary`, owned by the Canary, with the
/// source's data.
pub fn primary_config_map(src: &ConfigMap, owner: &OwnerReference) -> ConfigMap {
    ConfigMap {
        metadata: primary_copy_meta(&src.metadata, owner),
        data: src.data.clone(),
        binary_data: src.binary_data.clone(),
        immutable: None,
    }
}

/// The primary's copy of a tracked Secret, as [`primary_config_map`].
pub fn primary_secret(src: &Secret, owner: &OwnerReference) -> Secret {
    Secret {
        metadata: primary_copy_meta(&src.metadata, owner),
        data: src.data.clone(),
        type_: src.type_.clone(),
        ..Default::default()
    }
}

fn primary_copy_meta(src: &ObjectMeta, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(format!(
            "{}-primary",
            src.name.as_deref().unwrap_or_default()
        )),
        namespace: src.namespace.clone(),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// Renames references to tracked configs to their `-primary` copies.
pub fn rename_config_refs(spec: &mut PodSpec, tracked: &BTreeSet<String>) {
    let cm = |name: &mut String| {
        if tracked.contains(&format!("configmap/{name}")) {
            name.push_str("-primary");
        }
    };
    let secret = |name: &mut String| {
        if tracked.contains(&format!("secret/{name}")) {
            name.push_str("-primary");
        }
    };
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(c) = &mut v.config_map {
            cm(&mut c.name);
        }
        if let Some(s) = &mut v.secret
            && let Some(name) = &mut s.secret_name
        {
            secret(name);
        }
        if let Some(p) = &mut v.projected {
            for src in p.sources.iter_mut().flatten() {
                if let Some(c) = &mut src.config_map {
                    cm(&mut c.name);
                }
                if let Some(s) = &mut src.secret {
                    secret(&mut s.name);
                }
            }
        }
    }
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        for e in c.env.iter_mut().flatten() {
            if let Some(from) = &mut e.value_from {
                if let Some(k) = &mut from.config_map_key_ref {
                    cm(&mut k.name);
                }
                if let Some(k) = &mut from.secret_key_ref {
                    secret(&mut k.name);
                }
            }
        }
        for from in c.env_from.iter_mut().flatten() {
            if let Some(r) = &mut from.config_map_ref {
                cm(&mut r.name);
            }
            if let Some(r) = &mut from.secret_ref {
                secret(&mut r.name);
            }
        }
    }
}

/// Keys Flux's kustomize-controller owns; never copied to objects serin owns.
fn is_toolkit_key(key: &str) -> bool {
    key.contains("toolkit.fluxcd.io")
}

fn without_toolkit(map: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.into_iter()
        .flatten()
        .filter(|(k, _)| !is_toolkit_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Inputs to the primary Deployment besides the target itself.
pub struct PrimaryInputs<'a> {
    pub target: &'a Deployment,
    pub selector: &'a SelectorLabel,
    pub owner: OwnerReference,
    /// The revision being promoted (recorded in [`REVISION_ANNOTATION`]).
    pub revision: &'a str,
    /// Tracked configs, whose references are renamed to the `-primary` copies.
    pub tracked: &'a BTreeSet<String>,
    /// Replicas to set; `None` leaves them to an autoscaler (Flagger
    /// [#1106](https://github.com/fluxcd/flagger/issues/1106)).
    pub replicas: Option<i32>,
    /// [`configs_checksum`] of the promoted configs, put on the primary's pod template.
    pub configs_checksum: Option<String>,
}

/// Pod-template annotation of the primary: the checksum of the tracked configs it was promoted
/// with. Flagger's random `flagger-id` restarts the primary's pods at every promotion; serin has
/// none, so without this a ConfigMap- or Secret-only release would leave the primary's pods
/// running with the configuration they started with (environment variables are read once).
pub const CONFIGS_CHECKSUM_ANNOTATION: &str = "serin.dev/configs-checksum";

/// A checksum over the tracked configs' checksums; `None` when nothing is tracked, so primaries
/// without configs keep the exact template they always had.
pub fn configs_checksum(configs: &BTreeMap<String, String>) -> Option<String> {
    (!configs.is_empty()).then(|| hex(&Sha256::digest(canonical_json(configs).as_bytes())[..8]))
}

/// The primary Deployment as serin applies it (server-side apply, field manager
/// `serin/primary`). No random `flagger-id` pod annotation: re-applying the same revision is a
/// no-op, so a crash between promotion and the status write costs no extra rollout
/// ([#1163](https://github.com/fluxcd/flagger/issues/1163)).
pub fn desired_primary(inp: &PrimaryInputs<'_>) -> Deployment {
    let target = inp.target;
    let name = format!("{}-primary", target.metadata.name.as_deref().unwrap_or(""));
    let primary_value = format!("{}-primary", inp.selector.value);
    let spec = target.spec.clone();
    let mut template = spec.template.clone();

    let mut pod_labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    pod_labels.insert(inp.selector.key.clone(), primary_value.clone());
    let mut pod_annotations = without_toolkit(
        template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref()),
    );
    if let Some(sum) = &inp.configs_checksum {
        pod_annotations.insert(CONFIGS_CHECKSUM_ANNOTATION.into(), sum.clone());
    }
    template.metadata = Some(ObjectMeta {
        labels: Some(pod_labels),
        annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
        ..Default::default()
    });
    if let Some(pod) = &mut template.spec {
        rename_config_refs(pod, inp.tracked);
        rewrite_affinity_selectors(pod, &inp.selector.key, &inp.selector.value, &primary_value);
    }

    let mut annotations = without_toolkit(target.metadata.annotations.as_ref());
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    annotations.remove("deployment.kubernetes.io/revision");
    annotations.insert(REVISION_ANNOTATION.into(), inp.revision.to_string());
    let prefixes = &options().include_label_prefixes;
    let mut labels: BTreeMap<String, String> = target
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| include_label(k, prefixes))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(inp.selector.key.clone(), primary_value.clone());

    Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: target.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![inp.owner.clone()]),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: inp.replicas,
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(inp.selector.key.clone(), primary_value)])),
                ..Default::default()
            },
            template,
            progress_deadline_seconds: spec.progress_deadline_seconds,
            min_ready_seconds: spec.min_ready_seconds,
            revision_history_limit: spec.revision_history_limit,
            strategy: spec.strategy,
            paused: None,
        },
        status: None,
    }
}

/// Pod anti-affinity and topology spread selectors that point at the target's own pods would
/// otherwise make primary pods avoid (or spread against) the canary's.
fn rewrite_affinity_selectors(pod: &mut PodSpec, key: &str, from: &str, to: &str) {
    let fix = |sel: &mut Option<LabelSelector>| {
        if let Some(sel) = sel
            && let Some(labels) = &mut sel.match_labels
            && labels.get(key).map(String::as_str) == Some(from)
        {
            labels.insert(key.to_string(), to.to_string());
        }
    };
    for c in pod.topology_spread_constraints.iter_mut().flatten() {
        fix(&mut c.label_selector);
    }
    if let Some(anti) = pod
        .affinity
        .as_mut()
        .and_then(|a| a.pod_anti_affinity.as_mut())
    {
        for t in anti
            .required_during_scheduling_ignored_during_execution
            .iter_mut()
            .flatten()
        {
            fix(&mut t.label_selector);
        }
        for w in anti
            .preferred_during_scheduling_ignored_during_execution
            .iter_mut()
            .flatten()
        {
            fix(&mut w.pod_affinity_term.label_selector);
        }
    }
}

/// Readiness of a Deployment (Flagger's `isDeploymentReady` texts), with `threshold` the share of
/// updated replicas that must be available (percent). A ProgressDeadlineExceeded condition is
/// final; everything else is "still waiting" and serin's own deadline decides when to give up.
pub fn readiness(d: &Deployment, threshold: i32) -> Readiness {
    let name = d.metadata.name.as_deref().unwrap_or("");
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = &d.status else {
        return Readiness::Waiting("waiting for rollout to finish: no status yet".into());
    };
    if generation > status.observed_generation.unwrap_or(0) {
        return Readiness::Waiting(
            "waiting for rollout to finish: observed deployment generation less than desired generation"
                .into(),
        );
    }
    let deadline = status.conditions.iter().flatten().any(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if deadline {
        return Readiness::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let desired = d.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if desired == 0 {
        return Readiness::Waiting(
            "waiting for rollout to finish: deployment is scaled to zero".into(),
        );
    }
    if updated < desired {
        return Readiness::Waiting(format!(
            "waiting for rollout to finish: {updated} out of {desired} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return Readiness::Waiting(format!(
            "waiting for rollout to finish: {} old replicas are pending termination",
            replicas - updated
        ));
    }
    let threshold = threshold.clamp(0, 100);
    // Rounded down in float32 arithmetic, as Flagger's isDeploymentReady computes it (3 replicas
    // at 50% wait for 1), so a threshold admits the same replicas under both controllers.
    let needed = (updated as f32 * (threshold as f32 / 100.0)) as i32;
    if available < needed {
        return Readiness::Waiting(format!(
            "waiting for rollout to finish: {available} of {needed} (readyThreshold {threshold}%) updated replicas are available"
        ));
    }
    Readiness::Ready
}

/// Replicas for a canary scaled up from zero (Flagger's ScaleFromZero): the target's own
/// replicas when set above zero; else the primary's when there is no autoscaler; else the
/// autoscaler minimum when above one; else one.
pub fn scale_up_replicas(
    target_replicas: Option<i32>,
    primary_replicas: Option<i32>,
    autoscaler_min: Option<i32>,
    has_autoscaler: bool,
) -> i32 {
    if let Some(r) = target_replicas.filter(|r| *r > 0) {
        return r;
    }
    if !has_autoscaler && let Some(r) = primary_replicas.filter(|r| *r > 0) {
        return r;
    }
    autoscaler_min.filter(|m| *m > 1).unwrap_or(1)
}

/// Replicas to write on the primary Deployment: none under an autoscaler (its HPA owns them,
/// and an apply that set them would fight it), else as many as a canary scaled up from zero
/// would get, so a target scaled to zero never leaves the primary at zero.
pub fn primary_replicas(
    target_replicas: Option<i32>,
    primary_replicas: Option<i32>,
    has_autoscaler: bool,
) -> Option<i32> {
    (!has_autoscaler).then(|| scale_up_replicas(target_replicas, primary_replicas, None, false))
}

/// The replicas to set on the target for the decision's `scale`, or `None` when it already has
/// them (an unset count means one, as for the API server). Scaling up starts from
/// [`scale_up_replicas`].
pub fn target_replicas(
    scale: Scale,
    target_replicas: Option<i32>,
    primary_replicas: Option<i32>,
    autoscaler_min: Option<i32>,
    has_autoscaler: bool,
) -> Option<i32> {
    let current = target_replicas.unwrap_or(1);
    match scale {
        Scale::Keep => None,
        Scale::Zero => (current != 0).then_some(0),
        Scale::Up if current > 0 => None,
        Scale::Up => Some(scale_up_replicas(
            Some(current),
            primary_replicas,
            autoscaler_min,
            has_autoscaler,
        )),
    }
}

#[cfg(test)]
mod tests;
