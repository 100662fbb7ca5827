//! Helpers of tests/leader.rs: `serin controller --leader-elect` processes with their own
//! identity, their `/metrics`, and the Lease.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use serin_sandbox::testenv::{SharedEnv, eventually};

pub const LEASE: &str = "serin-leader";

/// A controller candidate; SIGKILLed when dropped.
pub struct Candidate {
    child: Option<Child>,
    status: Option<ExitStatus>,
    pub identity: String,
    pub log: PathBuf,
}

impl Candidate {
    /// Short timings so that a takeover happens within seconds: lease 4 s, renew deadline 3 s.
    pub fn spawn(env: &SharedEnv, ns: &str, identity: &str) -> Self {
        let log = env
            .logs_dir()
            .join(format!("controller-{ns}-{identity}.log"));
        let mut cmd = crate::support::serin_command(&log);
        cmd.args(["controller", "--kubeconfig"])
            .arg(env.kubeconfig_path())
            .args(["--namespace", ns, "--metrics-server", env.prometheus_url()])
            .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
            .args(["--leader-elect", "--leader-elect-namespace", ns])
            .args(["--leader-elect-lease-duration", "4s"])
            .args(["--leader-elect-renew-deadline", "3s"])
            .args(["--leader-elect-retry-period", "500ms"])
            .env("POD_NAME", identity);
        let child = cmd.spawn().expect("starting serin controller");
        Candidate {
            child: Some(child),
            status: None,
            identity: identity.into(),
            log,
        }
    }

    /// SIGKILL, as a node failure would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.status = c.wait().ok();
        }
    }

    /// The exit status once the process has ended by itself (or was killed).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(s)) = c.try_wait()
        {
            self.status = Some(s);
            self.child = None;
        }
        self.status
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port `--listen 127.0.0.1:0` bound, from the log line the server writes.
    pub async fn addr(&self) -> String {
        let log = self.log.clone();
        eventually(
            &format!("{} serving /metrics", self.identity),
            Duration::from_secs(30),
            || {
                let log = log.clone();
                async move {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let marker = "serving /metrics, /healthz and /readyz on ";
                    text.lines()
                        .find_map(|l| l.split_once(marker).map(|(_, a)| a.trim().to_string()))
                        .ok_or_else(|| "no address logged yet".to_string())
                }
            },
        )
        .await
    }

    /// (status code, body) of GET `path`.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.addr().await);
        let resp = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let code = resp.status().as_u16();
        (code, resp.text().await.unwrap_or_default())
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of the series `name{labels…}` (labels in any order; others may be present).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.split(',').any(|p| p == format!("{k}=\"{v}\"")));
        if all { value.parse().ok() } else { None }
    })
}

pub async fn lease(client: &Client, ns: &str) -> Option<Lease> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    api.get_opt(LEASE).await.expect("reading the Lease")
}

pub async fn holder(client: &Client, ns: &str) -> Option<String> {
    lease(client, ns)
        .await
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Waits until `identity` holds the Lease.
pub async fn wait_holder(client: &Client, ns: &str, identity: &str, limit: Duration) {
    eventually(&format!("{identity} holds the Lease"), limit, || async {
        match holder(client, ns).await {
            Some(h) if h == identity => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await
}
