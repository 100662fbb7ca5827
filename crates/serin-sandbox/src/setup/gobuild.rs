//! Building a program from a published Go module: download it from the module proxy, make a
//! writable copy that builds on its own (its local `replace` directives become requirements of
//! the sibling modules released with it), `go build` each wanted package, and move the binaries
//! into place only once built. Used for Flux's controllers and Flagger; nothing here is specific
//! to them.
//!
//! Go's own build cache (`go env GOCACHE`) is used as it is: these programs share most of their
//! dependencies (controller-runtime, client-go), so the second build reuses the first's work,
//! and a later version bump rebuilds only what changed. Go trims that cache by itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::exec::{self, Log, capture, tail};
use super::gomod;

/// One program of a Go module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoProgram {
    /// The binary's name in the cache.
    pub name: &'static str,
    pub module: &'static str,
    pub version: &'static str,
    /// The package to build, relative to the module's root: `.` or `./cmd/flagger`.
    pub package: &'static str,
}

impl GoProgram {
    /// `github.com/fluxcd/flagger/cmd/loadtester@v1.44.0`, as `go install` would name it.
    pub fn display(&self) -> String {
        let pkg = self.package.trim_start_matches('.').trim_start_matches('/');
        if pkg.is_empty() {
            format!("{}@{}", self.module, self.version)
        } else {
            format!("{}/{pkg}@{}", self.module, self.version)
        }
    }
}

/// What to tell the user when a Go command fails.
pub const GO_TODO: &str = "see the log; building needs network access to the Go module proxy (GOPROXY), about 2 GB of memory and 3 GB of disk for Go's build cache";

/// Runs the go commands of one set-up, with their output in the set-up log.
pub struct GoBuilder<'a> {
    go: PathBuf,
    log: &'a mut Log,
    /// Where the writable module copies go; each is removed once its binaries are built.
    work: PathBuf,
}

impl<'a> GoBuilder<'a> {
    pub fn new(go: PathBuf, log: &'a mut Log, work: PathBuf) -> Self {
        GoBuilder { go, log, work }
    }

    /// This Go, and no toolchain it would download; module mode that may complete go.sum (the
    /// edited go.mod needs the sibling modules' sums); no workspace file; the machine's module
    /// and build caches.
    fn go(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(&self.go);
        cmd.current_dir(dir)
            .env("PWD", dir)
            .env("GOTOOLCHAIN", "local")
            .env("GOWORK", "off")
            .env("GOFLAGS", "-mod=mod -buildvcs=false")
            .env_remove("GOROOT")
            .env_remove("GOBIN");
        cmd
    }

    /// `go mod download -json MODULE@VERSION`: the module's directory in the module cache.
    pub fn download(&mut self, module: &str, version: &str) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(&self.work)
            .with_context(|| format!("cannot create {}", self.work.display()))?;
        let what = format!("downloading the Go module {module}@{version}");
        // Outside any module, so that no go.mod around it is consulted or changed.
        let mut cmd = self.go(&self.work);
        cmd.args(["mod", "download", "-json"])
            .arg(format!("{module}@{version}"));
        self.log.note(&format!("\n$ {}", exec::display(&cmd)))?;
        let out = capture(&mut cmd, &what, GO_TODO)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        self.log
            .note(&format!("{stdout}{stderr}# {}", out.status))?;
        match serde_json::from_str::<gomod::Download>(&stdout).ok() {
            Some(d) if out.status.success() && d.error.is_empty() && !d.dir.is_empty() => {
                Ok(PathBuf::from(d.dir))
            }
            other => {
                let error = other.map(|d| d.error).unwrap_or_default();
                bail!(
                    "{what} failed ({}): {}\nwhat to do: check that the Go module proxy can be reached (`go env GOPROXY`) and serves {module}@{version} (the proxy refuses some releases: pick another patch release); the full output is in {}",
                    out.status,
                    tail(&format!("{error}\n{stderr}"), 10),
                    self.log.path().display()
                )
            }
        }
    }

    /// Downloads the module and makes a writable copy of it that builds on its own; returns the
    /// copy's directory. Its local replaces (`./api`) are turned into requirements of those
    /// modules at the same version: the module's siblings are tagged together with it.
    pub fn prepare(&mut self, module: &str, version: &str) -> anyhow::Result<PathBuf> {
        let from = self.download(module, version)?;
        let tree = self.work.join(tree_name(module, version));
        if tree.exists() {
            // A leftover of an interrupted or failed run: start from a clean copy.
            fs::remove_dir_all(&tree)
                .with_context(|| format!("cannot remove {}", tree.display()))?;
        }
        let files = super::copy_dir(&from, &tree)
            .with_context(|| format!("cannot copy {} to {}", from.display(), tree.display()))?;
        let what = format!("reading {}/go.mod", tree.display());
        let out = capture(
            self.go(&tree).args(["mod", "edit", "-json"]),
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
        let edits = gomod::local_replace_edits(&modfile, |_| version.to_string());
        if !edits.is_empty() {
            let mut cmd = self.go(&tree);
            cmd.args(["mod", "edit"]).args(&edits);
            self.log.run(
                &mut cmd,
                "replacing the module's local replaces by requirements",
                GO_TODO,
            )?;
        }
        self.log.note(&format!(
            "# {files} files copied to {}; go mod edit {}",
            tree.display(),
            edits.join(" ")
        ))?;
        Ok(tree)
    }

    /// `go build` of `package` in `tree` to `target`, through a partial name that never looks
    /// built.
    pub fn build(&mut self, tree: &Path, package: &str, target: &Path) -> anyhow::Result<u64> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = target
            .parent()
            .with_context(|| format!("{} has no parent", target.display()))?;
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let partial = dir.join(format!(".{name}.partial"));
        if partial.exists() {
            fs::remove_file(&partial)
                .with_context(|| format!("cannot remove {}", partial.display()))?;
        }
        let mut cmd = self.go(tree);
        cmd.args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
            .arg(&partial)
            .arg(package);
        self.log
            .run(&mut cmd, &format!("building {name}"), GO_TODO)?;
        fs::rename(&partial, target).with_context(|| {
            format!("cannot move {} to {}", partial.display(), target.display())
        })?;
        Ok(fs::metadata(target).map(|m| m.len()).unwrap_or(0))
    }

    /// Removes the module copy once its programs are built.
    pub fn clean(&mut self, module: &str, version: &str) -> anyhow::Result<()> {
        let tree = self.work.join(tree_name(module, version));
        if tree.exists() {
            fs::remove_dir_all(&tree)
                .with_context(|| format!("cannot remove {}", tree.display()))?;
            self.log.note(&format!("# removed {}", tree.display()))?;
        }
        Ok(())
    }
}

/// `github.com/fluxcd/source-controller` `v1.7.3` → `source-controller@v1.7.3`.
fn tree_name(module: &str, version: &str) -> String {
    let last = module.rsplit('/').next().unwrap_or(module);
    format!("{last}@{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_named_as_go_install_names_them() {
        let p = GoProgram {
            name: "flagger-loadtester",
            module: "github.com/fluxcd/flagger",
            version: "v1.44.0",
            package: "./cmd/loadtester",
        };
        assert_eq!(
            p.display(),
            "github.com/fluxcd/flagger/cmd/loadtester@v1.44.0"
        );
        let p = GoProgram { package: ".", ..p };
        assert_eq!(p.display(), "github.com/fluxcd/flagger@v1.44.0");
    }

    #[test]
    fn trees_are_named_by_module_and_version() {
        assert_eq!(
            tree_name("github.com/fluxcd/source-controller", "v1.7.3"),
            "source-controller@v1.7.3"
        );
        assert_eq!(tree_name("x", "v1"), "x@v1");
    }
}
