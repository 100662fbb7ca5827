//! The GitOps side of the set-up: Flux's source-controller and kustomize-controller with their
//! CRDs (always), and Flagger with its load tester and CRD (with `--with-flagger`, or on first use
//! by a test that runs it: [`ensure_flagger`]). All of it is built from the published Go modules
//! at pinned releases ([`super::gobuild`]) and cached per machine, each set under a recipe like
//! the Kubernetes binaries.
//!
//! Flux's `flux` CLI is not built: it embeds install manifests that its release build generates
//! from release URLs on github.com (it builds only with a placeholder for them, and then lacks
//! `flux install` and `flux bootstrap`), and nothing here needs it: the demo prints the table
//! `flux get kustomizations` prints, and the tests read the objects.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use super::exec::Log;
use super::gobuild::{GoBuilder, GoProgram};
use super::{MissingBinary, NotSetUp, Outcome, Steps, cache_dir, is_executable};

/// The Flux release whose controllers the sandbox runs.
pub const FLUX_VERSION: &str = "v2.7.5";
/// source-controller of [`FLUX_VERSION`] (v1.7.4 exists, but the module proxy refuses it).
pub const SOURCE_CONTROLLER: GoProgram = GoProgram {
    name: "source-controller",
    module: "github.com/fluxcd/source-controller",
    version: "v1.7.3",
    package: ".",
};
/// kustomize-controller of [`FLUX_VERSION`].
pub const KUSTOMIZE_CONTROLLER: GoProgram = GoProgram {
    name: "kustomize-controller",
    module: "github.com/fluxcd/kustomize-controller",
    version: "v1.7.3",
    package: ".",
};
pub const FLUX_PROGRAMS: [GoProgram; 2] = [SOURCE_CONTROLLER, KUSTOMIZE_CONTROLLER];
/// Inside each controller's module: its CRDs, as its release installs them.
pub const FLUX_CRD_DIR: &str = "config/crd/bases";
/// The Flux CRDs the sandbox cannot do without.
pub const REQUIRED_FLUX_CRDS: [&str; 2] = [
    "gitrepositories.source.toolkit.fluxcd.io",
    "kustomizations.kustomize.toolkit.fluxcd.io",
];
/// How the cached Flux binaries were built; binaries of another recipe are rebuilt.
pub const FLUX_RECIPE: &str = "1: github.com/fluxcd/source-controller v1.7.3 and github.com/fluxcd/kustomize-controller v1.7.3 (Flux v2.7.5), ./api replaces required at the same version; go build -trimpath -ldflags '-s -w'";

/// The Flagger release the sandbox compares serin with (v1.44.1 exists, but the module proxy
/// refuses it).
pub const FLAGGER_VERSION: &str = "v1.44.0";
pub const FLAGGER: GoProgram = GoProgram {
    name: "flagger",
    module: "github.com/fluxcd/flagger",
    version: FLAGGER_VERSION,
    package: "./cmd/flagger",
};
pub const FLAGGER_LOADTESTER: GoProgram = GoProgram {
    name: "flagger-loadtester",
    module: "github.com/fluxcd/flagger",
    version: FLAGGER_VERSION,
    package: "./cmd/loadtester",
};
pub const FLAGGER_PROGRAMS: [GoProgram; 2] = [FLAGGER, FLAGGER_LOADTESTER];
/// Inside Flagger's module: the CRDs its Helm chart and kustomize base install.
pub const FLAGGER_CRD_FILE: &str = "artifacts/flagger/crd.yaml";
pub const FLAGGER_RECIPE: &str = "1: github.com/fluxcd/flagger v1.44.0 ./cmd/flagger and ./cmd/loadtester; go build -trimpath -ldflags '-s -w'";

const RECIPE_FILE: &str = "recipe";

/// What `serin-sandbox setup` builds besides the control plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetupOptions {
    /// Also build Flagger and its load tester.
    pub with_flagger: bool,
}

/// Where the Flux binaries and CRDs of [`FLUX_VERSION`] are cached.
pub fn flux_dir(cache: &Path) -> PathBuf {
    cache.join("flux").join(FLUX_VERSION)
}

/// Where Flagger of [`FLAGGER_VERSION`] is cached.
pub fn flagger_dir(cache: &Path) -> PathBuf {
    cache.join("flagger").join(FLAGGER_VERSION)
}

/// Where module copies are built; removed after each build.
fn work_dir(cache: &Path) -> PathBuf {
    cache.join("gobuild")
}

/// Flux's programs and CRD files, as found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxBinaries {
    pub source_controller: PathBuf,
    pub kustomize_controller: PathBuf,
    /// One file per CRD, as the controllers' releases ship them.
    pub crds: Vec<PathBuf>,
}

/// Flagger's programs and its CRD file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlaggerBinaries {
    pub flagger: PathBuf,
    pub loadtester: PathBuf,
    pub crd: PathBuf,
}

/// Finds Flux's controllers and CRDs built by the current [`FLUX_RECIPE`], installing nothing.
pub fn locate_flux() -> Result<FluxBinaries, NotSetUp> {
    locate_flux_in(&cache_dir())
}

pub fn locate_flux_in(cache: &Path) -> Result<FluxBinaries, NotSetUp> {
    let dir = flux_dir(cache);
    let recipe = recipe_state(&dir, FLUX_RECIPE);
    let mut missing = Vec::new();
    let mut find = |p: &GoProgram| {
        let path = dir.join(p.name);
        let why = match (&recipe, is_executable(&path)) {
            (_, false) => Some("built"),
            (Some(_), true) => Some("rebuilt (the cached one comes from another recipe)"),
            (None, true) => None,
        };
        if let Some(why) = why {
            missing.push(MissingBinary {
                name: p.name.to_string(),
                looked_in: path.display().to_string(),
                provided_by: format!(
                    "{why} from the Go module {} {} by `serin-sandbox setup`",
                    p.module, p.version
                ),
            });
        }
        path
    };
    let source_controller = find(&SOURCE_CONTROLLER);
    let kustomize_controller = find(&KUSTOMIZE_CONTROLLER);
    let crds = crd_files(&dir.join("crds"));
    let names: Vec<String> = crds
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for want in REQUIRED_FLUX_CRDS {
        let (plural, group) = want.split_once('.').unwrap_or((want, ""));
        let file = format!("{group}_{plural}.yaml");
        if !names.contains(&file) {
            missing.push(MissingBinary {
                name: format!("Flux's CRD {want}"),
                looked_in: dir.join("crds").join(&file).display().to_string(),
                provided_by: format!(
                    "{FLUX_CRD_DIR} of the Flux controllers' Go modules, copied by `serin-sandbox setup`"
                ),
            });
        }
    }
    if !missing.is_empty() {
        return Err(NotSetUp {
            missing,
            stale: None,
        });
    }
    Ok(FluxBinaries {
        source_controller,
        kustomize_controller,
        crds,
    })
}

/// Finds Flagger built by the current [`FLAGGER_RECIPE`]; the error names what is missing.
pub fn locate_flagger() -> anyhow::Result<FlaggerBinaries> {
    locate_flagger_in(&cache_dir())
}

pub fn locate_flagger_in(cache: &Path) -> anyhow::Result<FlaggerBinaries> {
    let dir = flagger_dir(cache);
    let flagger = dir.join(FLAGGER.name);
    let loadtester = dir.join(FLAGGER_LOADTESTER.name);
    let crd = dir.join("crd.yaml");
    let recipe = recipe_state(&dir, FLAGGER_RECIPE);
    let complete = is_executable(&flagger) && is_executable(&loadtester) && crd.is_file();
    if !complete || recipe.is_some() {
        bail!(
            "Flagger {FLAGGER_VERSION} is not built in {}{}\nwhat to do: run `serin-sandbox setup --with-flagger`",
            dir.display(),
            if complete {
                " by the current recipe"
            } else {
                ""
            }
        );
    }
    Ok(FlaggerBinaries {
        flagger,
        loadtester,
        crd,
    })
}

/// Flagger, built first if this machine has not built it yet (a test that runs Flagger calls
/// this; the build takes minutes and prints its steps). Waits for a running set-up to finish.
pub fn ensure_flagger() -> anyhow::Result<FlaggerBinaries> {
    if let Ok(found) = locate_flagger() {
        return Ok(found);
    }
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let lock_path = cache.join("setup.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if let Ok(found) = locate_flagger() {
        return Ok(found);
    }
    let mut log = Log::open(&cache.join("setup.log"))?;
    println!(
        "building Flagger {FLAGGER_VERSION} on first use (`serin-sandbox setup --with-flagger` does it ahead of time)"
    );
    let mut steps = Steps {
        done: 0,
        total: FLAGGER_STEPS,
    };
    let mut go = None;
    flagger_steps(&mut steps, &mut log, &cache, &mut go)?;
    drop(lock);
    locate_flagger()
}

/// None when `dir` holds `recipe`; else what it holds (empty when nothing).
fn recipe_state(dir: &Path, recipe: &str) -> Option<String> {
    let found = fs::read_to_string(dir.join(RECIPE_FILE)).unwrap_or_default();
    (found.trim_end_matches(['\n', '\r']) != recipe).then_some(found)
}

fn write_recipe(dir: &Path, recipe: &str) -> anyhow::Result<()> {
    let partial = dir.join(format!(".{RECIPE_FILE}.partial"));
    fs::write(&partial, format!("{recipe}\n"))
        .with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, dir.join(RECIPE_FILE))
        .with_context(|| format!("cannot move {} into place", partial.display()))
}

/// The `*.yaml` files of a directory, sorted; none when it does not exist.
fn crd_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && p.is_file())
        .collect();
    files.sort();
    files
}

/// How many steps [`run_steps`] prints.
pub(super) fn step_count(opts: &SetupOptions) -> usize {
    FLUX_STEPS + if opts.with_flagger { FLAGGER_STEPS } else { 1 }
}

const FLUX_STEPS: usize = 3;
const FLAGGER_STEPS: usize = 3;

/// The machine's Go, found the first time a build needs it.
fn need_go(go: &mut Option<PathBuf>, log: &mut Log) -> anyhow::Result<PathBuf> {
    if let Some(go) = go {
        return Ok(go.clone());
    }
    let (found, version) = super::find_go(&super::go_candidates(&super::search_dirs()))?;
    log.note(&format!("# Go: {} ({version})", found.display()))?;
    *go = Some(found.clone());
    Ok(found)
}

fn built(size: u64, target: &Path) -> Outcome {
    Outcome::Done(format!("{:.0} MB, {}", size as f64 / 1e6, target.display()))
}

/// Flux's steps, then Flagger's (or one line saying it is skipped or cached).
pub(super) fn run_steps(
    steps: &mut Steps,
    log: &mut Log,
    cache: &Path,
    opts: &SetupOptions,
) -> anyhow::Result<()> {
    let mut go = None;
    let dir = flux_dir(cache);
    let recipe_ok = recipe_state(&dir, FLUX_RECIPE).is_none();
    for p in FLUX_PROGRAMS {
        steps.run(&format!("build {} {}", p.name, p.version), || {
            let target = dir.join(p.name);
            if recipe_ok && is_executable(&target) {
                return Ok((Outcome::Cached(target.display().to_string()), ()));
            }
            let go = need_go(&mut go, log)?;
            let mut b = GoBuilder::new(go, log, work_dir(cache));
            let tree = b.prepare(p.module, p.version)?;
            let size = b.build(&tree, p.package, &target)?;
            b.clean(p.module, p.version)?;
            Ok((built(size, &target), ()))
        })?;
    }
    steps.run(&format!("copy Flux {FLUX_VERSION}'s CRDs"), || {
        let crds = dir.join("crds");
        if recipe_ok && locate_flux_in(cache).is_ok() {
            return Ok((Outcome::Cached(crds.display().to_string()), ()));
        }
        let go = need_go(&mut go, log)?;
        let mut b = GoBuilder::new(go, log, work_dir(cache));
        let mut sources = Vec::new();
        for p in FLUX_PROGRAMS {
            let module = b.download(p.module, p.version)?;
            sources.extend(crd_files(&module.join(FLUX_CRD_DIR)));
        }
        let n = copy_crds(&sources, &crds, &REQUIRED_FLUX_CRDS)?;
        write_recipe(&dir, FLUX_RECIPE)?;
        log.note(&format!("# {n} CRDs copied to {}", crds.display()))?;
        Ok((Outcome::Done(format!("{n} CRDs, {}", crds.display())), ()))
    })?;
    if opts.with_flagger {
        flagger_steps(steps, log, cache, &mut go)
    } else {
        steps.run(&format!("Flagger {FLAGGER_VERSION}"), || {
            let note = match locate_flagger_in(cache) {
                Ok(found) => return Ok((Outcome::Cached(found.flagger.display().to_string()), ())),
                Err(_) => "skipped: `serin-sandbox setup --with-flagger` builds it, as does the first test that runs Flagger".to_string(),
            };
            Ok((Outcome::Cached(note), ()))
        })
    }
}

/// Builds Flagger and its load tester from one copy of the module, then copies its CRD.
fn flagger_steps(
    steps: &mut Steps,
    log: &mut Log,
    cache: &Path,
    go: &mut Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = flagger_dir(cache);
    let recipe_ok = recipe_state(&dir, FLAGGER_RECIPE).is_none();
    let mut tree: Option<PathBuf> = None;
    for p in FLAGGER_PROGRAMS {
        steps.run(&format!("build {} {}", p.name, p.version), || {
            let target = dir.join(p.name);
            if recipe_ok && is_executable(&target) {
                return Ok((Outcome::Cached(target.display().to_string()), ()));
            }
            let go = need_go(go, log)?;
            let mut b = GoBuilder::new(go, log, work_dir(cache));
            let t = match &tree {
                Some(t) => t.clone(),
                None => b.prepare(p.module, p.version)?,
            };
            tree = Some(t.clone());
            let size = b.build(&t, p.package, &target)?;
            Ok((built(size, &target), ()))
        })?;
    }
    steps.run(&format!("copy Flagger {FLAGGER_VERSION}'s CRD"), || {
        let crd = dir.join("crd.yaml");
        if recipe_ok && crd.is_file() {
            return Ok((Outcome::Cached(crd.display().to_string()), ()));
        }
        let go = need_go(go, log)?;
        let mut b = GoBuilder::new(go, log, work_dir(cache));
        let module = b.download(FLAGGER.module, FLAGGER.version)?;
        let n = copy_crds(
            &[module.join(FLAGGER_CRD_FILE)],
            &dir,
            &["canaries.flagger.app"],
        )?;
        // One file holds all of Flagger's CRDs: keep its name stable.
        let copied = dir.join("crd.yaml");
        if !copied.is_file() {
            return Err(anyhow!("{} was not copied", copied.display()));
        }
        if tree.is_some() {
            b.clean(FLAGGER.module, FLAGGER.version)?;
        }
        write_recipe(&dir, FLAGGER_RECIPE)?;
        Ok((Outcome::Done(format!("{n} CRDs in {}", crd.display())), ()))
    })
}

/// Copies CRD files into `to` once each parses and the `required` CRDs are among them; returns
/// how many CRDs they hold.
fn copy_crds(sources: &[PathBuf], to: &Path, required: &[&str]) -> anyhow::Result<usize> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut names = Vec::new();
    for source in sources {
        let text = fs::read_to_string(source)
            .with_context(|| format!("cannot read {}", source.display()))?;
        let crds = crate::istio::parse_crds(&text)
            .with_context(|| format!("{} does not parse as CRDs", source.display()))?;
        names.extend(crds.iter().filter_map(|c| c.metadata.name.clone()));
        let file = source
            .file_name()
            .with_context(|| format!("{} has no file name", source.display()))?;
        let target = to.join(file);
        let partial = to.join(format!(".{}.partial", file.to_string_lossy()));
        fs::write(&partial, &text)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        fs::rename(&partial, &target)
            .with_context(|| format!("cannot move {} into place", partial.display()))?;
    }
    for want in required {
        if !names.iter().any(|n| n == want) {
            bail!(
                "the CRD {want} is not among {}\nwhat to do: this is a bug in serin's pinned versions",
                sources
                    .iter()
                    .map(|s| s.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(names.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Temp(PathBuf);
    impl Temp {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("serin-fluxsetup-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Temp(dir)
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

    #[test]
    fn layout_is_keyed_by_release() {
        assert_eq!(flux_dir(Path::new("/c")), PathBuf::from("/c/flux/v2.7.5"));
        assert_eq!(
            flagger_dir(Path::new("/c")),
            PathBuf::from("/c/flagger/v1.44.0")
        );
        for p in FLUX_PROGRAMS {
            assert!(FLUX_RECIPE.contains(&format!("{} {}", p.module, p.version)));
        }
        assert!(FLAGGER_RECIPE.contains(&format!("{} {}", FLAGGER.module, FLAGGER.version)));
    }

    #[test]
    fn flux_is_located_only_complete_and_from_the_current_recipe() {
        let t = Temp::new("locate");
        let cache = t.0.join("cache");
        let err = locate_flux_in(&cache).unwrap_err();
        let names: Vec<&str> = err.missing.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "source-controller",
                "kustomize-controller",
                "Flux's CRD gitrepositories.source.toolkit.fluxcd.io",
                "Flux's CRD kustomizations.kustomize.toolkit.fluxcd.io"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("built from the Go module github.com/fluxcd/source-controller v1.7.3 by `serin-sandbox setup`"),
            "{text}"
        );
        let sc = t.file("cache/flux/v2.7.5/source-controller", "", 0o755);
        let kc = t.file("cache/flux/v2.7.5/kustomize-controller", "", 0o755);
        let g = t.file(
            "cache/flux/v2.7.5/crds/source.toolkit.fluxcd.io_gitrepositories.yaml",
            "",
            0o644,
        );
        let k = t.file(
            "cache/flux/v2.7.5/crds/kustomize.toolkit.fluxcd.io_kustomizations.yaml",
            "",
            0o644,
        );
        // Binaries without the recipe: another recipe's, to be rebuilt.
        let err = locate_flux_in(&cache).unwrap_err().to_string();
        assert!(
            err.contains("rebuilt (the cached one comes from another recipe)"),
            "{err}"
        );
        write_recipe(&flux_dir(&cache), FLUX_RECIPE).unwrap();
        let found = locate_flux_in(&cache).unwrap();
        assert_eq!(
            found,
            FluxBinaries {
                source_controller: sc,
                kustomize_controller: kc,
                crds: vec![k, g],
            }
        );
    }

    #[test]
    fn flagger_is_located_only_complete_and_from_the_current_recipe() {
        let t = Temp::new("flagger");
        let cache = t.0.join("cache");
        let err = locate_flagger_in(&cache).unwrap_err().to_string();
        assert!(
            err.contains("run `serin-sandbox setup --with-flagger`"),
            "{err}"
        );
        t.file("cache/flagger/v1.44.0/flagger", "", 0o755);
        t.file("cache/flagger/v1.44.0/flagger-loadtester", "", 0o755);
        t.file("cache/flagger/v1.44.0/crd.yaml", "", 0o644);
        let err = locate_flagger_in(&cache).unwrap_err().to_string();
        assert!(err.contains("by the current recipe"), "{err}");
        write_recipe(&flagger_dir(&cache), FLAGGER_RECIPE).unwrap();
        let found = locate_flagger_in(&cache).unwrap();
        assert_eq!(found.crd, flagger_dir(&cache).join("crd.yaml"));
    }

    #[test]
    fn crds_are_copied_only_when_they_parse_and_hold_what_is_required() {
        let t = Temp::new("crds");
        let crd = |name: &str| {
            let (plural, group) = name.split_once('.').unwrap();
            format!(
                "---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {name}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: {plural}, kind: X}}\n  versions: []\n"
            )
        };
        let a = t.file("m/a.yaml", &crd("as.x.io"), 0o444);
        let b = t.file("m/b.yaml", &(crd("bs.x.io") + &crd("cs.x.io")), 0o444);
        let to = t.0.join("out");
        assert_eq!(
            copy_crds(&[a.clone(), b.clone()], &to, &["cs.x.io"]).unwrap(),
            3
        );
        assert_eq!(crd_files(&to), vec![to.join("a.yaml"), to.join("b.yaml")]);
        let err = copy_crds(&[a], &to, &["ds.x.io"]).unwrap_err().to_string();
        assert!(err.starts_with("the CRD ds.x.io is not among"), "{err}");
        let bad = t.file("m/bad.yaml", "kind: [", 0o644);
        assert!(copy_crds(&[bad], &to, &[]).is_err());
    }

    #[test]
    fn steps_are_counted_as_printed() {
        assert_eq!(step_count(&SetupOptions::default()), 4);
        assert_eq!(step_count(&SetupOptions { with_flagger: true }), 6);
    }
}
