//! `ApiError`: every way a request can fail, mapped to HTTP in one place.
//!
//! Every status code and every French message a client can read is chosen
//! here, and bodies follow the contract's `{"success":false,"error":…}`
//! shape. Each boundary's error (auth, Storage, BDD, rate limit) converts
//! into `ApiError` by one `From`. Internal detail (an upstream's status,
//! reqwest's error, …) never reaches the client: it rides on the response as
//! an [`ErrorDetail`] extension and is written once, in the request's log line.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::clients::bdd::BddError;
use crate::clients::storage::StorageError;
use crate::domain::FieldError;
use crate::ratelimit::OverLimit;
use crate::response::json_response;

/// Longest upstream text quoted to a client.
const MAX_QUOTED_CHARS: usize = 200;

/// Detail of a failure, for the request log line only.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    /// What happened, for the operator.
    pub text: String,
    /// The service behind this one that failed, if one did.
    pub upstream: Option<&'static str>,
    /// A security event (an upstream answered another user's record): logged as an error.
    pub alarm: bool,
}

/// Which Storage operation failed, for the client-facing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageOp {
    /// Uploading a new object.
    Upload,
    /// Removing an object.
    Removal,
}

impl StorageOp {
    /// The noun in "Erreur lors de …".
    fn noun(self) -> &'static str {
        match self {
            Self::Upload => "l'upload",
            Self::Removal => "la suppression",
        }
    }
}

/// Every failure a handler or extractor can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No usable `Authorization: Bearer` header.
    #[error("missing bearer token")]
    MissingToken,
    /// The token failed verification.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// No signing keys could be obtained.
    #[error("signing keys unavailable: {0}")]
    AuthUnavailable(String),
    /// Input failed the contract's checks.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// Body is not JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// POST/PATCH without a JSON content type.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Body or decoded image over its limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// The request head is over its limit.
    #[error("request head too large")]
    HeadTooLarge,
    /// The body did not arrive in time, or too slowly.
    #[error("request body timed out: {0}")]
    BodyTimeout(&'static str),
    /// Every upload slot is taken: back-pressure instead of unbounded memory.
    #[error("upload slots exhausted")]
    Overloaded,
    /// The user already holds their share of the upload slots.
    #[error("user holds their share of upload slots")]
    TooManyUploads,
    /// An `Idempotency-Key` that is not 1 to 255 visible ASCII characters.
    #[error("invalid idempotency key")]
    InvalidIdempotencyKey,
    /// A request with this `Idempotency-Key` is still running.
    #[error("a request with this idempotency key is running")]
    IdempotencyInFlight,
    /// The `Idempotency-Key` was used for another request body.
    #[error("idempotency key reused for another body")]
    IdempotencyKeyReused,
    /// The key store cannot be reached: a keyed create must not run.
    #[error("coordination store unavailable: {0}")]
    CoordinationUnavailable(String),
    /// No route for this path.
    #[error("route not found")]
    RouteNotFound,
    /// The path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Per-user rate limit hit.
    #[error("rate limited")]
    RateLimited {
        /// Seconds until a request will be accepted again.
        retry_after_secs: u64,
    },
    /// The BDD service failed, refused, or answered someone else's record.
    #[error("BDD service: {0}")]
    Bdd(#[from] BddError),
    /// Supabase Storage failed.
    #[error("storage {0:?}: {1}")]
    Storage(StorageOp, StorageError),
    /// Anything unexpected.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Self::MissingToken,
            AuthError::Unavailable { .. } => Self::AuthUnavailable(e.to_string()),
            other => Self::InvalidToken(other.to_string()),
        }
    }
}

impl From<OverLimit> for ApiError {
    fn from(e: OverLimit) -> Self {
        Self::RateLimited {
            retry_after_secs: e.retry_after_secs,
        }
    }
}

/// At most `MAX_QUOTED_CHARS` characters of an upstream's text.
fn quoted(text: &str) -> &str {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

impl ApiError {
    /// The HTTP status of this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Validation(_) | Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyUploads => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            Self::IdempotencyInFlight => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::CoordinationUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Bdd(e) => match e {
                BddError::Rejected { status, .. } => *status,
                BddError::NotOwned(_) => StatusCode::NOT_FOUND,
                BddError::Refused(_)
                | BddError::Unsupported
                | BddError::ServerError(_)
                | BddError::Failed(_) => StatusCode::BAD_GATEWAY,
                BddError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                BddError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            },
            Self::Storage(_, e) => match e {
                StorageError::Refused { .. }
                | StorageError::ServerError { .. }
                | StorageError::Failed(_) => StatusCode::BAD_GATEWAY,
                StorageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                StorageError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            },
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The client-facing message (French, as the old service).
    fn message(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            Self::MissingToken => "Token d'authentification manquant",
            Self::InvalidToken(_) => "Token d'authentification Clerk invalide",
            Self::AuthUnavailable(_) => "Service d'authentification indisponible",
            Self::Validation(_) => "Erreur de validation",
            Self::InvalidJson(_) => "JSON invalide",
            Self::UnsupportedMediaType => "Content-Type application/json requis",
            Self::PayloadTooLarge => "Image trop volumineuse",
            Self::HeadTooLarge => "En-têtes de requête trop volumineux",
            Self::BodyTimeout(_) => "Délai de réception de la requête dépassé",
            Self::Overloaded => "Service surchargé, réessayez dans un instant",
            Self::TooManyUploads => "Trop de téléversements simultanés",
            Self::InvalidIdempotencyKey => "Idempotency-Key invalide",
            Self::IdempotencyInFlight => "Requête déjà en cours de traitement",
            Self::IdempotencyKeyReused => "Idempotency-Key déjà utilisée pour une autre requête",
            Self::CoordinationUnavailable(_) => "Service de coordination indisponible",
            Self::RouteNotFound => "Route non trouvée",
            Self::MethodNotAllowed => "Méthode non autorisée",
            Self::RateLimited { .. } => "Trop de requêtes, réessayez plus tard",
            Self::Bdd(e) => match e {
                BddError::Rejected {
                    error: Some(error), ..
                } if error.chars().count() <= MAX_QUOTED_CHARS => return Cow::Borrowed(error),
                BddError::NotOwned(_) => "Image non trouvée",
                BddError::Unsupported => "Service BDD: opération non supportée",
                BddError::Unavailable(_) => "Service BDD indisponible",
                BddError::Timeout => "Service BDD: délai dépassé",
                BddError::Rejected { .. }
                | BddError::Refused(_)
                | BddError::ServerError(_)
                | BddError::Failed(_) => "Erreur du service BDD",
            },
            Self::Storage(op, e) => match e {
                StorageError::Refused { message, .. } => {
                    return Cow::Owned(format!("Erreur lors de {}: {}", op.noun(), quoted(message)))
                }
                StorageError::ServerError { .. } | StorageError::Failed(_) => {
                    return Cow::Owned(format!(
                        "Erreur lors de {}: service de stockage en erreur",
                        op.noun()
                    ))
                }
                StorageError::Unavailable(_) => "Service de stockage indisponible",
                StorageError::Timeout => "Service de stockage: délai dépassé",
            },
            Self::Internal(_) => "Erreur interne du serveur",
        })
    }

    /// Whether the detail is worth the operator's attention on a non-5xx answer.
    fn detail_worth_logging(&self) -> bool {
        matches!(
            self,
            Self::InvalidToken(_) | Self::Bdd(_) | Self::Storage(..)
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::Validation(details) => {
                json!({"success": false, "error": self.message(), "details": details})
            }
            _ => json!({"success": false, "error": self.message()}),
        };
        let mut response = json_response(status, body);
        let headers = response.headers_mut();
        match &self {
            Self::MissingToken => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Overloaded | Self::TooManyUploads | Self::IdempotencyInFlight => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::HeadTooLarge => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        if status.is_server_error() || self.detail_worth_logging() {
            let upstream = match &self {
                Self::Bdd(_) => Some("bdd"),
                Self::Storage(..) => Some("storage"),
                Self::AuthUnavailable(_) => Some("clerk"),
                Self::CoordinationUnavailable(_) => Some("redis"),
                _ => None,
            };
            response.extensions_mut().insert(ErrorDetail {
                text: self.to_string(),
                upstream,
                alarm: matches!(self, Self::Bdd(BddError::NotOwned(_))),
            });
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_text_is_quoted_to_200_characters_at_most() {
        let long = "é".repeat(300);
        assert_eq!(quoted(&long).chars().count(), 200);
        assert_eq!(quoted("short"), "short");
    }

    #[test]
    fn a_bdd_error_text_over_200_characters_is_replaced() {
        let e = ApiError::Bdd(BddError::Rejected {
            status: StatusCode::BAD_REQUEST,
            error: Some("x".repeat(201)),
        });
        assert_eq!(e.message(), "Erreur du service BDD");
        let e = ApiError::Bdd(BddError::Rejected {
            status: StatusCode::CONFLICT,
            error: Some("Déjà là".into()),
        });
        assert_eq!(e.message(), "Déjà là");
        assert_eq!(e.status(), StatusCode::CONFLICT);
    }
}
