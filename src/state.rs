//! What every handler can reach, as typed axum `State`.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::clients::{bdd::BddClient, storage::StorageClient};
use crate::config::Config;
use crate::extract::UploadSlots;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

/// Shared, cheaply cloned application state.
#[derive(Clone)]
pub struct AppState {
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
