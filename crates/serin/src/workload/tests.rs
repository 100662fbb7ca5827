use super::*;
use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
use serde_json::json;

fn deployment(v: serde_json::Value) -> Deployment {
    serde_json::from_value(v).unwrap()
}

fn podinfo() -> Deployment {
    deployment(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "podinfo", "namespace": "test", "generation": 3,
            "labels": {"app": "podinfo", "kustomize.toolkit.fluxcd.io/name": "apps"},
            "annotations": {"team": "a", "kustomize.toolkit.fluxcd.io/checksum": "x"}},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 60,
            "selector": {"matchLabels": {"app": "podinfo"}},
            "template": {
                "metadata": {"labels": {"app": "podinfo", "version": "v1"}, "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "containers": [{
                        "name": "podinfod", "image": "ghcr.io/stefanprodan/podinfo:6.0.0",
                        "env": [
                            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "podinfo-config-env", "key": "a"}}},
                            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "podinfo-secret-env", "key": "b", "optional": true}}}
                        ],
                        "envFrom": [{"configMapRef": {"name": "podinfo-config-all"}}]
                    }],
                    "initContainers": [{"name": "init", "image": "busybox", "envFrom": [{"secretRef": {"name": "init-secret"}}]}],
                    "volumes": [
                        {"name": "cfg", "configMap": {"name": "podinfo-config-vol"}},
                        {"name": "sec", "secret": {"secretName": "podinfo-secret-vol"}},
                        {"name": "proj", "projected": {"sources": [
                            {"configMap": {"name": "proj-cm"}}, {"secret": {"name": "proj-secret", "optional": true}}
                        ]}}
                    ],
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "podinfo"}}}]
                }
            }
        }
    }))
}

#[test]
fn revision_hash_is_stable_and_sensitive() {
    let d = podinfo();
    let t = d.spec.template.clone();
    let h = revision_hash(&t);
    assert!(
        h.starts_with("sha256:") && h.len() == "sha256:".len() + 16,
        "{h}"
    );
    // Key order in the source does not matter: the same template written differently.
    let reordered: PodTemplateSpec =
        serde_json::from_str(&serde_json::to_string(&serde_json::to_value(&t).unwrap()).unwrap())
            .unwrap();
    assert_eq!(revision_hash(&reordered), h);
    let mut bumped = t.clone();
    bumped.spec.as_mut().unwrap().containers[0].image =
        Some("ghcr.io/stefanprodan/podinfo:6.0.1".into());
    assert_ne!(revision_hash(&bumped), h);
    let mut annotated = t;
    annotated
        .metadata
        .as_mut()
        .unwrap()
        .annotations
        .as_mut()
        .unwrap()
        .insert("timestamp".into(), "1".into());
    assert_ne!(revision_hash(&annotated), h);
}

#[test]
fn revision_hash_golden() {
    // Pinned so that an accidental change of the hashing scheme (which would restart every
    // canary after an upgrade) fails here first.
    let t: PodTemplateSpec = serde_json::from_value(json!({
        "metadata": {"labels": {"app": "podinfo"}},
        "spec": {"containers": [{"name": "podinfod", "image": "podinfo:1"}]}
    }))
    .unwrap();
    let canonical = r#"{"metadata":{"labels":{"app":"podinfo"}},"spec":{"containers":[{"image":"podinfo:1","name":"podinfod"}]}}"#;
    let want = format!(
        "sha256:{}",
        &hex(&Sha256::digest(canonical.as_bytes()))[..16]
    );
    assert_eq!(revision_hash(&t), want);
}

#[test]
fn selector_label_follows_flagger_order() {
    assert_eq!(
        selector_label(&podinfo()).unwrap(),
        SelectorLabel {
            key: "app".into(),
            value: "podinfo".into()
        }
    );
    let mut d = podinfo();
    d.spec.selector.match_labels = Some(BTreeMap::from([("tier".into(), "web".into())]));
    let err = selector_label(&d).unwrap_err().to_string();
    assert!(
        err.contains(
            "spec.selector.matchLabels must contain one of [app, name, app.kubernetes.io/name]"
        ),
        "{err}"
    );
}

#[test]
fn config_refs_cover_every_reference_kind() {
    let d = podinfo();
    let refs = config_refs(d.spec.template.spec.as_ref().unwrap());
    let cms: Vec<_> = refs
        .config_maps
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        cms,
        vec![
            ("podinfo-config-all", false),
            ("podinfo-config-env", false),
            ("podinfo-config-vol", false),
            ("proj-cm", false)
        ]
    );
    let secrets: Vec<_> = refs.secrets.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        secrets,
        vec![
            ("init-secret", false),
            ("podinfo-secret-env", true),
            ("podinfo-secret-vol", false),
            ("proj-secret", true)
        ]
    );
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()}))
    .unwrap()
}

#[test]
fn tracked_configs_checksums_and_errors() {
    let d = podinfo();
    let spec = d.spec.template.spec.clone().unwrap();
    let secret = |name: &str| -> Option<Secret> {
        if name == "podinfo-secret-env" || name == "proj-secret" {
            return None; // optional refs may be missing
        }
        Some(
            serde_json::from_value(
                json!({"metadata": {"name": name}, "type": "Opaque", "data": {"k": "dg=="}}),
            )
            .unwrap(),
        )
    };
    let got = tracked_configs(&spec, |n| Some(cm(n, &[("a", "1")])), secret).unwrap();
    assert_eq!(got.len(), 6, "{got:?}");
    assert!(got.contains_key("configmap/podinfo-config-env"));
    assert!(got.contains_key("secret/podinfo-secret-vol"));
    assert!(got.values().all(|v| v.len() == 16));

    let changed = tracked_configs(
        &spec,
        |n| {
            Some(cm(
                n,
                &[("a", if n == "podinfo-config-env" { "2" } else { "1" })],
            ))
        },
        secret,
    )
    .unwrap();
    assert_ne!(
        got["configmap/podinfo-config-env"],
        changed["configmap/podinfo-config-env"]
    );
    assert_eq!(
        got["configmap/podinfo-config-vol"],
        changed["configmap/podinfo-config-vol"]
    );

    let err = tracked_configs(
        &spec,
        |n| (n != "podinfo-config-vol").then(|| cm(n, &[])),
        secret,
    )
    .unwrap_err();
    assert_eq!(err, MissingConfig::ConfigMap("podinfo-config-vol".into()));
    assert_eq!(err.to_string(), "configmap podinfo-config-vol not found");
}

#[test]
fn untracked_secrets_and_disabled_configs_are_skipped() {
    let sa: Secret = serde_json::from_value(
        json!({"metadata": {"name": "t"}, "type": "kubernetes.io/service-account-token"}),
    )
    .unwrap();
    assert_eq!(secret_checksum(&sa), None);
    let mut c = cm("x", &[("a", "1")]);
    c.metadata.annotations = Some(BTreeMap::from([(
        CONFIG_TRACKING_ANNOTATION.into(),
        "disabled".into(),
    )]));
    assert_eq!(config_map_checksum(&c), None);
}

#[test]
fn primary_is_built_from_the_target() {
    let d = podinfo();
    let sel = selector_label(&d).unwrap();
    let tracked: BTreeSet<String> = [
        "configmap/podinfo-config-env".to_string(),
        "secret/podinfo-secret-vol".to_string(),
    ]
    .into();
    let owner = OwnerReference {
        api_version: "flagger.app/v1beta1".into(),
        kind: "Canary".into(),
        name: "podinfo".into(),
        uid: "u1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let p = desired_primary(&PrimaryInputs {
        target: &d,
        selector: &sel,
        owner,
        revision: "sha256:abc",
        tracked: &tracked,
        replicas: Some(2),
        configs_checksum: None,
    });
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["metadata"]["name"], "podinfo-primary");
    assert_eq!(v["metadata"]["labels"], json!({"app": "podinfo-primary"}));
    assert_eq!(
        v["metadata"]["annotations"],
        json!({"team": "a", "serin.dev/revision": "sha256:abc"})
    );
    assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Canary");
    assert_eq!(v["spec"]["replicas"], 2);
    assert_eq!(v["spec"]["progressDeadlineSeconds"], 60);
    assert_eq!(
        v["spec"]["selector"],
        json!({"matchLabels": {"app": "podinfo-primary"}})
    );
    let tpl = &v["spec"]["template"];
    assert_eq!(
        tpl["metadata"]["labels"],
        json!({"app": "podinfo-primary", "version": "v1"})
    );
    assert_eq!(
        tpl["metadata"]["annotations"],
        json!({"prometheus.io/scrape": "true"}),
        "no random flagger-id"
    );
    let c = &tpl["spec"]["containers"][0];
    assert_eq!(
        c["env"][0]["valueFrom"]["configMapKeyRef"]["name"],
        "podinfo-config-env-primary"
    );
    assert_eq!(
        c["envFrom"][0]["configMapRef"]["name"], "podinfo-config-all",
        "untracked refs keep their name"
    );
    assert_eq!(
        tpl["spec"]["volumes"][1]["secret"]["secretName"],
        "podinfo-secret-vol-primary"
    );
    assert_eq!(
        tpl["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app"],
        "podinfo-primary"
    );
    // Building twice gives the same object: re-applying is a no-op.
    let again = desired_primary(&PrimaryInputs {
        target: &d,
        selector: &sel,
        owner: p.metadata.owner_references.clone().unwrap()[0].clone(),
        revision: "sha256:abc",
        tracked: &tracked,
        replicas: Some(2),
        configs_checksum: None,
    });
    assert_eq!(again, p);
}

#[test]
fn a_config_change_changes_the_primary_pod_template() {
    let d = podinfo();
    let sel = selector_label(&d).unwrap();
    let configs = |color: &str| {
        BTreeMap::from([
            (
                "configmap/podinfo-config-env".to_string(),
                color.to_string(),
            ),
            ("secret/podinfo-secret-vol".to_string(), "s1".to_string()),
        ])
    };
    let build = |configs: &BTreeMap<String, String>| {
        let tracked: BTreeSet<String> = configs.keys().cloned().collect();
        let p = desired_primary(&PrimaryInputs {
            target: &d,
            selector: &sel,
            owner: OwnerReference::default(),
            revision: "sha256:abc",
            tracked: &tracked,
            replicas: Some(2),
            configs_checksum: configs_checksum(configs),
        });
        serde_json::to_value(&p).unwrap()["spec"]["template"].clone()
    };
    let (blue, green) = (build(&configs("blue")), build(&configs("green")));
    let sum = &blue["metadata"]["annotations"][CONFIGS_CHECKSUM_ANNOTATION];
    assert!(sum.as_str().is_some_and(|s| s.len() == 16), "{blue}");
    assert_ne!(blue, green, "new configuration, new pods");
    assert_eq!(
        blue,
        build(&configs("blue")),
        "same configuration, same template"
    );
    assert_eq!(configs_checksum(&BTreeMap::new()), None);
}

fn with_status(
    replicas: i32,
    generation: i64,
    observed: i64,
    updated: i32,
    total: i32,
    available: i32,
    cond: Option<&str>,
) -> Deployment {
    let mut d = podinfo();
    d.metadata.generation = Some(generation);
    d.spec.replicas = Some(replicas);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(observed),
        updated_replicas: Some(updated),
        replicas: Some(total),
        available_replicas: Some(available),
        conditions: cond.map(|reason| {
            vec![DeploymentCondition {
                type_: Some("Progressing".into()),
                status: Some("False".into()),
                reason: Some(reason.into()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    d
}

#[test]
fn readiness_table() {
    use Readiness::*;
    let w = |s: &str| Waiting(format!("waiting for rollout to finish: {s}"));
    let cases = vec![
        (with_status(2, 3, 3, 2, 2, 2, None), 100, Ready),
        (
            with_status(2, 4, 3, 2, 2, 2, None),
            100,
            w("observed deployment generation less than desired generation"),
        ),
        (
            with_status(2, 3, 3, 1, 2, 2, None),
            100,
            w("1 out of 2 new replicas have been updated"),
        ),
        (
            with_status(2, 3, 3, 2, 3, 2, None),
            100,
            w("1 old replicas are pending termination"),
        ),
        (
            with_status(2, 3, 3, 2, 2, 1, None),
            100,
            w("1 of 2 (readyThreshold 100%) updated replicas are available"),
        ),
        (with_status(2, 3, 3, 2, 2, 1, None), 50, Ready),
        // Flagger rounds the needed replicas down (float32, as its isDeploymentReady): 3 at
        // 50% waits for 1, 3 at 70% for 2, and the message names the needed count.
        (with_status(3, 3, 3, 3, 3, 1, None), 50, Ready),
        (
            with_status(3, 3, 3, 3, 3, 1, None),
            70,
            w("1 of 2 (readyThreshold 70%) updated replicas are available"),
        ),
        (with_status(3, 3, 3, 3, 3, 0, None), 30, Ready),
        (
            with_status(100, 3, 3, 100, 100, 28, None),
            29,
            w("28 of 29 (readyThreshold 29%) updated replicas are available"),
        ),
        (
            with_status(2, 3, 3, 2, 2, 0, Some("ProgressDeadlineExceeded")),
            100,
            Failed("deployment \"podinfo\" exceeded its progress deadline".into()),
        ),
        (
            with_status(0, 3, 3, 0, 0, 0, None),
            100,
            w("deployment is scaled to zero"),
        ),
    ];
    for (i, (d, threshold, want)) in cases.into_iter().enumerate() {
        assert_eq!(readiness(&d, threshold), want, "case {i}");
    }
}

#[test]
fn scale_up_replicas_table() {
    let cases = [
        ((Some(3), Some(2), None, false), 3),
        ((Some(0), Some(2), None, false), 2),
        ((None, Some(4), Some(2), true), 2),
        ((Some(0), Some(4), Some(1), true), 1),
        ((Some(0), None, None, false), 1),
    ];
    for ((t, p, m, h), want) in cases {
        assert_eq!(scale_up_replicas(t, p, m, h), want, "{t:?} {p:?} {m:?} {h}");
    }
}

#[test]
fn primary_replicas_table() {
    let cases = [
        // (target, primary, autoscaler) → replicas on the primary
        ((Some(3), Some(2), false), Some(3)),
        ((Some(0), Some(2), false), Some(2)),
        ((Some(0), None, false), Some(1)),
        ((None, None, false), Some(1)),
        ((Some(3), Some(2), true), None),
    ];
    for ((t, p, h), want) in cases {
        assert_eq!(primary_replicas(t, p, h), want, "{t:?} {p:?} {h}");
    }
}

#[test]
fn target_replicas_table() {
    use crate::rollout::Scale;
    let cases = [
        // (scale, target, primary, autoscaler min, autoscaler) → write
        ((Scale::Keep, Some(0), Some(2), None, false), None),
        ((Scale::Keep, Some(3), Some(2), None, false), None),
        ((Scale::Zero, Some(3), Some(2), None, false), Some(0)),
        ((Scale::Zero, Some(0), Some(2), None, false), None),
        // An unset count is one replica, so scaling to zero writes.
        ((Scale::Zero, None, None, None, false), Some(0)),
        ((Scale::Up, Some(2), Some(5), None, false), None),
        ((Scale::Up, None, Some(5), None, false), None),
        ((Scale::Up, Some(0), Some(5), None, false), Some(5)),
        ((Scale::Up, Some(0), Some(5), Some(3), true), Some(3)),
        ((Scale::Up, Some(0), Some(5), Some(1), true), Some(1)),
        ((Scale::Up, Some(0), None, None, false), Some(1)),
    ];
    for ((s, t, p, m, h), want) in cases {
        assert_eq!(
            target_replicas(s, t, p, m, h),
            want,
            "{s:?} {t:?} {p:?} {m:?} {h}"
        );
    }
}

#[test]
fn primary_copies_of_configs_carry_the_data_and_the_canary_as_owner() {
    let owner = OwnerReference {
        api_version: "flagger.app/v1beta1".into(),
        kind: "Canary".into(),
        name: "podinfo".into(),
        uid: "u1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut src = cm("settings", &[("a", "1")]);
    src.metadata.namespace = Some("test".into());
    src.metadata.labels = Some(BTreeMap::from([("team".into(), "x".into())]));
    src.metadata.resource_version = Some("9".into());
    let copy = primary_config_map(&src, &owner);
    assert_eq!(copy.metadata.name.as_deref(), Some("settings-primary"));
    assert_eq!(copy.metadata.namespace.as_deref(), Some("test"));
    assert_eq!(copy.metadata.owner_references, Some(vec![owner.clone()]));
    assert_eq!(
        copy.metadata.resource_version, None,
        "nothing else of the source's metadata"
    );
    assert_eq!(copy.metadata.labels, None);
    assert_eq!(copy.data, src.data);

    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "token", "namespace": "test"},
        "type": "Opaque",
        "data": {"t": "c2VjcmV0"},
    }))
    .unwrap();
    let copy = primary_secret(&secret, &owner);
    assert_eq!(copy.metadata.name.as_deref(), Some("token-primary"));
    assert_eq!(copy.type_.as_deref(), Some("Opaque"));
    assert_eq!(copy.data, secret.data);
    assert_eq!(copy.metadata.owner_references, Some(vec![owner]));
}
