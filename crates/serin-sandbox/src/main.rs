//! `serin-sandbox`: the development side of serin, kept out of the shipped binary. It sets the
//! machine up, runs the local control plane and tells serin's story in the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "serin-sandbox",
    version,
    about = "serin's local proving ground: a real control plane, a simulated mesh, the demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// See serin work: a sandbox, a GitOps release promoted and a faulty one rolled back
    /// (set-up included; about three minutes after the first set-up).
    Demo {
        /// Leave the sandbox running at the end and print how to explore it.
        #[arg(long)]
        keep: bool,
        /// The GitOps example to apply (a copy is edited, never the original).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/gitops"))]
        gitops: PathBuf,
    },
    /// Install the packages and build what the sandbox runs: Kubernetes, etcd, Flux's
    /// controllers (idempotent; cached per machine).
    Setup {
        /// Also build Flagger and its load tester, the reference serin is compared with.
        #[arg(long)]
        with_flagger: bool,
    },
    /// Start a sandbox and keep it running until interrupted.
    Up {
        /// Directory for kubeconfig, env, logs and data (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// serin and real Flagger side by side on one sandbox: detection latency, rollout and
    /// rollback time, idle cost; prints a Markdown table and writes it to --out.
    Bench {
        /// Canaries per controller at each stage, ascending: the run grows from one to the next
        /// and measures the idle cost at each (e.g. 100,1000,5000).
        #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
        stages: Vec<usize>,
        /// A single stage of this many canaries (the same as `--stages N`).
        #[arg(long, conflicts_with = "stages")]
        canaries: Option<usize>,
        /// Releases whose detection latency is measured, at each stage up to --bumps-up-to.
        #[arg(long, default_value_t = 20)]
        bumps: usize,
        /// The largest stage at which bumps, the faulty release and the bursts run.
        #[arg(long, default_value_t = 1000)]
        bumps_up_to: usize,
        /// Sizes of the release bursts, run at the largest stage up to --bumps-up-to.
        #[arg(long, value_delimiter = ',', default_value = "100,500")]
        bursts: Vec<usize>,
        /// Analysis interval of every Canary, in seconds.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// Weight steps of every Canary (stepWeight 10 up to maxWeight 10 × steps), 1 to 10.
        #[arg(long, default_value_t = 10)]
        steps: u32,
        /// Seconds over which the idle cost is measured at each stage.
        #[arg(long, default_value_t = 60)]
        idle: u64,
        /// Milliseconds a stage may take to initialize per canary added (plus two minutes)
        /// before the run goes on without the controller that is behind.
        #[arg(long, default_value_t = 250)]
        init_ms_per_canary: u64,
        /// Minutes after which no stage, bump series or burst starts (the report says what
        /// was skipped).
        #[arg(long)]
        time_limit_minutes: Option<u64>,
        /// Run under the CRDs Flagger's Helm chart installs instead of the sandbox's.
        #[arg(long)]
        flagger_crd: bool,
        /// Where the report goes (it is also printed).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Copy the sandbox's logs (the controllers', the API server's audit log, ...) into this
        /// directory when the run ends; a failed run keeps them anyway.
        #[arg(long)]
        keep_logs: Option<PathBuf>,
        /// The CI smoke run: serin only, 2 canaries, 3 bumps, a burst of 2, 2 steps, 3 s
        /// interval, 10 s idle (unless given explicitly).
        #[arg(long)]
        smoke: bool,
    },
    /// Stop a sandbox started by `serin-sandbox up --dir DIR`.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run releases, good and faulty, on a sandbox of its own while killing serin, its leader,
    /// the API server, Prometheus and webhook receivers; check the invariants all along and print
    /// a table. Exits non-zero on any violation or incorrect outcome (see docs/chaos.md).
    Chaos {
        /// Releases to run (mixed good and faulty).
        #[arg(long, default_value_t = 12)]
        rollouts: usize,
        /// The seed of every random choice (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
        /// The whole run ends by then (Go duration: 90s, 30m, 1h).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        duration_limit: std::time::Duration,
        /// Apps released concurrently.
        #[arg(long, default_value_t = 4)]
        apps: usize,
        /// Peak resident memory of one serin process above which the run fails.
        #[arg(long, default_value_t = 256)]
        rss_limit_mb: u64,
        /// Reconciles a minute (all replicas, any 60 s window) above which the run fails.
        #[arg(long, default_value_t = 1200)]
        max_reconciles_per_minute: u64,
        /// Prometheus queries a minute (the same way) above which the run fails.
        #[arg(long, default_value_t = 600)]
        max_queries_per_minute: u64,
        /// Directory for kubeconfig and logs (kept after the run; data removed).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// No faults; break three invariants by hand instead, to see the checks fail.
        #[arg(long)]
        sabotage: bool,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    serin_api::parse_go_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("serin-sandbox: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The README's commands work on a fresh machine: set up on first use.
fn ensure_set_up() -> anyhow::Result<()> {
    let missing = serin_sandbox::locate()
        .err()
        .or_else(|| serin_sandbox::setup::flux::locate_flux().err());
    if let Some(missing) = missing {
        eprintln!("{missing}\nrunning `serin-sandbox setup` first (once per machine)");
        serin_sandbox::setup::run()?;
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { keep, gitops } => {
            ensure_set_up()?;
            let ok = runtime()?.block_on(serin_sandbox::demo::run(
                serin_sandbox::demo::DemoOptions { keep, gitops },
            ))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Setup { with_flagger } => {
            serin_sandbox::setup::run_with(&serin_sandbox::setup::flux::SetupOptions {
                with_flagger,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up { dir } => {
            ensure_set_up()?;
            runtime()?.block_on(serin_sandbox::up(serin_sandbox::UpOptions { dir }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Chaos {
            rollouts,
            seed,
            duration_limit,
            apps,
            rss_limit_mb,
            max_reconciles_per_minute,
            max_queries_per_minute,
            dir,
            sabotage,
        } => {
            ensure_set_up()?;
            let opts = serin_sandbox::chaos::ChaosOptions {
                rollouts,
                seed: seed.unwrap_or_else(serin_sandbox::chaos::clock_seed),
                duration_limit,
                apps,
                rss_limit_mb,
                max_reconciles_per_minute,
                max_queries_per_minute,
                serin: None,
                dir,
                sabotage,
            };
            let report = runtime()?.block_on(serin_sandbox::chaos::run(opts))?;
            println!("\n{}\n{}", report.table(), report.details());
            Ok(if report.ok() {
                println!("chaos: every rollout correct, no invariant violated");
                ExitCode::SUCCESS
            } else {
                println!("chaos: FAILED (see above)");
                ExitCode::FAILURE
            })
        }
        Command::Bench {
            stages,
            canaries,
            bumps,
            bumps_up_to,
            bursts,
            interval,
            steps,
            idle,
            init_ms_per_canary,
            time_limit_minutes,
            flagger_crd,
            out,
            keep_logs,
            smoke,
        } => {
            ensure_set_up()?;
            let given = |name: &str| {
                std::env::args().any(|a| a == name || a.starts_with(&format!("{name}=")))
            };
            let pick = |name: &str, full: u64, small: u64| {
                if smoke && !given(name) { small } else { full }
            };
            let stages = match canaries {
                Some(n) => vec![n],
                None if smoke && !given("--stages") => vec![2],
                None => stages,
            };
            let bursts = if smoke && !given("--bursts") {
                vec![2]
            } else {
                bursts
            };
            let opts = serin_sandbox::bench::BenchOptions {
                stages,
                bumps: pick("--bumps", bumps as u64, 3) as usize,
                bumps_up_to,
                bursts,
                interval_secs: pick("--interval", interval, 3),
                steps: pick("--steps", u64::from(steps), 2) as u32,
                idle: std::time::Duration::from_secs(pick("--idle", idle, 10)),
                init_per_canary: std::time::Duration::from_millis(init_ms_per_canary),
                smoke,
                time_limit: time_limit_minutes.map(|m| std::time::Duration::from_secs(60 * m)),
                flagger_crd,
                out,
                keep_logs,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let report = runtime()?.block_on(serin_sandbox::bench::run(opts))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Down { dir } => {
            runtime()?.block_on(serin_sandbox::down(dir))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
