//! Flux's objects as a user handles them with `flux` and `kubectl`: applying a GitRepository or a
//! Kustomization, asking for a reconciliation now (`flux reconcile`), and reading their Ready
//! condition (`flux get`).

use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The namespace Flux runs in and keeps its own objects in.
pub const NAMESPACE: &str = "flux-system";

/// The field manager of objects the sandbox applies on the user's behalf (the bootstrap's).
pub const FIELD_MANAGER: &str = "serin-sandbox";

/// The annotation `flux reconcile` sets to ask for a reconciliation now.
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";

/// The Flux kinds the sandbox handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    GitRepository,
    Kustomization,
}

impl Kind {
    pub fn from_name(kind: &str) -> Option<Kind> {
        match kind {
            "GitRepository" => Some(Kind::GitRepository),
            "Kustomization" => Some(Kind::Kustomization),
            _ => None,
        }
    }

    pub fn api_resource(self) -> ApiResource {
        let (group, kind, plural) = match self {
            Kind::GitRepository => (
                "source.toolkit.fluxcd.io",
                "GitRepository",
                "gitrepositories",
            ),
            Kind::Kustomization => (
                "kustomize.toolkit.fluxcd.io",
                "Kustomization",
                "kustomizations",
            ),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
    }

    fn api(self, client: &Client, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), ns, &self.api_resource())
    }
}

/// Applies a GitRepository or Kustomization (server-side, as `kubectl apply --server-side`).
pub async fn apply(client: &Client, object: &Value) -> anyhow::Result<()> {
    let kind_name = object["kind"].as_str().unwrap_or_default();
    let kind = Kind::from_name(kind_name)
        .ok_or_else(|| anyhow::anyhow!("{kind_name:?} is not a Flux kind the sandbox applies"))?;
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or(NAMESPACE);
    kind.api(client, ns)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|e| anyhow::anyhow!("applying {kind_name} {ns}/{name}: {e}"))?;
    Ok(())
}

/// Creates a namespace if it does not exist (what an installer run before Flux leaves behind,
/// such as Istio's `istio-system`).
pub async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match api.create(&kube::api::PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow::anyhow!("creating the namespace {name}: {e}")),
    }
}

/// `flux reconcile`: asks the controller to reconcile the object now rather than at its next
/// interval.
pub async fn request_reconcile(
    client: &Client,
    kind: Kind,
    ns: &str,
    name: &str,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    kind.api(client, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {REQUESTED_AT: now}}})),
        )
        .await
        .map_err(|e| anyhow::anyhow!("requesting a reconciliation of {ns}/{name}: {e}"))?;
    Ok(())
}

/// One row of `flux get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    /// The applied revision (Kustomization) or the fetched one (GitRepository).
    pub revision: String,
    pub suspended: bool,
    /// The Ready condition's status: `True`, `False` or `Unknown`.
    pub ready: String,
    pub message: String,
    /// Whether the Ready condition is about the object's current spec.
    pub current: bool,
}

impl Row {
    pub fn is_ready(&self) -> bool {
        self.ready == "True" && self.current
    }
}

/// The row of an object as `flux get` shows it.
pub fn row(object: &Value) -> Row {
    let status = &object["status"];
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    let revision = status["lastAppliedRevision"]
        .as_str()
        .or_else(|| status["artifact"]["revision"].as_str())
        .unwrap_or_default();
    let generation = object["metadata"]["generation"].as_i64();
    Row {
        name: object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        revision: revision.to_string(),
        suspended: object["spec"]["suspend"].as_bool().unwrap_or(false),
        ready: ready
            .and_then(|c| c["status"].as_str())
            .unwrap_or("Unknown")
            .to_string(),
        message: ready
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_string(),
        current: generation.is_some() && status["observedGeneration"].as_i64() == generation,
    }
}

/// `flux get kustomizations` / `flux get sources git`: every object of `kind` in `ns`.
pub async fn list(client: &Client, kind: Kind, ns: &str) -> anyhow::Result<Vec<Row>> {
    let list = kind
        .api(client, ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| anyhow::anyhow!("listing {kind:?}s in {ns}: {e}"))?;
    let mut rows: Vec<Row> = list
        .items
        .iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .map(|v| row(&v))
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// The rows as `flux get` prints them.
pub fn table(rows: &[Row]) -> String {
    let header = ["NAME", "REVISION", "SUSPENDED", "READY", "MESSAGE"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.revision.clone(),
                if r.suspended { "True" } else { "False" }.to_string(),
                r.ready.clone(),
                r.message.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |c: [&str; 5]| {
        let mut out = String::new();
        for (i, cell) in c.iter().enumerate() {
            if i == 4 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(header)];
    out.extend(
        cells
            .iter()
            .map(|c| line([&c[0], &c[1], &c[2], &c[3], &c[4]])),
    );
    out.join("\n") + "\n"
}

/// Waits until the object is Ready for its current spec and, when given, at `revision`;
/// the error says what it last showed.
pub async fn wait_ready(
    client: &Client,
    kind: Kind,
    ns: &str,
    name: &str,
    revision: Option<&str>,
    limit: Duration,
) -> anyhow::Result<Row> {
    let api = kind.api(client, ns);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match api.get_opt(name).await {
            Ok(Some(o)) => {
                let r = row(&serde_json::to_value(&o)?);
                if r.is_ready() && revision.is_none_or(|want| r.revision == want) {
                    return Ok(r);
                }
                format!("{r:?}")
            }
            Ok(None) => "not found".to_string(),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "{kind:?} {ns}/{name} was not Ready{} within {limit:?}; last seen: {last}",
                revision.map(|r| format!(" at {r}")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kustomization(ready: &str, observed: i64) -> Value {
        json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "apps", "namespace": "flux-system", "generation": 2},
            "spec": {"interval": "10m", "path": "./apps"},
            "status": {
                "observedGeneration": observed,
                "lastAppliedRevision": "main@sha1:0123abcd",
                "conditions": [
                    {"type": "Healthy", "status": "True", "message": "x"},
                    {"type": "Ready", "status": ready, "reason": "ReconciliationSucceeded",
                     "message": "Applied revision: main@sha1:0123abcd"}
                ]
            }
        })
    }

    #[test]
    fn rows_read_the_ready_condition_of_the_current_spec() {
        let r = row(&kustomization("True", 2));
        assert_eq!(r.name, "apps");
        assert_eq!(r.revision, "main@sha1:0123abcd");
        assert_eq!(r.ready, "True");
        assert_eq!(r.message, "Applied revision: main@sha1:0123abcd");
        assert!(!r.suspended);
        assert!(r.is_ready());
        assert!(
            !row(&kustomization("True", 1)).is_ready(),
            "an older spec's"
        );
        assert!(!row(&kustomization("False", 2)).is_ready());
        let git = json!({"metadata": {"name": "flux-system", "generation": 1},
            "spec": {"suspend": true},
            "status": {"artifact": {"revision": "main@sha1:ff"}}});
        let r = row(&git);
        assert_eq!(
            (r.revision.as_str(), r.ready.as_str()),
            ("main@sha1:ff", "Unknown")
        );
        assert!(r.suspended);
        assert!(!r.is_ready());
    }

    #[test]
    fn the_table_looks_like_flux_get() {
        let rows = vec![
            row(&kustomization("True", 2)),
            Row {
                name: "infrastructure".into(),
                revision: String::new(),
                suspended: false,
                ready: "False".into(),
                message: "dependency 'flux-system/x' is not ready".into(),
                current: true,
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "NAME             REVISION             SUSPENDED   READY   MESSAGE",
                "apps             main@sha1:0123abcd   False       True    Applied revision: main@sha1:0123abcd",
                "infrastructure                        False       False   dependency 'flux-system/x' is not ready",
            ]
        );
    }

    #[test]
    fn kinds_map_to_their_api() {
        let ar = Kind::Kustomization.api_resource();
        assert_eq!(ar.api_version, "kustomize.toolkit.fluxcd.io/v1");
        assert_eq!(ar.plural, "kustomizations");
        assert_eq!(Kind::GitRepository.api_resource().plural, "gitrepositories");
        assert_eq!(Kind::from_name("HelmRelease"), None);
    }
}
