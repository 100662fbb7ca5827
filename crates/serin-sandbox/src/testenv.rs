//! One sandbox per test binary, shared by its tests.
//!
//! `cargo test` runs each test binary as one process and each `#[tokio::test]` on its own
//! runtime, so the environment is started once, on a thread and runtime of its own, and lives in
//! a static. Statics are never dropped: its processes die with the test process through
//! `PR_SET_PDEATHSIG`, and its temporary directory is removed by the next sandbox's stale-dir
//! sweep. Tests isolate themselves with [`SharedEnv::namespace`].

use std::ops::Deref;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

use super::environment::{Sandbox, SandboxOptions, random_hex};

/// Label on every namespace [`SharedEnv::namespace`] creates.
pub const TEST_LABEL: &str = "serin.dev/test";

/// The per-binary sandbox. Derefs to [`Sandbox`].
pub struct SharedEnv {
    sandbox: Sandbox,
    flux: tokio::sync::OnceCell<crate::flux::Flux>,
}

impl Deref for SharedEnv {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

/// The shared sandbox, started on first use. Panics with the reason if it cannot start (for
/// example "run `serin-sandbox setup` first"): tests that need it fail, never skip.
pub fn shared() -> &'static SharedEnv {
    static ENV: OnceLock<Result<SharedEnv, String>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new()
            .name("serin-testenv".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot build a runtime: {e}"))
                    .and_then(|rt| {
                        rt.block_on(Sandbox::start(SandboxOptions::default()))
                            .map_err(|e| e.to_string())
                    });
                let _ = tx.send(result);
            });
        if let Err(e) = started {
            return Err(format!("cannot start the test environment thread: {e}"));
        }
        match rx.recv() {
            Ok(Ok(sandbox)) => {
                eprintln!(
                    "serin test sandbox ready in {:.1} s: {} (logs in {})",
                    sandbox.startup_time().as_secs_f64(),
                    sandbox.api_url(),
                    sandbox.logs_dir().display()
                );
                Ok(SharedEnv {
                    sandbox,
                    flux: tokio::sync::OnceCell::new(),
                })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the test environment thread died".into()),
        }
    });
    match env {
        Ok(env) => env,
        Err(e) => panic!("the serin test sandbox could not start: {e}"),
    }
}

impl SharedEnv {
    /// Flux on this binary's sandbox, started by the first test that asks (the others do not
    /// pay for it). Panics if it cannot start.
    pub async fn flux(&self) -> &crate::flux::Flux {
        let started = self
            .flux
            .get_or_try_init(|| crate::flux::Flux::start(&self.sandbox))
            .await;
        match started {
            Ok(f) => f,
            Err(e) => panic!("Flux could not start on the test sandbox: {e}"),
        }
    }

    /// Creates a namespace `PREFIX-XXXXXX` labelled `serin.dev/test=true` and waits until pods
    /// can be created in it (its default service account exists). Panics on failure.
    pub async fn namespace(&self, prefix: &str) -> String {
        namespace(&self.sandbox, prefix).await
    }
}

/// [`SharedEnv::namespace`] in any sandbox, such as a test's private one.
pub async fn namespace(sandbox: &Sandbox, prefix: &str) -> String {
    let client = sandbox.client();
    let name = format!("{prefix}-{}", random_hex(6));
    let ns: Namespace = match serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {TEST_LABEL: "true"}}
    })) {
        Ok(ns) => ns,
        Err(e) => panic!("namespace object: {e}"),
    };
    let api: Api<Namespace> = Api::all(client.clone());
    if let Err(e) = api.create(&PostParams::default(), &ns).await {
        panic!("creating test namespace {name}: {e}");
    }
    let sa: Api<ServiceAccount> = Api::namespaced(client, &name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Pods are refused until the controller manager made the default service account.
        if let Ok(Some(_)) = sa.get_opt("default").await {
            return name;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("namespace {name}: no default service account after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `probe` every 100 ms until it returns `Ok`, and panics with its last `Err` (the state it
/// saw) after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(state) => state,
        };
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: still not the case after {limit:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
