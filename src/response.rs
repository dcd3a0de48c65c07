//! JSON answers: every body the service writes is built here.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

const JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// A JSON body: built here, or bytes that already are JSON (an upstream's
/// answer passed on untouched, a remembered answer replayed).
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
    // Room for what the edge adds (security headers, request id, CORS), so
    // the map is not grown and rehashed on every answer.
    let headers = response.headers_mut();
    *headers = HeaderMap::with_capacity(16);
    headers.insert(header::CONTENT_TYPE, JSON_UTF8);
    response
}
