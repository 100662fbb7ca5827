//! The local control plane: real etcd, kube-apiserver, kube-controller-manager and Prometheus as
//! plain processes on loopback, plus a simulated kubelet. Used by `serin sandbox`, the tests and
//! the demo.

pub mod mesh;
pub mod setup;

use std::path::PathBuf;

/// Options of `serin sandbox up`.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Where kubeconfig, env, logs and data go; a fresh temporary directory when unset.
    pub dir: Option<PathBuf>,
}

/// `serin sandbox up`: starts everything, prints a summary, and runs until interrupted.
pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    let _ = opts;
    anyhow::bail!("serin sandbox up is not implemented yet")
}

/// `serin sandbox down --dir DIR`: stops a sandbox started by another `serin sandbox up`.
pub async fn down(dir: PathBuf) -> anyhow::Result<()> {
    let _ = dir;
    anyhow::bail!("serin sandbox down is not implemented yet")
}
