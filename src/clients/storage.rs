//! Supabase Storage client (contract §5): upload, remove, bucket check; and
//! the object paths of the images, built and read back here only.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use bytes::Bytes;
use serde::Deserialize;

use super::{read_limited, Endpoint, ReadError, Transport, UpstreamFault};
use crate::config::StorageConfig;
use crate::domain::{ImageKind, UserId};
use crate::metrics::{Metrics, Outcome, Upstream};
use crate::request_id::{RequestId, X_REQUEST_ID};

/// Largest error or listing body read back from Storage.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Where an image lives in the bucket: `{sub}/{unix-ms}_generated_{uuid}.{ext}`,
/// unique to one create attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectPath(String);

impl ObjectPath {
    /// A fresh name for a new image of `user`.
    pub fn new_image(user: &UserId, kind: ImageKind) -> Self {
        Self(format!(
            "{}/{}_generated_{}.{}",
            user.as_str(),
            chrono::Utc::now().timestamp_millis(),
            uuid::Uuid::new_v4(),
            kind.extension()
        ))
    }

    /// The path of an image URL, if it is one of ours inside `owner`'s folder.
    ///
    /// The URL must start with the bucket's public prefix; the rest, once
    /// percent-decoded, must lie inside `{owner}/` with no `.`/`..`/empty
    /// segment, no backslash and no control character. Anything else is
    /// foreign and must not be removed.
    pub fn from_url(url: &str, public_prefix: &str, owner: &UserId) -> Option<Self> {
        let rest = url.strip_prefix(public_prefix)?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let path = percent_encoding::percent_decode_str(rest)
            .decode_utf8()
            .ok()?
            .into_owned();
        let mut segments = path.split('/');
        if segments.next() != Some(owner.as_str()) {
            return None;
        }
        let mut any = false;
        for segment in segments {
            let odd = segment.is_empty()
                || segment == "."
                || segment == ".."
                || segment.contains('\\')
                || segment.chars().any(char::is_control);
            if odd {
                return None;
            }
            any = true;
        }
        any.then_some(Self(path))
    }

    /// The path inside the bucket.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `name` in `user`'s folder, if it is named as this service names
    /// images: `{unix-ms}_generated_{uuid}.{png|jpg|webp}`; with the time in
    /// its name, in unix milliseconds.
    pub fn own_image(user: &UserId, name: &str) -> Option<(Self, u64)> {
        let (millis, rest) = name.split_once("_generated_")?;
        let (id, extension) = rest.rsplit_once('.')?;
        let well_formed = !millis.is_empty()
            && millis.bytes().all(|b| b.is_ascii_digit())
            && matches!(extension, "png" | "jpg" | "webp")
            && uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == id);
        let millis = millis.parse().ok().filter(|_| well_formed)?;
        Some((Self(format!("{}/{name}", user.as_str())), millis))
    }

    /// A path as stored (e.g. in a queue), trusted to be one this service made.
    pub fn from_stored(path: String) -> Self {
        Self(path)
    }
}

impl std::fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a Storage call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// Storage refused the call: its logical `statusCode` is a 4xx.
    #[error("refused ({status_code}): {message}")]
    Refused {
        /// Storage's logical code: "409" duplicate, "404" not found, …
        status_code: String,
        /// Storage's message, which the client may be shown (shortened).
        message: String,
    },
    /// Storage answered a 5xx. The detail is for the log only.
    #[error("answered HTTP {status}: {detail}")]
    ServerError {
        /// The HTTP status.
        status: u16,
        /// Storage's own text.
        detail: String,
    },
    /// An answer that is not Storage's JSON, or the connection closed
    /// mid-call. The detail is for the log only.
    #[error("failed: {0}")]
    Failed(String),
    /// Storage could not be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

impl StorageError {
    /// Whether the call may have done its work anyway (an upload that may
    /// land): anything but a refusal or a connection never made.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::ServerError { .. } | Self::Failed(_) | Self::Timeout
        )
    }

    /// The word for `/api/ready`.
    pub fn fault(&self) -> UpstreamFault {
        match self {
            Self::Refused { status_code, .. } => {
                UpstreamFault::Refused(status_code.parse().unwrap_or(400))
            }
            Self::ServerError { status, .. } => UpstreamFault::Failed(*status),
            Self::Failed(_) => UpstreamFault::BadAnswer,
            Self::Unavailable(_) => UpstreamFault::Unreachable,
            Self::Timeout => UpstreamFault::Timeout,
        }
    }
}

impl From<Transport> for StorageError {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Timeout => Self::Timeout,
            Transport::Connect(detail) => Self::Unavailable(detail),
            Transport::Closed(detail) => Self::Failed(format!("connection closed: {detail}")),
        }
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, Deserialize)]
pub struct ListEntry {
    /// The name inside the listed folder.
    pub name: String,
    /// The object's id; `None` for a sub-folder.
    pub id: Option<String>,
}

/// Storage's error body: `{"statusCode":"409","error":"Duplicate","message":"…"}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "statusCode")]
    status_code: Option<serde_json::Value>,
    error: Option<String>,
    message: Option<String>,
}

/// A header value never printed by `Debug`. Configuration checked the key is
/// visible ASCII; one that is not becomes an empty value Storage refuses.
fn sensitive(text: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// Talks to one bucket of Supabase Storage.
#[derive(Clone)]
pub struct StorageClient {
    http: reqwest::Client,
    endpoint: Endpoint,
    bucket: String,
    /// `Bearer <service key>` and the key itself, built once, marked sensitive.
    authorization: HeaderValue,
    apikey: HeaderValue,
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
            endpoint: Endpoint::new(&format!("{}/storage/v1", config.url)),
            public_prefix: format!("{}/storage/v1/object/public/{}/", config.url, config.bucket),
            bucket: config.bucket.clone(),
            authorization: sensitive(&format!("Bearer {}", config.service_key.expose())),
            apikey: sensitive(config.service_key.expose()),
            timeout,
            metrics,
        }
    }

    /// Public URL of an object.
    pub fn public_url(&self, path: &ObjectPath) -> String {
        format!("{}{path}", self.public_prefix)
    }

    /// The object an image URL names, if it is one of ours in `owner`'s folder.
    pub fn object_of_url(&self, url: &str, owner: &UserId) -> Option<ObjectPath> {
        ObjectPath::from_url(url, &self.public_prefix, owner)
    }

    /// Uploads a new object; never overwrites.
    #[tracing::instrument(level = "debug", skip(self, bytes, request_id), fields(size = bytes.len()))]
    pub async fn upload(
        &self,
        path: &ObjectPath,
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

    /// Uploads a new object whose bytes arrive on `chunks` as they are
    /// decoded (chunked transfer encoding); never overwrites. An `Err` on
    /// `chunks` aborts the upload. `timeout` bounds the whole call, the
    /// body's own time included.
    pub async fn upload_stream(
        &self,
        path: &ObjectPath,
        content_type: &str,
        chunks: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
        timeout: Duration,
        request_id: &RequestId,
    ) -> Result<(), StorageError> {
        let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
            chunks.recv().await.map(|chunk| (chunk, chunks))
        });
        let request = self
            .request(
                reqwest::Method::POST,
                &format!("/object/{}/{path}", self.bucket),
                request_id,
            )
            .timeout(timeout)
            .header("content-type", content_type)
            .header("cache-control", "max-age=3600")
            .header("x-upsert", "false")
            .body(reqwest::Body::wrap_stream(stream));
        self.send(request).await.map(drop)
    }

    /// Removes an object; a missing object counts as removed.
    #[tracing::instrument(level = "debug", skip(self, request_id))]
    pub async fn remove(
        &self,
        path: &ObjectPath,
        request_id: &RequestId,
    ) -> Result<(), StorageError> {
        let request = self
            .request(
                reqwest::Method::DELETE,
                &format!("/object/{}", self.bucket),
                request_id,
            )
            .json(&serde_json::json!({ "prefixes": [path.as_str()] }));
        match self.send(request).await {
            // Storage skips missing names (`200 []`), but a `"404"` refusal
            // says the same thing: there is nothing left to remove.
            Err(StorageError::Refused { status_code, .. }) if status_code == "404" => Ok(()),
            other => other.map(drop),
        }
    }

    /// One page of the entries directly in the folder `prefix` (`""`: the
    /// top-level folders), sorted by name: objects carry an id, sub-folders
    /// none.
    pub async fn list(
        &self,
        prefix: &str,
        limit: usize,
        offset: usize,
        request_id: &RequestId,
    ) -> Result<Vec<ListEntry>, StorageError> {
        let request = self
            .request(
                reqwest::Method::POST,
                &format!("/object/list/{}", self.bucket),
                request_id,
            )
            .json(&serde_json::json!({
                "prefix": prefix,
                "limit": limit,
                "offset": offset,
                "sortBy": {"column": "name", "order": "asc"},
            }));
        let body = self.send(request).await?;
        serde_json::from_slice(&body)
            .map_err(|e| StorageError::Failed(format!("listing is not an array of entries: {e}")))
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
        self.endpoint
            .request(&self.http, method, path)
            .timeout(self.timeout)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header("apikey", self.apikey.clone())
            .header(&X_REQUEST_ID, request_id.as_str())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Bytes, StorageError> {
        let started = std::time::Instant::now();
        let result = self.exchange(request).await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(StorageError::Refused { .. }) => Outcome::Rejected,
            Err(StorageError::ServerError { .. } | StorageError::Failed(_)) => Outcome::Failed,
            Err(StorageError::Unavailable(_)) => Outcome::Unavailable,
            Err(StorageError::Timeout) => Outcome::Timeout,
        };
        self.metrics
            .upstream(Upstream::Storage, outcome, started.elapsed());
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
                return Err(StorageError::Failed(format!(
                    "HTTP {} with an answer over {MAX_ANSWER_BYTES} bytes",
                    status.as_u16()
                )))
            }
        };
        if status.is_success() {
            return Ok(body);
        }
        Err(classify_failure(status, &body))
    }
}

/// Storage's refusals are HTTP 400 with the logical code in `statusCode`;
/// only a 4xx logical code with a JSON body is a refusal.
fn classify_failure(status: StatusCode, body: &[u8]) -> StorageError {
    let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
        return StorageError::Failed(format!(
            "HTTP {} with a body that is not Storage's JSON",
            status.as_u16()
        ));
    };
    let logical = match parsed.status_code {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => status.as_u16().to_string(),
    };
    let message = parsed
        .message
        .or(parsed.error)
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    if status.is_client_error() && logical.starts_with('4') && logical.len() == 3 {
        StorageError::Refused {
            status_code: logical,
            message,
        }
    } else if status.is_server_error() {
        StorageError::ServerError {
            status: status.as_u16(),
            detail: format!("({logical}) {message}"),
        }
    } else {
        StorageError::Failed(format!("HTTP {} ({logical}): {message}", status.as_u16()))
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
    fn server_faults_and_bodies_that_are_not_json_are_failures() {
        assert!(matches!(
            classify_failure(StatusCode::BAD_GATEWAY, b"<html>"),
            StorageError::Failed(_)
        ));
        assert!(matches!(
            classify_failure(StatusCode::BAD_REQUEST, b"<html>"),
            StorageError::Failed(_)
        ));
        assert!(matches!(
            classify_failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"statusCode":"500","error":"internal","message":"db at 10.0.0.3"}"#
            ),
            StorageError::ServerError { status: 500, .. }
        ));
    }

    #[test]
    fn object_paths_never_leave_the_owner_folder() {
        let owner = UserId::parse("user_1").unwrap();
        let prefix = "https://x.supabase.co/storage/v1/object/public/images/";
        let ok = format!("{prefix}user_1/123_generated_abc.png");
        assert_eq!(
            ObjectPath::from_url(&ok, prefix, &owner).map(|p| p.0),
            Some("user_1/123_generated_abc.png".to_owned())
        );
        for bad in [
            format!("{prefix}user_2/a.png"),
            format!("{prefix}user_1/../user_2/a.png"),
            format!("{prefix}user_1/%2E%2E/user_2/a.png"),
            format!("{prefix}user_1%2F..%2Fuser_2/a.png"),
            format!("{prefix}user_1//a.png"),
            format!("{prefix}user_1/"),
            format!("{prefix}user_1"),
            "https://evil.test/storage/v1/object/public/images/user_1/a.png".to_string(),
        ] {
            assert_eq!(ObjectPath::from_url(&bad, prefix, &owner), None, "{bad}");
        }
    }

    #[test]
    fn own_names_are_recognised_and_others_are_not() {
        let user = UserId::parse("user_1").unwrap();
        let id = "0b7c1d9e-6f3a-4a57-9b2c-1e2d3f4a5b6c";
        let (path, millis) =
            ObjectPath::own_image(&user, &format!("1718000000000_generated_{id}.png")).unwrap();
        assert_eq!(
            path.as_str(),
            format!("user_1/1718000000000_generated_{id}.png")
        );
        assert_eq!(millis, 1_718_000_000_000);
        for foreign in [
            format!("1718_generated_{id}.gif"),
            format!("x1718_generated_{id}.png"),
            format!("_generated_{id}.png"),
            "1718_generated_not-a-uuid.png".to_owned(),
            format!("1718_generated_{}.png", id.to_uppercase()),
            "avatar.png".to_owned(),
        ] {
            assert!(
                ObjectPath::own_image(&user, &foreign).is_none(),
                "{foreign}"
            );
        }
    }

    #[test]
    fn new_names_follow_the_scheme() {
        let user = UserId::parse("user_1").unwrap();
        let path = ObjectPath::new_image(&user, ImageKind::Webp);
        let name = path.as_str().strip_prefix("user_1/").unwrap();
        let (millis, rest) = name.split_once("_generated_").unwrap();
        assert!(millis.parse::<u64>().is_ok());
        assert!(rest.ends_with(".webp"));
        assert!(uuid::Uuid::parse_str(rest.trim_end_matches(".webp")).is_ok());
    }
}
