//! What every handler can reach, as typed axum `State`, and the shared
//! limits that are state rather than configuration (upload slots).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::cleaner::Cleaner;
use crate::clients::{bdd::BddClient, storage::StorageClient};
use crate::config::Config;
use crate::domain::UserId;
use crate::idempotency::IdempotencyStore;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::redis_link::RedisLink;

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
    /// Idempotency keys of creates.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// The Redis instances share, when configured (readiness).
    pub redis: Option<RedisLink>,
    /// Removes what failed creates leave in Storage.
    pub cleaner: Cleaner,
    /// Multi-step operations run here so a client hanging up cannot cut them
    /// half-way; shutdown waits for them.
    pub tasks: TaskTracker,
}

/// Upload slots: how many creates read or upload at once, in total and per user.
///
/// Taken before the body is read: a create holds about its body plus its
/// decoded image, so bounding creates bounds memory, whatever the number of
/// clients sending 10 MiB images at once; the per-user share keeps one user
/// from holding every slot.
#[derive(Clone)]
pub struct UploadSlots {
    total: Arc<Semaphore>,
    per_user: usize,
    held: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// Why no upload slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// The user already holds their share.
    UserShare,
    /// Every slot stayed taken for the whole wait.
    Busy,
}

impl UploadSlots {
    /// `total` slots, at most `per_user` of them held by one user.
    pub fn new(total: usize, per_user: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_user,
            held: Arc::default(),
        }
    }

    /// A slot for `user`: refused at once beyond their share, or after
    /// `wait` when every slot stays taken.
    pub async fn acquire(&self, user: &UserId, wait: Duration) -> Result<UploadSlot, SlotRefusal> {
        {
            let mut held = lock(&self.held);
            let mine = held.entry(user.clone()).or_default();
            if *mine >= self.per_user {
                return Err(SlotRefusal::UserShare);
            }
            *mine += 1;
        }
        // From here the share is counted: the guard gives it back on any exit.
        let share = UserShare {
            held: self.held.clone(),
            user: user.clone(),
        };
        match tokio::time::timeout(wait, self.total.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(UploadSlot {
                _permit: permit,
                _share: share,
            }),
            _ => Err(SlotRefusal::Busy),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One user's count of held slots, given back when dropped.
struct UserShare {
    held: Arc<Mutex<HashMap<UserId, usize>>>,
    user: UserId,
}

impl Drop for UserShare {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(mine) = held.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                held.remove(&self.user);
            }
        }
    }
}

/// One admitted create; the slot and the user's share free when this is dropped.
pub struct UploadSlot {
    _permit: OwnedSemaphorePermit,
    _share: UserShare,
}
