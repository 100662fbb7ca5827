//! Helpers of tests/alerts.rs: loopback HTTP receivers standing in for the chat services, and a
//! `serin controller` started with extra flags (the global notifier).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::Value;
use serin_sandbox::testenv::{SharedEnv, eventually};

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Got {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// An HTTP server on 127.0.0.1 that records every request and answers with a settable status.
pub struct Receiver {
    pub name: String,
    pub base: String,
    got: Arc<Mutex<Vec<Got>>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(name: &str, status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback receiver");
        let addr = listener.local_addr().expect("receiver address");
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let (g, s) = (got.clone(), status.clone());
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                g.lock().unwrap().push(Got {
                    path: uri.path().to_string(),
                    authorization: headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from),
                    body,
                });
                let code = s.load(Ordering::SeqCst);
                (
                    StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
                    format!("receiver answers {code}"),
                )
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            name: name.into(),
            base: format!("http://{addr}"),
            got,
            status,
            task,
        }
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits for a request that `pick` accepts and returns it.
    pub async fn wait_for(&self, what: &str, pick: impl Fn(&Got) -> bool) -> Got {
        let what = format!("{} receives {what}", self.name);
        eventually(&what, Duration::from_secs(150), || {
            let found = self.got().into_iter().find(|g| pick(g));
            let seen = self.got().len();
            async move { found.ok_or_else(|| format!("{seen} other requests")) }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `serin controller` for one namespace with extra flags; killed when dropped.
pub struct Controller {
    child: Option<Child>,
    pub log: PathBuf,
    pub metrics_url: String,
}

impl Controller {
    pub fn spawn(env: &SharedEnv, ns: &str, extra: &[&str]) -> Controller {
        let port = serin_sandbox::free_ports(1).expect("a free port")[0];
        let log = env.logs_dir().join(format!("controller-{ns}-alerts.log"));
        let mut cmd = crate::support::serin_command(&log);
        cmd.args(["controller", "--kubeconfig"])
            .arg(env.kubeconfig_path())
            .args(["--namespace", ns, "--metrics-server", env.prometheus_url()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            // The global notifier comes from the flags only, not from the test runner's env.
            .env_remove("SLACK_URL")
            .env_remove("MSTEAMS_URL");
        let child = cmd.spawn().expect("starting serin controller");
        Controller {
            child: Some(child),
            log,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
