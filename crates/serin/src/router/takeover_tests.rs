use super::*;
use kube::api::DynamicObject;
use serde_json::json;

fn owner(uid: &str, controller: bool) -> OwnerReference {
    OwnerReference {
        api_version: "flagger.app/v1beta1".into(),
        kind: "Canary".into(),
        name: "podinfo".into(),
        uid: uid.into(),
        controller: Some(controller),
        block_owner_deletion: Some(true),
    }
}

fn meta(owners: &[OwnerReference], annotations: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some("podinfo".into()),
        namespace: Some("test".into()),
        owner_references: (!owners.is_empty()).then(|| owners.to_vec()),
        annotations: (!annotations.is_empty()).then(|| {
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..Default::default()
    }
}

fn vs(meta: ObjectMeta, spec: Value) -> DynamicObject {
    let mut v = serde_json::to_value(&meta).unwrap();
    v = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "metadata": v, "spec": spec});
    serde_json::from_value(v).unwrap()
}

#[test]
fn controlled_by_needs_the_controller_flag_and_the_uid() {
    let cases = [
        (vec![], Some("u1"), false),
        (vec![owner("u1", true)], Some("u1"), true),
        (vec![owner("u1", false)], Some("u1"), false),
        (vec![owner("u2", true)], Some("u1"), false),
        (vec![owner("u1", true)], None, false),
    ];
    for (owners, uid, want) in cases {
        assert_eq!(
            controlled_by(&meta(&owners, &[]), uid),
            want,
            "{owners:?} {uid:?}"
        );
    }
}

#[test]
fn a_service_is_taken_over_without_ownership() {
    let desired = Service {
        metadata: meta(&[owner("u1", true)], &[]),
        ..Default::default()
    };
    let ours = meta(&[owner("u1", true)], &[]);
    let users = meta(&[], &[]);
    let others = meta(&[owner("u2", true)], &[]);
    let cases = [
        (None, true),
        (Some(&ours), true),
        (Some(&users), false),
        (Some(&others), false),
    ];
    for (existing, keeps_owner) in cases {
        let existing = existing.map(|m| Service {
            metadata: m.clone(),
            ..Default::default()
        });
        let got = taken_over_service(desired.clone(), existing.as_ref(), Some("u1"));
        assert_eq!(
            got.metadata.owner_references.is_some(),
            keeps_owner,
            "{existing:?}"
        );
    }
}

#[test]
fn a_virtual_service_taken_over_records_the_users_spec() {
    let ours_ref = json!([{"apiVersion": "flagger.app/v1beta1", "kind": "Canary", "name": "podinfo", "uid": "u1"}]);
    let desired: VirtualService = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "podinfo", "ownerReferences": ours_ref},
        "spec": {"hosts": ["podinfo"]},
    }))
    .unwrap();
    let user_spec =
        json!({"hosts": ["podinfo"], "http": [{"route": [{"destination": {"host": "podinfo"}}]}]});
    let recorded = r#"{"hosts":["old"]}"#;
    let cases: Vec<(Option<DynamicObject>, Option<Value>, Option<String>)> = vec![
        // Nothing there yet, or serin's own: applied as built.
        (None, Some(ours_ref.clone()), None),
        (
            Some(vs(meta(&[owner("u1", true)], &[]), user_spec.clone())),
            Some(ours_ref.clone()),
            None,
        ),
        // The user's: no owner, and the user's spec recorded.
        (
            Some(vs(meta(&[], &[]), user_spec.clone())),
            None,
            Some(user_spec.to_string()),
        ),
        // Recorded before (a second reconcile): the first record is kept, not serin's routes.
        (
            Some(vs(
                meta(&[], &[(ORIGINAL_CONFIGURATION, recorded)]),
                json!({"hosts": ["serin"]}),
            )),
            None,
            Some(recorded.to_string()),
        ),
        // kubectl keeps the spec in its last-applied annotation: nothing recorded.
        (
            Some(vs(
                meta(&[], &[(LAST_APPLIED_CONFIGURATION, "{}")]),
                user_spec.clone(),
            )),
            None,
            None,
        ),
    ];
    for (i, (existing, owners, original)) in cases.into_iter().enumerate() {
        let got = serde_json::to_value(taken_over_virtual_service(
            desired.clone(),
            existing.as_ref(),
            Some("u1"),
        ))
        .unwrap();
        assert_eq!(
            got["metadata"].get("ownerReferences").cloned(),
            owners,
            "case {i}"
        );
        assert_eq!(
            got["metadata"]["annotations"][ORIGINAL_CONFIGURATION]
                .as_str()
                .map(String::from),
            original,
            "case {i}"
        );
        assert_eq!(
            got["spec"],
            serde_json::to_value(&desired).unwrap()["spec"],
            "case {i}"
        );
        // The same over the copy the watch cache keeps (its spec as JSON text).
        let cached = existing.map(|mut e| {
            crate::controller::watches::slim_istio(&mut e);
            assert!(e.data.is_string(), "case {i}");
            e
        });
        let from_cache = serde_json::to_value(taken_over_virtual_service(
            desired.clone(),
            cached.as_ref(),
            Some("u1"),
        ))
        .unwrap();
        assert_eq!(from_cache, got, "case {i}, as cached");
    }
}

#[test]
fn reverting_a_virtual_service_restores_what_the_user_had() {
    let restore = |spec: Value| {
        VirtualServiceRevert::Restore(json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": {"name": "podinfo"}, "spec": spec,
        }))
    };
    let last_applied = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "spec": {"hosts": ["kubectl"]}}).to_string();
    let cases = [
        (
            meta(&[], &[(ORIGINAL_CONFIGURATION, r#"{"hosts":["a"]}"#)]),
            restore(json!({"hosts": ["a"]})),
        ),
        (
            meta(&[], &[(LAST_APPLIED_CONFIGURATION, &last_applied)]),
            restore(json!({"hosts": ["kubectl"]})),
        ),
        // The recorded original wins over kubectl's.
        (
            meta(
                &[],
                &[
                    (ORIGINAL_CONFIGURATION, r#"{"hosts":["a"]}"#),
                    (LAST_APPLIED_CONFIGURATION, &last_applied),
                ],
            ),
            restore(json!({"hosts": ["a"]})),
        ),
        (meta(&[owner("u1", true)], &[]), VirtualServiceRevert::Leave),
        (meta(&[], &[]), VirtualServiceRevert::OriginalUnknown),
        (
            meta(&[], &[(ORIGINAL_CONFIGURATION, "not json")]),
            VirtualServiceRevert::OriginalUnknown,
        ),
    ];
    for (i, (m, want)) in cases.into_iter().enumerate() {
        let mut cached = vs(m, json!({"hosts": ["serin"]}));
        let got = reverted_virtual_service(&cached, Some("u1"));
        assert_eq!(got, want, "case {i}");
        crate::controller::watches::slim_istio(&mut cached);
        assert_eq!(
            reverted_virtual_service(&cached, Some("u1")),
            want,
            "case {i}, as cached"
        );
    }
}

#[test]
fn the_reverted_apex_selects_the_target_and_drops_only_the_canary() {
    let sel = SelectorLabel {
        key: "app".into(),
        value: "podinfo".into(),
    };
    let cases = [
        (vec![owner("u1", true)], json!([])),
        (
            vec![owner("u1", true), owner("other", false)],
            json!([serde_json::to_value(owner("other", false)).unwrap()]),
        ),
        (vec![], json!([])),
    ];
    for (owners, want) in cases {
        let patch = serde_json::to_value(reverted_apex(&meta(&owners, &[]), &sel, "u1")).unwrap();
        assert_eq!(patch["metadata"]["ownerReferences"], want, "{owners:?}");
        assert_eq!(patch["spec"], json!({"selector": {"app": "podinfo"}}));
        assert!(patch.get("status").is_none());
    }
}

#[test]
fn a_users_node_port_apex_keeps_its_type_and_node_ports() {
    let desired: Service = serde_json::from_value(json!({
        "metadata": {"name": "podinfo", "namespace": "test", "labels": {"app": "podinfo"},
                     "ownerReferences": [serde_json::to_value(owner("u1", true)).unwrap()]},
        "spec": {"type": "ClusterIP", "selector": {"app": "podinfo-primary"},
                 "ports": [{"name": "http", "port": 9898, "targetPort": 9898, "protocol": "TCP"}]}
    }))
    .unwrap();
    let users: Service = serde_json::from_value(json!({
        "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": {"type": "NodePort", "selector": {"app": "podinfo"},
                 "ports": [{"name": "http", "port": 9898, "nodePort": 30898, "protocol": "TCP"}]}
    }))
    .unwrap();
    let got = serde_json::to_value(taken_over_service(
        desired.clone(),
        Some(&users),
        Some("u1"),
    ))
    .unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "podinfo", "namespace": "test", "annotations": {
                "helm.toolkit.fluxcd.io/driftDetection": "disabled",
                "kustomize.toolkit.fluxcd.io/reconcile": "disabled"}},
            "spec": {"selector": {"app": "podinfo-primary"},
                     "ports": [{"name": "http", "port": 9898, "targetPort": 9898, "protocol": "TCP", "nodePort": 30898}]}
        })
    );
    // A Service serin made keeps everything serin says.
    let ours = Service {
        metadata: meta(&[owner("u1", true)], &[]),
        ..Default::default()
    };
    assert_eq!(
        taken_over_service(desired.clone(), Some(&ours), Some("u1")),
        desired
    );
}
