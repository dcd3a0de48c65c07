//! What Supabase's API gateway adds in front of Storage: its CORS plugin with
//! default settings. Every answer carries `Access-Control-Allow-Origin: *`
//! (so a page on any origin can `fetch` an image, draw it on a canvas and
//! export the canvas), and preflights are answered by the gateway itself,
//! before Storage sees them (so they are not recorded, and faults, which
//! model Storage failing, do not apply to them).

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The gateway's default list of methods a preflight allows.
const ALLOWED_METHODS: &str = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT";

/// Answers preflights, and adds the allow-all origin to every other answer.
pub(crate) async fn cors(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let preflight = req.method() == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut resp = StatusCode::OK.into_response();
        let out = resp.headers_mut();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        // With no header list configured, the gateway allows what was asked.
        if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        return resp;
    }
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

/// The gateway's answer for a path no service is mounted on.
pub(crate) fn no_route() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        r#"{"message":"no Route matched with those values"}"#,
    )
        .into_response()
}
