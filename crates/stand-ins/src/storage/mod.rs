//! A local Supabase Storage that answers like the real one: storage-api
//! 1.11.2 behind Supabase's API gateway, as measured (contract §5; the
//! measured answers are the fixtures in `tests/fixtures/storage-*`).
//!
//! - Refusals are HTTP 400 (500 for its own faults) with
//!   `{"statusCode":"<logical code>","error","message","code"}`.
//! - Keys are JWTs under the project's JWT secret ([`keys`]): the
//!   `service_role` key (and the configured service key) may do anything; a
//!   valid key of another role meets row-level security with no policy, as
//!   on a fresh project: it sees nothing and may write nothing.
//! - Routes: buckets (list, get, create); objects (upload, update, download,
//!   public, info, list, remove, copy, move); signed URLs (sign one or many,
//!   download with `?token=`). Unknown routes answer like the real server.
//! - Object answers carry `etag` (MD5 of the bytes), `last-modified`,
//!   `accept-ranges`, `x-robots-tag`, and honour `If-None-Match`,
//!   `If-Modified-Since` and `Range`.
//! - The gateway's CORS ([`gateway`]) wraps it all.
//!
//! Objects live in memory; with a `data_dir` they are also written to
//! `{data_dir}/{bucket}/{path}`, with their metadata (content type, cache
//! control, id, version, times) in `{data_dir}/.meta/{bucket}/{path}.json`,
//! and buckets created through the API in `{data_dir}/.buckets.json`; all are
//! loaded back at start, so a dev stack keeps its images across restarts.

mod gateway;
pub mod keys;
mod multipart;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Deref;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

pub use keys::{api_key, DEFAULT_JWT_SECRET, LOCAL_ANON_KEY, LOCAL_SERVICE_ROLE_KEY};

use super::server::StandIn;

/// Characters the real server accepts in object keys, besides ASCII letters and digits.
const KEY_PUNCTUATION: &str = " _/!-.*'()&$=@;:+,?";

/// Folder under `data_dir` holding the objects' metadata.
const META_DIR: &str = ".meta";

/// File under `data_dir` listing the buckets created through the API.
const BUCKETS_FILE: &str = ".buckets.json";

/// Entries a list call returns when the body names no `limit`.
const DEFAULT_LIST_LIMIT: usize = 100;

/// What `encodeURIComponent` leaves alone (for `Content-Disposition`).
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// How to run the Storage stand-in.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// A bearer token accepted as the service role whatever its form (tests
    /// use a plain word; the real server would want a JWT, see [`keys`]).
    pub service_key: String,
    /// The project's JWT secret: keys and signed-URL tokens are checked with it.
    pub jwt_secret: String,
    /// Buckets that exist from the start (all public).
    pub buckets: Vec<String>,
    /// Where to keep objects on disk; `None` keeps them in memory only.
    pub data_dir: Option<PathBuf>,
    /// Largest object accepted (the real server's default: 50 MiB).
    pub max_object_bytes: usize,
    /// Port on 127.0.0.1 (0 = random).
    pub port: u16,
}

impl StorageOptions {
    /// Bucket `images`, the local JWT secret, in memory, 50 MiB objects, random port.
    pub fn new(service_key: impl Into<String>) -> Self {
        Self {
            service_key: service_key.into(),
            jwt_secret: DEFAULT_JWT_SECRET.into(),
            buckets: vec!["images".into()],
            data_dir: None,
            max_object_bytes: 50 * 1024 * 1024,
            port: 0,
        }
    }
}

type Time = DateTime<Utc>;

/// `2026-11-30T14:02:02.841Z`, as the real server writes times.
fn iso(t: &Time) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `Mon, 30 Nov 2026 14:02:02 GMT`, for `last-modified` and `expires`.
fn http_date(t: &Time) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn parse_time(v: Option<&Value>) -> Option<Time> {
    DateTime::parse_from_rfc3339(v?.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The real server's `eTag`: the MD5 of the bytes, quoted.
fn etag_of(bytes: &[u8]) -> String {
    let digest = Md5::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// What an object was stored with, as an upload or a seed gives it.
struct Incoming {
    bytes: Bytes,
    content_type: String,
    cache_control: String,
    user_metadata: Value,
}

#[derive(Debug, Clone)]
struct StoredObject {
    bytes: Bytes,
    content_type: String,
    cache_control: String,
    id: String,
    version: String,
    etag: String,
    created_at: Time,
    updated_at: Time,
    last_accessed_at: Time,
    user_metadata: Value,
}

impl StoredObject {
    fn new(incoming: Incoming, at: Time) -> Self {
        Self {
            etag: etag_of(&incoming.bytes),
            bytes: incoming.bytes,
            content_type: incoming.content_type,
            cache_control: incoming.cache_control,
            id: new_id(),
            version: new_id(),
            created_at: at,
            updated_at: at,
            last_accessed_at: at,
            user_metadata: incoming.user_metadata,
        }
    }

    /// This object overwritten by `incoming` (upsert): same id and creation
    /// time, a new version.
    fn replaced(&self, incoming: Incoming, at: Time) -> Self {
        Self {
            id: self.id.clone(),
            created_at: self.created_at,
            last_accessed_at: self.last_accessed_at,
            ..Self::new(incoming, at)
        }
    }

    /// The `metadata` column: what the backend knows of the bytes.
    fn metadata(&self) -> Value {
        json!({
            "eTag": self.etag,
            "size": self.bytes.len(),
            "mimetype": self.content_type,
            "cacheControl": self.cache_control,
            "lastModified": iso(&self.updated_at),
            "contentLength": self.bytes.len(),
            "httpStatusCode": 200,
        })
    }

    /// The object's row, as the remove call returns it.
    fn row(&self, bucket: &str, name: &str) -> Value {
        json!({
            "name": name,
            "bucket_id": bucket,
            "owner": "",
            "owner_id": "",
            "version": self.version,
            "id": self.id,
            "updated_at": iso(&self.updated_at),
            "created_at": iso(&self.created_at),
            "last_accessed_at": iso(&self.last_accessed_at),
            "metadata": self.metadata(),
            "user_metadata": self.user_metadata,
        })
    }

    /// The object as the list call shows it, under its name relative to the folder.
    fn entry(&self, name: &str) -> Value {
        json!({
            "name": name,
            "id": self.id,
            "updated_at": iso(&self.updated_at),
            "created_at": iso(&self.created_at),
            "last_accessed_at": iso(&self.last_accessed_at),
            "metadata": self.metadata(),
        })
    }

    fn meta_json(&self) -> Value {
        json!({
            "content_type": self.content_type,
            "cache_control": self.cache_control,
            "id": self.id,
            "version": self.version,
            "created_at": iso(&self.created_at),
            "updated_at": iso(&self.updated_at),
            "last_accessed_at": iso(&self.last_accessed_at),
            "user_metadata": self.user_metadata,
        })
    }

    /// An object read back from disk; metadata written by older stand-ins
    /// (or none) gets defaults.
    fn from_disk(bytes: Bytes, key: &str, meta: &Value) -> Self {
        let text = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_owned);
        let created_at = parse_time(meta.get("created_at")).unwrap_or_else(Utc::now);
        let updated_at = parse_time(meta.get("updated_at")).unwrap_or(created_at);
        Self {
            etag: etag_of(&bytes),
            bytes,
            content_type: text("content_type")
                .unwrap_or_else(|| guess_content_type(key).to_owned()),
            cache_control: text("cache_control").unwrap_or_else(|| "no-cache".into()),
            id: text("id").unwrap_or_else(new_id),
            version: text("version").unwrap_or_else(new_id),
            created_at,
            updated_at,
            last_accessed_at: parse_time(meta.get("last_accessed_at")).unwrap_or(created_at),
            user_metadata: meta
                .get("user_metadata")
                .filter(|v| v.is_object())
                .cloned()
                .unwrap_or_else(|| json!({})),
        }
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    public: bool,
    file_size_limit: Option<u64>,
    allowed_mime_types: Option<Vec<String>>,
    created_at: Time,
    /// Created through the API (so listed in `.buckets.json`).
    created_by_api: bool,
    objects: BTreeMap<String, StoredObject>,
}

impl Bucket {
    fn json(&self, name: &str, with_type: bool) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(name));
        out.insert("name".into(), json!(name));
        out.insert("owner".into(), json!(""));
        out.insert("public".into(), json!(self.public));
        // The list call shows the bucket type; the get call does not.
        if with_type {
            out.insert("type".into(), json!("STANDARD"));
        }
        out.insert("file_size_limit".into(), json!(self.file_size_limit));
        out.insert("allowed_mime_types".into(), json!(self.allowed_mime_types));
        out.insert("created_at".into(), json!(iso(&self.created_at)));
        out.insert("updated_at".into(), json!(iso(&self.created_at)));
        Value::Object(out)
    }
}

struct StorageState {
    service_key: String,
    jwt_secret: String,
    data_dir: Option<PathBuf>,
    max_object_bytes: usize,
    buckets: Mutex<BTreeMap<String, Bucket>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// The real server's bucket name rule; a leading `.` is refused too, so a
/// bucket's folder never meets the stand-in's own files in `data_dir`.
fn valid_bucket_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _!-.*'()&$=@;:+,?".contains(c))
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

    /// Writes the buckets created through the API to `.buckets.json`.
    fn persist_buckets(&self, buckets: &BTreeMap<String, Bucket>) -> io::Result<()> {
        let Some(dir) = &self.data_dir else {
            return Ok(());
        };
        let listed: Map<String, Value> = buckets
            .iter()
            .filter(|(_, b)| b.created_by_api)
            .map(|(name, b)| {
                (
                    name.clone(),
                    json!({
                        "public": b.public,
                        "file_size_limit": b.file_size_limit,
                        "allowed_mime_types": b.allowed_mime_types,
                        "created_at": iso(&b.created_at),
                    }),
                )
            })
            .collect();
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(BUCKETS_FILE), Value::Object(listed).to_string())
    }

    /// The buckets `.buckets.json` lists.
    fn load_api_buckets(&self) -> io::Result<BTreeMap<String, Bucket>> {
        let mut out = BTreeMap::new();
        let Some(dir) = &self.data_dir else {
            return Ok(out);
        };
        let bytes = match std::fs::read(dir.join(BUCKETS_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        let listed: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        for (name, b) in listed {
            if !valid_bucket_name(&name) {
                continue;
            }
            let bucket = Bucket {
                public: b.get("public").and_then(Value::as_bool).unwrap_or(false),
                file_size_limit: b.get("file_size_limit").and_then(Value::as_u64),
                allowed_mime_types: b.get("allowed_mime_types").and_then(|v| {
                    v.as_array().map(|a| {
                        a.iter()
                            .filter_map(|m| m.as_str().map(str::to_owned))
                            .collect()
                    })
                }),
                created_at: parse_time(b.get("created_at")).unwrap_or_else(Utc::now),
                created_by_api: true,
                objects: BTreeMap::new(),
            };
            out.insert(name, bucket);
        }
        Ok(out)
    }

    fn load_objects(&self, bucket: &str) -> io::Result<BTreeMap<String, StoredObject>> {
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
                let obj = StoredObject::from_disk(bytes, &key, &meta);
                out.insert(key, obj);
            }
        }
        Ok(out)
    }
}

/// What the stand-in knows of a stored object, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's id (kept by an upsert).
    pub id: String,
    /// Its version (new at every write).
    pub version: String,
    /// Content type it is served with.
    pub content_type: String,
    /// `cache-control` it is served with.
    pub cache_control: String,
    /// The quoted MD5 of its bytes.
    pub etag: String,
    /// When it was first stored.
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
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
    /// Starts the stand-in, loading buckets and objects from `data_dir` when set.
    pub async fn start(opts: StorageOptions) -> io::Result<Self> {
        let state = StorageState {
            service_key: opts.service_key,
            jwt_secret: opts.jwt_secret,
            data_dir: opts.data_dir,
            max_object_bytes: opts.max_object_bytes,
            buckets: Mutex::new(BTreeMap::new()),
        };
        let mut buckets = state.load_api_buckets()?;
        let started = Utc::now();
        for name in &opts.buckets {
            if !valid_bucket_name(name) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid bucket name: {name}"),
                ));
            }
            buckets.entry(name.clone()).or_insert_with(|| Bucket {
                public: true,
                file_size_limit: None,
                allowed_mime_types: None,
                created_at: started,
                created_by_api: false,
                objects: BTreeMap::new(),
            });
        }
        for (name, bucket) in buckets.iter_mut() {
            bucket.objects = state.load_objects(name)?;
        }
        *lock(&state.buckets) = buckets;
        let state = Arc::new(state);
        let router = Router::new().fallback(handle).with_state(state.clone());
        let server = StandIn::start_behind(router, opts.port, storage_status_body, |app| {
            app.layer(axum::middleware::from_fn(gateway::cors))
        })
        .await?;
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
            .objects
            .get(path)
            .map(|o| (o.bytes.clone(), o.content_type.clone()))
    }

    /// An object's id, version, times and headers.
    pub fn object_info(&self, bucket: &str, path: &str) -> Option<ObjectInfo> {
        lock(&self.state.buckets)
            .get(bucket)?
            .objects
            .get(path)
            .map(|o| ObjectInfo {
                id: o.id.clone(),
                version: o.version.clone(),
                content_type: o.content_type.clone(),
                cache_control: o.cache_control.clone(),
                etag: o.etag.clone(),
                created_at: o.created_at,
                updated_at: o.updated_at,
            })
    }

    /// The paths of a bucket's objects, sorted.
    pub fn object_paths(&self, bucket: &str) -> Vec<String> {
        lock(&self.state.buckets)
            .get(bucket)
            .map(|b| b.objects.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Seeds an object (overwriting), created now, creating the bucket if needed.
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
        self.put_object_at(bucket, path, bytes, content_type, Utc::now());
    }

    /// Seeds an object (overwriting) as if created and last written at
    /// `created_at`, creating the bucket if needed: for tests that compare
    /// the times the list call shows.
    ///
    /// # Panics
    /// If `path` is not a valid key or the object cannot be written to `data_dir`.
    pub fn put_object_at(
        &self,
        bucket: &str,
        path: &str,
        bytes: impl Into<Bytes>,
        content_type: &str,
        created_at: DateTime<Utc>,
    ) {
        assert!(valid_key(path), "invalid object key: {path}");
        assert!(valid_bucket_name(bucket), "invalid bucket name: {bucket}");
        let obj = StoredObject::new(
            Incoming {
                bytes: bytes.into(),
                content_type: content_type.to_owned(),
                cache_control: "no-cache".into(),
                user_metadata: json!({}),
            },
            created_at,
        );
        let mut buckets = lock(&self.state.buckets);
        self.state
            .persist(bucket, path, &obj)
            .expect("cannot write seeded object");
        buckets
            .entry(bucket.to_owned())
            .or_insert_with(|| Bucket {
                public: true,
                file_size_limit: None,
                allowed_mime_types: None,
                created_at: Utc::now(),
                created_by_api: false,
                objects: BTreeMap::new(),
            })
            .objects
            .insert(path.to_owned(), obj);
    }
}

// ------------------------------------------------------------------ answers

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

/// A refusal as the real server renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// The HTTP status: 400 for every refusal, 500 for the server's faults,
    /// a few exceptions (416, 429).
    http: StatusCode,
    /// The logical code, sent as a string in `statusCode`.
    status_code: String,
    error: String,
    message: String,
    code: &'static str,
}

impl Failure {
    fn new(http: u16, logical: &str, error: &str, message: &str, code: &'static str) -> Self {
        Self {
            http: StatusCode::from_u16(http).unwrap_or(StatusCode::BAD_REQUEST),
            status_code: logical.to_owned(),
            error: error.to_owned(),
            message: message.to_owned(),
            code,
        }
    }

    fn no_such_bucket() -> Self {
        Self::new(
            400,
            "404",
            "Bucket not found",
            "Bucket not found",
            "NoSuchBucket",
        )
    }

    fn no_such_key() -> Self {
        Self::new(400, "404", "not_found", "Object not found", "NoSuchKey")
    }

    fn key_exists() -> Self {
        Self::new(
            400,
            "409",
            "Duplicate",
            "The resource already exists",
            "KeyAlreadyExists",
        )
    }

    fn bucket_exists() -> Self {
        Self::new(
            400,
            "409",
            "Duplicate",
            "The resource already exists",
            "BucketAlreadyExists",
        )
    }

    fn access_denied(message: &str) -> Self {
        Self::new(400, "403", "Unauthorized", message, "AccessDenied")
    }

    /// What a role without the service role meets when it writes: row-level
    /// security with no policy.
    fn row_level_security() -> Self {
        Self::access_denied("new row violates row-level security policy")
    }

    fn invalid_key(key: &str) -> Self {
        Self::new(
            400,
            "400",
            "InvalidKey",
            &format!("Invalid key: {key}"),
            "InvalidKey",
        )
    }

    fn too_large() -> Self {
        Self::new(
            400,
            "413",
            "Payload too large",
            "The object exceeded the maximum allowed size",
            "EntityTooLarge",
        )
    }

    /// A request that fails the route's schema.
    fn invalid_request(message: &str) -> Self {
        Self::new(400, "400", "Error", message, "InvalidRequest")
    }

    fn body_not_json() -> Self {
        Self::new(
            400,
            "400",
            "FastifyError",
            "Body is not valid JSON but content-type is set to 'application/json'",
            "InvalidRequest",
        )
    }

    fn invalid_jwt(message: &str) -> Self {
        Self::new(400, "400", "InvalidJWT", message, "InvalidJWT")
    }

    fn invalid_signature(message: &str) -> Self {
        Self::new(400, "400", "InvalidSignature", message, "InvalidSignature")
    }

    fn invalid_range() -> Self {
        Self::new(
            416,
            "416",
            "invalid_range",
            "invalid range provided",
            "InvalidRange",
        )
    }

    fn invalid_mime_type(mime: &str) -> Self {
        Self::new(
            400,
            "415",
            "invalid_mime_type",
            &format!("mime type {mime} is not supported"),
            "InvalidMimeType",
        )
    }

    fn invalid_bucket_name() -> Self {
        Self::new(
            400,
            "400",
            "Invalid Input",
            "Bucket name invalid",
            "InvalidBucketName",
        )
    }

    fn no_content() -> Self {
        Self::new(
            400,
            "400",
            "InvalidRequest",
            "No content provided",
            "InvalidRequest",
        )
    }

    fn internal() -> Self {
        Self::new(
            500,
            "500",
            "InternalError",
            "Internal server error",
            "InternalError",
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        json_response(
            self.http,
            &json!({
                "statusCode": self.status_code,
                "error": self.error,
                "message": self.message,
                "code": self.code,
            }),
        )
    }
}

/// A status fault as the real server answers it: a 4xx is a refusal, sent as
/// HTTP 400 with the code in `statusCode`; a 5xx keeps its HTTP status.
fn storage_status_body(status: StatusCode) -> Response {
    let code = status.as_u16();
    let failure = match code {
        400 => Failure::invalid_request("Bad Request"),
        // A key the server does not take, e.g. after its JWT secret rotated.
        403 => Failure::access_denied("signature verification failed"),
        404 => Failure::no_such_key(),
        409 => Failure::key_exists(),
        413 => Failure::too_large(),
        416 => Failure::invalid_range(),
        // The database refusing connections is the one 4xx sent as itself.
        429 => Failure::new(
            429,
            "429",
            "too_many_connections",
            "Too many connections issued to the database",
            "SlowDown",
        ),
        500 => Failure::internal(),
        _ => {
            let reason = status.canonical_reason().unwrap_or("error");
            let http = if status.is_client_error() { 400 } else { code };
            let kind = if status.is_client_error() {
                "InvalidRequest"
            } else {
                "InternalError"
            };
            Failure::new(http, &code.to_string(), reason, reason, kind)
        }
    };
    failure.into_response()
}

// ------------------------------------------------------------------ callers

/// Who is calling, once the key is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The service role: no row-level security.
    Service,
    /// A valid key of another role (`anon`, a user): row-level security with
    /// no policy, so it sees no object and may write none.
    Restricted,
    /// No key, or a bad one, on a route that allows that (public reads).
    Anonymous,
}

/// Whether a route demands a valid key or merely reads one if present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Required,
    Optional,
}

fn caller(state: &StorageState, headers: &HeaderMap, key: Key) -> Result<Caller, Failure> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return match key {
            Key::Optional => Ok(Caller::Anonymous),
            Key::Required => Err(Failure::invalid_request(
                "headers must have required property 'authorization'",
            )),
        };
    };
    let raw = value.to_str().unwrap_or("");
    // The real server strips `Bearer ` (any case, any spaces) and keeps the rest.
    let token = match raw.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => raw[7..].trim_start(),
        _ => raw,
    };
    if token.is_empty() && key == Key::Optional {
        return Ok(Caller::Anonymous);
    }
    if token == state.service_key {
        return Ok(Caller::Service);
    }
    match keys::verify(token, &state.jwt_secret) {
        Ok(claims) if claims.get("role").and_then(Value::as_str) == Some("service_role") => {
            Ok(Caller::Service)
        }
        Ok(_) => Ok(Caller::Restricted),
        Err(_) if key == Key::Optional => Ok(Caller::Anonymous),
        Err(reason) => Err(Failure::access_denied(&reason)),
    }
}

// ------------------------------------------------------------------ bodies

fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// A JSON body as the real server's parser takes it.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Failure> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if body.is_empty() {
        if is_json {
            return Err(Failure::new(
                400,
                "400",
                "FastifyError",
                "Body cannot be empty when content-type is set to 'application/json'",
                "InvalidRequest",
            ));
        }
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|_| Failure::body_not_json())
}

/// The checks of a route's body schema, in the schema validator's words.
struct Schema<'a> {
    body: &'a Map<String, Value>,
}

impl<'a> Schema<'a> {
    fn of(body: &'a Value) -> Result<Self, Failure> {
        body.as_object()
            .map(|body| Self { body })
            .ok_or_else(|| Failure::invalid_request("body must be object"))
    }

    fn require(&self, names: &[&str]) -> Result<(), Failure> {
        match names.iter().find(|n| !self.body.contains_key(**n)) {
            Some(missing) => Err(Failure::invalid_request(&format!(
                "body must have required property '{missing}'"
            ))),
            None => Ok(()),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, Failure> {
        match self.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Failure::invalid_request(&format!(
                "body/{name} must be string"
            ))),
        }
    }

    fn integer(&self, name: &str, minimum: i64) -> Result<Option<i64>, Failure> {
        match self.body.get(name) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                None => Err(Failure::invalid_request(&format!(
                    "body/{name} must be integer"
                ))),
                Some(n) if n < minimum => Err(Failure::invalid_request(&format!(
                    "body/{name} must be >= {minimum}"
                ))),
                Some(n) => Ok(Some(n)),
            },
        }
    }

    fn strings(&self, name: &str, min_items: usize) -> Result<Option<Vec<String>>, Failure> {
        let Some(v) = self.body.get(name) else {
            return Ok(None);
        };
        let Some(items) = v.as_array() else {
            return Err(Failure::invalid_request(&format!(
                "body/{name} must be array"
            )));
        };
        if items.len() < min_items {
            return Err(Failure::invalid_request(&format!(
                "body/{name} must NOT have fewer than {min_items} items"
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    Failure::invalid_request(&format!("body/{name}/{i} must be string"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

// ------------------------------------------------------------------ routing

/// One request, taken apart.
struct Call<'a> {
    state: &'a StorageState,
    method: Method,
    headers: HeaderMap,
    query: Option<String>,
    body: Bytes,
}

impl Call<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_deref()?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    fn caller(&self, key: Key) -> Result<Caller, Failure> {
        caller(self.state, &self.headers, key)
    }
}

async fn handle(State(state): State<Arc<StorageState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The recording middleware already buffered the body within its limit.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    // The gateway routes `/storage/v1/*` to Storage with the prefix removed.
    let path = match parts.uri.path().strip_prefix("/storage/v1") {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => return gateway::no_route(),
    };
    let call = Call {
        state: &state,
        method: parts.method.clone(),
        headers: parts.headers,
        query: parts.uri.query().map(str::to_owned),
        body,
    };
    let mut resp = route(&call, path).unwrap_or_else(IntoResponse::into_response);
    if call.method == Method::HEAD {
        // Headers as for GET, no body: keep the length GET would have sent.
        let len = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .cloned()
            .unwrap_or(HeaderValue::from(0));
        let (mut head, _) = resp.into_parts();
        head.headers.insert(header::CONTENT_LENGTH, len);
        resp = Response::from_parts(head, axum::body::Body::empty());
    }
    resp
}

fn route(call: &Call<'_>, path: &str) -> Result<Response, Failure> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let joined = |key: &[&str]| key.join("/");
    let get = call.method == Method::GET;
    let read = get || call.method == Method::HEAD;
    match (&call.method, segments.as_slice()) {
        (&Method::GET, ["bucket"] | ["bucket", ""]) => list_buckets(call),
        (&Method::POST, ["bucket"] | ["bucket", ""]) => create_bucket(call),
        (&Method::GET, ["bucket", bucket]) => get_bucket(call, bucket),
        (&Method::POST, ["object", "list", bucket]) => list_objects(call, bucket),
        (&Method::POST, ["object", "sign", bucket]) => sign_many(call, bucket),
        (&Method::POST, ["object", "sign", bucket, key @ ..]) => {
            sign_one(call, bucket, &joined(key))
        }
        (_, ["object", "sign", bucket, key @ ..]) if read => {
            signed_download(call, bucket, &joined(key))
        }
        (&Method::POST, ["object", "copy"]) => copy_or_move(call, false),
        (&Method::POST, ["object", "move"]) => copy_or_move(call, true),
        (_, ["object", "info", "public", bucket, key @ ..]) if get => {
            info(call, bucket, &joined(key), Key::Optional, true)
        }
        (_, ["object", "info", "authenticated", bucket, key @ ..]) if get => {
            info(call, bucket, &joined(key), Key::Required, false)
        }
        (_, ["object", "info", bucket, key @ ..]) if get => {
            info(call, bucket, &joined(key), Key::Optional, false)
        }
        (_, ["object", "public", bucket, key @ ..]) if read => {
            public_download(call, bucket, &joined(key))
        }
        (_, ["object", "authenticated", bucket, key @ ..]) if read => {
            download(call, bucket, &joined(key), Key::Required)
        }
        (_, ["object", bucket, key @ ..]) if read && !key.is_empty() => {
            download(call, bucket, &joined(key), Key::Optional)
        }
        (&Method::POST, ["object", bucket, key @ ..]) if !key.is_empty() => {
            upload(call, bucket, &joined(key), false)
        }
        (&Method::PUT, ["object", bucket, key @ ..]) if !key.is_empty() => {
            upload(call, bucket, &joined(key), true)
        }
        (&Method::DELETE, ["object", bucket]) => remove_many(call, bucket),
        (&Method::DELETE, ["object", bucket, key @ ..]) => remove_one(call, bucket, &joined(key)),
        _ => Ok(no_such_route(call, path)),
    }
}

/// The real server's 404, naming the route without the gateway's prefix.
fn no_such_route(call: &Call<'_>, path: &str) -> Response {
    let url = match &call.query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    json_response(
        StatusCode::NOT_FOUND,
        &json!({
            "message": format!("Route {}:{url} not found", call.method),
            "error": "Not Found",
            "statusCode": 404,
        }),
    )
}

// ------------------------------------------------------------------ buckets

fn list_buckets(call: &Call<'_>) -> Result<Response, Failure> {
    let caller = call.caller(Key::Required)?;
    let buckets = lock(&call.state.buckets);
    let list: Vec<Value> = match caller {
        Caller::Service => buckets.iter().map(|(n, b)| b.json(n, true)).collect(),
        // Bucket rows are under row-level security too.
        _ => Vec::new(),
    };
    Ok(json_response(StatusCode::OK, &Value::Array(list)))
}

fn get_bucket(call: &Call<'_>, raw: &str) -> Result<Response, Failure> {
    let caller = call.caller(Key::Required)?;
    let name = decode(raw).ok_or_else(Failure::no_such_bucket)?;
    let buckets = lock(&call.state.buckets);
    match buckets.get(&name) {
        Some(b) if caller == Caller::Service => {
            Ok(json_response(StatusCode::OK, &b.json(&name, false)))
        }
        _ => Err(Failure::no_such_bucket()),
    }
}

/// `100MB`, `20GB`, `3B` or a number of bytes, as the real server reads a size.
fn parse_size(v: &Value) -> Result<Option<u64>, Failure> {
    let bad = || {
        Failure::new(
            400,
            "400",
            "InvalidRequest",
            "Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B",
            "InvalidRequest",
        )
    };
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_u64().map(Some).ok_or_else(bad),
        Value::String(s) => {
            let s = s.trim().to_ascii_uppercase();
            let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let unit = &s[digits.len()..];
            let n: u64 = digits.trim().parse().map_err(|_| bad())?;
            let scale = match unit {
                "" | "B" => 1,
                "KB" => 1 << 10,
                "MB" => 1 << 20,
                "GB" => 1 << 30,
                _ => return Err(bad()),
            };
            Ok(Some(n * scale))
        }
        _ => Err(bad()),
    }
}

fn create_bucket(call: &Call<'_>) -> Result<Response, Failure> {
    let body = json_body(&call.headers, &call.body)?;
    let schema = Schema::of(&body)?;
    schema.require(&["name"])?;
    let name = schema.string("name")?.unwrap_or_default().to_owned();
    let id = schema.string("id")?.map(str::to_owned);
    let public = match schema.body.get("public") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Failure::invalid_request("body/public must be boolean")),
    };
    let file_size_limit = parse_size(schema.body.get("file_size_limit").unwrap_or(&Value::Null))?;
    let allowed_mime_types = match schema.body.get("allowed_mime_types") {
        None | Some(Value::Null) => None,
        Some(_) => schema.strings("allowed_mime_types", 0)?,
    };
    if call.caller(Key::Required)? != Caller::Service {
        return Err(Failure::row_level_security());
    }
    let bucket_id = id.unwrap_or_else(|| name.clone());
    if !valid_bucket_name(&bucket_id) {
        return Err(Failure::invalid_bucket_name());
    }
    let mut buckets = lock(&call.state.buckets);
    if buckets.contains_key(&bucket_id) {
        return Err(Failure::bucket_exists());
    }
    buckets.insert(
        bucket_id,
        Bucket {
            public,
            file_size_limit,
            allowed_mime_types,
            created_at: Utc::now(),
            created_by_api: true,
            objects: BTreeMap::new(),
        },
    );
    if let Err(e) = call.state.persist_buckets(&buckets) {
        tracing::warn!(error = %e, "storage stand-in could not write its bucket list");
        return Err(Failure::internal());
    }
    Ok(json_response(StatusCode::OK, &json!({ "name": name })))
}

// ------------------------------------------------------------------ writes

/// The file of an upload: the raw body with its headers, or the first file
/// of a form with its fields.
fn incoming(call: &Call<'_>) -> Result<Incoming, Failure> {
    let content_type = call.header("content-type").unwrap_or("");
    if let Some(boundary) = multipart::boundary(content_type) {
        let parts = multipart::parse(&call.body, &boundary).ok_or_else(Failure::no_content)?;
        let field = |name: &str| {
            parts
                .iter()
                .find(|p| p.filename.is_none() && p.name == name)
                .and_then(|p| std::str::from_utf8(&p.body).ok())
                .map(str::to_owned)
        };
        let file = parts
            .iter()
            .find(|p| p.filename.is_some())
            .ok_or_else(Failure::no_content)?;
        let user_metadata = field("metadata")
            .or_else(|| field("userMetadata"))
            .and_then(|m| serde_json::from_str::<Value>(&m).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        return Ok(Incoming {
            bytes: file.body.clone(),
            content_type: field("contentType")
                .filter(|c| !c.is_empty())
                .or_else(|| file.content_type.clone())
                .unwrap_or_else(|| "application/octet-stream".into()),
            cache_control: field("cacheControl")
                .filter(|c| !c.is_empty())
                .map_or_else(|| "no-cache".into(), |t| format!("max-age={t}")),
            user_metadata,
        });
    }
    use base64::Engine;
    let user_metadata = call
        .header("x-metadata")
        .and_then(|m| base64::engine::general_purpose::STANDARD.decode(m).ok())
        .and_then(|m| serde_json::from_slice::<Value>(&m).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    Ok(Incoming {
        bytes: call.body.clone(),
        content_type: Some(content_type)
            .filter(|c| !c.is_empty())
            .unwrap_or("application/octet-stream")
            .to_owned(),
        cache_control: call
            .header("cache-control")
            .unwrap_or("no-cache")
            .to_owned(),
        user_metadata,
    })
}

/// Whether `mime` is in a bucket's allowed list (`type/*` allows a whole type).
fn mime_allowed(mime: &str, allowed: &[String]) -> bool {
    let Some((kind, sub)) = mime.split_once('/') else {
        return false;
    };
    let sub = sub.split(';').next().unwrap_or("").trim();
    allowed.iter().any(|a| match a.split_once('/') {
        Some((k, s)) => k == kind && (s == "*" || s == sub),
        None => false,
    })
}

fn upload(
    call: &Call<'_>,
    raw_bucket: &str,
    raw_key: &str,
    put: bool,
) -> Result<Response, Failure> {
    let caller = call.caller(Key::Required)?;
    let bucket_name = decode(raw_bucket).ok_or_else(Failure::no_such_bucket)?;
    let key = decode(raw_key).unwrap_or_else(|| raw_key.to_owned());
    let state = call.state;
    let mut buckets = lock(&state.buckets);
    let bucket = buckets
        .get_mut(&bucket_name)
        .ok_or_else(Failure::no_such_bucket)?;
    if !valid_key(&key) {
        return Err(Failure::invalid_key(&key));
    }
    if caller != Caller::Service {
        return Err(Failure::row_level_security());
    }
    let file = incoming(call)?;
    if let Some(allowed) = bucket
        .allowed_mime_types
        .as_deref()
        .filter(|a| !a.is_empty())
    {
        if !mime_allowed(&file.content_type, allowed) {
            return Err(Failure::invalid_mime_type(&file.content_type));
        }
    }
    let limit = bucket
        .file_size_limit
        .map_or(state.max_object_bytes as u64, |l| {
            l.min(state.max_object_bytes as u64)
        });
    if file.bytes.len() as u64 > limit {
        return Err(Failure::too_large());
    }
    // `PUT` (update) always overwrites; `POST` only with `x-upsert: true`.
    let upsert = put || call.header("x-upsert") == Some("true");
    let now = Utc::now();
    let obj = match bucket.objects.get(&key) {
        Some(_) if !upsert => return Err(Failure::key_exists()),
        Some(existing) => existing.replaced(file, now),
        None => StoredObject::new(file, now),
    };
    // Written while holding the lock so disk and memory never disagree on
    // which of two racing uploads won.
    if let Err(e) = state.persist(&bucket_name, &key, &obj) {
        tracing::warn!(error = %e, "storage stand-in could not write object");
        return Err(Failure::internal());
    }
    let id = obj.id.clone();
    bucket.objects.insert(key.clone(), obj);
    Ok(json_response(
        StatusCode::OK,
        &json!({"Key": format!("{bucket_name}/{key}"), "Id": id}),
    ))
}

fn remove_many(call: &Call<'_>, raw_bucket: &str) -> Result<Response, Failure> {
    let body = json_body(&call.headers, &call.body)?;
    let schema = Schema::of(&body)?;
    schema.require(&["prefixes"])?;
    let names = schema.strings("prefixes", 1)?.unwrap_or_default();
    let caller = call.caller(Key::Required)?;
    let bucket_name = decode(raw_bucket).unwrap_or_default();
    let mut buckets = lock(&call.state.buckets);
    // A missing bucket, or rows hidden by row-level security: nothing removed.
    let Some(bucket) = buckets
        .get_mut(&bucket_name)
        .filter(|_| caller == Caller::Service)
    else {
        return Ok(json_response(StatusCode::OK, &json!([])));
    };
    let names: BTreeSet<String> = names.into_iter().collect();
    let mut removed = Vec::new();
    for name in names {
        if let Some(obj) = bucket.objects.remove(&name) {
            call.state.unpersist(&bucket_name, &name);
            removed.push(obj.row(&bucket_name, &name));
        }
    }
    Ok(json_response(StatusCode::OK, &Value::Array(removed)))
}

fn remove_one(call: &Call<'_>, raw_bucket: &str, raw_key: &str) -> Result<Response, Failure> {
    let caller = call.caller(Key::Required)?;
    let (Some(bucket_name), Some(key)) = (decode(raw_bucket), decode(raw_key)) else {
        return Err(Failure::no_such_key());
    };
    let mut buckets = lock(&call.state.buckets);
    let bucket = buckets
        .get_mut(&bucket_name)
        .filter(|_| caller == Caller::Service)
        .ok_or_else(Failure::no_such_key)?;
    bucket
        .objects
        .remove(&key)
        .ok_or_else(Failure::no_such_key)?;
    call.state.unpersist(&bucket_name, &key);
    Ok(json_response(
        StatusCode::OK,
        &json!({"message": "Successfully deleted"}),
    ))
}

fn copy_or_move(call: &Call<'_>, is_move: bool) -> Result<Response, Failure> {
    let body = json_body(&call.headers, &call.body)?;
    let schema = Schema::of(&body)?;
    schema.require(&["sourceKey", "bucketId", "destinationKey"])?;
    let source = schema.string("sourceKey")?.unwrap_or_default().to_owned();
    let from_bucket = schema.string("bucketId")?.unwrap_or_default().to_owned();
    let dest = schema
        .string("destinationKey")?
        .unwrap_or_default()
        .to_owned();
    let to_bucket = schema
        .string("destinationBucket")?
        .map_or_else(|| from_bucket.clone(), str::to_owned);
    let caller = call.caller(Key::Required)?;
    let state = call.state;
    let mut buckets = lock(&state.buckets);
    let original = buckets
        .get(&from_bucket)
        .filter(|_| caller == Caller::Service)
        .and_then(|b| b.objects.get(&source))
        .cloned()
        .ok_or_else(Failure::no_such_key)?;
    if !valid_key(&dest) {
        return Err(Failure::invalid_key(&dest));
    }
    let upsert = !is_move && call.header("x-upsert") == Some("true");
    let target = buckets
        .get_mut(&to_bucket)
        .ok_or_else(Failure::no_such_bucket)?;
    if target.objects.contains_key(&dest) && !upsert {
        return Err(Failure::key_exists());
    }
    let now = Utc::now();
    let copied = if is_move {
        // A move renames the row: same id and creation time.
        StoredObject {
            version: new_id(),
            updated_at: now,
            ..original
        }
    } else {
        StoredObject::new(
            Incoming {
                bytes: original.bytes.clone(),
                content_type: original.content_type.clone(),
                cache_control: original.cache_control.clone(),
                user_metadata: original.user_metadata.clone(),
            },
            now,
        )
    };
    if let Err(e) = state.persist(&to_bucket, &dest, &copied) {
        tracing::warn!(error = %e, "storage stand-in could not write object");
        return Err(Failure::internal());
    }
    let id = copied.id.clone();
    target.objects.insert(dest.clone(), copied);
    if is_move {
        if let Some(b) = buckets.get_mut(&from_bucket) {
            b.objects.remove(&source);
        }
        state.unpersist(&from_bucket, &source);
        return Ok(json_response(
            StatusCode::OK,
            &json!({"message": "Successfully moved"}),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"Id": id, "Key": format!("{to_bucket}/{dest}")}),
    ))
}

// ------------------------------------------------------------------ reads

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` within `size` bytes, as `(first, last)`.
fn parse_range(range: &str, size: usize) -> Option<(usize, usize)> {
    let (first, last) = range.strip_prefix("bytes=")?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if size == 0 || (first.is_empty() && last.is_empty()) {
        return None;
    }
    if first.is_empty() {
        let n: usize = last.parse().ok().filter(|_| digits(last))?;
        return (n > 0).then(|| (size.saturating_sub(n), size - 1));
    }
    let from: usize = first.parse().ok().filter(|_| digits(first))?;
    let to: usize = if last.is_empty() {
        size - 1
    } else {
        last.parse().ok().filter(|_| digits(last))?
    };
    (to >= from && from < size).then(|| (from, to.min(size - 1)))
}

/// How an object is served: `expires` for a signed URL (instead of
/// `cache-control`), `download` for `?download=`.
struct Serve {
    expires: Option<Time>,
    download: Option<String>,
}

/// An object's bytes with the real server's headers, honouring
/// `If-None-Match`, `If-Modified-Since` and `Range`.
fn render(call: &Call<'_>, obj: &StoredObject, serve: Serve) -> Result<Response, Failure> {
    let if_none_match = call.header("if-none-match");
    let not_modified = if_none_match == Some(obj.etag.as_str())
        || call
            .header("if-modified-since")
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .is_some_and(|since| obj.updated_at <= since);
    let size = obj.bytes.len();
    let (status, body, range) = if not_modified {
        (StatusCode::NOT_MODIFIED, Bytes::new(), None)
    } else if let Some(asked) = call.header("range").filter(|_| call.method != Method::HEAD) {
        let (from, to) = parse_range(asked, size).ok_or_else(Failure::invalid_range)?;
        (
            StatusCode::PARTIAL_CONTENT,
            obj.bytes.slice(from..=to),
            Some(format!("bytes {from}-{to}/{size}")),
        )
    } else {
        (StatusCode::OK, obj.bytes.clone(), None)
    };
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(header::ACCEPT_RANGES, "bytes");
    set(header::CONTENT_TYPE, &obj.content_type);
    set(header::ETAG, &obj.etag);
    set(header::HeaderName::from_static("x-robots-tag"), "none");
    set(header::LAST_MODIFIED, &http_date(&obj.updated_at));
    match serve.expires {
        Some(expires) => set(header::EXPIRES, &http_date(&expires)),
        None => {
            // A revalidation that missed may serve stale content for a while.
            let stale = if_none_match.is_some_and(|tag| tag != obj.etag);
            let value = if stale {
                format!("{}, stale-while-revalidate=30", obj.cache_control)
            } else {
                obj.cache_control.clone()
            };
            set(header::CACHE_CONTROL, &value);
        }
    }
    if let Some(range) = &range {
        set(header::CONTENT_RANGE, range);
    }
    if let Some(name) = &serve.download {
        let value = if name.is_empty() {
            "attachment;".to_owned()
        } else {
            let enc = percent_encoding::utf8_percent_encode(name, URI_COMPONENT).to_string();
            format!("attachment; filename={enc}; filename*=UTF-8''{enc}")
        };
        set(header::CONTENT_DISPOSITION, &value);
    }
    let len = if call.method == Method::HEAD {
        size
    } else {
        body.len()
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    *resp.body_mut() = if status == StatusCode::NOT_MODIFIED {
        axum::body::Body::new(NoBodyOfUnknownLength)
    } else {
        axum::body::Body::from(body)
    };
    Ok(resp)
}

/// An empty body that does not say so up front. The real server sends
/// `content-length: 0` on a 304; hyper drops that header when it knows the
/// body is empty, and writes the one we set when it does not.
struct NoBodyOfUnknownLength;

impl hyper::body::Body for NoBodyOfUnknownLength {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(None)
    }
}

/// The decoded bucket and key of a read, and the object if visible.
fn find(
    call: &Call<'_>,
    raw_bucket: &str,
    raw_key: &str,
    visible: impl FnOnce(&Bucket) -> Result<(), Failure>,
) -> Result<(String, String, StoredObject), Failure> {
    let bucket_name = decode(raw_bucket).ok_or_else(Failure::no_such_bucket)?;
    let key = decode(raw_key).ok_or_else(Failure::no_such_key)?;
    let buckets = lock(&call.state.buckets);
    let bucket = buckets
        .get(&bucket_name)
        .ok_or_else(Failure::no_such_bucket)?;
    visible(bucket)?;
    let obj = bucket
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(Failure::no_such_key)?;
    Ok((bucket_name, key, obj))
}

/// Who may read a bucket's objects: anyone when it is public; the service
/// role otherwise (a restricted key finds nothing, no key finds no bucket).
fn readable(caller: Caller) -> impl FnOnce(&Bucket) -> Result<(), Failure> {
    move |bucket| match caller {
        _ if bucket.public => Ok(()),
        Caller::Service => Ok(()),
        Caller::Restricted => Err(Failure::no_such_key()),
        Caller::Anonymous => Err(Failure::no_such_bucket()),
    }
}

fn download(call: &Call<'_>, bucket: &str, key: &str, need: Key) -> Result<Response, Failure> {
    let caller = call.caller(need)?;
    let (_, _, obj) = find(call, bucket, key, readable(caller))?;
    let download = call.query_param("download");
    render(
        call,
        &obj,
        Serve {
            expires: None,
            download,
        },
    )
}

fn public_download(call: &Call<'_>, bucket: &str, key: &str) -> Result<Response, Failure> {
    let (_, _, obj) = find(call, bucket, key, |b| {
        if b.public {
            Ok(())
        } else {
            Err(Failure::no_such_bucket())
        }
    })?;
    let download = call.query_param("download");
    render(
        call,
        &obj,
        Serve {
            expires: None,
            download,
        },
    )
}

fn info(
    call: &Call<'_>,
    bucket: &str,
    key: &str,
    need: Key,
    public_route: bool,
) -> Result<Response, Failure> {
    let caller = call.caller(need)?;
    let (bucket_name, name, obj) = find(call, bucket, key, |b| match caller {
        Caller::Anonymous if !b.public => Err(Failure::no_such_bucket()),
        _ if b.public || public_route => Ok(()),
        other => readable(other)(b),
    })?;
    let body = json!({
        "id": obj.id,
        "name": name,
        "version": obj.version,
        "bucket_id": bucket_name,
        "size": obj.bytes.len(),
        "content_type": obj.content_type,
        "cache_control": obj.cache_control,
        "etag": obj.etag,
        "metadata": obj.user_metadata,
        "last_modified": iso(&obj.updated_at),
        "created_at": iso(&obj.created_at),
    });
    let mut resp = json_response(StatusCode::OK, &body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in [
        (header::ETAG, obj.etag.clone()),
        (header::LAST_MODIFIED, http_date(&obj.updated_at)),
        (header::CACHE_CONTROL, obj.cache_control.clone()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    Ok(resp)
}

/// One folder level of a bucket, as `POST /object/list/{bucket}` answers.
fn list_objects(call: &Call<'_>, raw_bucket: &str) -> Result<Response, Failure> {
    let body = json_body(&call.headers, &call.body)?;
    let schema = Schema::of(&body)?;
    schema.require(&["prefix"])?;
    let prefix = schema.string("prefix")?.unwrap_or_default();
    let limit = schema.integer("limit", 1)?;
    let offset = schema.integer("offset", 0)?;
    let search = schema.string("search")?.unwrap_or_default().to_lowercase();
    let (column, descending) = match schema.body.get("sortBy") {
        None => ("name", false),
        Some(Value::Object(sort)) => {
            let column = match sort.get("column") {
                None => {
                    return Err(Failure::invalid_request(
                        "body/sortBy must have required property 'column'",
                    ))
                }
                Some(Value::String(c))
                    if ["name", "updated_at", "created_at", "last_accessed_at"]
                        .contains(&c.as_str()) =>
                {
                    c.as_str()
                }
                Some(_) => {
                    return Err(Failure::invalid_request(
                        "body/sortBy/column must be equal to one of the allowed values",
                    ))
                }
            };
            let descending = match sort.get("order") {
                None => false,
                Some(Value::String(o)) if o == "asc" => false,
                Some(Value::String(o)) if o == "desc" => true,
                Some(_) => {
                    return Err(Failure::invalid_request(
                        "body/sortBy/order must be equal to one of the allowed values",
                    ))
                }
            };
            (column, descending)
        }
        Some(_) => return Err(Failure::invalid_request("body/sortBy must be object")),
    };
    let caller = call.caller(Key::Required)?;
    // A prefix names a folder: `user_a` lists `user_a/`.
    let mut folder = prefix.to_owned();
    if !folder.is_empty() && !folder.ends_with('/') {
        folder.push('/');
    }
    let folder_lower = folder.to_lowercase();
    let bucket_name = decode(raw_bucket).unwrap_or_default();
    let buckets = lock(&call.state.buckets);
    let Some(bucket) = buckets
        .get(&bucket_name)
        .filter(|_| caller == Caller::Service)
    else {
        return Ok(json_response(StatusCode::OK, &json!([])));
    };
    let mut folders: BTreeSet<String> = BTreeSet::new();
    let mut files: Vec<(String, &StoredObject)> = Vec::new();
    for (key, obj) in &bucket.objects {
        // Matching is case-insensitive, as the real server's is.
        let lower = key.to_lowercase();
        if !lower.starts_with(&folder_lower) || key.len() < folder.len() {
            continue;
        }
        let rest = &key[folder.len()..];
        if !rest.to_lowercase().starts_with(&search) {
            continue;
        }
        match rest.split_once('/') {
            Some((sub, _)) => {
                folders.insert(sub.to_owned());
            }
            None => files.push((rest.to_owned(), obj)),
        }
    }
    let name_order = |a: &str, b: &str| a.to_lowercase().cmp(&b.to_lowercase()).then(a.cmp(b));
    let mut entries: Vec<(String, Option<&StoredObject>)> = Vec::new();
    if column == "name" {
        // By name, folders and files are one sequence.
        entries.extend(folders.into_iter().map(|f| (f, None)));
        entries.extend(files.into_iter().map(|(n, o)| (n, Some(o))));
        entries.sort_by(|a, b| name_order(&a.0, &b.0));
        if descending {
            entries.reverse();
        }
    } else {
        // By a time, folders (which have none) come first, by name.
        let mut folders: Vec<String> = folders.into_iter().collect();
        folders.sort_by(|a, b| name_order(a, b));
        if descending {
            folders.reverse();
        }
        let time = |o: &StoredObject| match column {
            "created_at" => o.created_at,
            "last_accessed_at" => o.last_accessed_at,
            _ => o.updated_at,
        };
        files.sort_by(|a, b| time(a.1).cmp(&time(b.1)).then(name_order(&a.0, &b.0)));
        if descending {
            files.reverse();
        }
        entries.extend(folders.into_iter().map(|f| (f, None)));
        entries.extend(files.into_iter().map(|(n, o)| (n, Some(o))));
    }
    let skip = usize::try_from(offset.unwrap_or(0)).unwrap_or(0);
    let take = limit.map_or(DEFAULT_LIST_LIMIT, |l| {
        usize::try_from(l).unwrap_or(usize::MAX)
    });
    let page: Vec<Value> = entries
        .into_iter()
        .skip(skip)
        .take(take)
        .map(|(name, obj)| match obj {
            Some(obj) => obj.entry(&name),
            None => json!({
                "name": name,
                "id": null,
                "updated_at": null,
                "created_at": null,
                "last_accessed_at": null,
                "metadata": null,
            }),
        })
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(page)))
}

// ------------------------------------------------------------------ signed URLs

/// A download token for `bucket/key`, valid `expires_in` seconds.
fn download_token(state: &StorageState, url: &str, expires_in: i64) -> String {
    let now = Utc::now().timestamp();
    keys::sign(
        &state.jwt_secret,
        &json!({"alg": "HS256"}),
        &json!({"url": url, "scope": "download", "iat": now, "exp": now + expires_in}),
    )
}

fn sign_one(call: &Call<'_>, raw_bucket: &str, raw_key: &str) -> Result<Response, Failure> {
    let body = json_body(&call.headers, &call.body)?;
    let schema = Schema::of(&body)?;
    schema.require(&["expiresIn"])?;
    let expires_in = schema.integer("expiresIn", 1)?.unwrap_or(1);
    let caller = call.caller(Key::Required)?;
    // Signing looks the object up under row-level security.
    let (bucket, key, _) = find(call, raw_bucket, raw_key, |_| match caller {
        Caller::Service => Ok(()),
        _ => Err(Failure::no_such_key()),
    })
    .map_err(|f| {
        if f.code == "NoSuchBucket" {
            Failure::no_such_key()
        } else {
            f
        }
    })?;
    let url = format!("{bucket}/{key}");
    let token = download_token(call.state, &url, expires_in);
    Ok(json_response(
        StatusCode::OK,
        &json!({"signedURL": format!("/object/sign/{url}?token={token}")}),
    ))
}

fn sign_many(call: &Call<'_>, raw_bucket: &str) -> Result<Response, Failure> {
    let body = json_body(&call.headers, &call.body)?;
    let schema = Schema::of(&body)?;
    schema.require(&["expiresIn", "paths"])?;
    let expires_in = schema.integer("expiresIn", 1)?.unwrap_or(1);
    let paths = schema.strings("paths", 1)?.unwrap_or_default();
    let caller = call.caller(Key::Required)?;
    let bucket_name = decode(raw_bucket).unwrap_or_default();
    let existing: BTreeSet<String> = lock(&call.state.buckets)
        .get(&bucket_name)
        .filter(|_| caller == Caller::Service)
        .map(|b| b.objects.keys().cloned().collect())
        .unwrap_or_default();
    let answers: Vec<Value> = paths
        .into_iter()
        .map(|path| {
            if existing.contains(&path) {
                let url = format!("{bucket_name}/{path}");
                let token = download_token(call.state, &url, expires_in);
                json!({"error": null, "path": path, "signedURL": format!("/object/sign/{url}?token={token}")})
            } else {
                json!({
                    "error": "Either the object does not exist or you do not have access to it",
                    "path": path,
                    "signedURL": null,
                })
            }
        })
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(answers)))
}

fn signed_download(call: &Call<'_>, raw_bucket: &str, raw_key: &str) -> Result<Response, Failure> {
    let token = call.query_param("token").ok_or_else(|| {
        Failure::invalid_request("querystring must have required property 'token'")
    })?;
    let claims = keys::verify(&token, &call.state.jwt_secret)
        .map_err(|reason| Failure::invalid_jwt(&reason))?;
    if claims.get("scope").and_then(Value::as_str) != Some("download") {
        return Err(Failure::invalid_signature(
            "Token is not scoped for download",
        ));
    }
    let bucket = decode(raw_bucket).unwrap_or_default();
    let key = decode(raw_key).unwrap_or_default();
    if claims.get("url").and_then(Value::as_str) != Some(format!("{bucket}/{key}").as_str()) {
        return Err(Failure::invalid_signature("Invalid signature"));
    }
    let expires = claims
        .get("exp")
        .and_then(Value::as_i64)
        .and_then(|t| DateTime::from_timestamp(t, 0));
    let (_, _, obj) = find(call, raw_bucket, raw_key, |_| Ok(())).map_err(|f| {
        if f.code == "NoSuchBucket" {
            Failure::no_such_key()
        } else {
            f
        }
    })?;
    let download = call.query_param("download");
    render(call, &obj, Serve { expires, download })
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

    #[test]
    fn ranges_are_read_as_the_real_server_reads_them() {
        assert_eq!(parse_range("bytes=0-7", 70), Some((0, 7)));
        assert_eq!(parse_range("bytes=60-", 70), Some((60, 69)));
        assert_eq!(parse_range("bytes=-5", 70), Some((65, 69)));
        assert_eq!(parse_range("bytes=60-100", 70), Some((60, 69)));
        for bad in [
            "bytes=70-",
            "bytes=5-1",
            "bytes=-0",
            "bytes=-",
            "items=0-1",
            "bytes=a-b",
        ] {
            assert_eq!(parse_range(bad, 70), None, "{bad}");
        }
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }

    #[test]
    fn sizes_and_mime_types_follow_the_bucket_rules() {
        assert_eq!(parse_size(&json!("1MB")).unwrap(), Some(1 << 20));
        assert_eq!(parse_size(&json!(10)).unwrap(), Some(10));
        assert!(parse_size(&json!("ten")).is_err());
        let allowed = vec!["image/*".to_owned(), "text/plain".to_owned()];
        assert!(mime_allowed("image/png", &allowed));
        assert!(mime_allowed("text/plain;charset=utf-8", &allowed));
        assert!(!mime_allowed("application/json", &allowed));
    }
}
