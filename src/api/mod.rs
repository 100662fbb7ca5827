//! The Flagger-compatible API: Canary, MetricTemplate and AlertProvider (`flagger.app/v1beta1`),
//! their CRDs, defaults, and the checks a schema cannot express.

pub mod crd;
pub mod lint;
