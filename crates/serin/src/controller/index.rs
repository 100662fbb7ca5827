//! Which Canaries an event about a Deployment, ConfigMap or Secret concerns, answered from an
//! index kept up to date by the Canary and Deployment watches.
//!
//! The watch mappers run on every event of every Deployment, ConfigMap and Secret in the watched
//! namespaces; scanning all cached Canaries (and, for a ConfigMap, reading each target's pod
//! template) on each of them costs O(canaries) per event. The index answers in O(answer). It is a
//! plain synchronous structure: the watch streams feed it in order, the mappers read it, and its
//! behaviour is tested without a cluster.

use std::collections::{BTreeSet, HashMap};

/// A ConfigMap or a Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

/// A namespaced name.
type Key = (String, String);

/// The ConfigMaps and Secrets a Deployment's pod template references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

impl Refs {
    fn names(&self, kind: ConfigKind) -> &BTreeSet<String> {
        match kind {
            ConfigKind::ConfigMap => &self.config_maps,
            ConfigKind::Secret => &self.secrets,
        }
    }
}

/// An object a Canary names but does not own, whose change it must see: the apex Service and
/// VirtualService (a user's, taken over, carry no owner reference), and the user's HPA of
/// `spec.autoscalerRef`. Without these, a settled Canary had to be looked at on a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Named {
    /// The apex name: a Service and a VirtualService.
    Apex,
    /// `spec.autoscalerRef.name`: a HorizontalPodAutoscaler.
    Autoscaler,
}

#[derive(Debug, Default)]
pub struct Index {
    /// Canary → the name of its target Deployment (same namespace).
    targets: HashMap<Key, String>,
    /// (namespace, target Deployment) → Canaries targeting it.
    by_target: HashMap<Key, BTreeSet<String>>,
    /// Deployment → the configs its pod template references.
    refs: HashMap<Key, Refs>,
    /// (namespace, config name) → Deployments referencing it, per kind.
    users: HashMap<(ConfigKind, String, String), BTreeSet<String>>,
    /// Canary → the objects it names.
    names: HashMap<Key, Vec<(Named, String)>>,
    /// (kind, namespace, name) → Canaries naming it.
    named: HashMap<(Named, String, String), BTreeSet<String>>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// A Canary was created or changed: it now targets `target`.
    pub fn upsert_canary(&mut self, ns: &str, name: &str, target: &str) {
        let key = (ns.to_string(), name.to_string());
        if self.targets.get(&key).is_some_and(|t| t == target) {
            return;
        }
        self.remove_canary(ns, name);
        self.by_target
            .entry((ns.to_string(), target.to_string()))
            .or_default()
            .insert(name.to_string());
        self.targets.insert(key, target.to_string());
    }

    /// A Canary was created or changed: it now names `names`.
    pub fn set_names(&mut self, ns: &str, name: &str, mut names: Vec<(Named, String)>) {
        names.sort();
        names.dedup();
        let key = (ns.to_string(), name.to_string());
        if self.names.get(&key) == Some(&names) {
            return;
        }
        self.remove_names(ns, name);
        for (kind, n) in &names {
            self.named
                .entry((*kind, ns.to_string(), n.clone()))
                .or_default()
                .insert(name.to_string());
        }
        self.names.insert(key, names);
    }

    fn remove_names(&mut self, ns: &str, name: &str) {
        let Some(old) = self.names.remove(&(ns.to_string(), name.to_string())) else {
            return;
        };
        for (kind, n) in old {
            let k = (kind, ns.to_string(), n);
            if let Some(set) = self.named.get_mut(&k) {
                set.remove(name);
                if set.is_empty() {
                    self.named.remove(&k);
                }
            }
        }
    }

    /// The Canaries of namespace `ns` that name object `name` of this kind.
    pub fn canaries_naming(&self, kind: Named, ns: &str, name: &str) -> Vec<String> {
        self.named
            .get(&(kind, ns.to_string(), name.to_string()))
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn remove_canary(&mut self, ns: &str, name: &str) {
        self.remove_names(ns, name);
        let key = (ns.to_string(), name.to_string());
        if let Some(old) = self.targets.remove(&key) {
            let tk = (ns.to_string(), old);
            if let Some(set) = self.by_target.get_mut(&tk) {
                set.remove(name);
                if set.is_empty() {
                    self.by_target.remove(&tk);
                }
            }
        }
    }

    /// Replaces every Canary at once (after a relist, which reports no deletions).
    pub fn replace_canaries<I, S>(&mut self, canaries: I)
    where
        I: IntoIterator<Item = (S, S, S)>,
        S: AsRef<str>,
    {
        self.targets.clear();
        self.by_target.clear();
        self.names.clear();
        self.named.clear();
        for (ns, name, target) in canaries {
            self.upsert_canary(ns.as_ref(), name.as_ref(), target.as_ref());
        }
    }

    /// A Deployment was created or changed: its pod template now references `refs`.
    pub fn upsert_deployment(&mut self, ns: &str, name: &str, refs: Refs) {
        let key = (ns.to_string(), name.to_string());
        if self.refs.get(&key) == Some(&refs) {
            return;
        }
        self.remove_deployment(ns, name);
        for kind in [ConfigKind::ConfigMap, ConfigKind::Secret] {
            for cfg in refs.names(kind) {
                self.users
                    .entry((kind, ns.to_string(), cfg.clone()))
                    .or_default()
                    .insert(name.to_string());
            }
        }
        self.refs.insert(key, refs);
    }

    pub fn remove_deployment(&mut self, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        let Some(old) = self.refs.remove(&key) else {
            return;
        };
        for kind in [ConfigKind::ConfigMap, ConfigKind::Secret] {
            for cfg in old.names(kind) {
                let uk = (kind, ns.to_string(), cfg.clone());
                if let Some(set) = self.users.get_mut(&uk) {
                    set.remove(name);
                    if set.is_empty() {
                        self.users.remove(&uk);
                    }
                }
            }
        }
    }

    /// Replaces every Deployment at once (after a relist).
    pub fn replace_deployments<I, S>(&mut self, deployments: I)
    where
        I: IntoIterator<Item = (S, S, Refs)>,
        S: AsRef<str>,
    {
        self.refs.clear();
        self.users.clear();
        for (ns, name, refs) in deployments {
            self.upsert_deployment(ns.as_ref(), name.as_ref(), refs);
        }
    }

    /// The Canaries of namespace `ns` concerned by Deployment `name`: those targeting it, and
    /// those whose primary it is (`<target>-primary`).
    pub fn canaries_for_deployment(&self, ns: &str, name: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        let mut add = |target: &str| {
            if let Some(set) = self.by_target.get(&(ns.to_string(), target.to_string())) {
                out.extend(set.iter().cloned());
            }
        };
        add(name);
        if let Some(target) = name.strip_suffix("-primary") {
            add(target);
        }
        out.into_iter().collect()
    }

    /// The Canaries of namespace `ns` whose target's pod template references config `name`.
    pub fn canaries_for_config(&self, kind: ConfigKind, ns: &str, name: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        if let Some(deps) = self.users.get(&(kind, ns.to_string(), name.to_string())) {
            for d in deps {
                if let Some(set) = self.by_target.get(&(ns.to_string(), d.clone())) {
                    out.extend(set.iter().cloned());
                }
            }
        }
        out.into_iter().collect()
    }

    /// How many Canaries and Deployments it holds, for tests and debugging.
    pub fn len(&self) -> (usize, usize) {
        (self.targets.len(), self.refs.len())
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.refs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(cms: &[&str], secrets: &[&str]) -> Refs {
        Refs {
            config_maps: cms.iter().map(|s| s.to_string()).collect(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn named_objects_map_to_the_canaries_naming_them_until_they_stop() {
        let mut ix = Index::new();
        ix.upsert_canary("a", "podinfo", "podinfo");
        ix.set_names(
            "a",
            "podinfo",
            vec![
                (Named::Apex, "podinfo".into()),
                (Named::Autoscaler, "podinfo".into()),
            ],
        );
        ix.upsert_canary("a", "second", "backend");
        ix.set_names("a", "second", vec![(Named::Apex, "podinfo".into())]);
        ix.upsert_canary("b", "podinfo", "podinfo");
        ix.set_names("b", "podinfo", vec![(Named::Apex, "www".into())]);
        assert_eq!(
            ix.canaries_naming(Named::Apex, "a", "podinfo"),
            ["podinfo", "second"]
        );
        assert_eq!(
            ix.canaries_naming(Named::Autoscaler, "a", "podinfo"),
            ["podinfo"]
        );
        assert!(
            ix.canaries_naming(Named::Autoscaler, "b", "podinfo")
                .is_empty()
        );
        assert_eq!(ix.canaries_naming(Named::Apex, "b", "www"), ["podinfo"]);

        // The autoscalerRef removed; a Canary deleted; then a relist forgets everything.
        ix.set_names("a", "podinfo", vec![(Named::Apex, "podinfo".into())]);
        assert!(
            ix.canaries_naming(Named::Autoscaler, "a", "podinfo")
                .is_empty()
        );
        ix.remove_canary("a", "second");
        assert_eq!(ix.canaries_naming(Named::Apex, "a", "podinfo"), ["podinfo"]);
        ix.replace_canaries([("b", "podinfo", "podinfo")]);
        assert!(ix.canaries_naming(Named::Apex, "a", "podinfo").is_empty());
        assert!(ix.canaries_naming(Named::Apex, "b", "www").is_empty());
    }

    #[test]
    fn deployments_map_to_the_canaries_targeting_them_or_their_primary() {
        let mut ix = Index::new();
        ix.upsert_canary("a", "podinfo", "podinfo");
        ix.upsert_canary("a", "second", "podinfo");
        ix.upsert_canary("b", "podinfo", "podinfo");
        ix.upsert_canary("a", "other", "backend");
        for (ns, dep, want) in [
            ("a", "podinfo", vec!["podinfo", "second"]),
            ("a", "podinfo-primary", vec!["podinfo", "second"]),
            ("b", "podinfo", vec!["podinfo"]),
            ("a", "backend", vec!["other"]),
            ("a", "backend-primary", vec!["other"]),
            ("a", "frontend", vec![]),
            ("c", "podinfo", vec![]),
            ("a", "-primary", vec![]),
        ] {
            assert_eq!(ix.canaries_for_deployment(ns, dep), want, "{ns}/{dep}");
        }
    }

    #[test]
    fn retargeting_and_deleting_a_canary_updates_the_answers() {
        let mut ix = Index::new();
        ix.upsert_canary("a", "c", "one");
        ix.upsert_canary("a", "c", "two");
        assert!(ix.canaries_for_deployment("a", "one").is_empty());
        assert_eq!(ix.canaries_for_deployment("a", "two"), vec!["c"]);
        ix.remove_canary("a", "c");
        assert!(ix.canaries_for_deployment("a", "two").is_empty());
        assert!(ix.is_empty());
        // Removing twice, or something never seen, is harmless.
        ix.remove_canary("a", "c");
        ix.remove_deployment("a", "nothing");
        assert!(ix.is_empty());
    }

    #[test]
    fn configs_map_through_the_target_deployments_pod_template() {
        let mut ix = Index::new();
        ix.upsert_canary("a", "podinfo", "podinfo");
        ix.upsert_canary("a", "other", "backend");
        ix.upsert_deployment("a", "podinfo", refs(&["settings", "shared"], &["token"]));
        ix.upsert_deployment("a", "backend", refs(&["shared"], &[]));
        // A primary's copies are not the user's config: only the target's references count.
        ix.upsert_deployment("a", "podinfo-primary", refs(&["settings-primary"], &[]));
        let cm = ConfigKind::ConfigMap;
        assert_eq!(ix.canaries_for_config(cm, "a", "settings"), vec!["podinfo"]);
        assert_eq!(
            ix.canaries_for_config(cm, "a", "shared"),
            vec!["other", "podinfo"]
        );
        assert!(
            ix.canaries_for_config(cm, "a", "settings-primary")
                .is_empty()
        );
        assert!(ix.canaries_for_config(cm, "a", "token").is_empty());
        assert_eq!(
            ix.canaries_for_config(ConfigKind::Secret, "a", "token"),
            vec!["podinfo"]
        );
        assert!(ix.canaries_for_config(cm, "b", "settings").is_empty());

        // The template stops using `shared`.
        ix.upsert_deployment("a", "podinfo", refs(&["settings"], &["token"]));
        assert_eq!(ix.canaries_for_config(cm, "a", "shared"), vec!["other"]);
        ix.remove_deployment("a", "backend");
        assert!(ix.canaries_for_config(cm, "a", "shared").is_empty());
        // A Canary created after its Deployment is found too.
        ix.upsert_canary("a", "late", "podinfo");
        assert_eq!(
            ix.canaries_for_config(cm, "a", "settings"),
            vec!["late", "podinfo"]
        );
    }

    #[test]
    fn a_relist_replaces_everything_including_what_was_deleted_meanwhile() {
        let mut ix = Index::new();
        ix.upsert_canary("a", "gone", "x");
        ix.upsert_canary("a", "kept", "y");
        ix.upsert_deployment("a", "x", refs(&["cfg"], &[]));
        ix.replace_canaries([("a", "kept", "y"), ("a", "new", "x")]);
        assert_eq!(ix.canaries_for_deployment("a", "x"), vec!["new"]);
        ix.replace_deployments([("a", "y", refs(&["cfg"], &[]))]);
        assert_eq!(
            ix.canaries_for_config(ConfigKind::ConfigMap, "a", "cfg"),
            vec!["kept"]
        );
        assert_eq!(ix.len(), (2, 1));
    }

    /// Against the scan the index replaces: for random Canaries and Deployments, both agree.
    #[test]
    fn agrees_with_a_full_scan() {
        use proptest::prelude::*;
        let name = || prop::sample::select(vec!["p", "q", "r", "p-primary"]);
        let strategy = (
            prop::collection::vec((prop::sample::select(vec!["a", "b"]), name(), name()), 0..8),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["a", "b"]),
                    name(),
                    prop::collection::btree_set(prop::sample::select(vec!["c1", "c2"]), 0..3),
                ),
                0..8,
            ),
        );
        proptest!(|((canaries, deps) in strategy)| {
            let mut ix = Index::new();
            let mut canary_map = HashMap::new();
            for (ns, n, t) in &canaries {
                ix.upsert_canary(ns, n, t);
                canary_map.insert((ns.to_string(), n.to_string()), t.to_string());
            }
            let mut dep_map = HashMap::new();
            for (ns, n, cms) in &deps {
                let r = Refs { config_maps: cms.iter().map(|s| s.to_string()).collect(), secrets: BTreeSet::new() };
                ix.upsert_deployment(ns, n, r.clone());
                dep_map.insert((ns.to_string(), n.to_string()), r);
            }
            for ns in ["a", "b"] {
                for d in ["p", "q", "r", "p-primary"] {
                    let mut want: Vec<String> = canary_map.iter()
                        .filter(|((cns, _), t)| cns == ns && (t.as_str() == d || d.strip_suffix("-primary") == Some(t.as_str())))
                        .map(|((_, n), _)| n.clone()).collect();
                    want.sort();
                    prop_assert_eq!(ix.canaries_for_deployment(ns, d), want);
                }
                for cfg in ["c1", "c2"] {
                    let mut want: Vec<String> = canary_map.iter()
                        .filter(|((cns, _), t)| cns == ns && dep_map.get(&(ns.to_string(), t.to_string())).is_some_and(|r| r.config_maps.contains(cfg)))
                        .map(|((_, n), _)| n.clone()).collect();
                    want.sort();
                    prop_assert_eq!(ix.canaries_for_config(ConfigKind::ConfigMap, ns, cfg), want);
                }
            }
        });
    }
}
