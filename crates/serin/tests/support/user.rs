//! What a user does from a shell: `kubectl apply --server-side -f` of the YAML files under
//! `tests/e2e/`, releases as the same file with a new image tag, and a confirm gate (the load
//! tester's `/gate/check`) served on loopback.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;

/// A manifest of `tests/e2e/`.
pub fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(rel)
}

/// Runs `kubectl ARGS` with the sandbox's kubeconfig in namespace `ns`, `stdin` on its input;
/// panics with kubectl's output when it fails.
pub async fn kubectl(kubeconfig: &Path, ns: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = tokio::process::Command::new(serin_sandbox::kubectl());
    cmd.env("KUBECONFIG", kubeconfig)
        .arg("--namespace")
        .arg(ns)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("kubectl (install kubectl)");
    if let Some(text) = stdin {
        let mut input = child.stdin.take().expect("kubectl stdin");
        input
            .write_all(text.as_bytes())
            .await
            .expect("kubectl stdin");
        drop(input);
    }
    let out = child.wait_with_output().await.expect("kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubectl {} failed ({}): {text}",
        args.join(" "),
        out.status
    );
    text
}

/// The text of a manifest with each `(from, to)` replaced; each `from` must occur, so a test
/// never applies an unchanged file by mistake.
pub fn edited(rel: &str, edits: &[(&str, &str)]) -> String {
    let path = manifest(rel);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "{} does not contain {from:?}",
            path.display()
        );
        text = text.replace(from, to);
    }
    text
}

/// `kubectl apply --server-side -f -` of a manifest with `edits` (as [`edited`]).
pub async fn apply(kubeconfig: &Path, ns: &str, rel: &str, edits: &[(&str, &str)]) {
    let text = edited(rel, edits);
    kubectl(
        kubeconfig,
        ns,
        &["apply", "--server-side", "-f", "-"],
        Some(&text),
    )
    .await;
}

/// A confirm gate on 127.0.0.1: `POST /<anything>` answers 200 "Approved" while open, 403
/// "Forbidden" while closed (the load tester's `/gate/check`). Stops when dropped.
pub struct Gate {
    pub url: String,
    open: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn closed() -> Gate {
        let open = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let (o, c) = (open.clone(), calls.clone());
        let app = axum::Router::new().fallback(move || {
            let (o, c) = (o.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if o.load(Ordering::SeqCst) {
                    (axum::http::StatusCode::OK, "Approved")
                } else {
                    (axum::http::StatusCode::FORBIDDEN, "Forbidden")
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("gate listener");
        let addr = listener.local_addr().expect("gate address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Gate {
            url: format!("http://{addr}/gate/check"),
            open,
            calls,
            task,
        }
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// How many times serin asked.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
