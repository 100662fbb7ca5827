//! `serin loadtester`: flagger-loadtester's HTTP API (docs/flagger-contract.md §6.2), so webhooks
//! written for `http://flagger-loadtester.test/` work unchanged when pointed at it. Gates survive a
//! restart when an API server is at hand (see [`gates`]); Flagger loses them
//! ([#1344](https://github.com/fluxcd/flagger/issues/1344)).

pub mod gates;
pub mod tasks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;

pub use gates::Gates;
use tasks::{Outcome, Runner, Start};

/// Flagger's default command timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The webhook payload as the load tester reads it; absent fields are empty, as in Go.
#[derive(Debug, Default, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Payload {
    fn canary(&self) -> String {
        format!(
            "{}.{}",
            self.name.as_deref().unwrap_or_default(),
            self.namespace.as_deref().unwrap_or_default()
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    r#type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GateLabels {
    gate: String,
    action: String,
}

struct Metrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    gates: Family<GateLabels, Counter>,
    running: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let tasks = Family::<TaskLabels, Counter>::default();
        registry.register(
            "serin_loadtester_tasks",
            "Tasks by type and outcome (success, failure, skipped: already running)",
            tasks.clone(),
        );
        let gates = Family::<GateLabels, Counter>::default();
        registry.register(
            "serin_loadtester_gate_requests",
            "Gate requests by gate (gate, rollback) and action (check, open, close)",
            gates.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "serin_loadtester_running_tasks",
            "Background cmd tasks running now",
            running.clone(),
        );
        Metrics {
            registry,
            tasks,
            gates,
            running,
        }
    }

    fn task(&self, kind: &str, outcome: &str) {
        self.tasks
            .get_or_create(&TaskLabels {
                r#type: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

/// Settings of one load tester.
#[derive(Clone, Debug)]
pub struct Options {
    /// Timeout of every command.
    pub timeout: Duration,
    /// Tasks are run only for payload namespaces this matches (unanchored, as Go's MatchString).
    pub namespace_regexp: Option<regex::Regex>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: DEFAULT_TIMEOUT,
            namespace_regexp: None,
        }
    }
}

/// The state behind the handlers.
pub struct LoadTester {
    opts: Options,
    gates: Gates,
    runner: Arc<Runner>,
    metrics: Arc<Metrics>,
}

impl LoadTester {
    pub fn new(opts: Options, gates: Gates) -> Arc<LoadTester> {
        Arc::new(LoadTester {
            opts,
            gates,
            runner: Arc::new(Runner::default()),
            metrics: Arc::new(Metrics::new()),
        })
    }

    pub fn gates(&self) -> &Gates {
        &self.gates
    }

    /// Kills the running background commands.
    pub fn stop_tasks(&self) {
        self.runner.kill_all();
    }
}

/// The HTTP API. Paths match exactly, any method, as with Go's ServeMux; every other path runs a
/// task.
pub fn router(lt: Arc<LoadTester>) -> Router {
    Router::new()
        .route("/healthz", any(|| async { (StatusCode::OK, "OK") }))
        .route("/metrics", any(metrics))
        .route("/gate/approve", any(|| async { (StatusCode::OK, "OK") }))
        .route(
            "/gate/halt",
            any(|| async { (StatusCode::FORBIDDEN, "Forbidden") }),
        )
        .route(
            "/gate/check",
            any(|s: State<Arc<LoadTester>>, b: Bytes| gate(s, b, Gate::Confirm, Action::Check)),
        )
        .route(
            "/gate/open",
            any(|s: State<Arc<LoadTester>>, b: Bytes| gate(s, b, Gate::Confirm, Action::Open)),
        )
        .route(
            "/gate/close",
            any(|s: State<Arc<LoadTester>>, b: Bytes| gate(s, b, Gate::Confirm, Action::Close)),
        )
        .route(
            "/rollback/check",
            any(|s: State<Arc<LoadTester>>, b: Bytes| gate(s, b, Gate::Rollback, Action::Check)),
        )
        .route(
            "/rollback/open",
            any(|s: State<Arc<LoadTester>>, b: Bytes| gate(s, b, Gate::Rollback, Action::Open)),
        )
        .route(
            "/rollback/close",
            any(|s: State<Arc<LoadTester>>, b: Bytes| gate(s, b, Gate::Rollback, Action::Close)),
        )
        .fallback(task)
        .with_state(lt)
}

/// Serves the API on `listener` until `shutdown` resolves, then kills the running commands.
pub async fn serve(
    listener: tokio::net::TcpListener,
    lt: Arc<LoadTester>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(lt.clone());
    let stopping = lt.clone();
    // Kill the commands at the signal: a blocking task's request would otherwise hold the
    // graceful shutdown for up to --timeout.
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: stopping the running commands");
        stopping.stop_tasks();
    };
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    lt.stop_tasks();
    result
}

/// Binds `addr` and serves (the `serin loadtester` command).
pub async fn run(
    addr: SocketAddr,
    lt: Arc<LoadTester>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {addr}: {e}"))?;
    tracing::info!(
        "serin loadtester listening on {}, gates {}",
        listener.local_addr().unwrap_or(addr),
        lt.gates.describe()
    );
    serve(listener, lt, shutdown).await?;
    tracing::info!("HTTP server stopped");
    Ok(())
}

async fn metrics(State(lt): State<Arc<LoadTester>>) -> Response {
    lt.metrics.running.set(lt.runner.running() as i64);
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &lt.metrics.registry);
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response()
}

#[derive(Clone, Copy)]
enum Gate {
    Confirm,
    Rollback,
}

#[derive(Clone, Copy)]
enum Action {
    Check,
    Open,
    Close,
}

fn decode(body: &[u8]) -> Result<Payload, (StatusCode, String)> {
    serde_json::from_slice(body).map_err(|e| {
        tracing::error!("decoding the request body failed: {e}");
        (
            StatusCode::BAD_REQUEST,
            format!("decoding the request body failed: {e}"),
        )
    })
}

async fn gate(State(lt): State<Arc<LoadTester>>, body: Bytes, g: Gate, a: Action) -> Response {
    let payload = match decode(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (key, label) = match g {
        Gate::Confirm => (payload.canary(), "gate"),
        Gate::Rollback => (format!("rollback.{}", payload.canary()), "rollback"),
    };
    let action = match a {
        Action::Check => "check",
        Action::Open => "open",
        Action::Close => "close",
    };
    lt.metrics
        .gates
        .get_or_create(&GateLabels {
            gate: label.into(),
            action: action.into(),
        })
        .inc();
    match a {
        Action::Check => {
            let approved = lt.gates.is_open(&key).await;
            tracing::info!("{key} {label} check: approved {approved}");
            if approved {
                (StatusCode::OK, "Approved").into_response()
            } else {
                (StatusCode::FORBIDDEN, "Forbidden").into_response()
            }
        }
        Action::Open | Action::Close => {
            let open = matches!(a, Action::Open);
            match lt.gates.set(&key, open).await {
                Ok(()) => {
                    let what = if open { "opened" } else { "closed" };
                    tracing::info!("{key} {label} {what}");
                    StatusCode::ACCEPTED.into_response()
                }
                Err(e) => {
                    tracing::error!("{e}");
                    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                }
            }
        }
    }
}

/// Go's strconv.ParseBool; anything else is false, as Flagger ignores the parse error.
fn parse_bool(s: Option<&String>) -> bool {
    matches!(
        s.map(String::as_str),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

/// What a `/` request asks for, read from its body before anything runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskRequest {
    /// `cmd`: `sh -c command` in the background, answered 202 at once.
    Background {
        canary: String,
        command: String,
        log_output: bool,
    },
    /// `bash`, `helm`, `helmv3`, `kubectl`: run `program args` and answer when it ends.
    Blocking {
        kind: String,
        program: &'static str,
        args: Vec<String>,
        canary: String,
        command: String,
        return_output: bool,
    },
}

/// Reads a task request (a webhook payload from anyone who can reach the port) into what to
/// run, or the answer refusing it. Pure and separate from running, so that what a body can make
/// the load tester do is fuzzed without running anything (fuzz/).
pub fn parse_task(body: &[u8], opts: &Options) -> Result<TaskRequest, (StatusCode, String)> {
    let payload = decode(body)?;
    let namespace = payload.namespace.as_deref().unwrap_or_default();
    if let Some(re) = &opts.namespace_regexp
        && !re.is_match(namespace)
    {
        tracing::warn!("refused a task for namespace {namespace:?}: outside --namespace-regexp");
        return Err((
            StatusCode::FORBIDDEN,
            format!("namespace {namespace} is not allowed by --namespace-regexp {re}"),
        ));
    }
    let metadata = match &payload.metadata {
        Some(m) if !m.is_empty() => m,
        _ => {
            return Err((
                StatusCode::BAD_REQUEST,
                "metadata not found in payload".into(),
            ));
        }
    };
    let kind = metadata.get("type").map_or("cmd", String::as_str);
    let canary = payload.canary();
    let return_output = parse_bool(metadata.get("returnCmdOutput"));
    let command = metadata.get("cmd").cloned().unwrap_or_default();
    match kind {
        "cmd" => {
            if !metadata.contains_key("cmd") {
                return Err((StatusCode::BAD_REQUEST, "cmd not found in metadata".into()));
            }
            Ok(TaskRequest::Background {
                canary,
                command,
                log_output: parse_bool(metadata.get("logCmdOutput")),
            })
        }
        "bash" => Ok(TaskRequest::Blocking {
            kind: kind.into(),
            program: "bash",
            args: vec!["-c".to_string(), command.clone()],
            canary,
            command,
            return_output,
        }),
        "helm" | "helmv3" | "kubectl" => Ok(TaskRequest::Blocking {
            kind: kind.into(),
            program: if kind == "kubectl" { "kubectl" } else { "helm" },
            args: command.split_whitespace().map(String::from).collect(),
            canary,
            command,
            return_output,
        }),
        "concord" | "ngrinder" => Err((
            StatusCode::BAD_REQUEST,
            format!("task type {kind} is not supported by serin loadtester"),
        )),
        other => Err((
            StatusCode::BAD_REQUEST,
            format!("unknown task type {other}"),
        )),
    }
}

async fn task(State(lt): State<Arc<LoadTester>>, body: Bytes) -> Response {
    match parse_task(&body, &lt.opts) {
        Err(r) => r.into_response(),
        Ok(TaskRequest::Background {
            canary,
            command,
            log_output,
        }) => {
            start_cmd(&lt, &canary, &command, log_output);
            StatusCode::ACCEPTED.into_response()
        }
        Ok(TaskRequest::Blocking {
            kind,
            program,
            args,
            canary,
            command,
            return_output,
        }) => {
            if kind == "bash" {
                tracing::info!(canary = %canary, "bash command {command}");
            } else {
                tracing::info!(canary = %canary, "running command {program} {command}");
            }
            blocking(&lt, &kind, program, &args, &canary, &command, return_output).await
        }
    }
}

fn start_cmd(lt: &Arc<LoadTester>, canary: &str, command: &str, log_output: bool) {
    let metrics = lt.metrics.clone();
    let (c, cmd) = (canary.to_string(), command.to_string());
    let started = lt
        .runner
        .start(canary, command, lt.opts.timeout, move |o: Outcome| {
            if o.success {
                if log_output {
                    tracing::info!(canary = %c, "{}", o.output);
                }
                tracing::info!(canary = %c, "command finished {cmd}");
                metrics.task("cmd", "success");
            } else {
                tracing::error!(canary = %c, "command failed {cmd} {} {}", o.error, o.output);
                metrics.task("cmd", "failure");
            }
        });
    match started {
        Start::Started => tracing::info!(canary = %canary, "command starting {command}"),
        Start::AlreadyRunning => {
            tracing::info!(canary = %canary, "command skipped {command} is already running");
            lt.metrics.task("cmd", "skipped");
        }
        Start::ShuttingDown => {
            tracing::warn!(canary = %canary, "command not started {command}: shutting down");
        }
    }
}

async fn blocking(
    lt: &LoadTester,
    kind: &str,
    program: &str,
    args: &[String],
    canary: &str,
    command: &str,
    return_output: bool,
) -> Response {
    let o = lt.runner.run(program, args, lt.opts.timeout).await;
    if o.success {
        tracing::info!(canary = %canary, "command finished {command}\n{}", o.output);
        lt.metrics.task(kind, "success");
        let body = if return_output {
            o.output
        } else {
            String::new()
        };
        (StatusCode::OK, body).into_response()
    } else {
        tracing::error!(canary = %canary, "command failed {command} {} {}", o.error, o.output);
        lt.metrics.task(kind, "failure");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            tasks::failure_text(command, &o),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests;
