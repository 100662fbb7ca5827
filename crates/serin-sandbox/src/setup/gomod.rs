//! The pure parts of building from the Go module proxy: which Go is good enough, what
//! `go mod download -json` and `go mod edit -json` say, how a published module's local
//! `replace` directives become requirements, and the version ldflags.

use serde::Deserialize;

/// `go env GOVERSION` → (major, minor, patch): `go1.26.8` → (1, 26, 8); `go1.26` and
/// `go1.26rc1` → (1, 26, 0). None for anything else (a devel build names no release).
pub fn parse_go_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.trim().strip_prefix("go")?;
    // `go1.26.8 X:nodwarf5`: experiments follow a space.
    let rest = rest.split_whitespace().next()?;
    let mut parts = rest.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor_text = parts.next()?;
    let digits = minor_text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(minor_text.len());
    let minor = minor_text[..digits].parse().ok()?;
    let patch = match parts.next() {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    Some((major, minor, patch))
}

/// One line of `go mod download -json MODULE@VERSION`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Download {
    pub path: String,
    pub version: String,
    #[serde(default)]
    pub dir: String,
    #[serde(default)]
    pub error: String,
}

/// `go mod edit -json`, the fields used here.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ModFile {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub require: Vec<Require>,
    /// `null` in a go.mod without replace directives (Flagger's).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub replace: Vec<Replace>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Require {
    pub path: String,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Replace {
    pub old: ModuleRef,
    pub new: ModuleRef,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ModuleRef {
    pub path: String,
    #[serde(default)]
    pub version: String,
}

/// The `go mod edit` flags that make a module from the proxy buildable on its own: its go.mod
/// replaces its sibling modules by directories of the repository (`./staging/src/k8s.io/api`,
/// `../api`) that the module's zip does not contain. Each such replace is dropped, and the
/// module is required at `version_of(path)` instead, the release published together with it.
/// A replaced module that is not required (Kubernetes' sample-controller: replaced only so that
/// the repository's go.work can name it, and never published at that version) is only dropped.
pub fn local_replace_edits(modfile: &ModFile, version_of: impl Fn(&str) -> String) -> Vec<String> {
    let mut args = Vec::new();
    for r in &modfile.replace {
        let local = r.new.version.is_empty()
            && (r.new.path.starts_with("./") || r.new.path.starts_with("../"));
        if !local {
            continue;
        }
        args.push(format!("-dropreplace={}", r.old.path));
        if modfile.require.iter().any(|q| q.path == r.old.path) {
            args.push(format!(
                "-require={}@{}",
                r.old.path,
                version_of(&r.old.path)
            ));
        }
    }
    args
}

/// Kubernetes `v1.37.2` → its staging modules' `v0.37.2`.
pub fn staging_version(kubernetes: &str) -> Option<String> {
    let rest = kubernetes.strip_prefix("v1.")?;
    Some(format!("v0.{rest}"))
}

/// The `-X` flags that make `--version` and `/version` tell which release this is, as the
/// release build (`hack/lib/version.sh`) sets them, for the server and client version packages.
pub fn version_ldflags(version: &str, build_date: &str) -> Option<String> {
    let rest = version.strip_prefix('v')?;
    let mut parts = rest.split('.');
    let (major, minor) = (parts.next()?, parts.next()?);
    let mut flags = String::from("-s -w");
    for pkg in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        flags.push_str(&format!(
            " -X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean -X {pkg}.buildDate={build_date}"
        ));
    }
    Some(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions() {
        let cases = [
            ("go1.26.8", Some((1, 26, 8))),
            ("go1.26.8\n", Some((1, 26, 8))),
            ("go1.26", Some((1, 26, 0))),
            ("go1.27rc1", Some((1, 27, 0))),
            ("go1.19.13", Some((1, 19, 13))),
            ("go1.26.8 X:nodwarf5", Some((1, 26, 8))),
            ("devel go1.27-abcdef", None),
            ("", None),
            ("1.26.8", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_go_version(text), want, "{text:?}");
        }
    }

    #[test]
    fn download_line_parses() {
        let d: Download = serde_json::from_str(
            r#"{"Path":"istio.io/api","Version":"v1.32.0","Info":"/m/x.info","Dir":"/m/istio.io/api@v1.32.0","Sum":"h1:x"}"#,
        )
        .unwrap();
        assert_eq!(d.dir, "/m/istio.io/api@v1.32.0");
        assert_eq!(d.error, "");
        let e: Download = serde_json::from_str(
            r#"{"Path":"istio.io/api","Version":"v9.9.9","Error":"not found"}"#,
        )
        .unwrap();
        assert_eq!((e.dir.as_str(), e.error.as_str()), ("", "not found"));
    }

    #[test]
    fn local_replaces_become_requirements() {
        // The shape of k8s.io/kubernetes' go.mod as `go mod edit -json` prints it.
        let m: ModFile = serde_json::from_str(
            r#"{
              "Module": {"Path": "k8s.io/kubernetes"},
              "Go": "1.26.0",
              "Require": [
                {"Path": "k8s.io/api", "Version": "v0.0.0"},
                {"Path": "github.com/x/y", "Version": "v1.0.0"},
                {"Path": "k8s.io/client-go", "Version": "v0.0.0", "Indirect": true}
              ],
              "Replace": [
                {"Old": {"Path": "k8s.io/api"}, "New": {"Path": "./staging/src/k8s.io/api"}},
                {"Old": {"Path": "k8s.io/client-go"}, "New": {"Path": "./staging/src/k8s.io/client-go"}},
                {"Old": {"Path": "k8s.io/sample-controller"}, "New": {"Path": "./staging/src/k8s.io/sample-controller"}},
                {"Old": {"Path": "github.com/a/b"}, "New": {"Path": "github.com/c/b", "Version": "v1.2.3"}},
                {"Old": {"Path": "go.etcd.io/etcd/api/v3"}, "New": {"Path": "../api"}}
              ]
            }"#,
        )
        .unwrap();
        let edits = local_replace_edits(&m, |p| {
            if p.starts_with("k8s.io/") {
                "v0.37.2".into()
            } else {
                "v3.6.17".into()
            }
        });
        assert_eq!(
            edits,
            [
                "-dropreplace=k8s.io/api",
                "-require=k8s.io/api@v0.37.2",
                "-dropreplace=k8s.io/client-go",
                "-require=k8s.io/client-go@v0.37.2",
                "-dropreplace=k8s.io/sample-controller",
                "-dropreplace=go.etcd.io/etcd/api/v3",
            ]
        );
        assert!(local_replace_edits(&ModFile::default(), |_| String::new()).is_empty());
        let none: ModFile = serde_json::from_str(
            r#"{"Module": {"Path": "github.com/fluxcd/flagger"}, "Require": [{"Path": "a", "Version": "v1"}], "Replace": null, "Exclude": null}"#,
        )
        .unwrap();
        assert_eq!(none.replace, []);
        assert_eq!(none.require.len(), 1);
    }

    #[test]
    fn staging_and_ldflags() {
        assert_eq!(staging_version("v1.37.2").as_deref(), Some("v0.37.2"));
        assert_eq!(staging_version("v2.0.0"), None);
        let flags = version_ldflags("v1.37.2", "2026-01-01T00:00:00Z").unwrap();
        assert!(flags.starts_with("-s -w -X "), "{flags}");
        for pkg in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            for want in [
                "gitVersion=v1.37.2",
                "gitMajor=1",
                "gitMinor=37",
                "gitTreeState=clean",
                "buildDate=2026-01-01T00:00:00Z",
            ] {
                assert!(flags.contains(&format!("-X {pkg}.{want}")), "{flags}");
            }
        }
        assert_eq!(version_ldflags("1.37.2", "d"), None);
    }
}
