//! BDD service client: the image records live there (PostgreSQL behind it).
//!
//! The owner of a record is read here and nowhere else: every record the BDD
//! returns passes [`Record::ownership`] before anything of it reaches a
//! client, failing closed (contract §3).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use url::form_urlencoded;

use super::{read_limited, Endpoint, ReadError, Transport, UpstreamFault};
use crate::domain::{ImageId, ImageStatus, ListQuery, UserId};
use crate::metrics::{Metrics, Outcome, Upstream};
use crate::request_id::{RequestId, X_REQUEST_ID};

/// Largest answer read back from the BDD service (a page is at most 100 records).
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// Records per page when reading back (the largest page the BDD serves).
const READ_BACK_LIMIT: u64 = 100;
/// Pages read at most for one user (a million records).
const MAX_PAGES: u64 = 10_000;

/// How a BDD call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BddError {
    /// 400, 404, 409 or 422 with a JSON body: the client gets the same status.
    #[error("rejected with {status}")]
    Rejected {
        /// The BDD's status.
        status: StatusCode,
        /// The BDD's `error`, when it is a string.
        error: Option<String>,
    },
    /// Any other 4xx (401, 403, 405, 429…): the BDD refused this service, not the caller.
    #[error("refused with {0}")]
    Refused(StatusCode),
    /// 404 without JSON: the route does not exist there.
    #[error("operation not supported (404 without JSON)")]
    Unsupported,
    /// A 5xx answer.
    #[error("answered HTTP {0}")]
    ServerError(StatusCode),
    /// An unusable answer, or the connection closed without an answer.
    #[error("failed: {0}")]
    Failed(String),
    /// Could not connect.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The record is not provably the caller's: answered as if absent.
    #[error("record not owned by the caller: {0}")]
    NotOwned(&'static str),
}

impl BddError {
    /// Whether a call that ended so may still have done its work upstream: a
    /// timeout, a connection closed after sending, a 5xx, an unusable answer.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Timeout | Self::ServerError(_) | Self::Failed(_))
    }

    /// The word for `/api/ready`.
    pub fn fault(&self) -> UpstreamFault {
        match self {
            Self::Rejected { status, .. } | Self::Refused(status) => {
                UpstreamFault::Refused(status.as_u16())
            }
            Self::Unsupported => UpstreamFault::Refused(404),
            Self::ServerError(status) => UpstreamFault::Failed(status.as_u16()),
            Self::Failed(_) | Self::NotOwned(_) => UpstreamFault::BadAnswer,
            Self::Unavailable(_) => UpstreamFault::Unreachable,
            Self::Timeout => UpstreamFault::Timeout,
        }
    }
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

/// A record's owner, as far as the service can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Every owner field names the caller.
    Owned,
    /// The record is not provably the caller's (why, for the log).
    NotOwned(&'static str),
}

/// The fields of a record the service reads, under either naming the BDD
/// uses, viewed in place; owner fields are counted, so one given twice is
/// seen.
#[derive(Debug, Default)]
pub struct Record<'a> {
    id: Option<&'a RawValue>,
    image_id: Option<&'a RawValue>,
    created_at_camel: Option<&'a RawValue>,
    created_at: Option<&'a RawValue>,
    image_url_camel: Option<&'a RawValue>,
    image_url: Option<&'a RawValue>,
    /// The last `userId` and the last `user_id`.
    owners: [Option<&'a RawValue>; 2],
    /// How many times each was given.
    owner_names: [usize; 2],
    /// The record is a JSON object.
    object: bool,
}

/// A key of a record, told apart as it is read: no key is copied (serde's
/// `Cow<str>` keys were each a new `String`, ten per record of a page).
enum Field {
    Id,
    ImageId,
    CreatedAtCamel,
    CreatedAt,
    ImageUrlCamel,
    ImageUrl,
    /// `userId` (0) or `user_id` (1).
    Owner(usize),
    /// Any other key: its value is skipped.
    Other,
}

impl<'de> serde::Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Field;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "id" => Field::Id,
                    "image_id" => Field::ImageId,
                    "createdAt" => Field::CreatedAtCamel,
                    "created_at" => Field::CreatedAt,
                    "imageUrl" => Field::ImageUrlCamel,
                    "image_url" => Field::ImageUrl,
                    "userId" => Field::Owner(0),
                    "user_id" => Field::Owner(1),
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(Name)
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Record<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Fields<'a> {
            type Value = Record<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a record object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut r = Record {
                    object: true,
                    ..Record::default()
                };
                while let Some(key) = map.next_key::<Field>()? {
                    let slot = match key {
                        Field::Id => &mut r.id,
                        Field::ImageId => &mut r.image_id,
                        Field::CreatedAtCamel => &mut r.created_at_camel,
                        Field::CreatedAt => &mut r.created_at,
                        Field::ImageUrlCamel => &mut r.image_url_camel,
                        Field::ImageUrl => &mut r.image_url,
                        Field::Owner(which) => {
                            r.owner_names[which] += 1;
                            &mut r.owners[which]
                        }
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    // A key given twice counts by its last value, as JSON.parse
                    // (an owner given twice is refused by `ownership`).
                    *slot = Some(map.next_value()?);
                }
                Ok(r)
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// `a` unless absent or null, else `b` unless absent or null.
fn first<'a>(a: Option<&'a RawValue>, b: Option<&'a RawValue>) -> Option<&'a RawValue> {
    let present = |v: &&RawValue| v.get() != "null";
    a.filter(present).or(b.filter(present))
}

/// A JSON string's content, borrowed when it has no escapes; `None` if not a string.
fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
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
        first(self.created_at_camel, self.created_at)
            .and_then(|v| serde_json::from_str(v.get()).ok())
    }

    /// `imageUrl` or `image_url`, when a string.
    pub fn image_url(&self) -> Option<Cow<'a, str>> {
        first(self.image_url_camel, self.image_url).and_then(raw_str)
    }

    /// Whether the record is `user`'s: it is an object; its owner is `userId`
    /// or `user_id`, each a string given once, and every one names `user`.
    pub fn ownership(&self, user: &UserId) -> Ownership {
        if !self.object {
            return Ownership::NotOwned("record is not an object");
        }
        let given = self.owners.iter().flatten().count();
        if given == 0 {
            return Ownership::NotOwned("owner missing");
        }
        if self.owner_names.iter().any(|&n| n > 1) {
            return Ownership::NotOwned("owner given twice");
        }
        for owner in self.owners.iter().flatten() {
            match raw_str(owner) {
                Some(owner) if user.owns(&owner) => {}
                Some(_) if given > 1 => {
                    return Ownership::NotOwned("owner fields disagree or name another user")
                }
                Some(_) => return Ownership::NotOwned("another user's record"),
                None => return Ownership::NotOwned("owner is not a string"),
            }
        }
        Ownership::Owned
    }
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// A list page whose records are all objects, each viewed as it is read.
#[derive(serde::Deserialize)]
struct RecordsPage<'a> {
    #[serde(borrow)]
    images: Vec<Record<'a>>,
}

/// A list page's `data`: it must hold an `images` array.
#[derive(serde::Deserialize)]
struct PageData<'a> {
    #[serde(borrow)]
    images: Vec<&'a RawValue>,
}

/// A successful BDD answer, kept as received so it can be passed on untouched.
#[derive(Debug, Clone)]
pub struct BddAnswer {
    /// Body as received (valid JSON).
    pub body: Bytes,
}

impl BddAnswer {
    /// The JSON under `data`; `Ok(None)` when absent or null; an error when
    /// the envelope cannot be read (a `data` given twice, say).
    fn data(&self) -> Result<Option<&RawValue>, BddError> {
        let envelope: Envelope<'_> = serde_json::from_slice(&self.body)
            .map_err(|e| BddError::Failed(format!("unreadable answer: {e}")))?;
        Ok(envelope.data.filter(|d| d.get() != "null"))
    }

    /// `data` of an answer written as the BDD writes it (`JSON.stringify`
    /// of `{success: true, data}`), found without a pass over the envelope:
    /// the text between the two. Only a guess until the caller's parse of it
    /// succeeds, which it does only if it is one JSON value and nothing more.
    fn data_as_written(&self) -> Option<&str> {
        const HEAD: &[u8] = br#"{"success":true,"data":"#;
        let inner = self
            .body
            .strip_prefix(HEAD)?
            .trim_ascii_end()
            .strip_suffix(b"}")?;
        std::str::from_utf8(inner).ok().map(str::trim_end)
    }

    /// The record under `data`, checked to be `user`'s.
    fn owned_record(&self, user: &UserId) -> Result<Record<'_>, BddError> {
        // The usual answer: one pass, over `data` only (a record is an object,
        // or its parse fails).
        let usual = self
            .data_as_written()
            .and_then(|data| serde_json::from_str::<Record<'_>>(data).ok());
        let record = match usual {
            Some(record) => record,
            None => {
                let data = self.data()?.filter(|d| d.get().starts_with('{'));
                let Some(data) = data else {
                    return Err(BddError::Failed("data is not a record object".into()));
                };
                Record::view(data)
            }
        };
        match record.ownership(user) {
            Ownership::Owned => Ok(record),
            Ownership::NotOwned(why) => Err(BddError::NotOwned(why)),
        }
    }
}

/// A record the caller owns: the BDD's answer, to pass on as it is.
#[derive(Debug, Clone)]
pub struct OwnedRecord {
    answer: BddAnswer,
}

impl OwnedRecord {
    /// The answer's body, as received.
    pub fn body(&self) -> Bytes {
        self.answer.body.clone()
    }

    /// The record's image URL, when it has one.
    pub fn image_url(&self) -> Option<String> {
        let data = self.answer.data().ok().flatten()?;
        Record::view(data).image_url().map(Cow::into_owned)
    }
}

/// A record just created: its id and creation time as the BDD wrote them.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedRecord {
    /// `id` or `image_id`.
    pub id: Value,
    /// `createdAt` or `created_at`, `null` when absent.
    pub created_at: Value,
}

/// One page of the caller's records, ready to answer: `data` as the BDD
/// wrote it, or rebuilt without the records that failed the owner check.
#[derive(Debug, Clone)]
pub struct OwnedPage {
    /// JSON of the page's `data`.
    pub data: Bytes,
    /// Records dropped by the owner check.
    pub dropped: usize,
}

/// Talks to the BDD service.
#[derive(Clone)]
pub struct BddClient {
    http: reqwest::Client,
    endpoint: Endpoint,
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
            endpoint: Endpoint::new(base),
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
    ) -> Result<CreatedRecord, BddError> {
        let body = json!({
            "userId": user.as_str(),
            "prompt": prompt,
            "imageUrl": image_url,
            "metadata": metadata,
        });
        let answer = self
            .call(
                reqwest::Method::POST,
                "/api/images".into(),
                Some(body),
                request_id,
                (Idempotent::No, Expect::Json),
            )
            .await?;
        let data = answer.data()?;
        let record = data.map(Record::view).unwrap_or_default();
        let id = record
            .id()
            .ok_or_else(|| BddError::Failed("created record has no id".into()))?;
        Ok(CreatedRecord {
            id,
            created_at: record.created_at().unwrap_or(Value::Null),
        })
    }

    /// `GET /api/images?userId&page&limit[&status]`: one page of the user's records.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = user.as_str()))]
    pub async fn list_images(
        &self,
        user: &UserId,
        query: &ListQuery,
        request_id: &RequestId,
    ) -> Result<OwnedPage, BddError> {
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
        let answer = self
            .call(
                reqwest::Method::GET,
                format!("/api/images?{query}"),
                None,
                request_id,
                (Idempotent::Yes, Expect::Json),
            )
            .await?;
        owned_page(&answer, user)
    }

    /// Reads back the user's newest records (one page of 100, newest first)
    /// looking for one whose URL is `url`: how a create whose answer was
    /// lost is settled.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = user.as_str()))]
    pub async fn find_by_url(
        &self,
        user: &UserId,
        url: &str,
        request_id: &RequestId,
    ) -> Result<Option<CreatedRecord>, BddError> {
        let answer = self.page(user, 1, READ_BACK_LIMIT, request_id).await?;
        let Some(data) = answer.data()? else {
            return Ok(None);
        };
        let page = page_data(data)?;
        Ok(page
            .images
            .iter()
            .map(|raw| Record::view(raw))
            .filter(|r| r.ownership(user) == Ownership::Owned)
            .find(|r| r.image_url().as_deref() == Some(url))
            .and_then(|r| {
                Some(CreatedRecord {
                    id: r.id()?,
                    created_at: r.created_at().unwrap_or(Value::Null),
                })
            }))
    }

    /// The image URLs of every record of `user`, every page read.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = user.as_str()))]
    pub async fn all_image_urls(
        &self,
        user: &UserId,
        request_id: &RequestId,
    ) -> Result<Vec<String>, BddError> {
        let mut urls = Vec::new();
        for page_number in 1u64.. {
            let answer = self
                .page(user, page_number, READ_BACK_LIMIT, request_id)
                .await?;
            let Some(data) = answer.data()? else {
                break;
            };
            let page = page_data(data)?;
            let count = page.images.len() as u64;
            urls.extend(
                page.images
                    .iter()
                    .map(|raw| Record::view(raw))
                    .filter(|r| r.ownership(user) == Ownership::Owned)
                    .filter_map(|r| r.image_url().map(Cow::into_owned)),
            );
            if count < READ_BACK_LIMIT || page_number >= MAX_PAGES {
                break;
            }
        }
        Ok(urls)
    }

    async fn page(
        &self,
        user: &UserId,
        page: u64,
        limit: u64,
        request_id: &RequestId,
    ) -> Result<BddAnswer, BddError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("userId", user.as_str())
            .append_pair("page", &page.to_string())
            .append_pair("limit", &limit.to_string())
            .finish();
        self.call(
            reqwest::Method::GET,
            format!("/api/images?{query}"),
            None,
            request_id,
            (Idempotent::Yes, Expect::Json),
        )
        .await
    }

    /// `GET /api/images/{id}?userId&user_id`: one record, the caller's.
    #[tracing::instrument(level = "debug", skip_all, fields(image_id = id.as_str()))]
    pub async fn get_image(
        &self,
        id: &ImageId,
        user: &UserId,
        request_id: &RequestId,
    ) -> Result<OwnedRecord, BddError> {
        let path = format!("/api/images/{}?{}", id.as_str(), owner_query(user));
        let answer = self
            .call(
                reqwest::Method::GET,
                path,
                None,
                request_id,
                (Idempotent::Yes, Expect::Json),
            )
            .await?;
        answer.owned_record(user)?;
        Ok(OwnedRecord { answer })
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

    /// `PATCH /api/images/{id}/status`: re-labels a record; the answer must be the caller's.
    #[tracing::instrument(level = "debug", skip_all, fields(image_id = id.as_str()))]
    pub async fn update_status(
        &self,
        id: &ImageId,
        user: &UserId,
        status: ImageStatus,
        request_id: &RequestId,
    ) -> Result<OwnedRecord, BddError> {
        let body = json!({
            "status": status.as_str(),
            "user_id": user.as_str(),
            "userId": user.as_str(),
        });
        let path = format!("/api/images/{}/status", id.as_str());
        let answer = self
            .call(
                reqwest::Method::PATCH,
                path,
                Some(body),
                request_id,
                (Idempotent::No, Expect::Json),
            )
            .await?;
        answer.owned_record(user)?;
        Ok(OwnedRecord { answer })
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
            if let Err(Attempt::Retry(t)) = &result {
                tracing::debug!(upstream = "bdd", error = %t, "retrying once after a connection failure");
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
            Err(BddError::Rejected { .. } | BddError::Refused(_) | BddError::Unsupported) => {
                Outcome::Rejected
            }
            Err(BddError::ServerError(_) | BddError::Failed(_) | BddError::NotOwned(_)) => {
                Outcome::Failed
            }
            Err(BddError::Unavailable(_)) => Outcome::Unavailable,
            Err(BddError::Timeout) => Outcome::Timeout,
        };
        self.metrics
            .upstream(Upstream::Bdd, outcome, started.elapsed());
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
            .endpoint
            .request(&self.http, method.clone(), path_and_query)
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

/// A list page's `data`, which must be an object with an `images` array.
fn page_data(data: &RawValue) -> Result<PageData<'_>, BddError> {
    serde_json::from_str(data.get())
        .ok()
        .filter(|_| data.get().starts_with('{'))
        .ok_or_else(|| BddError::Failed("data is not an object with an images array".into()))
}

/// The page, when `data` (of `answer`'s body) is an object whose records
/// are all objects of the caller's, read in one pass; passed on without a copy.
fn all_owned(answer: &BddAnswer, data: &str, user: &UserId) -> Option<OwnedPage> {
    // A struct also reads from an array: only an object is a page.
    if !data.starts_with('{') {
        return None;
    }
    let page = serde_json::from_str::<RecordsPage<'_>>(data).ok()?;
    let owned = page
        .images
        .iter()
        .all(|r| r.ownership(user) == Ownership::Owned);
    owned.then(|| OwnedPage {
        data: answer.body.slice_ref(data.as_bytes()),
        dropped: 0,
    })
}

/// The page of a list answer with only the caller's records.
fn owned_page(answer: &BddAnswer, user: &UserId) -> Result<OwnedPage, BddError> {
    // The usual answer: `data` read in one pass, the envelope not at all
    // (the pass over the envelope was half of the owner check's cost).
    if let Some(data) = answer.data_as_written() {
        if let Some(page) = all_owned(answer, data, user) {
            return Ok(page);
        }
    }
    let Some(data) = answer.data()? else {
        return Ok(OwnedPage {
            data: Bytes::from_static(br#"{"images":[],"pagination":{"total":0}}"#),
            dropped: 0,
        });
    };
    if !data.get().starts_with('{') {
        return Err(BddError::Failed(
            "data is not an object with an images array".into(),
        ));
    }
    if let Some(page) = all_owned(answer, data.get(), user) {
        return Ok(page);
    }
    let page = page_data(data)?;
    let owned: Vec<bool> = page
        .images
        .iter()
        .map(|raw| Record::view(raw).ownership(user) == Ownership::Owned)
        .collect();
    let dropped = owned.iter().filter(|o| !**o).count();
    if dropped == 0 {
        // `data` borrows from the body: pass it on without a copy.
        return Ok(OwnedPage {
            data: answer.body.slice_ref(data.get().as_bytes()),
            dropped,
        });
    }
    // Rare (a BDD ignoring its owner filter): rebuild `data` without them.
    let mut rebuilt: serde_json::Map<String, Value> = serde_json::from_str(data.get())
        .map_err(|e| BddError::Failed(format!("unreadable page: {e}")))?;
    let kept: Vec<Value> = page
        .images
        .iter()
        .zip(&owned)
        .filter(|(_, owned)| **owned)
        .filter_map(|(raw, _)| serde_json::from_str(raw.get()).ok())
        .collect();
    rebuilt.insert("images".into(), Value::Array(kept));
    Ok(OwnedPage {
        data: Bytes::from(serde_json::to_vec(&rebuilt).unwrap_or_default()),
        dropped,
    })
}

/// Reads the BDD's `error` when it is a string.
fn error_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: Option<Value>,
    }
    match serde_json::from_slice::<ErrorBody>(body).ok()?.error? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn classify(status: StatusCode, body: Bytes, expect: Expect) -> Result<BddAnswer, BddError> {
    // A success is read (or passed on) by its caller, which refuses a body
    // that is not JSON then: no separate pass over it here.
    if status.is_success() {
        return match expect {
            Expect::Success => Ok(BddAnswer { body }),
            Expect::Json if body.iter().any(|b| !b.is_ascii_whitespace()) => Ok(BddAnswer { body }),
            Expect::Json => Err(BddError::Failed(format!("HTTP {status} with no body"))),
        };
    }
    // Checked without building anything: is the body JSON at all?
    let is_json = serde_json::from_slice::<IgnoredAny>(&body).is_ok();
    match (status.as_u16(), is_json) {
        (200..=299, true) => Ok(BddAnswer { body }),
        (200..=299, false) => Err(BddError::Failed(format!(
            "HTTP {status} with a body that is not JSON"
        ))),
        (400 | 404 | 409 | 422, true) => Err(BddError::Rejected {
            status,
            error: error_of(&body),
        }),
        (404, false) => Err(BddError::Unsupported),
        (400..=499, _) => Err(BddError::Refused(status)),
        (500..=599, _) => Err(BddError::ServerError(status)),
        (_, _) => Err(BddError::Failed(format!("HTTP {}", status.as_u16()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &'static str) -> BddAnswer {
        BddAnswer {
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn answers_are_classified_as_the_contract_says() {
        let json = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(classify(StatusCode::OK, json(r#"{"success":true}"#), Expect::Json).is_ok());
        assert_eq!(
            classify(
                StatusCode::NOT_FOUND,
                json(r#"{"success":false,"error":"Image non trouvée","stack":"x"}"#),
                Expect::Json
            )
            .unwrap_err(),
            BddError::Rejected {
                status: StatusCode::NOT_FOUND,
                error: Some("Image non trouvée".into())
            }
        );
        assert_eq!(
            classify(
                StatusCode::NOT_FOUND,
                json("<pre>Cannot PATCH</pre>"),
                Expect::Json
            )
            .unwrap_err(),
            BddError::Unsupported
        );
        assert_eq!(
            classify(
                StatusCode::UNAUTHORIZED,
                json(r#"{"error":"bad key"}"#),
                Expect::Json
            )
            .unwrap_err(),
            BddError::Refused(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            classify(
                StatusCode::INTERNAL_SERVER_ERROR,
                json(r#"{"e":1}"#),
                Expect::Json
            )
            .unwrap_err(),
            BddError::ServerError(StatusCode::INTERNAL_SERVER_ERROR)
        );
        // A success that is not JSON is refused where it is read.
        let not_json = classify(StatusCode::OK, json("OK"), Expect::Json).unwrap();
        assert!(matches!(not_json.data(), Err(BddError::Failed(_))));
        assert!(matches!(
            classify(StatusCode::OK, json(" "), Expect::Json),
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
        let raw: &RawValue = serde_json::from_str(
            r#"{"image_id":7,"created_at":"t","user_id":"u\u0041","image_url":"x"}"#,
        )
        .unwrap();
        let record = Record::view(raw);
        assert_eq!(record.id(), Some(json!(7)));
        assert_eq!(record.created_at(), Some(json!("t")));
        assert_eq!(record.image_url().as_deref(), Some("x"));
        assert_eq!(
            record.ownership(&UserId::parse("uA").unwrap()),
            Ownership::Owned
        );
    }

    #[test]
    fn the_owner_check_fails_closed() {
        let a = UserId::parse("user_a").unwrap();
        let owned = |text: &str| {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            Record::view(raw).ownership(&a)
        };
        assert_eq!(owned(r#"{"userId":"user_a"}"#), Ownership::Owned);
        assert_eq!(
            owned(&format!(r#"{{"user_id":"{}"}}"#, a.owner_uuid())),
            Ownership::Owned
        );
        assert_eq!(
            owned(&format!(
                r#"{{"userId":"user_a","user_id":"{}"}}"#,
                a.owner_uuid()
            )),
            Ownership::Owned
        );
        for foreign in [
            r#"{"id":1}"#,
            r#"{"userId":null}"#,
            r#"{"userId":{"id":"user_a"}}"#,
            r#"{"userId":7}"#,
            r#"{"userId":"user_a","userId":"user_b"}"#,
            r#"{"user_id":"user_a","user_id":"user_a"}"#,
            r#"{"userId":"user_a","user_id":"user_b"}"#,
            r#"{"userId":"user_b"}"#,
            r#"["user_a"]"#,
            r#""user_a""#,
        ] {
            assert!(
                matches!(owned(foreign), Ownership::NotOwned(_)),
                "{foreign}"
            );
        }
    }

    #[test]
    fn a_record_answer_must_hold_an_owned_object() {
        let a = UserId::parse("user_a").unwrap();
        assert!(answer(r#"{"data":{"userId":"user_a"}}"#)
            .owned_record(&a)
            .is_ok());
        assert!(matches!(
            answer(r#"{"data":[{"userId":"user_a"}]}"#).owned_record(&a),
            Err(BddError::Failed(_))
        ));
        assert!(matches!(
            answer(r#"{"data":{"userId":"user_a"},"data":{"userId":"user_b"}}"#).owned_record(&a),
            Err(BddError::Failed(_))
        ));
        assert!(matches!(
            answer(r#"{"data":{"userId":"user_b"}}"#).owned_record(&a),
            Err(BddError::NotOwned(_))
        ));
    }

    #[test]
    fn a_page_keeps_only_the_callers_records() {
        let a = UserId::parse("user_a").unwrap();
        let page = owned_page(
            &answer(
                r#"{"data":{"images":[{"userId":"user_a","id":1},{"userId":"user_b"},"odd",{"id":3},{"userId":"user_a","userId":"user_b"}],"pagination":{"total":5}}}"#,
            ),
            &a,
        )
        .unwrap();
        assert_eq!(page.dropped, 4);
        let data: Value = serde_json::from_slice(&page.data).unwrap();
        assert_eq!(data["images"], json!([{"userId":"user_a","id":1}]));
        assert_eq!(data["pagination"]["total"], json!(5));
        for bad in [
            r#"{"data":{"images":{"not":"a list"}}}"#,
            r#"{"data":[1]}"#,
            r#"{"data":{"pagination":{}}}"#,
            r#"{"data":{"images":[],"images":[]}}"#,
        ] {
            assert!(
                matches!(owned_page(&answer(bad), &a), Err(BddError::Failed(_))),
                "{bad}"
            );
        }
        let empty = owned_page(&answer(r#"{"success":true}"#), &a).unwrap();
        assert_eq!(
            &empty.data[..],
            br#"{"images":[],"pagination":{"total":0}}"#
        );
    }

    #[test]
    fn answers_as_the_bdd_writes_them_read_as_any_other_form_of_them() {
        let a = UserId::parse("user_a").unwrap();
        let mine = r#"{"userId":"user_a","id":1}"#;
        // `data`, then what may follow it inside the envelope.
        let cases = [
            (
                format!(r#"{{"images":[{mine}],"pagination":{{"total":1}}}}"#),
                "",
            ),
            (
                format!(r#"{{"images":[{mine},{{"userId":"user_b"}}]}}"#),
                "",
            ),
            (
                format!(r#"{{"images":[{mine}]}}"#),
                r#","data":{"images":[]}"#,
            ),
            (format!(r#"{{"images":[{mine}]}}"#), r#","extra":1"#),
            (format!(r#"[{mine}]"#), ""),
            ("null".to_owned(), ""),
            (mine.to_owned(), ""),
            (r#"{"userId":"user_b"}"#.to_owned(), ""),
            (format!(r#"{{"images":[{mine}]}}x"#), ""),
        ];
        let outcome = |result: Result<OwnedPage, BddError>| match result {
            Ok(page) => Ok((
                serde_json::from_slice::<Value>(&page.data).unwrap(),
                page.dropped,
            )),
            Err(e) => Err(std::mem::discriminant(&e)),
        };
        let one = |result: Result<Record<'_>, BddError>| {
            result
                .map(|r| r.id())
                .map_err(|e| std::mem::discriminant(&e))
        };
        for (data, after) in cases {
            let usual = format!(r#"{{"success":true,"data":{data}{after}}} "#);
            let other = format!(r#"{{ "success": true, "data": {data}{after} }}"#);
            let (usual, other) = (answer(usual.leak()), answer(other.leak()));
            assert!(usual.data_as_written().is_some());
            assert!(other.data_as_written().is_none());
            assert_eq!(
                outcome(owned_page(&usual, &a)),
                outcome(owned_page(&other, &a)),
                "{data}{after}"
            );
            assert_eq!(
                one(usual.owned_record(&a)),
                one(other.owned_record(&a)),
                "{data}{after}"
            );
        }
    }

    #[test]
    fn owner_query_encodes_both_names() {
        let user = UserId::parse("user_A-1").unwrap();
        assert_eq!(owner_query(&user), "userId=user_A-1&user_id=user_A-1");
    }
}
