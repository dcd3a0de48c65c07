//! The API description (`/api/openapi.json`) and its human page (`/api/docs`).
//!
//! Both are compiled into the binary: the page works with no internet access.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::response::json_response;

/// The OpenAPI 3.1 document of the contract, kept at the repository's top.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");
const DOCS_HTML: &str = include_str!("../../docs/api.html");

/// `GET /api/openapi.json`.
pub async fn openapi() -> Response {
    json_response(StatusCode::OK, Bytes::from_static(OPENAPI_JSON.as_bytes()))
}

/// `GET /api/docs`: a self-contained page rendering the document.
pub async fn page() -> Response {
    let mut response = DOCS_HTML.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page's own inline script and style, and fetching the document from here.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}
