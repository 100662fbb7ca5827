//! `serin-sandbox setup`: installs the Debian packages the sandbox needs and builds
//! kube-apiserver and kube-controller-manager v1.20.2 from Debian's `kubernetes` source package,
//! caching the binaries per machine. [`locate`] finds what it left behind without installing
//! anything, for the sandbox runtime and the tests.
//!
//! The recipe, and why each odd step is needed, is in docs/sandbox.md (section "Building
//! Kubernetes 1.20 from Debian's source package").

pub mod apt;
mod exec;
pub mod tree;

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};

use exec::{Log, capture, secs, tail};

/// The Kubernetes version built and cached; the sandbox's API quirks are this version's.
pub const KUBERNETES_VERSION: &str = "v1.20.2";
/// Debian bookworm's source package: the upstream v1.20.2 tree with `vendor/` intact.
pub const SOURCE_PACKAGE: &str = "kubernetes";
pub const SOURCE_VERSION: &str = "1.20.5+really1.20.2-1.1+deb12u1";
const SUITE: &str = "bookworm";
const COMPONENT: &str = "main";

/// Debian packages the sandbox and the build need. dpkg-dev brings `dpkg-source`, which checks
/// the pieces against the `.dsc` and applies Debian's security patches.
pub const PACKAGES: &[&str] = &[
    "etcd-server",
    "golang-go",
    "golang-github-modern-go-reflect2-dev",
    "prometheus",
    "hey",
    "openssl",
    "dpkg-dev",
];

/// Debian's kubectl (1.20, with kustomize 2), installed only when no `kubectl` is on the PATH:
/// the demo's `kubectl describe` and the tests' `kubectl apply -k` need one, and a newer kubectl
/// the user already has is better than Debian's.
pub const KUBECTL_PACKAGE: &str = "kubernetes-client";

/// The Debian packages to have: [`PACKAGES`], plus [`KUBECTL_PACKAGE`] when there is no kubectl.
pub fn wanted_packages(kubectl_found: bool) -> Vec<&'static str> {
    let mut all = PACKAGES.to_vec();
    if !kubectl_found {
        all.push(KUBECTL_PACKAGE);
    }
    all
}

/// The two binaries built from source.
pub const KUBE_BINARIES: [&str; 2] = ["kube-apiserver", "kube-controller-manager"];

/// reflect2 1.0.1 (vendored by v1.20.2) crashes the API server under Go ≥ 1.18 when a custom
/// resource is written; Debian's 1.0.2 does not.
const REFLECT2_DEBIAN: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
const REFLECT2_VENDORED: &str = "vendor/github.com/modern-go/reflect2";

/// How the cached binaries were built. Change it whenever a change to the build changes what
/// the binaries do: binaries from another recipe count as not set up ([`locate`]) and are
/// rebuilt (`serin-sandbox setup`). Recipe 1 (no file) lacked the zero-value fix, so its API
/// server refused every empty string in a custom resource.
pub const RECIPE: &str =
    "2: Debian patches; reflect2 1.0.2; kube-openapi type validator without the zero-value check";
/// Next to the binaries, holding the [`RECIPE`] that built them.
pub const RECIPE_FILE: &str = "recipe";

/// The sandbox's programs, as found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub etcd: PathBuf,
    pub prometheus: PathBuf,
    pub kubectl: Option<PathBuf>,
    pub hey: Option<PathBuf>,
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

/// Where the two Kubernetes binaries of [`KUBERNETES_VERSION`] are cached under `cache`.
pub fn kube_bin_dir(cache: &Path) -> PathBuf {
    cache.join("kubernetes").join(KUBERNETES_VERSION)
}

/// Finds the sandbox's programs without installing anything: the Kubernetes binaries in the
/// cache only (a kube-apiserver of another version found on PATH would behave differently), and
/// only when built by the current [`RECIPE`]; the rest in /usr/bin, then PATH.
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
        if is_executable(&path) {
            path
        } else {
            missing.push(MissingBinary {
                name: name.to_string(),
                looked_in: path.display().to_string(),
                provided_by: format!(
                    "built from Debian's {SOURCE_PACKAGE} source package by `serin-sandbox setup`"
                ),
            });
            path
        }
    };
    let kube_apiserver = cached("kube-apiserver");
    let kube_controller_manager = cached("kube-controller-manager");
    let searched = search
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut required = |name: &str, package: &str| {
        find_program(name, search).unwrap_or_else(|| {
            missing.push(MissingBinary {
                name: name.to_string(),
                looked_in: searched.clone(),
                provided_by: format!("Debian package {package}"),
            });
            PathBuf::from(name)
        })
    };
    let etcd = required("etcd", "etcd-server");
    let prometheus = required("prometheus", "prometheus");
    // Missing Kubernetes binaries are rebuilt by the current recipe anyway: no need to say more.
    let kube_missing = missing
        .iter()
        .any(|m| KUBE_BINARIES.contains(&m.name.as_str()));
    let stale = match read_recipe(&bin_dir) {
        Some(found) if recipe_matches(&found) => None,
        _ if kube_missing => None,
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
        etcd,
        prometheus,
        kubectl: find_program("kubectl", search),
        hey: find_program("hey", search),
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

/// Written only once both binaries of this recipe are in place, by rename so that a reader sees
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
    /// The downloaded source package; kept so that a rebuild needs no download.
    source: PathBuf,
    /// Private apt sources file and lists: the system's apt configuration stays untouched.
    apt: PathBuf,
    /// The unpacked tree and tools; deleted after a successful build.
    build: PathBuf,
    gopath: PathBuf,
    tree: PathBuf,
    /// Go's build cache for this build; kept across a failed run, deleted after success.
    gocache: PathBuf,
}

impl Layout {
    fn new(cache: &Path) -> Self {
        let kube = cache.join("kubernetes");
        let build = kube.join("build");
        let gopath = build.join("gopath");
        let tree = gopath.join("src").join(tree::KUBE_IMPORT_ROOT);
        Layout {
            cache: cache.to_path_buf(),
            bin: kube_bin_dir(cache),
            source: kube.join("source").join(SOURCE_VERSION),
            apt: kube.join("apt"),
            build,
            gopath,
            tree,
            gocache: kube.join("go-build"),
        }
    }

    fn dsc(&self) -> PathBuf {
        self.source
            .join(format!("{SOURCE_PACKAGE}_{SOURCE_VERSION}.dsc"))
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
    fn run(
        &mut self,
        name: &str,
        step: impl FnOnce() -> anyhow::Result<Outcome>,
    ) -> anyhow::Result<()> {
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
            Ok(Outcome::Done(note)) => println!("done in {took}{}", with_note(note)),
            Ok(Outcome::Cached(note)) => println!("cached in {took}{}", with_note(note)),
            Err(e) => {
                println!("FAILED after {took}");
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Runs every set-up step, printing each with its duration. Idempotent: a second run finds
/// everything in place and only checks it.
pub fn run() -> anyhow::Result<()> {
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
        "serin-sandbox setup: Kubernetes {KUBERNETES_VERSION} from Debian's {SOURCE_PACKAGE} {SOURCE_VERSION}"
    );
    println!(
        "cache: {}   log: {}",
        layout.cache.display(),
        log.path().display()
    );

    let mut steps = Steps { done: 0, total: 7 };
    steps.run("install Debian packages", || install_packages(&mut log))?;

    // Binaries of another recipe are all rebuilt, even if they report the right version.
    let recipe_ok = recipe_current(&layout.bin);
    let to_build: Vec<&str> = KUBE_BINARIES
        .into_iter()
        .filter(|name| !(recipe_ok && is_cached(&layout.bin.join(name))))
        .collect();
    if !recipe_ok && KUBE_BINARIES.iter().any(|n| is_cached(&layout.bin.join(n))) {
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
    let built = |what: &str| Outcome::Cached(format!("binaries already built, no {what} needed"));
    steps.run("fetch Debian source package", || {
        if to_build.is_empty() {
            Ok(built("source"))
        } else {
            fetch_source(&layout, &mut log)
        }
    })?;
    steps.run("unpack source tree", || {
        if to_build.is_empty() {
            Ok(built("tree"))
        } else {
            unpack(&layout, &mut log)
        }
    })?;
    steps.run("generate openapi definitions", || {
        if to_build.is_empty() {
            Ok(built("generation"))
        } else {
            generate_openapi(&layout, &mut log)
        }
    })?;
    for name in KUBE_BINARIES {
        steps.run(&format!("build {name}"), || {
            if to_build.contains(&name) {
                build(&layout, &mut log, name)
            } else {
                Ok(Outcome::Cached(layout.bin.join(name).display().to_string()))
            }
        })?;
    }
    steps.run("verify and clean up", || {
        verify_and_clean(&layout, &mut log)
    })?;
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
    let wanted = wanted_packages(find_program("kubectl", &search_dirs()).is_some());
    let missing = missing_packages(&wanted)?;
    if missing.is_empty() {
        return Ok(Outcome::Cached(format!(
            "all {} packages installed",
            wanted.len()
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

/// The source package is complete when its `.dsc` and every piece it lists are there.
fn source_complete(dir: &Path, dsc_name: &str) -> bool {
    let Ok(dsc) = fs::read_to_string(dir.join(dsc_name)) else {
        return false;
    };
    let files = tree::dsc_files(&dsc);
    !files.is_empty() && files.iter().all(|f| dir.join(f).is_file())
}

fn find_mirror() -> anyhow::Result<apt::Mirror> {
    if let Some(uri) = std::env::var_os("SERIN_DEBIAN_MIRROR").filter(|v| !v.is_empty()) {
        return Ok(apt::Mirror {
            uri: uri.to_string_lossy().into_owned(),
            signed_by: None,
        });
    }
    let files = apt::system_source_files();
    let mut sources = Vec::new();
    for file in &files {
        match fs::read_to_string(file) {
            Ok(content) => sources.extend(apt::parse_file(file, &content)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!(
                "cannot read the apt sources file {}: {e}\nwhat to do: run as a user who can read it",
                file.display()
            ),
        }
    }
    apt::choose_mirror(&sources, SUITE, COMPONENT).ok_or_else(|| {
        let read: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        anyhow!(
            "no Debian mirror serving `{SUITE} {COMPONENT}` found in the apt sources ({})\nwhat to do: add an entry for your Debian mirror with suite `{SUITE}` and component `{COMPONENT}` (a `deb` or `deb-src` line in {} or a deb822 file in {}/), or set SERIN_DEBIAN_MIRROR to the mirror's URL; serin only reads it to fetch the {SOURCE_PACKAGE} source package",
            read.join(", "),
            apt::SOURCES_LIST,
            apt::SOURCES_PARTS
        )
    })
}

fn fetch_source(layout: &Layout, log: &mut Log) -> anyhow::Result<Outcome> {
    let dsc_name = format!("{SOURCE_PACKAGE}_{SOURCE_VERSION}.dsc");
    if source_complete(&layout.source, &dsc_name) {
        return Ok(Outcome::Cached(layout.source.display().to_string()));
    }
    let mirror = find_mirror()?;
    let lists = layout.apt.join("lists");
    let sources_file = layout.apt.join("sources.list");
    fs::create_dir_all(lists.join("partial"))
        .with_context(|| format!("cannot create {}", lists.display()))?;
    fs::write(&sources_file, mirror.deb_src_line(SUITE, COMPONENT))
        .with_context(|| format!("cannot write {}", sources_file.display()))?;
    let private = |cmd: &mut Command| {
        cmd.arg("-q")
            .arg("-o")
            .arg(opt("Dir::Etc::SourceList", &sources_file))
            .args(["-o", "Dir::Etc::SourceParts=-", "-o"])
            .arg(opt("Dir::State::Lists", &lists))
            // No shared binary caches either: they would be rebuilt from the private list.
            .args([
                "-o",
                "Dir::Cache::pkgcache=",
                "-o",
                "Dir::Cache::srcpkgcache=",
            ]);
    };
    let mut update = Command::new("apt-get");
    private(&mut update);
    // Without this, apt-get update exits 0 when the mirror cannot be reached.
    update.args(["update", "--error-on=any"]);
    log.run(
        &mut update,
        &format!("apt-get update with a private deb-src entry for {}", mirror.uri),
        &format!(
            "check the network and that {} serves `{SUITE} {COMPONENT}` sources; set SERIN_DEBIAN_MIRROR to use another mirror",
            mirror.uri
        ),
    )?;

    let partial = layout.source.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut source = Command::new("apt-get");
    private(&mut source);
    source
        .args(["source", "--download-only"])
        .arg(format!("{SOURCE_PACKAGE}={SOURCE_VERSION}"))
        .current_dir(&partial);
    log.run(
        &mut source,
        &format!("downloading the {SOURCE_PACKAGE} {SOURCE_VERSION} source package"),
        &format!(
            "check that {} still carries {SOURCE_PACKAGE} {SOURCE_VERSION} in `{SUITE} {COMPONENT}` (`apt-cache showsrc` with the private sources file in {}); set SERIN_DEBIAN_MIRROR to use another mirror",
            mirror.uri,
            sources_file.display()
        ),
    )?;
    if !source_complete(&partial, &dsc_name) {
        bail!(
            "apt-get source finished but {} lacks {dsc_name} or a piece it lists\nwhat to do: see {}, remove {} and run this again",
            partial.display(),
            log.path().display(),
            partial.display()
        );
    }
    if layout.source.exists() {
        fs::remove_dir_all(&layout.source)
            .with_context(|| format!("cannot remove {}", layout.source.display()))?;
    }
    fs::rename(&partial, &layout.source).with_context(|| {
        format!(
            "cannot move {} to {}",
            partial.display(),
            layout.source.display()
        )
    })?;
    let bytes: u64 = fs::read_dir(&layout.source)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    Ok(Outcome::Done(format!(
        "{:.1} MB from {}",
        bytes as f64 / 1e6,
        mirror.uri
    )))
}

fn opt(name: &str, path: &Path) -> String {
    format!("{name}={}", path.display())
}

fn unpack(layout: &Layout, log: &mut Log) -> anyhow::Result<Outcome> {
    if layout.build.exists() {
        // A leftover of an interrupted or failed run: start from a clean tree.
        fs::remove_dir_all(&layout.build)
            .with_context(|| format!("cannot remove {}", layout.build.display()))?;
    }
    let parent = layout
        .tree
        .parent()
        .ok_or_else(|| anyhow!("the tree path {} has no parent", layout.tree.display()))?;
    for dir in [parent, &layout.build.join("tmp")] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    log.run(
        Command::new("dpkg-source")
            .arg("-x")
            .arg(layout.dsc())
            .arg(&layout.tree)
            .current_dir(&layout.source),
        "unpacking the source package",
        &format!(
            "dpkg-source comes with dpkg-dev; if it reports a checksum problem, remove {} so that the next run downloads the source again",
            layout.source.display()
        ),
    )?;
    replace_reflect2(layout, log)?;
    fix_zero_value_check(layout, log)?;
    Ok(Outcome::Done(format!(
        "Debian's patches applied, reflect2 from {REFLECT2_DEBIAN}, kube-openapi's zero-value check removed"
    )))
}

/// Without this, the API server refuses every empty string in a custom resource; see
/// [`tree::fix_zero_value_check`].
fn fix_zero_value_check(layout: &Layout, log: &mut Log) -> anyhow::Result<()> {
    let path = layout.tree.join(tree::ZERO_CHECK_FILE);
    let source =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let Some(fixed) = tree::fix_zero_value_check(&source) else {
        bail!(
            "{} does not hold the expected zero-value check exactly once\nwhat to do: this is a bug in serin (the source package {SOURCE_VERSION} should carry it); see {}",
            path.display(),
            log.path().display()
        );
    };
    fs::write(&path, fixed).with_context(|| format!("cannot write {}", path.display()))?;
    log.note(&format!(
        "# removed the zero-value check from {}",
        path.display()
    ))
}

fn replace_reflect2(layout: &Layout, log: &mut Log) -> anyhow::Result<()> {
    let from = Path::new(REFLECT2_DEBIAN);
    if !from.is_dir() {
        bail!(
            "{REFLECT2_DEBIAN} is missing\nwhat to do: install it with `apt-get install -y golang-github-modern-go-reflect2-dev` (its 1.0.2 sources replace the vendored 1.0.1, which crashes the API server when a custom resource is written)"
        );
    }
    let to = layout.tree.join(REFLECT2_VENDORED);
    // Remove first: files 1.0.1 has and 1.0.2 dropped would clash with their replacements.
    if to.exists() {
        fs::remove_dir_all(&to).with_context(|| format!("cannot remove {}", to.display()))?;
    }
    let copied = copy_dir(from, &to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    log.note(&format!(
        "# replaced {} with {copied} files from {}",
        to.display(),
        from.display()
    ))
}

/// Copies regular files (following symlinks) recursively; returns how many.
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
            count += 1;
        }
    }
    Ok(count)
}

/// The Go toolchain Debian's golang-go installs; PATH's `go` otherwise.
fn go_program() -> PathBuf {
    let debian = Path::new("/usr/lib/go/bin/go");
    if debian.is_file() {
        debian.to_path_buf()
    } else {
        PathBuf::from("go")
    }
}

/// A command run inside the tree in GOPATH mode: module mode fails on this tree
/// (`updates to go.mod needed`). PWD is set because go takes the logical working directory
/// from it to decide which GOPATH package it is in. Static (CGO off) as upstream releases are.
fn in_tree(layout: &Layout, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(&layout.tree)
        .env("PWD", &layout.tree)
        .env("GOPATH", &layout.gopath)
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", &layout.gocache)
        // Go's scratch space goes with the tree, so an interrupted build leaves nothing in /tmp.
        .env("GOTMPDIR", layout.build.join("tmp"))
        .env("GOFLAGS", "")
        .env("GOENV", "off")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env_remove("GOROOT")
        .env_remove("GOBIN");
    cmd
}

const GO_TODO: &str = "see the log; the Go toolchain is Debian's golang-go (`apt-get install -y golang-go`); building needs about 1 GB of memory and 2 GB of disk";

fn generate_openapi(layout: &Layout, log: &mut Log) -> anyhow::Result<Outcome> {
    let tool = layout.build.join("bin").join("openapi-gen");
    log.run(
        in_tree(layout, go_program())
            .arg("build")
            .arg("-o")
            .arg(&tool)
            .arg("./vendor/k8s.io/kube-openapi/cmd/openapi-gen"),
        "building openapi-gen",
        GO_TODO,
    )?;
    let dirs = tree::openapi_dirs(&layout.tree)
        .with_context(|| format!("cannot search {} for openapi tags", layout.tree.display()))?;
    if dirs.is_empty() {
        bail!(
            "no package in {} carries a +k8s:openapi-gen= tag\nwhat to do: remove {} and {} and run this again",
            layout.tree.display(),
            layout.build.display(),
            layout.source.display()
        );
    }
    let packages: Vec<String> = dirs.iter().map(|d| tree::import_path(d)).collect();
    log.note(&format!(
        "# openapi-gen input packages ({}):\n{}",
        packages.len(),
        packages.join("\n")
    ))?;
    let output = layout
        .tree
        .join("pkg/generated/openapi/zz_generated.openapi.go");
    log.run(
        in_tree(layout, &tool)
            .arg("-i")
            .arg(packages.join(","))
            .args(["-p", "k8s.io/kubernetes/pkg/generated/openapi"])
            .args(["-O", "zz_generated.openapi"])
            .args(["-h", "vendor/k8s.io/code-generator/hack/boilerplate.go.txt"])
            .arg("-r")
            .arg(layout.build.join("openapi-violations.report"))
            .arg("-o")
            .arg(layout.gopath.join("src")),
        "generating pkg/generated/openapi/zz_generated.openapi.go",
        "see the log",
    )?;
    if !output.is_file() {
        bail!(
            "openapi-gen succeeded but did not write {}\nwhat to do: see {}",
            output.display(),
            log.path().display()
        );
    }
    Ok(Outcome::Done(format!("{} packages", packages.len())))
}

fn build(layout: &Layout, log: &mut Log, name: &str) -> anyhow::Result<Outcome> {
    let target = layout.bin.join(name);
    // Built under a name that never looks cached, renamed only once it proved itself.
    let partial = layout.bin.join(format!(".{name}.partial"));
    if partial.exists() {
        fs::remove_file(&partial)
            .with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    log.run(
        in_tree(layout, go_program())
            .arg("build")
            .arg("-o")
            .arg(&partial)
            .arg("-ldflags")
            .arg(tree::version_ldflags(KUBERNETES_VERSION))
            .arg(format!("./cmd/{name}")),
        &format!("building {name}"),
        GO_TODO,
    )?;
    let version = binary_version(&partial)?;
    let want = expected_version();
    if version != want {
        bail!(
            "the freshly built {name} reports `{version}`, not `{want}`\nwhat to do: this is a bug in serin's build flags; see {}",
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

fn expected_version() -> String {
    format!("Kubernetes {KUBERNETES_VERSION}")
}

/// What `BINARY --version` prints, trimmed.
fn binary_version(binary: &Path) -> anyhow::Result<String> {
    let out = capture(
        Command::new(binary).arg("--version"),
        &format!("running {} --version", binary.display()),
        "remove it and run `serin-sandbox setup` again",
    )?;
    if !out.status.success() {
        bail!(
            "`{} --version` {}: {}\nwhat to do: remove it and run `serin-sandbox setup` again",
            binary.display(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 10)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn is_cached(binary: &Path) -> bool {
    is_executable(binary) && binary_version(binary).is_ok_and(|v| v == expected_version())
}

fn verify_and_clean(layout: &Layout, log: &mut Log) -> anyhow::Result<Outcome> {
    for name in KUBE_BINARIES {
        let path = layout.bin.join(name);
        let version = binary_version(&path)?;
        if version != expected_version() {
            bail!(
                "{} reports `{version}`, not `{}`\nwhat to do: remove it and run `serin-sandbox setup` again",
                path.display(),
                expected_version()
            );
        }
    }
    // Reached only when every binary is cached under this recipe or was just built by it.
    if !recipe_current(&layout.bin) {
        write_recipe(&layout.bin)?;
        log.note(&format!(
            "# wrote {}",
            layout.bin.join(RECIPE_FILE).display()
        ))?;
    }
    let mut removed = Vec::new();
    for dir in [&layout.build, &layout.gocache] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
            log.note(&format!("# removed {}", dir.display()))?;
            removed.push(dir.display().to_string());
        }
    }
    let found = locate_in(&layout.cache, &search_dirs())?;
    let optional = |p: &Option<PathBuf>, name: &str| match p {
        Some(_) => name.to_string(),
        None => format!("{name} not found"),
    };
    let mut note = format!(
        "{} for both; etcd, prometheus, {}, {} found",
        expected_version(),
        optional(&found.kubectl, "kubectl"),
        optional(&found.hey, "hey")
    );
    if !removed.is_empty() {
        note.push_str(&format!("; removed {}", removed.join(", ")));
    }
    Ok(if removed.is_empty() {
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
    fn debians_kubectl_is_wanted_only_without_one_on_the_path() {
        assert_eq!(wanted_packages(true), PACKAGES.to_vec());
        let without = wanted_packages(false);
        assert_eq!(&without[..PACKAGES.len()], PACKAGES);
        assert_eq!(without[PACKAGES.len()..], [KUBECTL_PACKAGE]);
    }

    #[test]
    fn binary_layout_is_keyed_by_version() {
        assert_eq!(
            kube_bin_dir(Path::new("/c")),
            PathBuf::from("/c/kubernetes/v1.20.2")
        );
        let l = Layout::new(Path::new("/c"));
        assert_eq!(
            l.tree,
            PathBuf::from("/c/kubernetes/build/gopath/src/k8s.io/kubernetes")
        );
        assert_eq!(
            l.dsc(),
            PathBuf::from(
                "/c/kubernetes/source/1.20.5+really1.20.2-1.1+deb12u1/kubernetes_1.20.5+really1.20.2-1.1+deb12u1.dsc"
            )
        );
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
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }
    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn locate_reports_exactly_what_is_missing() {
        let t = Temp::new("missing");
        let cache = t.0.join("cache");
        let bin = t.0.join("bin");
        t.exe("bin/etcd", 0o755);
        // Not executable: does not count.
        t.exe("bin/prometheus", 0o644);
        t.exe("cache/kubernetes/v1.20.2/kube-apiserver", 0o755);
        let err = locate_in(&cache, std::slice::from_ref(&bin)).unwrap_err();
        let names: Vec<&str> = err.missing.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["kube-controller-manager", "prometheus"]);
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "kube-controller-manager is missing (looked in {}",
                cache
                    .join("kubernetes/v1.20.2/kube-controller-manager")
                    .display()
            )),
            "{text}"
        );
        assert!(text.contains("Debian package prometheus"), "{text}");
        assert!(text.contains("Run `serin-sandbox setup`"), "{text}");
        assert!(!text.contains("etcd is missing"), "{text}");
    }

    #[test]
    fn locate_finds_everything_in_search_order() {
        let t = Temp::new("found");
        let cache = t.0.join("cache");
        let first = t.0.join("first");
        let second = t.0.join("second");
        let api = t.exe("cache/kubernetes/v1.20.2/kube-apiserver", 0o755);
        let kcm = t.exe("cache/kubernetes/v1.20.2/kube-controller-manager", 0o700);
        let etcd = t.exe("first/etcd", 0o755);
        t.exe("second/etcd", 0o755);
        let prom = t.exe("second/prometheus", 0o755);
        let hey = t.exe("second/hey", 0o755);
        // A kube-apiserver on the search path is not used: only the cached build counts.
        t.exe("first/kube-apiserver", 0o755);
        write_recipe(&kube_bin_dir(&cache)).unwrap();
        let b = locate_in(&cache, &[first, second]).unwrap();
        assert_eq!(
            b,
            Binaries {
                kube_apiserver: api,
                kube_controller_manager: kcm,
                etcd,
                prometheus: prom,
                kubectl: None,
                hey: Some(hey),
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
            "1: Debian patches; reflect2 1.0.2; kube-openapi type validator without the zero-value check"
        ));
    }

    /// The cache as `serin-sandbox setup` left it before recipes: binaries, no recipe file.
    fn old_cache(t: &Temp) -> (PathBuf, PathBuf) {
        let cache = t.0.join("cache");
        let bin = t.0.join("bin");
        t.exe("cache/kubernetes/v1.20.2/kube-apiserver", 0o755);
        t.exe("cache/kubernetes/v1.20.2/kube-controller-manager", 0o755);
        t.exe("bin/etcd", 0o755);
        t.exe("bin/prometheus", 0o755);
        (cache, bin)
    }

    #[test]
    fn locate_refuses_binaries_of_another_recipe() {
        let t = Temp::new("stale");
        let (cache, bin) = old_cache(&t);
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
        let (cache, bin) = old_cache(&t);
        let dir = kube_bin_dir(&cache);
        fs::remove_file(dir.join("kube-controller-manager")).unwrap();
        let err = locate_in(&cache, std::slice::from_ref(&bin)).unwrap_err();
        assert_eq!(err.stale, None);
        let names: Vec<&str> = err.missing.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["kube-controller-manager"]);
    }

    #[test]
    fn source_completeness_follows_the_dsc() {
        let t = Temp::new("dsc");
        let dsc = "Files:\n abc 10 a.orig.tar.gz\n def 5 a.debian.tar.xz\n";
        assert!(!source_complete(&t.0, "a.dsc"));
        fs::write(t.0.join("a.dsc"), dsc).unwrap();
        fs::write(t.0.join("a.orig.tar.gz"), "x").unwrap();
        assert!(!source_complete(&t.0, "a.dsc"));
        fs::write(t.0.join("a.debian.tar.xz"), "x").unwrap();
        assert!(source_complete(&t.0, "a.dsc"));
        fs::write(t.0.join("a.dsc"), "no files field\n").unwrap();
        assert!(!source_complete(&t.0, "a.dsc"));
    }
}
