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

/// Resolves entry `index` of `analysis.alerts`. The error names the field and the fix; it goes
/// into a Warning Event on the Canary.
pub async fn destination(
    client: &kube::Client,
    secrets: &Store<Secret>,
    canary_ns: &str,
    index: usize,
    entry: &CanaryAlert,
) -> Result<Destination, String> {
    let ns = entry.provider_ref.namespace_or(canary_ns).to_string();
    let name = entry.provider_ref.name.clone();
    let field = format!("analysis.alerts[{index}]");
    let who = format!("alert {:?} ({field})", entry.name);
    let provider = format!("AlertProvider {ns}/{name}");

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("flagger.app", "v1beta1", "AlertProvider"),
        "alertproviders",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let obj = match api.get_opt(&name).await {
        Ok(Some(o)) => o,
        Ok(None) => {
            return Err(format!(
                "{who}: {provider} not found: create it, or fix {field}.providerRef"
            ));
        }
        Err(e) => return Err(format!("{who}: reading {provider}: {e}")),
    };
    let spec_json = obj.data.get("spec").cloned().unwrap_or_default();
    let kind = spec_json.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if !TYPES.contains(&kind) {
        return Err(format!(
            "{who}: {provider} has spec.type {kind:?}, which serin does not support: use one of {}",
            TYPES.join(", ")
        ));
    }
    let spec: AlertProviderSpec = serde_json::from_value(spec_json)
        .map_err(|e| format!("{who}: {provider} has an invalid spec: {e}"))?;

    let mut address = spec.address.clone().filter(|a| !a.trim().is_empty());
    let mut token = None;
    if let Some(sref) = &spec.secret_ref {
        let key = ObjectRef::<Secret>::new(&sref.name).within(&ns);
        let secret = match secrets.get(&key) {
            Some(s) => Some((*s).clone()),
            None => {
                let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
                api.get_opt(&sref.name).await.map_err(|e| {
                    format!(
                        "{who}: reading Secret {ns}/{} of {provider}: {e}",
                        sref.name
                    )
                })?
            }
        };
        let Some(secret) = secret else {
            return Err(format!(
                "{who}: Secret {ns}/{} named by {provider} spec.secretRef not found: create it with the key `address` (and optionally `token`)",
                sref.name
            ));
        };
        if let Some(a) = text(&secret.data, "address") {
            address = Some(a);
        }
        token = text(&secret.data, "token");
        if address.is_none() {
            return Err(format!(
                "{who}: Secret {ns}/{} of {provider} has no key `address` and spec.address is unset: add the webhook URL under the key `address`",
                sref.name
            ));
        }
    }
    let Some(address) = address.map(|a| a.trim().to_string()) else {
        return Err(format!(
            "{who}: {provider} has neither spec.address nor spec.secretRef: set one of them"
        ));
    };
    payload::url(spec.type_, &address).map_err(|e| {
        format!("{who}: {provider} address: {e}: use the chat service's webhook URL")
    })?;
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
