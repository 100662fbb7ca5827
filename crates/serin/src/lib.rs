//! serin: progressive delivery for Kubernetes, speaking Flagger's API (`flagger.app/v1beta1`) on Istio.
//!
//! The crate is one library with a thin binary on top (`src/main.rs`), so that the tests and the
//! sandbox demo drive exactly the code the controller runs.

pub mod alerts;
pub mod cli;
pub mod controller;
pub mod hooks;
pub mod loadtester;
pub mod metrics;
pub mod relative;
pub mod router;
pub mod telemetry;
pub mod workload;

/// The API types, from `serin-api`, under the name the modules have always used.
pub use serin_api as api;
/// The pure rollout decision, from `serin-core`.
pub use serin_core as rollout;
