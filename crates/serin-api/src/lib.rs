//! The Flagger-compatible API: Canary, MetricTemplate and AlertProvider (`flagger.app/v1beta1`),
//! their CRDs, defaults, and the checks a schema cannot express.

pub mod alert_provider;
pub mod canary;
pub mod crd;
mod duration;
pub mod istio;
pub mod istio_resources;
pub mod lint;
pub mod metric_template;
pub mod schema;
mod schema_helpers;
pub mod validate;

pub use alert_provider::{
    AlertProvider, AlertProviderSpec, AlertProviderStatus, AlertProviderType,
    DEFAULT_ALERT_CHANNEL, DEFAULT_ALERT_USERNAME,
};
pub use canary::*;
pub use duration::{InvalidDuration, parse_go_duration};
pub use metric_template::{
    MetricProviderType, MetricTemplate, MetricTemplateProvider, MetricTemplateSpec,
    MetricTemplateStatus,
};
pub use validate::{
    Problem, Severity, validate, validate_alert_provider, validate_canary, validate_metric_template,
};

/// The API group and version of every kind here.
pub const API_VERSION: &str = "flagger.app/v1beta1";
pub const GROUP: &str = "flagger.app";
