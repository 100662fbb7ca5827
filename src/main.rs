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
    Validate {
        /// Files or directories to check; `-` reads standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// The local control plane: a real API server, controller manager, etcd and Prometheus.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Install the packages and build the Kubernetes binaries the sandbox needs (idempotent).
    Setup,
    /// Start a sandbox and keep it running until interrupted.
    Up {
        /// Directory for kubeconfig, env, logs and data (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Stop a sandbox started by `serin sandbox up --dir DIR`.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
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
            let mut out = std::io::stdout().lock();
            let problems = serin::api::lint::run(&files, &mut out)?;
            Ok(if problems == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Sandbox { command } => match command {
            SandboxCommand::Setup => {
                serin::sandbox::setup::run()?;
                Ok(ExitCode::SUCCESS)
            }
            SandboxCommand::Up { dir } => {
                runtime()?.block_on(serin::sandbox::up(serin::sandbox::UpOptions { dir }))?;
                Ok(ExitCode::SUCCESS)
            }
            SandboxCommand::Down { dir } => {
                runtime()?.block_on(serin::sandbox::down(dir))?;
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
