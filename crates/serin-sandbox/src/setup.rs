//! `serin-sandbox setup`: installs the Debian packages the sandbox needs, builds kube-apiserver,
//! kube-controller-manager and kubectl ([`KUBERNETES_VERSION`]) and etcd ([`ETCD_VERSION`]) from
//! their published Go modules with the machine's Go, and fetches Istio's CRDs from the
//! `istio.io/api` module ([`ISTIO_API_VERSION`]), caching all of it per machine. [`locate`] finds
//! what it left behind without installing anything, for the sandbox runtime and the tests.
//!
//! The recipe, and why each step is needed, is in docs/sandbox.md (section "Building Kubernetes
//! from the Go module proxy").

mod exec;
pub mod flux;
pub mod gobuild;
pub mod gomod;

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};

use exec::{Log, capture, secs, tail};

/// The Kubernetes release built and cached: the newest patch release whose go.mod the machine's
/// Go (1.26) can build. The sandbox's API is this version's.
pub const KUBERNETES_VERSION: &str = "v1.37.2";
pub const KUBERNETES_MODULE: &str = "k8s.io/kubernetes";
/// etcd built rather than Debian's 3.4: Kubernetes 1.3x reads consistent lists from its watch
/// cache only when etcd supports `RequestWatchProgress` (3.5 and later), as every real cluster's
/// does; against 3.4 it silently falls back to reading etcd.
pub const ETCD_VERSION: &str = "v3.6.17";
pub const ETCD_MODULE: &str = "go.etcd.io/etcd/server/v3";
/// The Istio API release whose generated CRDs the sandbox installs.
pub const ISTIO_API_VERSION: &str = "v1.32.0";
pub const ISTIO_API_MODULE: &str = "istio.io/api";
/// Inside the `istio.io/api` module: every Istio CRD with its OpenAPI schema and CEL rules.
pub const ISTIO_CRD_FILE: &str = "kubernetes/customresourcedefinitions.gen.yaml";
/// The oldest Go that builds [`KUBERNETES_VERSION`] (its go.mod says `go 1.26.0`).
pub const GO_MINIMUM: (u32, u32) = (1, 26);

/// Debian packages the sandbox needs. Go is not among them: Debian's is too old for a current
/// Kubernetes, so the build uses the machine's own (see [`find_go`]).
pub const PACKAGES: &[&str] = &["prometheus", "hey", "openssl"];

/// The binaries built from the Kubernetes module.
pub const KUBE_BINARIES: [&str; 3] = ["kube-apiserver", "kube-controller-manager", "kubectl"];
/// Every binary built and cached in [`kube_bin_dir`].
pub const BUILT_BINARIES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "etcd",
];

/// How the cached binaries were built. Change it whenever a change to the build changes what
/// the binaries do: binaries from another recipe count as not set up ([`locate`]) and are
/// rebuilt (`serin-sandbox setup`). Recipes 1 and 2 built v1.20.2 from Debian's source package.
pub const RECIPE: &str = "3: k8s.io/kubernetes v1.37.2 with its staging modules at v0.37.2, go.etcd.io/etcd/server/v3 v3.6.17; Go module proxy";
/// Next to the binaries, holding the [`RECIPE`] that built them.
pub const RECIPE_FILE: &str = "recipe";

/// The sandbox's programs and files, as found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    /// The kubectl built with the API server: the tests and the demo run this one, so that
    /// `kubectl apply -k` and `--server-side` behave as the server's own release does.
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
    pub prometheus: PathBuf,
    pub hey: Option<PathBuf>,
    /// Istio's generated CRD file.
    pub istio_crds: PathBuf,
}

/// One required program that [`locate`] could not find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingBinary {
    pub name: String,
    /// Where it was looked for, as a user would check it.
    pub looked_in: String,
    /// Where it comes from.
    pub provided_by: String,
}

/// Cached Kubernetes binaries built by another [`RECIPE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleBuild {
    pub dir: PathBuf,
    /// The recipe file's content, None when there is none (binaries from before recipes).
    pub found: Option<String>,
}

/// The sandbox cannot start: what is missing or outdated and how to get it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_missing(.missing, .stale.as_ref()))]
pub struct NotSetUp {
    pub missing: Vec<MissingBinary>,
    pub stale: Option<StaleBuild>,
}

fn describe_missing(missing: &[MissingBinary], stale: Option<&StaleBuild>) -> String {
    let mut items: Vec<String> = missing
        .iter()
        .map(|m| {
            format!(
                "{} is missing (looked in {}; {})",
                m.name, m.looked_in, m.provided_by
            )
        })
        .collect();
    if let Some(s) = stale {
        let found = match &s.found {
            Some(recipe) => format!("recipe `{recipe}`"),
            None => format!("no {RECIPE_FILE} file, an older recipe"),
        };
        items.push(format!(
            "the Kubernetes binaries in {} were built by {found}, not the current recipe `{RECIPE}`",
            s.dir.display()
        ));
    }
    format!(
        "the sandbox is not set up: {}. Run `serin-sandbox setup` (as root) to install and build them.",
        items.join("; ")
    )
}

/// Where serin caches what it builds: `$SERIN_CACHE_DIR`, else `$XDG_CACHE_HOME/serin`, else
/// `$HOME/.cache/serin`.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var_os("SERIN_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`cache_dir`] without the environment. Empty values count as unset; a relative
/// `XDG_CACHE_HOME` is ignored, as the XDG spec says.
pub fn cache_dir_from(
    serin: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(serin) {
        return dir;
    }
    if let Some(xdg) = set(xdg_cache_home).filter(|p| p.is_absolute()) {
        return xdg.join("serin");
    }
    match set(home) {
        Some(home) => home.join(".cache").join("serin"),
        // No home at all (a bare service environment): still somewhere stable per machine.
        None => std::env::temp_dir().join("serin-cache"),
    }
}

/// Where the binaries of [`KUBERNETES_VERSION`] (and etcd) are cached under `cache`.
pub fn kube_bin_dir(cache: &Path) -> PathBuf {
    cache.join("kubernetes").join(KUBERNETES_VERSION)
}

/// Where Istio's CRD file of [`ISTIO_API_VERSION`] is cached under `cache`.
pub fn istio_crds_path(cache: &Path) -> PathBuf {
    cache
        .join("istio")
        .join(ISTIO_API_VERSION)
        .join("customresourcedefinitions.gen.yaml")
}

/// The kubectl to run against a sandbox: the one built with its API server when set up, else
/// the PATH's.
pub fn kubectl() -> PathBuf {
    let built = kube_bin_dir(&cache_dir()).join("kubectl");
    if is_executable(&built) {
        built
    } else {
        PathBuf::from("kubectl")
    }
}

/// Finds the sandbox's programs without installing anything: the built binaries in the cache
/// only (a kube-apiserver of another version found on PATH would behave differently), and only
/// when built by the current [`RECIPE`]; Istio's CRDs in the cache; the rest in /usr/bin, then
/// PATH.
pub fn locate() -> Result<Binaries, NotSetUp> {
    locate_in(&cache_dir(), &search_dirs())
}

/// Debian's packages install into /usr/bin, which a service's PATH may lack.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// [`locate`] with the cache directory and the program search directories given.
pub fn locate_in(cache: &Path, search: &[PathBuf]) -> Result<Binaries, NotSetUp> {
    let mut missing = Vec::new();
    let bin_dir = kube_bin_dir(cache);
    let mut cached = |name: &str| {
        let path = bin_dir.join(name);
        if !is_executable(&path) {
            let module = if name == "etcd" {
                format!("{ETCD_MODULE} {ETCD_VERSION}")
            } else {
                format!("{KUBERNETES_MODULE} {KUBERNETES_VERSION}")
            };
            missing.push(MissingBinary {
                name: name.to_string(),
                looked_in: path.display().to_string(),
                provided_by: format!("built from the Go module {module} by `serin-sandbox setup`"),
            });
        }
        path
    };
    let kube_apiserver = cached("kube-apiserver");
    let kube_controller_manager = cached("kube-controller-manager");
    let kubectl = cached("kubectl");
    let etcd = cached("etcd");
    let istio_crds = istio_crds_path(cache);
    if !istio_crds.is_file() {
        missing.push(MissingBinary {
            name: "Istio's CRDs".to_string(),
            looked_in: istio_crds.display().to_string(),
            provided_by: format!(
                "{ISTIO_CRD_FILE} of the Go module {ISTIO_API_MODULE} {ISTIO_API_VERSION}, fetched by `serin-sandbox setup`"
            ),
        });
    }
    let searched = search
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let prometheus = find_program("prometheus", search).unwrap_or_else(|| {
        missing.push(MissingBinary {
            name: "prometheus".to_string(),
            looked_in: searched.clone(),
            provided_by: "Debian package prometheus".to_string(),
        });
        PathBuf::from("prometheus")
    });
    // Missing binaries are rebuilt by the current recipe anyway: no need to say more.
    let built_missing = missing
        .iter()
        .any(|m| BUILT_BINARIES.contains(&m.name.as_str()));
    let stale = match read_recipe(&bin_dir) {
        Some(found) if recipe_matches(&found) => None,
        _ if built_missing => None,
        found => Some(StaleBuild {
            dir: bin_dir.clone(),
            found: found.map(|f| f.trim_end().to_string()),
        }),
    };
    if !missing.is_empty() || stale.is_some() {
        return Err(NotSetUp { missing, stale });
    }
    Ok(Binaries {
        kube_apiserver,
        kube_controller_manager,
        kubectl,
        etcd,
        prometheus,
        hey: find_program("hey", search),
        istio_crds,
    })
}

/// The recipe file's content; None when it cannot be read (absent: built before recipes).
fn read_recipe(bin_dir: &Path) -> Option<String> {
    fs::read_to_string(bin_dir.join(RECIPE_FILE)).ok()
}

/// Whether a recipe file's content names the current [`RECIPE`] (a trailing newline is fine).
pub fn recipe_matches(content: &str) -> bool {
    content.trim_end_matches(['\n', '\r']) == RECIPE
}

fn recipe_current(bin_dir: &Path) -> bool {
    read_recipe(bin_dir).is_some_and(|r| recipe_matches(&r))
}

/// Written only once every binary of this recipe is in place, by rename so that a reader sees
/// the old content or the new, never a torn one.
fn write_recipe(bin_dir: &Path) -> anyhow::Result<()> {
    let path = bin_dir.join(RECIPE_FILE);
    let partial = bin_dir.join(format!(".{RECIPE_FILE}.partial"));
    fs::write(&partial, format!("{RECIPE}\n"))
        .with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, &path)
        .with_context(|| format!("cannot move {} to {}", partial.display(), path.display()))
}

fn find_program(name: &str, search: &[PathBuf]) -> Option<PathBuf> {
    search
        .iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where everything lives under the cache directory.
struct Layout {
    cache: PathBuf,
    bin: PathBuf,
    istio_crds: PathBuf,
    /// The writable copies of the modules; deleted after a successful build.
    build: PathBuf,
    /// Where the 1.20 recipe kept its own Go build cache; removed if found.
    old_gocache: PathBuf,
}

impl Layout {
    fn new(cache: &Path) -> Self {
        let kube = cache.join("kubernetes");
        Layout {
            cache: cache.to_path_buf(),
            bin: kube_bin_dir(cache),
            istio_crds: istio_crds_path(cache),
            build: kube.join("build"),
            old_gocache: kube.join("go-build"),
        }
    }

    fn kube_tree(&self) -> PathBuf {
        self.build.join("kubernetes")
    }

    fn etcd_tree(&self) -> PathBuf {
        self.build.join("etcd")
    }

    /// Go's scratch space and the directory module downloads run in (outside any module).
    fn tmp(&self) -> PathBuf {
        self.build.join("tmp")
    }
}

/// What a step did.
enum Outcome {
    Done(String),
    Cached(String),
}

struct Steps {
    done: usize,
    total: usize,
}

impl Steps {
    fn run<T>(
        &mut self,
        name: &str,
        step: impl FnOnce() -> anyhow::Result<(Outcome, T)>,
    ) -> anyhow::Result<T> {
        self.done += 1;
        print!("[{}/{}] {name} ... ", self.done, self.total);
        let _ = std::io::stdout().flush();
        let began = Instant::now();
        let result = step();
        let took = secs(began.elapsed());
        let with_note = |note: String| {
            if note.is_empty() {
                String::new()
            } else {
                format!(" ({note})")
            }
        };
        match result {
            Ok((Outcome::Done(note), t)) => {
                println!("done in {took}{}", with_note(note));
                Ok(t)
            }
            Ok((Outcome::Cached(note), t)) => {
                println!("cached in {took}{}", with_note(note));
                Ok(t)
            }
            Err(e) => {
                println!("FAILED after {took}");
                Err(e)
            }
        }
    }
}

fn plain(r: anyhow::Result<Outcome>) -> anyhow::Result<(Outcome, ())> {
    r.map(|o| (o, ()))
}

/// Runs every set-up step, printing each with its duration. Idempotent: a second run finds
/// everything in place and only checks it.
pub fn run() -> anyhow::Result<()> {
    run_with(&flux::SetupOptions::default())
}

/// [`run`], and Flagger too when asked ([`flux::SetupOptions`]).
pub fn run_with(opts: &flux::SetupOptions) -> anyhow::Result<()> {
    let began = Instant::now();
    let layout = Layout::new(&cache_dir());
    fs::create_dir_all(&layout.bin).with_context(|| {
        format!(
            "cannot create the cache directory {}\nwhat to do: set SERIN_CACHE_DIR to a writable directory",
            layout.bin.display()
        )
    })?;
    let _lock = lock(&layout.cache.join("setup.lock"))?;
    let mut log = Log::open(&layout.cache.join("setup.log"))?;
    log.note(&format!(
        "\n=== serin-sandbox setup, {} ===",
        chrono::Utc::now().to_rfc3339()
    ))?;
    println!(
        "serin-sandbox setup: Kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION} and Istio's CRDs ({ISTIO_API_MODULE} {ISTIO_API_VERSION}) from the Go module proxy"
    );
    println!(
        "cache: {}   log: {}",
        layout.cache.display(),
        log.path().display()
    );

    let mut steps = Steps {
        done: 0,
        total: 10 + flux::step_count(opts),
    };
    steps.run("install Debian packages", || {
        plain(install_packages(&mut log))
    })?;

    // Binaries of another recipe are all rebuilt, even if they report the right version.
    let recipe_ok = recipe_current(&layout.bin);
    let to_build: Vec<&str> = BUILT_BINARIES
        .into_iter()
        .filter(|name| !(recipe_ok && is_cached(&layout.bin, name)))
        .collect();
    if !recipe_ok
        && BUILT_BINARIES
            .iter()
            .any(|n| is_executable(&layout.bin.join(n)))
    {
        let found = read_recipe(&layout.bin);
        println!(
            "the cached binaries were built by {}; rebuilding them with recipe `{RECIPE}`",
            found.map_or_else(
                || "an older recipe".to_string(),
                |f| format!("recipe `{}`", f.trim_end())
            )
        );
        log.note(&format!(
            "# rebuilding: {} does not hold `{RECIPE}`",
            layout.bin.join(RECIPE_FILE).display()
        ))?;
    }
    let kube_needed = KUBE_BINARIES.iter().any(|n| to_build.contains(n));
    let etcd_needed = to_build.contains(&"etcd");
    let istio_needed = !layout.istio_crds.is_file();
    let not_needed = || Outcome::Cached("already built".to_string());

    let go = steps.run(
        &format!("find Go {}.{} or later", GO_MINIMUM.0, GO_MINIMUM.1),
        || {
            if to_build.is_empty() && !istio_needed {
                return Ok((Outcome::Cached("not needed".to_string()), None));
            }
            let (go, version) = find_go(&go_candidates(&search_dirs()))?;
            let tmp = layout.tmp();
            fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            let note = format!("{} ({version})", go.display());
            log.note(&format!("# Go: {note}"))?;
            Ok((Outcome::Done(note), Some(go)))
        },
    )?;
    let go = go.as_deref();
    let need_go =
        || go.ok_or_else(|| anyhow!("no Go found (a bug: the step that finds it was skipped)"));

    steps.run(
        &format!("download {KUBERNETES_MODULE} {KUBERNETES_VERSION}"),
        || {
            if !kube_needed {
                return plain(Ok(not_needed()));
            }
            let staging = gomod::staging_version(KUBERNETES_VERSION)
                .ok_or_else(|| anyhow!("{KUBERNETES_VERSION} is not a Kubernetes 1.x version"))?;
            plain(prepare_module(
                &layout,
                &mut log,
                need_go()?,
                KUBERNETES_MODULE,
                KUBERNETES_VERSION,
                &layout.kube_tree(),
                &|_| staging.clone(),
            ))
        },
    )?;
    for name in KUBE_BINARIES {
        steps.run(&format!("build {name}"), || {
            if !to_build.contains(&name) {
                return plain(Ok(Outcome::Cached(
                    layout.bin.join(name).display().to_string(),
                )));
            }
            plain(build(
                &layout,
                &mut log,
                need_go()?,
                &layout.kube_tree(),
                &format!("./cmd/{name}"),
                name,
            ))
        })?;
    }
    steps.run(&format!("download {ETCD_MODULE} {ETCD_VERSION}"), || {
        if !etcd_needed {
            return plain(Ok(not_needed()));
        }
        plain(prepare_module(
            &layout,
            &mut log,
            need_go()?,
            ETCD_MODULE,
            ETCD_VERSION,
            &layout.etcd_tree(),
            // Its sibling modules (api, client/pkg, client/v3, pkg) are released together.
            &|_| ETCD_VERSION.to_string(),
        ))
    })?;
    steps.run("build etcd", || {
        if !etcd_needed {
            return plain(Ok(Outcome::Cached(
                layout.bin.join("etcd").display().to_string(),
            )));
        }
        plain(build(
            &layout,
            &mut log,
            need_go()?,
            &layout.etcd_tree(),
            ".",
            "etcd",
        ))
    })?;
    steps.run(
        &format!("fetch Istio's CRDs ({ISTIO_API_MODULE} {ISTIO_API_VERSION})"),
        || {
            if !istio_needed {
                return plain(Ok(Outcome::Cached(layout.istio_crds.display().to_string())));
            }
            plain(fetch_istio_crds(&layout, &mut log, need_go()?))
        },
    )?;
    steps.run("verify and clean up", || {
        plain(verify_and_clean(&layout, &mut log, &to_build))
    })?;
    flux::run_steps(&mut steps, &mut log, &layout.cache, opts)?;
    println!(
        "serin-sandbox setup: ready in {}; binaries in {}",
        secs(began.elapsed()),
        layout.bin.display()
    );
    Ok(())
}

/// Two set-ups at once would build into the same tree.
fn lock(path: &Path) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => bail!(
            "another `serin-sandbox setup` is running (it holds {})\nwhat to do: wait for it to finish, then run this again",
            path.display()
        ),
        Err(fs::TryLockError::Error(e)) => {
            Err(anyhow!(e).context(format!("cannot lock {}", path.display())))
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `dpkg-query -W -f='${Status}'` output → installed? (`install ok installed`, `hold ok
/// installed`; not `deinstall ok config-files`).
pub fn dpkg_status_installed(status: &str) -> bool {
    status.split_whitespace().nth(2) == Some("installed")
}

fn missing_packages(wanted: &[&'static str]) -> anyhow::Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for &package in wanted {
        let out = capture(
            Command::new("dpkg-query").args(["-W", "-f=${Status}", package]),
            "checking installed packages",
            "serin-sandbox setup needs a Debian system (dpkg-query not found)",
        )?;
        if !(out.status.success() && dpkg_status_installed(&String::from_utf8_lossy(&out.stdout))) {
            missing.push(package);
        }
    }
    Ok(missing)
}

fn install_packages(log: &mut Log) -> anyhow::Result<Outcome> {
    let missing = missing_packages(PACKAGES)?;
    if missing.is_empty() {
        return Ok(Outcome::Cached(format!(
            "all {} packages installed",
            PACKAGES.len()
        )));
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "Debian packages missing: {list}; installing them needs root\nwhat to do: run `sudo serin-sandbox setup`, or install them with `sudo apt-get install -y {list}` and run this again"
        );
    }
    log.run(
        Command::new("apt-get")
            .args(["-q", "update"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
        "check the network and the entries in /etc/apt/sources.list and /etc/apt/sources.list.d/, then run this again",
    )?;
    log.run(
        Command::new("apt-get")
            .args(["-q", "install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("installing {list}"),
        &format!("run `apt-get install -y {list}` by hand to see the whole problem, fix it, then run this again"),
    )?;
    let still = missing_packages(&missing)?;
    if !still.is_empty() {
        bail!(
            "apt-get reported success but these packages are still not installed: {}\nwhat to do: run `apt-get install -y {}` by hand and check its output",
            still.join(" "),
            still.join(" ")
        );
    }
    Ok(Outcome::Done(format!("installed {list}")))
}

/// Where Go is looked for, in order: the official release archive's usual place (Debian's
/// `golang-go` is older than any current Kubernetes allows), then each PATH directory, then
/// Debian's.
fn go_candidates(search: &[PathBuf]) -> Vec<PathBuf> {
    let mut all = vec![PathBuf::from("/usr/local/go/bin/go")];
    if let Some(path) = std::env::var_os("PATH") {
        all.extend(std::env::split_paths(&path).map(|d| d.join("go")));
    }
    all.extend(search.iter().map(|d| d.join("go")));
    all.push(PathBuf::from("/usr/lib/go/bin/go"));
    let mut seen = Vec::new();
    all.retain(|p| {
        let key = fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let new = is_executable(p) && !seen.contains(&key);
        seen.push(key);
        new
    });
    all
}

/// The first candidate whose Go is at least [`GO_MINIMUM`], with its version.
fn find_go(candidates: &[PathBuf]) -> anyhow::Result<(PathBuf, String)> {
    let mut found = Vec::new();
    for go in candidates {
        let out = Command::new(go)
            .args(["env", "GOVERSION"])
            // Report this Go's own version, never one it would download.
            .env("GOTOOLCHAIN", "local")
            .env_remove("GOROOT")
            .stdin(std::process::Stdio::null())
            .output();
        let Ok(out) = out else { continue };
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match gomod::parse_go_version(&version) {
            Some((major, minor, _)) if (major, minor) >= GO_MINIMUM => {
                return Ok((go.clone(), version));
            }
            _ => found.push(format!(
                "{} ({})",
                go.display(),
                if version.is_empty() {
                    "no version"
                } else {
                    &version
                }
            )),
        }
    }
    let (major, minor) = GO_MINIMUM;
    let found = if found.is_empty() {
        "no `go` at all".to_string()
    } else {
        format!("only {}", found.join(", "))
    };
    bail!(
        "building Kubernetes {KUBERNETES_VERSION} needs Go {major}.{minor} or later (its go.mod says go {major}.{minor}.0); found {found}\nwhat to do: install Go {major}.{minor} or later (the official release archive, unpacked so that /usr/local/go/bin/go exists, is looked at first; or put its bin directory first on the PATH), then run this again; Debian's golang-go is too old"
    )
}

/// A go command for the build: this Go and no downloaded toolchain; module mode, which may
/// update go.mod and go.sum (the edited go.mod needs the staging modules' sums); no workspace
/// (Kubernetes ships a go.work naming `./staging/...`, which the module does not contain);
/// Go's scratch space in serin's cache. The module and build caches stay the machine's: shared
/// with other Go builds (a rebuild after a recipe change reuses what was compiled), and Go trims
/// its build cache itself.
fn go_cmd(go: &Path, layout: &Layout, dir: &Path) -> Command {
    let mut cmd = Command::new(go);
    cmd.current_dir(dir)
        .env("PWD", dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("GOFLAGS", "-mod=mod -buildvcs=false")
        .env("GOTMPDIR", layout.tmp())
        .env_remove("GOROOT")
        .env_remove("GOBIN");
    cmd
}

const GO_TODO: &str = "see the log; building needs network access to the Go module proxy (GOPROXY) and a few GB of free disk for Go's build and module caches";

/// `go mod download -json MODULE@VERSION`: the module's directory in the module cache.
fn go_download(
    layout: &Layout,
    log: &mut Log,
    go: &Path,
    module: &str,
    version: &str,
) -> anyhow::Result<PathBuf> {
    let what = format!("downloading the Go module {module}@{version}");
    let mut cmd = go_cmd(go, layout, &layout.tmp());
    cmd.args(["mod", "download", "-json"])
        .arg(format!("{module}@{version}"));
    log.note(&format!("\n$ {}", exec::display(&cmd)))?;
    let out = capture(&mut cmd, &what, GO_TODO)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    log.note(&format!("{stdout}{stderr}# {}", out.status))?;
    let parsed: Option<gomod::Download> = serde_json::from_str(&stdout).ok();
    match parsed {
        Some(d) if out.status.success() && d.error.is_empty() && !d.dir.is_empty() => {
            Ok(PathBuf::from(d.dir))
        }
        other => {
            let error = other.map(|d| d.error).unwrap_or_default();
            bail!(
                "{what} failed ({}): {}\nwhat to do: check that the Go module proxy can be reached (`go env GOPROXY`) and serves {module}@{version}; the full output is in {}",
                out.status,
                tail(&format!("{error}\n{stderr}"), 10),
                log.path().display()
            )
        }
    }
}

/// Downloads a module and makes a writable copy of it at `tree` that builds on its own: its
/// local replaces become requirements ([`gomod::local_replace_edits`]).
fn prepare_module(
    layout: &Layout,
    log: &mut Log,
    go: &Path,
    module: &str,
    version: &str,
    tree: &Path,
    version_of: &dyn Fn(&str) -> String,
) -> anyhow::Result<Outcome> {
    let from = go_download(layout, log, go, module, version)?;
    if tree.exists() {
        // A leftover of an interrupted or failed run: start from a clean copy.
        fs::remove_dir_all(tree).with_context(|| format!("cannot remove {}", tree.display()))?;
    }
    let files = copy_dir(&from, tree)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tree.display()))?;
    // Kubernetes' vendor/ holds only OWNERS files in the module, and its go.work names
    // directories the module lacks: build in plain module mode.
    for leftover in ["vendor", "go.work", "go.work.sum"] {
        let p = tree.join(leftover);
        if p.is_dir() {
            fs::remove_dir_all(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        } else if p.exists() {
            fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    let what = format!("reading {}/go.mod", tree.display());
    let out = capture(
        go_cmd(go, layout, tree).args(["mod", "edit", "-json"]),
        &what,
        GO_TODO,
    )?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}\nwhat to do: remove {} and run this again",
            tail(&String::from_utf8_lossy(&out.stderr), 10),
            tree.display()
        );
    }
    let modfile: gomod::ModFile = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{what}: `go mod edit -json` printed something unexpected"))?;
    let edits = gomod::local_replace_edits(&modfile, version_of);
    if !edits.is_empty() {
        log.run(
            go_cmd(go, layout, tree).args(["mod", "edit"]).args(&edits),
            "replacing the module's local replaces by requirements",
            GO_TODO,
        )?;
    }
    let count = |flag: &str| edits.iter().filter(|e| e.starts_with(flag)).count();
    Ok(Outcome::Done(format!(
        "{files} files; {} local replaces dropped, {} of them required at their release instead",
        count("-dropreplace="),
        count("-require=")
    )))
}

/// Copies regular files recursively, writable (the module cache's are read-only); returns how
/// many.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<usize> {
    fs::create_dir_all(to)?;
    let mut count = 0;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::metadata(&src)?;
        if meta.is_dir() {
            count += copy_dir(&src, &dst)?;
        } else if meta.is_file() {
            fs::copy(&src, &dst)?;
            let mode = meta.permissions().mode() | 0o200;
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
            count += 1;
        }
    }
    Ok(count)
}

fn build(
    layout: &Layout,
    log: &mut Log,
    go: &Path,
    tree: &Path,
    package: &str,
    name: &str,
) -> anyhow::Result<Outcome> {
    let target = layout.bin.join(name);
    // Built under a name that never looks cached, renamed only once it proved itself.
    let partial = layout.bin.join(format!(".{name}.partial"));
    if partial.exists() {
        fs::remove_file(&partial)
            .with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    let mut cmd = go_cmd(go, layout, tree);
    cmd.args(["build", "-trimpath", "-o"]).arg(&partial);
    if name != "etcd" {
        let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let flags = gomod::version_ldflags(KUBERNETES_VERSION, &date)
            .ok_or_else(|| anyhow!("{KUBERNETES_VERSION} is not a version"))?;
        cmd.arg("-ldflags").arg(flags);
    } else {
        cmd.args(["-ldflags", "-s -w"]);
    }
    cmd.arg(package);
    log.run(&mut cmd, &format!("building {name}"), GO_TODO)?;
    let version = binary_version(&partial, name)?;
    if !reports_version(&version, name) {
        bail!(
            "the freshly built {name} reports `{version}`, not `{}`\nwhat to do: this is a bug in serin's build flags; see {}",
            expected_version(name),
            log.path().display()
        );
    }
    fs::rename(&partial, &target)
        .with_context(|| format!("cannot move {} to {}", partial.display(), target.display()))?;
    let size = fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    Ok(Outcome::Done(format!(
        "{:.0} MB, {}",
        size as f64 / 1e6,
        target.display()
    )))
}

/// The line a binary of this recipe prints when asked for its version.
fn expected_version(name: &str) -> String {
    match name {
        "kubectl" => format!("Client Version: {KUBERNETES_VERSION}"),
        "etcd" => format!("etcd Version: {}", ETCD_VERSION.trim_start_matches('v')),
        _ => format!("Kubernetes {KUBERNETES_VERSION}"),
    }
}

fn reports_version(output: &str, name: &str) -> bool {
    let want = expected_version(name);
    output.lines().any(|l| l.trim() == want)
}

/// What the binary prints when asked for its version, trimmed.
fn binary_version(binary: &Path, name: &str) -> anyhow::Result<String> {
    let args: &[&str] = if name == "kubectl" {
        &["version", "--client"]
    } else {
        &["--version"]
    };
    let out = capture(
        Command::new(binary).args(args).env_remove("KUBECONFIG"),
        &format!("running {} {}", binary.display(), args.join(" ")),
        "remove it and run `serin-sandbox setup` again",
    )?;
    if !out.status.success() {
        bail!(
            "`{} {}` {}: {}\nwhat to do: remove it and run `serin-sandbox setup` again",
            binary.display(),
            args.join(" "),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 10)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn is_cached(bin: &Path, name: &str) -> bool {
    let path = bin.join(name);
    is_executable(&path) && binary_version(&path, name).is_ok_and(|v| reports_version(&v, name))
}

/// Copies Istio's generated CRD file out of the `istio.io/api` module, once it proved to hold
/// the networking CRDs the sandbox needs.
fn fetch_istio_crds(layout: &Layout, log: &mut Log, go: &Path) -> anyhow::Result<Outcome> {
    let dir = go_download(layout, log, go, ISTIO_API_MODULE, ISTIO_API_VERSION)?;
    let source = dir.join(ISTIO_CRD_FILE);
    let text =
        fs::read_to_string(&source).with_context(|| format!("cannot read {}", source.display()))?;
    let crds = crate::istio::parse_crds(&text)
        .with_context(|| format!("{} does not parse as CRDs", source.display()))?;
    let names: Vec<String> = crds
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    for want in crate::istio::REQUIRED_CRDS {
        if !names.iter().any(|n| n == want) {
            bail!(
                "{} lacks the CRD {want}\nwhat to do: this is a bug in serin's pinned {ISTIO_API_MODULE} version",
                source.display()
            );
        }
    }
    let target = &layout.istio_crds;
    let parent = target
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", target.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let partial = target.with_extension("partial");
    fs::write(&partial, &text).with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, target)
        .with_context(|| format!("cannot move {} to {}", partial.display(), target.display()))?;
    log.note(&format!(
        "# copied {} to {}",
        source.display(),
        target.display()
    ))?;
    Ok(Outcome::Done(format!(
        "{} CRDs, {}",
        crds.len(),
        target.display()
    )))
}

/// Every binary was either found cached under this recipe (its version checked then) or just
/// built and checked: record the recipe, remove the build's leftovers.
fn verify_and_clean(layout: &Layout, log: &mut Log, built: &[&str]) -> anyhow::Result<Outcome> {
    if !recipe_current(&layout.bin) {
        write_recipe(&layout.bin)?;
        log.note(&format!(
            "# wrote {}",
            layout.bin.join(RECIPE_FILE).display()
        ))?;
    }
    let mut removed = Vec::new();
    for dir in [&layout.build, &layout.old_gocache] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
            log.note(&format!("# removed {}", dir.display()))?;
            removed.push(dir.display().to_string());
        }
    }
    let found = locate_in(&layout.cache, &search_dirs())?;
    let mut note = format!(
        "Kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION}; prometheus found, hey {}",
        if found.hey.is_some() {
            "found"
        } else {
            "not found"
        }
    );
    if !built.is_empty() {
        note.push_str(&format!("; built {}", built.join(", ")));
    }
    if !removed.is_empty() {
        note.push_str(&format!("; removed {}", removed.join(", ")));
    }
    Ok(if removed.is_empty() && built.is_empty() {
        Outcome::Cached(note)
    } else {
        Outcome::Done(note)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_precedence() {
        let s = |v: &str| Some(OsString::from(v));
        type Env = Option<OsString>;
        let cases: [(Env, Env, Env, &str); 7] = [
            (s("/c"), s("/x"), s("/h"), "/c"),
            (None, s("/x"), s("/h"), "/x/serin"),
            (None, None, s("/h"), "/h/.cache/serin"),
            (s(""), s(""), s("/h"), "/h/.cache/serin"),
            // A relative XDG_CACHE_HOME is invalid per the spec and ignored.
            (None, s("rel"), s("/h"), "/h/.cache/serin"),
            (s("rel/dir"), None, s("/h"), "rel/dir"),
            (None, s("/x/"), None, "/x/serin"),
        ];
        for (serin, xdg, home, want) in cases {
            assert_eq!(
                cache_dir_from(serin.clone(), xdg.clone(), home.clone()),
                PathBuf::from(want),
                "{serin:?} {xdg:?} {home:?}"
            );
        }
        assert_eq!(
            cache_dir_from(None, None, None),
            std::env::temp_dir().join("serin-cache")
        );
    }

    #[test]
    fn dpkg_status_table() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(dpkg_status_installed("hold ok installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed("install ok unpacked"));
        assert!(!dpkg_status_installed("unknown ok not-installed"));
        assert!(!dpkg_status_installed(""));
    }

    #[test]
    fn no_debian_go_or_kubernetes_package_is_wanted() {
        for gone in [
            "golang-go",
            "golang-github-modern-go-reflect2-dev",
            "dpkg-dev",
            "kubernetes-client",
            "etcd-server",
        ] {
            assert!(!PACKAGES.contains(&gone), "{gone}");
        }
    }

    #[test]
    fn layout_is_keyed_by_version() {
        assert_eq!(
            kube_bin_dir(Path::new("/c")),
            PathBuf::from("/c/kubernetes/v1.37.2")
        );
        assert_eq!(
            istio_crds_path(Path::new("/c")),
            PathBuf::from("/c/istio/v1.32.0/customresourcedefinitions.gen.yaml")
        );
        let l = Layout::new(Path::new("/c"));
        assert_eq!(
            l.kube_tree(),
            PathBuf::from("/c/kubernetes/build/kubernetes")
        );
        assert_eq!(l.etcd_tree(), PathBuf::from("/c/kubernetes/build/etcd"));
        assert_eq!(l.tmp(), PathBuf::from("/c/kubernetes/build/tmp"));
    }

    #[test]
    fn the_recipe_names_the_versions_it_builds() {
        assert!(RECIPE.contains(&format!("{KUBERNETES_MODULE} {KUBERNETES_VERSION}")));
        assert!(RECIPE.contains(&gomod::staging_version(KUBERNETES_VERSION).unwrap()));
        assert!(RECIPE.contains(&format!("{ETCD_MODULE} {ETCD_VERSION}")));
    }

    #[test]
    fn version_lines() {
        assert!(reports_version("Kubernetes v1.37.2", "kube-apiserver"));
        assert!(!reports_version("Kubernetes v1.20.2", "kube-apiserver"));
        assert!(reports_version(
            "Client Version: v1.37.2\nKustomize Version: v5.8.1",
            "kubectl"
        ));
        assert!(!reports_version(
            "Client Version: v1.32.4-dispatcher",
            "kubectl"
        ));
        assert!(reports_version(
            "etcd Version: 3.6.17\nGit SHA: Not provided\nGo Version: go1.26.8",
            "etcd"
        ));
        assert!(!reports_version("etcd Version: 3.4.23", "etcd"));
    }

    struct Temp(PathBuf);
    impl Temp {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("serin-locate-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Temp(dir)
        }
        fn exe(&self, rel: &str, mode: u32) -> PathBuf {
            self.file(rel, "#!/bin/sh\n", mode)
        }
        fn file(&self, rel: &str, text: &str, mode: u32) -> PathBuf {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }
    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const BIN: &str = "cache/kubernetes/v1.37.2";
    const ISTIO: &str = "cache/istio/v1.32.0/customresourcedefinitions.gen.yaml";

    #[test]
    fn locate_reports_exactly_what_is_missing() {
        let t = Temp::new("missing");
        let cache = t.0.join("cache");
        let bin = t.0.join("bin");
        // Debian's etcd on the search path does not count: only the built one.
        t.exe("bin/etcd", 0o755);
        // Not executable: does not count.
        t.exe("bin/prometheus", 0o644);
        t.exe(&format!("{BIN}/kube-apiserver"), 0o755);
        t.exe(&format!("{BIN}/kubectl"), 0o755);
        let err = locate_in(&cache, std::slice::from_ref(&bin)).unwrap_err();
        let names: Vec<&str> = err.missing.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kube-controller-manager",
                "etcd",
                "Istio's CRDs",
                "prometheus"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "kube-controller-manager is missing (looked in {}; built from the Go module k8s.io/kubernetes v1.37.2",
                cache.join("kubernetes/v1.37.2/kube-controller-manager").display()
            )),
            "{text}"
        );
        assert!(
            text.contains("built from the Go module go.etcd.io/etcd/server/v3 v3.6.17"),
            "{text}"
        );
        assert!(
            text.contains("kubernetes/customresourcedefinitions.gen.yaml of the Go module istio.io/api v1.32.0"),
            "{text}"
        );
        assert!(text.contains("Debian package prometheus"), "{text}");
        assert!(text.contains("Run `serin-sandbox setup`"), "{text}");
        assert!(!text.contains("kube-apiserver is missing"), "{text}");
    }

    #[test]
    fn locate_finds_everything_in_search_order() {
        let t = Temp::new("found");
        let cache = t.0.join("cache");
        let first = t.0.join("first");
        let second = t.0.join("second");
        let api = t.exe(&format!("{BIN}/kube-apiserver"), 0o755);
        let kcm = t.exe(&format!("{BIN}/kube-controller-manager"), 0o700);
        let kubectl = t.exe(&format!("{BIN}/kubectl"), 0o755);
        let etcd = t.exe(&format!("{BIN}/etcd"), 0o755);
        let istio = t.file(ISTIO, "", 0o644);
        t.exe("first/etcd", 0o755);
        let prom = t.exe("second/prometheus", 0o755);
        let hey = t.exe("second/hey", 0o755);
        // Programs on the search path are not used: only the cached builds count.
        t.exe("first/kube-apiserver", 0o755);
        t.exe("first/kubectl", 0o755);
        write_recipe(&kube_bin_dir(&cache)).unwrap();
        let b = locate_in(&cache, &[first, second]).unwrap();
        assert_eq!(
            b,
            Binaries {
                kube_apiserver: api,
                kube_controller_manager: kcm,
                kubectl,
                etcd,
                prometheus: prom,
                hey: Some(hey),
                istio_crds: istio,
            }
        );
    }

    #[test]
    fn recipe_file_content() {
        assert!(recipe_matches(RECIPE));
        assert!(recipe_matches(&format!("{RECIPE}\n")));
        assert!(recipe_matches(&format!("{RECIPE}\r\n")));
        assert!(!recipe_matches(""));
        assert!(!recipe_matches(&format!(" {RECIPE}")));
        assert!(!recipe_matches(&format!("{RECIPE}\nextra")));
        assert!(!recipe_matches(
            "2: Debian patches; reflect2 1.0.2; kube-openapi type validator without the zero-value check"
        ));
    }

    /// A complete cache without a recipe file.
    fn unmarked_cache(t: &Temp) -> (PathBuf, PathBuf) {
        let cache = t.0.join("cache");
        let bin = t.0.join("bin");
        for name in BUILT_BINARIES {
            t.exe(&format!("{BIN}/{name}"), 0o755);
        }
        t.file(ISTIO, "", 0o644);
        t.exe("bin/prometheus", 0o755);
        (cache, bin)
    }

    #[test]
    fn locate_refuses_binaries_of_another_recipe() {
        let t = Temp::new("stale");
        let (cache, bin) = unmarked_cache(&t);
        let dir = kube_bin_dir(&cache);

        let err = locate_in(&cache, std::slice::from_ref(&bin)).unwrap_err();
        assert!(err.missing.is_empty(), "{err:?}");
        assert_eq!(
            err.stale,
            Some(StaleBuild {
                dir: dir.clone(),
                found: None
            })
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "the Kubernetes binaries in {} were built by no recipe file",
                dir.display()
            )),
            "{text}"
        );
        assert!(text.contains("Run `serin-sandbox setup`"), "{text}");

        fs::write(dir.join(RECIPE_FILE), "1: something older\n").unwrap();
        let err = locate_in(&cache, std::slice::from_ref(&bin)).unwrap_err();
        assert_eq!(
            err.stale.and_then(|s| s.found),
            Some("1: something older".to_string())
        );

        write_recipe(&dir).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(RECIPE_FILE)).unwrap(),
            format!("{RECIPE}\n")
        );
        assert!(!dir.join(".recipe.partial").exists());
        let found = locate_in(&cache, std::slice::from_ref(&bin)).unwrap();
        assert_eq!(found.kube_apiserver, dir.join("kube-apiserver"));
    }

    #[test]
    fn missing_binaries_are_not_also_called_stale() {
        let t = Temp::new("stale-missing");
        let (cache, bin) = unmarked_cache(&t);
        let dir = kube_bin_dir(&cache);
        fs::remove_file(dir.join("etcd")).unwrap();
        let err = locate_in(&cache, std::slice::from_ref(&bin)).unwrap_err();
        assert_eq!(err.stale, None);
        let names: Vec<&str> = err.missing.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["etcd"]);
    }

    #[test]
    fn go_is_found_by_version_and_a_too_old_one_is_named() {
        let t = Temp::new("go");
        let old = t.file("old/go", "#!/bin/sh\necho go1.19.8\n", 0o755);
        let new = t.file("new/go", "#!/bin/sh\necho go1.26.8\n", 0o755);
        let broken = t.file("broken/go", "#!/bin/sh\nexit 1\n", 0o755);
        let (go, version) = find_go(&[old.clone(), broken.clone(), new.clone()]).unwrap();
        assert_eq!((go, version.as_str()), (new, "go1.26.8"));
        let err = find_go(&[old.clone(), broken]).unwrap_err().to_string();
        assert!(
            err.starts_with("building Kubernetes v1.37.2 needs Go 1.26 or later"),
            "{err}"
        );
        assert!(
            err.contains(&format!("{} (go1.19.8)", old.display())),
            "{err}"
        );
        assert!(
            err.contains("what to do: install Go 1.26 or later"),
            "{err}"
        );
        let err = find_go(&[]).unwrap_err().to_string();
        assert!(err.contains("found no `go` at all"), "{err}");
    }

    #[test]
    fn copied_modules_are_writable() {
        let t = Temp::new("copy");
        let f = t.file("from/a/b.go", "package b\n", 0o444);
        t.file("from/go.mod", "module x\n", 0o444);
        let n = copy_dir(&t.0.join("from"), &t.0.join("to")).unwrap();
        assert_eq!(n, 2);
        let mode = fs::metadata(t.0.join("to/a/b.go"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        fs::write(t.0.join("to/go.mod"), "module y\n").unwrap();
        fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
    }
}
