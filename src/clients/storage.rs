//! Supabase Storage client (contract §5): upload, remove, bucket check.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;

use super::{read_limited, ReadError, Transport};
use crate::config::{Secret, StorageConfig};
use crate::http::{RequestId, X_REQUEST_ID};
use crate::metrics::{Metrics, Outcome, Upstream};

/// Largest error or listing body read back from Storage.
const MAX_ANSWER_BYTES: usize = 1 << 20;

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
    pub fn noun(self) -> &'static str {
        match self {
            Self::Upload => "l'upload",
            Self::Removal => "la suppression",
        }
    }
}

/// How a Storage call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// Storage refused the call (HTTP 400 with its logical `statusCode`).
    #[error("refused ({status_code}): {message}")]
    Refused {
        /// Storage's logical code: "409" duplicate, "404" not found, …
        status_code: String,
        /// Storage's message.
        message: String,
    },
    /// Storage failed (5xx, garbled answer, connection closed mid-call).
    #[error("failed: {0}")]
    Failed(String),
    /// Storage could not be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

impl From<Transport> for StorageError {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Timeout => Self::Timeout,
            Transport::Connect(detail) => Self::Unavailable(detail),
            Transport::Closed(_) => {
                Self::Failed("connexion interrompue par le service de stockage".into())
            }
        }
    }
}

/// Storage's error body: `{"statusCode":"409","error":"Duplicate","message":"…"}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "statusCode")]
    status_code: Option<serde_json::Value>,
    error: Option<String>,
    message: Option<String>,
}

/// Talks to one bucket of Supabase Storage.
#[derive(Clone)]
pub struct StorageClient {
    http: reqwest::Client,
    base: String,
    bucket: String,
    key: Secret,
    timeout: Duration,
    public_prefix: String,
    metrics: Metrics,
}

impl StorageClient {
    /// A client for the configured bucket.
    pub fn new(
        http: reqwest::Client,
        config: &StorageConfig,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            http,
            base: format!("{}/storage/v1", config.url),
            public_prefix: format!("{}/storage/v1/object/public/{}/", config.url, config.bucket),
            bucket: config.bucket.clone(),
            key: config.service_key.clone(),
            timeout,
            metrics,
        }
    }

    /// Public URL prefix of the bucket, ending with `/`.
    pub fn public_prefix(&self) -> &str {
        &self.public_prefix
    }

    /// Public URL of an object.
    pub fn public_url(&self, path: &str) -> String {
        format!("{}{path}", self.public_prefix)
    }

    /// Uploads a new object; never overwrites.
    #[tracing::instrument(level = "debug", skip(self, bytes, request_id), fields(size = bytes.len()))]
    pub async fn upload(
        &self,
        path: &str,
        bytes: Bytes,
        content_type: &str,
        request_id: &RequestId,
    ) -> Result<(), StorageError> {
        let request = self
            .request(
                reqwest::Method::POST,
                &format!("/object/{}/{path}", self.bucket),
                request_id,
            )
            .header("content-type", content_type)
            .header("cache-control", "max-age=3600")
            .header("x-upsert", "false")
            .body(bytes);
        self.send(request).await.map(drop)
    }

    /// Removes an object; a missing object counts as removed.
    #[tracing::instrument(level = "debug", skip(self, request_id))]
    pub async fn remove(&self, path: &str, request_id: &RequestId) -> Result<(), StorageError> {
        let request = self
            .request(
                reqwest::Method::DELETE,
                &format!("/object/{}", self.bucket),
                request_id,
            )
            .json(&serde_json::json!({ "prefixes": [path] }));
        match self.send(request).await {
            // Storage skips missing names (`200 []`), but a `"404"` refusal
            // says the same thing: there is nothing left to remove.
            Err(StorageError::Refused { status_code, .. }) if status_code == "404" => Ok(()),
            other => other.map(drop),
        }
    }

    /// Whether Storage answers for the bucket (readiness).
    pub async fn check_bucket(&self, request_id: &RequestId) -> Result<(), StorageError> {
        let request = self.request(
            reqwest::Method::GET,
            &format!("/bucket/{}", self.bucket),
            request_id,
        );
        self.send(request).await.map(drop)
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        request_id: &RequestId,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout)
            .bearer_auth(self.key.expose())
            .header("apikey", self.key.expose())
            .header(&X_REQUEST_ID, request_id.as_str())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Bytes, StorageError> {
        let started = std::time::Instant::now();
        let result = self.exchange(request).await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(StorageError::Refused { .. }) => Outcome::Rejected,
            Err(StorageError::Failed(_)) => Outcome::Failed,
            Err(StorageError::Unavailable(_)) => Outcome::Unavailable,
            Err(StorageError::Timeout) => Outcome::Timeout,
        };
        let latency = started.elapsed();
        self.metrics.upstream(Upstream::Storage, outcome, latency);
        if let Err(e) = &result {
            tracing::warn!(upstream = "storage", error = %e, latency_ms = latency.as_micros() as f64 / 1000.0, "storage call failed");
        }
        result
    }

    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<Bytes, StorageError> {
        let response = request
            .send()
            .await
            .map_err(|e| StorageError::from(Transport::classify(&e)))?;
        let status = response.status();
        let body = match read_limited(response, MAX_ANSWER_BYTES).await {
            Ok(body) => body,
            Err(ReadError::Transport(e)) => return Err(Transport::classify(&e).into()),
            Err(ReadError::TooLarge) => {
                return Err(StorageError::Failed("réponse trop volumineuse".into()))
            }
        };
        if status.is_success() {
            return Ok(body);
        }
        Err(classify_failure(status, &body))
    }
}

fn classify_failure(status: StatusCode, body: &[u8]) -> StorageError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|b| b.message.clone().or_else(|| b.error.clone()))
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    if status.is_client_error() {
        let status_code = parsed
            .and_then(|b| b.status_code)
            .map(|c| match c {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .unwrap_or_else(|| status.as_u16().to_string());
        StorageError::Refused {
            status_code,
            message,
        }
    } else {
        StorageError::Failed(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_storage_logical_code_and_message() {
        let e = classify_failure(
            StatusCode::BAD_REQUEST,
            br#"{"statusCode":"409","error":"Duplicate","message":"The resource already exists"}"#,
        );
        assert_eq!(
            e,
            StorageError::Refused {
                status_code: "409".into(),
                message: "The resource already exists".into()
            }
        );
    }

    #[test]
    fn server_faults_without_json_name_the_status() {
        assert_eq!(
            classify_failure(StatusCode::BAD_GATEWAY, b"<html>"),
            StorageError::Failed("HTTP 502".into())
        );
    }
}
