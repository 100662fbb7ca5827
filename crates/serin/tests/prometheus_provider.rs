//! The Prometheus provider against a recording HTTP server on loopback: the query, the auth
//! header (Bearer token or Basic) and custom headers arrive as Flagger sends them, and answers map
//! to values, "no values" and errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serin::metrics::QueryOutcome;
use serin::metrics::prometheus::{Prometheus, ProviderConfig};

const JSON: [(&str, &str); 1] = [("content-type", "application/json")];

/// Headers and query of one request.
type Request = (BTreeMap<String, String>, String);

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Request>>>);

async fn query(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Query(params): Query<BTreeMap<String, String>>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let h = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let q = params.get("query").cloned().unwrap_or_default();
    seen.0.lock().unwrap().push((h, q.clone()));
    let body = match q.as_str() {
        "up" => {
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]},{"metric":{},"value":[1,"99.5"]}]}}"#
        }
        "empty" => r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
        "nan" => r#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                JSON,
                r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.into(),
            );
        }
    };
    (StatusCode::OK, JSON, body.into())
}

async fn server() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/api/v1/query", get(query))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn token_headers_and_results_follow_flagger() {
    let (url, seen) = server().await;
    let p = Prometheus::new(&ProviderConfig {
        address: format!("{url}/"),
        headers: BTreeMap::from([("X-Scope-OrgID".to_string(), vec!["team-a".to_string()])]),
        bearer_token: Some("s3cret\n".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        p.query("up").await,
        QueryOutcome::Value(99.5),
        "the last sample wins"
    );
    assert_eq!(p.query("empty").await, QueryOutcome::NoValues);
    assert_eq!(p.query("nan").await, QueryOutcome::NoValues);
    match p.query("sum(").await {
        QueryOutcome::Error(e) => assert!(e.starts_with("bad_data"), "{e}"),
        other => panic!("{other:?}"),
    }
    let seen = seen.0.lock().unwrap();
    let (headers, q) = &seen[0];
    assert_eq!(q, "up");
    assert_eq!(
        headers.get("authorization").map(String::as_str),
        Some("Bearer s3cret")
    );
    assert_eq!(
        headers.get("x-scope-orgid").map(String::as_str),
        Some("team-a")
    );
}

#[tokio::test]
async fn basic_auth() {
    let (url, seen) = server().await;
    let p = Prometheus::new(&ProviderConfig {
        address: url,
        basic_auth: Some(("user".into(), "pass".into())),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(p.query("up").await, QueryOutcome::Value(99.5));
    let seen = seen.0.lock().unwrap();
    assert_eq!(
        seen[0].0.get("authorization").map(String::as_str),
        Some("Basic dXNlcjpwYXNz")
    );
}
