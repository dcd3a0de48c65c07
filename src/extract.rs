//! Extractors: what a handler receives, already checked, with rejections in
//! the contract's error shape.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts, HeaderMap};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::AuthError;
use crate::domain::{msg, FieldError, ImageId, Location, UserId};
use crate::error::ApiError;
use crate::idempotency::{IdempotencyKey, IDEMPOTENCY_KEY};
use crate::request_id::RequestId;
use crate::state::{AppState, SlotRefusal, UploadSlot};

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

/// How a request body must arrive (contract §9): at most `limit` bytes,
/// announced or not; on average at least `min_rate` bytes a second once
/// `grace` has passed; whole within `total`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    limit: usize,
    min_rate: u64,
    grace: Duration,
    total: Duration,
}

impl Pace {
    fn of(state: &AppState, limit: usize) -> Self {
        Self {
            limit: limit.min(state.config.max_body_bytes),
            min_rate: state.config.min_body_rate,
            grace: state.config.body_grace,
            total: state.config.body_read_timeout,
        }
    }

    /// `413` at once when the announced length is over the limit: before
    /// the body is polled, so no `100 Continue` is ever sent for it.
    fn admit(&self, headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
        match content_length(headers) {
            Some(n) if n > self.limit as u64 => Err(ApiError::PayloadTooLarge),
            announced => Ok(announced.map(|n| n as usize)),
        }
    }

    /// Reads the whole body into one buffer sized from `Content-Length`, so
    /// memory is the body once, never a list of chunks plus their copy.
    async fn read(&self, body: Body, announced: Option<usize>) -> Result<Bytes, ApiError> {
        let mut buffer = BytesMut::with_capacity(announced.unwrap_or(0).min(self.limit));
        self.consume(body, |data| buffer.extend_from_slice(&data))
            .await?;
        Ok(buffer.freeze())
    }

    /// Reads and drops what the client still sends (paced like a read), so
    /// it can read the answer instead of a reset connection; not when it
    /// waits for `100 Continue` before sending.
    async fn discard(&self, req: Request) {
        if !expects_continue(req.headers()) {
            let _ = self.consume(req.into_body(), drop).await;
        }
    }

    /// Hands each chunk to `sink` while the body keeps its pace.
    async fn consume(&self, body: Body, mut sink: impl FnMut(Bytes)) -> Result<(), ApiError> {
        let mut body = body;
        let started = Instant::now();
        let hard_stop = started + self.total;
        let mut received = 0usize;
        loop {
            let deadline = hard_stop.min(started + self.rate_allows(received));
            let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
                Err(_) if deadline == hard_stop => {
                    return Err(ApiError::BodyTimeout("body not received in time"))
                }
                Err(_) => return Err(ApiError::BodyTimeout("body slower than the minimum rate")),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    return Err(ApiError::InvalidJson(format!("body unreadable: {e}")))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                received += data.len();
                if received > self.limit {
                    return Err(ApiError::PayloadTooLarge);
                }
                sink(data);
            }
        }
    }

    /// How long since the start `received` bytes keep the average rate at
    /// or above the minimum (never less than the grace).
    fn rate_allows(&self, received: usize) -> Duration {
        let at_rate = Duration::from_secs_f64(received as f64 / self.min_rate.max(1) as f64);
        self.grace.max(at_rate)
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

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
        let pace = Pace::of(state, limit);
        let announced = pace.admit(req.headers())?;
        pace.read(req.into_body(), announced).await.map(Self)
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

/// A create's JSON body, read once an upload slot is held (contract §9).
pub struct UploadBody {
    /// The slot, to hold until the upload is done.
    pub slot: UploadSlot,
    /// The body.
    pub bytes: Bytes,
}

impl UploadBody {
    /// Admits and reads `user`'s create body, in order: `415` without a JSON
    /// content type; `413` for an announced length over the limit; `429`
    /// beyond the user's share of slots; `503` when no slot frees within the
    /// wait; then the body, paced (`408` when too slow, `413` when too long).
    ///
    /// A refused body is read and dropped (paced, never held) so that a
    /// client still sending it reads a clean answer.
    pub async fn admit(state: &AppState, user: &UserId, req: Request) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let pace = Pace::of(state, state.config.max_body_bytes);
        let announced = pace.admit(req.headers())?;
        let slot = match state
            .upload_slots
            .acquire(user, state.config.upload_slot_wait)
            .await
        {
            Ok(slot) => slot,
            Err(refusal) => {
                pace.discard(req).await;
                return Err(match refusal {
                    SlotRefusal::UserShare => ApiError::TooManyUploads,
                    SlotRefusal::Busy => ApiError::Overloaded,
                });
            }
        };
        let bytes = pace.read(req.into_body(), announced).await?;
        Ok(Self { slot, bytes })
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
