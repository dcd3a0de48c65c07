//! The benchmark's floor: the cheapest service that makes image-service's
//! upstream calls for the benchmark's one user.
//!
//! A hyper 1 server and a pooled hyper-util client on tokio. No token check,
//! no validation beyond what building the upstream request needs, no logs, no
//! metrics, no security headers, no request id, no rate limit, no
//! idempotency keys, no upload slots, no clean-up after a failure: any
//! upstream failure answers 502. What it does is the work a correct service
//! cannot avoid: read the body, parse the JSON (borrowed strings), decode the
//! base64 (SIMD, in place: the image takes no memory beyond the body's),
//! upload the bytes to Storage, create the record in the BDD service, and
//! answer.
//!
//! The benchmark (`bench/run.py`) runs it beside image-service, pinned to the
//! same CPU, with the same environment, and reports image-service's cost as a
//! multiple of this one's (`bench/README.md`).
//!
//! Configuration, from the environment (the service's names, so both can be
//! started with the same one):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HOST` | `127.0.0.1` | listening address |
//! | `PORT` | `5003` | listening port |
//! | `SUPABASE_URL` | required | Storage base URL |
//! | `SUPABASE_SERVICE_ROLE_KEY` | required | Storage key (`SUPABASE_SERVICE_KEY` accepted too) |
//! | `SUPABASE_BUCKET_NAME` | `images` | bucket |
//! | `BDD_SERVICE_URL` | required | BDD service base URL |
//! | `FLOOR_USER` | `user_bench` | the one user every request is made for |
//!
//! Routes: `GET /api/health`, `GET /api/images?page&limit`,
//! `GET /api/images/{id}`, `POST /api/images`; anything else is a 404.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The service's `MAX_BODY_BYTES` default: a larger body is refused unread.
const MAX_BODY_BYTES: usize = 52_428_800;
const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
const HEALTH: &[u8] = br#"{"success":true,"message":"Service d'images op\u00e9rationnel"}"#;
const NOT_FOUND: &[u8] = br#"{"success":false,"error":"Route non trouv\u00e9e"}"#;
const BAD_REQUEST: &[u8] = br#"{"success":false,"error":"Requ\u00eate invalide"}"#;
const TOO_LARGE: &[u8] = br#"{"success":false,"error":"Image trop volumineuse"}"#;
const UPSTREAM: &[u8] = br#"{"success":false,"error":"Erreur amont"}"#;
const LIST_PATH: &str = "/api/images";
const ONE_PREFIX: &str = "/api/images/";

type Answer = Response<Full<Bytes>>;

/// An upstream call that failed: no connection, a broken answer or a
/// status outside 2xx. Answered 502, nothing more.
struct Upstream;

impl From<hyper_util::client::legacy::Error> for Upstream {
    fn from(_: hyper_util::client::legacy::Error) -> Self {
        Self
    }
}

impl From<hyper::Error> for Upstream {
    fn from(_: hyper::Error) -> Self {
        Self
    }
}

impl From<hyper::http::Error> for Upstream {
    fn from(_: hyper::http::Error) -> Self {
        Self
    }
}

/// Everything a request needs, built once at start-up.
struct Floor {
    client: Client<HttpConnector, Full<Bytes>>,
    user: String,
    /// `{bdd}/api/images?userId={user}&`: a list call appends page and limit.
    list_prefix: String,
    /// `{bdd}/api/images/`: a get appends `{id}{owner_query}`.
    one_prefix: String,
    /// `?userId={user}&user_id={user}`.
    owner_query: String,
    /// `{bdd}/api/images`.
    create_url: String,
    /// `{storage}/storage/v1/object/{bucket}/`.
    upload_prefix: String,
    /// `{storage}/storage/v1/object/public/{bucket}/`.
    public_prefix: String,
    bearer: HeaderValue,
    apikey: HeaderValue,
    empty_object: &'static RawValue,
}

/// The create request, its strings borrowed from the body when they hold no
/// escape.
#[derive(Deserialize)]
struct CreateIn<'a> {
    #[serde(borrow)]
    prompt: Cow<'a, str>,
    #[serde(borrow, rename = "imageData")]
    image_data: Cow<'a, str>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

/// What the BDD service is sent to create the record.
#[derive(Serialize)]
struct RecordOut<'a> {
    #[serde(rename = "userId")]
    user_id: &'a str,
    prompt: &'a str,
    #[serde(rename = "imageUrl")]
    image_url: &'a str,
    metadata: &'a RawValue,
}

/// The BDD service's answer to a create: only the record's id and time.
#[derive(Deserialize)]
struct CreatedIn<'a> {
    #[serde(borrow)]
    data: RecordIn<'a>,
}

#[derive(Deserialize)]
struct RecordIn<'a> {
    #[serde(borrow, alias = "image_id")]
    id: &'a RawValue,
    #[serde(borrow, rename = "createdAt", alias = "created_at", default)]
    created_at: Option<&'a RawValue>,
}

/// The `201` body, shaped like image-service's.
#[derive(Serialize)]
struct CreatedOut<'a> {
    success: bool,
    data: CreatedData<'a>,
}

#[derive(Serialize)]
struct CreatedData<'a> {
    image_id: &'a RawValue,
    user_id: &'a str,
    prompt: &'a str,
    image_url: &'a str,
    created_at: Option<&'a RawValue>,
    status: &'static str,
    metadata: &'a RawValue,
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

fn fixed(status: StatusCode, body: &'static [u8]) -> Answer {
    answer(status, Bytes::from_static(body))
}

/// `page` and `limit` of a list query, as given (digits only), else the
/// defaults: what building the BDD URL needs, and no more.
fn page_and_limit(query: Option<&str>) -> Option<(&str, &str)> {
    let (mut page, mut limit) = (None, None);
    for pair in query.unwrap_or_default().split('&') {
        if let Some(v) = pair.strip_prefix("page=") {
            page = page.or(Some(v));
        } else if let Some(v) = pair.strip_prefix("limit=") {
            limit = limit.or(Some(v));
        }
    }
    let (page, limit) = (page.unwrap_or("1"), limit.unwrap_or("10"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(page) && digits(limit)).then_some((page, limit))
}

/// An id that can go into the BDD path as it is.
fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The whole body, in one buffer sized by `Content-Length`; `None` past
/// [`MAX_BODY_BYTES`] or when the client breaks off.
async fn read_body(mut body: Incoming, hint: usize) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(hint);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf)
}

/// What a create keeps once the JSON body is gone: its small fields, owned,
/// and the image, decoded in place in the body's own buffer (no second
/// buffer for the image; the base64 text is overwritten).
struct NewImage {
    prompt: String,
    metadata: Option<Box<RawValue>>,
    image: Bytes,
}

fn decode_create(mut body: Vec<u8>) -> Option<NewImage> {
    let (prompt, metadata, span) = {
        let input: CreateIn = serde_json::from_slice(&body).ok()?;
        // Where the base64 text lies in the body: serde_json borrows a
        // string without escapes from its input.
        let start = (input.image_data.as_ptr() as usize).checked_sub(body.as_ptr() as usize);
        let span = match (&input.image_data, start) {
            (Cow::Borrowed(text), Some(start)) if start + text.len() <= body.len() => {
                Ok(start..start + text.len())
            }
            // Escapes in the string (an escaped '/'): decode the unescaped copy.
            (text, _) => Err(base64_simd::STANDARD.decode_to_vec(text.as_bytes()).ok()?),
        };
        let metadata = input.metadata.map(ToOwned::to_owned);
        (input.prompt.into_owned(), metadata, span)
    };
    let image = match span {
        Ok(span) => {
            let decoded = base64_simd::STANDARD
                .decode_inplace(&mut body[span.clone()])
                .ok()?
                .len();
            Bytes::from(body).slice(span.start..span.start + decoded)
        }
        Err(copy) => Bytes::from(copy),
    };
    Some(NewImage {
        prompt,
        metadata,
        image,
    })
}

impl Floor {
    fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let required = |name: &str| var(name).ok_or_else(|| format!("{name} is required"));
        let storage = required("SUPABASE_URL")?;
        let storage = storage.trim_end_matches('/');
        let bdd = required("BDD_SERVICE_URL")?;
        let bdd = bdd.trim_end_matches('/');
        let key = var("SUPABASE_SERVICE_ROLE_KEY")
            .or_else(|| var("SUPABASE_SERVICE_KEY"))
            .ok_or("SUPABASE_SERVICE_ROLE_KEY is required")?;
        let bucket = var("SUPABASE_BUCKET_NAME").unwrap_or_else(|| "images".into());
        let user = var("FLOOR_USER").unwrap_or_else(|| "user_bench".into());
        // The service's rule for a user id; such ids need no URL encoding.
        if !plain_id(&user) {
            return Err("FLOOR_USER: expected 1 to 64 of [A-Za-z0-9_-]".into());
        }
        let header =
            |v: String| HeaderValue::try_from(v).map_err(|_| "a key that is no header value");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            list_prefix: format!("{bdd}/api/images?userId={user}&"),
            one_prefix: format!("{bdd}/api/images/"),
            owner_query: format!("?userId={user}&user_id={user}"),
            create_url: format!("{bdd}/api/images"),
            upload_prefix: format!("{storage}/storage/v1/object/{bucket}/"),
            public_prefix: format!("{storage}/storage/v1/object/public/{bucket}/"),
            bearer: header(format!("Bearer {key}"))?,
            apikey: header(key)?,
            empty_object: serde_json::from_str("{}").map_err(|e| e.to_string())?,
            user,
        })
    }

    /// Sends `request`; its answer's status and whole body.
    async fn call(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), Upstream> {
        let response = self.client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// `GET /api/images?page&limit`: the BDD's page, passed through.
    async fn list(&self, query: Option<&str>) -> Answer {
        let Some((page, limit)) = page_and_limit(query) else {
            return fixed(StatusCode::BAD_REQUEST, BAD_REQUEST);
        };
        let url = format!("{}page={page}&limit={limit}", self.list_prefix);
        match self.call(get(url)).await {
            Ok((status, body)) if status.is_success() => answer(StatusCode::OK, body),
            _ => fixed(StatusCode::BAD_GATEWAY, UPSTREAM),
        }
    }

    /// `GET /api/images/{id}`: the BDD's answer, passed through (its 4xx too).
    async fn one(&self, id: &str) -> Answer {
        if !plain_id(id) {
            return fixed(StatusCode::BAD_REQUEST, BAD_REQUEST);
        }
        let url = format!("{}{id}{}", self.one_prefix, self.owner_query);
        match self.call(get(url)).await {
            Ok((status, body)) if !status.is_server_error() => answer(status, body),
            _ => fixed(StatusCode::BAD_GATEWAY, UPSTREAM),
        }
    }

    /// `POST /api/images`: upload to Storage, create the record, answer 201.
    async fn create(&self, request: Request<Incoming>) -> Answer {
        let length = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        if length > MAX_BODY_BYTES {
            return fixed(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE);
        }
        let Some(body) = read_body(request.into_body(), length).await else {
            return fixed(StatusCode::BAD_REQUEST, BAD_REQUEST);
        };
        let Some(new) = decode_create(body) else {
            return fixed(StatusCode::BAD_REQUEST, BAD_REQUEST);
        };
        match self.store(new).await {
            Ok(created) => answer(StatusCode::CREATED, created),
            Err(Upstream) => fixed(StatusCode::BAD_GATEWAY, UPSTREAM),
        }
    }

    async fn store(&self, new: NewImage) -> Result<Vec<u8>, Upstream> {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = format!(
            "{}/{millis}_generated_{}.png",
            self.user,
            uuid::Uuid::new_v4()
        );
        let upload = Request::post(format!("{}{path}", self.upload_prefix))
            .header(AUTHORIZATION, self.bearer.clone())
            .header("apikey", self.apikey.clone())
            .header(CONTENT_TYPE, "image/png")
            .header(CACHE_CONTROL, "max-age=3600")
            .header("x-upsert", "false")
            .body(Full::new(new.image))?;
        let (status, _) = self.call(upload).await?;
        if !status.is_success() {
            return Err(Upstream);
        }

        let image_url = format!("{}{path}", self.public_prefix);
        let metadata = new.metadata.as_deref().unwrap_or(self.empty_object);
        let record = serde_json::to_vec(&RecordOut {
            user_id: &self.user,
            prompt: &new.prompt,
            image_url: &image_url,
            metadata,
        })
        .map_err(|_| Upstream)?;
        let create = Request::post(&self.create_url)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(record)))?;
        let (status, answer) = self.call(create).await?;
        if !status.is_success() {
            return Err(Upstream);
        }
        let created: CreatedIn = serde_json::from_slice(&answer).map_err(|_| Upstream)?;
        serde_json::to_vec(&CreatedOut {
            success: true,
            data: CreatedData {
                image_id: created.data.id,
                user_id: &self.user,
                prompt: &new.prompt,
                image_url: &image_url,
                created_at: created.data.created_at,
                status: "generated",
                metadata,
            },
        })
        .map_err(|_| Upstream)
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Answer, Infallible> {
        let path = request.uri().path();
        let answer = if path == "/api/health" && request.method() == Method::GET {
            fixed(StatusCode::OK, HEALTH)
        } else if path == LIST_PATH && request.method() == Method::GET {
            self.list(request.uri().query()).await
        } else if path == LIST_PATH && request.method() == Method::POST {
            self.create(request).await
        } else if let (Some(id), &Method::GET) = (path.strip_prefix(ONE_PREFIX), request.method()) {
            self.one(id).await
        } else {
            fixed(StatusCode::NOT_FOUND, NOT_FOUND)
        };
        Ok(answer)
    }
}

fn get(url: String) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    match url.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        // Not reached: every part was checked or configured; the pool
        // then fails the call, which answers 502.
        Err(_) => *request.uri_mut() = hyper::Uri::from_static("/"),
    }
    request
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).is_some() {
        eprintln!(
            "bench-floor takes no arguments; see its crate documentation for the environment"
        );
        std::process::exit(2);
    }
    let floor = match Floor::from_env() {
        Ok(floor) => Arc::new(floor),
        Err(problem) => {
            eprintln!("bench-floor: {problem}");
            std::process::exit(2);
        }
    };
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port: u16 = match std::env::var("PORT").map(|p| p.parse()) {
        Ok(Ok(port)) => port,
        Ok(Err(_)) => {
            eprintln!("bench-floor: PORT: expected a port number");
            std::process::exit(2);
        }
        Err(_) => 5003,
    };
    let listener = match tokio::net::TcpListener::bind((host.as_str(), port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("bench-floor: cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    let http1 = hyper::server::conn::http1::Builder::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let floor = floor.clone();
        let connection = http1.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| floor.clone().handle(request)),
        );
        tokio::spawn(connection);
    }
}
