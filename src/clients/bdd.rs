//! BDD service client: the image records live there (PostgreSQL behind it).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use url::form_urlencoded;

use super::{read_limited, ReadError, Transport};
use crate::domain::{raw_str, ImageId, ImageStatus, ListQuery, UserId};
use crate::http::{RequestId, X_REQUEST_ID};
use crate::metrics::{Metrics, Outcome, Upstream};

/// Largest answer read back from the BDD service (a page is at most 100 records).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// How a BDD call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BddError {
    /// 4xx with a JSON body: passed through to the client as is.
    #[error("rejected with {status}")]
    Rejected {
        /// The BDD's status.
        status: StatusCode,
        /// The BDD's JSON body.
        body: Bytes,
    },
    /// 404 without JSON: the route does not exist there.
    #[error("operation not supported (404 without JSON)")]
    Unsupported,
    /// 5xx, an unusable answer, or the connection closed without an answer.
    #[error("failed: {0}")]
    Failed(String),
    /// Could not connect.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

impl From<Transport> for BddError {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Timeout => Self::Timeout,
            Transport::Connect(detail) => Self::Unavailable(detail),
            Transport::Closed(detail) => Self::Failed(format!("connection closed: {detail}")),
        }
    }
}

/// A successful BDD answer, kept as received so it can be passed on untouched.
///
/// The service reads only a few fields of it; they are viewed in place
/// (borrowed `RawValue`s) rather than built into a `serde_json::Value`.
#[derive(Debug, Clone)]
pub struct BddAnswer {
    /// Body as received (valid JSON).
    pub body: Bytes,
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// A list page whose records are all objects: read in one pass.
#[derive(serde::Deserialize)]
struct Page<'a> {
    #[serde(borrow, default)]
    images: Option<Vec<Record<'a>>>,
}

/// Any list page: each record kept raw, to be viewed one by one.
#[derive(serde::Deserialize)]
struct RawPage<'a> {
    #[serde(borrow, default)]
    images: Option<Vec<&'a RawValue>>,
}

/// The fields of a record the service reads, under either naming the BDD uses.
#[derive(Debug, Default, serde::Deserialize)]
#[allow(non_snake_case)]
pub struct Record<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    image_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    createdAt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    created_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    userId: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    imageUrl: Option<&'a RawValue>,
    #[serde(borrow, default)]
    image_url: Option<&'a RawValue>,
}

fn first<'a>(a: Option<&'a RawValue>, b: Option<&'a RawValue>) -> Option<&'a RawValue> {
    let present = |v: &&RawValue| v.get() != "null";
    a.filter(present).or(b.filter(present))
}

impl<'a> Record<'a> {
    /// Views a record; anything that is not a JSON object has none of the fields.
    pub fn view(raw: &'a RawValue) -> Self {
        serde_json::from_str(raw.get()).unwrap_or_default()
    }

    /// `id` or `image_id`, as the BDD wrote it.
    pub fn id(&self) -> Option<Value> {
        first(self.id, self.image_id).and_then(|v| serde_json::from_str(v.get()).ok())
    }

    /// `createdAt` or `created_at`, as the BDD wrote it.
    pub fn created_at(&self) -> Option<Value> {
        first(self.createdAt, self.created_at).and_then(|v| serde_json::from_str(v.get()).ok())
    }

    /// `userId` or `user_id`, when a string.
    pub fn owner(&self) -> Option<Cow<'a, str>> {
        first(self.userId, self.user_id).and_then(raw_str)
    }

    /// `imageUrl` or `image_url`, when a string.
    pub fn image_url(&self) -> Option<Cow<'a, str>> {
        first(self.imageUrl, self.image_url).and_then(raw_str)
    }
}

impl BddAnswer {
    /// The JSON under `data`, unless absent or null.
    pub fn data(&self) -> Option<&RawValue> {
        serde_json::from_slice::<Envelope<'_>>(&self.body)
            .ok()
            .and_then(|e| e.data)
    }

    /// The record under `data` (empty when there is none).
    pub fn record(&self) -> Record<'_> {
        self.data().map(Record::view).unwrap_or_default()
    }
}

/// The records of a list page's `data` (`data.images`), if it has any.
///
/// One pass when every record is a well-formed object (the usual page);
/// otherwise each record is viewed on its own, so one odd entry cannot hide
/// the owners of the others.
pub fn page_records(data: &RawValue) -> Vec<Record<'_>> {
    if let Ok(page) = serde_json::from_str::<Page<'_>>(data.get()) {
        return page.images.unwrap_or_default();
    }
    serde_json::from_str::<RawPage<'_>>(data.get())
        .ok()
        .and_then(|p| p.images)
        .unwrap_or_default()
        .into_iter()
        .map(Record::view)
        .collect()
}

/// Talks to the BDD service.
#[derive(Clone)]
pub struct BddClient {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    metrics: Metrics,
}

/// Whether a call may be sent again after a connection failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

/// What a successful answer must carry to count as one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A JSON body: it is passed on or read.
    Json,
    /// Only a 2xx status: the body is not used, so `204` or a text body is fine.
    Success,
}

impl BddClient {
    /// A client of the BDD service at `base` (no trailing slash).
    pub fn new(http: reqwest::Client, base: &str, timeout: Duration, metrics: Metrics) -> Self {
        Self {
            http,
            base: base.to_owned(),
            timeout,
            metrics,
        }
    }

    /// `POST /api/images`: creates a record.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = user.as_str()))]
    pub async fn create_image(
        &self,
        user: &UserId,
        prompt: &str,
        image_url: &str,
        metadata: &Value,
        request_id: &RequestId,
    ) -> Result<BddAnswer, BddError> {
        let body = json!({
            "userId": user.as_str(),
            "prompt": prompt,
            "imageUrl": image_url,
            "metadata": metadata,
        });
        self.call(
            reqwest::Method::POST,
            "/api/images".into(),
            Some(body),
            request_id,
            (Idempotent::No, Expect::Json),
        )
        .await
    }

    /// `GET /api/images?userId&page&limit[&status]`: one page of the user's records.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = user.as_str()))]
    pub async fn list_images(
        &self,
        user: &UserId,
        query: &ListQuery,
        request_id: &RequestId,
    ) -> Result<BddAnswer, BddError> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("userId", user.as_str())
                .append_pair("page", &query.page.to_string())
                .append_pair("limit", &query.limit.to_string());
            if let Some(status) = query.status {
                q.append_pair("status", status.as_str());
            }
            q.finish()
        };
        let path = format!("/api/images?{query}");
        self.call(
            reqwest::Method::GET,
            path,
            None,
            request_id,
            (Idempotent::Yes, Expect::Json),
        )
        .await
    }

    /// `GET /api/images/{id}?userId&user_id`: one record.
    #[tracing::instrument(level = "debug", skip_all, fields(image_id = id.as_str()))]
    pub async fn get_image(
        &self,
        id: &ImageId,
        user: &UserId,
        request_id: &RequestId,
    ) -> Result<BddAnswer, BddError> {
        let path = format!("/api/images/{}?{}", id.as_str(), owner_query(user));
        self.call(
            reqwest::Method::GET,
            path,
            None,
            request_id,
            (Idempotent::Yes, Expect::Json),
        )
        .await
    }

    /// `DELETE /api/images/{id}?userId&user_id`: removes a record.
    #[tracing::instrument(level = "debug", skip_all, fields(image_id = id.as_str()))]
    pub async fn delete_image(
        &self,
        id: &ImageId,
        user: &UserId,
        request_id: &RequestId,
    ) -> Result<(), BddError> {
        let path = format!("/api/images/{}?{}", id.as_str(), owner_query(user));
        self.call(
            reqwest::Method::DELETE,
            path,
            None,
            request_id,
            (Idempotent::Yes, Expect::Success),
        )
        .await
        .map(drop)
    }

    /// `PATCH /api/images/{id}/status`: re-labels a record.
    #[tracing::instrument(level = "debug", skip_all, fields(image_id = id.as_str()))]
    pub async fn update_status(
        &self,
        id: &ImageId,
        user: &UserId,
        status: ImageStatus,
        request_id: &RequestId,
    ) -> Result<BddAnswer, BddError> {
        let body = json!({
            "status": status.as_str(),
            "user_id": user.as_str(),
            "userId": user.as_str(),
        });
        let path = format!("/api/images/{}/status", id.as_str());
        self.call(
            reqwest::Method::PATCH,
            path,
            Some(body),
            request_id,
            (Idempotent::No, Expect::Json),
        )
        .await
    }

    /// `GET /api/health` (readiness).
    pub async fn health(&self, request_id: &RequestId) -> Result<(), BddError> {
        self.call(
            reqwest::Method::GET,
            "/api/health".into(),
            None,
            request_id,
            (Idempotent::No, Expect::Success),
        )
        .await
        .map(drop)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path_and_query: String,
        body: Option<Value>,
        request_id: &RequestId,
        (idempotent, expect): (Idempotent, Expect),
    ) -> Result<BddAnswer, BddError> {
        let started = Instant::now();
        let mut result = self
            .exchange(&method, &path_and_query, &body, request_id, expect)
            .await;
        if idempotent == Idempotent::Yes {
            if let Err(Retry(t)) = &result {
                tracing::info!(upstream = "bdd", error = ?t, "retrying once after a connection failure");
                result = self
                    .exchange(&method, &path_and_query, &body, request_id, expect)
                    .await;
            }
        }
        let result = result.map_err(|e| match e {
            Attempt::Retry(t) => BddError::from(t),
            Attempt::Final(e) => e,
        });
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(BddError::Rejected { .. } | BddError::Unsupported) => Outcome::Rejected,
            Err(BddError::Failed(_)) => Outcome::Failed,
            Err(BddError::Unavailable(_)) => Outcome::Unavailable,
            Err(BddError::Timeout) => Outcome::Timeout,
        };
        let latency = started.elapsed();
        self.metrics.upstream(Upstream::Bdd, outcome, latency);
        if let Err(e) = &result {
            if !matches!(e, BddError::Rejected { .. }) {
                tracing::warn!(upstream = "bdd", %method, error = %e, latency_ms = latency.as_micros() as f64 / 1000.0, "BDD call failed");
            }
        }
        result
    }

    async fn exchange(
        &self,
        method: &reqwest::Method,
        path_and_query: &str,
        body: &Option<Value>,
        request_id: &RequestId,
        expect: Expect,
    ) -> Result<BddAnswer, Attempt> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path_and_query}", self.base))
            .timeout(self.timeout)
            .header(&X_REQUEST_ID, request_id.as_str());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Transport::classify(&e).into_attempt())?;
        let status = response.status();
        let bytes = match read_limited(response, MAX_ANSWER_BYTES).await {
            Ok(bytes) => bytes,
            Err(ReadError::Transport(e)) => return Err(Transport::classify(&e).into_attempt()),
            Err(ReadError::TooLarge) => {
                return Err(Attempt::Final(BddError::Failed("answer too large".into())))
            }
        };
        classify(status, bytes, expect).map_err(Attempt::Final)
    }
}

/// `Retry` marks failures an idempotent call may try again.
enum Attempt {
    Retry(Transport),
    Final(BddError),
}
use Attempt::Retry;

impl Transport {
    fn into_attempt(self) -> Attempt {
        if self.is_retryable() {
            Attempt::Retry(self)
        } else {
            Attempt::Final(self.into())
        }
    }
}

/// `userId` is what the BDD filters on; `user_id` is kept for older versions.
fn owner_query(user: &UserId) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("userId", user.as_str())
        .append_pair("user_id", user.as_str())
        .finish()
}

fn classify(status: StatusCode, body: Bytes, expect: Expect) -> Result<BddAnswer, BddError> {
    if status.is_success() && expect == Expect::Success {
        return Ok(BddAnswer { body });
    }
    // Checked without building anything: is the body JSON at all?
    let is_json = serde_json::from_slice::<IgnoredAny>(&body).is_ok();
    match (status.as_u16(), is_json) {
        (200..=299, true) => Ok(BddAnswer { body }),
        (200..=299, false) => Err(BddError::Failed(format!(
            "HTTP {status} with a body that is not JSON"
        ))),
        (400..=499, true) => Err(BddError::Rejected { status, body }),
        (404, false) => Err(BddError::Unsupported),
        (_, _) => Err(BddError::Failed(format!("HTTP {}", status.as_u16()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_the_contract_says() {
        let json = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(classify(StatusCode::OK, json(r#"{"success":true}"#), Expect::Json).is_ok());
        assert!(matches!(
            classify(
                StatusCode::NOT_FOUND,
                json(r#"{"success":false}"#),
                Expect::Json
            ),
            Err(BddError::Rejected {
                status: StatusCode::NOT_FOUND,
                ..
            })
        ));
        assert_eq!(
            classify(
                StatusCode::NOT_FOUND,
                json("<pre>Cannot PATCH</pre>"),
                Expect::Json
            )
            .unwrap_err(),
            BddError::Unsupported
        );
        assert!(matches!(
            classify(
                StatusCode::INTERNAL_SERVER_ERROR,
                json(r#"{"e":1}"#),
                Expect::Json
            ),
            Err(BddError::Failed(_))
        ));
        assert!(matches!(
            classify(StatusCode::OK, json("OK"), Expect::Json),
            Err(BddError::Failed(_))
        ));
    }

    #[test]
    fn a_call_whose_body_is_unused_succeeds_on_any_2xx() {
        assert!(classify(StatusCode::NO_CONTENT, Bytes::new(), Expect::Success).is_ok());
        assert!(classify(StatusCode::OK, Bytes::from_static(b"OK"), Expect::Success).is_ok());
        assert_eq!(
            classify(
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"nope"),
                Expect::Success
            )
            .unwrap_err(),
            BddError::Unsupported
        );
    }

    #[test]
    fn records_are_viewed_under_either_naming() {
        let answer = BddAnswer {
            body: Bytes::from_static(
                br#"{"success":true,"data":{"image_id":7,"created_at":"t","user_id":"u\u0041","image_url":"x","userId":null}}"#,
            ),
        };
        let record = answer.record();
        assert_eq!(record.id(), Some(json!(7)));
        assert_eq!(record.created_at(), Some(json!("t")));
        assert_eq!(record.owner().as_deref(), Some("uA"));
        assert_eq!(record.image_url().as_deref(), Some("x"));
        let empty = BddAnswer {
            body: Bytes::from_static(br#"{"data":null}"#),
        };
        assert!(empty.data().is_none());
        assert!(empty.record().id().is_none());
    }

    #[test]
    fn page_owners_are_read_even_beside_odd_records() {
        let owners = |page: &str| -> Vec<Option<String>> {
            let raw: &RawValue = serde_json::from_str(page).unwrap();
            page_records(raw)
                .iter()
                .map(|r| r.owner().map(|o| o.into_owned()))
                .collect()
        };
        assert_eq!(
            owners(r#"{"images":[{"userId":"a"},{"user_id":"b","x":[1]}],"pagination":{}}"#),
            vec![Some("a".into()), Some("b".into())]
        );
        assert_eq!(
            owners(r#"{"images":["odd",{"userId":"a","userId":"dup"},{"userId":"c"}]}"#),
            vec![None, None, Some("c".into())]
        );
        assert!(owners(r#"{"images":{"not":"a list"}}"#).is_empty());
    }

    #[test]
    fn owner_query_encodes_both_names() {
        let user = UserId::parse("user_A-1").unwrap();
        assert_eq!(owner_query(&user), "userId=user_A-1&user_id=user_A-1");
    }
}
