//! The image service: stores AI-generated images for signed-in users.
//!
//! Its wire contract is `docs/CONTRACT.md`; comments cite its sections as
//! "contract §N".
//!
//! A guided tour, one module per owner, top to bottom (imports run downward):

pub mod app; // App::build (listener, state, router), the accept loop, graceful shutdown
pub mod auth; // token verification only: claims, JWKS key store, verified-token cache
pub mod body; // request bodies read at the contract's pace; upload slots taken
pub mod cleaner; // the cleanup queue and its background worker
pub mod clients; // shared HTTP client; storage.rs (+ object paths); bdd.rs (+ owner check)
pub mod clock; // ISO 8601 timestamps, formatted fast
pub mod config; // Config from the environment, fail-fast
pub mod connections; // the connection table: caps, idle eviction
pub mod domain; // validated values: ids, images, inputs, validation shape
pub mod error; // ApiError: every status and French message, one IntoResponse
pub mod extract; // AuthUser, Caller (auth then rate limit), bodies and ids with contract rejections
pub mod flows; // creates and deletes across Storage and the BDD: once, nothing left behind
pub mod idempotency; // Idempotency-Key: claims, replays, the key store
pub mod json_log; // the JSON log line, written by hand: it is paid on every request
pub mod log_writer; // log lines batched into one write per burst
pub mod metrics; // Prometheus metrics
pub mod middleware; // the edge: span, head limit, CORS, security headers, metrics, log line
pub mod ratelimit; // the per-user rate limit, in process or in Redis
pub mod reconcile; // `image-service reconcile`: what a crash left in Storage
pub mod redis_link; // the one connection to Redis, when instances share it
pub mod request_id; // the request id: type, header, extractor
pub mod request_scope; // what a request's log lines carry: id, method, path, user
pub mod response; // JSON answers
pub mod routes; // the router and the handlers, nothing else
pub mod state; // AppState and the shared upload slots
pub mod telemetry; // tracing subscriber set-up
