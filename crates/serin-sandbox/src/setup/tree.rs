//! What the Kubernetes tree's own Makefile would compute, redone here because the tarball lacks
//! `zz_generated.openapi.go` and the Makefile wants git and bash helpers around it.

use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// The Go import path of the tree itself in GOPATH mode.
pub const KUBE_IMPORT_ROOT: &str = "k8s.io/kubernetes";

/// Package directories under these are left out of the KUBE openapi target
/// (`build/root/Makefile.generated_files`, KUBE_OPENAPI_TAG_FILES).
const OPENAPI_EXCLUDED: &[&str] = &[
    "vendor/k8s.io/code-generator/",
    "vendor/k8s.io/sample-apiserver/",
];

/// `vendor/k8s.io/api/apps/v1` → `k8s.io/api/apps/v1`; `pkg/apis/abac/v0` →
/// `k8s.io/kubernetes/pkg/apis/abac/v0`. In GOPATH mode, run from inside the tree, go resolves
/// the former through `vendor/`.
pub fn import_path(dir: &str) -> String {
    let dir = dir.trim_start_matches("./").trim_end_matches('/');
    match dir.strip_prefix("vendor/") {
        Some(rest) => rest.to_string(),
        None if dir.is_empty() => KUBE_IMPORT_ROOT.to_string(),
        None => format!("{KUBE_IMPORT_ROOT}/{dir}"),
    }
}

/// The tree-relative package directories (`staging/src/…` written as `vendor/…`) that request
/// openapi generation, sorted bytewise and deduplicated, as the Makefile's KUBE target finds
/// them: every directory holding a regular `.go` file that has a `// +k8s:` comment-tag line and
/// mentions `+k8s:openapi-gen=`, walking without following symlinks and pruning the top-level
/// `vendor`, `_*` and `.*` entries.
pub fn openapi_dirs(root: &Path) -> io::Result<Vec<String>> {
    let mut dirs = Vec::new();
    walk(root, "", &mut dirs)?;
    let mut dirs: Vec<String> = dirs
        .into_iter()
        .map(|d| match d.strip_prefix("staging/src/") {
            Some(rest) => format!("vendor/{rest}"),
            None => d,
        })
        .filter(|d| {
            let with_slash = format!("{d}/");
            !OPENAPI_EXCLUDED.iter().any(|x| with_slash.starts_with(x))
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

fn walk(root: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut tagged = false;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let kind = entry.file_type()?;
        if rel.is_empty() && (name == "vendor" || name.starts_with('_') || name.starts_with('.')) {
            continue;
        }
        let child = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        if kind.is_dir() {
            walk(root, &child, out)?;
        } else if kind.is_file() && name.ends_with(".go") && !tagged {
            tagged = requests_openapi(&entry.path())?;
        }
    }
    if tagged {
        out.push(rel.to_string());
    }
    Ok(())
}

fn requests_openapi(file: &Path) -> io::Result<bool> {
    let reader = BufReader::new(std::fs::File::open(file)?);
    let (mut k8s_tag, mut openapi) = (false, false);
    for line in reader.split(b'\n') {
        let line = line?;
        let text = String::from_utf8_lossy(&line);
        k8s_tag |= is_k8s_tag_line(&text);
        openapi |= text.contains("+k8s:openapi-gen=");
        if k8s_tag && openapi {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The Makefile's `grep '^// *+k8s:'`.
fn is_k8s_tag_line(line: &str) -> bool {
    line.strip_prefix("//")
        .is_some_and(|rest| rest.trim_start_matches(' ').starts_with("+k8s:"))
}

/// The version variables a release build sets. In GOPATH mode they live under the vendor path
/// of the importing tree; both component-base (servers) and client-go (their clients) carry one.
pub fn version_ldflags(git_version: &str) -> String {
    let (major, minor) = major_minor(git_version);
    let mut flags = vec!["-s".to_string(), "-w".to_string()];
    for pkg in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        for (var, value) in [
            ("gitVersion", git_version),
            ("gitMajor", &major),
            ("gitMinor", &minor),
        ] {
            flags.push(format!("-X {KUBE_IMPORT_ROOT}/vendor/{pkg}.{var}={value}"));
        }
    }
    flags.join(" ")
}

/// kube-openapi's schema type validator in the v1.20.2 tree; custom resources are validated with it.
pub const ZERO_CHECK_FILE: &str = "vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go";
const ZERO_CHECK_BROKEN: &str = "\tif data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {\n";
const ZERO_CHECK_FIXED: &str = "\tif data == nil {\n";

/// `type.go` with the zero-value test dropped from the validator's null check, as upstream did
/// for Kubernetes 1.21 (kubernetes/kube-openapi#230, kubernetes/kubernetes#99804). The test
/// compares two `reflect.Value`s, which was never true before Go 1.16; since then an empty string
/// in an interface and `reflect.Zero` share the runtime's zero buffer, so under our Go every `""`
/// in a custom resource counts as null and a `type: string` field refuses it. `None` unless the
/// broken line occurs exactly once.
pub fn fix_zero_value_check(source: &str) -> Option<String> {
    (source.matches(ZERO_CHECK_BROKEN).count() == 1)
        .then(|| source.replacen(ZERO_CHECK_BROKEN, ZERO_CHECK_FIXED, 1))
}

/// `v1.20.2` → (`1`, `20`).
fn major_minor(git_version: &str) -> (String, String) {
    let mut parts = git_version.trim_start_matches('v').split('.');
    let major = parts.next().unwrap_or("").to_string();
    let minor = parts.next().unwrap_or("").to_string();
    (major, minor)
}

/// The file names a `.dsc` lists in its `Files:` field (the pieces of the source package).
pub fn dsc_files(dsc: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut in_files = false;
    for line in dsc.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(name) = line.split_whitespace().nth(2).filter(|_| in_files) {
                files.push(name.to_string());
            }
        } else {
            in_files = line.trim_end() == "Files:";
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn import_path_table() {
        let cases = [
            ("vendor/k8s.io/api/apps/v1", "k8s.io/api/apps/v1"),
            ("pkg/apis/abac/v0", "k8s.io/kubernetes/pkg/apis/abac/v0"),
            ("./pkg/apis/abac/v0/", "k8s.io/kubernetes/pkg/apis/abac/v0"),
            (
                "vendor/k8s.io/apimachinery/pkg/apis/meta/v1",
                "k8s.io/apimachinery/pkg/apis/meta/v1",
            ),
            ("vendorish/x", "k8s.io/kubernetes/vendorish/x"),
            ("", "k8s.io/kubernetes"),
        ];
        for (dir, want) in cases {
            assert_eq!(import_path(dir), want, "{dir}");
        }
    }

    #[test]
    fn ldflags_set_both_version_packages() {
        let flags = version_ldflags("v1.20.2");
        assert!(flags.starts_with("-s -w "), "{flags}");
        for pkg in [
            "k8s.io/kubernetes/vendor/k8s.io/component-base/version",
            "k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version",
        ] {
            assert!(
                flags.contains(&format!("-X {pkg}.gitVersion=v1.20.2")),
                "{flags}"
            );
            assert!(flags.contains(&format!("-X {pkg}.gitMajor=1")), "{flags}");
            assert!(flags.contains(&format!("-X {pkg}.gitMinor=20")), "{flags}");
        }
        assert_eq!(flags.matches("-X ").count(), 6);
        // go splits -ldflags on spaces: no value may contain one.
        assert!(flags.split(' ').all(|w| !w.is_empty()));
    }

    #[test]
    fn k8s_tag_lines() {
        assert!(is_k8s_tag_line("// +k8s:openapi-gen=true"));
        assert!(is_k8s_tag_line("//+k8s:deepcopy-gen=package"));
        assert!(is_k8s_tag_line("//    +k8s:openapi-gen=false"));
        assert!(!is_k8s_tag_line("\t// +k8s:openapi-gen=true"));
        assert!(!is_k8s_tag_line("/* +k8s:openapi-gen=true */"));
        assert!(!is_k8s_tag_line("// +genclient"));
    }

    /// The function's opening as v1.20.2 vendors it (kube-openapi 20201113171705-d219536bb9fd).
    const TYPE_GO: &str = "\
func (t *typeValidator) Validate(data interface{}) *Result {
\tresult := new(Result)
\tresult.Inc()
\tif data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {
\t\t// nil or zero value for the passed structure require Type: null
\t\tif len(t.Type) > 0 && !t.Type.Contains(nullType) && !t.Nullable {
\t\t\treturn errorHelp.sErr(errors.InvalidType(t.Path, t.In, strings.Join(t.Type, \",\"), nullType))
\t\t}
\t\treturn result
\t}

\t// check if the type matches, should be used in every validator chain as first item
\tval := reflect.Indirect(reflect.ValueOf(data))
";

    #[test]
    fn zero_value_check_becomes_a_nil_check() {
        let fixed = fix_zero_value_check(TYPE_GO).unwrap();
        assert_eq!(
            fixed,
            TYPE_GO.replace(
                "\tif data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {\n",
                "\tif data == nil {\n"
            )
        );
        assert!(!fixed.contains("reflect.Zero"), "{fixed}");
        // Only that line changes: the rest of the function, reflect included, stays.
        assert_eq!(fixed.lines().count(), TYPE_GO.lines().count());
        assert!(fixed.contains("\tval := reflect.Indirect(reflect.ValueOf(data))\n"));
    }

    #[test]
    fn zero_value_check_refuses_unknown_sources() {
        // Already fixed, or a kube-openapi that changed: applying blindly could hide a mismatch.
        let fixed = fix_zero_value_check(TYPE_GO).unwrap();
        assert_eq!(fix_zero_value_check(&fixed), None);
        assert_eq!(fix_zero_value_check(""), None);
        assert_eq!(fix_zero_value_check(&TYPE_GO.repeat(2)), None);
        // Indentation differs (spaces): not the vendored line.
        assert_eq!(fix_zero_value_check(&TYPE_GO.replace('\t', "    ")), None);
    }

    #[test]
    fn dsc_files_lists_pieces() {
        let dsc = "\
Format: 3.0 (quilt)
Source: kubernetes
Checksums-Sha256:
 19fa 1973 should-not-count.dsc
Files:
 20b98978e86e1e783dd226ce966a85e8 34428927 kubernetes_1.20.5+really1.20.2.orig.tar.gz
 19d158f48d4e6e02053ff8e30b7e85a0 21300 kubernetes_1.20.5+really1.20.2-1.1+deb12u1.debian.tar.xz

-----BEGIN PGP SIGNATURE-----
";
        assert_eq!(
            dsc_files(dsc),
            [
                "kubernetes_1.20.5+really1.20.2.orig.tar.gz",
                "kubernetes_1.20.5+really1.20.2-1.1+deb12u1.debian.tar.xz"
            ]
        );
        assert!(dsc_files("Source: x\n").is_empty());
    }

    struct TempTree(PathBuf);
    impl TempTree {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("serin-tree-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempTree(dir)
        }
        fn file(&self, rel: &str, content: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
    }
    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const TAGGED: &str = "// +k8s:openapi-gen=true\n\npackage v1\n";

    #[test]
    fn openapi_dirs_follow_the_makefile_rules() {
        let t = TempTree::new("openapi");
        t.file("pkg/apis/abac/v0/doc.go", TAGGED);
        t.file("pkg/apis/abac/v0/types.go", TAGGED);
        // Tag inside a file with another column-0 tag line elsewhere counts.
        t.file(
            "pkg/apis/x/types.go",
            "// +k8s:deepcopy-gen=package\npackage x\n// Foo is ... +k8s:openapi-gen=false\n",
        );
        // Mentions the tag but has no column-0 `// +k8s:` line: the Makefile's first grep drops it.
        t.file(
            "pkg/apis/y/types.go",
            "package y\n\t// +k8s:openapi-gen=true\n",
        );
        // Staging is read as vendor.
        t.file("staging/src/k8s.io/api/apps/v1/doc.go", TAGGED);
        t.file("staging/src/k8s.io/code-generator/z/doc.go", TAGGED);
        t.file("staging/src/k8s.io/sample-apiserver/z/doc.go", TAGGED);
        // Pruned at the top level.
        t.file("vendor/github.com/a/b/doc.go", TAGGED);
        t.file("_output/local/go/src/k/doc.go", TAGGED);
        t.file(".hidden/doc.go", TAGGED);
        // Not a .go file; untagged Go file.
        t.file("docs/api/notes.md", TAGGED);
        t.file("cmd/kube-apiserver/main.go", "package main\n");
        // A nested `_` directory is not pruned (the Makefile prunes only at the top).
        t.file("pkg/_nested/doc.go", TAGGED);

        let dirs = openapi_dirs(&t.0).unwrap();
        assert_eq!(
            dirs,
            [
                "pkg/_nested",
                "pkg/apis/abac/v0",
                "pkg/apis/x",
                "vendor/k8s.io/api/apps/v1"
            ]
        );
    }

    #[test]
    fn openapi_dirs_do_not_follow_symlinks() {
        let t = TempTree::new("symlink");
        t.file("staging/src/k8s.io/api/core/v1/doc.go", TAGGED);
        std::fs::create_dir_all(t.0.join("pkg")).unwrap();
        std::os::unix::fs::symlink(t.0.join("staging/src/k8s.io/api"), t.0.join("pkg/api"))
            .unwrap();
        assert_eq!(openapi_dirs(&t.0).unwrap(), ["vendor/k8s.io/api/core/v1"]);
    }

    #[test]
    fn openapi_dirs_missing_root_is_an_error() {
        assert!(openapi_dirs(Path::new("/nonexistent/serin/tree")).is_err());
    }
}
