//! Extractors: what a handler receives, already checked, with rejections in
//! the contract's error shape.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::AuthError;
use crate::domain::{msg, FieldError, ImageId, Location, UserId};
use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::state::{AppState, UploadSlot};

/// The signed-in user: extracting it verifies the bearer token.
#[derive(Debug, Clone)]
pub struct AuthUser(pub UserId);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?;
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        let user = state.verifier.verify(token, &request_id).await?;
        tracing::Span::current().record("user_id", user.as_str());
        Ok(Self(user))
    }
}

/// The caller of a protected route, in the two steps every such route takes
/// before anything else: authenticated ([`AuthUser`]), then admitted by the
/// per-user rate limit.
#[derive(Debug, Clone)]
pub struct Caller(pub UserId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
        if let Some(limiter) = &state.rate_limiter {
            limiter.check(&user)?;
        }
        Ok(Self(user))
    }
}

/// The bearer token of a request; any scheme case, at least one character.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// A JSON request body as bytes: `415` without a JSON content type, `413`
/// over the body limit, `408` when it does not arrive in time.
pub struct JsonBytes(pub Bytes);

impl FromRequest<AppState> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let read = Bytes::from_request(req, state);
        let bytes = tokio::time::timeout(state.config.body_read_timeout, read)
            .await
            .map_err(|_| ApiError::BodyTimeout("body not received in time"))?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::InvalidJson(rejection.body_text())
                }
            })?;
        Ok(Self(bytes))
    }
}

/// A JSON body parsed into `T`; `400 JSON invalide` when it does not parse.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| ApiError::InvalidJson(e.to_string()))
    }
}

/// `application/json` or any `application/*+json`, parameters allowed.
fn is_json(content_type: Option<&axum::http::HeaderValue>) -> bool {
    let Some(essence) = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
    else {
        return false;
    };
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The `:id` path parameter, checked; the handler decides when to report a
/// failure, so it can be listed with the body's own failures.
pub struct IdParam(pub Result<ImageId, FieldError>);

impl<S: Send + Sync> FromRequestParts<S> for IdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => Ok(Self(ImageId::parse(&raw))),
            // Not UTF-8 once percent-decoded: report the segment as received.
            Err(_) => {
                let raw = parts
                    .uri
                    .path()
                    .strip_prefix("/api/images/")
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or_default();
                Ok(Self(Err(FieldError::new(
                    Location::Params,
                    "id",
                    Some(Value::String(raw.to_owned())),
                    msg::ID,
                ))))
            }
        }
    }
}

/// A create's JSON body, read once an upload slot is held.
///
/// When no slot frees in time the body is read and discarded (bounded by the
/// body limit and read timeout, never held) before the `503`: a client still
/// sending its image then reads a clean answer instead of a reset connection.
pub struct UploadBody {
    /// The slot, to hold until the upload is done.
    pub slot: UploadSlot,
    /// The body.
    pub bytes: Bytes,
}

impl FromRequest<AppState> for UploadBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let wait = state.upload_slots.acquire(state.config.upload_slot_wait);
        match wait.await {
            Some(slot) => {
                let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
                Ok(Self { slot, bytes })
            }
            None => {
                let drain = discard(req.into_body(), state.config.max_body_bytes);
                let _ = tokio::time::timeout(state.config.body_read_timeout, drain).await;
                Err(ApiError::Overloaded)
            }
        }
    }
}

/// Reads and drops up to `limit` bytes of a body.
async fn discard(body: axum::body::Body, limit: usize) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen > limit {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        let ok = |s: &str| is_json(Some(&HeaderValue::from_str(s).unwrap()));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!is_json(None));
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_required() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(&headers("bEaReR  abc ")), Ok("abc"));
        for bad in ["Bearer", "Bearer ", "Basic abc", "abc", ""] {
            assert_eq!(
                bearer_token(&headers(bad)),
                Err(AuthError::Missing),
                "{bad}"
            );
        }
        assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthError::Missing));
    }
}
