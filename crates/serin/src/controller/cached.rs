//! Cache entries for the Deployments and Services of the watched namespaces: per Canary its
//! target and primary and its three Services, which serin reads only when it reconciles that
//! Canary.
//!
//! A typed Kubernetes object costs several times its JSON in memory: a `Deployment` is 2,472
//! bytes before any heap (its pod template's slots are there even when empty), each label and
//! annotation map takes a B-tree node of eleven slots, each string an allocation. Typed, the two
//! Deployments and three Services of a Canary held about 21 KB of the 38 KB an idle serin kept per
//! Canary (heaptrack at 1,000 canaries, docs/benchmarks.md). A [`Cached`] entry keeps the object
//! as its JSON text and types only the metadata the runtime keys and maps it by (name, namespace,
//! uid, resourceVersion, owner references); [`Cached::object`] parses the object back when a
//! reconcile reads it.
//!
//! The entry is decoded straight from the watch (its `Deserialize` decodes the typed object,
//! strips what [`watches::slim`] strips, and keeps the text), so a malformed object still fails
//! on its own, as with the typed watch, and the typed object never reaches a cache.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::watches::{self, Keep};

/// One cached object: the keying metadata typed, the rest as JSON text.
pub struct Cached<K> {
    metadata: ObjectMeta,
    text: Box<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Cached {
            metadata: self.metadata.clone(),
            text: self.text.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Cached<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("name", &self.metadata.name)
            .field("namespace", &self.metadata.namespace)
            .field("resource_version", &self.metadata.resource_version)
            .finish_non_exhaustive()
    }
}

impl<K> Cached<K>
where
    K: Resource + Serialize + DeserializeOwned,
{
    /// The entry for `obj` as it is (no stripping: [`Deserialize`] strips before this).
    pub fn of(obj: &K) -> Result<Self, serde_json::Error> {
        let m = obj.meta();
        Ok(Cached {
            metadata: ObjectMeta {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
                resource_version: m.resource_version.clone(),
                owner_references: m.owner_references.clone(),
                ..ObjectMeta::default()
            },
            text: serde_json::to_string(obj)?.into_boxed_str(),
            kind: PhantomData,
        })
    }

    /// The object, as the watch delivered it less what [`watches::slim`] dropped.
    pub fn object(&self) -> Result<K, serde_json::Error> {
        serde_json::from_str(&self.text)
    }
}

impl<'de, K> Deserialize<'de> for Cached<K>
where
    K: Resource + Serialize + DeserializeOwned,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut obj = K::deserialize(d)?;
        watches::slim(&mut obj, Keep::Read);
        Cached::of(&obj).map_err(serde::de::Error::custom)
    }
}

impl<K> Resource for Cached<K>
where
    K: Resource<DynamicType = ()>,
{
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn deployment() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "podinfo-primary", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "generation": 3, "labels": {"app": "podinfo-primary"},
                "annotations": {"a": "b", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "ownerReferences": [{"apiVersion": "flagger.app/v1beta1", "kind": "Canary", "name": "podinfo", "uid": "c1", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "podinfo-primary"}},
                "template": {
                    "metadata": {"labels": {"app": "podinfo-primary"}},
                    "spec": {"containers": [{"name": "podinfo", "image": "ghcr.io/stefanprodan/podinfo:6.0.0"}]},
                },
            },
            "status": {"readyReplicas": 2, "observedGeneration": 3},
        })
    }

    #[test]
    fn an_entry_keeps_the_keying_metadata_and_gives_the_slimmed_object_back() {
        let cached: Cached<Deployment> = serde_json::from_value(deployment()).unwrap();
        let m = cached.meta();
        assert_eq!(m.name.as_deref(), Some("podinfo-primary"));
        assert_eq!(m.namespace.as_deref(), Some("ns"));
        assert_eq!(m.uid.as_deref(), Some("u1"));
        assert_eq!(m.resource_version.as_deref(), Some("7"));
        assert_eq!(m.owner_references.as_ref().map(Vec::len), Some(1));
        assert_eq!(m.labels, None);

        let back = cached.object().unwrap();
        let mut expected: Deployment = serde_json::from_value(deployment()).unwrap();
        watches::slim(&mut expected, Keep::Read);
        assert_eq!(back, expected);
        // What slim drops stays dropped: other managers' fields, kubectl's annotation.
        assert_eq!(back.metadata.managed_fields, None);
        assert_eq!(
            back.metadata
                .annotations
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec!["a"]
        );
        assert_eq!(back.spec.template.spec.unwrap().containers.len(), 1);
    }

    #[test]
    fn an_object_the_typed_decode_refuses_is_refused() {
        let mut bad = deployment();
        bad["spec"]["replicas"] = json!("two");
        assert!(serde_json::from_value::<Cached<Deployment>>(bad).is_err());
    }

    #[test]
    fn resource_paths_are_the_wrapped_kinds() {
        assert_eq!(
            Cached::<Deployment>::url_path(&(), Some("ns")),
            "/apis/apps/v1/namespaces/ns/deployments"
        );
        assert_eq!(Cached::<Service>::url_path(&(), None), "/api/v1/services");
        assert_eq!(Cached::<Service>::kind(&()), "Service");
    }
}
