//! A layer under the controller's Kubernetes client: it counts failed requests by verb and
//! resource (`serin_api_errors_total`), and refuses every write while the leader [`WriteGate`]
//! is closed, so that a process that lost the Lease cannot write, whatever its tasks are doing.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{Method, Request, Response, StatusCode, Uri};
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::{BoxError, Layer, Service};

use super::leader::WriteGate;
use crate::telemetry::ops::ApiErrorLabels;

/// Returned instead of sending a write while this process does not hold the Lease.
#[derive(Debug, thiserror::Error)]
#[error("write refused: this serin process does not hold the leader Lease")]
pub struct NotLeader;

#[derive(Clone)]
pub struct ApiLayer {
    errors: Family<ApiErrorLabels, Counter>,
    gate: Arc<WriteGate>,
}

impl ApiLayer {
    pub fn new(errors: Family<ApiErrorLabels, Counter>, gate: Arc<WriteGate>) -> Self {
        ApiLayer { errors, gate }
    }
}

impl<S> Layer<S> for ApiLayer {
    type Service = ApiService<S>;
    fn layer(&self, inner: S) -> ApiService<S> {
        ApiService {
            inner,
            errors: self.errors.clone(),
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ApiService<S> {
    inner: S,
    errors: Family<ApiErrorLabels, Counter>,
    gate: Arc<WriteGate>,
}

impl<S, B, RB> Service<Request<B>> for ApiService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<RB>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let labels = classify(req.method(), req.uri());
        if is_write(req.method()) && !self.gate.allows_writes() {
            return Box::pin(async { Err(Box::new(NotLeader) as BoxError) });
        }
        let fut = self.inner.call(req);
        let errors = self.errors.clone();
        Box::pin(async move {
            match fut.await {
                Ok(resp) => {
                    if is_error(resp.status(), &labels.verb) {
                        errors.get_or_create(&labels).inc();
                    }
                    Ok(resp)
                }
                Err(e) => {
                    errors.get_or_create(&labels).inc();
                    Err(e.into())
                }
            }
        })
    }
}

fn is_write(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A 404 answers a get or delete ("it is not there"), which serin expects often (`get_opt`).
fn is_error(status: StatusCode, verb: &str) -> bool {
    status.as_u16() >= 400 && !(status == StatusCode::NOT_FOUND && matches!(verb, "get" | "delete"))
}

/// Verb and plural resource of a request, as the API server's audit log names them.
pub fn classify(method: &Method, uri: &Uri) -> ApiErrorLabels {
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = match segs.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[],
    };
    let (resource, named) = match rest {
        ["namespaces", _ns, resource, more @ ..] => (*resource, !more.is_empty()),
        [resource, more @ ..] => (*resource, !more.is_empty()),
        [] => ("discovery", false),
    };
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named || resource == "discovery" => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    ApiErrorLabels {
        verb: verb.into(),
        resource: resource.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(m: Method, uri: &str) -> (String, String) {
        let l = classify(&m, &uri.parse().unwrap());
        (l.verb, l.resource)
    }

    #[test]
    fn verbs_and_resources_are_named_like_the_audit_log() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        for (m, uri, want) in [
            (
                Method::GET,
                "/apis/apps/v1/namespaces/t/deployments/podinfo",
                s("get", "deployments"),
            ),
            (
                Method::GET,
                "/apis/apps/v1/deployments?watch=true&resourceVersion=1",
                s("watch", "deployments"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/t/services",
                s("list", "services"),
            ),
            (
                Method::PATCH,
                "/apis/flagger.app/v1beta1/namespaces/t/canaries/podinfo/status",
                s("patch", "canaries"),
            ),
            (
                Method::POST,
                "/api/v1/namespaces/t/events",
                s("create", "events"),
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/t/leases/serin-leader",
                s("update", "leases"),
            ),
            (
                Method::DELETE,
                "/apis/autoscaling/v2/namespaces/t/horizontalpodautoscalers/x",
                s("delete", "horizontalpodautoscalers"),
            ),
            (Method::GET, "/api/v1/namespaces/t", s("get", "namespaces")),
            (
                Method::GET,
                "/apis/flagger.app/v1beta1",
                s("get", "discovery"),
            ),
        ] {
            assert_eq!(labels(m, uri), want, "{uri}");
        }
    }

    #[test]
    fn a_not_found_get_is_an_answer_not_an_error() {
        assert!(!is_error(StatusCode::NOT_FOUND, "get"));
        assert!(is_error(StatusCode::NOT_FOUND, "patch"));
        assert!(is_error(StatusCode::CONFLICT, "update"));
        assert!(is_error(StatusCode::FORBIDDEN, "list"));
        assert!(!is_error(StatusCode::OK, "list"));
    }

    /// A fake API server that answers every request with `status` and counts what reached it.
    #[derive(Clone)]
    struct Fake {
        status: StatusCode,
        seen: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Service<Request<()>> for Fake {
        type Response = Response<()>;
        type Error = BoxError;
        type Future = BoxFuture<'static, Result<Response<()>, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut r = Response::new(());
            *r.status_mut() = self.status;
            Box::pin(async move { Ok(r) })
        }
    }

    fn req(m: Method, uri: &str) -> Request<()> {
        Request::builder().method(m).uri(uri).body(()).unwrap()
    }

    #[tokio::test]
    async fn a_closed_gate_refuses_writes_before_they_leave_and_lets_reads_through() {
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let errors = Family::<ApiErrorLabels, Counter>::default();
        let layer = ApiLayer::new(errors.clone(), WriteGate::fenced());
        let mut svc = layer.layer(Fake {
            status: StatusCode::OK,
            seen: seen.clone(),
        });
        let patch = req(
            Method::PATCH,
            "/apis/flagger.app/v1beta1/namespaces/t/canaries/podinfo/status",
        );
        let err = svc.call(patch).await.unwrap_err();
        assert!(err.to_string().contains("does not hold the leader Lease"));
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
        svc.call(req(Method::GET, "/api/v1/namespaces/t/services"))
            .await
            .unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Without leader election writes pass.
        let mut open = ApiLayer::new(errors, WriteGate::open()).layer(Fake {
            status: StatusCode::OK,
            seen: seen.clone(),
        });
        open.call(req(Method::POST, "/api/v1/namespaces/t/events"))
            .await
            .unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_counted_by_verb_and_resource() {
        let errors = Family::<ApiErrorLabels, Counter>::default();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut svc = ApiLayer::new(errors.clone(), WriteGate::open()).layer(Fake {
            status: StatusCode::CONFLICT,
            seen,
        });
        for _ in 0..2 {
            svc.call(req(
                Method::PATCH,
                "/apis/apps/v1/namespaces/t/deployments/podinfo-primary",
            ))
            .await
            .unwrap();
        }
        let l = ApiErrorLabels {
            verb: "patch".into(),
            resource: "deployments".into(),
        };
        assert_eq!(errors.get_or_create(&l).get(), 2);
    }
}
