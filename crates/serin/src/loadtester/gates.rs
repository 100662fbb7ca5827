//! Gate and rollback-gate state. Flagger keeps it in a map in memory, so a load tester restart
//! silently closes every gate someone opened
//! ([#1344](https://github.com/fluxcd/flagger/issues/1344)). In a cluster serin keeps it in
//! a ConfigMap (one data key per open gate), read at start and on every check.

use std::collections::BTreeSet;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// The value of an open gate's key in the ConfigMap; a closed gate has no key.
pub const OPEN: &str = "open";

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("storing gate {key} in ConfigMap {namespace}/{name} failed: {source}")]
    Store {
        key: String,
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

enum Backend {
    Memory,
    ConfigMap {
        api: Box<Api<ConfigMap>>,
        namespace: String,
        name: String,
    },
}

/// The gates. Without an API server they live in memory only, as in Flagger.
pub struct Gates {
    backend: Backend,
    /// Open gates as last seen; the answer when the API server cannot be read.
    cache: Mutex<BTreeSet<String>>,
}

impl Gates {
    pub fn in_memory() -> Gates {
        Gates {
            backend: Backend::Memory,
            cache: Mutex::new(BTreeSet::new()),
        }
    }

    /// Gates kept in ConfigMap `namespace/name`, which is created when missing. Fails when the
    /// ConfigMap can be neither read nor created (RBAC: get, create and patch on configmaps).
    pub async fn in_config_map(
        client: kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Gates, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let open = match api.get_opt(name).await? {
            Some(cm) => open_keys(&cm),
            None => {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {
                        "name": name,
                        "labels": {"app.kubernetes.io/managed-by": "serin-loadtester"}
                    }
                }))
                .map_err(kube::Error::SerdeError)?;
                match api.create(&PostParams::default(), &cm).await {
                    Ok(_) => BTreeSet::new(),
                    // Another replica created it in the meantime.
                    Err(kube::Error::Api(s)) if s.code == 409 => api
                        .get_opt(name)
                        .await?
                        .map(|cm| open_keys(&cm))
                        .unwrap_or_default(),
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(Gates {
            backend: Backend::ConfigMap {
                api: Box::new(api),
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
            cache: Mutex::new(open),
        })
    }

    /// Where the state lives, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Memory => "in memory".into(),
            Backend::ConfigMap {
                namespace, name, ..
            } => format!("in ConfigMap {namespace}/{name}"),
        }
    }

    pub fn persistent(&self) -> bool {
        matches!(self.backend, Backend::ConfigMap { .. })
    }

    /// Whether gate `key` is open. Reads the ConfigMap, so that gates opened through another
    /// replica count too; when the API server cannot answer, the last state seen decides.
    pub async fn is_open(&self, key: &str) -> bool {
        if let Backend::ConfigMap {
            api,
            namespace,
            name,
        } = &self.backend
        {
            match api.get_opt(name).await {
                Ok(cm) => {
                    let open = cm.as_ref().map(open_keys).unwrap_or_default();
                    *lock(&self.cache) = open;
                }
                Err(e) => tracing::warn!(
                    "reading gates from ConfigMap {namespace}/{name} failed, answering from the last state seen: {e}"
                ),
            }
        }
        lock(&self.cache).contains(key)
    }

    /// Opens or closes gate `key`. Idempotent; a merge patch of the one key, so concurrent
    /// changes of other gates are never lost.
    pub async fn set(&self, key: &str, open: bool) -> Result<(), GateError> {
        if let Backend::ConfigMap {
            api,
            namespace,
            name,
        } = &self.backend
        {
            let err = |source| GateError::Store {
                key: key.to_string(),
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            };
            store(api, name, key, open).await.map_err(err)?;
        }
        let mut cache = lock(&self.cache);
        if open {
            cache.insert(key.to_string());
        } else {
            cache.remove(key);
        }
        Ok(())
    }
}

async fn store(api: &Api<ConfigMap>, name: &str, key: &str, open: bool) -> Result<(), kube::Error> {
    let value = if open { json!(OPEN) } else { json!(null) };
    let patch = json!({"data": {key: value}});
    for _ in 0..3 {
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            // Deleted by someone since the start: create it again with this one gate.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if !open {
                    return Ok(());
                }
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {
                        "name": name,
                        "labels": {"app.kubernetes.io/managed-by": "serin-loadtester"}
                    },
                    "data": {key: OPEN}
                }))
                .map_err(kube::Error::SerdeError)?;
                match api.create(&PostParams::default(), &cm).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

fn open_keys(cm: &ConfigMap) -> BTreeSet<String> {
    cm.data
        .iter()
        .flatten()
        .filter(|(_, v)| v.as_str() == OPEN)
        .map(|(k, _)| k.clone())
        .collect()
}

fn lock(m: &Mutex<BTreeSet<String>>) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_gates_default_to_closed_and_toggle() {
        let g = Gates::in_memory();
        assert!(!g.persistent());
        assert!(!g.is_open("podinfo.test").await);
        g.set("podinfo.test", true).await.unwrap();
        g.set("podinfo.test", true).await.unwrap();
        assert!(g.is_open("podinfo.test").await);
        assert!(!g.is_open("rollback.podinfo.test").await);
        g.set("podinfo.test", false).await.unwrap();
        assert!(!g.is_open("podinfo.test").await);
        g.set("podinfo.test", false).await.unwrap();
        assert!(!g.is_open("podinfo.test").await);
    }

    #[test]
    fn only_open_values_count() {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "g"},
            "data": {"a.ns": "open", "b.ns": "closed", "rollback.a.ns": "open"}
        }))
        .unwrap();
        let keys: Vec<String> = open_keys(&cm).into_iter().collect();
        assert_eq!(keys, vec!["a.ns".to_string(), "rollback.a.ns".to_string()]);
    }
}
