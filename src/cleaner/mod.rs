//! The cleaner (contract §7): nothing left behind in Storage.
//!
//! Every removal that failed, every upload whose answer was lost or came too
//! late, and every create attempt whose record may or may not exist is
//! queued as a [`Chore`]. A background task retries each with backoff (the
//! first retry after about a second, then doubling, at most 5 minutes apart,
//! for at most `IDEMPOTENCY_TTL_SECS`) until the object is removed or a
//! record is found to point at it. The queue behind [`CleanupQueue`] lives
//! in process ([`MemoryQueue`]) for one instance, or in Redis
//! ([`shared::SharedQueue`]), where another instance finishes what a dead
//! one queued.

pub mod shared;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::clients::bdd::BddClient;
use crate::clients::storage::{ObjectPath, StorageClient};
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::request_id::RequestId;

/// First retry after this long.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Retries at most this far apart.
const MAX_RETRY: Duration = Duration::from_secs(5 * 60);
/// Chores run at once.
const BATCH: usize = 16;

/// What the cleaner must see done for one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Chore {
    /// Remove `path`: no record points at it. An upload whose answer was
    /// lost may still land: until `recheck_until_ms` (unix ms) each retry
    /// removes it again.
    Remove {
        /// The object.
        path: String,
        /// Unix milliseconds until which the removal is repeated.
        recheck_until_ms: u64,
    },
    /// A create attempt whose record may exist: remove `path` unless a
    /// record of `user` points at `url`.
    Settle {
        /// The user (their folder).
        user: String,
        /// The object.
        path: String,
        /// The URL the record would carry.
        url: String,
    },
}

/// A queued chore with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique within its queue.
    pub id: String,
    /// What to do.
    pub chore: Chore,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it was first queued, unix ms.
    pub queued_at_ms: u64,
}

/// The queue is out of reach (a shared one): callers keep the chore in process.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cleanup queue unavailable: {0}")]
pub struct QueueDown(pub String);

/// Where chores wait.
#[async_trait]
pub trait CleanupQueue: Send + Sync {
    /// Queues `task`, due after `delay`.
    async fn push(&self, task: Task, delay: Duration) -> Result<(), QueueDown>;
    /// Up to `max` tasks that are due (all of them when `all`), taken for
    /// this worker (a shared queue leases them).
    async fn take_due(&self, max: usize, all: bool) -> Result<Vec<Task>, QueueDown>;
    /// `task` is done: forget it.
    async fn finish(&self, task: &Task) -> Result<(), QueueDown>;
    /// How many tasks wait.
    async fn len(&self) -> Result<usize, QueueDown>;
    /// Whether none waits.
    async fn is_empty(&self) -> Result<bool, QueueDown> {
        Ok(self.len().await? == 0)
    }
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Chores in this process: lost with it (`image-service reconcile` finds
/// what a crash leaves).
#[derive(Default)]
pub struct MemoryQueue {
    tasks: Mutex<Vec<(Instant, Task)>>,
}

#[async_trait]
impl CleanupQueue for MemoryQueue {
    async fn push(&self, task: Task, delay: Duration) -> Result<(), QueueDown> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|(_, t)| t.id != task.id);
        tasks.push((Instant::now() + delay, task));
        Ok(())
    }

    async fn take_due(&self, max: usize, all: bool) -> Result<Vec<Task>, QueueDown> {
        let now = Instant::now();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.sort_by_key(|(due, _)| *due);
        let ready = tasks
            .iter()
            .take_while(|(due, _)| all || *due <= now)
            .count()
            .min(max);
        Ok(tasks.drain(..ready).map(|(_, t)| t).collect())
    }

    async fn finish(&self, _task: &Task) -> Result<(), QueueDown> {
        // Taken tasks are no longer in the queue.
        Ok(())
    }

    async fn len(&self) -> Result<usize, QueueDown> {
        Ok(self.tasks.lock().unwrap_or_else(|e| e.into_inner()).len())
    }
}

/// How one attempt at a chore ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The object is gone.
    Removed,
    /// A record points at the object: it stays.
    Kept,
    /// Not done yet: try again later.
    Retry,
}

/// The cleaner: queues chores and works them off in the background.
#[derive(Clone)]
pub struct Cleaner(Arc<Inner>);

struct Inner {
    queue: Arc<dyn CleanupQueue>,
    storage: StorageClient,
    bdd: BddClient,
    metrics: Metrics,
    /// How long a chore is retried at most.
    give_up_after: Duration,
    wake: Notify,
    /// Tasks being worked on now (counted in `cleanup_pending`).
    running: AtomicUsize,
}

impl Cleaner {
    /// A cleaner over `queue`; call [`Cleaner::spawn`] to start working.
    pub fn new(
        queue: Arc<dyn CleanupQueue>,
        storage: StorageClient,
        bdd: BddClient,
        metrics: Metrics,
        give_up_after: Duration,
    ) -> Self {
        Self(Arc::new(Inner {
            queue,
            storage,
            bdd,
            metrics,
            give_up_after,
            wake: Notify::new(),
            running: AtomicUsize::new(0),
        }))
    }

    /// Queues `chore`, first tried after `delay`.
    pub async fn queue(&self, chore: Chore, delay: Duration) {
        let task = Task {
            // Unique across instances sharing one queue.
            id: uuid::Uuid::new_v4().to_string(),
            chore,
            attempts: 0,
            queued_at_ms: unix_ms(),
        };
        tracing::info!(chore = ?task.chore, "cleanup queued");
        if let Err(e) = self.0.queue.push(task, delay).await {
            tracing::error!(error = %e, "cleanup could not be queued");
        }
        self.update_gauge().await;
        self.0.wake.notify_one();
    }

    /// Queues the removal of an upload whose outcome is unknown: removed now
    /// and again until `late_window` has passed, in case it lands late.
    pub async fn remove_late_upload(&self, path: &ObjectPath, late_window: Duration) {
        let recheck_until_ms = unix_ms() + late_window.as_millis() as u64;
        self.queue(
            Chore::Remove {
                path: path.as_str().to_owned(),
                recheck_until_ms,
            },
            Duration::ZERO,
        )
        .await;
    }

    /// Queues the removal of an object no record points at.
    pub async fn remove(&self, path: &ObjectPath) {
        let chore = Chore::Remove {
            path: path.as_str().to_owned(),
            recheck_until_ms: 0,
        };
        self.queue(chore, FIRST_RETRY).await;
    }

    /// Queues an attempt whose record may exist.
    pub async fn settle(&self, user: &UserId, path: &ObjectPath, url: &str) {
        let chore = Chore::Settle {
            user: user.as_str().to_owned(),
            path: path.as_str().to_owned(),
            url: url.to_owned(),
        };
        self.queue(chore, FIRST_RETRY).await;
    }

    /// Works the queue off until the cleaner is dropped or `stop` completes.
    pub fn spawn(&self, stop: tokio_util::sync::CancellationToken) {
        let cleaner = self.clone();
        tokio::spawn(async move {
            loop {
                let worked = cleaner.work_once(false).await;
                if worked == 0 {
                    tokio::select! {
                        () = cleaner.0.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(250)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        });
    }

    /// Works every task now, due or not, until none is left or `deadline`
    /// (shutdown: what is left of the grace period).
    pub async fn drain(&self, deadline: Instant) {
        let drained = async {
            let mut rounds = 0;
            while self.work_once(true).await > 0 && rounds < 8 {
                rounds += 1;
            }
        };
        if tokio::time::timeout_at(deadline.into(), drained)
            .await
            .is_err()
        {
            tracing::warn!("shutdown: cleanup drain cut short by the grace period");
        }
        let left = self.0.queue.len().await.unwrap_or(0);
        if left > 0 {
            tracing::warn!(left, "shutdown: cleanups left in the queue");
        }
    }

    /// How many chores wait or run.
    pub async fn pending(&self) -> usize {
        self.0.queue.len().await.unwrap_or(0) + self.0.running.load(Ordering::Acquire)
    }

    async fn update_gauge(&self) {
        let pending = self.pending().await;
        self.0.metrics.cleanup_pending(pending);
    }

    /// Takes due tasks (all tasks when `all`) and works them; how many.
    async fn work_once(&self, all: bool) -> usize {
        let tasks = match self.0.queue.take_due(BATCH, all).await {
            Ok(tasks) => tasks,
            Err(e) => {
                tracing::warn!(error = %e, "cleanup queue unavailable");
                return 0;
            }
        };
        let count = tasks.len();
        if count == 0 {
            return 0;
        }
        self.0.running.fetch_add(count, Ordering::AcqRel);
        let mut running = JoinSet::new();
        for task in tasks {
            let cleaner = self.clone();
            running.spawn(async move {
                let outcome = cleaner.attempt(&task).await;
                cleaner.after(task, outcome).await;
            });
        }
        while running.join_next().await.is_some() {}
        self.0.running.fetch_sub(count, Ordering::AcqRel);
        self.update_gauge().await;
        count
    }

    /// One attempt at a task's chore.
    async fn attempt(&self, task: &Task) -> Outcome {
        let request_id = RequestId::generate();
        match &task.chore {
            Chore::Remove {
                path,
                recheck_until_ms,
            } => {
                let path = ObjectPath::from_stored(path.clone());
                match self.0.storage.remove(&path, &request_id).await {
                    Ok(()) if unix_ms() < *recheck_until_ms => Outcome::Retry,
                    Ok(()) => Outcome::Removed,
                    Err(error) => {
                        tracing::warn!(object = %path, %error, "cleanup removal failed; will retry");
                        Outcome::Retry
                    }
                }
            }
            Chore::Settle { user, path, url } => {
                let Some(owner) = UserId::parse(user) else {
                    tracing::error!(user, "cleanup: not a user id; dropped");
                    return Outcome::Kept;
                };
                match self.0.bdd.find_by_url(&owner, url, &request_id).await {
                    Ok(Some(_)) => Outcome::Kept,
                    Ok(None) => {
                        let path = ObjectPath::from_stored(path.clone());
                        match self.0.storage.remove(&path, &request_id).await {
                            Ok(()) => Outcome::Removed,
                            Err(error) => {
                                tracing::warn!(object = %path, %error, "cleanup removal failed; will retry");
                                Outcome::Retry
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(object = path, %error, "cleanup: record still undecided; will retry");
                        Outcome::Retry
                    }
                }
            }
        }
    }

    /// Forgets a finished task, or queues it again with backoff.
    async fn after(&self, mut task: Task, outcome: Outcome) {
        let result = match outcome {
            Outcome::Removed => "removed",
            Outcome::Kept => "kept",
            Outcome::Retry => "retried",
        };
        if outcome != Outcome::Retry {
            tracing::info!(chore = ?task.chore, result, "cleanup done");
            self.0.metrics.cleanup_done(result);
            let _ = self.0.queue.finish(&task).await;
            return;
        }
        let age = Duration::from_millis(unix_ms().saturating_sub(task.queued_at_ms));
        if age >= self.0.give_up_after {
            tracing::error!(chore = ?task.chore, attempts = task.attempts, "cleanup given up: reconcile will find it");
            self.0.metrics.cleanup_done("abandoned");
            let _ = self.0.queue.finish(&task).await;
            return;
        }
        self.0.metrics.cleanup_done(result);
        let delay = backoff(task.attempts);
        task.attempts += 1;
        if let Err(e) = self.0.queue.push(task, delay).await {
            tracing::error!(error = %e, "cleanup could not be queued again");
        }
    }
}

/// Delay before retry `attempts + 1`: 1 s, 2 s, 4 s, … at most 5 minutes.
fn backoff(attempts: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32.checked_shl(attempts.min(16)).unwrap_or(u32::MAX))
        .min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let delays: Vec<u64> = (0..12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(
            delays,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
        );
    }

    #[tokio::test]
    async fn the_memory_queue_hands_out_due_tasks_in_order() {
        let queue = MemoryQueue::default();
        let task = |id: &str| Task {
            id: id.into(),
            chore: Chore::Remove {
                path: id.into(),
                recheck_until_ms: 0,
            },
            attempts: 0,
            queued_at_ms: 0,
        };
        queue
            .push(task("later"), Duration::from_secs(60))
            .await
            .unwrap();
        queue.push(task("now"), Duration::ZERO).await.unwrap();
        let due = queue.take_due(10, false).await.unwrap();
        assert_eq!(
            due.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            vec!["now"]
        );
        assert_eq!(queue.len().await.unwrap(), 1);
        assert_eq!(queue.take_due(10, true).await.unwrap().len(), 1);
        assert_eq!(queue.len().await.unwrap(), 0);
    }
}
