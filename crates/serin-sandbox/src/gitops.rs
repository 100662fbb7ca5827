//! The GitOps applier: what Flux's kustomize-controller does with a directory of the example
//! repository (`deploy/gitops`), small enough for the sandbox, `cargo demo` (serin-sandbox demo) and the tests.
//!
//! - [`render`] builds a kustomize directory with a built-in renderer of the kustomization
//!   fields the example uses (`resources`, `namespace`, `images`). Anything else is refused by
//!   name rather than ignored, so a rendering never silently differs from `kustomize build`
//!   (a test compares the two on the example).
//! - [`apply`] applies every object with server-side apply and force under Flux's field
//!   manager, namespaces and CRDs first, as kustomize-controller does.
//! - [`bump_tag`] is a release: it sets `images[0].newTag` in a kustomization.yaml, keeping
//!   the rest of the file (comments included) byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::Scope;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, warn};

/// The field manager of Flux's kustomize-controller, which its server-side apply uses.
pub const FIELD_MANAGER: &str = "kustomize-controller";

/// The kustomization fields [`render`] understands.
pub const SUPPORTED_FIELDS: &str = "apiVersion, kind, resources, namespace, images";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Api { what: String, source: kube::Error },
    #[error("{0}")]
    Object(String),
    #[error("{0}")]
    Timeout(String),
}

fn invalid(path: &Path, message: impl Into<String>) -> Error {
    Error::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<ImageRule>,
}

/// One `images` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageRule {
    pub name: String,
    #[serde(default)]
    pub new_name: Option<String>,
    /// A YAML string only: kustomize refuses `newTag: 1.10` (a number, which would read as
    /// "1.1"), and so does this renderer.
    #[serde(default, deserialize_with = "string_only")]
    pub new_tag: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
}

fn string_only<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_yaml_ng::Value::deserialize(d)? {
        serde_yaml_ng::Value::String(s) => Ok(Some(s)),
        serde_yaml_ng::Value::Null => Ok(None),
        other => Err(serde::de::Error::custom(format!(
            "newTag: {} is not a string; quote it",
            serde_yaml_ng::to_string(&other).unwrap_or_default().trim()
        ))),
    }
}

const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The kustomization file of a directory.
pub fn kustomization_file(dir: &Path) -> Result<PathBuf, Error> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            invalid(
                dir,
                "no kustomization.yaml in this directory (serin's renderer builds kustomize directories only)",
            )
        })
}

/// Renders a kustomize directory into the objects `kustomize build` would print (order aside).
pub fn render(dir: &Path) -> Result<Vec<DynamicObject>, Error> {
    let mut visiting = Vec::new();
    render_values(dir, &mut visiting)?
        .into_iter()
        .map(|v| {
            serde_json::from_value::<DynamicObject>(v.clone())
                .map_err(|e| invalid(dir, format!("{}: {e}", id_of(&v))))
        })
        .collect()
}

fn render_values(dir: &Path, visiting: &mut Vec<PathBuf>) -> Result<Vec<Value>, Error> {
    let canonical = dir.canonicalize().map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if visiting.contains(&canonical) {
        return Err(invalid(dir, "kustomizations include each other in a cycle"));
    }
    visiting.push(canonical);
    let file = kustomization_file(dir)?;
    let text = read(&file)?;
    let k: Kustomization = serde_yaml_ng::from_str(&text).map_err(|e| {
        invalid(
            &file,
            format!("{e} (serin's renderer supports {SUPPORTED_FIELDS})"),
        )
    })?;
    let mut objects = Vec::new();
    for entry in &k.resources {
        if entry.contains("://") || entry.starts_with("github.com/") || entry.starts_with("git@") {
            return Err(invalid(
                &file,
                format!("resources: {entry}: remote resources are not supported; use a path"),
            ));
        }
        let path = dir.join(entry);
        if path.is_dir() {
            objects.extend(render_values(&path, visiting)?);
        } else {
            objects.extend(load_manifests(&path)?);
        }
    }
    visiting.pop();
    for rule in &k.images {
        for o in objects.iter_mut() {
            set_images(o, rule);
        }
    }
    if let Some(ns) = &k.namespace {
        for o in objects.iter_mut() {
            // kustomize moves ServiceAccount subjects that have no namespace or the binding's old
            // one along with the binding (checked against kubectl kustomize in tests/gitops.rs);
            // others it treats by rules this renderer does not copy, so those are refused.
            if matches!(kind_of(o), "RoleBinding" | "ClusterRoleBinding") {
                let old = o["metadata"]["namespace"].clone();
                if let Some(subjects) = o["subjects"].as_array_mut() {
                    for subject in subjects {
                        let moves = subject.get("namespace").is_none_or(|n| *n == old);
                        if subject["kind"] == "ServiceAccount" && moves {
                            subject["namespace"] = serde_json::Value::from(ns.clone());
                        } else if subject.get("namespace").is_some() {
                            return Err(invalid(
                                &file,
                                format!(
                                    "namespace: {}: a subject in another namespace; kustomize may rewrite it by rules serin's renderer does not copy",
                                    id_of(o)
                                ),
                            ));
                        }
                    }
                }
            }
            set_object_namespace(o, ns);
        }
    }
    let mut seen = BTreeSet::new();
    for o in &objects {
        if !seen.insert(id_of(o)) {
            return Err(invalid(
                &file,
                format!(
                    "{} is listed twice (kustomize refuses duplicates)",
                    id_of(o)
                ),
            ));
        }
    }
    Ok(objects)
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Every document of a manifest file; `List` kinds are expanded as kustomize does.
fn load_manifests(path: &Path) -> Result<Vec<Value>, Error> {
    let text = read(path)?;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).map_err(|e| invalid(path, e.to_string()))?;
        if v.is_null() {
            continue;
        }
        let items = match v.get("kind").and_then(Value::as_str) {
            Some(k) if k.ends_with("List") && v.get("items").is_some() => {
                v["items"].as_array().cloned().unwrap_or_default()
            }
            _ => vec![v],
        };
        for item in items {
            for field in ["apiVersion", "kind"] {
                if item.get(field).and_then(Value::as_str).is_none() {
                    return Err(invalid(path, format!("a document has no {field}")));
                }
            }
            if item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none()
            {
                return Err(invalid(
                    path,
                    format!("a {} has no metadata.name", kind_of(&item)),
                ));
            }
            out.push(item);
        }
    }
    Ok(out)
}

fn kind_of(o: &Value) -> &str {
    o.get("kind").and_then(Value::as_str).unwrap_or_default()
}

/// `Kind/namespace/name` (or `Kind/name` for an object without namespace), for messages.
fn id_of(o: &Value) -> String {
    let name = o
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match o.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{}/{ns}/{name}", kind_of(o)),
        None => format!("{}/{name}", kind_of(o)),
    }
}

/// Kinds kustomize (and Flux's `targetNamespace`) leave without a namespace.
const CLUSTER_SCOPED: [&str; 16] = [
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "IngressClass",
    "RuntimeClass",
    "PodSecurityPolicy",
    "CSIDriver",
    "VolumeAttachment",
    "Node",
];

/// kustomize's namespace transformer: namespaced objects move into `ns`, and a Namespace
/// object is renamed to it; other cluster-scoped objects stay as they are.
fn set_object_namespace(o: &mut Value, ns: &str) {
    let field = match kind_of(o) {
        "Namespace" => "name",
        k if CLUSTER_SCOPED.contains(&k) => return,
        _ => "namespace",
    };
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(field.into(), Value::String(ns.into()));
    }
}

/// Moves every namespaced object into `ns` (and renames a Namespace object to it), as Flux's
/// `spec.targetNamespace` does through kustomize: the tests and the demo play the example in a
/// namespace of their own.
pub fn set_namespace(objects: &mut [DynamicObject], ns: &str) {
    for o in objects.iter_mut() {
        match o.types.as_ref().map(|t| t.kind.as_str()) {
            Some("Namespace") => o.metadata.name = Some(ns.to_string()),
            Some(k) if CLUSTER_SCOPED.contains(&k) => {}
            _ => o.metadata.namespace = Some(ns.to_string()),
        }
    }
}

/// The name of an image reference without tag or digest, and the tag or digest suffix.
fn split_image(image: &str) -> (&str, &str) {
    if let Some(at) = image.find('@') {
        return (&image[..at], &image[at..]);
    }
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(colon) => image.split_at(last_slash + colon),
        None => (image, ""),
    }
}

/// The image reference `rule` makes of `image`, or `None` when it does not apply.
pub fn transform_image(image: &str, rule: &ImageRule) -> Option<String> {
    let (name, suffix) = split_image(image);
    if name != rule.name {
        return None;
    }
    let name = rule.new_name.as_deref().unwrap_or(name);
    let suffix = match (&rule.digest, &rule.new_tag) {
        (Some(d), _) => format!("@{d}"),
        (None, Some(t)) => format!(":{t}"),
        (None, None) => suffix.to_string(),
    };
    Some(format!("{name}{suffix}"))
}

/// Applies an `images` rule to every container and init container anywhere in the object
/// (Deployments, CronJobs, bare Pods alike), as kustomize's image transformer does.
fn set_images(v: &mut Value, rule: &ImageRule) {
    match v {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if matches!(key.as_str(), "containers" | "initContainers")
                    && let Value::Array(list) = child
                {
                    for c in list.iter_mut() {
                        let new = c
                            .get("image")
                            .and_then(Value::as_str)
                            .and_then(|i| transform_image(i, rule));
                        if let (Some(new), Some(c)) = (new, c.as_object_mut()) {
                            c.insert("image".into(), Value::String(new));
                        }
                    }
                }
                set_images(child, rule);
            }
        }
        Value::Array(list) => list.iter_mut().for_each(|c| set_images(c, rule)),
        _ => {}
    }
}

// ---- bump ----

/// Whether `tag` is a valid image tag (the OCI distribution grammar).
pub fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Sets `images[0].newTag` of the kustomization file in place (a release, as an image
/// automation commit makes it), keeping everything else in the file as it was.
pub fn bump_tag(kustomization: &Path, new_tag: &str) -> Result<(), Error> {
    let text = read(kustomization)?;
    let bumped = bump_tag_text(&text, new_tag).map_err(|m| invalid(kustomization, m))?;
    std::fs::write(kustomization, bumped).map_err(|source| Error::Io {
        path: kustomization.to_path_buf(),
        source,
    })
}

/// [`bump_tag`] on the file's text: replaces the value of `newTag` in the first `images`
/// entry, or adds the key after the entry's first line. The result is checked by parsing: the
/// same document but for that one value, or an error.
pub fn bump_tag_text(text: &str, new_tag: &str) -> Result<String, String> {
    if !valid_tag(new_tag) {
        return Err(format!(
            "{new_tag:?} is not an image tag (letters, digits, '_', '.', '-'; 128 at most)"
        ));
    }
    let before: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    if before
        .get("images")
        .and_then(|i| i.as_sequence())
        .is_none_or(|s| s.is_empty())
    {
        return Err("no images entry to bump (images[0] is missing)".into());
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let images = lines
        .iter()
        .position(|l| l.trim_end() == "images:" || l.starts_with("images:"))
        .ok_or("no top-level `images:` line")?;
    // The first entry: the first line below `images:` that starts a sequence item.
    let (first, dash_indent) = lines
        .iter()
        .enumerate()
        .skip(images + 1)
        .find_map(|(i, l)| {
            let trimmed = l.trim_start();
            trimmed
                .starts_with("- ")
                .then(|| (i, l.len() - trimmed.len()))
        })
        .ok_or("images: the first entry is not a block sequence item (`- name: ...`)")?;
    // The column of the entry's keys: after the dash and its spaces.
    let after_dash = &lines[first][dash_indent + 1..];
    let key_col = dash_indent + 1 + (after_dash.len() - after_dash.trim_start().len());
    // The entry's lines: the first, then those indented deeper than its dash.
    let mut end = first + 1;
    while end < lines.len() {
        let l = lines[end];
        let blank = l.trim().is_empty() || l.trim_start().starts_with('#');
        let indent = l.len() - l.trim_start().len();
        if !blank && indent <= dash_indent {
            break;
        }
        end += 1;
    }
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let tag_line = (first..end).find(|&i| {
        lines[i].len() >= key_col
            && lines[i][key_col..].starts_with("newTag:")
            && (i == first || lines[i][..key_col].trim().is_empty())
    });
    // A tag YAML would read as something else than a string (1.10, true) gets quotes.
    let plain_ok = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(new_tag)
        .is_ok_and(|v| v.as_str() == Some(new_tag));
    match tag_line {
        Some(i) => {
            let line = &lines[i];
            let at = line.find("newTag:").unwrap_or(0) + "newTag:".len();
            let rest = &line[at..];
            let value = rest.trim_start();
            let quote = match value.chars().next() {
                Some(q @ ('"' | '\'')) => Some(q),
                _ => None,
            };
            // Keep a trailing comment, drop the old value.
            let comment = match quote {
                Some(q) => value[1..]
                    .find(q)
                    .map(|e| value[e + 2..].trim_end_matches(['\n', '\r']).to_string()),
                None => value
                    .find(" #")
                    .map(|c| value[c..].trim_end_matches(['\n', '\r']).to_string()),
            }
            .unwrap_or_default();
            let newline = if line.ends_with("\r\n") {
                "\r\n"
            } else if line.ends_with('\n') {
                "\n"
            } else {
                ""
            };
            let q = match quote {
                Some(q) => q.to_string(),
                None if plain_ok => String::new(),
                None => "\"".to_string(),
            };
            out[i] = format!("{} {q}{new_tag}{q}{comment}{newline}", &line[..at]);
        }
        None => {
            let newline = if lines[first].ends_with('\n') {
                ""
            } else {
                "\n"
            };
            out[first].push_str(newline);
            out.insert(
                first + 1,
                format!("{}newTag: \"{new_tag}\"\n", " ".repeat(key_col)),
            );
        }
    }
    let result: String = out.concat();
    let after: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&result).map_err(|e| format!("bumping broke the file: {e}"))?;
    let mut expected = before.clone();
    if let Some(entry) = expected
        .get_mut("images")
        .and_then(|i| i.as_sequence_mut())
        .and_then(|s| s.first_mut())
        .and_then(|e| e.as_mapping_mut())
    {
        entry.insert("newTag".into(), new_tag.into());
    }
    if after != expected {
        return Err(
            "cannot bump images[0].newTag in this layout without touching anything else".into(),
        );
    }
    Ok(result)
}

// ---- apply ----

/// Applies the objects with server-side apply and force under `manager` (use [`FIELD_MANAGER`]
/// to act as Flux): Namespaces and CRDs first, then the CRDs are waited for, then the rest, in
/// order. Returns the `Kind/namespace/name` of each object applied.
pub async fn apply(
    client: &Client,
    objects: &[DynamicObject],
    manager: &str,
) -> Result<Vec<String>, Error> {
    let stage = |o: &DynamicObject| {
        let kind = o
            .types
            .as_ref()
            .map(|t| t.kind.as_str())
            .unwrap_or_default();
        matches!(kind, "Namespace" | "CustomResourceDefinition")
    };
    for problem in replica_fights(objects) {
        warn!("{problem}");
    }
    let mut resolved: BTreeMap<(String, String), Resolved> = BTreeMap::new();
    let mut applied = Vec::new();
    let (first, rest): (Vec<&DynamicObject>, Vec<&DynamicObject>) =
        objects.iter().partition(|o| stage(o));
    for o in &first {
        applied.push(apply_one(client, o, manager, &mut resolved).await?);
    }
    for o in &first {
        if o.types
            .as_ref()
            .is_some_and(|t| t.kind == "CustomResourceDefinition")
        {
            wait_established(client, o.metadata.name.as_deref().unwrap_or_default()).await?;
        }
    }
    for o in &rest {
        applied.push(apply_one(client, o, manager, &mut resolved).await?);
    }
    Ok(applied)
}

/// Deployments that set `spec.replicas` while an HPA in the same set scales them: every apply
/// would reset what the HPA and serin set (Flagger
/// [#1121](https://github.com/fluxcd/flagger/issues/1121)), one message per Deployment.
pub fn replica_fights(objects: &[DynamicObject]) -> Vec<String> {
    let kind = |o: &DynamicObject| o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
    let scaled: BTreeSet<(Option<String>, String)> = objects
        .iter()
        .filter(|o| kind(o) == "HorizontalPodAutoscaler")
        .filter(|o| {
            o.data
                .pointer("/spec/scaleTargetRef/kind")
                .and_then(Value::as_str)
                == Some("Deployment")
        })
        .filter_map(|o| {
            let name = o.data.pointer("/spec/scaleTargetRef/name")?.as_str()?;
            Some((o.metadata.namespace.clone(), name.to_string()))
        })
        .collect();
    objects
        .iter()
        .filter(|o| kind(o) == "Deployment" && o.data.pointer("/spec/replicas").is_some())
        .filter(|o| {
            let name = o.metadata.name.clone().unwrap_or_default();
            scaled.contains(&(o.metadata.namespace.clone(), name))
        })
        .map(|o| {
            format!(
                "{}: spec.replicas is set while a HorizontalPodAutoscaler scales it; every apply resets the replicas the HPA and serin set (remove the field)",
                id_of(&serde_json::to_value(o).unwrap_or_default())
            )
        })
        .collect()
}

#[derive(Clone)]
struct Resolved {
    resource: ApiResource,
    scope: Scope,
}

async fn resolve(client: &Client, gvk: &GroupVersionKind) -> Result<Resolved, kube::Error> {
    let (resource, caps) = kube::discovery::pinned_kind(client, gvk).await?;
    Ok(Resolved {
        resource,
        scope: caps.scope,
    })
}

async fn apply_one(
    client: &Client,
    o: &DynamicObject,
    manager: &str,
    cache: &mut BTreeMap<(String, String), Resolved>,
) -> Result<String, Error> {
    let json = serde_json::to_value(o).unwrap_or_default();
    let id = id_of(&json);
    let types = o
        .types
        .clone()
        .ok_or_else(|| Error::Object(format!("{id}: no apiVersion/kind")))?;
    let key = (types.api_version.clone(), types.kind.clone());
    let r = match cache.get(&key) {
        Some(r) => r.clone(),
        None => {
            let (group, version) = match types.api_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), types.api_version.clone()),
            };
            let gvk = GroupVersionKind::gvk(&group, &version, &types.kind);
            let r = resolve(client, &gvk).await.map_err(|source| Error::Api {
                what: format!("{id}: the API server does not serve {}", types.api_version),
                source,
            })?;
            cache.insert(key, r.clone());
            r
        }
    };
    let body = json;
    let name = o.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = match r.scope {
        Scope::Cluster => Api::all_with(client.clone(), &r.resource),
        Scope::Namespaced => {
            let ns = o.metadata.namespace.as_deref().ok_or_else(|| {
                Error::Object(format!("{id}: a namespaced object without a namespace"))
            })?;
            Api::namespaced_with(client.clone(), ns, &r.resource)
        }
    };
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Api {
        what: format!("applying {id}"),
        source,
    })?;
    debug!(object = %id, manager, "applied");
    Ok(id)
}

async fn wait_established(client: &Client, name: &str) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for _ in 0..60 {
        let crd = api.get_opt(name).await.map_err(|source| Error::Api {
            what: format!("reading CustomResourceDefinition/{name}"),
            source,
        })?;
        let established = crd
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Error::Timeout(format!(
        "CustomResourceDefinition/{name} not Established after 30 s"
    )))
}

#[cfg(test)]
mod tests;
