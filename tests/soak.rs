//! Chaos soak: many clients, as several users, create / list / get / patch /
//! delete at random while the upstreams misbehave; then, with faults off,
//! the service must converge by itself to "nothing lost, nothing duplicated,
//! nothing left behind" (contract §7), and the invariants are checked and
//! printed as figures.
//!
//! Run it (ignored by default; about SOAK_SECS + 5 s):
//!
//! ```text
//! cargo test --test soak -- --ignored --nocapture
//! SOAK_SECS=120 SOAK_CLIENTS=32 SOAK_USERS=6 SOAK_FAULT_RATE=0.2 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! Knobs: `SOAK_SECS` (30), `SOAK_CLIENTS` (16), `SOAK_USERS` (4),
//! `SOAK_FAULT_RATE` (0.1: share of upstream calls faulted), `SOAK_SLACK_MS`
//! (750: scheduling allowance on top of each route's timeout budget),
//! `SOAK_LATE_WRITES_MS` (0, off; see "late writes" below).
//!
//! Set-up: the service is built in-process with the production wiring, by
//! the API tests' own start-up (`tests/common`), with short timeouts
//! (`UPSTREAM_TIMEOUT_MS=300`, `UPLOAD_TIMEOUT_MS=500`). Each upstream
//! stand-in (BDD, Storage) sits behind a "fault gate", a loopback proxy owned
//! by this test that counts exactly what it injects: 5xx answers; delays
//! longer than the timeouts before the upstream sees the call or after it
//! answered (the work is done, the answer is late); connections dropped
//! before forwarding or after (answer lost); and outages (the gate closes its
//! listener on the same port and cuts its open connections, so the service
//! meets refused connections, then reopens). The Clerk stand-in is not
//! faulted (keys are cached; its abuse is covered by tests/api/abuse.rs).
//!
//! A gate's call to its upstream runs detached from the service's
//! connection: once begun it completes even if the service hangs up or an
//! outage cuts the connection, so the gate always knows what the upstream
//! did (and which record id the BDD issued), never "maybe". A delay before
//! forwarding waits on the service's connection, so the call is dropped when
//! the service gives up (an upstream that never got it). With
//! `SOAK_LATE_WRITES_MS=N` it waits N ms detached instead and goes ahead
//! anyway: a slow upstream that does the work after the service stopped
//! waiting (an Express + PostgreSQL BDD does not abort an insert when its
//! client hangs up). Off by default, because contract §7's read-back
//! cannot tell such a write from none: read back before the write lands,
//! the record is "absent", the object is removed and the key freed, so the
//! late write leaves a record without object and the retry a second record.
//!
//! The clients behave as the AI service does (contract §7): every create
//! carries an `Idempotency-Key` (fresh per logical create) and is retried,
//! the same bytes under the same key, on 409, 429, 5xx and a connection that
//! gave no answer, until `201` or another 4xx, at most `CREATE_ATTEMPTS`
//! failures. Some attempts are cut short by the client (its timeout: the
//! answer is lost), some first attempts are sent twice at once, and some
//! acknowledged creates are sent once more as if the `201` was lost: a
//! `201` for a key already acknowledged must replay the first byte for byte.
//! Deletes are
//! retried until `200` or `404`, so that one that removed the object but not
//! the record converges. The key is in the prompt, so every record names the
//! logical create it belongs to.
//!
//! At the end of `SOAK_SECS` the faults stop; each client finishes the
//! logical operation it is in, then stops. From then on the service gets
//! `CONVERGENCE` (10 s), without `image-service reconcile`, to reach no
//! object without a record (orphan), no record without its object
//! (dangling) and an empty cleanup queue (`cleanup_pending` in `/metrics`).
//!
//! Violations (must be zero): a logical create with two records
//! (duplicate); an acknowledged create whose record is gone though its
//! client never deleted it (lost acknowledgement); two `201`s for one key
//! that differ by a byte, or a replay without `Idempotent-Replayed: true`;
//! orphans or dangling records left after `CONVERGENCE`; a `200` delete
//! whose record is still there; an answer outside the contract's statuses,
//! not JSON, without a boolean `success`, or over its route's timeout
//! budget; another user's record shown or changed; RSS not back near idle.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use bytes::Bytes;
use image_service::clients::storage::ObjectPath;
use image_service::domain::UserId;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod common;

use common::{spawn_app_on, StandIns, TestOptions, BUCKET};
use stand_ins::server::KillSwitch;

const UPSTREAM_TIMEOUT_MS: u64 = 300;
const UPLOAD_TIMEOUT_MS: u64 = 500;
/// Image statuses.
const STATUSES: [&str; 4] = ["generated", "printed", "ordered", "deleted"];
/// Statuses the contract allows an answer to have (§3, §4, §7).
const CONTRACT_STATUSES: [u16; 15] = [
    200, 201, 400, 401, 404, 405, 409, 413, 415, 422, 429, 500, 502, 503, 504,
];
/// How long the service has, once the faults are off and the clients quiet,
/// to leave no orphan, no dangling record and an empty cleanup queue
/// (contract §7: "once faults stop, the queue drains within seconds").
const CONVERGENCE: Duration = Duration::from_secs(10);
/// Failed attempts (409 aside: the first one still runs) after which a
/// client gives a logical create up. Its key may be left undecided: the
/// cleaner must settle it.
const CREATE_ATTEMPTS: u32 = 8;
/// Once the faults are off, a delete still unsettled this long after is a
/// violation: every retry then meets healthy upstreams.
const DELETE_SETTLE: Duration = Duration::from_secs(8);
/// Share of create and delete attempts the client cuts short (its timeout):
/// the service finishes them; the client retries not knowing the outcome.
const CUT_RATE: f64 = 0.05;
/// Share of acknowledged creates sent once more, as if the `201` was lost.
const ECHO_RATE: f64 = 0.1;
/// Share of logical creates whose first attempt is sent twice at once.
const TWIN_RATE: f64 = 0.05;
/// The longest a client waits before a retry: `Retry-After` (1 s) is
/// shortened so that retries meet the first attempt still running (409).
const RETRY_WAIT_CAP: Duration = Duration::from_millis(400);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The instant every printed time is counted from.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since [`origin`], for traces.
fn ms(at: Instant) -> u128 {
    at.saturating_duration_since(origin()).as_millis()
}

// ======================================================================= fault gate

/// What a gate did to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    /// Answered 5xx itself; the upstream never saw the call.
    Status,
    /// Waited longer than the timeouts, then forwarded (if still wanted,
    /// unless `SOAK_LATE_WRITES_MS`).
    DelayBefore,
    /// Forwarded, then held the answer longer than the timeouts.
    DelayAfter,
    /// Closed the connection without forwarding.
    DropBefore,
    /// Forwarded, then closed the connection instead of answering.
    DropAfter,
}

const FAULTS: [Fault; 5] = [
    Fault::Status,
    Fault::DelayBefore,
    Fault::DelayAfter,
    Fault::DropBefore,
    Fault::DropAfter,
];

/// One upstream call seen by a gate (creates, removals and deletes only:
/// the calls that change state).
#[derive(Debug, Clone)]
struct Call {
    request_id: String,
    method: Method,
    /// Object paths (uploads: the path; removals: the prefixes) or the
    /// record's object path (BDD creates).
    objects: Vec<String>,
    /// BDD creates: the idempotency key (from the prompt).
    key: Option<String>,
    fault: Option<Fault>,
    /// When the gate received it.
    at: Instant,
    /// When the upstream answered the gate: its work was done by then.
    done_at: Option<Instant>,
    /// The gate's side of the service's connection went away before the
    /// gate answered: the service gave up (its timeout) or an outage cut it.
    hung_up: bool,
    /// BDD creates: the record id the BDD issued.
    created_id: Option<String>,
}

impl Call {
    /// The upstream did the work.
    fn handled(&self) -> bool {
        self.done_at.is_some()
    }

    /// The upstream did the work but the service never had its answer.
    fn answer_lost(&self) -> bool {
        self.handled()
            && (self.hung_up || matches!(self.fault, Some(Fault::DelayAfter | Fault::DropAfter)))
    }

    /// The upstream did the work after a delay longer than the service's
    /// timeout: after the service gave up on it.
    fn late(&self) -> bool {
        self.handled() && self.fault == Some(Fault::DelayBefore)
    }

    /// Whether the call came from the cleaner rather than a client
    /// request (those carry the soak's request ids).
    fn by_cleaner(&self) -> bool {
        !self.request_id.starts_with("soak-")
    }

    fn trace(&self) -> String {
        format!(
            "{} {} at {} ms by {}: fault {:?}, upstream {}, {}",
            self.method,
            self.objects.join(","),
            ms(self.at),
            if self.by_cleaner() {
                "the cleaner"
            } else {
                self.request_id.as_str()
            },
            self.fault,
            self.done_at.map_or_else(
                || "never saw it".to_owned(),
                |at| format!("did it at {} ms", ms(at))
            ),
            if self.answer_lost() {
                "answer lost"
            } else if self.handled() {
                "answered"
            } else {
                "-"
            }
        )
    }
}

/// What a gate needs to know of a state-changing call: its objects and,
/// for BDD creates, the idempotency key.
type Describe = fn(&Method, &str, &[u8]) -> Option<(Vec<String>, Option<String>)>;

struct Gate {
    name: &'static str,
    port: u16,
    target: String,
    status_body: fn(u16) -> Value,
    rate_millionths: AtomicU64,
    delay: Duration,
    /// `DelayBefore` waits this long detached, then forwards anyway.
    late_writes: Option<Duration>,
    client: reqwest::Client,
    epoch: Mutex<CancellationToken>,
    injected: Mutex<BTreeMap<Fault, u64>>,
    calls_total: AtomicU64,
    outages: AtomicU64,
    outage_ms: AtomicU64,
    log: Mutex<Vec<Call>>,
    describe: Describe,
}

impl Gate {
    async fn start(
        name: &'static str,
        target: String,
        delay: Duration,
        late_writes: Option<Duration>,
        status_body: fn(u16) -> Value,
        describe: Describe,
    ) -> Arc<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("gate bind");
        let port = listener.local_addr().expect("gate addr").port();
        let gate = Arc::new(Gate {
            name,
            port,
            target,
            status_body,
            rate_millionths: AtomicU64::new(0),
            delay,
            late_writes,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("gate client"),
            epoch: Mutex::new(CancellationToken::new()),
            injected: Mutex::new(BTreeMap::new()),
            calls_total: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            outage_ms: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            describe,
        });
        let stop = lock(&gate.epoch).clone();
        tokio::spawn(gate.clone().serve(listener, stop));
        gate
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set_rate(&self, rate: f64) {
        self.rate_millionths
            .store((rate.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }

    fn pick(&self) -> Option<Fault> {
        let rate = self.rate_millionths.load(Ordering::Relaxed);
        let mut rng = rand::thread_rng();
        if rate > 0 && rng.gen_range(0..1_000_000) < rate {
            let fault = *FAULTS.choose(&mut rng).unwrap_or(&Fault::Status);
            *lock(&self.injected).entry(fault).or_default() += 1;
            Some(fault)
        } else {
            None
        }
    }

    fn update(&self, entry: Option<usize>, f: impl FnOnce(&mut Call)) {
        if let Some(i) = entry {
            if let Some(call) = lock(&self.log).get_mut(i) {
                f(call);
            }
        }
    }

    /// Refuses connections for `length`: closes the listener and cuts every
    /// open connection, then listens again on the same port.
    async fn outage(self: &Arc<Self>, length: Duration) {
        lock(&self.epoch).cancel();
        tokio::time::sleep(length).await;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let stop = CancellationToken::new();
        *lock(&self.epoch) = stop.clone();
        tokio::spawn(self.clone().serve(listener, stop));
        self.outages.fetch_add(1, Ordering::Relaxed);
        self.outage_ms
            .fetch_add(length.as_millis() as u64, Ordering::Relaxed);
    }

    async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let app = Router::new().fallback(forward).with_state(self.clone());
        stand_ins::server::accept_loop(listener, app, stop).await;
    }
}

/// Marks a call hung up when the gate's handler is dropped before it
/// answered: hyper drops it when the service closes the connection (its
/// timeout), and so does an outage.
struct HangUpWatch {
    gate: Arc<Gate>,
    entry: Option<usize>,
    armed: bool,
}

impl HangUpWatch {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for HangUpWatch {
    fn drop(&mut self) {
        if self.armed {
            self.gate.update(self.entry, |c| c.hung_up = true);
        }
    }
}

async fn drop_connection(req_kill: Option<KillSwitch>) -> Response {
    match req_kill {
        Some(kill) => match kill.hang_up().await {},
        None => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// The upstream's answer, as the gate received it.
type Upstream = (StatusCode, HeaderMap, Bytes);

/// The gate's call to its upstream. It runs as a task of its own, so that
/// once begun it completes and is logged whatever happens to the service's
/// connection.
async fn exchange(
    gate: Arc<Gate>,
    entry: Option<usize>,
    (method, path_and_query, headers, body): (Method, String, HeaderMap, Bytes),
    late_by: Option<Duration>,
) -> Option<Upstream> {
    if let Some(delay) = late_by {
        tokio::time::sleep(delay).await;
    }
    let sent = gate
        .client
        .request(method, format!("{}{path_and_query}", gate.target))
        .headers(headers)
        .body(body)
        .send()
        .await
        .ok()?;
    let status = sent.status();
    let headers = sent.headers().clone();
    let bytes = sent.bytes().await.ok()?;
    let created_id = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["data"]["id"].as_str().map(str::to_owned));
    gate.update(entry, |c| {
        c.done_at = Some(Instant::now());
        c.created_id = created_id;
    });
    Some((status, headers, bytes))
}

async fn forward(State(gate): State<Arc<Gate>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let kill = parts.extensions.get::<KillSwitch>().cloned();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    gate.calls_total.fetch_add(1, Ordering::Relaxed);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let fault = gate.pick();
    let entry = (gate.describe)(&parts.method, parts.uri.path(), &body).map(|(objects, key)| {
        let mut log = lock(&gate.log);
        log.push(Call {
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            method: parts.method.clone(),
            objects,
            key,
            fault,
            at: Instant::now(),
            done_at: None,
            hung_up: false,
            created_id: None,
        });
        log.len() - 1
    });
    let mut watch = HangUpWatch {
        gate: gate.clone(),
        entry,
        armed: true,
    };
    let mut late_by = None;
    match fault {
        Some(Fault::Status) => {
            watch.disarm();
            let code = *[500u16, 502, 503]
                .choose(&mut rand::thread_rng())
                .unwrap_or(&500);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, axum::Json((gate.status_body)(code))).into_response();
        }
        Some(Fault::DelayBefore) if gate.late_writes.is_some() => late_by = gate.late_writes,
        Some(Fault::DelayBefore) => tokio::time::sleep(gate.delay).await,
        Some(Fault::DropBefore) => {
            watch.disarm();
            return drop_connection(kill).await;
        }
        _ => {}
    }

    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            headers.append(name.clone(), value.clone());
        }
    }
    let upstream = tokio::spawn(exchange(
        gate.clone(),
        entry,
        (parts.method.clone(), path_and_query, headers, body),
        late_by,
    ));
    let Ok(Some((status, headers, bytes))) = upstream.await else {
        watch.disarm();
        return StatusCode::BAD_GATEWAY.into_response();
    };
    match fault {
        Some(Fault::DelayAfter) => tokio::time::sleep(gate.delay).await,
        Some(Fault::DropAfter) => {
            watch.disarm();
            return drop_connection(kill).await;
        }
        _ => {}
    }
    watch.disarm();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

fn bdd_fault_body(_: u16) -> Value {
    json!({"success": false, "error": "Erreur interne du serveur"})
}

fn storage_fault_body(code: u16) -> Value {
    json!({"statusCode": code.to_string(), "error": "internal", "message": "Internal Server Error"})
}

/// The idempotency key a create's prompt names (`soak <key>`).
fn key_of_prompt(prompt: &str) -> Option<String> {
    prompt.strip_prefix("soak ").map(str::to_owned)
}

/// BDD creates, with their object path (from `imageUrl`) and key (from the prompt).
fn bdd_calls(method: &Method, path: &str, body: &[u8]) -> Option<(Vec<String>, Option<String>)> {
    match *method {
        Method::POST if path == "/api/images" => {
            let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let url = body["imageUrl"].as_str().unwrap_or_default();
            let marker = format!("/storage/v1/object/public/{BUCKET}/");
            let objects = url
                .split_once(&marker)
                .map(|(_, p)| vec![p.to_owned()])
                .unwrap_or_default();
            Some((objects, body["prompt"].as_str().and_then(key_of_prompt)))
        }
        _ => None,
    }
}

/// Storage uploads (the path) and removals (the prefixes).
fn storage_calls(
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<(Vec<String>, Option<String>)> {
    let upload_prefix = format!("/storage/v1/object/{BUCKET}/");
    match *method {
        Method::POST => path
            .strip_prefix(&upload_prefix)
            .map(|p| (vec![p.to_owned()], None)),
        Method::DELETE => {
            let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let prefixes = body["prefixes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Some((prefixes, None))
        }
        _ => None,
    }
}

// ======================================================================= clients

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Create,
    List,
    Get,
    Patch,
    Delete,
    /// GET / PATCH / DELETE of another user's image: must never succeed.
    Probe,
}

impl Op {
    /// Statuses a valid request of a signed-in user may get under upstream
    /// faults. No rate limit is set, so only creates meet 429 (a user's
    /// share of upload slots) and only keyed creates meet 409.
    fn expected(self) -> &'static [u16] {
        match self {
            Op::Create => &[201, 409, 429, 502, 503, 504],
            Op::List => &[200, 502, 503, 504],
            Op::Get | Op::Patch | Op::Delete => &[200, 404, 502, 503, 504],
            // A 2xx is reported on its own, as a cross-user leak.
            Op::Probe => &[200, 404, 502, 503, 504],
        }
    }
}

/// Worth retrying with the same request: the service says "later" (409,
/// 429, 503) or failed upstream (5xx).
fn retryable(status: u16) -> bool {
    matches!(status, 409 | 429 | 500..=599)
}

/// One HTTP request to send (and maybe send again, byte for byte).
struct Req {
    op: Op,
    method: Method,
    path: String,
    body: Option<Bytes>,
    key: Option<String>,
    /// The target id (get, patch, delete, probe).
    id: String,
}

/// An answer as the client read it.
struct Answer {
    status: u16,
    /// `Idempotent-Replayed`, when present.
    replayed: Option<String>,
    retry_after: Option<u64>,
    bytes: Bytes,
}

enum Sent {
    Answer(Answer),
    /// The client cut the request short on purpose.
    Cut,
    /// No answer, unasked for (a violation, already counted).
    Failed,
}

/// What one answer told us, kept for the end-of-run analysis.
#[derive(Debug, Clone)]
struct Outcome {
    op: Op,
    user: usize,
    request_id: String,
    /// 0: the client cut it short.
    status: u16,
    /// Created id (creates) or target id (others).
    image_id: Option<String>,
}

/// One `201` of a logical create.
#[derive(Debug, Clone)]
struct Ack {
    request_id: String,
    replayed: Option<String>,
    body: Bytes,
    image_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Acked,
    /// Another 4xx: the client stops (a violation for a valid request).
    Refused(u16),
    /// `CREATE_ATTEMPTS` failures: the client gave up.
    Abandoned,
}

/// A create as the client sees it: one key, one body, several attempts.
#[derive(Debug, Clone)]
struct LogicalCreate {
    key: String,
    user: usize,
    attempts: u32,
    acks: Vec<Ack>,
    end: End,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_op: BTreeMap<Op, BTreeMap<u16, u64>>,
    max_latency: BTreeMap<Op, Duration>,
    violations: BTreeMap<&'static str, Vec<String>>,
    outcomes: Vec<Outcome>,
    /// Attempts beyond each logical operation's first.
    retries: BTreeMap<Op, u64>,
    replays: u64,
    conflicts: u64,
    cuts: u64,
    twins: u64,
    echoes: u64,
    /// Logical deletes that needed more than one attempt and then settled.
    deletes_retried: u64,
    /// Ids a client's DELETE targeted (the record may be gone by its doing).
    targeted: HashSet<String>,
}

impl Tally {
    fn violation(&mut self, kind: &'static str, detail: String) {
        self.violations.entry(kind).or_default().push(detail);
    }
}

struct Soak {
    address: String,
    client: reqwest::Client,
    users: Vec<UserId>,
    tokens: Vec<String>,
    public_prefix: String,
    /// Ids each user created and has not seen deleted.
    known: Vec<Mutex<Vec<String>>>,
    /// Owner of every id ever acknowledged (for cross-user checks).
    owners: Mutex<HashMap<String, usize>>,
    tally: Mutex<Tally>,
    creates: Mutex<Vec<LogicalCreate>>,
    budget: HashMap<Op, Duration>,
    slack: Duration,
    sequence: AtomicUsize,
    /// When the faults stopped.
    calm_at: Mutex<Option<Instant>>,
}

fn random_image() -> String {
    let mut rng = rand::thread_rng();
    let mut bytes: Vec<u8> = match rng.gen_range(0..3) {
        0 => b"\x89PNG\r\n\x1a\n".to_vec(),
        1 => vec![0xFF, 0xD8, 0xFF, 0xE0],
        _ => b"RIFF\0\0\0\0WEBPVP8 ".to_vec(),
    };
    let extra = rng.gen_range(64..4096);
    bytes.extend((0..extra).map(|_| rng.gen::<u8>()));
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    if rng.gen_bool(0.3) {
        format!("data:image/png;base64,{encoded}")
    } else {
        encoded
    }
}

/// The request of a non-create operation.
fn plan(op: Op, id: &str) -> Req {
    let mut rng = rand::thread_rng();
    let json_body = |v: Value| Some(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()));
    let (method, path, body) = match op {
        Op::Create => (Method::POST, "/api/images".to_owned(), None),
        Op::List => {
            let mut q = format!(
                "/api/images?page={}&limit={}",
                rng.gen_range(1..=3),
                rng.gen_range(1..=100)
            );
            if rng.gen_bool(0.2) {
                q.push_str("&status=generated");
            }
            (Method::GET, q, None)
        }
        Op::Get => (Method::GET, format!("/api/images/{id}"), None),
        Op::Patch => (
            Method::PATCH,
            format!("/api/images/{id}/status"),
            json_body(json!({ "status": STATUSES[rng.gen_range(0..4)] })),
        ),
        Op::Delete => (Method::DELETE, format!("/api/images/{id}"), None),
        Op::Probe => match rng.gen_range(0..3) {
            0 => (Method::GET, format!("/api/images/{id}"), None),
            1 => (
                Method::PATCH,
                format!("/api/images/{id}/status"),
                json_body(json!({"status": "printed"})),
            ),
            _ => (Method::DELETE, format!("/api/images/{id}"), None),
        },
    };
    Req {
        op,
        method,
        path,
        body,
        key: None,
        id: id.to_owned(),
    }
}

/// The wait before retry number `attempt`: the service's `Retry-After`
/// (shortened), else 50 ms doubling up to 800 ms; jittered so that clients
/// do not retry in step.
fn retry_wait(attempt: u32, retry_after: Option<u64>) -> Duration {
    let base = match retry_after {
        Some(secs) => Duration::from_secs(secs).min(RETRY_WAIT_CAP),
        None => Duration::from_millis(50 << attempt.min(4)),
    };
    base.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
}

/// The cut-short timeout of an attempt, if this one is cut.
fn maybe_cut() -> Option<Duration> {
    let mut rng = rand::thread_rng();
    rng.gen_bool(CUT_RATE)
        .then(|| Duration::from_millis(rng.gen_range(2..80)))
}

impl Soak {
    fn pick_op(&self, user: usize) -> (Op, String) {
        let mut rng = rand::thread_rng();
        let (own, owned) = {
            let known = lock(&self.known[user]);
            (known.choose(&mut rng).cloned(), known.len())
        };
        if let (true, Some(id)) = (owned > 12 && rng.gen_bool(0.5), &own) {
            return (Op::Delete, id.clone());
        }
        let roll = rng.gen_range(0..100);
        match (roll, own) {
            (0..=29, _) => (Op::Create, String::new()),
            (30..=54, _) => (Op::List, String::new()),
            (95.., _) => {
                let others = self.users.len().max(2);
                let other = (user + rng.gen_range(1..others)) % self.users.len();
                let theirs = lock(&self.known[other]).choose(&mut rng).cloned();
                let id = theirs.unwrap_or_else(|| "cnotarealid0000000000000".into());
                (Op::Probe, id)
            }
            (_, None) => (Op::Create, String::new()),
            (55..=69, Some(id)) => (Op::Get, id),
            (70..=81, Some(id)) => (Op::Patch, id),
            (_, Some(id)) => (Op::Delete, id),
        }
    }

    /// Starts logical operations until `until`; finishes the one it is in.
    async fn run_client(self: Arc<Self>, client_no: usize, user: usize, until: Instant) {
        while Instant::now() < until {
            match self.pick_op(user) {
                (Op::Create, _) => self.create(client_no, user).await,
                (Op::Delete, id) => self.delete(client_no, user, id).await,
                (op, id) => {
                    self.send(client_no, user, &plan(op, &id), None).await;
                }
            }
        }
    }

    fn calm_for(&self) -> Option<Duration> {
        lock(&self.calm_at).map(|at| at.elapsed())
    }

    /// One logical create: a fresh key, one body, retried until it is
    /// acknowledged, refused, or given up.
    async fn create(&self, client_no: usize, user: usize) {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let key = format!("k{client_no}-{n}");
        let body = json!({
            "prompt": format!("soak {key}"),
            "imageData": random_image(),
            "metadata": {"client": client_no, "n": n},
        });
        let req = Req {
            op: Op::Create,
            method: Method::POST,
            path: "/api/images".into(),
            body: Some(Bytes::from(serde_json::to_vec(&body).unwrap_or_default())),
            key: Some(key.clone()),
            id: String::new(),
        };
        let mut logical = LogicalCreate {
            key,
            user,
            attempts: 0,
            acks: Vec::new(),
            end: End::Abandoned,
        };
        let mut failures = 0;
        loop {
            logical.attempts += 1;
            let twin = logical.attempts == 1 && rand::thread_rng().gen_bool(TWIN_RATE);
            let sent = if twin {
                lock(&self.tally).twins += 1;
                let (a, b) = tokio::join!(
                    self.send(client_no, user, &req, maybe_cut()),
                    self.send(client_no, user, &req, None)
                );
                vec![a, b]
            } else {
                vec![self.send(client_no, user, &req, maybe_cut()).await]
            };
            let (mut end, mut wait, mut in_flight) = (None, None, false);
            for (request_id, sent) in sent {
                let Sent::Answer(answer) = sent else {
                    continue;
                };
                match answer.status {
                    201 => {
                        logical.acks.push(ack(request_id, &answer));
                        end = Some(End::Acked);
                    }
                    s if retryable(s) => {
                        in_flight |= s == 409;
                        wait = wait.max(answer.retry_after);
                    }
                    s => {
                        end.get_or_insert(End::Refused(s));
                    }
                }
            }
            if let Some(end) = end {
                logical.end = end;
                break;
            }
            // A 409 says the first attempt still runs: waiting for it is
            // not a failure.
            if !in_flight {
                failures += 1;
            }
            if failures >= CREATE_ATTEMPTS {
                break;
            }
            tokio::time::sleep(retry_wait(logical.attempts, wait)).await;
        }
        if logical.end == End::Acked && rand::thread_rng().gen_bool(ECHO_RATE) {
            // The 201 "was lost": the same request again must replay it.
            lock(&self.tally).echoes += 1;
            if let (request_id, Sent::Answer(answer)) = self.send(client_no, user, &req, None).await
            {
                if answer.status == 201 {
                    logical.acks.push(ack(request_id, &answer));
                }
            }
        }
        if let Some(first) = logical.acks.first() {
            let id = first.image_id.clone();
            lock(&self.owners).insert(id.clone(), user);
            lock(&self.known[user]).push(id);
        }
        *lock(&self.tally).retries.entry(Op::Create).or_default() +=
            u64::from(logical.attempts - 1);
        lock(&self.creates).push(logical);
    }

    /// One logical delete, retried until `200` or `404`: a delete that
    /// removed the object but not the record converges only so.
    async fn delete(&self, client_no: usize, user: usize, id: String) {
        lock(&self.tally).targeted.insert(id.clone());
        let req = plan(Op::Delete, &id);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (request_id, sent) = self.send(client_no, user, &req, maybe_cut()).await;
            let mut wait = None;
            match sent {
                Sent::Answer(a) if matches!(a.status, 200 | 404) => {
                    lock(&self.known[user]).retain(|k| *k != id);
                    if attempts > 1 {
                        lock(&self.tally).deletes_retried += 1;
                    }
                    break;
                }
                Sent::Answer(a) if !retryable(a.status) => break,
                Sent::Answer(a) => wait = a.retry_after,
                Sent::Cut | Sent::Failed => {}
            }
            if self.calm_for().is_some_and(|calm| calm > DELETE_SETTLE) {
                lock(&self.tally).violation(
                    "delete not settled once faults were off",
                    format!("{id}: last attempt {request_id}"),
                );
                break;
            }
            tokio::time::sleep(retry_wait(attempts, wait)).await;
        }
        *lock(&self.tally).retries.entry(Op::Delete).or_default() += u64::from(attempts - 1);
    }

    /// Sends `req` once (cut short after `cut`, if given) and checks the answer.
    async fn send(
        &self,
        client_no: usize,
        user: usize,
        req: &Req,
        cut: Option<Duration>,
    ) -> (String, Sent) {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("soak-{client_no}-{n}");
        let mut request = self
            .client
            .request(req.method.clone(), format!("{}{}", self.address, req.path))
            .bearer_auth(&self.tokens[user])
            .header("x-request-id", &request_id);
        if let Some(body) = &req.body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if let Some(key) = &req.key {
            request = request.header("idempotency-key", key);
        }
        if let Some(cut) = cut {
            request = request.timeout(cut);
        }
        lock(&self.tally).requests += 1;
        let started = Instant::now();
        let answer = async {
            let response = request.send().await?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let status = response.status().as_u16();
            let replayed = header("idempotent-replayed");
            let retry_after = header("retry-after").and_then(|v| v.parse().ok());
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>(Answer {
                status,
                replayed,
                retry_after,
                bytes,
            })
        }
        .await;
        match answer {
            Ok(answer) => {
                self.check(user, req, &request_id, &answer, started);
                (request_id, Sent::Answer(answer))
            }
            Err(e) if cut.is_some() && e.is_timeout() => {
                let mut tally = lock(&self.tally);
                tally.cuts += 1;
                if matches!(req.op, Op::Create | Op::Delete) {
                    tally.outcomes.push(Outcome {
                        op: req.op,
                        user,
                        request_id: request_id.clone(),
                        status: 0,
                        image_id: (req.op == Op::Delete).then(|| req.id.clone()),
                    });
                }
                (request_id, Sent::Cut)
            }
            Err(e) => {
                lock(&self.tally).violation(
                    "no answer",
                    format!("{request_id} {} {}: {e}", req.method, req.path),
                );
                (request_id, Sent::Failed)
            }
        }
    }

    fn check(&self, user: usize, req: &Req, request_id: &str, answer: &Answer, started: Instant) {
        let (op, id, status) = (req.op, req.id.as_str(), answer.status);
        let latency = started.elapsed();
        let me = &self.users[user];
        let mut tally = lock(&self.tally);
        *tally.by_status.entry(status).or_default() += 1;
        *tally
            .by_op
            .entry(op)
            .or_default()
            .entry(status)
            .or_default() += 1;
        let max = tally.max_latency.entry(op).or_default();
        *max = (*max).max(latency);
        let label = format!("{request_id} {op:?} {id} -> {status}");
        if status == 409 {
            tally.conflicts += 1;
        }

        if !CONTRACT_STATUSES.contains(&status) {
            tally.violation("status outside the contract", label.clone());
        } else if !op.expected().contains(&status) {
            tally.violation("unexpected status for a valid request", label.clone());
        }
        let budget = self.budget[&op] + self.slack;
        if latency > budget {
            tally.violation(
                "over the timeout budget",
                format!("{label} took {latency:?} (budget {budget:?})"),
            );
        }
        match (status, answer.replayed.as_deref()) {
            (201, Some("true")) => tally.replays += 1,
            (_, None) => {}
            (_, Some(other)) => tally.violation(
                "Idempotent-Replayed other than `true` on a 201",
                format!("{label}: {other:?}"),
            ),
        }
        let Ok(body) = serde_json::from_slice::<Value>(&answer.bytes) else {
            tally.violation("body not JSON", label);
            return;
        };
        if !body["success"].is_boolean() {
            tally.violation("no boolean success", format!("{label}: {body}"));
        }
        if (status < 300) != (body["success"] == json!(true)) {
            tally.violation("success disagrees with status", format!("{label}: {body}"));
        }

        // Every record shown must be the caller's.
        let mut shown: Vec<&Value> = Vec::new();
        if let Some(images) = body["data"]["images"].as_array() {
            shown.extend(images);
        } else if body["data"].is_object() && op != Op::Create {
            shown.push(&body["data"]);
        }
        for record in shown {
            let owner = record["userId"]
                .as_str()
                .or_else(|| record["user_id"].as_str())
                .unwrap_or_default();
            if !me.owns(owner) {
                tally.violation("another user's record shown", format!("{label}: {record}"));
            }
        }

        let mut image_id = (op != Op::Create && op != Op::List).then(|| id.to_owned());
        match (op, status) {
            (Op::Create, 201) => {
                let data = &body["data"];
                let new_id = data["image_id"].as_str().unwrap_or_default().to_owned();
                let url = data["image_url"].as_str().unwrap_or_default();
                let inside = ObjectPath::from_url(url, &self.public_prefix, me).is_some();
                let ours = data["prompt"].as_str().and_then(key_of_prompt) == req.key;
                if new_id.is_empty() || data["user_id"] != json!(me.as_str()) || !inside || !ours {
                    tally.violation("bad create answer", format!("{label}: {body}"));
                }
                image_id = Some(new_id);
            }
            (Op::Probe, 200..=299) => {
                tally.violation("another user's record changed or read", label);
            }
            _ => {}
        }
        if matches!(op, Op::Create | Op::Delete | Op::Probe) {
            tally.outcomes.push(Outcome {
                op,
                user,
                request_id: request_id.to_owned(),
                status,
                image_id,
            });
        }
    }
}

fn ack(request_id: String, answer: &Answer) -> Ack {
    let image_id = serde_json::from_slice::<Value>(&answer.bytes)
        .ok()
        .and_then(|b| b["data"]["image_id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ack {
        request_id,
        replayed: answer.replayed.clone(),
        body: answer.bytes.clone(),
        image_id,
    }
}

/// `cleanup_pending` from the service's `/metrics`, and `cleanup_total` by result.
async fn cleanup_metrics(soak: &Soak) -> (Option<u64>, BTreeMap<String, u64>) {
    let text = match soak
        .client
        .get(format!("{}/metrics", soak.address))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => return (None, BTreeMap::new()),
    };
    let value = |line: &str| {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let mut pending = None;
    let mut totals = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("cleanup_pending ") {
            pending = value(line);
        } else if let Some(rest) = line.strip_prefix("cleanup_total{result=\"") {
            if let (Some((result, _)), Some(n)) = (rest.split_once('"'), value(line)) {
                totals.insert(result.to_owned(), n);
            }
        }
    }
    (pending, totals)
}

// ======================================================================= the soak

#[tokio::test(flavor = "multi_thread")]
#[ignore = "chaos soak: cargo test --test soak -- --ignored --nocapture"]
async fn chaos_soak() {
    let _ = origin();
    let secs: u64 = env_or("SOAK_SECS", 30);
    let clients: usize = env_or("SOAK_CLIENTS", 16);
    let users: usize = env_or::<usize>("SOAK_USERS", 4).max(1);
    let fault_rate: f64 = env_or("SOAK_FAULT_RATE", 0.1);
    let slack = Duration::from_millis(env_or("SOAK_SLACK_MS", 750));
    let late_writes =
        Some(Duration::from_millis(env_or("SOAK_LATE_WRITES_MS", 0))).filter(|d| !d.is_zero());
    let t = Duration::from_millis(UPSTREAM_TIMEOUT_MS);
    let u = Duration::from_millis(UPLOAD_TIMEOUT_MS);
    let delay = t.max(u) + Duration::from_millis(300);

    // ------------------------------------------------------------ set-up
    let options = TestOptions::default();
    let stand_ins = StandIns::start(&options).await;
    let bdd_gate = Gate::start(
        "bdd",
        stand_ins.bdd.url(),
        delay,
        late_writes,
        bdd_fault_body,
        bdd_calls,
    )
    .await;
    let storage_gate = Gate::start(
        "storage",
        stand_ins.storage.url(),
        delay,
        late_writes,
        storage_fault_body,
        storage_calls,
    )
    .await;
    let options = options
        .env("SUPABASE_URL", storage_gate.url())
        .env("BDD_SERVICE_URL", bdd_gate.url())
        .env("UPSTREAM_TIMEOUT_MS", UPSTREAM_TIMEOUT_MS.to_string())
        .env("UPLOAD_TIMEOUT_MS", UPLOAD_TIMEOUT_MS.to_string())
        .env("LOG_LEVEL", "off");
    // Shared with the sampler task, which clears the stand-ins' request logs.
    let app = Arc::new(spawn_app_on(stand_ins, options).await);
    let config = &app.config;
    let public_prefix = format!(
        "{}/storage/v1/object/public/{}/",
        config.storage.url, config.storage.bucket
    );
    // Route budgets: every upstream call of the route at its timeout, the one
    // retry of idempotent BDD calls, and the wait for an upload slot. A
    // keyed create may first settle an earlier undecided attempt (read back,
    // remove), then upload, record, read back and remove.
    let read_back = 2 * t;
    let budget: HashMap<Op, Duration> = HashMap::from([
        (Op::List, 2 * t),
        (Op::Get, 2 * t),
        (Op::Patch, 2 * t + t),
        (
            Op::Create,
            config.upload_slot_wait + (read_back + u) + u + t + (read_back + u),
        ),
        (Op::Delete, 2 * t + u + 2 * t),
        (Op::Probe, 2 * t + u + 2 * t),
    ]);
    let user_ids: Vec<UserId> = (0..users)
        .map(|i| UserId::parse(&format!("user_soak_{i}")).expect("user id"))
        .collect();
    let soak = Arc::new(Soak {
        address: app.address.clone(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        tokens: user_ids
            .iter()
            .map(|u| app.clerk.mint(u.as_str()))
            .collect(),
        users: user_ids,
        public_prefix,
        known: (0..users).map(|_| Mutex::new(Vec::new())).collect(),
        owners: Mutex::new(HashMap::new()),
        tally: Mutex::new(Tally::default()),
        creates: Mutex::new(Vec::new()),
        budget,
        slack,
        sequence: AtomicUsize::new(0),
        calm_at: Mutex::new(None),
    });

    // Warm-up: keys loaded, pools open, one create per user.
    for user in 0..users {
        soak.create(0, user).await;
        soak.send(0, user, &plan(Op::List, ""), None).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib();

    // ------------------------------------------------------------ chaos
    bdd_gate.set_rate(fault_rate);
    storage_gate.set_rate(fault_rate);
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let peak = Arc::new(AtomicU64::new(rss_idle));
    let done = CancellationToken::new();

    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        let app = app.clone();
        tokio::spawn(async move {
            // RSS every 10 s: growth that goes on (a leak) or levels off.
            let mut timeline = Vec::new();
            let mut next = Instant::now();
            while !done.is_cancelled() {
                let rss = rss_kib();
                peak.fetch_max(rss, Ordering::Relaxed);
                if Instant::now() >= next {
                    timeline.push(rss >> 10);
                    next += Duration::from_secs(10);
                }
                // The stand-ins' own request logs are not needed (the gates
                // keep what is): clear them so they do not count as memory.
                app.bdd.clear_requests();
                app.storage.clear_requests();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            timeline
        })
    };
    let outages = {
        let gates = [bdd_gate.clone(), storage_gate.clone()];
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                let wait = Duration::from_millis(rand::thread_rng().gen_range(1500..3500));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = done.cancelled() => break,
                }
                if fault_rate <= 0.0 {
                    break;
                }
                let (gate, length) = {
                    let mut rng = rand::thread_rng();
                    (
                        gates[rng.gen_range(0..2)].clone(),
                        Duration::from_millis(rng.gen_range(100..400)),
                    )
                };
                // An outage under way ends (the gate listens again) before
                // the faults are declared off.
                gate.outage(length).await;
            }
        })
    };
    // At `until` the faults stop; the clients finish their operation.
    let calm = {
        let (soak, done) = (soak.clone(), done.clone());
        let gates = [bdd_gate.clone(), storage_gate.clone()];
        tokio::spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            for gate in &gates {
                gate.set_rate(0.0);
            }
            done.cancel();
            outages.await.expect("outage task");
            *lock(&soak.calm_at) = Some(Instant::now());
        })
    };
    let mut workers = tokio::task::JoinSet::new();
    for client_no in 0..clients {
        workers.spawn(
            soak.clone()
                .run_client(client_no + 1, client_no % users, until),
        );
    }
    workers.join_all().await;
    calm.await.expect("calm task");
    let rss_timeline = sampler.await.expect("sampler task");
    let chaos_time = until.saturating_duration_since(started);
    let calm_at = lock(&soak.calm_at).unwrap_or(until);
    let quiet_at = Instant::now();

    // ------------------------------------------------------------ convergence
    // Faults off, no client traffic: the service alone must converge within
    // CONVERGENCE of the faults stopping (the clients' last operations,
    // finished meanwhile, count against it).
    let mut clear_after = None;
    let mut drained_after = None;
    let state = loop {
        let (pending, _) = cleanup_metrics(&soak).await;
        let state = Snapshot::take(&app.bdd, &app.storage, &soak.public_prefix);
        let now = calm_at.elapsed();
        if state.orphans.is_empty() && state.dangling.is_empty() {
            clear_after.get_or_insert(now);
        } else {
            clear_after = None;
        }
        if pending == Some(0) {
            drained_after.get_or_insert(now);
        }
        if (clear_after.is_some() && drained_after.is_some()) || now >= CONVERGENCE {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at_deadline = (state.orphans.len(), state.dangling.len());
    // Not drained in time: how long it does take (only a failing run waits
    // for this), the cleaner's backoff being at most 5 min.
    if drained_after.is_none() {
        let give_up = calm_at + Duration::from_secs(60);
        while Instant::now() < give_up {
            if cleanup_metrics(&soak).await.0 == Some(0) {
                drained_after = Some(calm_at.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let (_, cleanup_totals) = cleanup_metrics(&soak).await;

    let analysis = analyse(&soak, &state, &bdd_gate, &storage_gate);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib();
    let rss_peak = peak.load(Ordering::Relaxed).max(rss_after);

    // ------------------------------------------------------------ report
    let (total, violation_count) = {
        let tally = lock(&soak.tally);
        let creates = lock(&soak.creates);
        let total = tally.requests;
        println!("\n== chaos soak: {secs} s, {clients} clients, {users} users, fault rate {fault_rate}{}, timeouts upstream {UPSTREAM_TIMEOUT_MS} ms / upload {UPLOAD_TIMEOUT_MS} ms",
            late_writes.map(|d| format!(", writes {} ms late", d.as_millis())).unwrap_or_default());
        println!(
            "requests: {total} in {:.1} s ({:.0}/s); by status: {}; cut short by the client: {}",
            chaos_time.as_secs_f64(),
            total as f64 / chaos_time.as_secs_f64(),
            fmt_map(&tally.by_status),
            tally.cuts,
        );
        for (op, statuses) in &tally.by_op {
            println!(
                "  {:<7} {:>6}  {}   max latency {:>4} ms / budget {:>4} ms",
                format!("{op:?}"),
                statuses.values().sum::<u64>(),
                fmt_map(statuses),
                tally.max_latency[op].as_millis(),
                (soak.budget[op] + slack).as_millis()
            );
        }
        let ended = |e: fn(&End) -> bool| creates.iter().filter(|c| e(&c.end)).count();
        println!(
            "logical creates: {} (acknowledged {}, refused {}, given up {}); retries: creates {}, deletes {} ({} deletes settled by a retry); 409s: {}; replays: {} (twins {}, resent after a 201 {})",
            creates.len(),
            ended(|e| *e == End::Acked),
            ended(|e| matches!(e, End::Refused(_))),
            ended(|e| *e == End::Abandoned),
            tally.retries.get(&Op::Create).copied().unwrap_or(0),
            tally.retries.get(&Op::Delete).copied().unwrap_or(0),
            tally.deletes_retried,
            tally.conflicts,
            tally.replays,
            tally.twins,
            tally.echoes,
        );
        for gate in [&bdd_gate, &storage_gate] {
            let injected = lock(&gate.injected);
            println!(
                "faults injected, {:<7}: {} of {} calls ({}), outages {} ({} ms refused in all)",
                gate.name,
                injected.values().sum::<u64>(),
                gate.calls_total.load(Ordering::Relaxed),
                injected
                    .iter()
                    .map(|(f, n)| format!("{f:?} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                gate.outages.load(Ordering::Relaxed),
                gate.outage_ms.load(Ordering::Relaxed),
            );
        }
        println!("fault windows met (each must converge):");
        for (name, n) in &analysis.windows {
            println!("  {name}: {n}");
        }
        let show = |d: Option<Duration>, within: &str| {
            d.map_or_else(
                || format!("not within {within}"),
                |d| format!("{} ms", d.as_millis()),
            )
        };
        println!(
            "convergence (no reconcile), from faults off: clients quiet after {} ms; orphans and dangling records at 0 after {}; cleanup queue drained after {}; cleanup_total {}",
            quiet_at.saturating_duration_since(calm_at).as_millis(),
            show(clear_after, &format!("{} s", CONVERGENCE.as_secs())),
            show(drained_after, "60 s"),
            fmt_map(&cleanup_totals),
        );
        println!(
            "after {} s: orphans {}, dangling records {}; final state: {} records, {} objects",
            CONVERGENCE.as_secs(),
            at_deadline.0,
            at_deadline.1,
            state.records.len(),
            state.objects.len()
        );
        println!(
            "exactly once: duplicates {}, lost acknowledgements {}, differing replays {}",
            analysis.violations.get("duplicate").map_or(0, Vec::len),
            analysis
                .violations
                .get("acknowledged create lost")
                .map_or(0, Vec::len),
            analysis
                .violations
                .get("differing replay")
                .map_or(0, Vec::len),
        );
        let mut violations: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (k, v) in &tally.violations {
            violations.entry(k).or_default().extend(v.iter().cloned());
        }
        for (k, v) in &analysis.violations {
            violations.entry(k).or_default().extend(v.iter().cloned());
        }
        let rss_limit = rss_idle + (64 << 10).max(rss_idle / 2);
        if rss_after > rss_limit {
            violations
                .entry("memory not back near idle")
                .or_default()
                .push(format!(
                    "RSS after {} MiB > limit {} MiB",
                    rss_after >> 10,
                    rss_limit >> 10
                ));
        }
        let violation_count: usize = violations.values().map(Vec::len).sum();
        println!("invariant violations: {violation_count}");
        for (kind, details) in &violations {
            println!("  {kind}: {}", details.len());
            for d in details.iter().take(5) {
                println!("    {d}");
            }
        }
        println!(
            "RSS: idle {} MiB -> peak {} MiB -> after {} MiB (limit {} MiB); every 10 s of chaos: {:?} MiB",
            rss_idle >> 10,
            rss_peak >> 10,
            rss_after >> 10,
            rss_limit >> 10,
            rss_timeline
        );
        println!(
            "(times in traces: ms since start; chaos {}..{} ms, faults off at {} ms, clients quiet at {} ms)",
            ms(started),
            ms(until),
            ms(calm_at),
            ms(quiet_at)
        );
        (total, violation_count)
    };

    Arc::into_inner(app)
        .expect("the sampler has let go of the service")
        .stop()
        .await;
    assert!(total > 0, "no request was sent");
    assert_eq!(violation_count, 0, "invariant violations: see above");
}

fn fmt_map<K: std::fmt::Debug>(map: &BTreeMap<K, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k:?}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ======================================================================= analysis

/// Records and objects at one instant, and what does not match.
struct Snapshot {
    records: Vec<Value>,
    objects: HashSet<String>,
    /// Objects no record points at.
    orphans: Vec<String>,
    /// Records whose object is missing: (id, path).
    dangling: Vec<(String, String)>,
}

impl Snapshot {
    fn take(
        bdd: &stand_ins::BddStandIn,
        storage: &stand_ins::StorageStandIn,
        public_prefix: &str,
    ) -> Snapshot {
        // Records first: a create between the two reads then shows as an
        // orphan for one poll, never as a dangling record.
        let records = bdd.records();
        let objects: HashSet<String> = storage.object_paths(BUCKET).into_iter().collect();
        let mut recorded = HashSet::new();
        let mut dangling = Vec::new();
        for record in &records {
            let id = record["id"].as_str().unwrap_or_default();
            let url = record["imageUrl"].as_str().unwrap_or_default();
            if let Some(path) = url.strip_prefix(public_prefix) {
                recorded.insert(path.to_owned());
                if !objects.contains(path) {
                    dangling.push((id.to_owned(), path.to_owned()));
                }
            }
        }
        let orphans = objects
            .iter()
            .filter(|p| !recorded.contains(*p))
            .cloned()
            .collect();
        Snapshot {
            records,
            objects,
            orphans,
            dangling,
        }
    }
}

#[derive(Default)]
struct Analysis {
    /// Fault windows met (figures, not violations).
    windows: BTreeMap<&'static str, usize>,
    violations: BTreeMap<&'static str, Vec<String>>,
}

fn analyse(soak: &Soak, state: &Snapshot, bdd_gate: &Gate, storage_gate: &Gate) -> Analysis {
    let mut a = Analysis::default();
    let tally = lock(&soak.tally);
    let creates = lock(&soak.creates);
    let bdd_log = lock(&bdd_gate.log);
    let storage_log = lock(&storage_gate.log);
    let status_of: HashMap<&str, u16> = tally
        .outcomes
        .iter()
        .map(|o| (o.request_id.as_str(), o.status))
        .collect();
    let calls_on = |log: &[Call], path: &str| -> Vec<String> {
        log.iter()
            .filter(|c| c.objects.iter().any(|o| o == path))
            .map(|c| {
                let answered = status_of
                    .get(c.request_id.as_str())
                    .map(|s| format!(" (service answered {s})"))
                    .unwrap_or_default();
                format!("{}{answered}", c.trace())
            })
            .collect()
    };

    // ------------------------------------------------ fault windows, as figures
    const LATE_RECORD: &str = "create: record written after the service gave up (late write)";
    const LOST_RECORD: &str = "create: record written, answer lost (settled by reading back)";
    const LATE_UPLOAD: &str = "create: upload landed after the service gave up";
    const LOST_UPLOAD: &str = "create: upload landed, answer lost";
    const REMOVAL: &str = "removal failed (request)";
    const CLEANER_REMOVAL: &str = "removal failed (cleaner, retried)";
    const HALF_DELETE: &str = "delete: object removed, record kept (until the retry)";
    let mut windows: BTreeMap<&'static str, usize> = [
        LATE_RECORD,
        LOST_RECORD,
        LATE_UPLOAD,
        LOST_UPLOAD,
        REMOVAL,
        CLEANER_REMOVAL,
        HALF_DELETE,
    ]
    .into_iter()
    .map(|w| (w, 0))
    .collect();
    for call in bdd_log.iter() {
        if call.late() {
            *windows.entry(LATE_RECORD).or_default() += 1;
        } else if call.answer_lost() {
            *windows.entry(LOST_RECORD).or_default() += 1;
        }
    }
    let removed_by: HashSet<&str> = storage_log
        .iter()
        .filter(|c| c.method == Method::DELETE && c.handled())
        .map(|c| c.request_id.as_str())
        .collect();
    for call in storage_log.iter() {
        let window = match call.method {
            Method::POST if call.late() => LATE_UPLOAD,
            Method::POST if call.answer_lost() => LOST_UPLOAD,
            Method::DELETE if call.fault.is_some() || call.hung_up => {
                if call.by_cleaner() {
                    CLEANER_REMOVAL
                } else {
                    REMOVAL
                }
            }
            _ => continue,
        };
        *windows.entry(window).or_default() += 1;
    }
    for o in &tally.outcomes {
        if o.op == Op::Delete && o.status != 200 && removed_by.contains(o.request_id.as_str()) {
            *windows.entry(HALF_DELETE).or_default() += 1;
        }
    }
    a.windows = windows;

    // ------------------------------------------------ exactly once
    let live: HashMap<&str, &Value> = state
        .records
        .iter()
        .filter_map(|r| Some((r["id"].as_str()?, r)))
        .collect();
    // Every record id the BDD ever issued for a key, live or deleted since.
    let mut ids_of_key: HashMap<String, BTreeSet<String>> = HashMap::new();
    for call in bdd_log.iter() {
        if let (Some(key), Some(id)) = (&call.key, &call.created_id) {
            ids_of_key
                .entry(key.clone())
                .or_default()
                .insert(id.clone());
        }
    }
    let keys: HashSet<&str> = creates.iter().map(|c| c.key.as_str()).collect();
    for record in &state.records {
        let id = record["id"].as_str().unwrap_or_default();
        match record["prompt"].as_str().and_then(key_of_prompt) {
            Some(key) if keys.contains(key.as_str()) => {
                ids_of_key.entry(key).or_default().insert(id.to_owned());
            }
            _ => a
                .violations
                .entry("record of no create the clients made")
                .or_default()
                .push(format!("{id}: {record}")),
        }
    }
    for create in creates.iter() {
        let ids = ids_of_key.entry(create.key.clone()).or_default();
        ids.extend(create.acks.iter().map(|a| a.image_id.clone()));
        if ids.len() > 1 {
            a.violations.entry("duplicate").or_default().push(format!(
                "key {} (user {}): records {ids:?}; acknowledged by {:?}; requests: {}",
                create.key,
                create.user,
                create
                    .acks
                    .iter()
                    .map(|a| &a.request_id)
                    .collect::<Vec<_>>(),
                bdd_log
                    .iter()
                    .filter(|c| c.key.as_deref() == Some(&create.key))
                    .map(Call::trace)
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if let Some(first) = create.acks.first() {
            for other in &create.acks[1..] {
                if other.body != first.body {
                    a.violations
                        .entry("differing replay")
                        .or_default()
                        .push(format!(
                            "key {}: {} answered {:?}, {} answered {:?}",
                            create.key,
                            first.request_id,
                            String::from_utf8_lossy(&first.body),
                            other.request_id,
                            String::from_utf8_lossy(&other.body)
                        ));
                }
            }
        }
        let fresh: Vec<&str> = create
            .acks
            .iter()
            .filter(|a| a.replayed.is_none())
            .map(|a| a.request_id.as_str())
            .collect();
        if fresh.len() > 1 {
            a.violations
                .entry("two 201s for one key, neither a replay")
                .or_default()
                .push(format!("key {}: {fresh:?}", create.key));
        }
        for ack in &create.acks {
            if !live.contains_key(ack.image_id.as_str()) && !tally.targeted.contains(&ack.image_id)
            {
                a.violations
                    .entry("acknowledged create lost")
                    .or_default()
                    .push(format!(
                        "key {}: {} acknowledged {}, which no client deleted",
                        create.key, ack.request_id, ack.image_id
                    ));
            }
        }
    }

    // ------------------------------------------------ records and deletes
    let owners = lock(&soak.owners);
    for o in &tally.outcomes {
        let Some(id) = o.image_id.as_deref() else {
            continue;
        };
        match (o.op, o.status) {
            (Op::Delete, 200) if owners.get(id).is_some_and(|u| *u != o.user) => {
                a.violations
                    .entry("deleted another user's record")
                    .or_default()
                    .push(format!("{} {id}", o.request_id));
            }
            (Op::Delete, 200) if live.contains_key(id) => {
                a.violations
                    .entry("deleted (200) but the record is still there")
                    .or_default()
                    .push(format!("{} {id}", o.request_id));
            }
            _ => {}
        }
    }
    for record in &state.records {
        let id = record["id"].as_str().unwrap_or_default();
        let owner = record["userId"].as_str().unwrap_or_default();
        let url = record["imageUrl"].as_str().unwrap_or_default();
        match url.strip_prefix(&soak.public_prefix) {
            None => a
                .violations
                .entry("record with a foreign URL")
                .or_default()
                .push(format!("{id}: {url}")),
            Some(path) if !path.starts_with(&format!("{owner}/")) => a
                .violations
                .entry("record outside its owner's folder")
                .or_default()
                .push(format!("{id}: {owner} {path}")),
            Some(_) => {}
        }
    }

    // ------------------------------------------------ left behind after CONVERGENCE
    for path in &state.orphans {
        a.violations
            .entry("orphan (object without record) after the convergence time")
            .or_default()
            .push(format!(
                "{path}: storage [{}]; bdd [{}]",
                calls_on(&storage_log, path).join("; "),
                calls_on(&bdd_log, path).join("; ")
            ));
    }
    for (id, path) in &state.dangling {
        a.violations
            .entry("dangling record (record without object) after the convergence time")
            .or_default()
            .push(format!(
                "{id} -> {path}: storage [{}]; bdd [{}]",
                calls_on(&storage_log, path).join("; "),
                calls_on(&bdd_log, path).join("; ")
            ));
    }
    a
}
