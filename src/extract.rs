//! Extractors: what a handler receives, already checked, with rejections in
//! the contract's error shape.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts, HeaderMap};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::AuthError;
use crate::body::PacedBody;
use crate::domain::{msg, FieldError, ImageId, Location, UserId};
use crate::error::ApiError;
use crate::idempotency::{IdempotencyKey, IDEMPOTENCY_KEY};
use crate::request_scope;
use crate::state::AppState;

/// The signed-in user: extracting it verifies the bearer token.
#[derive(Debug, Clone)]
pub struct AuthUser(pub UserId);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?;
        let request_id = request_scope::request_id();
        let user = state.verifier.verify(token, &request_id).await?;
        request_scope::set_user(user.as_str());
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
            limiter.check(&user).await?;
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

/// Largest JSON body of a route that takes a few fields (a status change).
pub const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// The create's `Idempotency-Key`, if any; `400` when it is not 1 to 255
/// visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => IdempotencyKey::parse(value.as_bytes())
            .map(Some)
            .ok_or(ApiError::InvalidIdempotencyKey),
    }
}

/// A JSON request body as bytes: `415` without a JSON content type, `413`
/// over the limit (announced or read), `408` when it does not arrive in
/// time or too slowly.
pub struct JsonBytes(pub Bytes);

impl JsonBytes {
    /// Reads a JSON body of at most `limit` bytes (and `MAX_BODY_BYTES`).
    pub async fn read(req: Request, state: &AppState, limit: usize) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        PacedBody::admit(req, state, limit)?
            .collect()
            .await
            .map(Self)
    }
}

/// A small JSON body (at most `SMALL_BODY_LIMIT`) parsed into `T`; `400
/// JSON invalide` when it does not parse.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let JsonBytes(bytes) = JsonBytes::read(req, state, SMALL_BODY_LIMIT).await?;
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

/// A create's request, admitted before anything is read or uploaded: its
/// `Idempotency-Key` (`400` when malformed), a JSON content type (`415`),
/// its announced length (`413`). The body itself is read by the create.
pub struct CreateRequest {
    /// The `Idempotency-Key`, if any.
    pub key: Option<IdempotencyKey>,
    /// The body, not read yet.
    pub body: PacedBody,
}

impl CreateRequest {
    /// Admits `req`.
    pub fn admit(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let key = idempotency_key(req.headers())?;
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = PacedBody::admit(req, state, state.config.max_body_bytes)?;
        Ok(Self { key, body })
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
