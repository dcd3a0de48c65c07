//! The connection table (contract §9): how many connections are open, which
//! are idle, and who is closed first when the table fills.
//!
//! A connection is idle while no request of it is being served. When the
//! open connections reach 90 % of `MAX_CONNECTIONS`, idle ones are closed,
//! longest idle first, so that sockets that send nothing (or keep-alives
//! nobody uses) never keep a new client waiting in the listen backlog; at
//! `MAX_CONNECTIONS` with none idle, accepting waits for one to close.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::Notify;

/// The open connections.
#[derive(Clone)]
pub struct Connections(Arc<Table>);

struct Table {
    max: usize,
    evict_at: usize,
    /// Connections asked to close at once, at least: one scan of the table
    /// serves many accepts, so a flood of idle sockets costs no scan each.
    evict_batch: usize,
    /// Connections asked to close that have not closed yet.
    leaving: AtomicUsize,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    closed: Notify,
}

/// One open connection, as the table sees it.
pub struct Connection {
    id: u64,
    /// Requests being served now.
    active: AtomicUsize,
    /// Requests served so far.
    served: AtomicUsize,
    /// Milliseconds since the table's epoch when it last became idle.
    idle_since: AtomicU64,
    /// Set once the table asked it to close.
    evicted: Notify,
    evicting: std::sync::atomic::AtomicBool,
}

impl Connection {
    /// Completes when the table asks this connection to close.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }

    /// Whether it has served a request (then hyper closes it cleanly once its
    /// answer is written); a connection that never sent one is simply dropped.
    pub fn has_served(&self) -> bool {
        self.served.load(Ordering::Acquire) > 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connections {
    /// A table of at most `max` connections.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self(Arc::new(Table {
            max,
            evict_at: (max * 9 / 10).max(1),
            evict_batch: (max / 20).max(1),
            leaving: AtomicUsize::new(0),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            closed: Notify::new(),
        }))
    }

    /// Waits until one more connection may be accepted.
    pub async fn room(&self) {
        loop {
            let closed = self.0.closed.notified();
            if lock(&self.0.open).len() < self.0.max {
                return;
            }
            closed.await;
        }
    }

    /// Registers a new connection, closing idle ones if the table is at 90 %.
    pub fn open(&self) -> Registered {
        let table = &self.0;
        let id = table.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            active: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            evicted: Notify::new(),
            evicting: std::sync::atomic::AtomicBool::new(false),
        });
        let mut open = lock(&table.open);
        open.insert(id, connection.clone());
        let staying = open.len() - table.leaving.load(Ordering::Acquire).min(open.len());
        if staying >= table.evict_at {
            let count = (staying + 1 - table.evict_at).max(table.evict_batch);
            let asked = Self::evict_idle(&open, count, id);
            table.leaving.fetch_add(asked, Ordering::AcqRel);
        }
        drop(open);
        Registered {
            table: self.0.clone(),
            connection,
        }
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        lock(&self.0.open).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ms(&self) -> u64 {
        self.0.epoch.elapsed().as_millis() as u64
    }

    /// Asks up to `count` idle connections (never `spare`) to close, longest
    /// idle first; says how many it asked.
    fn evict_idle(open: &HashMap<u64, Arc<Connection>>, count: usize, spare: u64) -> usize {
        let mut idle: Vec<&Arc<Connection>> = open
            .values()
            .filter(|c| {
                c.id != spare
                    && c.active.load(Ordering::Acquire) == 0
                    && !c.evicting.load(Ordering::Acquire)
            })
            .collect();
        let key = |c: &&Arc<Connection>| (c.idle_since.load(Ordering::Relaxed), c.id);
        if count < idle.len() {
            // The `count` longest idle, in no order: linear, not a sort.
            idle.select_nth_unstable_by_key(count, key);
            idle.truncate(count);
        }
        for connection in &idle {
            connection.evicting.store(true, Ordering::Release);
            connection.evicted.notify_one();
        }
        idle.len()
    }
}

/// A connection's place in the table, given back when dropped.
pub struct Registered {
    table: Arc<Table>,
    connection: Arc<Connection>,
}

impl Registered {
    /// The connection's entry.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut open = lock(&self.table.open);
        open.remove(&self.connection.id);
        if self.connection.evicting.load(Ordering::Acquire) {
            self.table.leaving.fetch_sub(1, Ordering::AcqRel);
        }
        drop(open);
        self.table.closed.notify_waiters();
    }
}

/// Wraps a connection's service so the table knows when it is busy.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    connection: Arc<Connection>,
    epoch: Instant,
}

impl<S> Tracked<S> {
    /// `inner`, counting its requests on `connections`' entry `registered`.
    pub fn new(inner: S, connections: &Connections, registered: &Registered) -> Self {
        Self {
            inner,
            connection: registered.connection.clone(),
            epoch: connections.0.epoch,
        }
    }
}

impl<S, R> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Busy<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.connection.active.fetch_add(1, Ordering::AcqRel);
        self.connection.served.fetch_add(1, Ordering::AcqRel);
        Busy {
            inner: self.inner.call(request),
            guard: BusyGuard {
                connection: self.connection.clone(),
                epoch: self.epoch,
            },
        }
    }
}

/// Marks the connection idle again when the request is answered (or dropped).
struct BusyGuard {
    connection: Arc<Connection>,
    epoch: Instant,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.connection.idle_since.store(now, Ordering::Relaxed);
        self.connection.active.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A request being served on a tracked connection.
    pub struct Busy<F> {
        #[pin]
        inner: F,
        guard: BusyGuard,
    }
}

impl<F: Future> Future for Busy<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_90_percent_the_longest_idle_connections_are_asked_to_close() {
        let table = Connections::new(10);
        let first: Vec<Registered> = (0..8).map(|_| table.open()).collect();
        // Busy: the third one.
        first[2].connection.active.store(1, Ordering::Release);
        assert!(first
            .iter()
            .all(|r| !r.connection.evicting.load(Ordering::Acquire)));
        let ninth = table.open();
        let evicted: Vec<u64> = first
            .iter()
            .chain(std::iter::once(&ninth))
            .filter(|r| r.connection.evicting.load(Ordering::Acquire))
            .map(|r| r.connection.id)
            .collect();
        assert_eq!(evicted.len(), 1, "{evicted:?}");
        assert_ne!(evicted[0], 2, "a busy connection is never evicted");
        assert_ne!(evicted[0], ninth.connection.id, "nor the one just opened");
        drop(first);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_full_table_closes_a_batch_at_once_and_counts_those_leaving() {
        let table = Connections::new(100);
        let first: Vec<Registered> = (0..90).map(|_| table.open()).collect();
        let asked = |all: &[Registered]| {
            all.iter()
                .filter(|r| r.connection.evicting.load(Ordering::Acquire))
                .map(|r| r.connection.id)
                .collect::<Vec<_>>()
        };
        // The 90th: 5 % of the table asked to close, the longest idle first.
        let mut evicted = asked(&first);
        evicted.sort_unstable();
        assert_eq!(evicted, vec![0, 1, 2, 3, 4]);
        // Those five leaving, the next opens ask nobody else.
        let more: Vec<Registered> = (0..4).map(|_| table.open()).collect();
        assert_eq!(asked(&first).len() + asked(&more).len(), 5);
        // Once they have closed, the count of those leaving is back to zero.
        let (leaving, staying): (Vec<_>, Vec<_>) = first
            .into_iter()
            .partition(|r| r.connection.evicting.load(Ordering::Acquire));
        drop(leaving);
        assert_eq!(table.0.leaving.load(Ordering::Acquire), 0);
        assert_eq!(table.len(), staying.len() + more.len());
    }
}
