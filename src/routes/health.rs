//! Liveness and readiness.

use std::future::Future;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::http::{json_response, RequestId};
use crate::state::AppState;

/// ISO 8601 UTC with milliseconds, as the old service's `toISOString()`.
pub fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `GET /api/health`.
pub async fn service() -> Response {
    json_response(
        StatusCode::OK,
        json!({"success": true, "message": "Service d'images opérationnel", "timestamp": now_iso()}),
    )
}

/// `GET /api/images/health`.
pub async fn images() -> Response {
    json_response(
        StatusCode::OK,
        json!({"success": true, "message": "Service Images opérationnel", "timestamp": now_iso()}),
    )
}

/// `GET /api/ready`: BDD, keys and Storage, concurrently, within the budget.
pub async fn ready(State(state): State<AppState>, request_id: RequestId) -> Response {
    let budget = state.config.ready_timeout;
    let (bdd, auth, storage) = tokio::join!(
        check(budget, state.bdd.health(&request_id)),
        check(budget, state.verifier.ready(&request_id)),
        check(budget, state.storage.check_bucket(&request_id)),
    );
    let all_ok = bdd.is_none() && auth.is_none() && storage.is_none();
    let show = |r: Option<String>| Value::String(r.unwrap_or_else(|| "ok".into()));
    let checks = json!({"bdd": show(bdd), "auth": show(auth), "storage": show(storage)});
    if all_ok {
        json_response(StatusCode::OK, json!({"success": true, "checks": checks}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"success": false, "error": "Service non prêt", "checks": checks}),
        )
    }
}

/// `None` when healthy, else the reason.
async fn check<E: std::fmt::Display>(
    budget: std::time::Duration,
    probe: impl Future<Output = Result<(), E>>,
) -> Option<String> {
    match tokio::time::timeout(budget, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("timed out".into()),
    }
}
