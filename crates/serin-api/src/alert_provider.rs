//! `AlertProvider` (`flagger.app/v1beta1`): where alerts go (Slack, Teams, Discord, Rocket, Google Chat).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::canary::{CanaryCondition, LocalObjectReference};

/// Slack channel when `channel` is unset.
pub const DEFAULT_ALERT_CHANNEL: &str = "general";
/// Bot user name when `username` is unset.
pub const DEFAULT_ALERT_USERNAME: &str = "flagger";

/// A chat webhook. The address comes from `address` or from the secret's `address` key, which wins.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flagger.app",
    version = "v1beta1",
    kind = "AlertProvider",
    plural = "alertproviders",
    singular = "alertprovider",
    namespaced,
    status = "AlertProviderStatus",
    category = "all",
    annotation("helm.sh/resource-policy", "keep"),
    doc = "AlertProvider is the Schema for the AlertProvider API.",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name": "Type", "type": "string", "jsonPath": ".spec.type"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AlertProviderSpec {
    #[serde(rename = "type")]
    pub type_: AlertProviderType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Webhook URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// HTTP(S) proxy URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Secret with key `address` (overrides `address`) and optional `token` (Slack bot token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertProviderType {
    #[default]
    Slack,
    Msteams,
    Discord,
    Rocket,
    Gchat,
}

impl AlertProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertProviderType::Slack => "slack",
            AlertProviderType::Msteams => "msteams",
            AlertProviderType::Discord => "discord",
            AlertProviderType::Rocket => "rocket",
            AlertProviderType::Gchat => "gchat",
        }
    }
}

impl AlertProviderSpec {
    /// Channel (default "general").
    pub fn channel(&self) -> &str {
        match self.channel.as_deref() {
            Some(c) if !c.is_empty() => c,
            _ => DEFAULT_ALERT_CHANNEL,
        }
    }

    /// Bot user name (default "flagger", as users' Slack filters expect).
    pub fn username(&self) -> &str {
        match self.username.as_deref() {
            Some(u) if !u.is_empty() => u,
            _ => DEFAULT_ALERT_USERNAME,
        }
    }
}

/// Not used by Flagger; room for serin's delivery conditions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct AlertProviderStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<CanaryCondition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_and_username_defaults() {
        let mut s = AlertProviderSpec::default();
        assert_eq!((s.channel(), s.username()), ("general", "flagger"));
        s.channel = Some("ops".into());
        s.username = Some(String::new());
        assert_eq!((s.channel(), s.username()), ("ops", "flagger"));
    }
}
