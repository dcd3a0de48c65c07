//! The edge: what every answer gets (contract §6), in one layer: the request
//! id and span, the head size limit, CORS, security headers, metrics and the
//! one log line per request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::{ApiError, ErrorDetail};
use crate::metrics::Metrics;
use crate::request_id::{RequestId, X_REQUEST_ID};

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

/// Everything every answer gets, in one layer (one boxed future per request
/// rather than four): the request id and span, the head size limit, CORS,
/// the security headers, the metrics and the one log line.
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
        let mut response = if head_len(&req) > edge.max_head_bytes {
            ApiError::HeadTooLarge.into_response()
        } else {
            next.run(req).instrument(span.clone()).await
        };
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
    let detail = response.extensions().get::<ErrorDetail>();
    let error = detail.map(|d| d.text.as_str());
    let upstream = detail.and_then(|d| d.upstream);
    span.in_scope(|| {
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
            HeaderValue::from_static("x-request-id, retry-after, www-authenticate"),
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
