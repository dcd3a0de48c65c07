//! Shared plumbing of the stand-ins: a loopback HTTP server that records every
//! request and can be told to misbehave (fault injection).
//!
//! The accept loop is our own (hyper-util, not `axum::serve`) because a
//! [`Fault::Drop`] must close exactly the connection that carried the faulted
//! request, and only the connection task can do that: it drops the connection
//! future, which closes the socket before any response byte is written.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt;

/// Largest request body a stand-in accepts (the real services accept more
/// than the service under test ever sends; axum's 2 MB default would not).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Builds the answer a stand-in gives for a status it was told to fail with,
/// shaped like the real service's error bodies.
pub type StatusBody = fn(StatusCode) -> Response;

/// One request as a stand-in received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: Method,
    /// Path as sent on the wire (still percent-encoded).
    pub path: String,
    /// Raw query string, without the `?`.
    pub query: Option<String>,
    /// All request headers.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body parsed as JSON, or `Value::Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header's value, when present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Query parameters, percent-decoded, in the order sent.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// A way for a stand-in to misbehave on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and the error body the real service uses for it.
    Status(u16),
    /// Wait this long, then handle the request normally.
    Delay(Duration),
    /// Close the TCP connection without sending any response byte (requests
    /// sharing that connection, e.g. other HTTP/2 streams, fail with it).
    Drop,
    /// Handle the request (its effect happens), then wait this long before
    /// answering: an answer that comes too late.
    DelayAfter(Duration),
    /// Handle the request after this long, even if the client has given up
    /// by then: an effect that lands late (an upload stored after its
    /// timeout).
    ActLate(Duration),
    /// Handle the request (its effect happens), then close the connection
    /// without answering: an answer lost.
    DropAfter,
    /// Answer this status with this JSON body, whatever was asked: a
    /// misbehaving upstream (a foreign record, a malformed page).
    Answer {
        /// HTTP status.
        status: u16,
        /// The body, sent as `application/json`.
        body: String,
    },
}

/// When to apply a [`Fault`]: by default to every request, forever.
#[derive(Debug, Clone)]
pub struct FaultRule {
    fault: Fault,
    method: Option<Method>,
    path_prefix: Option<String>,
    remaining: Option<usize>,
}

impl FaultRule {
    /// A rule applying `fault` to any method and path, without limit.
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            method: None,
            path_prefix: None,
            remaining: None,
        }
    }

    /// Only requests with this method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Only requests whose raw (percent-encoded) path starts with `prefix`.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Apply to the next `n` matching requests only, then disappear.
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.remaining != Some(0)
    }
}

struct RandomFaults {
    rate: f64,
    faults: Vec<Fault>,
}

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    /// Off for a stand-in that runs for hours (the dev stack): the log
    /// keeps every request's headers and body.
    recording: AtomicBool,
    rules: Mutex<VecDeque<FaultRule>>,
    random: Mutex<RandomFaults>,
    status_body: StatusBody,
}

/// Poisoning only means another test thread panicked while holding the lock;
/// the data (a log, a rule list) is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn pick_fault(&self, method: &Method, path: &str) -> Option<Fault> {
        {
            let mut rules = lock(&self.rules);
            if let Some(i) = rules.iter().position(|r| r.matches(method, path)) {
                let fault = rules[i].fault.clone();
                if let Some(n) = rules[i].remaining.as_mut() {
                    *n -= 1;
                    if *n == 0 {
                        rules.remove(i);
                    }
                }
                return Some(fault);
            }
        }
        let random = lock(&self.random);
        // `rate > 0.0` is false for NaN too, so a bad rate means "off", never a panic.
        if random.rate > 0.0 && !random.faults.is_empty() {
            let mut rng = rand::thread_rng();
            if rng.gen::<f64>() < random.rate {
                let i = rng.gen_range(0..random.faults.len());
                return Some(random.faults[i].clone());
            }
        }
        None
    }
}

/// Carried to each request of a connection so that a `Drop` fault can ask the
/// connection task to close that socket.
#[derive(Clone)]
pub struct KillSwitch(Arc<Notify>);

impl KillSwitch {
    /// Closes the connection this request came on, unanswered: the connection
    /// task drops the handler's future together with the socket, so this never
    /// returns.
    pub async fn hang_up(&self) -> std::convert::Infallible {
        self.0.notify_one();
        std::future::pending().await
    }
}

/// The generic error answer, for stand-ins without a service-specific shape.
pub fn generic_status_body(status: StatusCode) -> Response {
    let body = serde_json::json!({
        "error": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

/// A running stand-in server on 127.0.0.1; it stops when dropped.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn").field("addr", &self.addr).finish()
    }
}

impl StandIn {
    /// Serves `router` on `127.0.0.1:port` (0 = a free port), with the generic
    /// JSON error body for status faults. Must run inside a tokio runtime.
    pub async fn start(router: Router, port: u16) -> std::io::Result<StandIn> {
        Self::start_with(router, port, generic_status_body).await
    }

    /// Like [`StandIn::start`], answering status faults with `status_body`.
    pub async fn start_with(
        router: Router,
        port: u16,
        status_body: StatusBody,
    ) -> std::io::Result<StandIn> {
        Self::start_behind(router, port, status_body, |app| app).await
    }

    /// Like [`StandIn::start_with`], with `edge` wrapped around the recording
    /// and fault layer: what a gateway in front of the real service does
    /// (answers it gives itself are neither recorded nor faulted).
    pub async fn start_behind(
        router: Router,
        port: u16,
        status_body: StatusBody,
        edge: impl FnOnce(Router) -> Router,
    ) -> std::io::Result<StandIn> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            recording: AtomicBool::new(true),
            rules: Mutex::new(VecDeque::new()),
            random: Mutex::new(RandomFaults {
                rate: 0.0,
                faults: Vec::new(),
            }),
            status_body,
        });
        // The recording middleware buffers the body with its own limit, so
        // axum's per-extractor default must not cut in earlier.
        let app = edge(router.layer(DefaultBodyLimit::disable()).layer(
            axum::middleware::from_fn_with_state(shared.clone(), record_and_fault),
        ));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, app, stop.clone()));
        Ok(StandIn {
            addr,
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// Base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, in order, including faulted ones.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Stops recording requests and forgets those recorded: for a stand-in
    /// that serves for hours, where the log would grow by every request's
    /// headers and body (gigabytes in a benchmark's hour).
    pub fn stop_recording(&self) {
        self.shared.recording.store(false, Ordering::Relaxed);
        self.clear_requests();
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Adds a fault rule; rules are tried in insertion order, the first match applies.
    pub fn inject(&self, rule: FaultRule) {
        lock(&self.shared.rules).push_back(rule);
    }

    /// Removes every fault rule (random faults are kept).
    pub fn clear_faults(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Each request not caught by a rule gets, with probability `rate`, one of
    /// `faults` chosen at random; a rate of 0 turns this off.
    pub fn set_fault_rate(&self, rate: f64, faults: Vec<Fault>) {
        *lock(&self.shared.random) = RandomFaults { rate, faults };
    }
}

/// Serves `app` on `listener` until `stop`, HTTP/1 and HTTP/2, each request
/// carrying its connection's [`KillSwitch`] so a fault can drop the socket.
pub async fn accept_loop(listener: TcpListener, app: Router, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually fd exhaustion: back off instead of spinning.
                    tracing::debug!(error = %e, "stand-in accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let kill = KillSwitch(Arc::new(Notify::new()));
        let svc = {
            let kill = kill.clone();
            app.clone()
                .map_request(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(kill.clone());
                    req
                })
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            // Leaving the select drops `conn`, which closes the socket at once.
            tokio::select! {
                _ = conn => {}
                _ = kill.0.notified() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn record_and_fault(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let (body, too_large) = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => (b, false),
        Err(_) => (Bytes::new(), true),
    };
    let path = parts.uri.path().to_owned();
    if shared.recording.load(Ordering::Relaxed) {
        lock(&shared.requests).push(RecordedRequest {
            method: parts.method.clone(),
            path: path.clone(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    if too_large {
        return (shared.status_body)(StatusCode::PAYLOAD_TOO_LARGE);
    }
    match shared.pick_fault(&parts.method, &path) {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (shared.status_body)(status);
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Answer { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
        Some(Fault::Drop) => match parts.extensions.get::<KillSwitch>() {
            Some(kill) => match kill.hang_up().await {},
            // Served without our accept loop (e.g. `Router::oneshot`): no socket to close.
            None => return (shared.status_body)(StatusCode::BAD_GATEWAY),
        },
        Some(Fault::ActLate(d)) => {
            let request = Request::from_parts(parts, Body::from(body));
            let late = tokio::spawn(async move {
                tokio::time::sleep(d).await;
                next.run(request).await
            });
            return late
                .await
                .unwrap_or_else(|_| (shared.status_body)(StatusCode::INTERNAL_SERVER_ERROR));
        }
        Some(Fault::DelayAfter(d)) => {
            let response = next.run(Request::from_parts(parts, Body::from(body))).await;
            tokio::time::sleep(d).await;
            return response;
        }
        Some(Fault::DropAfter) => {
            let kill = parts.extensions.get::<KillSwitch>().cloned();
            let _handled = next.run(Request::from_parts(parts, Body::from(body))).await;
            return match kill {
                Some(kill) => match kill.hang_up().await {},
                None => (shared.status_body)(StatusCode::BAD_GATEWAY),
            };
        }
        None => {}
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}
