//! The router: every path of the contract, and the layers around it.

pub mod docs;
pub mod health;
pub mod images;
pub mod ops;

use axum::routing::{get, patch};
use axum::Router;

use crate::error::ApiError;
use crate::middleware::{AllowedOrigins, Edge};
use crate::state::AppState;

/// Builds the application router with its state and layers.
pub fn router(state: AppState) -> Router {
    let edge_state = Edge {
        metrics: state.metrics.clone(),
        origins: AllowedOrigins::new(&state.config.frontend_origins),
        max_head_bytes: state.config.max_header_bytes,
    };
    Router::new()
        .route("/api/health", get(health::service))
        .route("/api/ready", get(health::ready))
        .route("/api/openapi.json", get(docs::openapi))
        .route("/api/docs", get(docs::page))
        .route("/metrics", get(ops::metrics))
        .route("/api/images/health", get(health::images))
        .route("/api/images", get(images::list).post(images::create))
        .route(
            "/api/images/{id}",
            get(images::get_one).delete(images::delete),
        )
        .route("/api/images/{id}/status", patch(images::update_status))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::RouteNotFound })
        .with_state(state)
        // The edge also turns a panicking handler into the contract's 500.
        .layer(edge_state)
}
