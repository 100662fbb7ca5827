//! The act and record steps against a mock API server (`tower-test`, as kube-rs's controller-rs
//! does in `src/fixtures.rs`): the exact requests they send, in order, and none when the watch
//! caches already hold what they would write. What the API server does with the requests is the
//! end-to-end tests' business.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{Method, Request, Response};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{ApiResource, DynamicObject};
use kube::client::Body;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tower_test::mock::{self, Handle};

use super::Reconcile;
use super::observe::Observed;
use crate::api::{Canary, MetricTemplate};
use crate::controller::{Ctx, Options, autoscaler, events};
use crate::rollout::{Phase, Plan, Progress, Scale};
use crate::router;
use crate::telemetry::Metrics;
use crate::workload::{self, SelectorLabel};

type Mock = Handle<Request<Body>, Response<Body>>;

fn canary() -> Canary {
    serde_json::from_value(json!({
        "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test", "uid": "u1", "resourceVersion": "7"},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "service": {"port": 9898},
            "analysis": {"interval": "1m", "threshold": 5, "maxWeight": 50, "stepWeight": 10},
        },
    }))
    .unwrap()
}

fn target(replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "podinfo"}},
            "template": {
                "metadata": {"labels": {"app": "podinfo"}},
                "spec": {"containers": [{"name": "app", "image": "podinfo:6.0.0"}]},
            },
        },
    }))
    .unwrap()
}

/// The objects in the watch caches.
#[derive(Default)]
struct Cached {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    destination_rules: Vec<Value>,
    virtual_services: Vec<Value>,
}

fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (reader, mut writer) = reflector::store::<K>();
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    reader
}

fn entry<K>(obj: &K) -> crate::controller::cached::Cached<K>
where
    K: kube::Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    crate::controller::cached::Cached::of(obj).unwrap()
}

fn dynamic_store(ar: &ApiResource, objects: Vec<Value>) -> Store<DynamicObject> {
    let mut writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    for o in objects {
        let o: DynamicObject = serde_json::from_value(o).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    writer.as_reader()
}

fn istio(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "networking.istio.io",
        "v1beta1",
        kind,
    ))
}

/// A context whose client is the mock and whose caches hold `cached`.
fn ctx(client: Client, cached: Cached) -> Arc<Ctx> {
    let metrics = Arc::new(Metrics::new());
    let (http, http_insecure) = crate::hooks::clients().unwrap();
    let vs_resource = istio("VirtualService");
    let dr_resource = istio("DestinationRule");
    let hpa_resource = autoscaler::resource();
    Arc::new(Ctx {
        client: client.clone(),
        opts: Options::default(),
        canaries: store::<Canary>(vec![]),
        deployments: store(cached.deployments.iter().map(entry).collect()),
        services: store(cached.services.iter().map(entry).collect()),
        config_maps: store::<ConfigMap>(vec![]),
        secrets: store::<Secret>(vec![]),
        templates: store::<MetricTemplate>(vec![]),
        virtual_services: dynamic_store(&vs_resource, cached.virtual_services),
        destination_rules: dynamic_store(&dr_resource, cached.destination_rules),
        vs_resource,
        dr_resource,
        recorder: events::EventRecorder::new(client, "test".into()),
        alerter: crate::alerts::Alerter::new(&Default::default(), http.clone(), metrics.clone()),
        http,
        http_insecure,
        providers: Mutex::new(HashMap::new()),
        metrics,
        written: std::sync::Mutex::new(HashMap::new()).into(),
        autoscalers: autoscaler::Autoscalers {
            store: dynamic_store(&hpa_resource, vec![]),
            resource: hpa_resource,
        },
        ready: tokio::sync::OnceCell::new_with(Some(true)),
        backoff: Default::default(),
        admission: Default::default(),
    })
}

fn reconcile(canary: Canary, ctx: Arc<Ctx>) -> Reconcile {
    Reconcile {
        retrying: false,
        ns: "test".into(),
        name: "podinfo".into(),
        now: chrono::Utc::now(),
        canary: Arc::new(canary),
        ctx,
        metric_results: None,
        no_data_since: None,
        analysed: false,
        cookies: None,
        event_chain: Default::default(),
        refusal: Default::default(),
        pending: None,
    }
}

fn observed(target: Deployment) -> Observed {
    let target = Arc::new(target);
    let template = target.spec.template.clone();
    Observed {
        selector: workload::selector_label(&target).unwrap(),
        pod: template.spec.clone().unwrap_or_default(),
        configs: Default::default(),
        revision: workload::revision_hash(&template),
        scaler: None,
        primary: None,
        target,
    }
}

fn plan(route_to_primary: bool, scale: Scale) -> Plan {
    Plan {
        progress: Progress {
            phase: Some(Phase::Initialized),
            ..Default::default()
        },
        route_to_primary,
        scale,
        actions: vec![],
        events: vec![],
        alerts: vec![],
        outcome: None,
        requeue_after: None,
    }
}

/// One request the step must send, and what the mock API server answers.
struct Expect {
    method: Method,
    path: &'static str,
    /// Query parameters, in any order.
    query: &'static [&'static str],
    content_type: &'static str,
    /// What the body must contain (a JSON subset).
    body: Value,
    /// The answer; `None` echoes the request body (what an apply returns, near enough).
    answer: Option<(u16, Value)>,
}

const APPLY: &str = "application/apply-patch+yaml";
const MERGE: &str = "application/merge-patch+json";

fn apply(path: &'static str, manager: &'static str, body: Value) -> Expect {
    let query: &'static [&'static str] = match manager {
        "serin/router" => &["fieldManager=serin%2Frouter", "force=true"],
        "serin" => &["fieldManager=serin", "force=true"],
        other => panic!("no query for {other}"),
    };
    Expect {
        method: Method::PATCH,
        path,
        query,
        content_type: APPLY,
        body,
        answer: None,
    }
}

/// Serves `expected` in order, asserting each request; then no request may follow until the
/// client is dropped.
async fn serve(mut handle: Mock, expected: Vec<Expect>) {
    for (i, e) in expected.into_iter().enumerate() {
        let (req, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("request {i} ({} {}) never came", e.method, e.path));
        let what = format!("request {i}: {} {}", req.method(), req.uri());
        assert_eq!(req.method(), e.method, "{what}");
        assert_eq!(req.uri().path(), e.path, "{what}");
        let mut query: Vec<&str> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|q| !q.is_empty())
            .collect();
        query.sort();
        assert_eq!(query, e.query, "{what}");
        assert_eq!(
            req.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(e.content_type),
            "{what}"
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            super::apply::is_subset(&e.body, &body),
            "{what}: body {body:#} lacks {:#}",
            e.body
        );
        let (status, answer) = e.answer.unwrap_or((200, body));
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
    }
    if let Some((req, _)) = handle.next_request().await {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
}

/// Runs `step` against the mock while it serves `expected`; fails on any request beyond them.
/// The step gets the only handle on the client, so the mock sees it go when the step ends.
async fn exchange<F, T>(cached: Cached, expected: Vec<Expect>, step: F) -> T
where
    F: AsyncFnOnce(Arc<Ctx>) -> T,
{
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = ctx(Client::new(service, "test"), cached);
    let server = tokio::spawn(serve(handle, expected));
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), step(ctx))
        .await
        .expect("the step ends (an unexpected request would stay unanswered)");
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("every expected request came")
        .expect("the requests were the expected ones");
    out
}

#[tokio::test]
async fn first_routes_go_to_the_primary_before_the_target_is_scaled_down() {
    let routes = json!({"http": [{"route": [
        {"destination": {"host": "podinfo-primary"}, "weight": 100},
        {"destination": {"host": "podinfo-canary"}, "weight": 0},
    ]}]});
    let owned = json!({"ownerReferences": [{"kind": "Canary", "name": "podinfo", "uid": "u1", "controller": true}]});
    let expected = vec![
        apply(
            "/api/v1/namespaces/test/services/podinfo-canary",
            "serin/router",
            json!({"metadata": owned, "spec": {"selector": {"app": "podinfo"}}}),
        ),
        apply(
            "/api/v1/namespaces/test/services/podinfo-primary",
            "serin/router",
            json!({"spec": {"selector": {"app": "podinfo-primary"}}}),
        ),
        apply(
            "/api/v1/namespaces/test/services/podinfo",
            "serin/router",
            json!({"spec": {"selector": {"app": "podinfo-primary"}}}),
        ),
        apply(
            "/apis/networking.istio.io/v1beta1/namespaces/test/destinationrules/podinfo-canary",
            "serin/router",
            json!({"kind": "DestinationRule", "spec": {"host": "podinfo-canary"}}),
        ),
        apply(
            "/apis/networking.istio.io/v1beta1/namespaces/test/destinationrules/podinfo-primary",
            "serin/router",
            json!({"kind": "DestinationRule", "spec": {"host": "podinfo-primary"}}),
        ),
        apply(
            "/apis/networking.istio.io/v1beta1/namespaces/test/virtualservices/podinfo",
            "serin/router",
            json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "metadata": owned, "spec": routes}),
        ),
        Expect {
            method: Method::PATCH,
            path: "/apis/apps/v1/namespaces/test/deployments/podinfo",
            query: &["fieldManager=serin%2Fscale"],
            content_type: MERGE,
            body: json!({"spec": {"replicas": 0}}),
            answer: Some((200, serde_json::to_value(target(0)).unwrap())),
        },
    ];
    let cached = Cached {
        deployments: vec![target(2)],
        ..Default::default()
    };
    exchange(cached, expected, async |ctx| {
        let mut r = reconcile(canary(), ctx);
        let seen = observed(target(2));
        r.act(&seen, &plan(true, Scale::Zero)).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn nothing_is_written_when_the_caches_already_hold_it() {
    // The caches hold exactly what the builders want (and the target is at zero already).
    let c = canary();
    let selector = SelectorLabel {
        key: "app".into(),
        value: "podinfo".into(),
    };
    let inp = router::RouterInputs {
        canary: &c,
        namespace: "test",
        selector: &selector,
        owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            block_owner_deletion: Some(true),
            ..c.controller_owner_ref(&()).unwrap()
        },
        discovered: &[],
    };
    let routes = crate::rollout::routes(&plan(true, Scale::Zero).progress);
    let cached = Cached {
        deployments: vec![target(0)],
        services: router::desired_services(&inp),
        destination_rules: router::desired_destination_rules(&inp)
            .iter()
            .map(|d| serde_json::to_value(d).unwrap())
            .collect(),
        virtual_services: vec![
            serde_json::to_value(router::desired_virtual_service(&inp, routes)).unwrap(),
        ],
    };
    exchange(cached, vec![], async |ctx| {
        let mut r = reconcile(canary(), ctx);
        r.act(&observed(target(0)), &plan(true, Scale::Zero))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_changed_status_is_applied_and_an_unchanged_one_is_not() {
    let progress = Progress {
        phase: Some(Phase::Initialized),
        ..Default::default()
    };
    let mut answer = serde_json::to_value(canary()).unwrap();
    answer["metadata"]["resourceVersion"] = json!("42");
    let expected = vec![Expect {
        answer: Some((200, answer)),
        ..apply(
            "/apis/flagger.app/v1beta1/namespaces/test/canaries/podinfo/status",
            "serin",
            json!({
                "apiVersion": "flagger.app/v1beta1", "kind": "Canary",
                "status": {"phase": "Initialized", "conditions": [
                    {"type": "Promoted", "status": "True"},
                    {"type": "serin.dev/Valid", "status": "True", "reason": "Valid"},
                ]},
            }),
        )
    }];
    let status = exchange(Cached::default(), expected, async |ctx| {
        let r = reconcile(canary(), ctx.clone());
        r.write_status(&progress, None).await.unwrap();
        // The written version is remembered, so a reconcile from an older cache waits.
        assert_eq!(ctx.written.lock().unwrap().get("u1"), Some(&42));
        crate::controller::state::status(None, &progress, "Deployment", None, r.now)
    })
    .await;

    // The Canary now carries that status: writing it again sends nothing.
    let mut current = canary();
    current.status = Some(status);
    exchange(Cached::default(), vec![], async |ctx| {
        reconcile(current, ctx)
            .write_status(&progress, None)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_event_is_created_then_counted_and_a_retry_does_not_patch_it() {
    let object = canary().object_ref(&());
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let recorder = events::EventRecorder::new(Client::new(service, "test"), "test".into());
    let server = tokio::spawn(async move {
        // First sight: created at once, without a lookup (a 409 would read it).
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(
            (req.method(), req.uri().path()),
            (&Method::POST, "/api/v1/namespaces/test/events")
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        let name = body["metadata"]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("podinfo."), "{name}");
        assert_eq!(
            (
                &body["metadata"]["name"],
                &body["count"],
                &body["reason"],
                &body["type"]
            ),
            (&json!(name), &json!(1), &json!("Synced"), &json!("Warning"))
        );
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        // A repeat: its count, with a merge patch.
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(
            (req.method(), req.uri().path()),
            (
                &Method::PATCH,
                format!("/api/v1/namespaces/test/events/{name}").as_str()
            )
        );
        let patch: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(patch["count"], 2);
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        handle
    });
    let text = "Halt advancement: the webhook refused";
    recorder
        .publish(&object, true, text, events::Repeat::Count)
        .await
        .unwrap();
    recorder
        .publish(&object, true, text, events::Repeat::Count)
        .await
        .unwrap();
    let mut handle = server.await.unwrap();
    // A retry tells it again: no request at all.
    recorder
        .publish(&object, true, text, events::Repeat::Skip)
        .await
        .unwrap();
    drop(recorder);
    assert!(
        handle.next_request().await.is_none(),
        "a retry patched the Event"
    );
}
