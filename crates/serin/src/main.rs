//! The `serin` command line. Each subcommand is a thin call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "serin",
    version,
    about = "Progressive delivery for Kubernetes, Flagger-compatible, on Istio"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs (Canary, MetricTemplate, AlertProvider) as YAML.
    Crds,
    /// Check Canary, MetricTemplate and AlertProvider manifests offline (schema and semantic checks).
    ///
    /// Prints one line per problem on standard output (`FILE: Kind/name: field: message (hint)`)
    /// and a summary of what was checked on standard error. Exit code 0 when at least one
    /// Canary, MetricTemplate or AlertProvider was checked and none has a problem; 1 when there
    /// is a problem (including a document that is not a Kubernetes object), when nothing at all
    /// was checked (an empty file, /dev/null, only other kinds), or when a path cannot be read.
    Validate {
        /// Files or directories to check; `-` reads standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// The timeline of a rollout, offline: each step's weights and earliest time, the webhooks
    /// called, every query rendered, the promotion and the worst-case rollback.
    Plan {
        /// The Canary and the MetricTemplates it uses; files, or `-` for standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Namespace of objects that name none (default: `default`).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// `table` for people, `json` for machines.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Replay a Canary's analysis against past Prometheus data: the values and verdicts at each
    /// moment the analysis would have run, and whether the release would have been promoted or
    /// rolled back. Writes nothing. Exit code 0 promoted, 1 rolled back, 2 unfinished, 3 errors.
    Backtest {
        /// The Canary and the MetricTemplates it uses; files, or `-` for standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Namespace of objects that name none (default: `default`); the queries select it.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Prometheus to read (all metrics, templates included, are read from it).
        #[arg(long, env = "METRICS_SERVER")]
        prometheus: String,
        /// When the release's new revision was detected: RFC 3339, `now-1h` or `-90m`.
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        /// End of the window (the analysis stops here if still running).
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        to: String,
        /// `table` for people, `json` for machines.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Run the controller against the cluster of the kubeconfig (or in-cluster).
    Controller(Box<ControllerArgs>),
    /// A flagger-loadtester compatible webhook server: gates, `cmd`/`bash`/`helm`/`kubectl` tasks.
    #[command(long_about = LOADTESTER_ABOUT)]
    Loadtester(LoadtesterArgs),
    // ---- the CLI for people (serin::cli) ----
    /// List canaries: phase, weight, failed checks, age and the newest Event.
    Get {
        /// Canaries of all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        cluster: serin::cli::ClusterArgs,
    },
    /// One canary: weight and step, metrics against their ranges, latest Events. Exit code 0
    /// when promoted (Succeeded, or Initialized), 1 when Failed, 2 otherwise, 3 on errors.
    Status {
        name: String,
        /// Redraw on every change until the canary is promoted (exit 0) or failed (exit 1).
        #[arg(short, long)]
        watch: bool,
        /// With --watch: give up after this many seconds (exit 2).
        #[arg(long)]
        timeout: Option<u64>,
        #[command(flatten)]
        cluster: serin::cli::ClusterArgs,
    },
    /// Skip the rest of the analysis and promote now.
    Promote(RequestArgs),
    /// Roll back now.
    Abort(RequestArgs),
    /// Hold the canary where it is (survives re-applies) until `serin resume`.
    Pause(RequestArgs),
    /// Lift a pause.
    Resume(RequestArgs),
    /// Analyse the same revision again after a failed run.
    Retry(RequestArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
struct RequestArgs {
    name: String,
    /// Seconds to wait for the controller's answer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[command(flatten)]
    cluster: serin::cli::ClusterArgs,
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Prometheus URL for the built-in metrics (a Canary's spec.metricsServer wins).
    #[arg(long, env = "METRICS_SERVER", default_value = "http://prometheus:9090")]
    metrics_server: String,
    /// Watch only this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Canaries reconciled concurrently.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// debug, info, warn or error.
    #[arg(long, default_value = "info")]
    log_level: String,
    #[arg(long, value_enum, default_value = "text")]
    log_format: serin::telemetry::LogFormat,
    /// Flagger's `-event-webhook`: every Event of a Canary that has no `event` webhook of its own
    /// is POSTed here with Flagger's event payload.
    #[arg(long, env = "EVENT_WEBHOOK_URL")]
    event_webhook: Option<String>,
    #[command(flatten)]
    leader: LeaderArgs,
    /// The rollout queue and freeze windows.
    #[command(flatten)]
    admission: serin::controller::admission::AdmissionOptions,
    /// Alerts: the global notifier and the cluster name (boxed: it is large).
    #[command(flatten)]
    alerts: Box<serin::alerts::GlobalArgs>,
}

/// Leader election (several replicas, one writes).
#[derive(clap::Args)]
struct LeaderArgs {
    /// Run only while holding a coordination.k8s.io/v1 Lease; otherwise stand by.
    #[arg(long)]
    leader_elect: bool,
    /// How long others wait after the last renewal they saw before taking the Lease over.
    #[arg(long, default_value = "15s", value_parser = serin::controller::leader::parse_duration)]
    leader_elect_lease_duration: std::time::Duration,
    /// How long the leader keeps writing without a successful renewal (below the lease duration).
    #[arg(long, default_value = "10s", value_parser = serin::controller::leader::parse_duration)]
    leader_elect_renew_deadline: std::time::Duration,
    /// Pause between attempts to acquire or renew the Lease.
    #[arg(long, default_value = "2s", value_parser = serin::controller::leader::parse_duration)]
    leader_elect_retry_period: std::time::Duration,
    /// Namespace of the Lease; default: $POD_NAMESPACE, the pod's namespace, or `default`.
    #[arg(long)]
    leader_elect_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "serin-leader")]
    leader_elect_lease_name: String,
}

impl LeaderArgs {
    /// The holder identity is $POD_NAME, else hostname_pid.
    fn options(self) -> Option<serin::controller::leader::LeaderOptions> {
        use serin::controller::leader;
        self.leader_elect.then(|| leader::LeaderOptions {
            namespace: self
                .leader_elect_namespace
                .unwrap_or_else(leader::default_namespace),
            name: self.leader_elect_lease_name,
            identity: leader::default_identity(),
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        })
    }
}

// ---- serin loadtester (issue 4 §2) ----
const LOADTESTER_ABOUT: &str =
    "A flagger-loadtester compatible webhook server: /gate/*, /rollback/* \
and tasks on / (cmd, bash, helm, kubectl).

Gate state: with an API server (in-cluster, or --kubeconfig given) open gates are kept in the \
ConfigMap --state-configmap of the load tester's namespace and survive a restart. Without one they \
are kept in memory only, as in Flagger, and are closed again after a restart.";

#[derive(clap::Args)]
struct LoadtesterArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    address: std::net::IpAddr,
    /// Timeout of each command (Go duration: 1h, 90s, 1m30s).
    #[arg(long, default_value = "1h", value_parser = serin::api::parse_go_duration)]
    timeout: std::time::Duration,
    /// Run tasks only for payload namespaces matching this regular expression (403 otherwise).
    #[arg(long)]
    namespace_regexp: Option<regex::Regex>,
    /// Kubeconfig for storing gate state; default: in-cluster when running in a pod, else no API
    /// server (gates in memory only, lost on restart).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the gate ConfigMap; default: $POD_NAMESPACE, else the in-cluster or
    /// kubeconfig namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Name of the ConfigMap holding the open gates.
    #[arg(long, default_value = "serin-loadtester-gates")]
    state_configmap: String,
    /// debug, info, warn or error.
    #[arg(long, default_value = "info")]
    log_level: String,
    #[arg(long, value_enum, default_value = "text")]
    log_format: serin::telemetry::LogFormat,
}

async fn loadtester(args: LoadtesterArgs) -> anyhow::Result<()> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            Some(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)
        }
        None => kube::Config::incluster().ok(),
    };
    let gates = match config {
        Some(config) => {
            let namespace = args
                .namespace
                .clone()
                .or_else(|| {
                    std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|s| !s.is_empty())
                })
                .unwrap_or_else(|| config.default_namespace.clone());
            let client = kube::Client::try_from(config)?;
            serin::loadtester::Gates::in_config_map(client, &namespace, &args.state_configmap)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read or create ConfigMap {namespace}/{} for the gate state: {e} \
                         (the load tester's service account needs get, create and patch on configmaps)",
                        args.state_configmap
                    )
                })?
        }
        None => {
            tracing::warn!(
                "no API server (not in a cluster and no --kubeconfig): gates are kept in memory \
                 and do not survive a restart"
            );
            serin::loadtester::Gates::in_memory()
        }
    };
    let opts = serin::loadtester::Options {
        timeout: args.timeout,
        namespace_regexp: args.namespace_regexp,
    };
    let lt = serin::loadtester::LoadTester::new(opts, gates);
    let addr = std::net::SocketAddr::new(args.address, args.port);
    serin::loadtester::run(addr, lt, shutdown_signal()).await
}
// ---- end serin loadtester ----

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("serin: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crds => {
            print!("{}", serin::api::crd::all_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let summary = serin::api::lint::run(&files, &mut out)?;
            std::io::Write::flush(&mut out)?;
            for path in &summary.nothing_found {
                let path = if path == "-" { "standard input" } else { path };
                eprintln!(
                    "serin validate: no Canary, MetricTemplate or AlertProvider found in {path}"
                );
            }
            eprintln!(
                "serin validate: {} checked in {}: {}",
                plural(summary.objects, "object"),
                plural(summary.files, "file"),
                match (summary.problems, summary.objects) {
                    (0, 0) => "nothing to check".to_string(),
                    (0, _) => "no problems".to_string(),
                    (n, _) => plural(n, "problem"),
                }
            );
            // Nothing checked fails too: a CI step pointed at the wrong file must not pass.
            Ok(if summary.problems == 0 && summary.objects > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Plan {
            files,
            namespace,
            output,
        } => {
            let text = serin::cli::plan::run(&files, namespace.as_deref(), output == Output::Json)?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Backtest {
            files,
            namespace,
            prometheus,
            from,
            to,
            output,
        } => {
            let args = serin::cli::backtest::Args {
                files,
                namespace,
                prometheus,
                from,
                to,
                json: output == Output::Json,
            };
            let res = runtime()?.block_on(serin::cli::backtest::run(&args));
            Ok(ExitCode::from(match res {
                Ok((text, code)) => {
                    print!("{text}");
                    code
                }
                Err(e) => {
                    eprintln!("serin: {e:#}");
                    3
                }
            }))
        }
        Command::Controller(args) => {
            serin::telemetry::init_logging(&args.log_level, args.log_format);
            runtime()?.block_on(controller(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Loadtester(args) => {
            serin::telemetry::init_logging(&args.log_level, args.log_format);
            runtime()?.block_on(loadtester(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            all_namespaces,
            cluster,
        } => runtime()?.block_on(async {
            let s = serin::cli::connect(&cluster).await?;
            print!("{}", serin::cli::get::run(&s, all_namespaces).await?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Status {
            name,
            watch,
            timeout,
            cluster,
        } => {
            let res = runtime()?.block_on(async {
                let s = serin::cli::connect(&cluster).await?;
                let timeout = timeout.map(std::time::Duration::from_secs);
                serin::cli::status::run(&s, &name, watch, timeout).await
            });
            // Errors exit 3, so that CI can tell them from a failed canary (1).
            Ok(ExitCode::from(res.unwrap_or_else(|e| {
                eprintln!("serin: {e:#}");
                3
            })))
        }
        Command::Promote(a) => request(a, serin::rollout::Verb::Promote),
        Command::Abort(a) => request(a, serin::rollout::Verb::Abort),
        Command::Pause(a) => request(a, serin::rollout::Verb::Pause),
        Command::Resume(a) => request(a, serin::rollout::Verb::Resume),
        Command::Retry(a) => request(a, serin::rollout::Verb::Retry),
    }
}

fn request(a: RequestArgs, verb: serin::rollout::Verb) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let s = serin::cli::connect(&a.cluster).await?;
        let timeout = std::time::Duration::from_secs(a.timeout);
        let code = serin::cli::request(&s, &a.name, verb, timeout).await?;
        Ok(ExitCode::from(code))
    })
}

async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let opts = serin::controller::Options {
        namespace: args.namespace,
        metrics_server: args.metrics_server,
        concurrency: args.concurrency,
        listen: Some(args.listen),
        leader: args.leader.options(),
        alerts: *args.alerts,
        event_webhook: args.event_webhook.filter(|u| !u.trim().is_empty()),
        admission: args.admission,
    };
    serin::controller::run_with_config(config, opts, shutdown_signal()).await
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C. The SIGTERM handler is installed
/// at once, not at the first poll: `/healthz` answers before the controller starts, and a SIGTERM
/// in between must still stop it cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let term = async {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
