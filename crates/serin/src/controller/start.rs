//! Start-up of `serin controller` around the controller proper: the `/metrics` server first, the
//! Kubernetes client with the error-counting and write-fencing layer, and, with `--leader-elect`,
//! standing by until the Lease is held.
//!
//! A standby serves `/metrics` (`serin_leader 0`), `/healthz` and `/readyz` (ready), and starts no
//! watches and no controller. A leader that loses the Lease has its writes refused from the renew
//! deadline on (the gate in [`super::api_layer`]), drops the controller at once, and this returns
//! an error, so the process exits non-zero and Kubernetes restarts it as a standby (what
//! controller-runtime does). A clean stop (SIGTERM) finishes in-flight reconciles, then releases
//! the Lease so that a standby takes over without waiting a lease duration.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kube::Client;
use kube::client::ClientBuilder;
use tracing::{error, info};

use super::api_layer::ApiLayer;
use super::leader::{Elector, WriteGate};
use super::{Options, run_with};
use crate::telemetry::Metrics;

/// Runs `serin controller` from a client configuration until `shutdown` completes (or, with
/// leader election, until the Lease is lost: then it returns an error).
pub async fn run_with_config(
    config: kube::Config,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let gate = match &opts.leader {
        Some(l) => {
            l.validate().map_err(|e| anyhow::anyhow!(e))?;
            WriteGate::fenced()
        }
        None => WriteGate::open(),
    };
    let layer = ApiLayer::new(metrics.ops.api_errors.clone(), gate.clone());
    let client = ClientBuilder::try_from(config.clone())?
        .with_layer(&layer)
        .build();
    let server = opts.listen.map(|addr| {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::telemetry::serve(addr, m).await {
                error!("serving /metrics on {addr}: {e}");
            }
        })
    });
    let inner = Options {
        listen: None,
        ..opts.clone()
    };
    let result = match opts.leader.clone() {
        None => {
            metrics.ops.leader.set(1);
            run_with(client, inner, metrics.clone(), shutdown).await
        }
        Some(lo) => {
            let health = metrics.ops.health.clone();
            health.leader_elect.store(true, Ordering::Release);
            metrics.ops.leader.set(0);
            // The Lease's own client is not fenced: renewing is how the gate opens.
            let lease_client = Client::try_from(config)?;
            let mut elector = Elector::new(lease_client, lo.clone(), gate);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            });
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            info!(
                lease = %format!("{}/{}", lo.namespace, lo.name),
                identity = %lo.identity,
                "leader election on: waiting for the Lease"
            );
            let acquired = tokio::select! {
                _ = elector.acquire() => true,
                _ = stopped(stop_rx.clone()) => false,
            };
            if acquired {
                metrics.ops.leader.set(1);
                health.leading.store(true, Ordering::Release);
                let outcome = tokio::select! {
                    lost = elector.hold() => Err(lost),
                    r = run_with(client, inner, metrics.clone(), stopped(stop_rx)) => Ok(r),
                };
                metrics.ops.leader.set(0);
                health.leading.store(false, Ordering::Release);
                match outcome {
                    Ok(r) => {
                        elector.release().await;
                        r
                    }
                    Err(lost) => {
                        error!("lost leadership: {lost}; stopping so that a standby takes over");
                        Err(anyhow::anyhow!(
                            "lost leadership: {lost} (exiting; restarted, this process stands by)"
                        ))
                    }
                }
            } else {
                Ok(())
            }
        }
    };
    if let Some(s) = server {
        s.abort();
    }
    result
}
