use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn example(dir: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("deploy/gitops")
        .join(dir)
}

/// A scratch directory tree from `(relative path, content)` pairs.
fn tree(files: &[(&str, &str)]) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("serin-gitops-unit-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    root
}

fn values(objs: &[DynamicObject]) -> Vec<Value> {
    objs.iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

fn by_kind<'a>(vs: &'a [Value], kind: &str) -> &'a Value {
    vs.iter()
        .find(|v| v["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {vs:?}"))
}

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: busybox:1.36
      containers:
        - name: app
          image: ghcr.io/stefanprodan/podinfo:6.0.0
        - name: proxy
          image: localhost:5000/ghcr.io/stefanprodan/podinfo:1.0
";

#[test]
fn the_example_backend_renders_as_kustomize_would() {
    let objs = render(&example("apps/backend")).unwrap();
    let vs = values(&objs);
    assert_eq!(vs.len(), 3, "{vs:?}");
    for v in &vs {
        assert_eq!(v["metadata"]["namespace"], "prod", "{v}");
    }
    let d = by_kind(&vs, "Deployment");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/stefanprodan/podinfo:6.0.0"
    );
    assert!(
        d["spec"].get("replicas").is_none(),
        "the HPA owns the replicas"
    );
    assert_eq!(
        by_kind(&vs, "HorizontalPodAutoscaler")["apiVersion"],
        "autoscaling/v2"
    );
    assert_eq!(
        by_kind(&vs, "Canary")["spec"]["targetRef"]["name"],
        "backend"
    );
}

#[test]
fn images_rules_change_matching_containers_only() {
    let root = tree(&[
        ("app/deploy.yaml", DEPLOY),
        (
            "app/kustomization.yaml",
            "resources: [deploy.yaml]
images:
  - name: ghcr.io/stefanprodan/podinfo
    newTag: 6.1.0
  - name: busybox
    newName: docker.io/library/busybox
    digest: sha256:abc
",
        ),
    ]);
    let vs = values(&render(&root.join("app")).unwrap());
    let spec = &vs[0]["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["image"],
        "ghcr.io/stefanprodan/podinfo:6.1.0"
    );
    // A registry with a port, and a name that merely ends like the rule's, stay as they were.
    assert_eq!(
        spec["containers"][1]["image"],
        "localhost:5000/ghcr.io/stefanprodan/podinfo:1.0"
    );
    assert_eq!(
        spec["initContainers"][0]["image"],
        "docker.io/library/busybox@sha256:abc"
    );
    assert!(
        vs[0]["metadata"].get("namespace").is_none(),
        "no namespace field, none set"
    );
}

#[test]
fn image_references_split_like_docker() {
    let rule = |name: &str, tag: Option<&str>| ImageRule {
        name: name.into(),
        new_name: None,
        new_tag: tag.map(String::from),
        digest: None,
    };
    let table = [
        ("podinfo", rule("podinfo", Some("2")), Some("podinfo:2")),
        ("podinfo:1", rule("podinfo", Some("2")), Some("podinfo:2")),
        (
            "podinfo@sha256:1",
            rule("podinfo", Some("2")),
            Some("podinfo:2"),
        ),
        ("podinfo:1", rule("podinfo", None), Some("podinfo:1")),
        (
            "reg:5000/podinfo:1",
            rule("reg:5000/podinfo", Some("2")),
            Some("reg:5000/podinfo:2"),
        ),
        ("reg:5000/podinfo", rule("reg", Some("2")), None),
        ("podinfo-ui:1", rule("podinfo", Some("2")), None),
    ];
    for (image, rule, want) in table {
        assert_eq!(
            transform_image(image, &rule).as_deref(),
            want,
            "{image} with {rule:?}"
        );
    }
}

#[test]
fn directories_nest_and_the_outer_namespace_wins_except_for_cluster_scoped_kinds() {
    let root = tree(&[
        ("base/deploy.yaml", DEPLOY),
        (
            "base/extra.yaml",
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n---\napiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: cm, namespace: other}\n",
        ),
        (
            "base/kustomization.yaml",
            "namespace: inner\nresources:\n  - deploy.yaml\n  - extra.yaml\nimages:\n  - name: busybox\n    newTag: inner\n",
        ),
        (
            "overlay/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: outer\nresources:\n  - ../base\nimages:\n  - name: busybox\n    newTag: outer\n",
        ),
    ]);
    let vs = values(&render(&root.join("overlay")).unwrap());
    assert_eq!(vs.len(), 3);
    assert_eq!(by_kind(&vs, "Deployment")["metadata"]["namespace"], "outer");
    assert_eq!(by_kind(&vs, "ConfigMap")["metadata"]["namespace"], "outer");
    assert!(
        by_kind(&vs, "Namespace")["metadata"]
            .get("namespace")
            .is_none()
    );
    assert_eq!(
        by_kind(&vs, "Deployment")["spec"]["template"]["spec"]["initContainers"][0]["image"],
        "busybox:outer"
    );
}

#[test]
fn what_the_renderer_cannot_do_is_refused_by_name() {
    let cases: [(&[(&str, &str)], &str); 7] = [
        (
            &[(
                "k/kustomization.yaml",
                "resources: []\npatches:\n  - path: p.yaml\n",
            )],
            "unknown field `patches`",
        ),
        (
            &[(
                "k/kustomization.yaml",
                "resources:\n  - https://github.com/fluxcd/flagger//kustomize/tester\n",
            )],
            "remote resources are not supported",
        ),
        (
            &[
                ("k/kustomization.yaml", "resources: [a.yaml, b.yaml]\n"),
                (
                    "k/a.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
                ),
                (
                    "k/b.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
                ),
            ],
            "ConfigMap/x is listed twice",
        ),
        (&[("k/kustomization.yaml", "resources: [../k]\n")], "cycle"),
        (
            &[
                (
                    "k/kustomization.yaml",
                    "namespace: a\nresources: [rb.yaml]\n",
                ),
                (
                    "k/rb.yaml",
                    "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: x}\nsubjects: [{kind: ServiceAccount, name: x, namespace: b}]\n",
                ),
            ],
            "a subject in another namespace",
        ),
        (
            &[
                ("k/kustomization.yaml", "resources: [a.yaml]\n"),
                (
                    "k/a.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
                ),
            ],
            "a ConfigMap has no metadata.name",
        ),
        (&[("k/other.yaml", "")], "no kustomization.yaml"),
    ];
    for (files, want) in cases {
        let root = tree(files);
        std::fs::create_dir_all(root.join("k")).unwrap();
        let err = render(&root.join("k")).unwrap_err().to_string();
        assert!(err.contains(want), "{files:?}: got {err:?}, want {want:?}");
    }
}

#[test]
fn tags_must_be_yaml_strings_as_kustomize_wants() {
    let kustomization = |tag: &str| {
        format!("resources: [deploy.yaml]\nimages:\n  - name: busybox\n    newTag: {tag}\n")
    };
    let (quoted, number) = (kustomization("\"1.10\""), kustomization("1.10"));
    let root = tree(&[("k/deploy.yaml", DEPLOY), ("k/kustomization.yaml", &quoted)]);
    let vs = values(&render(&root.join("k")).unwrap());
    assert_eq!(
        vs[0]["spec"]["template"]["spec"]["initContainers"][0]["image"],
        "busybox:1.10"
    );
    let root = tree(&[("k/deploy.yaml", DEPLOY), ("k/kustomization.yaml", &number)]);
    let err = render(&root.join("k")).unwrap_err().to_string();
    assert!(
        err.contains("newTag: 1.1 is not a string; quote it"),
        "{err}"
    );
}

#[test]
fn set_namespace_moves_namespaced_objects_only() {
    let mut objs = render(&example("apps/backend")).unwrap();
    objs.push(
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
        )
        .unwrap(),
    );
    set_namespace(&mut objs, "t1");
    let vs = values(&objs);
    for v in &vs[..3] {
        assert_eq!(v["metadata"]["namespace"], "t1");
    }
    assert_eq!(vs[3]["metadata"]["name"], "t1");
    assert!(vs[3]["metadata"].get("namespace").is_none());
}

// ---- bump ----

fn new_tag_of(text: &str) -> Option<String> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    v["images"][0]["newTag"].as_str().map(String::from)
}

#[test]
fn bump_changes_one_value_and_keeps_the_rest_of_the_file() {
    let table: [(&str, &str); 7] = [
        // The example's own layout.
        (
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - a.yaml\nimages:\n  - name: ghcr.io/stefanprodan/podinfo\n    newTag: 6.0.0\n",
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - a.yaml\nimages:\n  - name: ghcr.io/stefanprodan/podinfo\n    newTag: 6.0.1\n",
        ),
        // Dash at column 0, quotes and a comment kept, the second entry untouched.
        (
            "# release\nimages:\n- name: podinfo\n  newTag: \"6.0.0\" # {\"$imagepolicy\": \"flux-system:podinfo:tag\"}\n- name: other\n  newTag: 1.0.0\n",
            "# release\nimages:\n- name: podinfo\n  newTag: \"6.0.1\" # {\"$imagepolicy\": \"flux-system:podinfo:tag\"}\n- name: other\n  newTag: 1.0.0\n",
        ),
        // newTag first in the entry, single quotes.
        (
            "images:\n  - newTag: '6.0.0'\n    name: podinfo\nnamespace: prod\n",
            "images:\n  - newTag: '6.0.1'\n    name: podinfo\nnamespace: prod\n",
        ),
        // No newTag yet: added, the rest unchanged.
        (
            "images:\n  - name: podinfo\n    newName: reg/podinfo\nresources: [a.yaml]\n",
            "images:\n  - name: podinfo\n    newTag: \"6.0.1\"\n    newName: reg/podinfo\nresources: [a.yaml]\n",
        ),
        // A nested newTag of another entry is not the first entry's.
        (
            "images:\n  - name: podinfo\n\n    # a comment inside the entry\n    newTag: 1\n",
            "images:\n  - name: podinfo\n\n    # a comment inside the entry\n    newTag: 6.0.1\n",
        ),
        // CRLF line ends survive.
        (
            "images:\r\n  - name: podinfo\r\n    newTag: 6.0.0\r\n",
            "images:\r\n  - name: podinfo\r\n    newTag: 6.0.1\r\n",
        ),
        // No newline at the end of the file.
        (
            "images:\n  - name: podinfo",
            "images:\n  - name: podinfo\n    newTag: \"6.0.1\"\n",
        ),
    ];
    for (before, want) in table {
        assert_eq!(
            bump_tag_text(before, "6.0.1").as_deref(),
            Ok(want),
            "{before:?}"
        );
    }
}

#[test]
fn a_tag_yaml_would_read_as_a_number_is_quoted() {
    let out = bump_tag_text("images:\n  - name: p\n    newTag: 1.0.0\n", "1.10").unwrap();
    assert_eq!(out, "images:\n  - name: p\n    newTag: \"1.10\"\n");
    assert_eq!(new_tag_of(&out).as_deref(), Some("1.10"));
}

#[test]
fn bump_refuses_what_it_cannot_do_safely() {
    let table = [
        (
            "images:\n  - name: p\n",
            "6.0.1 && rm",
            "is not an image tag",
        ),
        ("images:\n  - name: p\n", "", "is not an image tag"),
        ("resources: [a.yaml]\n", "1", "no images entry"),
        ("images: []\n", "1", "no images entry"),
        (
            "images: [{name: p, newTag: '1'}]\n",
            "2",
            "not a block sequence item",
        ),
        ("images: [\n", "1", "not YAML"),
    ];
    for (text, tag, want) in table {
        let err = bump_tag_text(text, tag).unwrap_err();
        assert!(err.contains(want), "{text:?} {tag:?}: {err}");
    }
}

#[test]
fn bump_tag_rewrites_the_file() {
    let root = tree(&[(
        "k/kustomization.yaml",
        "images:\n  - name: p\n    newTag: 1.0.0\n",
    )]);
    let file = root.join("k/kustomization.yaml");
    bump_tag(&file, "1.0.1").unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "images:\n  - name: p\n    newTag: 1.0.1\n"
    );
    assert!(bump_tag(&root.join("missing.yaml"), "1").is_err());
}

proptest! {
    /// Whatever the layout of the entry, the bump sets images[0].newTag and nothing else.
    #[test]
    fn bump_sets_exactly_the_first_tag(
        tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
        old in prop::option::of("[0-9]{1,2}\\.[0-9]{1,2}(\\.[0-9])?"),
        dash in 0usize..3,
        gap in 1usize..3,
        quote in prop::sample::select(vec!["", "\"", "'"]),
        tag_first in any::<bool>(),
        comment in any::<bool>(),
        second in any::<bool>(),
    ) {
        let pad = " ".repeat(dash);
        let key = " ".repeat(dash + 1 + gap);
        let name = "name: ghcr.io/stefanprodan/podinfo";
        let tag_line = old.as_ref().map(|o| format!(
            "newTag: {quote}{o}{quote}{}",
            if comment { " # {\"$imagepolicy\": \"x\"}" } else { "" }
        ));
        let mut entry = match (&tag_line, tag_first) {
            (Some(t), true) => format!("{pad}-{}{t}\n{key}{name}\n", " ".repeat(gap)),
            (Some(t), false) => format!("{pad}-{}{name}\n{key}{t}\n", " ".repeat(gap)),
            (None, _) => format!("{pad}-{}{name}\n", " ".repeat(gap)),
        };
        if second {
            entry.push_str(&format!("{pad}- name: other\n{pad}  newTag: \"9\"\n"));
        }
        let text = format!("resources:\n  - a.yaml\nimages:\n{entry}namespace: prod\n");
        let out = bump_tag_text(&text, &tag).unwrap();
        prop_assert_eq!(new_tag_of(&out), Some(tag.clone()));
        let (a, b): (serde_yaml_ng::Value, serde_yaml_ng::Value) =
            (serde_yaml_ng::from_str(&text).unwrap(), serde_yaml_ng::from_str(&out).unwrap());
        prop_assert_eq!(&a["resources"], &b["resources"]);
        prop_assert_eq!(&a["namespace"], &b["namespace"]);
        prop_assert_eq!(&a["images"][0]["name"], &b["images"][0]["name"]);
        prop_assert_eq!(&a["images"][1], &b["images"][1]);
        prop_assert_eq!(text.lines().count() + usize::from(old.is_none()), out.lines().count());
    }
}

#[test]
fn replicas_beside_an_hpa_are_reported() {
    let mut objs = render(&example("apps/backend")).unwrap();
    assert_eq!(replica_fights(&objs), Vec::<String>::new());
    let d = objs
        .iter_mut()
        .find(|o| o.types.as_ref().unwrap().kind == "Deployment")
        .unwrap();
    d.data["spec"]["replicas"] = json!(2);
    let found = replica_fights(&objs);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("Deployment/prod/backend: spec.replicas is set"),
        "{found:?}"
    );
    // Without the HPA, replicas in Git are the user's to set.
    objs.retain(|o| o.types.as_ref().unwrap().kind != "HorizontalPodAutoscaler");
    assert!(replica_fights(&objs).is_empty());
}
