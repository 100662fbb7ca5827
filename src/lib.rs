//! serin: progressive delivery for Kubernetes, speaking Flagger's API (`flagger.app/v1beta1`) on Istio.
//!
//! The crate is one library with a thin binary on top (`src/main.rs`), so that the tests and the
//! sandbox demo drive exactly the code the controller runs.

pub mod alerts;
pub mod api;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod gitops;
pub mod hooks;
pub mod loadtester;
pub mod metrics;
pub mod rollout;
pub mod router;
pub mod sandbox;
pub mod telemetry;
pub mod workload;
