//! Liveness and readiness.

use std::fmt::Display;
use std::future::Future;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use crate::clients::UpstreamFault;
use crate::request_id::RequestId;
use crate::response::json_response;
use crate::state::AppState;

/// `GET /api/health`.
pub async fn service() -> Response {
    alive("Service d'images opérationnel")
}

/// `GET /api/images/health`.
pub async fn images() -> Response {
    alive("Service Images opérationnel")
}

/// `{"success":true,"message":…,"timestamp":…}`, written directly: liveness
/// probes come often.
fn alive(message: &'static str) -> Response {
    let mut body = String::with_capacity(96);
    body.push_str(r#"{"success":true,"message":""#);
    body.push_str(message);
    body.push_str(r#"","timestamp":""#);
    crate::clock::push_iso_millis(&mut body);
    body.push_str(r#""}"#);
    json_response(StatusCode::OK, bytes::Bytes::from(body))
}

/// `GET /api/ready`: BDD, keys and Storage, concurrently, within the budget.
///
/// Each failing check shows a word (`unreachable`, `timeout`, `refused (403)`,
/// `bad answer`…); what went wrong in detail goes to the log only.
pub async fn ready(State(state): State<AppState>, request_id: RequestId) -> Response {
    let budget = state.config.ready_timeout;
    let (bdd, auth, storage) = tokio::join!(
        check("bdd", budget, state.bdd.health(&request_id), |e| e.fault()),
        check(
            "auth",
            budget,
            state.verifier.ready(&request_id),
            |e| match e {
                crate::auth::AuthError::Unavailable { fault, .. } => *fault,
                _ => UpstreamFault::BadAnswer,
            }
        ),
        check(
            "storage",
            budget,
            state.storage.check_bucket(&request_id),
            |e| e.fault()
        ),
    );
    let show = |r: &Option<UpstreamFault>| r.map_or_else(|| "ok".to_owned(), |f| f.to_string());
    let mut checks = json!({"bdd": show(&bdd), "auth": show(&auth), "storage": show(&storage)});
    let mut all_ok = bdd.is_none() && auth.is_none() && storage.is_none();
    if let Some(link) = &state.redis {
        let redis = check("redis", budget, link.ping(), |e| e.fault).await;
        all_ok &= redis.is_none();
        checks["redis"] = show(&redis).into();
    }
    if all_ok {
        json_response(StatusCode::OK, json!({"success": true, "checks": checks}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"success": false, "error": "Service non prêt", "checks": checks}),
        )
    }
}

/// `None` when healthy, else what went wrong (the detail is logged here).
async fn check<E: Display>(
    name: &'static str,
    budget: std::time::Duration,
    probe: impl Future<Output = Result<(), E>>,
    fault: impl Fn(&E) -> UpstreamFault,
) -> Option<UpstreamFault> {
    match tokio::time::timeout(budget, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            tracing::warn!(check = name, error = %e, "readiness check failed");
            Some(fault(&e))
        }
        Err(_) => {
            tracing::warn!(check = name, ?budget, "readiness check timed out");
            Some(UpstreamFault::Timeout)
        }
    }
}
