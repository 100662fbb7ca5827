//! `analysis.alerts[]` entry → AlertProvider → [`Destination`].
//!
//! AlertProviders are read with a GET when an alert is due, not from a watch cache: alerts come a
//! handful per rollout, so a GET costs less than a watch connection and a cache of every provider
//! held for the controller's lifetime, and it always sees the provider as it is now. Secrets come
//! from the controller's Secret cache, which already exists for config tracking; a miss (for
//! example a provider in a namespace the controller does not watch) falls back to a GET.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Destination, payload};
use crate::api::{AlertProviderSpec, CanaryAlert};

const TYPES: [&str; 5] = ["slack", "msteams", "discord", "rocket", "gchat"];

fn text(
    data: &Option<std::collections::BTreeMap<String, k8s_openapi::ByteString>>,
    key: &str,
) -> Option<String> {
    data.as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// An alert that cannot be sent until someone fixes its provider. The text names the alert, the
/// field and the fix; it goes into a Warning Event on the Canary.
#[derive(Debug, thiserror::Error)]
#[error("{who}: {problem}")]
pub struct ResolveError {
    /// `alert "name" (analysis.alerts[i])`.
    pub who: String,
    pub problem: Problem,
}

/// What is wrong with an alert's provider; `provider` is `AlertProvider ns/name`.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("{provider} not found: create it, or fix {field}.providerRef")]
    ProviderNotFound { provider: String, field: String },
    #[error("reading {provider}: {source}")]
    ReadProvider {
        provider: String,
        source: kube::Error,
    },
    #[error(
        "{provider} has spec.type {kind:?}, which serin does not support: use one of {types}",
        types = TYPES.join(", ")
    )]
    UnsupportedType { provider: String, kind: String },
    #[error("{provider} has an invalid spec: {source}")]
    InvalidSpec {
        provider: String,
        source: serde_json::Error,
    },
    #[error("reading Secret {namespace}/{secret} of {provider}: {source}")]
    ReadSecret {
        namespace: String,
        secret: String,
        provider: String,
        source: kube::Error,
    },
    #[error(
        "Secret {namespace}/{secret} named by {provider} spec.secretRef not found: create it with the key `address` (and optionally `token`)"
    )]
    SecretNotFound {
        namespace: String,
        secret: String,
        provider: String,
    },
    #[error(
        "Secret {namespace}/{secret} of {provider} has no key `address` and spec.address is unset: add the webhook URL under the key `address`"
    )]
    SecretWithoutAddress {
        namespace: String,
        secret: String,
        provider: String,
    },
    #[error("{provider} has neither spec.address nor spec.secretRef: set one of them")]
    NoAddress { provider: String },
    #[error("{provider} address: {source}: use the chat service's webhook URL")]
    BadAddress {
        provider: String,
        source: payload::InvalidUrl,
    },
}

/// Resolves entry `index` of `analysis.alerts`.
pub async fn destination(
    client: &kube::Client,
    secrets: &Store<Secret>,
    canary_ns: &str,
    index: usize,
    entry: &CanaryAlert,
) -> Result<Destination, ResolveError> {
    let ns = entry.provider_ref.namespace_or(canary_ns).to_string();
    let name = entry.provider_ref.name.clone();
    let field = format!("analysis.alerts[{index}]");
    let who = format!("alert {:?} ({field})", entry.name);
    let provider = format!("AlertProvider {ns}/{name}");
    let fail = |problem: Problem| ResolveError {
        who: who.clone(),
        problem,
    };

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("flagger.app", "v1beta1", "AlertProvider"),
        "alertproviders",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let obj = match api.get_opt(&name).await {
        Ok(Some(o)) => o,
        Ok(None) => {
            return Err(fail(Problem::ProviderNotFound { provider, field }));
        }
        Err(source) => return Err(fail(Problem::ReadProvider { provider, source })),
    };
    let spec_json = obj.data.get("spec").cloned().unwrap_or_default();
    let kind = spec_json.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if !TYPES.contains(&kind) {
        return Err(fail(Problem::UnsupportedType {
            provider,
            kind: kind.to_string(),
        }));
    }
    let spec: AlertProviderSpec = match serde_json::from_value(spec_json) {
        Ok(s) => s,
        Err(source) => return Err(fail(Problem::InvalidSpec { provider, source })),
    };

    let mut address = spec.address.clone().filter(|a| !a.trim().is_empty());
    let mut token = None;
    if let Some(sref) = &spec.secret_ref {
        let key = ObjectRef::<Secret>::new(&sref.name).within(&ns);
        let secret = match secrets.get(&key) {
            Some(s) => Some((*s).clone()),
            None => {
                let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
                match api.get_opt(&sref.name).await {
                    Ok(s) => s,
                    Err(source) => {
                        return Err(fail(Problem::ReadSecret {
                            namespace: ns,
                            secret: sref.name.clone(),
                            provider,
                            source,
                        }));
                    }
                }
            }
        };
        let Some(secret) = secret else {
            return Err(fail(Problem::SecretNotFound {
                namespace: ns,
                secret: sref.name.clone(),
                provider,
            }));
        };
        if let Some(a) = text(&secret.data, "address") {
            address = Some(a);
        }
        token = text(&secret.data, "token");
        if address.is_none() {
            return Err(fail(Problem::SecretWithoutAddress {
                namespace: ns,
                secret: sref.name.clone(),
                provider,
            }));
        }
    }
    let Some(address) = address.map(|a| a.trim().to_string()) else {
        return Err(fail(Problem::NoAddress { provider }));
    };
    if let Err(source) = payload::url(spec.type_, &address) {
        return Err(fail(Problem::BadAddress { provider, source }));
    }
    Ok(Destination {
        kind: spec.type_,
        address,
        token,
        proxy: spec.proxy.clone().filter(|p| !p.trim().is_empty()),
        channel: spec.channel().to_string(),
        username: spec.username().to_string(),
        origin: provider,
    })
}
