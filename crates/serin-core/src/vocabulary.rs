//! The words a rollout is told in: phases, strategies and webhook types. They live here, beside the
//! decision function, so that the pure core needs no Kubernetes types; `serin-api` re-exports them
//! as parts of the Canary.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How traffic moves during the analysis (`DeploymentStrategy()` in Flagger).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    Canary,
    BlueGreen,
    ABTesting,
}

impl Strategy {
    /// The label value Flagger uses (`deployment_strategy` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::BlueGreen => "blue-green",
            Strategy::ABTesting => "ab-testing",
        }
    }
}

/// When a webhook runs, and what its answer means.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum HookType {
    /// `type: ""`: treated as `rollout`.
    #[serde(rename = "")]
    Unset,
    #[serde(rename = "confirm-rollout")]
    ConfirmRollout,
    #[serde(rename = "pre-rollout")]
    PreRollout,
    #[serde(rename = "rollout")]
    Rollout,
    #[serde(rename = "confirm-promotion")]
    ConfirmPromotion,
    #[serde(rename = "post-rollout")]
    PostRollout,
    #[serde(rename = "event")]
    Event,
    #[serde(rename = "rollback")]
    Rollback,
    #[serde(rename = "confirm-traffic-increase")]
    ConfirmTrafficIncrease,
}

impl HookType {
    pub fn as_str(self) -> &'static str {
        match self {
            HookType::Unset => "",
            HookType::ConfirmRollout => "confirm-rollout",
            HookType::PreRollout => "pre-rollout",
            HookType::Rollout => "rollout",
            HookType::ConfirmPromotion => "confirm-promotion",
            HookType::PostRollout => "post-rollout",
            HookType::Event => "event",
            HookType::Rollback => "rollback",
            HookType::ConfirmTrafficIncrease => "confirm-traffic-increase",
        }
    }
}

/// The analysis phase (`status.phase`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CanaryPhase {
    Initializing,
    Initialized,
    Waiting,
    Progressing,
    WaitingPromotion,
    Promoting,
    Finalising,
    Succeeded,
    Failed,
    Terminating,
    Terminated,
}

impl CanaryPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryPhase::Initializing => "Initializing",
            CanaryPhase::Initialized => "Initialized",
            CanaryPhase::Waiting => "Waiting",
            CanaryPhase::Progressing => "Progressing",
            CanaryPhase::WaitingPromotion => "WaitingPromotion",
            CanaryPhase::Promoting => "Promoting",
            CanaryPhase::Finalising => "Finalising",
            CanaryPhase::Succeeded => "Succeeded",
            CanaryPhase::Failed => "Failed",
            CanaryPhase::Terminating => "Terminating",
            CanaryPhase::Terminated => "Terminated",
        }
    }
}
