//! A local BDD records service (in reality Express + PostgreSQL on port 9002).
//!
//! Two modes: [`BddMode::Faithful`] is the service as the contract wishes it
//! were; [`BddMode::LikeReal`] reproduces the deployed one exactly, defects
//! included (hashed owners, no status, no metadata, no PATCH route), so the
//! image service can be tested against what it will really meet.

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use md5::{Digest, Md5};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::server::StandIn;

const STATUSES: [&str; 4] = ["generated", "printed", "ordered", "deleted"];

/// How faithfully to the deployed service the stand-in behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BddMode {
    /// Stores owners as given, keeps status and metadata, has the PATCH route.
    Faithful,
    /// The deployed service exactly: owners stored as [`owner_uuid`], status
    /// and metadata ignored, `user_id` ignored, no PATCH route (Express 404 HTML).
    LikeReal,
}

/// How to run the BDD stand-in.
#[derive(Debug, Clone)]
pub struct BddOptions {
    /// Behaviour mode.
    pub mode: BddMode,
    /// Simulate a broken service that ignores every owner filter.
    pub ignore_owner_filter: bool,
    /// JSON file to load records from and rewrite after every change.
    pub data_file: Option<PathBuf>,
    /// Port on 127.0.0.1 (0 = random).
    pub port: u16,
}

impl BddOptions {
    /// Faithful, owner filter on, in memory, random port.
    pub fn new() -> Self {
        Self {
            mode: BddMode::Faithful,
            ignore_owner_filter: false,
            data_file: None,
            port: 0,
        }
    }
}

impl Default for BddOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// The deployed service's owner transform: MD5 of `user_id`, as a lowercase
/// UUID-shaped string (8-4-4-4-12 hex digits).
pub fn owner_uuid(user_id: &str) -> String {
    let hex: String = Md5::digest(user_id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    user_id: String,
    prompt: String,
    image_url: String,
    created_at: String,
    status: String,
    metadata: Value,
}

impl Record {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

struct BddState {
    mode: Mutex<BddMode>,
    ignore_owner_filter: AtomicBool,
    data_file: Option<PathBuf>,
    records: Mutex<Vec<Record>>,
    counter: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}

impl BddState {
    fn mode(&self) -> BddMode {
        *lock(&self.mode)
    }

    /// A cuid-style id: "c" + 8 time + 4 counter + 12 random base36 digits.
    fn new_id(&self) -> String {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::thread_rng();
        let random = format!(
            "{}{}",
            base36(rng.gen_range(0..36u64.pow(6)), 6),
            base36(rng.gen_range(0..36u64.pow(6)), 6)
        );
        format!(
            "c{}{}{}",
            base36(ms, 8),
            base36(count % 36u64.pow(4), 4),
            random
        )
    }

    /// Owner as stored for a given `userId`, per mode.
    fn stored_owner(&self, user_id: &str) -> String {
        match self.mode() {
            BddMode::Faithful => user_id.to_owned(),
            BddMode::LikeReal => owner_uuid(user_id),
        }
    }

    /// Whether `record` passes the owner filter `user_id` (`None` = no filter).
    fn owned(&self, record: &Record, user_id: Option<&str>) -> bool {
        match user_id {
            None => true,
            Some(_) if self.ignore_owner_filter.load(Ordering::Relaxed) => true,
            Some(u) => record.user_id == self.stored_owner(u),
        }
    }

    fn create(&self, user_id: &str, prompt: &str, image_url: &str, metadata: Value) -> Record {
        let like_real = self.mode() == BddMode::LikeReal;
        Record {
            id: self.new_id(),
            user_id: self.stored_owner(user_id),
            prompt: prompt.to_owned(),
            image_url: image_url.to_owned(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            status: "generated".into(),
            metadata: if like_real || !metadata.is_object() {
                json!({})
            } else {
                metadata
            },
        }
    }

    /// Rewrites the data file; called with the records lock held so that
    /// concurrent changes reach the disk in the order they were made.
    fn save(&self, records: &[Record]) -> io::Result<()> {
        let Some(path) = &self.data_file else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(records).map_err(io::Error::other)?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

fn load(path: &Path) -> io::Result<Vec<Record>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The local BDD service. Derefs to its [`StandIn`].
pub struct BddStandIn {
    server: StandIn,
    state: Arc<BddState>,
}

impl std::fmt::Debug for BddStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BddStandIn")
            .field("server", &self.server)
            .field("mode", &self.state.mode())
            .finish()
    }
}

impl Deref for BddStandIn {
    type Target = StandIn;
    fn deref(&self) -> &StandIn {
        &self.server
    }
}

impl BddStandIn {
    /// Starts the stand-in, loading `data_file` when set (missing = empty).
    pub async fn start(opts: BddOptions) -> io::Result<Self> {
        let records = match &opts.data_file {
            Some(p) => load(p)?,
            None => Vec::new(),
        };
        let state = Arc::new(BddState {
            mode: Mutex::new(opts.mode),
            ignore_owner_filter: AtomicBool::new(opts.ignore_owner_filter),
            data_file: opts.data_file,
            records: Mutex::new(records),
            counter: AtomicU64::new(rand::thread_rng().gen_range(0..36u64.pow(4))),
        });
        let router = Router::new().fallback(handle).with_state(state.clone());
        let server = StandIn::start_with(router, opts.port, bdd_status_body).await?;
        Ok(Self { server, state })
    }

    /// All records as stored (camelCase JSON), in insertion order.
    pub fn records(&self) -> Vec<Value> {
        lock(&self.state.records)
            .iter()
            .map(Record::to_json)
            .collect()
    }

    /// Seeds a record as `POST /api/images` would create it (owner transformed
    /// per mode) and returns it.
    ///
    /// # Panics
    /// If the data file cannot be written.
    pub fn insert_record(
        &self,
        user_id: &str,
        prompt: &str,
        image_url: &str,
        metadata: Value,
    ) -> Value {
        let record = self.state.create(user_id, prompt, image_url, metadata);
        let mut records = lock(&self.state.records);
        records.push(record.clone());
        self.state
            .save(&records)
            .expect("cannot write the BDD data file");
        record.to_json()
    }

    /// Switches mode; existing records are kept as stored.
    pub fn set_mode(&self, mode: BddMode) {
        *lock(&self.state.mode) = mode;
    }

    /// Turns the broken-owner-filter simulation on or off.
    pub fn set_ignore_owner_filter(&self, ignore: bool) {
        self.state
            .ignore_owner_filter
            .store(ignore, Ordering::Relaxed);
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            ),
            (
                header::HeaderName::from_static("x-powered-by"),
                HeaderValue::from_static("Express"),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

fn fail(status: StatusCode, error: &str) -> Response {
    json_response(status, &json!({"success": false, "error": error}))
}

fn not_found_record() -> Response {
    fail(StatusCode::NOT_FOUND, "Image non trouvée")
}

fn bdd_status_body(status: StatusCode) -> Response {
    if status == StatusCode::NO_CONTENT {
        // What some frameworks answer to a DELETE: no body at all.
        return status.into_response();
    }
    let error = match status.as_u16() {
        500 => "Erreur interne du serveur",
        404 => "Image non trouvée",
        400 => "Requête invalide",
        _ => status.canonical_reason().unwrap_or("Erreur"),
    };
    fail(status, error)
}

/// Express's finalhandler escapes the path for HTML.
fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Express's answer for a route it does not have.
fn express_404(method: &Method, path: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>Cannot {} {}</pre>\n</body>\n</html>\n",
        method,
        escape_html(path)
    );
    (
        StatusCode::NOT_FOUND,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::HeaderName::from_static("x-powered-by"),
                HeaderValue::from_static("Express"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Like express.json(): a body is parsed only when it says it is JSON;
/// anything else leaves `req.body` empty (`{}`). `None` means invalid JSON.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || m.ends_with("+json")
        });
    if !is_json || body.iter().all(u8::is_ascii_whitespace) {
        return Some(json!({}));
    }
    serde_json::from_slice(body).ok()
}

fn query_first(query: &[(String, String)], name: &str) -> Option<String> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// `parseInt`-like: leading decimal digits; anything unusable falls back.
fn int_param(raw: Option<String>, default: u64) -> u64 {
    raw.and_then(|s| {
        let s = s.trim_start();
        let digits: String = s
            .strip_prefix('+')
            .unwrap_or(s)
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u64>().ok()
    })
    .filter(|n| *n >= 1)
    .unwrap_or(default)
}

async fn handle(State(state): State<Arc<BddState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The recording middleware already buffered the body within its limit.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let method = parts.method;
    let raw_path = parts.uri.path();
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    // Express routing ignores one trailing slash and letter case.
    let trimmed = raw_path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(raw_path);
    let segs: Vec<&str> = trimmed.split('/').skip(1).collect();
    let lit = |i: usize, s: &str| segs.get(i).is_some_and(|x| x.eq_ignore_ascii_case(s));
    let id = |i: usize| {
        segs.get(i)
            .and_then(|raw| percent_encoding::percent_decode_str(raw).decode_utf8().ok())
            .map(|s| s.into_owned())
    };
    let like_real = state.mode() == BddMode::LikeReal;
    let n = segs.len();
    let user_q = query_first(&query, "userId");

    if n == 2 && lit(0, "api") && lit(1, "health") && method == Method::GET {
        return json_response(
            StatusCode::OK,
            &json!({
                "success": true,
                "message": "Service BDD opérationnel",
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }),
        );
    }
    if n >= 2 && lit(0, "api") && lit(1, "images") {
        match (n, &method) {
            (2, &Method::POST) => return create(&state, &parts.headers, &body),
            (2, &Method::GET) => {
                let status = if like_real {
                    None
                } else {
                    query_first(&query, "status")
                };
                return list(&state, user_q.as_deref(), status, &query);
            }
            (3, &Method::GET) => {
                if let Some(id) = id(2) {
                    return get_one(&state, &id, user_q.as_deref());
                }
            }
            (3, &Method::DELETE) => {
                if let Some(id) = id(2) {
                    return delete_one(&state, &id, user_q.as_deref());
                }
            }
            (4, &Method::PATCH) if !like_real && lit(3, "status") => {
                if let Some(id) = id(2) {
                    return patch_status(&state, &id, &parts.headers, &body);
                }
            }
            _ => {}
        }
    }
    express_404(&method, raw_path)
}

fn create(state: &BddState, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(body) = parse_body(headers, body) else {
        return fail(StatusCode::BAD_REQUEST, "JSON invalide");
    };
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(user_id), Some(prompt), Some(image_url)) =
        (text("userId"), text("prompt"), text("imageUrl"))
    else {
        return fail(
            StatusCode::BAD_REQUEST,
            "userId, prompt et imageUrl sont requis",
        );
    };
    let metadata = body.get("metadata").cloned().unwrap_or(json!({}));
    let record = state.create(user_id, prompt, image_url, metadata);
    let mut records = lock(&state.records);
    records.push(record.clone());
    if let Err(e) = state.save(&records) {
        records.pop();
        tracing::warn!(error = %e, "BDD stand-in could not write its data file");
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Erreur interne du serveur",
        );
    }
    json_response(
        StatusCode::CREATED,
        &json!({"success": true, "data": record.to_json()}),
    )
}

fn list(
    state: &BddState,
    user_id: Option<&str>,
    status: Option<String>,
    query: &[(String, String)],
) -> Response {
    let page = int_param(query_first(query, "page"), 1);
    let limit = int_param(query_first(query, "limit"), 10);
    let records = lock(&state.records);
    let matching: Vec<&Record> = records
        .iter()
        .rev()
        .filter(|r| state.owned(r, user_id))
        .filter(|r| status.as_deref().is_none_or(|s| r.status == s))
        .collect();
    let total = matching.len() as u64;
    let skip = (page - 1).saturating_mul(limit);
    let images: Vec<Value> = matching
        .into_iter()
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(Record::to_json)
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "success": true,
            "data": {
                "images": images,
                "pagination": {
                    "page": page,
                    "limit": limit,
                    "total": total,
                    "pages": total.div_ceil(limit),
                },
            },
        }),
    )
}

fn get_one(state: &BddState, id: &str, user_id: Option<&str>) -> Response {
    let records = lock(&state.records);
    match records
        .iter()
        .find(|r| r.id == id && state.owned(r, user_id))
    {
        Some(r) => json_response(
            StatusCode::OK,
            &json!({"success": true, "data": r.to_json()}),
        ),
        None => not_found_record(),
    }
}

fn delete_one(state: &BddState, id: &str, user_id: Option<&str>) -> Response {
    let mut records = lock(&state.records);
    let Some(i) = records
        .iter()
        .position(|r| r.id == id && state.owned(r, user_id))
    else {
        return not_found_record();
    };
    let removed = records.remove(i);
    if let Err(e) = state.save(&records) {
        records.insert(i, removed);
        tracing::warn!(error = %e, "BDD stand-in could not write its data file");
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Erreur interne du serveur",
        );
    }
    json_response(
        StatusCode::OK,
        &json!({"success": true, "message": "Image supprimée avec succès"}),
    )
}

fn patch_status(state: &BddState, id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(body) = parse_body(headers, body) else {
        return fail(StatusCode::BAD_REQUEST, "JSON invalide");
    };
    let Some(status) = body
        .get("status")
        .and_then(Value::as_str)
        .filter(|s| STATUSES.contains(s))
    else {
        return fail(StatusCode::BAD_REQUEST, "Statut invalide");
    };
    let user_id = body.get("userId").and_then(Value::as_str);
    let mut records = lock(&state.records);
    let Some(i) = records
        .iter()
        .position(|r| r.id == id && state.owned(r, user_id))
    else {
        return not_found_record();
    };
    let previous = std::mem::replace(&mut records[i].status, status.to_owned());
    if let Err(e) = state.save(&records) {
        records[i].status = previous;
        tracing::warn!(error = %e, "BDD stand-in could not write its data file");
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Erreur interne du serveur",
        );
    }
    json_response(
        StatusCode::OK,
        &json!({"success": true, "data": records[i].to_json()}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_uuid_is_md5_laid_out_as_uuid() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(owner_uuid(""), "d41d8cd9-8f00-b204-e980-0998ecf8427e");
    }

    #[test]
    fn ids_are_cuid_shaped() {
        let state = BddState {
            mode: Mutex::new(BddMode::Faithful),
            ignore_owner_filter: AtomicBool::new(false),
            data_file: None,
            records: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        };
        let (a, b) = (state.new_id(), state.new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 25);
        assert!(a.starts_with('c'));
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
    }
}
