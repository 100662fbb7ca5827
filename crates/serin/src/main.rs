//! The `serin` command line. Each subcommand is a thin call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "serin",
    version,
    propagate_version = true,
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
    /// Prints one line per problem on standard output (`FILE: Kind/name: field: message (hint)`,
    /// `FILE: Kind/name: warning: field: ...` for a warning) and a summary of what was checked
    /// on standard error. A warning is a manifest Flagger runs and serin runs too, likely not as
    /// meant (an ignored field, a step beyond maxWeight); an error is one the API server refuses
    /// or the controller holds. Exit code 0 when at least one Canary, MetricTemplate or
    /// AlertProvider was checked and none has a problem; 1 when there is an error (including a
    /// document that is not a Kubernetes object), when nothing at all was checked (an empty file,
    /// /dev/null, only other kinds), or when a path cannot be read; 3 when every problem is a
    /// warning (2 stays the usage error of the argument parser).
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
    /// Canaries reconciled concurrently (Flagger: `-threadiness`).
    #[arg(long, visible_alias = "threadiness", default_value_t = 16)]
    concurrency: u16,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Flagger's `-port`: the port of --listen.
    #[arg(long)]
    port: Option<u16>,
    /// debug, info, warn (or warning) or error.
    #[arg(long, default_value = "info")]
    log_level: String,
    #[arg(long, value_enum, default_value = "text")]
    log_format: serin::telemetry::LogFormat,
    /// The source component of the Events serin records (the FROM column of `kubectl describe`):
    /// `flagger` for event filters and dashboards written for Flagger's Events.
    #[arg(long, env = "EVENT_COMPONENT", default_value = "serin")]
    event_component: String,
    #[command(flatten)]
    flagger: FlaggerArgs,
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

/// Go's `strconv.ParseBool`, for Flagger's boolean flags (`-enable-leader-election=true`).
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value {s:?}")),
    }
}

/// Flagger's controller flags (cmd/flagger/main.go, v1.44) that have no serin flag of the same
/// name, so the Helm chart's `args` carry over. Flags serin shares with Flagger (`-kubeconfig`,
/// `-metrics-server`, `-namespace`, `-log-level`, `-slack-*`, `-msteams-*`, `-event-webhook`,
/// `-cluster-name`, `-threadiness`) are serin's own; single-dash spellings are accepted for all
/// ([`go_style_args`]). Flags without meaning for serin are accepted with a warning.
#[derive(clap::Args)]
struct FlaggerArgs {
    /// `-master`: the API server address, overriding the kubeconfig's.
    #[arg(long, hide = true)]
    master: Option<String>,
    /// `-mesh-provider`: serin routes with Istio only.
    #[arg(long, hide = true)]
    mesh_provider: Option<String>,
    /// `-selector-labels`: label keys (comma-separated, in order) the target's selector is
    /// searched for (default app,name,app.kubernetes.io/name).
    #[arg(long)]
    selector_labels: Option<String>,
    /// `-include-label-prefix`: target labels copied to the primary Deployment, by key prefix
    /// (comma-separated; `*` = all; default none).
    #[arg(long)]
    include_label_prefix: Option<String>,
    /// `-enable-config-tracking`: start a run when a referenced ConfigMap or Secret changes, and
    /// give the primary `-primary` copies (default true).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    enable_config_tracking: Option<bool>,
    /// `-enable-leader-election`: same as --leader-elect.
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    enable_leader_election: Option<bool>,
    /// `-zap-encoding`: json or console (= --log-format json or text).
    #[arg(long, hide = true)]
    zap_encoding: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    zap_replace_globals: Option<bool>,
    #[arg(long, hide = true)]
    kubeconfig_qps: Option<String>,
    #[arg(long, hide = true)]
    kubeconfig_burst: Option<String>,
    #[arg(long, hide = true)]
    control_loop_interval: Option<String>,
    #[arg(long, hide = true)]
    ingress_annotations_prefix: Option<String>,
    #[arg(long, hide = true)]
    ingress_class: Option<String>,
    #[arg(long, hide = true)]
    kubeconfig_service_mesh: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    no_cross_namespace_refs: Option<bool>,
}

fn comma_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl FlaggerArgs {
    /// Warnings for flags serin accepts but does not act on as Flagger does.
    fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let ignored = |flag: &str, why: &str| {
            format!("-{flag} is accepted for Flagger compatibility and ignored: {why}")
        };
        if let Some(p) = self.mesh_provider.as_deref()
            && !p.is_empty()
            && p != "istio"
        {
            out.push(format!(
                "-mesh-provider={p}: serin routes with Istio only; Canaries are routed with Istio (a Canary whose spec.provider names another mesh is held)"
            ));
        }
        for (flag, set, why) in [
            (
                "kubeconfig-qps",
                self.kubeconfig_qps.is_some(),
                "serin reads from watch caches and writes only on change",
            ),
            (
                "kubeconfig-burst",
                self.kubeconfig_burst.is_some(),
                "serin reads from watch caches and writes only on change",
            ),
            (
                "control-loop-interval",
                self.control_loop_interval.is_some(),
                "serin reconciles on changes and when a step is due",
            ),
            (
                "ingress-annotations-prefix",
                self.ingress_annotations_prefix.is_some(),
                "serin does not route with NGINX",
            ),
            (
                "ingress-class",
                self.ingress_class.is_some(),
                "serin does not route with Contour",
            ),
            (
                "zap-replace-globals",
                self.zap_replace_globals.is_some(),
                "serin does not use zap",
            ),
        ] {
            if set {
                out.push(ignored(flag, why));
            }
        }
        if self.kubeconfig_service_mesh.is_some() {
            out.push(ignored(
                "kubeconfig-service-mesh",
                "serin writes the DestinationRules and the VirtualService to the cluster of --kubeconfig",
            ));
        }
        if self.no_cross_namespace_refs == Some(true) {
            out.push(ignored(
                "no-cross-namespace-refs",
                "serin still follows templateRef and providerRef into other namespaces",
            ));
        }
        if let Some(e) = self.zap_encoding.as_deref()
            && !matches!(e, "json" | "console")
        {
            out.push(format!(
                "-zap-encoding={e}: not json or console; logging as --log-format says"
            ));
        }
        out
    }

    fn workload_options(&self) -> serin::workload::WorkloadOptions {
        let mut o = serin::workload::WorkloadOptions::default();
        if let Some(s) = self.selector_labels.as_deref() {
            let keys = comma_list(s);
            if !keys.is_empty() {
                o.selector_labels = keys;
            }
        }
        if let Some(p) = self.include_label_prefix.as_deref() {
            o.include_label_prefixes = comma_list(p);
        }
        if let Some(t) = self.enable_config_tracking {
            o.config_tracking = t;
        }
        o
    }
}

/// Subcommands whose flags may be written Go style, as Flagger's and flagger-loadtester's are.
const GO_STYLE_SUBCOMMANDS: [&str; 2] = ["controller", "loadtester"];

/// The arguments with Go's single-dash long flags (`-metrics-server=x`, `-threadiness 4`)
/// spelled the clap way (`--metrics-server=x`), so the `args` of Flagger's Helm chart work
/// unchanged; only after `controller` or `loadtester`, whose flags have no single-letter form.
/// Invoked as `flagger` (a link named after Flagger's binary, the chart's `command`), serin is
/// `serin controller`.
fn go_style_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args = args;
    let as_flagger = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "flagger");
    if as_flagger {
        args.insert(1, "controller".into());
    }
    let mut out = Vec::with_capacity(args.len());
    let mut go_style = false;
    let mut after_dashes = false;
    for (i, arg) in args.into_iter().enumerate() {
        let text = arg.to_str().unwrap_or_default();
        if i > 0 && !go_style && GO_STYLE_SUBCOMMANDS.contains(&text) {
            go_style = true;
            out.push(arg);
            continue;
        }
        if text == "--" {
            after_dashes = true;
        }
        let name = text.split('=').next().unwrap_or_default();
        let single_dash_long = name.len() > 2
            && name.starts_with('-')
            && !name.starts_with("--")
            && name[1..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic());
        if go_style && !after_dashes && single_dash_long {
            out.push(format!("-{text}").into());
        } else {
            out.push(arg);
        }
    }
    out
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
    #[arg(long, visible_alias = "leader-election-namespace")]
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
    /// flagger-loadtester's `-zap-encoding`: json or console (= --log-format json or text).
    #[arg(long, hide = true)]
    zap_encoding: Option<String>,
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

/// `serin validate`'s exit code when every problem is a warning: distinct from errors (1) and
/// from the argument parser's usage error (2), so CI can let warnings pass on purpose.
const VALIDATE_WARNINGS_ONLY: u8 = 3;

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(go_style_args(std::env::args_os().collect()));
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
                match (summary.problems, summary.objects, summary.warnings) {
                    (0, 0, _) => "nothing to check".to_string(),
                    (0, _, _) => "no problems".to_string(),
                    (n, _, 0) => plural(n, "problem"),
                    (n, _, w) if w == n => format!("{} (all warnings)", plural(n, "problem")),
                    (n, _, w) => format!(
                        "{} ({}, {})",
                        plural(n, "problem"),
                        plural(n - w, "error"),
                        plural(w, "warning")
                    ),
                }
            );
            // Nothing checked fails too: a CI step pointed at the wrong file must not pass.
            Ok(
                if summary.objects == 0 || summary.problems > summary.warnings {
                    ExitCode::FAILURE
                } else if summary.warnings > 0 {
                    ExitCode::from(VALIDATE_WARNINGS_ONLY)
                } else {
                    ExitCode::SUCCESS
                },
            )
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
        Command::Controller(mut args) => {
            // Flagger's level names: debug, info, warning, error.
            let level = match args.log_level.as_str() {
                "warning" => "warn".to_string(),
                l => l.to_string(),
            };
            let format = match args.flagger.zap_encoding.as_deref() {
                Some("json") => serin::telemetry::LogFormat::Json,
                Some("console") => serin::telemetry::LogFormat::Text,
                _ => args.log_format,
            };
            serin::telemetry::init_logging(&level, format);
            for w in args.flagger.warnings() {
                tracing::warn!("{w}");
            }
            if args.flagger.enable_leader_election == Some(true) {
                args.leader.leader_elect = true;
            }
            if let Some(port) = args.port {
                args.listen.set_port(port);
            }
            serin::workload::configure(args.flagger.workload_options());
            serin::controller::events::set_component(&args.event_component);
            runtime()?.block_on(controller(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Loadtester(args) => {
            let format = match args.zap_encoding.as_deref() {
                Some("json") => serin::telemetry::LogFormat::Json,
                Some("console") => serin::telemetry::LogFormat::Text,
                _ => args.log_format,
            };
            let level = if args.log_level == "warning" {
                "warn"
            } else {
                &args.log_level
            };
            serin::telemetry::init_logging(level, format);
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
    let mut config = config;
    if let Some(master) = args.flagger.master.as_deref().filter(|m| !m.is_empty()) {
        config.cluster_url = master
            .parse()
            .map_err(|e| anyhow::anyhow!("-master {master:?}: {e}"))?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        go_style_args(list.iter().map(|s| s.into()).collect())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_style_flags_after_controller_and_loadtester_get_two_dashes() {
        assert_eq!(
            args(&[
                "serin",
                "controller",
                "-metrics-server=http://p:9090",
                "-threadiness",
                "4",
                "-n",
                "--listen",
                "x"
            ]),
            [
                "serin",
                "controller",
                "--metrics-server=http://p:9090",
                "--threadiness",
                "4",
                "-n",
                "--listen",
                "x"
            ]
        );
        assert_eq!(
            args(&["serin", "loadtester", "-port", "9090", "-zap-encoding=json"]),
            [
                "serin",
                "loadtester",
                "--port",
                "9090",
                "--zap-encoding=json"
            ]
        );
        // Other subcommands keep their single-dash values (`--from -90m`).
        assert_eq!(
            args(&["serin", "backtest", "--from", "-90m"]),
            ["serin", "backtest", "--from", "-90m"]
        );
        // Called as Flagger's binary, serin is its controller.
        assert_eq!(
            args(&["./flagger", "-log-level=info"]),
            ["./flagger", "controller", "--log-level=info"]
        );
    }

    #[test]
    fn flaggers_chart_flags_parse() {
        let cli = Cli::try_parse_from(go_style_args(
            [
                "serin",
                "controller",
                "-log-level=info",
                "-mesh-provider=istio",
                "-metrics-server=http://flagger-prometheus:9090",
                "-selector-labels=app,name,app.kubernetes.io/name",
                "-enable-config-tracking=false",
                "-namespace=test",
                "-slack-url=https://hooks",
                "-slack-user=flagger",
                "-slack-channel=general",
                "-enable-leader-election=true",
                "-leader-election-namespace=flagger-system",
                "-include-label-prefix=app.kubernetes.io",
                "-threadiness=2",
                "-kubeconfig-qps=100",
                "-kubeconfig-burst=250",
                "-cluster-name=prod",
                "-no-cross-namespace-refs=false",
                "-port=9999",
            ]
            .iter()
            .map(|s| s.into())
            .collect(),
        ))
        .unwrap();
        let Command::Controller(a) = cli.command else {
            panic!("not the controller");
        };
        assert_eq!(a.metrics_server, "http://flagger-prometheus:9090");
        assert_eq!(a.namespace.as_deref(), Some("test"));
        assert_eq!(a.concurrency, 2);
        assert_eq!(a.port, Some(9999));
        assert_eq!(a.flagger.enable_leader_election, Some(true));
        assert_eq!(
            a.leader.leader_elect_namespace.as_deref(),
            Some("flagger-system")
        );
        let w = a.flagger.workload_options();
        assert!(!w.config_tracking);
        assert_eq!(w.include_label_prefixes, ["app.kubernetes.io"]);
        assert_eq!(w.selector_labels, ["app", "name", "app.kubernetes.io/name"]);
        assert_eq!(
            a.flagger.warnings(),
            [
                "-kubeconfig-qps is accepted for Flagger compatibility and ignored: serin reads from watch caches and writes only on change",
                "-kubeconfig-burst is accepted for Flagger compatibility and ignored: serin reads from watch caches and writes only on change",
            ]
        );
        assert_eq!(a.event_component, "serin");
    }
}
