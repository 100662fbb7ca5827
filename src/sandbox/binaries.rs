//! Where the sandbox's programs live. A stand-in with the shape of `setup::locate()`, to be
//! swapped for it when `serin sandbox setup` lands.

use std::fmt;
use std::path::{Path, PathBuf};

/// The Kubernetes version `serin sandbox setup` builds.
pub const KUBERNETES_VERSION: &str = "v1.20.2";

/// The programs the sandbox runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub etcd: PathBuf,
    pub prometheus: PathBuf,
    pub kubectl: Option<PathBuf>,
    pub hey: Option<PathBuf>,
}

/// Some required program is missing: the fix is always `serin sandbox setup`.
#[derive(Debug, Clone, thiserror::Error)]
pub struct NotSetUp {
    /// One entry per missing program: its name and where it was looked for.
    pub missing: Vec<(String, PathBuf)>,
}

impl fmt::Display for NotSetUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the sandbox is not set up, missing: ")?;
        for (i, (name, path)) in self.missing.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{name} ({})", path.display())?;
        }
        write!(f, "; run `serin sandbox setup` first")
    }
}

/// `$SERIN_CACHE_DIR`, else `$XDG_CACHE_HOME/serin`, else `$HOME/.cache/serin`.
pub fn cache_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = non_empty("SERIN_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = non_empty("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("serin");
    }
    let home = non_empty("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("serin")
}

/// Finds every program, or names all that are missing at once.
pub fn locate() -> Result<Binaries, NotSetUp> {
    let k8s = cache_dir().join("kubernetes").join(KUBERNETES_VERSION);
    let mut missing = Vec::new();
    let mut need = |name: &str, path: PathBuf| {
        if !is_executable(&path) {
            missing.push((name.to_string(), path.clone()));
        }
        path
    };
    let kube_apiserver = need("kube-apiserver", k8s.join("kube-apiserver"));
    let kube_controller_manager = need(
        "kube-controller-manager",
        k8s.join("kube-controller-manager"),
    );
    let etcd = need(
        "etcd",
        in_path("etcd").unwrap_or_else(|| "/usr/bin/etcd".into()),
    );
    let prometheus = need(
        "prometheus",
        in_path("prometheus").unwrap_or_else(|| "/usr/bin/prometheus".into()),
    );
    if !missing.is_empty() {
        return Err(NotSetUp { missing });
    }
    Ok(Binaries {
        kube_apiserver,
        kube_controller_manager,
        etcd,
        prometheus,
        kubectl: in_path("kubectl"),
        hey: in_path("hey"),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_set_up_names_every_missing_program_and_the_fix() {
        let e = NotSetUp {
            missing: vec![
                ("kube-apiserver".into(), "/c/kube-apiserver".into()),
                ("etcd".into(), "/usr/bin/etcd".into()),
            ],
        };
        assert_eq!(
            e.to_string(),
            "the sandbox is not set up, missing: kube-apiserver (/c/kube-apiserver), \
             etcd (/usr/bin/etcd); run `serin sandbox setup` first"
        );
    }
}
