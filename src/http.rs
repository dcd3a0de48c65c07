//! HTTP behaviour shared by every route (contract §6): JSON bodies, CORS,
//! security headers, request ids and the one log line per request, in one
//! `edge` layer.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tracing::Instrument;

use crate::error::{ApiError, ErrorDetail};
use crate::metrics::Metrics;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// A JSON body: built here, or received from the BDD service and passed on untouched.
pub enum JsonBody {
    /// A value to serialise.
    Value(Value),
    /// Bytes that already are JSON.
    Raw(Bytes),
}

impl From<Value> for JsonBody {
    fn from(v: Value) -> Self {
        Self::Value(v)
    }
}

impl From<Bytes> for JsonBody {
    fn from(b: Bytes) -> Self {
        Self::Raw(b)
    }
}

/// A response with a JSON body and `application/json; charset=utf-8`.
pub fn json_response(status: StatusCode, body: impl Into<JsonBody>) -> Response {
    let bytes = match body.into() {
        JsonBody::Raw(bytes) => bytes,
        // Serialising a `Value` cannot fail: its map keys are strings.
        JsonBody::Value(value) => Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, JSON_UTF8);
    response
}

/// The request id of the request being served, for upstream calls.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// A caller's id is kept when it is 1 to 128 visible ASCII characters
    /// (no spaces): any tracing id fits, and it stays one token in logs and headers.
    fn from_header(value: &HeaderValue) -> Option<Self> {
        let s = value.to_str().ok()?;
        let kept = (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        kept.then(|| Self(s.into()))
    }

    /// A random (v4) UUID from the thread's RNG: no system call per request.
    pub fn generate() -> Self {
        let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        Self(uuid.hyphenated().to_string().into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the edge layer needs: metrics to count in, origins to allow.
#[derive(Clone)]
pub struct Edge {
    /// This app's metrics.
    pub metrics: Metrics,
    /// CORS origins.
    pub origins: AllowedOrigins,
}

/// Everything every answer gets, in one layer (one boxed future per request
/// rather than four): the request id and span, CORS, the JSON shape of the
/// router's 405, the security headers, the metrics and the one log line.
///
/// The span carries the request id and, once authenticated, the user id, so
/// every line logged while serving the request carries them too.
pub async fn edge(State(edge): State<Edge>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(RequestId::from_header)
        .unwrap_or_else(RequestId::generate);
    req.extensions_mut().insert(request_id.clone());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let origin = edge.origins.allowed(req.headers());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id.as_str(),
        method = %method,
        path = %req.uri().path(),
        user_id = tracing::field::Empty,
    );

    let preflight = method == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        preflight_response(origin.as_ref(), req.headers())
    } else {
        let response = next.run(req).instrument(span.clone()).await;
        let mut response = json_405(response);
        cors_headers(response.headers_mut(), origin);
        response
    };

    let headers = response.headers_mut();
    for (name, value) in &SECURITY_HEADERS {
        // A route may set its own (the docs page needs its inline script).
        if let header::Entry::Vacant(slot) = headers.entry(name) {
            slot.insert(value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(request_id.as_str()) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }

    let latency = started.elapsed();
    // Microsecond precision, printed as milliseconds.
    let latency_ms = latency.as_micros() as f64 / 1000.0;
    let status = response.status().as_u16();
    edge.metrics.request(
        route.as_deref().unwrap_or("unmatched"),
        &method,
        status,
        latency,
    );
    let error = response
        .extensions()
        .get::<ErrorDetail>()
        .map(|d| d.0.as_str());
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, latency_ms, error, "request failed");
        } else {
            tracing::info!(status, latency_ms, error, "request served");
        }
    });
    response
}

/// The router answers 405 with an empty body: give it the contract's JSON shape.
fn json_405(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let (parts, _) = response.into_parts();
    let mut json = ApiError::MethodNotAllowed.into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        json.headers_mut().insert(header::ALLOW, allow.clone());
    }
    json
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
            HeaderValue::from_static("x-request-id, retry-after"),
        );
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate))
    }
}
