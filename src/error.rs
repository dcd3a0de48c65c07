//! `ApiError`: every way a request can fail, mapped to HTTP in one place.
//!
//! Bodies follow the contract's `{"success":false,"error":…}` shape. Internal
//! detail (upstream status, reqwest error, …) never reaches the client: it is
//! attached to the response as an [`ErrorDetail`] extension and written once,
//! in the request's log line.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::clients::bdd::BddError;
use crate::clients::storage::{StorageError, StorageOp};
use crate::domain::FieldError;
use crate::http::json_response;

/// Detail of a failure, for the request log line only.
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

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
    /// The body did not arrive in time.
    #[error("request body timed out")]
    BodyTimeout,
    /// Every upload slot is taken: back-pressure instead of unbounded memory.
    #[error("upload slots exhausted")]
    Overloaded,
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
    /// The record belongs to someone else (answered as if absent).
    #[error("image owned by another user")]
    ImageNotFound,
    /// The BDD service failed.
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
            AuthError::Unavailable(detail) => Self::AuthUnavailable(detail),
            other => Self::InvalidToken(other.to_string()),
        }
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
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::RouteNotFound | Self::ImageNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Bdd(e) => match e {
                BddError::Rejected { status, .. } => *status,
                BddError::Unsupported | BddError::Failed(_) => StatusCode::BAD_GATEWAY,
                BddError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                BddError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            },
            Self::Storage(_, e) => match e {
                StorageError::Refused { .. } | StorageError::Failed(_) => StatusCode::BAD_GATEWAY,
                StorageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                StorageError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            },
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The client-facing message (French, as the old service).
    fn message(&self) -> String {
        match self {
            Self::MissingToken => "Token d'authentification manquant".into(),
            Self::InvalidToken(_) => "Token d'authentification Clerk invalide".into(),
            Self::AuthUnavailable(_) => "Service d'authentification indisponible".into(),
            Self::Validation(_) => "Erreur de validation".into(),
            Self::InvalidJson(_) => "JSON invalide".into(),
            Self::UnsupportedMediaType => "Content-Type application/json requis".into(),
            Self::PayloadTooLarge => "Image trop volumineuse".into(),
            Self::BodyTimeout => "Délai de réception de la requête dépassé".into(),
            Self::Overloaded => "Service surchargé, réessayez dans un instant".into(),
            Self::RouteNotFound => "Route non trouvée".into(),
            Self::MethodNotAllowed => "Méthode non autorisée".into(),
            Self::RateLimited { .. } => "Trop de requêtes, réessayez plus tard".into(),
            Self::ImageNotFound => "Image non trouvée".into(),
            Self::Bdd(e) => match e {
                BddError::Unsupported => "Service BDD: opération non supportée".into(),
                BddError::Unavailable(_) => "Service BDD indisponible".into(),
                BddError::Timeout => "Service BDD: délai dépassé".into(),
                BddError::Rejected { .. } | BddError::Failed(_) => "Erreur du service BDD".into(),
            },
            Self::Storage(op, e) => match e {
                StorageError::Refused { message, .. } | StorageError::Failed(message) => {
                    format!("Erreur lors de {}: {message}", op.noun())
                }
                StorageError::Unavailable(_) => "Service de stockage indisponible".into(),
                StorageError::Timeout => "Service de stockage: délai dépassé".into(),
            },
            Self::Internal(_) => "Erreur interne du serveur".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = match &self {
            // The BDD's own 4xx answer is passed through untouched.
            Self::Bdd(BddError::Rejected { body, .. }) => json_response(status, body.clone()),
            Self::Validation(details) => json_response(
                status,
                json!({"success": false, "error": self.message(), "details": details}),
            ),
            _ => json_response(status, json!({"success": false, "error": self.message()})),
        };
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
            Self::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        // Client mistakes are obvious from the status; keep detail for the rest.
        if status.is_server_error() || matches!(self, Self::InvalidToken(_) | Self::Bdd(_)) {
            response
                .extensions_mut()
                .insert(ErrorDetail(self.to_string()));
        }
        response
    }
}
