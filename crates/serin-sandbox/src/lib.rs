//! The local control plane: real etcd, kube-apiserver, kube-controller-manager and Prometheus as
//! plain processes on loopback, plus a simulated kubelet; on request real Flux (its controllers and
//! a Git server, [`flux`]) and Flagger ([`flagger`]). Used by `serin-sandbox`, the tests and the
//! demo.
//!
//! Nothing outlives it: children die with the process that started them (`PR_SET_PDEATHSIG` from
//! one long-lived spawner thread), and directories of dead owners are swept at the next start.
//!
//! In tests, use the per-binary environment and a namespace of your own:
//! ```no_run
//! # async fn t() {
//! let env = serin_sandbox::testenv::shared(); // panics if `serin-sandbox setup` was not run
//! let ns = env.namespace("canary").await;
//! let client = env.client(); // a new client for this test's runtime
//! env.register_scrape_target("mesh", "127.0.0.1:9100").unwrap();
//! # let _ = (ns, client); }
//! ```
//! For a private one (extra users, its own lifetime): [`Sandbox::start`] with [`SandboxOptions`].

pub mod bench;
pub mod chaos;
pub mod demo;
mod environment;
pub mod flagger;
pub mod flux;
pub mod istio;
pub mod kubelet;
pub mod mesh;
mod process;
pub mod setup;
pub mod testenv;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use environment::{
    Error, Sandbox, SandboxOptions, TEMP_PREFIX, User, free_ports, sandbox_crds,
    sweep_stale_temp_dirs,
};
pub use process::ChildExit;
pub use setup::{Binaries, NotSetUp, cache_dir, kubectl, locate};

/// The file in `--dir` holding the pid of `serin-sandbox up`.
pub const PID_FILE: &str = "sandbox.pid";

/// Options of `serin-sandbox up`.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Where kubeconfig, env, logs and data go; a fresh temporary directory when unset.
    pub dir: Option<PathBuf>,
}

/// `serin-sandbox up`: starts everything, prints a summary, and runs until interrupted.
pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::tls=error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // Fail before anything else when the programs are missing.
    locate()?;
    // Handlers first, so that a signal during start-up also tears down cleanly.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    if let Some(dir) = &opts.dir
        && let Some(pid) = running_pid(dir)
    {
        anyhow::bail!(
            "a sandbox is already running in {} (pid {pid}); stop it with `serin-sandbox down --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    eprintln!("starting the sandbox...");
    let start = Sandbox::start(SandboxOptions {
        dir: opts.dir.clone(),
        flux: true,
        ..SandboxOptions::default()
    });
    let sandbox = tokio::select! {
        s = start => s?,
        _ = sigterm.recv() => anyhow::bail!("interrupted (SIGTERM) while starting; stopped"),
        _ = sigint.recv() => anyhow::bail!("interrupted (SIGINT) while starting; stopped"),
    };
    let pid_file = sandbox.dir().join(PID_FILE);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;
    // The mesh simulator plays Istio for every namespace: it reads the VirtualServices and feeds
    // Istio's telemetry to the sandbox's Prometheus.
    let mesh = mesh::start(sandbox.config(), mesh::MeshOptions::default())?;
    sandbox.register_scrape_target("mesh", &mesh.metrics_addr().to_string())?;
    let git = sandbox
        .flux()
        .map(|f| {
            format!(
                "\n  Flux:        source-controller and kustomize-controller in namespace {}\n  Git server:  http://{}/ (smart HTTP, read-only; bare repositories NAME.git in {})",
                flux::NAMESPACE,
                f.git().addr(),
                f.git().root().display()
            )
        })
        .unwrap_or_default();
    println!(
        "serin-sandbox ready in {:.1} s\n  API server:  {}\n  Prometheus:  {}\n  mesh:        http://{}/metrics (simulated Istio telemetry){git}\n  kubeconfig:  {}\n  logs:        {}\n\n  source {}\n\nStop with Ctrl-C or `serin-sandbox down --dir {}`.",
        sandbox.startup_time().as_secs_f64(),
        sandbox.api_url(),
        sandbox.prometheus_url(),
        mesh.metrics_addr(),
        sandbox.kubeconfig_path().display(),
        sandbox.logs_dir().display(),
        sandbox.env_path().display(),
        sandbox.dir().display(),
    );
    let died = tokio::select! {
        exit = sandbox.died() => Some(exit),
        _ = sigterm.recv() => None,
        _ = sigint.recv() => None,
    };
    eprintln!("stopping the sandbox...");
    mesh.stop();
    let _ = std::fs::remove_file(&pid_file);
    tokio::task::spawn_blocking(move || sandbox.stop()).await?;
    match died {
        Some(exit) => Err(anyhow::anyhow!("{exit}\nthe sandbox was torn down")),
        None => {
            eprintln!("stopped");
            Ok(())
        }
    }
}

/// The pid of a live `serin-sandbox up` recorded in `dir`, if any.
fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (process::pid_alive(pid) && is_serin_up(pid)).then_some(pid)
}

/// Guards against a recycled pid: the process must be a `serin-sandbox ... up`.
fn is_serin_up(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = args.first().map(Path::new).and_then(|p| p.file_name());
    program.is_some_and(|n| n == "serin-sandbox") && args.iter().skip(1).any(|a| a == "up")
}

/// `serin-sandbox down --dir DIR`: stops a sandbox started by another `serin-sandbox up`.
pub async fn down(dir: PathBuf) -> anyhow::Result<()> {
    let pid_file = dir.join(PID_FILE);
    let text = std::fs::read_to_string(&pid_file).map_err(|e| {
        anyhow::anyhow!(
            "no sandbox is running in {} (cannot read {}: {e})",
            dir.display(),
            pid_file.display()
        )
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{} does not hold a pid", pid_file.display()))?;
    if !(process::pid_alive(pid) && is_serin_up(pid)) {
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(dir.join("env"));
        let _ = std::fs::remove_file(dir.join("kubeconfig"));
        let _ = std::fs::remove_dir_all(dir.join("data"));
        anyhow::bail!(
            "no sandbox is running in {}: pid {pid} is gone (removed its leftover files)",
            dir.display()
        );
    }
    let t0 = Instant::now();
    println!("sending SIGTERM to serin-sandbox up (pid {pid})");
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if wait_gone(pid, Duration::from_secs(30)).await {
        println!("stopped in {:.1} s", t0.elapsed().as_secs_f64());
        return Ok(());
    }
    println!("pid {pid} still running after 30 s; sending SIGKILL (its children die with it)");
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    if wait_gone(pid, Duration::from_secs(10)).await {
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_dir_all(dir.join("data"));
        println!("killed in {:.1} s", t0.elapsed().as_secs_f64());
        Ok(())
    } else {
        anyhow::bail!("pid {pid} survived SIGKILL")
    }
}

async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !process::pid_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !process::pid_alive(pid)
}

/// The `serin` binary the demo and the tools run as their own processes: `$SERIN_BIN`, else the
/// one beside this program (cargo puts every binary of the workspace in one directory), built
/// first with cargo when this runs from a source checkout and it is missing, else `serin` on the
/// PATH. The sandbox never links the product: it runs it, as a cluster would.
pub fn serin_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SERIN_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/debug/serin-sandbox, or target/debug/deps/<test> for a test binary.
    let dirs: Vec<&Path> = exe.ancestors().skip(1).take(2).collect();
    let find = || dirs.iter().map(|d| d.join("serin")).find(|p| p.is_file());
    if let Some(p) = find() {
        return Ok(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if workspace.join("crates/serin/Cargo.toml").is_file() {
        let release = dirs
            .iter()
            .any(|d| d.file_name().is_some_and(|n| n == "release"));
        let mut cargo =
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo
            .current_dir(&workspace)
            .args(["build", "-p", "serin", "--bin", "serin"]);
        if release {
            cargo.arg("--release");
        }
        eprintln!("building the serin binary (cargo build -p serin)...");
        let status = cargo.status()?;
        anyhow::ensure!(status.success(), "`cargo build -p serin` failed");
        if let Some(p) = find() {
            return Ok(p);
        }
    }
    Ok(PathBuf::from("serin"))
}
