//! The edge: what every answer gets (contract §6), in one layer: the request
//! id and span, the head size limit, CORS, security headers, metrics and the
//! one log line per request.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::task::futures::TaskLocalFuture;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorDetail};
use crate::metrics::Metrics;
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::request_scope::RequestScope;

/// What the edge layer needs: metrics to count in, origins to allow.
#[derive(Clone)]
pub struct Edge {
    /// This app's metrics.
    pub metrics: Metrics,
    /// CORS origins.
    pub origins: AllowedOrigins,
    /// Largest request head answered (`431` beyond).
    pub max_head_bytes: usize,
}

impl<S> tower::Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService {
            inner,
            edge: Arc::new(self.clone()),
        }
    }
}

/// Everything every answer gets, in one layer: the request id and span, the
/// head size limit, CORS, the security headers, the metrics and the one log
/// line. A concrete future, not `from_fn`'s boxed one: this runs on every
/// request.
///
/// The request's [scope](RequestScope) carries its id and, once
/// authenticated, its user, so every line logged while serving it carries them.
#[derive(Clone)]
pub struct EdgeService<S> {
    inner: S,
    /// Shared by its requests: one reference count each, not one per field.
    edge: Arc<Edge>,
}

/// What the edge keeps about a request until its answer.
struct Served {
    started: Instant,
    scope: Arc<RequestScope>,
    route: Option<MatchedPath>,
    origin: Option<HeaderValue>,
}

impl<S> tower::Service<Request> for EdgeService<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(RequestId::from_header)
            .unwrap_or_else(RequestId::generate);
        let route = req.extensions().get::<MatchedPath>().cloned();
        let origin = self.edge.origins.allowed(req.headers());
        let scope = RequestScope::new(request_id, req.method().clone(), req.uri().clone());
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let early = if preflight {
            Some(preflight_response(origin.as_ref(), req.headers()))
        } else if head_len(&req) > self.edge.max_head_bytes {
            let mut response = ApiError::HeadTooLarge.into_response();
            cors_headers(response.headers_mut(), origin.clone());
            Some(response)
        } else {
            None
        };
        let (inner, early) = match early {
            None => {
                // A bug must still answer the contract's 500, never drop the connection.
                match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
                    Ok(future) => (Some(scope.clone().wrap(future)), None),
                    Err(_) => (None, Some(panicked())),
                }
            }
            Some(early) => (None, Some(early)),
        };
        EdgeFuture {
            inner,
            early,
            served: Some(Served {
                started,
                scope,
                route,
                origin,
            }),
            edge: self.edge.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being served inside its scope, finished by [`finish`].
    pub struct EdgeFuture<F> {
        #[pin]
        inner: Option<TaskLocalFuture<Arc<RequestScope>, F>>,
        early: Option<Response>,
        served: Option<Served>,
        edge: Arc<Edge>,
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = match this.inner.as_mut().as_pin_mut() {
            Some(inner) => {
                let mut response = match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(Poll::Ready(Ok(response))) => response,
                    Ok(Poll::Ready(Err(never))) => match never {},
                    Ok(Poll::Pending) => return Poll::Pending,
                    Err(_) => {
                        // Never polled again: what it held goes now.
                        this.inner.set(None);
                        panicked()
                    }
                };
                if let Some(served) = this.served.as_ref() {
                    cors_headers(response.headers_mut(), served.origin.clone());
                }
                response
            }
            None => match this.early.take() {
                Some(response) => response,
                None => ApiError::Internal("edge polled after its answer".into()).into_response(),
            },
        };
        Poll::Ready(Ok(match this.served.take() {
            Some(served) => finish(this.edge, served, response),
            None => response,
        }))
    }
}

/// The contract's 500 for a handler that panicked (the panic hook has
/// already printed where).
fn panicked() -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}

/// The security headers, the request id, the metrics and the log line.
fn finish(edge: &Edge, served: Served, mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.reserve(SECURITY_HEADERS.len() + 2);
    for (name, value) in &SECURITY_HEADERS {
        // A route may set its own (the docs page needs its inline script).
        if let header::Entry::Vacant(slot) = headers.entry(name) {
            slot.insert(value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(served.scope.request_id.as_str()) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }

    let latency = served.started.elapsed();
    // Microsecond precision, printed as milliseconds.
    let latency_ms = latency.as_micros() as f64 / 1000.0;
    let status = response.status().as_u16();
    edge.metrics.request(
        served
            .route
            .as_ref()
            .map_or("unmatched", MatchedPath::as_str),
        &served.scope.method,
        status,
        latency,
    );
    let detail = response.extensions().get::<ErrorDetail>();
    let error = detail.map(|d| d.text.as_str());
    let upstream = detail.and_then(|d| d.upstream);
    served.scope.enter(|| {
        if detail.is_some_and(|d| d.alarm) {
            tracing::error!(
                status,
                latency_ms,
                error,
                upstream,
                "request refused: upstream answered another user's data"
            );
        } else if status >= 500 {
            tracing::warn!(status, latency_ms, error, upstream, "request failed");
        } else {
            tracing::info!(status, latency_ms, error, upstream, "request served");
        }
    });
    response
}

/// The old service's helmet set, adapted to a JSON API. Built once: parsing
/// the names per answer showed in profiles.
static SECURITY_HEADERS: [(HeaderName, HeaderValue); 9] = {
    const fn h(name: &'static str, value: &'static str) -> (HeaderName, HeaderValue) {
        (
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    }
    [
        h("x-content-type-options", "nosniff"),
        h("x-frame-options", "SAMEORIGIN"),
        h("referrer-policy", "no-referrer"),
        h(
            "strict-transport-security",
            "max-age=15552000; includeSubDomains",
        ),
        h("cross-origin-opener-policy", "same-origin"),
        h("cross-origin-resource-policy", "same-origin"),
        h("x-dns-prefetch-control", "off"),
        h("x-permitted-cross-domain-policies", "none"),
        h(
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ]
};

/// Origins allowed by CORS.
///
/// CORS is hand-rolled rather than tower-http's `CorsLayer` because the
/// contract wants preflights answered `204` and no CORS header at all for
/// other origins, where `CorsLayer` answers `200` and always sends
/// `allow-credentials`.
#[derive(Debug, Clone)]
pub struct AllowedOrigins(Arc<[HeaderValue]>);

impl AllowedOrigins {
    /// From the configured origins (already validated).
    pub fn new(origins: &[String]) -> Self {
        Self(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        )
    }

    fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.0.iter().any(|o| o == origin).then(|| origin.clone())
    }
}

const ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS");

/// `204` to a preflight; CORS headers only for an allowed origin.
fn preflight_response(origin: Option<&HeaderValue>, request: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::VARY,
        HeaderValue::from_static(
            "origin, access-control-request-method, access-control-request-headers",
        ),
    );
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS);
        if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    response
}

/// CORS headers of an actual (non-preflight) answer.
fn cors_headers(headers: &mut HeaderMap, origin: Option<HeaderValue>) {
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "x-request-id, retry-after, www-authenticate, idempotent-replayed",
            ),
        );
    }
}

/// Bytes of the request head as sent: request line and header lines.
fn head_len(req: &Request) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, ServiceExt as _};

    fn edge() -> Edge {
        Edge {
            metrics: Metrics::new(),
            origins: AllowedOrigins::new(&[]),
            max_head_bytes: 16 * 1024,
        }
    }

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_handler_panicking_while_polled_answers_the_contract_500_with_every_header() {
        let service = edge().layer(tower::service_fn(|_: Request| async {
            if true {
                panic!("a bug");
            }
            Ok::<Response, std::convert::Infallible>(StatusCode::OK.into_response())
        }));
        let request = Request::builder()
            .uri("/api/images")
            .header("x-request-id", "req-panic")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-request-id"], "req-panic");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let body = body_of(response).await;
        assert_eq!(body["success"], false);
        assert_eq!(body["error"], "Erreur interne du serveur");
    }

    #[tokio::test]
    async fn a_service_panicking_when_called_answers_the_contract_500() {
        #[derive(Clone)]
        struct Broken;
        impl tower::Service<Request> for Broken {
            type Response = Response;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Response, std::convert::Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request) -> Self::Future {
                panic!("a bug before any future");
            }
        }
        let response = edge()
            .layer(Broken)
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(
            body_of(response).await["error"],
            "Erreur interne du serveur"
        );
    }
}
