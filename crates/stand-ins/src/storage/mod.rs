//! A local Supabase Storage that answers like the real server (contract §5):
//! refusals are HTTP 400 with the logical code as a string in `statusCode`,
//! removal of missing names is a silent `200 []`, public files need no key.
//!
//! Objects live in memory; with a `data_dir` they are also written to
//! `{data_dir}/{bucket}/{path}`, with their metadata (content type, cache
//! control, id) in `{data_dir}/.meta/{bucket}/{path}.json`, and loaded back at
//! start, so a dev stack keeps its images across restarts.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Deref;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};

use super::server::StandIn;

/// Characters the real server accepts in object keys, besides ASCII letters and digits.
const KEY_PUNCTUATION: &str = " _/!-.*'()&$=@;:+,?";

/// Folder under `data_dir` holding the objects' metadata.
const META_DIR: &str = ".meta";

/// How to run the Storage stand-in.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// The only bearer token accepted (the service role key).
    pub service_key: String,
    /// Buckets that exist (all public).
    pub buckets: Vec<String>,
    /// Where to keep objects on disk; `None` keeps them in memory only.
    pub data_dir: Option<PathBuf>,
    /// Largest object accepted.
    pub max_object_bytes: usize,
    /// Port on 127.0.0.1 (0 = random).
    pub port: u16,
}

impl StorageOptions {
    /// Bucket `images`, in memory, 50 MiB objects, random port.
    pub fn new(service_key: impl Into<String>) -> Self {
        Self {
            service_key: service_key.into(),
            buckets: vec!["images".into()],
            data_dir: None,
            max_object_bytes: 50 * 1024 * 1024,
            port: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct StoredObject {
    bytes: Bytes,
    content_type: String,
    cache_control: String,
    id: String,
    created_at: String,
    updated_at: String,
}

impl StoredObject {
    fn meta_json(&self) -> Value {
        json!({
            "content_type": self.content_type,
            "cache_control": self.cache_control,
            "id": self.id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    /// The object as the remove endpoint lists it.
    fn listing(&self, bucket: &str, name: &str) -> Value {
        json!({
            "name": name,
            "bucket_id": bucket,
            "owner": "",
            "id": self.id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_accessed_at": self.updated_at,
            "metadata": {
                "size": self.bytes.len(),
                "mimetype": self.content_type,
                "cacheControl": self.cache_control,
            },
        })
    }
}

struct StorageState {
    service_key: String,
    data_dir: Option<PathBuf>,
    max_object_bytes: usize,
    created_at: String,
    /// bucket -> (path -> object); a bucket exists iff it has an entry.
    buckets: Mutex<HashMap<String, BTreeMap<String, StoredObject>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The real server's key rule, plus no empty, `.` or `..` segment so that a
/// key always maps to one file strictly inside `data_dir`.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || KEY_PUNCTUATION.contains(c))
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// `{base}/{rel}` only if every part of `rel` is a plain name (second line of
/// defence behind [`valid_key`]).
fn confined(base: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| base.join(rel))
}

fn guess_content_type(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "txt" => "text/plain",
        "html" => "text/html",
        _ => "application/octet-stream",
    }
}

impl StorageState {
    fn object_file(&self, bucket: &str, path: &str) -> Option<(PathBuf, PathBuf)> {
        let dir = self.data_dir.as_ref()?;
        let file = confined(&dir.join(bucket), path)?;
        let meta = confined(&dir.join(META_DIR).join(bucket), &format!("{path}.json"))?;
        Some((file, meta))
    }

    fn persist(&self, bucket: &str, path: &str, obj: &StoredObject) -> io::Result<()> {
        if self.data_dir.is_none() {
            return Ok(());
        }
        let (file, meta) = self
            .object_file(bucket, path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "key escapes data_dir"))?;
        for f in [&file, &meta] {
            if let Some(parent) = f.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        std::fs::write(&file, &obj.bytes)?;
        std::fs::write(&meta, obj.meta_json().to_string())
    }

    fn unpersist(&self, bucket: &str, path: &str) {
        if let Some((file, meta)) = self.object_file(bucket, path) {
            // Already gone is fine: removal is idempotent.
            let _ = std::fs::remove_file(file);
            let _ = std::fs::remove_file(meta);
        }
    }

    fn load_bucket(&self, bucket: &str) -> io::Result<BTreeMap<String, StoredObject>> {
        let mut out = BTreeMap::new();
        let Some(dir) = &self.data_dir else {
            return Ok(out);
        };
        let root = dir.join(bucket);
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let p = entry?.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let Ok(rel) = p.strip_prefix(&root) else {
                    continue;
                };
                let Some(key) = rel
                    .components()
                    .map(|c| c.as_os_str().to_str())
                    .collect::<Option<Vec<_>>>()
                    .map(|parts| parts.join("/"))
                else {
                    continue;
                };
                if !valid_key(&key) {
                    continue;
                }
                let bytes = Bytes::from(std::fs::read(&p)?);
                let meta: Value = self
                    .object_file(bucket, &key)
                    .and_then(|(_, m)| std::fs::read(m).ok())
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(Value::Null);
                let text = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_owned);
                let created_at = text("created_at").unwrap_or_else(now_iso);
                let obj = StoredObject {
                    bytes,
                    content_type: text("content_type")
                        .unwrap_or_else(|| guess_content_type(&key).to_owned()),
                    cache_control: text("cache_control").unwrap_or_else(|| "no-cache".into()),
                    id: text("id").unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                    updated_at: text("updated_at").unwrap_or_else(|| created_at.clone()),
                    created_at,
                };
                out.insert(key, obj);
            }
        }
        Ok(out)
    }
}

/// The local Supabase Storage. Derefs to its [`StandIn`].
pub struct StorageStandIn {
    server: StandIn,
    state: Arc<StorageState>,
}

impl std::fmt::Debug for StorageStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageStandIn")
            .field("server", &self.server)
            .finish()
    }
}

impl Deref for StorageStandIn {
    type Target = StandIn;
    fn deref(&self) -> &StandIn {
        &self.server
    }
}

impl StorageStandIn {
    /// Starts the stand-in, loading objects from `data_dir` when set.
    pub async fn start(opts: StorageOptions) -> io::Result<Self> {
        let mut state = StorageState {
            service_key: opts.service_key,
            data_dir: opts.data_dir,
            max_object_bytes: opts.max_object_bytes,
            created_at: now_iso(),
            buckets: Mutex::new(HashMap::new()),
        };
        let mut buckets = HashMap::new();
        for b in &opts.buckets {
            if !valid_key(b) || b.contains('/') || b == META_DIR {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid bucket name: {b}"),
                ));
            }
            buckets.insert(b.clone(), state.load_bucket(b)?);
        }
        state.buckets = Mutex::new(buckets);
        let state = Arc::new(state);
        let router = Router::new().fallback(handle).with_state(state.clone());
        let server = StandIn::start_with(router, opts.port, storage_status_body).await?;
        Ok(Self { server, state })
    }

    /// The public URL of an object, as the service builds it.
    pub fn public_url(&self, bucket: &str, path: &str) -> String {
        format!(
            "{}/storage/v1/object/public/{bucket}/{path}",
            self.server.url()
        )
    }

    /// An object's bytes and content type.
    pub fn object(&self, bucket: &str, path: &str) -> Option<(Bytes, String)> {
        lock(&self.state.buckets)
            .get(bucket)?
            .get(path)
            .map(|o| (o.bytes.clone(), o.content_type.clone()))
    }

    /// The paths of a bucket's objects, sorted.
    pub fn object_paths(&self, bucket: &str) -> Vec<String> {
        lock(&self.state.buckets)
            .get(bucket)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Seeds an object (overwriting), creating the bucket if needed.
    ///
    /// # Panics
    /// If `path` is not a valid key or the object cannot be written to `data_dir`.
    pub fn put_object(
        &self,
        bucket: &str,
        path: &str,
        bytes: impl Into<Bytes>,
        content_type: &str,
    ) {
        assert!(valid_key(path), "invalid object key: {path}");
        let now = now_iso();
        let obj = StoredObject {
            bytes: bytes.into(),
            content_type: content_type.to_owned(),
            cache_control: "no-cache".into(),
            id: uuid::Uuid::new_v4().to_string(),
            created_at: now.clone(),
            updated_at: now,
        };
        let mut buckets = lock(&self.state.buckets);
        self.state
            .persist(bucket, path, &obj)
            .expect("cannot write seeded object");
        buckets
            .entry(bucket.to_owned())
            .or_default()
            .insert(path.to_owned(), obj);
    }
}

/// The real server's refusal shape: HTTP 400 (500 for its own faults), the
/// logical code as a string.
fn refusal(code: &str, error: &str, message: &str) -> Response {
    let status = if code.starts_with('5') {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    json_response(
        status,
        &json!({"statusCode": code, "error": error, "message": message}),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// A status fault as the real server answers it: a 4xx is a refusal, sent as
/// HTTP 400 with the code in `statusCode`; a 5xx keeps its HTTP status.
fn storage_status_body(status: StatusCode) -> Response {
    let code = status.as_u16();
    let http_status = if status.is_client_error() {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    let (error, message) = match code {
        500 => ("internal", "Internal Server Error"),
        413 => (
            "Payload too large",
            "The object exceeded the maximum allowed size",
        ),
        409 => ("Duplicate", "The resource already exists"),
        404 => ("not_found", "Object not found"),
        403 => ("AccessDenied", "Invalid or missing service key"),
        _ => (
            status.canonical_reason().unwrap_or("error"),
            status.canonical_reason().unwrap_or("error"),
        ),
    };
    json_response(
        http_status,
        &json!({"statusCode": code.to_string(), "error": error, "message": message}),
    )
}

fn internal() -> Response {
    refusal("500", "internal", "Internal Server Error")
}

fn bucket_not_found() -> Response {
    refusal("404", "Bucket not found", "Bucket not found")
}

fn object_not_found() -> Response {
    refusal("404", "not_found", "Object not found")
}

fn authorized(state: &StorageState, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("bearer") && token == state.service_key
        })
}

fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

async fn handle(State(state): State<Arc<StorageState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The recording middleware already buffered the body within its limit.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let method = parts.method;
    let raw = parts.uri.path();
    let not_route = || {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({
                "statusCode": 404,
                "error": "Not Found",
                "message": format!("Route {method}:{raw} not found"),
            }),
        )
    };
    let Some(rest) = raw.strip_prefix("/storage/v1/") else {
        return not_route();
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["object", "public", bucket, key @ ..] if !key.is_empty() => {
            if method != Method::GET && method != Method::HEAD {
                return not_route();
            }
            serve_object(&state, bucket, &key.join("/"), method == Method::HEAD)
        }
        _ if !authorized(&state, &parts.headers) => {
            refusal("403", "AccessDenied", "Invalid or missing service key")
        }
        ["bucket"] | ["bucket", ""] if method == Method::GET => list_buckets(&state),
        ["bucket", bucket] if method == Method::GET => get_bucket(&state, bucket),
        ["object", bucket] if method == Method::DELETE => remove(&state, bucket, &body),
        ["object", bucket, key @ ..] if !key.is_empty() => {
            let key = key.join("/");
            match method {
                Method::POST => upload(&state, bucket, &key, &parts.headers, body, false),
                Method::PUT => upload(&state, bucket, &key, &parts.headers, body, true),
                Method::GET => serve_object(&state, bucket, &key, false),
                Method::HEAD => serve_object(&state, bucket, &key, true),
                Method::DELETE => remove_one(&state, bucket, &key),
                _ => not_route(),
            }
        }
        _ => not_route(),
    }
}

fn bucket_json(state: &StorageState, name: &str) -> Value {
    json!({
        "id": name,
        "name": name,
        "public": true,
        "owner": "",
        "created_at": state.created_at,
        "updated_at": state.created_at,
        "file_size_limit": state.max_object_bytes,
        "allowed_mime_types": null,
    })
}

fn list_buckets(state: &StorageState) -> Response {
    let mut names: Vec<String> = lock(&state.buckets).keys().cloned().collect();
    names.sort();
    let list: Vec<Value> = names.iter().map(|n| bucket_json(state, n)).collect();
    json_response(StatusCode::OK, &Value::Array(list))
}

fn get_bucket(state: &StorageState, raw_bucket: &str) -> Response {
    let Some(bucket) = decode(raw_bucket) else {
        return bucket_not_found();
    };
    if !lock(&state.buckets).contains_key(&bucket) {
        return bucket_not_found();
    }
    json_response(StatusCode::OK, &bucket_json(state, &bucket))
}

fn upload(
    state: &StorageState,
    raw_bucket: &str,
    raw_key: &str,
    headers: &HeaderMap,
    body: Bytes,
    upsert_route: bool,
) -> Response {
    let Some(bucket) = decode(raw_bucket) else {
        return bucket_not_found();
    };
    let key = decode(raw_key).unwrap_or_else(|| raw_key.to_owned());
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let upsert = upsert_route || header_text("x-upsert") == Some("true");
    let content_type = header_text("content-type")
        .filter(|v| !v.is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let cache_control = header_text("cache-control")
        .map(|v| v.to_owned())
        .unwrap_or_else(|| "no-cache".into());

    let mut buckets = lock(&state.buckets);
    let Some(objects) = buckets.get_mut(&bucket) else {
        return bucket_not_found();
    };
    if !valid_key(&key) {
        return refusal("400", "InvalidKey", &format!("Invalid key: {key}"));
    }
    if body.len() > state.max_object_bytes {
        return refusal(
            "413",
            "Payload too large",
            "The object exceeded the maximum allowed size",
        );
    }
    let existing = objects.get(&key);
    if existing.is_some() && !upsert {
        return refusal("409", "Duplicate", "The resource already exists");
    }
    let now = now_iso();
    let obj = StoredObject {
        bytes: body,
        content_type,
        cache_control,
        id: uuid::Uuid::new_v4().to_string(),
        created_at: existing.map_or_else(|| now.clone(), |o| o.created_at.clone()),
        updated_at: now,
    };
    // Written while holding the lock so disk and memory never disagree on
    // which of two racing uploads won.
    if let Err(e) = state.persist(&bucket, &key, &obj) {
        tracing::warn!(error = %e, "storage stand-in could not write object");
        return internal();
    }
    let id = obj.id.clone();
    objects.insert(key.clone(), obj);
    json_response(
        StatusCode::OK,
        &json!({"Key": format!("{bucket}/{key}"), "Id": id}),
    )
}

fn remove(state: &StorageState, raw_bucket: &str, body: &[u8]) -> Response {
    let Some(bucket) = decode(raw_bucket) else {
        return bucket_not_found();
    };
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return refusal("400", "Bad Request", "Body is not valid JSON"),
    };
    let prefixes: Vec<String> = match parsed.get("prefixes").and_then(Value::as_array) {
        None => {
            return refusal(
                "400",
                "Bad Request",
                "body must have required property 'prefixes'",
            )
        }
        Some(list) if list.is_empty() => {
            return refusal(
                "400",
                "Bad Request",
                "body/prefixes must NOT have fewer than 1 items",
            )
        }
        Some(list) => match list
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
        {
            Some(p) => p,
            None => return refusal("400", "Bad Request", "body/prefixes/0 must be string"),
        },
    };
    let mut buckets = lock(&state.buckets);
    let Some(objects) = buckets.get_mut(&bucket) else {
        return bucket_not_found();
    };
    let mut removed = Vec::new();
    for name in prefixes {
        if let Some(obj) = objects.remove(&name) {
            state.unpersist(&bucket, &name);
            removed.push(obj.listing(&bucket, &name));
        }
    }
    json_response(StatusCode::OK, &Value::Array(removed))
}

fn remove_one(state: &StorageState, raw_bucket: &str, raw_key: &str) -> Response {
    let (Some(bucket), Some(key)) = (decode(raw_bucket), decode(raw_key)) else {
        return object_not_found();
    };
    let mut buckets = lock(&state.buckets);
    let Some(objects) = buckets.get_mut(&bucket) else {
        return bucket_not_found();
    };
    if objects.remove(&key).is_none() {
        return object_not_found();
    }
    state.unpersist(&bucket, &key);
    json_response(StatusCode::OK, &json!({"message": "Successfully deleted"}))
}

fn serve_object(state: &StorageState, raw_bucket: &str, raw_key: &str, head: bool) -> Response {
    let (Some(bucket), Some(key)) = (decode(raw_bucket), decode(raw_key)) else {
        return object_not_found();
    };
    let buckets = lock(&state.buckets);
    let Some(objects) = buckets.get(&bucket) else {
        return bucket_not_found();
    };
    let Some(obj) = objects.get(&key) else {
        return object_not_found();
    };
    let content_type = HeaderValue::from_str(&obj.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let cache_control =
        HeaderValue::from_str(&obj.cache_control).unwrap_or(HeaderValue::from_static("no-cache"));
    let etag = HeaderValue::from_str(&format!("\"{}\"", obj.id))
        .unwrap_or(HeaderValue::from_static("\"0\""));
    let body = if head {
        Bytes::new()
    } else {
        obj.bytes.clone()
    };
    let mut resp = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache_control),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response();
    if head {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(obj.bytes.len()));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rule_matches_the_real_server_and_stays_inside() {
        assert!(valid_key("user_1/1718000000000_generated_x.png"));
        assert!(valid_key("a b/(c)!.txt"));
        for bad in ["", "a/../b", "..", "a//b", "é.png", "a\\b", "a#b", "/a"] {
            assert!(!valid_key(bad), "{bad:?} accepted");
        }
        assert!(confined(Path::new("/d"), "a/../b").is_none());
    }
}
