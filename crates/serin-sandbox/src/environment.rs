//! One running sandbox: the processes, the files that describe how to reach them, and teardown.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;

use super::kubelet::Kubelet;
use super::process::{self, ChildExit, ProcessId, Supervised};
use super::{Binaries, NotSetUp, locate};

/// Prefix of the temporary directories the sandbox creates; the stale-dir sweep looks for it.
pub const TEMP_PREFIX: &str = "serin-sandbox-";

/// The file in a data directory that names the process owning it.
const OWNER_FILE: &str = "owner";

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A user in the API server's token file, for RBAC tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub token: String,
}

/// How to start a sandbox.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Where kubeconfig, env, logs and data go. Unset: a fresh directory under the system's temp
    /// directory, removed on stop. Set: the directory is kept, its `data/` is removed on stop.
    pub dir: Option<PathBuf>,
    /// Extra non-admin users; see [`SandboxOptions::add_user`].
    pub users: Vec<User>,
    /// Also run Flux (its CRDs, source-controller, kustomize-controller and a Git server):
    /// [`Sandbox::flux`].
    pub flux: bool,
    /// Have the API server write an audit log ([`Sandbox::audit_log_path`]) of the extra users'
    /// requests, one JSON line per request as it is received, so that a benchmark can count each
    /// controller's requests by verb under its own identity. The admin and the sandbox's own
    /// components are not logged.
    pub audit: bool,
}

impl SandboxOptions {
    /// Adds a non-admin user to the token file (the API server reads it only at start) and
    /// returns the user's bearer token.
    pub fn add_user(&mut self, name: &str, groups: &[&str]) -> String {
        let token = random_hex(32);
        self.users.retain(|u| u.name != name);
        self.users.push(User {
            name: name.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            token: token.clone(),
        });
        token
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }
}

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    NotSetUp(#[from] NotSetUp),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    ChildExited(ChildExit),
    #[error("{what} was not ready after {after:?}{details}")]
    Timeout {
        what: String,
        after: Duration,
        details: String,
    },
    #[error("a sandbox is already running in {dir} (pid {pid}); stop it first")]
    AlreadyRunning { dir: PathBuf, pid: i32 },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// A running local control plane. Dropping it (or [`Sandbox::stop`]) stops every process and
/// removes the data.
pub struct Sandbox {
    dir: PathBuf,
    data_dir: PathBuf,
    temp: bool,
    logs: PathBuf,
    kubeconfig: PathBuf,
    env_file: PathBuf,
    api_url: String,
    base_config: kube::Config,
    admin_token: String,
    users: Vec<User>,
    prometheus_url: String,
    sd_file: PathBuf,
    targets: Mutex<BTreeMap<String, String>>,
    started_at: Instant,
    startup: Duration,
    children: Vec<Supervised>,
    stopping: Arc<AtomicBool>,
    died: watch::Sender<Option<ChildExit>>,
    kubelet: Option<Kubelet>,
    flux: Option<crate::flux::Flux>,
    stopped: bool,
    /// See [`SandboxOptions::audit`].
    audit: bool,
    /// How the API server was started, to start it again ([`Sandbox::start_apiserver`]).
    apiserver: Option<(PathBuf, Vec<String>)>,
    /// Set while the API server is stopped on purpose, so that its exit is not a death.
    apiserver_down: Arc<AtomicBool>,
}

struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    prometheus: u16,
}

const START_ATTEMPTS: u32 = 3;

/// A start that failed because a program could not bind its port.
fn is_port_clash(e: &Error) -> bool {
    matches!(e, Error::ChildExited(exit) if exit.log_tail.contains("address already in use"))
}

/// Free loopback ports for programs that bind them later (held together while picked, so they
/// differ).
///
/// They are picked below the kernel's ephemeral range when there is room: the kernel hands out
/// ephemeral ports to every `bind(:0)` and outgoing connection on the machine (the test servers,
/// the API server's clients), and one of those could take a port between this check and the
/// program's own bind. Outside that range only another caller of this function, picking at random, can
/// collide.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| parse_port_range(&t));
    let mut listeners = Vec::with_capacity(n);
    if let Some((low, _)) = range
        && low > PICK_FLOOR + 1000
    {
        let span = u32::from(low - PICK_FLOOR);
        let mut tries = 0;
        while listeners.len() < n && tries < 200 {
            tries += 1;
            let r = u32::from_str_radix(&random_hex(8), 16).unwrap_or(tries);
            let port = PICK_FLOOR + u16::try_from(r % span).unwrap_or(0);
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(l);
            }
        }
    }
    while listeners.len() < n {
        listeners.push(TcpListener::bind("127.0.0.1:0")?);
    }
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The lowest port [`free_ports`] picks: above the registered services people run locally.
const PICK_FLOOR: u16 = 20000;

/// `ip_local_port_range`: "32768\t60999".
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

impl Sandbox {
    /// Starts etcd, kube-apiserver, kube-controller-manager, Prometheus and the simulated kubelet,
    /// installs the CRDs, and returns once all of it answers.
    ///
    /// The ports are picked before the programs bind them, so another process can take one in
    /// between; a start that fails that way is retried on fresh ports, up to three times.
    pub async fn start(opts: SandboxOptions) -> Result<Sandbox, Error> {
        let t0 = Instant::now();
        let bins = locate()?;
        sweep_stale_temp_dirs();
        let mut attempt = 1;
        loop {
            match Self::start_once(&opts, &bins, t0).await {
                Err(e) if attempt < START_ATTEMPTS && is_port_clash(&e) => {
                    tracing::warn!("sandbox start attempt {attempt} lost a port ({e}); retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        opts: &SandboxOptions,
        bins: &Binaries,
        t0: Instant,
    ) -> Result<Sandbox, Error> {
        let (dir, data_dir, temp) = prepare_dirs(opts.dir.as_deref())?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io_err(format!("creating {}", logs.display())))?;
        let ports = free_ports(4).map_err(io_err("picking free loopback ports"))?;
        let ports = Ports {
            etcd_client: ports[0],
            etcd_peer: ports[1],
            apiserver: ports[2],
            prometheus: ports[3],
        };
        let (died, _) = watch::channel(None);
        let api_url = format!("https://127.0.0.1:{}", ports.apiserver);
        let mut base_config = kube::Config::new(
            api_url
                .parse()
                .map_err(|e| Error::Other(format!("bad API server URL {api_url}: {e}")))?,
        );
        base_config.accept_invalid_certs = true;
        let mut sb = Sandbox {
            kubeconfig: dir.join("kubeconfig"),
            env_file: dir.join("env"),
            sd_file: data_dir.join("prometheus").join("targets.json"),
            dir,
            data_dir,
            temp,
            logs,
            api_url,
            base_config,
            admin_token: random_hex(32),
            users: opts.users.clone(),
            prometheus_url: format!("http://127.0.0.1:{}", ports.prometheus),
            targets: Mutex::new(BTreeMap::new()),
            started_at: t0,
            startup: Duration::ZERO,
            children: Vec::new(),
            stopping: Arc::new(AtomicBool::new(false)),
            died,
            kubelet: None,
            flux: None,
            stopped: false,
            audit: opts.audit,
            apiserver: None,
            apiserver_down: Arc::new(AtomicBool::new(false)),
        };
        // On any error `sb` is dropped here, which tears down whatever did start.
        sb.boot(bins, &ports).await?;
        if opts.flux {
            sb.flux = Some(crate::flux::Flux::start(&sb).await?);
        }
        sb.startup = t0.elapsed();
        Ok(sb)
    }

    async fn boot(&mut self, bins: &Binaries, ports: &Ports) -> Result<(), Error> {
        let etcd_dir = self.data_dir.join("etcd");
        let etcd_client = format!("http://127.0.0.1:{}", ports.etcd_client);
        let etcd_peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
        self.spawn(
            "etcd",
            &bins.etcd,
            &[
                "--name=serin".into(),
                format!("--data-dir={}", etcd_dir.display()),
                format!("--listen-client-urls={etcd_client}"),
                format!("--advertise-client-urls={etcd_client}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=serin={etcd_peer}"),
                "--log-level=warn".into(),
                "--logger=zap".into(),
            ],
        )?;

        // Prometheus needs nothing from Kubernetes: start it now.
        let prom_dir = self.data_dir.join("prometheus");
        std::fs::create_dir_all(&prom_dir).map_err(io_err("creating the Prometheus directory"))?;
        self.write_targets()?;
        let prom_config = prom_dir.join("prometheus.yml");
        write_file(
            &prom_config,
            &prometheus_config(ports.prometheus, &self.sd_file),
        )?;
        self.spawn(
            "prometheus",
            &bins.prometheus,
            &[
                format!("--config.file={}", prom_config.display()),
                format!("--storage.tsdb.path={}", prom_dir.join("tsdb").display()),
                format!("--web.listen-address=127.0.0.1:{}", ports.prometheus),
            ],
        )?;

        let pki = self.data_dir.join("pki");
        std::fs::create_dir_all(&pki).map_err(io_err("creating the pki directory"))?;
        let (sa_key, sa_pub) = (pki.join("sa.key"), pki.join("sa.pub"));
        service_account_keys(&sa_key, &sa_pub).await?;
        let tokens = pki.join("tokens.csv");
        write_file(&tokens, &token_csv(&self.admin_token, &self.users))?;
        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_client}"),
            format!("--cert-dir={}", pki.join("serving").display()),
            format!("--secure-port={}", ports.apiserver),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=RBAC".into(),
            // Room for tens of thousands of Services (a /24 is full at about 84 canaries).
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            // Otherwise it refuses to start: 127.0.0.1 is no address to publish as the
            // `kubernetes` Service's endpoint, and no pod here needs that endpoint.
            "--endpoint-reconciler-type=none".into(),
        ];
        if self.audit {
            let policy = pki.join("audit-policy.yaml");
            write_file(&policy, &audit_policy(&self.users))?;
            apiserver_args.extend([
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", self.audit_log_path().display()),
                "--audit-log-format=json".into(),
            ]);
        }
        self.apiserver = Some((bins.kube_apiserver.clone(), apiserver_args.clone()));
        let down = self.apiserver_down.clone();
        self.spawn_flagged(
            "kube-apiserver",
            &bins.kube_apiserver,
            &apiserver_args,
            down,
        )?;
        write_file(
            &self.kubeconfig,
            &kubeconfig_yaml(&self.api_url, "admin", &self.admin_token),
        )?;
        self.wait_apiserver_ready().await?;

        self.spawn(
            "kube-controller-manager",
            &bins.kube_controller_manager,
            &[
                format!("--kubeconfig={}", self.kubeconfig.display()),
                format!("--service-account-private-key-file={}", sa_key.display()),
                // No nodes to allocate CIDRs to or to watch, no volumes: the simulated kubelet
                // plays the node. (1.3x refuses unknown or cloud-only names here.) No Endpoints
                // or EndpointSlices either: nothing in the sandbox reads them (the mesh simulator
                // routes by Deployment), and at 5,000 canaries keeping them for 15,000 Services
                // took much of the machine's CPU that the controllers being measured need.
                "--controllers=*,-node-ipam-controller,-node-lifecycle-controller,-persistentvolume-attach-detach-controller,-persistentvolume-binder-controller,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller".into(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                // Its default client rate (20 QPS) made 1,000 Deployments take minutes to become
                // available and a burst of 100 releases 29 s: the sandbox must not be what a
                // benchmark measures.
                "--kube-api-qps=1000".into(),
                "--kube-api-burst=2000".into(),
                "--concurrent-deployment-syncs=20".into(),
                "--concurrent-replicaset-syncs=20".into(),
            ],
        )?;

        let (kubelet, kubelet_ready) =
            Kubelet::start(self.config()).map_err(io_err("starting the simulated kubelet"))?;
        self.kubelet = Some(kubelet);

        let client = self.try_client()?;
        install_crds(&client, bins).await?;
        tracing::info!(
            "CRDs established {:.2} s after start",
            self.started_at.elapsed().as_secs_f64()
        );

        self.race("the simulated kubelet", async {
            match kubelet_ready.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::Other(e)),
                Err(_) => Err(Error::Other("the simulated kubelet stopped".into())),
            }
        })
        .await?;

        let http = probe_client()?;
        let prom_ready = format!("{}/-/ready", self.prometheus_url);
        self.until_ready("prometheus", || {
            let (http, url) = (http.clone(), prom_ready.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await?;

        // Pods are refused until their namespace's service account exists, which the controller
        // manager makes. (Since 1.24 it makes no token Secret: pods get a projected token.)
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        self.until_ready("kube-controller-manager (default service account)", || {
            let sa = sa.clone();
            async move { sa.get_opt("default").await.ok().flatten().is_some() }
        })
        .await?;

        write_file(
            &self.env_file,
            &format!(
                "export KUBECONFIG={}\nexport PROMETHEUS_URL={}\n",
                shell_quote(&self.kubeconfig.display().to_string()),
                shell_quote(&self.prometheus_url)
            ),
        )?;
        Ok(())
    }

    /// Polls the API server's `/readyz` until it answers OK.
    async fn wait_apiserver_ready(&self) -> Result<(), Error> {
        let http = probe_client()?;
        let readyz = format!("{}/readyz", self.api_url);
        let token = self.admin_token.clone();
        self.until_ready("kube-apiserver", || {
            let (http, readyz, token) = (http.clone(), readyz.clone(), token.clone());
            async move {
                http.get(&readyz)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    }

    /// Kills the API server (SIGKILL, as a crash or a node loss would) and waits until it has
    /// exited. etcd and everything else keep running; [`Sandbox::start_apiserver`] brings it back.
    pub fn stop_apiserver(&mut self) -> Result<(), Error> {
        let Some(i) = self
            .children
            .iter()
            .position(|c| c.name() == "kube-apiserver")
        else {
            return Err(Error::Other("the API server is not running".into()));
        };
        self.apiserver_down.store(true, Ordering::SeqCst);
        let child = self.children.remove(i);
        child.signal(libc::SIGKILL);
        if !child.wait_until(Instant::now() + Duration::from_secs(10)) {
            return Err(Error::Other(format!(
                "kube-apiserver (pid {}) survived SIGKILL",
                child.pid()
            )));
        }
        Ok(())
    }

    /// Starts the API server again with the same port, etcd data, certificates and tokens, so
    /// that every kubeconfig and client keeps working, and waits until it is ready.
    pub async fn start_apiserver(&mut self) -> Result<(), Error> {
        let Some((program, args)) = self.apiserver.clone() else {
            return Err(Error::Other("the API server was never started".into()));
        };
        if self.children.iter().any(|c| c.name() == "kube-apiserver") {
            return Err(Error::Other("the API server is already running".into()));
        }
        // A fresh flag: the stopped process's waiter holds the old one (set).
        self.apiserver_down = Arc::new(AtomicBool::new(false));
        let down = self.apiserver_down.clone();
        self.spawn_flagged("kube-apiserver", &program, &args, down)?;
        self.wait_apiserver_ready().await
    }

    /// [`Sandbox::stop_apiserver`], `down` of outage, then [`Sandbox::start_apiserver`]: what a
    /// control-plane upgrade does to the controllers of a cluster.
    pub async fn restart_apiserver(&mut self, down: Duration) -> Result<(), Error> {
        self.stop_apiserver()?;
        tokio::time::sleep(down).await;
        self.start_apiserver().await
    }

    /// Freezes Prometheus (SIGSTOP) without killing it: it neither scrapes nor answers, and
    /// connections to it hang instead of being refused, as an overloaded or partitioned server
    /// does. Its data and port stay, so [`Sandbox::resume_prometheus`] is a plain resume.
    pub fn pause_prometheus(&self) -> Result<(), Error> {
        self.signal_child("prometheus", libc::SIGSTOP)
    }

    /// Undoes [`Sandbox::pause_prometheus`] (SIGCONT).
    pub fn resume_prometheus(&self) -> Result<(), Error> {
        self.signal_child("prometheus", libc::SIGCONT)
    }

    fn signal_child(&self, name: &str, sig: libc::c_int) -> Result<(), Error> {
        let child = self
            .children
            .iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| Error::Other(format!("{name} is not running")))?;
        child.signal(sig);
        Ok(())
    }

    /// Starts a program beside the control plane (the demo's controller and load tester). It is
    /// supervised like the others: its death shows in [`Sandbox::died`], and it stops with them.
    pub fn spawn_service(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> Result<(), Error> {
        self.spawn(name, program, args)
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> Result<(), Error> {
        let stopping = self.stopping.clone();
        self.spawn_flagged(name, program, args, stopping)
    }

    /// [`Sandbox::spawn`] for a child whose exit is also expected once `expected` is set.
    fn spawn_flagged(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        expected: Arc<AtomicBool>,
    ) -> Result<(), Error> {
        let child = Supervised::spawn(
            name,
            program,
            args,
            &self.logs.join(format!("{name}.log")),
            expected,
            self.exit_hook(),
        )
        .map_err(io_err(format!("starting {}", program.display())))?;
        self.children.push(child);
        Ok(())
    }

    /// What a child supervised beside the sandbox's own (Flux's controllers) calls when it dies
    /// unexpectedly: [`Sandbox::died`] resolves with its exit.
    pub(crate) fn exit_hook(&self) -> process::OnExit {
        let died = self.died.clone();
        let stopping = self.stopping.clone();
        Box::new(move |exit| {
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            died.send_if_modified(|d| {
                if d.is_none() {
                    *d = Some(exit);
                    true
                } else {
                    false
                }
            });
        })
    }

    /// Runs `fut`, failing early if a child dies meanwhile or the time runs out.
    async fn race<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let r = tokio::select! {
            r = tokio::time::timeout(READY_TIMEOUT, fut) => r.map_err(|_| Error::Timeout {
                what: what.to_string(),
                after: READY_TIMEOUT,
                details: self.log_tail_of(what),
            })?,
            exit = self.died() => Err(Error::ChildExited(exit)),
        };
        tracing::info!(
            "{what} ready {:.2} s after start",
            self.started_at.elapsed().as_secs_f64()
        );
        r
    }

    /// Polls `probe` every 50 ms until it says yes.
    async fn until_ready<F, Fut>(&self, what: &str, probe: F) -> Result<(), Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.race(what, async {
            while !probe().await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        })
        .await
    }

    fn log_tail_of(&self, what: &str) -> String {
        self.children
            .iter()
            .find(|c| what.starts_with(c.name()))
            .map(|c| {
                format!(
                    "; last lines of {}:\n{}",
                    c.log().display(),
                    process::tail(c.log(), 20)
                )
            })
            .unwrap_or_default()
    }

    /// Resolves when a child exits on its own (never while stopping).
    pub async fn died(&self) -> ChildExit {
        let mut rx = self.died.subscribe();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                futures::future::pending::<()>().await;
            }
        }
    }

    /// The environment directory (kubeconfig, env, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The data directory (etcd, Prometheus, Flux's storage and Git repositories), removed on
    /// stop.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Flux, when started with [`SandboxOptions::flux`].
    pub fn flux(&self) -> Option<&crate::flux::Flux> {
        self.flux.as_ref()
    }

    /// The file to `source` for `KUBECONFIG` and `PROMETHEUS_URL`.
    pub fn env_path(&self) -> &Path {
        &self.env_file
    }

    pub fn logs_dir(&self) -> &Path {
        &self.logs
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn prometheus_url(&self) -> &str {
        &self.prometheus_url
    }

    /// The users added with [`SandboxOptions::add_user`].
    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// The API server's audit log, written when [`SandboxOptions::audit`] is set.
    pub fn audit_log_path(&self) -> PathBuf {
        self.logs.join("audit.log")
    }

    /// The supervised processes: (name, pid).
    pub fn processes(&self) -> Vec<(String, i32)> {
        let mut all: Vec<(String, i32)> = self
            .children
            .iter()
            .map(|c| (c.name().to_string(), c.pid()))
            .collect();
        if let Some(f) = &self.flux {
            all.extend(f.processes());
        }
        all
    }

    /// Wall clock from [`Sandbox::start`] until everything answered.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// A client config for the admin user.
    pub fn config(&self) -> kube::Config {
        self.config_for_token(&self.admin_token)
    }

    fn config_for_token(&self, token: &str) -> kube::Config {
        let mut config = self.base_config.clone();
        // AuthInfo keeps the token secret-wrapped; its Deserialize is the public way in.
        if let Ok(auth) =
            serde_json::from_value::<kube::config::AuthInfo>(serde_json::json!({ "token": token }))
        {
            config.auth_info = auth;
        }
        config
    }

    fn try_client(&self) -> Result<Client, Error> {
        Client::try_from(self.config()).map_err(kube_err("building a client"))
    }

    /// A new admin client, bound to the caller's tokio runtime (call it inside one).
    pub fn client(&self) -> Client {
        match self.try_client() {
            Ok(c) => c,
            Err(e) => panic!("the sandbox's own client config is broken: {e}"),
        }
    }

    /// A new client for a user added with [`SandboxOptions::add_user`].
    pub fn client_as(&self, user: &str) -> Option<Client> {
        let u = self.users.iter().find(|u| u.name == user)?;
        Client::try_from(self.config_for_token(&u.token)).ok()
    }

    /// Makes Prometheus scrape `addr` (`host:port`, path `/metrics`) as job `job`, replacing
    /// the job's previous target. Prometheus notices within about a second.
    pub fn register_scrape_target(&self, job: &str, addr: &str) -> std::io::Result<()> {
        self.update_targets(|t| {
            t.insert(job.to_string(), addr.to_string());
        })
        .map_err(std::io::Error::other)
    }

    /// Stops scraping `job`.
    pub fn unregister_scrape_target(&self, job: &str) -> std::io::Result<()> {
        self.update_targets(|t| {
            t.remove(job);
        })
        .map_err(std::io::Error::other)
    }

    fn write_targets(&self) -> Result<(), Error> {
        self.update_targets(|_| {})
    }

    /// Changes the target list and rewrites the file under one lock: tests register targets
    /// concurrently, and two writers sharing the temporary file name would race on its rename
    /// (the loser's rename finds the file gone).
    fn update_targets(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<(), Error> {
        let mut t = self
            .targets
            .lock()
            .map_err(|_| Error::Other("scrape target list poisoned".into()))?;
        change(&mut t);
        let groups: Vec<serde_json::Value> = t
            .iter()
            .map(|(job, addr)| serde_json::json!({"targets": [addr], "labels": {"job": job}}))
            .collect();
        let text = serde_json::to_string_pretty(&groups)
            .map_err(|e| Error::Other(format!("encoding scrape targets: {e}")))?;
        // Write then rename, so that Prometheus never reads half a file.
        write_file(&self.sd_file, &text)
    }

    /// Stops everything and removes the data (the same as dropping it).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.stopping.store(true, Ordering::SeqCst);
        // Flux's controllers go before the API server they talk to.
        if let Some(mut f) = self.flux.take() {
            f.stop();
        }
        if let Some(mut k) = self.kubelet.take() {
            k.stop();
        }
        process::stop_all(&self.children, STOP_GRACE);
        let removed = if self.temp {
            std::fs::remove_dir_all(&self.dir)
        } else {
            let _ = std::fs::remove_file(&self.env_file);
            let _ = std::fs::remove_file(&self.kubeconfig);
            std::fs::remove_dir_all(&self.data_dir)
        };
        if let Err(e) = removed {
            tracing::warn!("could not remove the sandbox data: {e}");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The HTTP client of readiness probes: the sandbox's self-signed certificates, no proxy.
fn probe_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Error::Other(format!("building an HTTP client: {e}")))
}

/// Every CRD the sandbox installs: serin's own and Istio's, as Istio publishes them.
pub fn sandbox_crds() -> Result<Vec<CustomResourceDefinition>, Error> {
    crds_of(&locate()?)
}

fn crds_of(bins: &Binaries) -> Result<Vec<CustomResourceDefinition>, Error> {
    let mut crds = serin_api::crd::all();
    crds.extend(super::istio::crds(&bins.istio_crds).map_err(Error::Other)?);
    Ok(crds)
}

async fn install_crds(client: &Client, bins: &Binaries) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = crds_of(bins)?;
    let pp = PatchParams::apply("serin").force();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &Patch::Apply(crd))
            .await
            .map_err(kube_err(format!("applying CRD {name}")))?;
    }
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let established = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            READY_TIMEOUT,
            kube::runtime::wait::await_condition(api.clone(), &name, established),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: format!("CRD {name} (Established)"),
            after: READY_TIMEOUT,
            details: String::new(),
        })?
        .map_err(|e| Error::Other(format!("waiting for CRD {name}: {e}")))?;
    }
    Ok(())
}

/// Creates the environment and data directories and records this process as their owner.
/// Returns (environment dir, data dir, whether the environment dir is ours to delete).
fn prepare_dirs(dir: Option<&Path>) -> Result<(PathBuf, PathBuf, bool), Error> {
    let (dir, data, temp) = match dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
            let d =
                std::fs::canonicalize(d).map_err(io_err(format!("resolving {}", d.display())))?;
            let data = d.join("data");
            if let Some(owner) = read_owner(&data)
                && owner.is_alive()
            {
                return Err(Error::AlreadyRunning {
                    dir: d,
                    pid: owner.pid,
                });
            }
            if data.exists() {
                std::fs::remove_dir_all(&data)
                    .map_err(io_err(format!("removing stale {}", data.display())))?;
            }
            (d, data, false)
        }
        None => {
            let d = std::env::temp_dir().join(format!("{TEMP_PREFIX}{}", random_hex(8)));
            (d.clone(), d.join("data"), true)
        }
    };
    std::fs::create_dir_all(&data).map_err(io_err(format!("creating {}", data.display())))?;
    let me =
        ProcessId::current().ok_or_else(|| Error::Other("cannot read /proc/self/stat".into()))?;
    // The owner file goes in the directory that gets removed as a whole.
    let owner_dir = if temp { &dir } else { &data };
    write_file(&owner_dir.join(OWNER_FILE), &format!("{me}\n"))?;
    Ok((dir, data, temp))
}

fn read_owner(dir: &Path) -> Option<ProcessId> {
    ProcessId::parse(&std::fs::read_to_string(dir.join(OWNER_FILE)).ok()?)
}

/// Removes temp sandboxes whose owner died without cleaning up (SIGKILL, or a test binary whose
/// statics were never dropped).
pub fn sweep_stale_temp_dirs() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return removed;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if !is_ours || !path.is_dir() {
            continue;
        }
        let stale = match read_owner(&path) {
            Some(owner) => !owner.is_alive(),
            // Its creator writes the owner right after mkdir; give a crashed one a minute.
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60)),
        };
        if stale && std::fs::remove_dir_all(&path).is_ok() {
            tracing::info!("removed stale sandbox directory {}", path.display());
            removed.push(path);
        }
    }
    removed
}

/// Writes through a temporary name and renames, so readers never see half a file.
fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(io_err(format!("writing {}", path.display())))
}

/// A Prometheus config scraping itself and the targets in `sd_file`, every second.
pub fn prometheus_config(port: u16, sd_file: &Path) -> String {
    format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.0.1:{port}']
  - job_name: serin-sandbox
    honor_labels: true
    file_sd_configs:
      - files: ['{}']
        refresh_interval: 1s
",
        sd_file.display()
    )
}

/// The API server's static token file: the admin, then the extra users.
pub fn token_csv(admin_token: &str, users: &[User]) -> String {
    let mut out = format!("{admin_token},admin,admin,system:masters\n");
    for u in users {
        let _ = write!(out, "{},{},{}", u.token, u.name, u.name);
        if !u.groups.is_empty() {
            let _ = write!(out, ",\"{}\"", u.groups.join(","));
        }
        out.push('\n');
    }
    out
}

/// Metadata of the extra users' requests, each logged once when received (no request or
/// response bodies, no second line when the response completes), nothing of anyone else.
pub fn audit_policy(users: &[User]) -> String {
    let mut out = String::from(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [ResponseStarted, ResponseComplete, Panic]\nrules:\n",
    );
    if !users.is_empty() {
        let names: Vec<String> = users.iter().map(|u| format!("{:?}", u.name)).collect();
        let _ = writeln!(
            out,
            "  - level: Metadata\n    users: [{}]",
            names.join(", ")
        );
    }
    out.push_str("  - level: None\n");
    out
}

pub fn kubeconfig_yaml(server: &str, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: serin-sandbox
    cluster:
      server: {server}
      insecure-skip-tls-verify: true
users:
  - name: {user}
    user:
      token: {token}
contexts:
  - name: serin-sandbox
    context:
      cluster: serin-sandbox
      user: {user}
      namespace: default
current-context: serin-sandbox
"
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `openssl genrsa` and `openssl rsa -pubout`, as a real cluster's service-account keys.
async fn service_account_keys(key: &Path, public: &Path) -> Result<(), Error> {
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("openssl")
            .args(&args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(io_err("running openssl"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    let (k, p) = (key.display().to_string(), public.display().to_string());
    run(vec![
        "genrsa".into(),
        "-out".into(),
        k.clone(),
        "2048".into(),
    ])
    .await?;
    run(vec![
        "rsa".into(),
        "-in".into(),
        k,
        "-pubout".into(),
        "-out".into(),
        p,
    ])
    .await
}

/// Random lowercase hex from the kernel; falls back to time and pid if /dev/urandom is unreadable.
pub fn random_hex(len: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; len.div_ceil(2)];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !ok {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            ^ u128::from(std::process::id());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(len);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_policy_logs_only_the_extra_users_once_per_request() {
        let users = vec![User {
            name: "bench-serin".into(),
            groups: vec!["system:masters".into()],
            token: "t".into(),
        }];
        let v: serde_json::Value = serde_yaml_ng::from_str(&audit_policy(&users)).unwrap();
        assert_eq!(
            v["omitStages"],
            serde_json::json!(["ResponseStarted", "ResponseComplete", "Panic"])
        );
        assert_eq!(v["rules"][0]["level"], "Metadata");
        assert_eq!(v["rules"][0]["users"], serde_json::json!(["bench-serin"]));
        assert_eq!(v["rules"][1]["level"], "None");
        let none: serde_json::Value = serde_yaml_ng::from_str(&audit_policy(&[])).unwrap();
        assert_eq!(none["rules"], serde_json::json!([{"level": "None"}]));
    }

    #[test]
    fn token_file_has_admin_then_users_with_quoted_groups() {
        let users = vec![
            User {
                name: "alice".into(),
                groups: vec!["dev".into(), "ops".into()],
                token: "t1".into(),
            },
            User {
                name: "bob".into(),
                groups: vec![],
                token: "t2".into(),
            },
        ];
        assert_eq!(
            token_csv("adm", &users),
            "adm,admin,admin,system:masters\nt1,alice,alice,\"dev,ops\"\nt2,bob,bob\n"
        );
    }

    #[test]
    fn add_user_returns_a_fresh_token_and_replaces_a_same_named_user() {
        let mut o = SandboxOptions::default();
        let t1 = o.add_user("alice", &["dev"]);
        let t2 = o.add_user("alice", &["ops"]);
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 32);
        assert_eq!(o.users().len(), 1);
        assert_eq!(o.users()[0].token, t2);
        assert_eq!(o.users()[0].groups, vec!["ops".to_string()]);
    }

    #[test]
    fn prometheus_config_scrapes_every_second_from_the_sd_file() {
        let c = prometheus_config(9999, Path::new("/x/targets.json"));
        let v: serde_json::Value = serde_yaml_ng::from_str(&c).unwrap();
        assert_eq!(v["global"]["scrape_interval"], "1s");
        assert_eq!(v["global"]["evaluation_interval"], "1s");
        assert_eq!(
            v["scrape_configs"][0]["static_configs"][0]["targets"][0],
            "127.0.0.1:9999"
        );
        let sd = &v["scrape_configs"][1]["file_sd_configs"][0];
        assert_eq!(sd["files"][0], "/x/targets.json");
        assert_eq!(sd["refresh_interval"], "1s");
    }

    #[test]
    fn kubeconfig_parses_with_kube() {
        let text = kubeconfig_yaml("https://127.0.0.1:6443", "admin", "tok");
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("serin-sandbox"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.insecure_skip_tls_verify, Some(true));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn free_ports_differ_and_avoid_the_ephemeral_range() {
        let p = free_ports(4).unwrap();
        let set: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(set.len(), 4);
        assert!(p.iter().all(|&x| x != 0));
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| parse_port_range(&t));
        if let Some((low, _)) = range.filter(|(low, _)| *low > PICK_FLOOR + 1000) {
            assert!(p.iter().all(|&x| (PICK_FLOOR..low).contains(&x)), "{p:?}");
        }
    }

    #[test]
    fn port_range_parsing() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range(""), None);
        assert_eq!(parse_port_range("x 2"), None);
    }

    #[test]
    fn only_a_bind_failure_is_a_port_clash() {
        let exit = |tail: &str| {
            Error::ChildExited(ChildExit {
                name: "prometheus".into(),
                status: "exit status: 1".into(),
                log_tail: tail.into(),
                log: PathBuf::from("/x/prometheus.log"),
            })
        };
        assert!(is_port_clash(&exit(
            "err=\"listen tcp 127.0.0.1:41481: bind: address already in use\""
        )));
        assert!(!is_port_clash(&exit("panic: something else")));
        assert!(!is_port_clash(&Error::Other(
            "address already in use".into()
        )));
    }

    #[test]
    fn stale_temp_dirs_are_swept_and_live_ones_kept() {
        let tmp = std::env::temp_dir();
        let dead = tmp.join(format!("{TEMP_PREFIX}unit-dead-{}", random_hex(6)));
        let live = tmp.join(format!("{TEMP_PREFIX}unit-live-{}", random_hex(6)));
        std::fs::create_dir_all(dead.join("data")).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        // pid_max is at most 2^22, so this owner cannot be alive.
        std::fs::write(dead.join(OWNER_FILE), "999999999 1\n").unwrap();
        std::fs::write(
            live.join(OWNER_FILE),
            ProcessId::current().unwrap().to_string(),
        )
        .unwrap();
        let removed = sweep_stale_temp_dirs();
        assert!(removed.contains(&dead), "{removed:?}");
        assert!(!dead.exists());
        assert!(live.exists());
        std::fs::remove_dir_all(&live).unwrap();
    }
}
