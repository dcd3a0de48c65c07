//! The image service: stores AI-generated images for signed-in users.
//!
//! A guided tour, one module per owner:

pub mod app; // App::build (listener, state, router), run, graceful shutdown
pub mod auth; // AuthUser extractor, token checks, JWKS key store
pub mod clients; // shared HTTP client, Supabase Storage client, BDD client
pub mod config; // Config from the environment, fail-fast
pub mod devstack; // local stand-ins for Clerk, Storage and the BDD service
pub mod domain; // validated newtypes: ids, statuses, pages, decoded images
pub mod error; // ApiError and its one IntoResponse
pub mod extract; // Json/Path/Query wrappers with contract-shaped rejections
pub mod http; // CORS, security headers, request ids, request log line
pub mod metrics; // Prometheus metrics and GET /metrics
pub mod ratelimit; // per-user rate limit
pub mod routes; // handlers only
pub mod state; // AppState and FromRef
pub mod telemetry; // tracing subscriber set-up
