//! What every handler can reach, as typed axum `State`, and the shared
//! limits that are state rather than configuration (upload slots).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::clients::{bdd::BddClient, storage::StorageClient};
use crate::config::Config;
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

/// Uploads admitted at once.
///
/// Taken before the body is read: a create holds about its body plus its
/// decoded image, so bounding creates bounds memory, whatever the number of
/// clients sending 10 MiB images at once.
#[derive(Clone)]
pub struct UploadSlots(Arc<Semaphore>);

impl UploadSlots {
    /// `n` slots.
    pub fn new(n: usize) -> Self {
        Self(Arc::new(Semaphore::new(n)))
    }

    /// A slot, waiting at most `wait` for one to free.
    pub async fn acquire(&self, wait: Duration) -> Option<UploadSlot> {
        match tokio::time::timeout(wait, self.0.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Some(UploadSlot(permit)),
            _ => None,
        }
    }
}

/// One admitted create; the slot frees when this is dropped.
pub struct UploadSlot(#[allow(dead_code)] OwnedSemaphorePermit);
