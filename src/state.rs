//! What every handler can reach, as typed axum `State`.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::clients::{bdd::BddClient, storage::StorageClient};
use crate::config::Config;
use crate::extract::UploadSlots;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

/// Shared application state: one `Arc`, so extracting it costs one increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What every handler can reach.
pub struct Shared {
    /// The configuration read at start-up.
    pub config: Arc<Config>,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// Supabase Storage.
    pub storage: StorageClient,
    /// BDD service.
    pub bdd: BddClient,
    /// This app's metrics.
    pub metrics: Metrics,
    /// Creates admitted at once.
    pub upload_slots: UploadSlots,
    /// Per-user limit, when on.
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Multi-step operations run here so a client hanging up cannot cut them
    /// half-way; shutdown waits for them.
    pub tasks: TaskTracker,
}

impl axum::extract::FromRef<AppState> for Metrics {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}
