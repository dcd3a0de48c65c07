//! `App::build` wires the configuration into a bound listener and a router;
//! `run` serves until SIGTERM/SIGINT, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::ServiceExt;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::auth::Verifier;
use crate::clients::{bdd::BddClient, http_client, storage::StorageClient};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::routes;
use crate::state::AppState;

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

/// A built service, listening, not yet serving.
pub struct App {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

impl App {
    /// Binds the listener (port 0 picks a free one) and builds the state and router.
    pub async fn build(config: Config) -> Result<Self, BuildError> {
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BuildError::Bind { addr, source })?;
        let http = http_client().map_err(|e| BuildError::Setup(format!("HTTP client: {e}")))?;
        let metrics = Metrics::new();
        let verifier = Verifier::new(
            &config.clerk,
            http.clone(),
            config.upstream_timeout,
            metrics.clone(),
        )
        .map_err(BuildError::Setup)?;
        let state = AppState {
            storage: StorageClient::new(
                http.clone(),
                &config.storage,
                config.upload_timeout,
                metrics.clone(),
            ),
            bdd: BddClient::new(
                http,
                &config.bdd_url,
                config.upstream_timeout,
                metrics.clone(),
            ),
            metrics,
            verifier: Arc::new(verifier),
            rate_limiter: RateLimiter::new(config.rate_limit_per_minute),
            tasks: TaskTracker::new(),
            config: Arc::new(config),
        };
        Ok(Self {
            listener,
            router: routes::router(state.clone()),
            state,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The application state (tests inspect the key store through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn run(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then lets requests and their
    /// tasks in flight finish, for at most the configured grace period.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = self.state.config.shutdown_grace;
        let tasks = self.state.tasks.clone();
        let stopping = Arc::new(tokio::sync::Notify::new());
        let notify = stopping.clone();
        // Express ignores a trailing slash; so do we, before routing.
        let service = NormalizePathLayer::trim_trailing_slash().layer(self.router);
        let server = axum::serve(
            self.listener,
            <_ as ServiceExt<axum::extract::Request>>::into_make_service(service),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, draining requests in flight");
            notify.notify_one();
        });
        let deadline = async {
            stopping.notified().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            served = server => served?,
            () = deadline => tracing::warn!(?grace, "grace period over; dropping requests still in flight"),
        }
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("background operations still running at exit");
        }
        tracing::info!("stopped");
        Ok(())
    }
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
