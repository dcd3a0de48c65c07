//! `/api/images*` handlers: authenticate, validate, then hand over to the
//! flows (creates, deletes) or the BDD client.
//!
//! Creates and deletes run as tracked tasks: a client hanging up mid-way must
//! not leave an uploaded object without its record, or half a delete.

use std::future::Future;

use axum::extract::{RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::domain::{parse_status_body, ListQuery};
use crate::error::ApiError;
use crate::extract::{ApiJson, Caller, CreateRequest, IdParam};
use crate::flows;
use crate::request_id::RequestId;
use crate::request_scope;
use crate::response::json_response;
use crate::state::AppState;

/// `POST /api/images`: upload to Storage, then record in the BDD, once.
///
/// The request is admitted here (key, content type, announced length); its
/// body is read by the create itself, which takes an upload slot first and
/// streams the image on to Storage as it arrives.
pub async fn create(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    request: Request,
) -> Result<Response, ApiError> {
    let request = CreateRequest::admit(request, &state)?;
    run_to_completion(
        &state,
        flows::create::create(state.clone(), user, request, request_id),
    )
    .await
}

/// `GET /api/images`: one page of the caller's images.
pub async fn list(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(query.as_deref()).map_err(ApiError::Validation)?;
    let page = state.bdd.list_images(&user, &query, &request_id).await?;
    if page.dropped > 0 {
        tracing::error!(
            dropped = page.dropped,
            "BDD listed records that are not provably the caller's: dropped"
        );
    }
    let mut body = Vec::with_capacity(page.data.len() + 24);
    body.extend_from_slice(br#"{"success":true,"data":"#);
    body.extend_from_slice(&page.data);
    body.push(b'}');
    Ok(json_response(StatusCode::OK, Bytes::from(body)))
}

/// `GET /api/images/:id`: the BDD's answer as it is, if the caller owns it.
pub async fn get_one(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    IdParam(id): IdParam,
) -> Result<Response, ApiError> {
    let id = id.map_err(|e| ApiError::Validation(vec![e]))?;
    let record = state.bdd.get_image(&id, &user, &request_id).await?;
    Ok(json_response(StatusCode::OK, record.body()))
}

/// `DELETE /api/images/:id`: remove the object, then the record.
pub async fn delete(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    IdParam(id): IdParam,
) -> Result<Response, ApiError> {
    let id = id.map_err(|e| ApiError::Validation(vec![e]))?;
    run_to_completion(
        &state,
        flows::delete::delete(state.clone(), id, user, request_id),
    )
    .await
}

/// `PATCH /api/images/:id/status`: the BDD's answer as it is.
///
/// The contract names one upstream call, the PATCH, which carries the owner
/// for the BDD to enforce; its answer passes the owner check before it is shown.
pub async fn update_status(
    State(state): State<AppState>,
    Caller(user): Caller,
    request_id: RequestId,
    IdParam(id): IdParam,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let status = parse_status_body(&body);
    let (id, status) = match (id, status) {
        (Ok(id), Ok(status)) => (id, status),
        (id, status) => {
            return Err(ApiError::Validation(
                [id.err(), status.err()].into_iter().flatten().collect(),
            ))
        }
    };
    let record = state
        .bdd
        .update_status(&id, &user, status, &request_id)
        .await?;
    Ok(json_response(StatusCode::OK, record.body()))
}

/// Runs a multi-step operation as a tracked task that finishes even if the client leaves.
async fn run_to_completion(
    state: &AppState,
    flow: impl Future<Output = Result<Response, ApiError>> + Send + 'static,
) -> Result<Response, ApiError> {
    let task = state.tasks.spawn(request_scope::inherit(flow));
    task.await
        .map_err(|e| ApiError::Internal(format!("task failed: {e}")))?
}
