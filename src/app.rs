//! `App::build` wires the configuration into a bound listener and a router;
//! `run` serves until SIGTERM/SIGINT, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::auth::Verifier;
use crate::cleaner::shared::SharedQueue;
use crate::cleaner::{Cleaner, CleanupQueue, MemoryQueue};
use crate::clients::{bdd::BddClient, http_client, storage::StorageClient};
use crate::config::Config;
use crate::connections::{Connections, Registered, Tracked};
use crate::idempotency::shared::SharedStore;
use crate::idempotency::{IdempotencyStore, MemoryStore};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::redis_link::RedisLink;
use crate::routes;
use crate::state::{AppState, Shared, UploadSlots};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The listening address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client or the verifier could not be built.
    #[error("{0}")]
    Setup(String),
}

/// Connections the kernel may hold before we accept them. Tokio's default
/// (1024) overflowed under contract §9's 1,400 idle sockets: a burst of
/// reconnects filled it, the kernel dropped a health check's SYN and the
/// client's 1 s retransmission broke the 200 ms promise. The kernel caps it
/// at `net.core.somaxconn` (4096 on current kernels).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds like `TcpListener::bind` (address reuse on), with a longer backlog.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restart must not wait out the old process's TIME_WAIT sockets.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A built service, listening, not yet serving.
pub struct App {
    listener: TcpListener,
    router: Router,
    state: AppState,
    /// Stops the cleaner's background worker (at shutdown, it drains instead).
    cleaner_stop: CancellationToken,
}

impl App {
    /// Binds the listener (port 0 picks a free one) and builds the state and router.
    pub async fn build(config: Config) -> Result<Self, BuildError> {
        let addr = SocketAddr::new(config.host, config.port);
        let listener = listen(addr).map_err(|source| BuildError::Bind { addr, source })?;
        let http = http_client().map_err(|e| BuildError::Setup(format!("HTTP client: {e}")))?;
        let metrics = Metrics::new();
        let verifier = Verifier::new(
            &config.clerk,
            http.clone(),
            config.upstream_timeout,
            metrics.clone(),
        )
        .map_err(BuildError::Setup)?;
        let storage = StorageClient::new(
            http.clone(),
            &config.storage,
            config.upload_timeout,
            metrics.clone(),
        );
        let bdd = BddClient::new(
            http,
            &config.bdd_url,
            config.upstream_timeout,
            metrics.clone(),
        );
        // What instances share: in Redis when one is configured, else here.
        let redis = match &config.redis_url {
            Some(url) => {
                Some(RedisLink::new(url.expose(), metrics.clone()).map_err(BuildError::Setup)?)
            }
            None => None,
        };
        let (idempotency, queue): (Arc<dyn IdempotencyStore>, Arc<dyn CleanupQueue>) = match &redis
        {
            Some(link) => (
                Arc::new(SharedStore::new(link.clone(), config.idempotency_ttl)),
                Arc::new(SharedQueue::new(link.clone(), cleanup_lease(&config))),
            ),
            None => (
                Arc::new(MemoryStore::new(config.idempotency_ttl)),
                Arc::new(MemoryQueue::default()),
            ),
        };
        let cleaner = Cleaner::new(
            queue,
            storage.clone(),
            bdd.clone(),
            metrics.clone(),
            config.idempotency_ttl,
        );
        let cleaner_stop = CancellationToken::new();
        cleaner.spawn(cleaner_stop.clone());
        metrics.cleanup_pending(0);
        let state = AppState::new(Shared {
            idempotency,
            rate_limiter: RateLimiter::new(config.rate_limit_per_minute, redis.clone()),
            redis,
            cleaner,
            storage,
            bdd,
            metrics,
            verifier: Arc::new(verifier),
            upload_slots: UploadSlots::new(
                config.max_uploads_in_flight,
                config.max_uploads_per_user,
            ),
            tasks: TaskTracker::new(),
            config: Arc::new(config),
        });
        Ok(Self {
            listener,
            router: routes::router(state.clone()),
            state,
            cleaner_stop,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn run(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then lets requests and their
    /// tasks in flight finish, for at most the configured grace period.
    ///
    /// The accept loop is ours rather than `axum::serve` so that hostile
    /// clients meet limits (contract §9): the connection table with its idle
    /// eviction, a deadline for each request head (idle keep-alives
    /// included), and a head size cap.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let config = self.state.config.clone();
        let grace = config.shutdown_grace;
        // Express ignores a trailing slash; so do we, before routing.
        let service = NormalizePathLayer::trim_trailing_slash().layer(self.router);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            // Room for twice the head limit, so a head over the limit is
            // still parsed and answered by the edge with a JSON 431; beyond
            // this, hyper answers 431 itself, with no body.
            .max_buf_size((2 * config.max_header_bytes).max(8192))
            .keep_alive(true);
        let connections = Connections::new(config.max_connections);
        let draining = CancellationToken::new();
        let connection_tasks = TaskTracker::new();
        let mut shutdown = std::pin::pin!(shutdown);

        loop {
            tokio::select! {
                () = connections.room() => {}
                () = &mut shutdown => break,
            }
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let registered = connections.open();
            let service =
                TowerToHyperService::new(Tracked::new(service.clone(), &connections, &registered));
            let connection = http1.serve_connection(TokioIo::new(stream), service);
            connection_tasks.spawn(serve(connection, registered, draining.clone()));
        }

        drop(self.listener);
        let deadline = std::time::Instant::now() + grace;
        tracing::info!("shutting down: no new connections, draining requests in flight");
        draining.cancel();
        connection_tasks.close();
        let tasks = self.state.tasks.clone();
        tasks.close();
        let drained = async {
            connection_tasks.wait().await;
            tasks.wait().await;
        };
        if tokio::time::timeout_at(deadline.into(), drained)
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "grace period over; dropping requests still in flight"
            );
        }
        // The cleaner gets what is left of the grace period.
        self.cleaner_stop.cancel();
        self.state.cleaner.drain(deadline).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Serves one connection until it ends, is evicted, or the service drains.
///
/// Closing asks hyper to finish the request in flight and then close; a
/// connection evicted before it ever sent a request is dropped at once
/// (hyper would otherwise wait for its first request head).
async fn serve<C>(connection: C, registered: Registered, draining: CancellationToken)
where
    C: GracefulConnection,
{
    let mut connection = std::pin::pin!(connection);
    let entry = registered.connection().clone();
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = entry.evicted(), if !closing => {
                if !entry.has_served() {
                    break;
                }
                connection.as_mut().close_gracefully();
                closing = true;
            }
            () = draining.cancelled(), if !closing => {
                connection.as_mut().close_gracefully();
                closing = true;
            }
        }
    }
    drop(registered);
}

/// A hyper connection that can be asked to finish its request and close.
trait GracefulConnection: Future<Output = hyper::Result<()>> + Send {
    fn close_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::Connection<I, S>
where
    Self: Future<Output = hyper::Result<()>> + Send,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How long a cleanup task taken from a shared queue stays its worker's:
/// longer than one attempt can take (a read-back and a removal).
fn cleanup_lease(config: &Config) -> std::time::Duration {
    2 * (config.upload_timeout + config.upstream_timeout) + std::time::Duration::from_secs(2)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
